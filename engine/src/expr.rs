//! A CEL expression compiled once when a policy loads and evaluated per request.

use crate::celenv::{self, Site, Ty, CACHED_MATCHES};
use crate::policy::Location;
use cel::common::types::{CelBool, CelString};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, IdedExpr, Value};
use regex::Regex;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// The evaluation environment: the standard library plus the cached `matches`.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    cel::add_member_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>,
        name = "llmgwMatches")
    .expect("the name is not taken by the standard library");
    debug_assert_eq!(CACHED_MATCHES, "llmgwMatches");
    Arc::new(env)
});

/// Regular expressions compiled once, shared by every revision (patterns are literals).
static REGEXES: LazyLock<RwLock<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);

fn regex(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    if let Some(re) = REGEXES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(pattern)
    {
        return Ok(re.clone());
    }
    let re = Arc::new(Regex::new(pattern)?);
    REGEXES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pattern.to_owned(), re.clone());
    Ok(re)
}

fn cached_matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    regex(re.inner())
        .map(|r| CelBool::from(r.is_match(this.inner())))
        .map_err(|e| ExecutionError::function_error("matches", e.to_string()))
}

/// A checked expression, ready to evaluate.
#[derive(Debug)]
pub struct CompiledExpr {
    /// The source text.
    pub source: Arc<str>,
    /// Where it was written.
    pub location: Location,
    ast: IdedExpr,
}

pub use crate::celenv::CompileError;

/// A failure evaluating an expression at run time.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize)]
#[error("{location}: evaluating `{expression}`: {message}")]
pub struct EvalError {
    /// Where the expression was written.
    pub location: Location,
    /// The expression.
    pub expression: Arc<str>,
    /// What went wrong.
    pub message: String,
}

impl CompiledExpr {
    /// The checked, rewritten syntax tree.
    pub(crate) fn ast(&self) -> &IdedExpr {
        &self.ast
    }

    /// Whether the expression reads the variable `root` or anything under it.
    pub(crate) fn reads(&self, root: &str) -> bool {
        ast_reads(&self.ast, root)
    }

    /// Parses and checks `source` written at `site`; a condition must be boolean, a bucket a
    /// string.
    ///
    /// Expressions are bounded (length, nesting, depth of the syntax tree) so that no input can
    /// exhaust the stack; they are parsed on a thread with a large stack, since the CEL parser
    /// is recursive.
    pub fn compile(
        source: &str,
        site: Site,
        location: Location,
    ) -> Result<Self, Vec<CompileError>> {
        let chars = source.chars().count();
        if chars > MAX_LEN {
            return Err(too_complex(format!(
                "the expression has {chars} characters; the limit is {MAX_LEN}"
            )));
        }
        let nesting = nesting(source);
        if nesting > MAX_NESTING {
            return Err(too_complex(format!(
                "the expression nests {nesting} levels deep; the limit is {MAX_NESTING}"
            )));
        }
        // The CEL parser recurses once per level of the text, and the syntax tree it returns
        // is dropped recursively: both happen on a thread with a large stack, so that no text
        // the pre-scan misjudges (a quote inside a raw string or a comment) reaches the
        // caller's stack. Only a tree shallow enough to check and evaluate comes back.
        let (mut ast, info) = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(PARSER_STACK)
                .spawn_scoped(scope, || {
                    let (ast, info) = parse(source)?;
                    let depth = ast_depth(&ast);
                    if depth > MAX_DEPTH {
                        return Err(too_complex(format!(
                            "the expression is {depth} operations deep; the limit is {MAX_DEPTH}"
                        )));
                    }
                    Ok((ast, info))
                })
                .map_err(|e| vec![internal(e.to_string())])?
                .join()
                .map_err(|_| vec![internal("the parser failed".into())])?
        })?;
        // Offsets from the parser count bytes; diagnostics count characters.
        let offsets = |id: u64| {
            info.offset_for(id).map_or(0, |(start, _)| {
                let byte = (start as usize).min(source.len());
                source.char_indices().take_while(|(i, _)| *i < byte).count()
            })
        };
        let ty = celenv::check(&mut ast, site, &offsets)?;
        if site == Site::Bucket && !matches!(ty, Ty::String | Ty::Dyn) {
            return Err(vec![CompileError {
                code: "cel/not-string",
                message: format!("a bucket must be a string, but this is {}", ty_name(&ty)),
                offset: 0,
                help: Some("convert it with `string(...)`, or join ids with `+`".into()),
            }]);
        }
        if site != Site::Bucket && !matches!(ty, Ty::Bool | Ty::Dyn) {
            return Err(vec![CompileError {
                code: "cel/not-boolean",
                message: format!("a condition must be bool, but this is {}", ty_name(&ty)),
                offset: 0,
                help: Some("compare it with something, e.g. `== \"value\"`".into()),
            }]);
        }
        Ok(CompiledExpr {
            source: source.into(),
            location,
            ast,
        })
    }

    /// Evaluates the condition against the variables `vars` resolves.
    pub fn eval(&self, vars: &dyn VariableResolver) -> Result<bool, EvalError> {
        self.eval_as(
            vars,
            |v| v.downcast_ref::<CelBool>().map(|b| *b.inner()),
            "bool",
        )
    }

    /// Evaluates a string-valued expression (a rate limit's bucket).
    pub fn eval_string(&self, vars: &dyn VariableResolver) -> Result<String, EvalError> {
        self.eval_as(
            vars,
            |v| v.downcast_ref::<CelString>().map(|s| s.inner().to_owned()),
            "string",
        )
    }

    fn eval_as<T>(
        &self,
        vars: &dyn VariableResolver,
        take: impl FnOnce(&dyn cel::common::value::Val) -> Option<T>,
        what: &str,
    ) -> Result<T, EvalError> {
        let mut ctx = Context::with_env(ENV.clone());
        ctx.set_variable_resolver(vars);
        let fail = |message: String| EvalError {
            location: self.location.clone(),
            expression: self.source.clone(),
            message,
        };
        match Value::resolve_val(&self.ast, &ctx) {
            Ok(v) => match take(&*v) {
                Some(t) => Ok(t),
                None => Err(fail(format!("the result is not a {what} but {:?}", v))),
            },
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

fn ty_name(ty: &Ty) -> String {
    format!("{ty:?}").to_lowercase()
}

/// The longest expression accepted, in characters.
const MAX_LEN: usize = 4_096;
/// The deepest bracket nesting accepted.
const MAX_NESTING: usize = 24;
/// The deepest syntax tree accepted (long chains of operators nest too).
const MAX_DEPTH: usize = 32;
/// Stack for parsing expressions: the recursive parser needs a lot in debug builds.
const PARSER_STACK: usize = 256 << 20;

/// The error for an expression beyond the limits.
fn too_complex(message: String) -> Vec<CompileError> {
    vec![CompileError {
        code: "cel/too-complex",
        message,
        offset: 0,
        help: Some("split the condition into several rules, or simplify it".into()),
    }]
}

fn internal(message: String) -> CompileError {
    CompileError {
        code: "cel/internal",
        message,
        offset: 0,
        help: None,
    }
}

fn parse(source: &str) -> Result<(IdedExpr, cel::common::ast::SourceInfo), Vec<CompileError>> {
    ENV.parser().parse_with_source_info(source).map_err(|errs| {
        // The parser's own bound on nesting, met by text the pre-scan could not see into.
        if errs
            .errors
            .iter()
            .any(|e| e.msg.contains("Recursion limit"))
        {
            return too_complex("the expression nests too deeply".into());
        }
        errs.errors
            .iter()
            .map(|e| CompileError {
                code: "cel/syntax",
                message: e.msg.clone(),
                offset: offset_of(source, e.pos),
                help: None,
            })
            .collect()
    })
}

/// The deepest bracket nesting outside string literals.
fn nesting(source: &str) -> usize {
    let (mut depth, mut deepest, mut quote) = (0usize, 0usize, None::<char>);
    let mut escaped = false;
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    deepest
}

/// The direct children of a syntax tree node.
fn children(e: &cel::common::ast::Expr) -> Vec<&IdedExpr> {
    use cel::common::ast::{EntryExpr, Expr};
    match e {
        Expr::Call(c) => c.target.iter().map(|t| &**t).chain(&c.args).collect(),
        Expr::Select(s) => vec![&s.operand],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                _ => Vec::new(),
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => Some(&f.value),
                _ => None,
            })
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// The depth of a syntax tree, measured without recursion.
fn ast_depth(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(&e.expr).into_iter().map(|c| (c, d + 1)));
    }
    deepest
}

/// Whether a syntax tree names the variable `root` or a path under it (`budget` for
/// `budget.key.fraction`), walked without recursion.
fn ast_reads(root_expr: &IdedExpr, root: &str) -> bool {
    let mut stack = vec![root_expr];
    while let Some(e) = stack.pop() {
        if let cel::common::ast::Expr::Ident(name) = &e.expr {
            if name == root || name.strip_prefix(root).is_some_and(|r| r.starts_with('.')) {
                return true;
            }
        }
        stack.extend(children(&e.expr));
    }
    false
}

/// Character offset of a parser position (line and column, both 1-based) in `source`.
fn offset_of(source: &str, (line, col): (isize, isize)) -> usize {
    let line = usize::try_from(line.max(1)).unwrap_or(1);
    let col = usize::try_from(col.max(1)).unwrap_or(1) - 1;
    let before: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + col
}

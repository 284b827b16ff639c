//! A CEL expression compiled once when a policy loads and evaluated per request.

use crate::celenv::{self, CheckError, Site, Ty, CACHED_MATCHES};
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

/// A problem compiling an expression: where in the expression, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    /// Stable code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Character offset into the expression.
    pub offset: usize,
    /// A hint.
    pub help: Option<String>,
}

/// A failure evaluating an expression at run time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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

    /// Parses and checks `source` written at `site`; a condition must be boolean.
    pub fn compile(
        source: &str,
        site: Site,
        location: Location,
    ) -> Result<Self, Vec<CompileError>> {
        let parsed = ENV.parser().parse_with_source_info(source);
        let (mut ast, info) = match parsed {
            Ok(ok) => ok,
            Err(errs) => {
                return Err(errs
                    .errors
                    .iter()
                    .map(|e| CompileError {
                        code: "cel/syntax",
                        message: e.msg.clone(),
                        offset: offset_of(source, e.pos),
                        help: None,
                    })
                    .collect())
            }
        };
        let offsets = |id: u64| info.offset_for(id).map_or(0, |(start, _)| start as usize);
        let ty = celenv::check(&mut ast, site, &offsets).map_err(|errs| {
            errs.into_iter()
                .map(
                    |CheckError {
                         code,
                         message,
                         offset,
                         help,
                     }| CompileError {
                        code,
                        message,
                        offset,
                        help,
                    },
                )
                .collect::<Vec<_>>()
        })?;
        if !matches!(ty, Ty::Bool | Ty::Dyn) {
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
        let mut ctx = Context::with_env(ENV.clone());
        ctx.set_variable_resolver(vars);
        let fail = |message: String| EvalError {
            location: self.location.clone(),
            expression: self.source.clone(),
            message,
        };
        match Value::resolve_val(&self.ast, &ctx) {
            Ok(v) => match v.downcast_ref::<CelBool>() {
                Some(b) => Ok(*b.inner()),
                None => Err(fail(format!("the result is not a bool but {:?}", v))),
            },
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

fn ty_name(ty: &Ty) -> String {
    format!("{ty:?}").to_lowercase()
}

/// Character offset of a parser position (line 1-based, column 0-based) in `source`.
fn offset_of(source: &str, (line, col): (isize, isize)) -> usize {
    let line = usize::try_from(line.max(1)).unwrap_or(1);
    let col = usize::try_from(col.max(0)).unwrap_or(0);
    let before: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + col
}

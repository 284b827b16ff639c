//! The declared CEL environment and the checker that holds every expression to it.
//!
//! cel-rust parses and evaluates but does not type-check. This module reads the environment
//! from `schemas/cel-environment.schema.json`, checks every reference, field, function and
//! literal type of an expression against it, and rewrites field paths such as `request.model`
//! into single variables so evaluation resolves a leaf directly from the request.

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

/// A CEL type as far as the checker needs one.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `uint`.
    Uint,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
    /// `timestamp`.
    Timestamp,
    /// `duration`.
    Duration,
    /// `null`.
    Null,
    /// Anything (comprehension accumulators, literal maps).
    Dyn,
    /// `list(T)`.
    List(Box<Ty>),
    /// `map(string, T)`.
    Map(Box<Ty>),
    /// A declared object with fixed fields, by path (`request`, `budget.key`).
    Object(String),
}

impl Ty {
    fn name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Duration => "duration".into(),
            Ty::Null => "null".into(),
            Ty::Dyn => "dyn".into(),
            Ty::List(t) => format!("list({})", t.name()),
            Ty::Map(t) => format!("map(string, {})", t.name()),
            Ty::Object(p) => format!("object `{p}`"),
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double | Ty::Dyn)
    }
}

/// Where an expression is written; decides which variables it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A rule's `when`.
    When,
    /// A routing rule's candidate `filter` (may read `m`).
    Filter,
    /// A rate limit's `bucket`: yields a string.
    Bucket,
}

impl Site {
    fn name(self) -> &'static str {
        match self {
            Site::When => "when",
            Site::Filter => "filter",
            Site::Bucket => "bucket",
        }
    }
}

/// The declared environment.
#[derive(Debug)]
pub struct Environment {
    /// Field tables of objects, by path.
    objects: HashMap<String, BTreeMap<String, Ty>>,
    /// Root variables with their type and the sites they are limited to.
    roots: BTreeMap<String, (Ty, Option<Vec<String>>)>,
}

/// The environment declared by the embedded schema.
pub static ENVIRONMENT: LazyLock<Environment> = LazyLock::new(|| {
    let schema: serde_json::Value = serde_json::from_str(crate::schema::CEL_ENVIRONMENT)
        .expect("embedded CEL environment is valid JSON (tested)");
    Environment::from_schema(&schema)
});

impl Environment {
    /// Builds the environment from its JSON Schema.
    pub fn from_schema(schema: &serde_json::Value) -> Environment {
        let mut env = Environment {
            objects: HashMap::new(),
            roots: BTreeMap::new(),
        };
        if let Some(props) = schema["properties"].as_object() {
            for (name, decl) in props {
                let ty = env.ty_of(schema, decl, name);
                let only = decl
                    .get("x-llmgw-only-in")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    });
                env.roots.insert(name.clone(), (ty, only));
            }
        }
        env
    }

    fn ty_of(&mut self, root: &serde_json::Value, decl: &serde_json::Value, path: &str) -> Ty {
        let decl = match decl.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => r
                .strip_prefix("#/")
                .map(|p| p.split('/').fold(root, |node, seg| &node[seg]))
                .unwrap_or(&serde_json::Value::Null),
            None => decl,
        };
        match decl["type"].as_str() {
            Some("string") if decl["format"] == "date-time" => Ty::Timestamp,
            Some("string") => Ty::String,
            Some("integer") => Ty::Int,
            Some("number") => Ty::Double,
            Some("boolean") => Ty::Bool,
            Some("array") => Ty::List(Box::new(self.ty_of(root, &decl["items"], path))),
            Some("object") => match decl["properties"].as_object() {
                Some(props) => {
                    let mut fields = BTreeMap::new();
                    for (name, sub) in props {
                        let sub_path = format!("{path}.{name}");
                        fields.insert(name.clone(), self.ty_of(root, sub, &sub_path));
                    }
                    self.objects.insert(path.to_owned(), fields);
                    Ty::Object(path.to_owned())
                }
                None => Ty::Map(Box::new(self.ty_of(
                    root,
                    &decl["additionalProperties"],
                    path,
                ))),
            },
            _ => Ty::Dyn,
        }
    }

    /// Every leaf path the environment declares with its type (`request.model`, …).
    #[cfg(test)]
    pub fn leaves(&self) -> Vec<(String, Ty)> {
        fn walk(env: &Environment, path: &str, ty: &Ty, out: &mut Vec<(String, Ty)>) {
            match ty {
                Ty::Object(p) => {
                    for (name, t) in &env.objects[p] {
                        walk(env, &format!("{path}.{name}"), t, out);
                    }
                }
                other => out.push((path.to_owned(), other.clone())),
            }
        }
        let mut out = Vec::new();
        for (name, (ty, _)) in &self.roots {
            walk(self, name, ty, &mut out);
        }
        out
    }
}

/// A problem found by the checker, at a character offset into the expression.
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

/// Checks an expression written at `site`, rewrites it for evaluation and returns its type.
pub fn check(
    expr: &mut IdedExpr,
    site: Site,
    offsets: &dyn Fn(u64) -> usize,
) -> Result<Ty, Vec<CompileError>> {
    let mut checker = Checker {
        env: &ENVIRONMENT,
        site,
        locals: Vec::new(),
        errors: Vec::new(),
        offsets,
    };
    let ty = checker.expr(expr);
    if checker.errors.is_empty() {
        Ok(ty)
    } else {
        Err(checker.errors)
    }
}

struct Checker<'a> {
    env: &'a Environment,
    site: Site,
    locals: Vec<(String, Ty)>,
    errors: Vec<CompileError>,
    offsets: &'a dyn Fn(u64) -> usize,
}

fn suggest<'s>(name: &str, options: impl Iterator<Item = &'s String>) -> Option<String> {
    let options: Vec<&String> = options.collect();
    let close = options
        .iter()
        .filter(|o| strsim(name, o) <= 2)
        .min_by_key(|o| strsim(name, o));
    match close {
        Some(o) => Some(format!("did you mean `{o}`?")),
        None => Some(format!(
            "known: {}",
            options
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Levenshtein distance, for "did you mean".
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The name the evaluator resolves a rewritten path by.
pub fn path_variable(path: &str) -> String {
    path.to_owned()
}

/// Functions the checker knows, with their result type given the receiver and argument types.
const FUNCTIONS: &[&str] = &[
    "size",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "timestamp",
    "duration",
    "getHours",
    "getMinutes",
    "getDayOfWeek",
    "getDayOfMonth",
    "getDayOfYear",
    "getMonth",
    "getFullYear",
    "getDate",
];

/// The name `matches` is rewritten to: the same semantics with a cached regex.
pub const CACHED_MATCHES: &str = "llmgwMatches";

impl Checker<'_> {
    fn err(&mut self, id: u64, code: &'static str, message: String, help: Option<String>) {
        let offset = (self.offsets)(id);
        self.errors.push(CompileError {
            code,
            message,
            offset,
            help,
        });
    }

    /// The static path an expression spells (`request.model`), if it is one rooted at a root
    /// variable not shadowed by a local.
    fn path_of(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Ident(name) if !self.locals.iter().any(|(l, _)| l == name) => {
                self.env.roots.contains_key(name).then(|| name.clone())
            }
            Expr::Select(sel) if !sel.test => {
                let base = self.path_of(&sel.operand.expr)?;
                Some(format!("{base}.{}", sel.field))
            }
            _ => None,
        }
    }

    fn expr(&mut self, e: &mut IdedExpr) -> Ty {
        let id = e.id;
        match &mut e.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => {
                if let Some((_, ty)) = self.locals.iter().rev().find(|(l, _)| l == name) {
                    return ty.clone();
                }
                let name = name.clone();
                self.root(id, &name, e)
            }
            Expr::Select(_) => self.select(e),
            Expr::Call(_) => self.call(e),
            Expr::List(list) => {
                let mut elem: Option<Ty> = None;
                for item in &mut list.elements {
                    let t = self.expr(item);
                    elem = Some(match elem {
                        None => t,
                        Some(prev) if prev == t => prev,
                        Some(_) => Ty::Dyn,
                    });
                }
                Ty::List(Box::new(elem.unwrap_or(Ty::Dyn)))
            }
            Expr::Map(map) => {
                for entry in &mut map.entries {
                    if let EntryExpr::MapEntry(me) = &mut entry.expr {
                        self.expr(&mut me.key);
                        self.expr(&mut me.value);
                    }
                }
                Ty::Map(Box::new(Ty::Dyn))
            }
            Expr::Comprehension(c) => {
                let range = self.expr(&mut c.iter_range);
                let elem = match &range {
                    Ty::List(t) => (**t).clone(),
                    Ty::Map(_) => Ty::String,
                    Ty::Dyn => Ty::Dyn,
                    other => {
                        let msg = format!("cannot iterate over {}", other.name());
                        self.err(id, "cel/type-mismatch", msg, None);
                        Ty::Dyn
                    }
                };
                let accu = self.expr(&mut c.accu_init);
                self.locals.push((c.accu_var.clone(), accu));
                self.locals.push((c.iter_var.clone(), elem));
                if let Some(v2) = &c.iter_var2 {
                    self.locals.push((v2.clone(), Ty::Dyn));
                }
                self.expr(&mut c.loop_cond);
                let step = self.expr(&mut c.loop_step);
                if let Some(slot) = self.locals.iter_mut().rev().find(|(n, _)| *n == c.accu_var) {
                    slot.1 = step;
                }
                let result = self.expr(&mut c.result);
                let pops = 2 + usize::from(c.iter_var2.is_some());
                self.locals.truncate(self.locals.len() - pops);
                result
            }
            Expr::Struct(_) => {
                self.err(
                    id,
                    "cel/unsupported",
                    "message construction is not supported in policy rules".into(),
                    None,
                );
                Ty::Dyn
            }
            Expr::Unspecified => Ty::Dyn,
        }
    }

    fn root(&mut self, id: u64, name: &str, e: &mut IdedExpr) -> Ty {
        match self.env.roots.get(name) {
            None => {
                let help = suggest(name, self.env.roots.keys());
                self.err(
                    id,
                    "cel/unknown-variable",
                    format!("unknown variable `{name}`"),
                    help,
                );
                Ty::Dyn
            }
            Some((ty, only)) => {
                if let Some(only) = only {
                    if !only.iter().any(|s| s == self.site.name()) {
                        self.err(
                            id,
                            "cel/variable-not-here",
                            format!(
                                "`{name}` is only available in {}, not in `{}`",
                                only.join(", "),
                                self.site.name()
                            ),
                            None,
                        );
                    }
                }
                self.leaf(name, ty.clone(), e)
            }
        }
    }

    /// A resolved path of type `ty`: objects must be selected further; leaves are rewritten.
    fn leaf(&mut self, path: &str, ty: Ty, e: &mut IdedExpr) -> Ty {
        if let Ty::Object(_) = ty {
            return ty;
        }
        e.expr = Expr::Ident(path_variable(path));
        ty
    }

    fn select(&mut self, e: &mut IdedExpr) -> Ty {
        let id = e.id;
        let Expr::Select(sel) = &mut e.expr else {
            unreachable!("select() is called on selects")
        };
        let test = sel.test;
        let field = sel.field.clone();
        let base_path = self.path_of(&sel.operand.expr);
        let base = self.expr(&mut sel.operand);
        match base {
            Ty::Object(obj) => {
                let fields = &self.env.objects[&obj];
                match fields.get(&field) {
                    None => {
                        let help = suggest(&field, fields.keys());
                        self.err(
                            id,
                            "cel/unknown-field",
                            format!("`{obj}` has no field `{field}`"),
                            help,
                        );
                        Ty::Dyn
                    }
                    Some(_) if test => Ty::Bool,
                    Some(ty) => {
                        let ty = ty.clone();
                        match base_path {
                            Some(p) => self.leaf(&format!("{p}.{field}"), ty, e),
                            None => ty,
                        }
                    }
                }
            }
            Ty::Map(v) => {
                if test {
                    Ty::Bool
                } else {
                    *v
                }
            }
            Ty::Dyn => Ty::Dyn,
            other => {
                let msg = format!("cannot select field `{field}` of a {}", other.name());
                self.err(id, "cel/type-mismatch", msg, None);
                Ty::Dyn
            }
        }
    }

    fn call(&mut self, e: &mut IdedExpr) -> Ty {
        let id = e.id;
        let Expr::Call(call) = &mut e.expr else {
            unreachable!("call() is called on calls")
        };
        let name = call.func_name.clone();
        let target = call.target.as_mut().map(|t| self.expr(t));
        let args: Vec<Ty> = call.args.iter_mut().map(|a| self.expr(a)).collect();
        for t in target.iter().chain(args.iter()) {
            if let Ty::Object(p) = t {
                let msg = format!("`{p}` is an object; select one of its fields");
                self.err(id, "cel/object-value", msg, None);
            }
        }
        let mismatch = |this: &mut Self, what: &str| {
            let shown: Vec<String> = target.iter().chain(args.iter()).map(Ty::name).collect();
            this.err(
                id,
                "cel/type-mismatch",
                format!("{what} cannot take ({})", shown.join(", ")),
                None,
            );
            Ty::Dyn
        };
        let compatible = |a: &Ty, b: &Ty| {
            a == b
                || matches!(a, Ty::Dyn | Ty::Null)
                || matches!(b, Ty::Dyn | Ty::Null)
                || (a.numeric() && b.numeric())
                || matches!(
                    (a, b),
                    (Ty::List(_), Ty::List(_)) | (Ty::Map(_), Ty::Map(_))
                )
        };
        match (name.as_str(), args.as_slice()) {
            ("_==_" | "_!=_", [a, b]) => {
                if compatible(a, b) {
                    Ty::Bool
                } else {
                    let msg = format!("cannot compare {} with {}", a.name(), b.name());
                    self.err(id, "cel/type-mismatch", msg, None);
                    Ty::Bool
                }
            }
            ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b]) => {
                let ok = (a.numeric() && b.numeric())
                    || (a == b
                        && matches!(a, Ty::String | Ty::Timestamp | Ty::Duration | Ty::Bool))
                    || matches!(a, Ty::Dyn)
                    || matches!(b, Ty::Dyn);
                if !ok {
                    let msg = format!("cannot order {} against {}", a.name(), b.name());
                    self.err(id, "cel/type-mismatch", msg, None);
                }
                Ty::Bool
            }
            ("_&&_" | "_||_", [a, b]) => {
                for t in [a, b] {
                    if !matches!(t, Ty::Bool | Ty::Dyn) {
                        let msg = format!("`&&` and `||` need bool operands, not {}", t.name());
                        self.err(id, "cel/type-mismatch", msg, None);
                    }
                }
                Ty::Bool
            }
            ("!_", [a]) => {
                if !matches!(a, Ty::Bool | Ty::Dyn) {
                    let msg = format!("`!` needs a bool, not {}", a.name());
                    self.err(id, "cel/type-mismatch", msg, None);
                }
                Ty::Bool
            }
            ("-_", [a]) if a.numeric() => a.clone(),
            ("_?_:_", [c, a, b]) => {
                if !matches!(c, Ty::Bool | Ty::Dyn) {
                    let msg = format!("a condition must be bool, not {}", c.name());
                    self.err(id, "cel/type-mismatch", msg, None);
                }
                if a == b {
                    a.clone()
                } else {
                    Ty::Dyn
                }
            }
            ("_+_" | "_-_" | "_*_" | "_/_" | "_%_", [a, b]) => match (a, b) {
                (Ty::Dyn, t) | (t, Ty::Dyn) => t.clone(),
                (a, b) if a == b && a.numeric() => a.clone(),
                (Ty::String, Ty::String) if name == "_+_" => Ty::String,
                (Ty::List(t), Ty::List(_)) if name == "_+_" => Ty::List(t.clone()),
                (Ty::Timestamp, Ty::Duration) if name == "_+_" || name == "_-_" => Ty::Timestamp,
                (Ty::Timestamp, Ty::Timestamp) if name == "_-_" => Ty::Duration,
                (Ty::Duration, Ty::Duration) if name != "_*_" => Ty::Duration,
                (a, b) if a.numeric() && b.numeric() => {
                    let msg = format!(
                        "arithmetic cannot mix {} and {}; write both as the same type (`1.0` for a double)",
                        a.name(),
                        b.name()
                    );
                    self.err(id, "cel/type-mismatch", msg, None);
                    Ty::Dyn
                }
                _ => mismatch(self, "arithmetic"),
            },
            ("_[_]", [c, k]) => match c {
                Ty::Map(v) => {
                    if !matches!(k, Ty::String | Ty::Dyn) {
                        let msg = format!("map keys are strings, not {}", k.name());
                        self.err(id, "cel/type-mismatch", msg, None);
                    }
                    (**v).clone()
                }
                Ty::List(t) => {
                    if !matches!(k, Ty::Int | Ty::Uint | Ty::Dyn) {
                        let msg = format!("list indices are ints, not {}", k.name());
                        self.err(id, "cel/type-mismatch", msg, None);
                    }
                    (**t).clone()
                }
                Ty::Dyn => Ty::Dyn,
                _ => mismatch(self, "indexing"),
            },
            ("@in", [k, c]) => {
                let ok = match c {
                    Ty::List(t) => compatible(k, t),
                    Ty::Map(_) => matches!(k, Ty::String | Ty::Dyn),
                    Ty::Dyn => true,
                    _ => false,
                };
                if !ok {
                    let msg = format!("cannot test {} in {}", k.name(), c.name());
                    self.err(id, "cel/type-mismatch", msg, None);
                }
                Ty::Bool
            }
            // What `all` and `exists` expand to.
            ("@not_strictly_false", [_]) => Ty::Bool,
            _ => self.function(id, call, target, &args),
        }
    }

    fn function(&mut self, id: u64, call: &mut CallExpr, target: Option<Ty>, args: &[Ty]) -> Ty {
        let name = call.func_name.clone();
        let name = name.as_str();
        if !FUNCTIONS.contains(&name) {
            let known: Vec<String> = FUNCTIONS.iter().map(|s| s.to_string()).collect();
            let help = suggest(name, known.iter());
            self.err(
                id,
                "cel/unknown-function",
                format!("unknown function `{name}`"),
                help,
            );
            return Ty::Dyn;
        }
        let all: Vec<&Ty> = target.iter().chain(args.iter()).collect();
        let want = |ok: bool, this: &mut Self, ret: Ty| {
            if !ok {
                let shown: Vec<String> = all.iter().map(|t| t.name()).collect();
                this.err(
                    id,
                    "cel/type-mismatch",
                    format!("`{name}` cannot take ({})", shown.join(", ")),
                    None,
                );
            }
            ret
        };
        let is = |t: &Ty, want: &Ty| t == want || matches!(t, Ty::Dyn);
        match name {
            "size" => want(
                all.len() == 1
                    && matches!(
                        all[0],
                        Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Dyn
                    ),
                self,
                Ty::Int,
            ),
            "startsWith" | "endsWith" | "contains" => want(
                target.as_ref().is_some_and(|t| is(t, &Ty::String))
                    && args.len() == 1
                    && is(&args[0], &Ty::String),
                self,
                Ty::Bool,
            ),
            "matches" => {
                let ok = all.len() == 2 && all.iter().all(|t| is(t, &Ty::String));
                let pattern = call.args.last().and_then(|a| match &a.expr {
                    Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
                    _ => None,
                });
                match pattern {
                    Some(p) => {
                        if let Err(e) = regex::Regex::new(&p) {
                            self.err(id, "cel/bad-regex", format!("invalid regular expression: {e}"), None);
                        }
                    }
                    None => self.err(
                        id,
                        "cel/dynamic-regex",
                        "`matches` needs a string literal pattern, so it can be checked and compiled once".into(),
                        None,
                    ),
                }
                call.func_name = CACHED_MATCHES.to_owned();
                want(ok, self, Ty::Bool)
            }
            "int" => want(all.len() == 1, self, Ty::Int),
            "uint" => want(all.len() == 1, self, Ty::Uint),
            "double" => want(all.len() == 1, self, Ty::Double),
            "string" => want(all.len() == 1, self, Ty::String),
            "bool" => want(all.len() == 1, self, Ty::Bool),
            "timestamp" => want(
                all.len() == 1 && is(all[0], &Ty::String),
                self,
                Ty::Timestamp,
            ),
            "duration" => want(
                all.len() == 1 && is(all[0], &Ty::String),
                self,
                Ty::Duration,
            ),
            _ => want(
                target.as_ref().is_some_and(|t| is(t, &Ty::Timestamp))
                    && args.len() <= 1
                    && args.iter().all(|a| is(a, &Ty::String)),
                self,
                Ty::Int,
            ),
        }
    }
}

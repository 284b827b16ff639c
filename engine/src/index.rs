//! The rule index: which rules can apply to a requested model.
//!
//! A rule whose condition requires `request.model == "x"` (or `request.model in [...]`) as one
//! of its top-level conjuncts can only match those models, so the engine never evaluates it for
//! others. Everything else is evaluated for every model.

use crate::policy::Rule;
use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

const MODEL: &str = "request.model";

fn string_lit(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn is_model(e: &Expr) -> bool {
    matches!(e, Expr::Ident(n) if n == MODEL)
}

/// The models a condition restricts `request.model` to, if it restricts it.
pub(crate) fn models_of(e: &IdedExpr) -> Option<BTreeSet<String>> {
    let Expr::Call(call) = &e.expr else {
        return None;
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        ("_&&_", [a, b]) => match (models_of(a), models_of(b)) {
            (Some(x), Some(y)) => Some(x.intersection(&y).cloned().collect()),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        },
        ("_==_", [a, b]) if is_model(&a.expr) => string_lit(&b.expr).map(|s| [s.to_owned()].into()),
        ("_==_", [a, b]) if is_model(&b.expr) => string_lit(&a.expr).map(|s| [s.to_owned()].into()),
        ("@in", [a, b]) if is_model(&a.expr) => match &b.expr {
            Expr::List(list) => list
                .elements
                .iter()
                .map(|x| string_lit(&x.expr).map(str::to_owned))
                .collect(),
            _ => None,
        },
        _ => None,
    }
}

/// The set of models for which a rule always matches: `Some(None)` for every model, `Some(set)`
/// when its condition is nothing but a model restriction, `None` when it may not match.
pub(crate) fn covers(rule: &Rule) -> Option<Option<BTreeSet<String>>> {
    let Some(when) = &rule.when else {
        return Some(None);
    };
    let ast = when.ast();
    if matches!(&ast.expr, Expr::Literal(LiteralValue::Boolean(b)) if *b.inner()) {
        return Some(None);
    }
    let Expr::Call(call) = &ast.expr else {
        return None;
    };
    let pure = match (call.func_name.as_str(), call.args.as_slice()) {
        ("_==_", [a, b]) => is_model(&a.expr) || is_model(&b.expr),
        ("@in", [a, _]) => is_model(&a.expr),
        _ => false,
    };
    if pure {
        models_of(ast).map(Some)
    } else {
        None
    }
}

/// Rule indices per model a rule names, and the rules to evaluate for any other model.
pub(crate) fn by_model(
    rules: &[Rule],
    models: &HashMap<Arc<str>, usize>,
) -> (HashMap<Arc<str>, Vec<usize>>, Vec<usize>) {
    let restricted: Vec<Option<BTreeSet<String>>> = rules
        .iter()
        .map(|r| r.when.as_ref().and_then(|w| models_of(w.ast())))
        .collect();
    let other: Vec<usize> = (0..rules.len())
        .filter(|&i| restricted[i].is_none())
        .collect();
    let mut names: BTreeSet<Arc<str>> = models.keys().cloned().collect();
    for set in restricted.iter().flatten() {
        names.extend(set.iter().map(|s| Arc::from(s.as_str())));
    }
    let by_model = names
        .into_iter()
        .map(|name| {
            let list = (0..rules.len())
                .filter(|&i| restricted[i].as_ref().is_none_or(|s| s.contains(&*name)))
                .collect();
            (name, list)
        })
        .collect();
    (by_model, other)
}

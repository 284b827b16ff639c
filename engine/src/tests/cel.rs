//! The CEL checker and evaluator against the declared environment.

use crate::celenv::{Site, ENVIRONMENT};
use crate::expr::CompiledExpr;
use crate::input::{DeploymentStats, Identity, Principal, RequestFacts};
use crate::model::{Capability, Price};
use crate::policy::{Location, ModelInfo};
use crate::views::{BudgetVars, Candidate, Facts, RateVars, Spend};
use cel::context::VariableResolver;
use std::collections::BTreeMap;
use std::sync::Arc;

fn compile(text: &str, site: Site) -> Result<CompiledExpr, Vec<(&'static str, usize)>> {
    CompiledExpr::compile(text, site, Location::default())
        .map_err(|errs| errs.into_iter().map(|e| (e.code, e.offset)).collect())
}

fn first_code(text: &str, site: Site) -> &'static str {
    compile(text, site).expect_err(text)[0].0
}

fn request() -> RequestFacts {
    RequestFacts {
        model: "gpt-4o".into(),
        input_tokens: 1_500,
        max_tokens: Some(256),
        tools: true,
        metadata: BTreeMap::from([("workload".to_owned(), "batch".to_owned())]),
        ..RequestFacts::default()
    }
}

fn identity() -> Identity {
    Identity {
        key: Arc::new(Principal {
            id: "k1".into(),
            labels: BTreeMap::from([("tier".to_owned(), "dev".to_owned())]),
        }),
        ..Identity::default()
    }
}

fn eval(text: &str) -> bool {
    let req = request();
    let id = identity();
    let mut budget = BudgetVars::default();
    budget.scopes[0] = Spend {
        spent: 8.0,
        limit: 10.0,
    };
    let facts = Facts {
        request: &req,
        model: &req.model,
        identity: &id,
        budget: &budget,
        ratelimit: RateVars::default(),
        now: chrono::DateTime::from_timestamp(1_790_000_000, 0)
            .unwrap()
            .fixed_offset(),
    };
    compile(text, Site::When)
        .expect(text)
        .eval(&facts)
        .expect(text)
}

#[test]
fn conditions_evaluate_against_the_request() {
    assert!(eval(r#"request.model == "gpt-4o""#));
    assert!(eval(r#"request.metadata["workload"] == "batch""#));
    assert!(eval(
        r#"request.metadata.workload == "batch" && request.tools"#
    ));
    assert!(eval(
        r#""workload" in request.metadata && !("x" in request.metadata)"#
    ));
    assert!(eval(
        "request.input_tokens > 1000 && request.max_tokens <= 256"
    ));
    assert!(eval(
        "budget.key.fraction >= 0.8 && budget.max_fraction >= 0.8"
    ));
    assert!(eval(
        r#"key.labels.tier == "dev" && key.id.startsWith("k")"#
    ));
    assert!(eval(
        r#"request.model.matches("^gpt-4") && !request.model.matches("mini$")"#
    ));
    assert!(eval("now > timestamp('2026-01-01T00:00:00Z')"));
    assert!(eval("size(request.metadata) == 1"));
    assert!(!eval(
        r#"request.model in ["claude-sonnet", "gemini-flash"]"#
    ));
}

#[test]
fn mistakes_are_named_with_their_offset() {
    assert_eq!(
        first_code("reqest.model == 'x'", Site::When),
        "cel/unknown-variable"
    );
    assert_eq!(
        compile("request.modle == 'x'", Site::When).unwrap_err(),
        vec![("cel/unknown-field", 7)]
    );
    assert_eq!(
        first_code(r#"request.max_tokens == "many""#, Site::When),
        "cel/type-mismatch"
    );
    assert_eq!(first_code("request.model", Site::When), "cel/not-boolean");
    assert_eq!(
        first_code("lowerAscii(request.model) == 'x'", Site::When),
        "cel/unknown-function"
    );
    assert_eq!(
        first_code("request.model.matches('(')", Site::When),
        "cel/bad-regex"
    );
    assert_eq!(
        first_code("request.model.matches(key.id)", Site::When),
        "cel/dynamic-regex"
    );
    assert_eq!(
        first_code("m.quality > 0.5", Site::When),
        "cel/variable-not-here"
    );
    assert_eq!(
        first_code("request.input_tokens * 1.5 > 10.0", Site::When),
        "cel/type-mismatch"
    );
    assert_eq!(first_code("request == 'x'", Site::When), "cel/object-value");
    assert_eq!(first_code("request.model ==", Site::When), "cel/syntax");
    assert!(compile(
        "m.quality >= 0.8 && 'tools' in m.capabilities",
        Site::Filter
    )
    .is_ok());
}

/// Every leaf the environment schema declares resolves at run time, so the schema and the
/// views cannot drift apart.
#[test]
fn every_declared_leaf_resolves() {
    let req = request();
    let id = identity();
    let budget = BudgetVars::default();
    let facts = Facts {
        request: &req,
        model: &req.model,
        identity: &id,
        budget: &budget,
        ratelimit: RateVars::default(),
        now: chrono::DateTime::from_timestamp(0, 0)
            .unwrap()
            .fixed_offset(),
    };
    let model = ModelInfo {
        name: "m".into(),
        class: "c".into(),
        quality: 0.5,
        context_window: 1000,
        max_output_tokens: None,
        capabilities: vec![Capability::Chat],
        price: Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        },
        deployments: vec![],
        equivalents: vec![],
        location: Location::default(),
    };
    let candidate = Candidate {
        model: &model,
        stats: DeploymentStats::default(),
        healthy: true,
        estimated_cost: 0.1,
        quota_headroom: 1.0,
    };
    let leaves = ENVIRONMENT.leaves();
    assert!(
        leaves.len() > 30,
        "the environment declares {} leaves",
        leaves.len()
    );
    for (path, _) in leaves {
        let found = if path.starts_with("m.") {
            candidate.resolve(&path).is_some()
        } else {
            facts.resolve(&path).is_some()
        };
        assert!(found, "`{path}` is declared but does not resolve");
    }
}

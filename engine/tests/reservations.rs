//! What the gateway must hold against budgets before calling upstream.

use llmgw_engine::input::DecisionInput;
use llmgw_engine::{load_files, CompiledPolicy};

mod common;

fn bundled() -> CompiledPolicy {
    load_files(&common::bundled_files(), None)
        .policy
        .expect("bundled policies compile")
}

fn input(json: &str) -> DecisionInput {
    serde_json::from_str(json).expect("valid input")
}

#[test]
fn holds_cover_the_priciest_model_failover_may_reach() {
    let policy = bundled();
    let i = input(
        r#"{"request":{"model":"gpt-4o","input_tokens":1000,"max_tokens":500},
            "identity":{"key":{"id":"k1"}}}"#,
    );
    let d = policy.decide(&i.context(), &i, &i).unwrap();
    let worst = d
        .attempts
        .iter()
        .map(|a| policy.worst_case_cost(policy.model(&a.model).unwrap(), &i.context()))
        .fold(0.0, f64::max);
    assert!(
        worst > d.estimated_cost_usd,
        "the class holds a pricier model than GPT-4o"
    );
    let monthly = d
        .reservations
        .iter()
        .find(|r| &*r.budget == "key-monthly")
        .unwrap();
    assert_eq!(monthly.amount_usd, worst);
    assert!(monthly.strict);
}

#[test]
fn a_downgraded_request_does_not_hold_strictly_against_its_downgrade_budget() {
    let policy = bundled();
    let i = input(
        r#"{"request":{"model":"gpt-4o","input_tokens":1000},
            "identity":{"key":{"id":"key-dev-alice","labels":{"tier":"developer"}}},
            "spent_usd":{"developer-key-daily":9.995}}"#,
    );
    let d = policy.decide(&i.context(), &i, &i).unwrap();
    assert_eq!(d.downgrade.as_ref().map(|g| &*g.to), Some("qwen-2.5"));
    let daily = d
        .reservations
        .iter()
        .find(|r| &*r.budget == "developer-key-daily")
        .unwrap();
    assert!(!daily.strict, "the request is past this limit on purpose");
    let monthly = d
        .reservations
        .iter()
        .find(|r| &*r.budget == "key-monthly")
        .unwrap();
    assert!(monthly.strict, "other budgets still hold strictly");
}

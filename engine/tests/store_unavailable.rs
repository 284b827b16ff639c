//! `on_store_unavailable` on budgets: what each reservation carries, and what lint says of a
//! value it does not know.

use llmgw_engine::input::DecisionInput;
use llmgw_engine::load::{load_files, LoadOutcome};
use llmgw_engine::model::OnStoreUnavailable;
use llmgw_engine::source::policy_files;

const PROVIDERS: &str =
    "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n";

const MODELS: &str = "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: c\n    quality: 0.9\n    context_window: 8000\n    max_output_tokens: 1000\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n    deployments:\n      - provider: sim\n        upstream_model: m\n";

/// A policy with two key budgets: `open` with the given `on_store_unavailable` line (none
/// when empty), and `closed` without one.
fn policy(setting: &str) -> LoadOutcome {
    let budgets = format!(
        "apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: open\n    scope: key\n    period: daily\n    limit_usd: 1\n    on_exceed: block\n{setting}  - name: closed\n    scope: key\n    period: daily\n    limit_usd: 1\n    on_exceed: block\n"
    );
    let files = vec![
        ("providers.yaml".to_owned(), PROVIDERS.as_bytes().to_vec()),
        ("models.yaml".to_owned(), MODELS.as_bytes().to_vec()),
        ("budgets.yaml".to_owned(), budgets.into_bytes()),
    ];
    load_files(&policy_files(files), None)
}

#[test]
fn reservations_carry_what_their_budget_does_while_the_store_is_unavailable() {
    let outcome = policy("    on_store_unavailable: allow\n");
    let policy = outcome.policy.expect("compiles");
    let i: DecisionInput = serde_json::from_str(
        r#"{"request":{"model":"m","input_tokens":10,"max_tokens":10},"identity":{"key":{"id":"k"}}}"#,
    )
    .expect("input");
    let d = policy.decide(&i.context(), &i, &i).expect("decides");
    let of = |name: &str| {
        d.reservations
            .iter()
            .find(|r| &*r.budget == name)
            .map(|r| r.on_store_unavailable)
    };
    assert_eq!(of("open"), Some(OnStoreUnavailable::Allow));
    assert_eq!(
        of("closed"),
        Some(OnStoreUnavailable::Deny),
        "the default fails closed"
    );
}

#[test]
fn lint_names_an_unknown_on_store_unavailable_value_and_where_it_is() {
    let outcome = policy("    on_store_unavailable: open\n");
    assert!(outcome.policy.is_none(), "an unknown value never goes live");
    let finding = outcome
        .diagnostics
        .iter()
        .find(|d| format!("{d:?}").contains("on_store_unavailable"))
        .unwrap_or_else(|| panic!("a finding names the field: {:?}", outcome.diagnostics));
    let text = format!("{finding:?}");
    assert!(text.contains("budgets.yaml"), "{text}");
}

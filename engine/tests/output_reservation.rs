//! What a request reserves for its output, and why a request too large for every model is
//! refused.

use llmgw_engine::decide::{worst_case_output, DecideError, Unservable, DEFAULT_OUTPUT_TOKENS};
use llmgw_engine::input::DecisionInput;
use llmgw_engine::source::policy_files;
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

fn decide(policy: &CompiledPolicy, json: &str) -> Result<llmgw_engine::Decision, DecideError> {
    let i = input(json);
    policy.decide(&i.context(), &i, &i)
}

#[test]
fn a_request_without_max_tokens_reserves_the_models_maximum_output() {
    let policy = bundled();
    let gpt = policy.model("gpt-4o").unwrap();
    assert_eq!(gpt.max_output_tokens, Some(16384));
    assert_eq!(worst_case_output(gpt, None), 16384);
    assert_eq!(
        worst_case_output(gpt, Some(100)),
        100,
        "a smaller ask is kept"
    );
    assert_eq!(
        worst_case_output(gpt, Some(u64::MAX)),
        16384,
        "the model never writes more than its maximum"
    );
    let d = decide(
        &policy,
        r#"{"request":{"model":"gpt-4o","input_tokens":1000},
            "identity":{"key":{"id":"k1"}}}"#,
    )
    .unwrap();
    let gpt_cost = (1000.0 * 2.5 + 16384.0 * 10.0) / 1e6;
    assert!(
        (d.estimated_cost_usd - gpt_cost).abs() < 1e-12,
        "{}",
        d.estimated_cost_usd
    );
}

#[test]
fn a_model_without_a_declared_maximum_reserves_the_default() {
    let policy = bundled();
    let mut gpt = policy.model("gpt-4o").unwrap().clone();
    gpt.max_output_tokens = None;
    assert_eq!(worst_case_output(&gpt, None), DEFAULT_OUTPUT_TOKENS);
    assert_eq!(
        worst_case_output(&gpt, Some(u64::MAX)),
        gpt.context_window,
        "bounded by the context window"
    );
}

#[test]
fn max_tokens_at_u64_max_fits_no_context_window() {
    let e = decide(
        &bundled(),
        r#"{"request":{"model":"gpt-4o","input_tokens":10,"max_tokens":18446744073709551615},
            "identity":{"key":{"id":"k1"}}}"#,
    )
    .unwrap_err();
    let DecideError::NoDeployment { reason, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        reason,
        Unservable::ContextLength {
            tokens: u64::MAX,
            input_tokens: 10,
            largest_window: 128_000,
        },
        "the window of the only candidate, gpt-4o, is named"
    );
}

#[test]
fn a_prompt_larger_than_every_window_says_so() {
    let e = decide(
        &bundled(),
        r#"{"request":{"model":"claude-sonnet","input_tokens":2000000},
            "identity":{"key":{"id":"k1"}}}"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecideError::NoDeployment {
                reason: Unservable::ContextLength {
                    input_tokens: 2_000_000,
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_request_missing_a_capability_is_filtered_not_too_long() {
    // Embeddings are served by no chat model: nothing is dropped for its context window.
    let e = decide(
        &bundled(),
        r#"{"request":{"model":"gpt-4o","endpoint":"embeddings","input_tokens":10},
            "identity":{"key":{"id":"k1"}}}"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DecideError::NoDeployment {
                reason: Unservable::Filtered,
                ..
            }
        ),
        "{e:?}"
    );
}

const PROVIDERS: &str =
    "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n";

fn models(max_output: &str) -> String {
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: c\n    quality: 0.9\n    context_window: 8000\n{max_output}    price: {{input_per_mtok: 1, output_per_mtok: 2}}\n    deployments:\n      - provider: sim\n        upstream_model: m\n"
    )
}

fn budget(strict: bool) -> String {
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: cap\n    scope: key\n    period: daily\n    limit_usd: 1\n    on_exceed: block\n    strict: {strict}\n"
    )
}

fn warnings(max_output: &str, strict: bool) -> Vec<String> {
    let files = vec![
        ("providers.yaml".to_owned(), PROVIDERS.as_bytes().to_vec()),
        ("models.yaml".to_owned(), models(max_output).into_bytes()),
        ("budgets.yaml".to_owned(), budget(strict).into_bytes()),
    ];
    let outcome = load_files(&policy_files(files), None);
    assert!(outcome.policy.is_some(), "{:?}", outcome.diagnostics);
    outcome
        .diagnostics
        .iter()
        .map(|d| d.code.to_string())
        .collect()
}

#[test]
fn lint_warns_when_a_strict_budget_meets_a_model_without_a_maximum_output() {
    assert_eq!(warnings("", true), ["model/no-max-output"]);
    assert!(warnings("    max_output_tokens: 4000\n", true).is_empty());
    assert!(
        warnings("", false).is_empty(),
        "a soft budget may overshoot"
    );
}

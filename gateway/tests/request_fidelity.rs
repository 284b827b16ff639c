//! The gateway never changes what the client asked for: with a budget applying, the upstream
//! receives the client's body (only the model name mapped), strict budgets reserve the model's
//! maximum output instead of capping the request, a request that fits no context window is a
//! 400 `context_length_exceeded`, and the embedded default answers `hi` briefly.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;

/// Most output tokens of the test model; output costs 10 USD per million tokens, so a request
/// without `max_tokens` reserves 0.04 USD of output.
const MAX_OUTPUT: u64 = 4000;
const CONTEXT: u64 = 8000;

/// One model `chat-a` (upstream `a+ok` on the mock) and a strict daily cap per key.
fn policy(dir: &Path, base_url: &str, limit_usd: f64) {
    mock_policy(dir, base_url, &[]);
    let models = format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: chat-a\n    class: chat\n    quality: 0.9\n    context_window: {CONTEXT}\n    max_output_tokens: {MAX_OUTPUT}\n    price: {{ input_per_mtok: 1, output_per_mtok: 10 }}\n    deployments:\n      - provider: mock-a\n        upstream_model: a+ok\n"
    );
    let budgets = format!(
        "apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: {limit_usd}\n    on_exceed: block\n"
    );
    std::fs::write(dir.join("models.yaml"), models).expect("write policy");
    std::fs::write(dir.join("budgets.yaml"), budgets).expect("write policy");
}

fn gateway(base_url: &str, limit_usd: f64) -> (Gateway, tempfile::TempDir) {
    gateway_for(|dir| policy(dir, base_url, limit_usd))
}

/// The body the mock received, with the model the client asked for put back.
fn as_client_sent(mock: &llmgw_mock_provider::MockHandle) -> Value {
    let mut body = mock
        .stats
        .last_body("a+ok")
        .expect("the mock saw a request");
    assert_eq!(body["model"], "a+ok", "the model name is mapped");
    body["model"] = json!("chat-a");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_receives_the_clients_body_when_a_budget_applies() {
    let mock = mock().await;
    let (gw, _dir) = gateway(&mock.base_url(), 10.0);
    let url = gw.url("/v1/chat/completions");
    let without = json!({
        "model": "chat-a",
        "temperature": 0.3,
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let a = post(&url, &without.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let received = as_client_sent(&mock);
    assert!(received.get("max_tokens").is_none(), "{received}");
    assert_eq!(received, without);
    assert_eq!(
        a.json()["usage"]["completion_tokens"],
        llmgw_mock_provider::DEFAULT_TOKENS,
        "the upstream's own default length"
    );

    let with = json!({
        "model": "chat-a",
        "max_tokens": 7,
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let a = post(&url, &with.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(as_client_sent(&mock), with);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_budget_reserves_the_models_maximum_output() {
    let mock = mock().await;
    // 0.02 USD covers a request of 10 output tokens, not one that may write 4,000.
    let (gw, _dir) = gateway(&mock.base_url(), 0.02);
    let url = gw.url("/v1/chat/completions");
    let open = json!({
        "model": "chat-a",
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let a = post(&url, &open.to_string()).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "budget_exceeded", "{}", a.body);
    assert_eq!(mock.stats.attempts("a+ok"), 0, "nothing went upstream");

    let a = post(&url, &chat("chat-a", false, 10)).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Asserts a 400 `context_length_exceeded` naming `param`.
fn assert_too_long(a: &Answer, param: &str) {
    assert_eq!(a.status, 400, "{}", a.body);
    let e = &a.json()["error"];
    assert_eq!(e["code"], "context_length_exceeded", "{}", a.body);
    assert_eq!(e["type"], "invalid_request_error", "{}", a.body);
    assert_eq!(e["param"], param, "{}", a.body);
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains(&CONTEXT.to_string()),
        "the window is named: {}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_fits_no_context_window_is_a_400() {
    let mock = mock().await;
    let (gw, _dir) = gateway(&mock.base_url(), 10.0);
    let url = gw.url("/v1/chat/completions");
    let huge_max = r#"{"model":"chat-a","max_tokens":18446744073709551615,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_too_long(&post(&url, huge_max).await, "max_tokens");

    let prompt = "word ".repeat(10 * CONTEXT as usize);
    let long = json!({ "model": "chat-a", "messages": [{ "role": "user", "content": prompt }] });
    assert_too_long(&post(&url, &long.to_string()).await, "messages");
    assert_eq!(mock.stats.attempts("a+ok"), 0, "nothing went upstream");

    let fits = post(&url, &chat("chat-a", false, 5)).await;
    assert_eq!(fits.status, 200, "the gateway still serves: {}", fits.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_answers_hi_briefly() {
    let gw = Gateway::start(&[]);
    let hi = json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "hi" }] });
    let a = post(&gw.url("/v1/chat/completions"), &hi.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let tokens = a.json()["usage"]["completion_tokens"]
        .as_u64()
        .expect("usage");
    assert!(
        (1..=64).contains(&tokens),
        "a short answer, not the model's maximum output: {tokens} tokens"
    );
}

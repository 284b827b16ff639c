//! The Anthropic and Gemini adapters through the real `llmgw` binary, against the mock
//! provider speaking those protocols: whole answers, streams, and a broken stream resumed
//! with a prefill in the provider's own format.

mod common;

use common::*;
use std::path::Path;

/// One model `m` on a provider of `kind` at `base_url`, answering as `upstream`, and an
/// OpenAI-compatible backup.
fn policy(dir: &Path, kind: &str, base_url: &str, upstream: &str) {
    let mock_root = base_url.trim_end_matches("/v1");
    let base = match kind {
        "gemini" => format!("{mock_root}/v1beta"),
        _ => base_url.to_owned(),
    };
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: native\n    type: {kind}\n    region: r1\n    base_url: {base}\n    api_key: env:LLMGW_TEST_UPSTREAM_KEY\n    timeouts: {{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }}\n  - name: compat\n    type: openai_compatible\n    region: r2\n    base_url: {base_url}\n    timeouts: {{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }}\n"
    );
    let models = format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: chat\n    quality: 0.9\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 3, output_per_mtok: 15 }}\n    deployments:\n      - provider: native\n        upstream_model: \"{upstream}\"\n  - name: alt\n    class: chat\n    quality: 0.5\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: compat\n        upstream_model: \"alt+ok\"\n"
    );
    std::fs::write(dir.join("providers.yaml"), providers).expect("write");
    std::fs::write(dir.join("models.yaml"), models).expect("write");
}

async fn whole_and_streamed(kind: &str) {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, kind, &mock.base_url(), "native+ok"));
    let body = serde_json::json!({
        "model": "m", "max_tokens": 5,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Say something." },
        ],
    });
    let a = post(&gw.url("/v1/chat/completions"), &body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["model"], "m");
    assert_eq!(v["choices"][0]["message"]["content"], expected_text(5));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(a.header("x-llmgw-provider"), "native");
    let s = post(&gw.url("/v1/chat/completions"), &chat("m", true, 6)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.streamed_text(), expected_text(6));
    assert!(s.done());
    assert_eq!(mock.stats.attempts("native+ok"), 2);
    gw.wait_request_logs(2);
    assert!(!gw.logs().contains(UPSTREAM_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_whole_and_streamed() {
    whole_and_streamed("anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_generate_content_whole_and_streamed() {
    whole_and_streamed("gemini").await;
}

async fn cut_stream_resumes_on(kind: &str) {
    let mock = mock().await;
    // The OpenAI-compatible primary breaks; the native provider continues the answer.
    let (gw, _dir) = gateway_for(|d| {
        policy(d, kind, &mock.base_url(), "native+ok");
        let models = std::fs::read_to_string(d.join("models.yaml")).expect("read");
        let models = models
            .replace("quality: 0.9", "quality: 0.4")
            .replace("\"alt+ok\"", "\"alt+cut-3\"");
        std::fs::write(d.join("models.yaml"), models).expect("write");
    });
    let a = post(&gw.url("/v1/chat/completions"), &chat("alt", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert_eq!(a.streamed_models(), vec!["alt", "m"]);
    assert!(a.done() && !a.stream_error());
    assert_eq!(mock.stats.attempts("native+ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_resumes_on_anthropic_with_a_prefill() {
    cut_stream_resumes_on("anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_resumes_on_gemini_with_a_prefill() {
    cut_stream_resumes_on("gemini").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_overload_fails_over() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, "anthropic", &mock.base_url(), "native+503"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_models(), vec!["alt"]);
    assert_eq!(mock.stats.attempts("native+503"), 1);
}

async fn malformed_event_is_skipped_on(kind: &str) {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, kind, &mock.base_url(), "native+malformed-2"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 6)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(6));
    assert_eq!(a.streamed_models(), vec!["m"]);
    assert!(a.done() && !a.stream_error());
    assert_eq!(mock.stats.attempts("native+malformed-2"), 1);
    assert_eq!(mock.stats.attempts("alt+ok"), 0, "no extra upstream call");
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["malformed_events"], 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_anthropic_event_is_skipped() {
    malformed_event_is_skipped_on("anthropic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_gemini_event_is_skipped() {
    malformed_event_is_skipped_on("gemini").await;
}

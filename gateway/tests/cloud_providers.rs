//! The cloud upstreams through the real `llmgw` binary against the mock provider, which checks
//! each one's wire format and refuses what a real service would refuse.
//!
//! Azure OpenAI: the mock answers only `POST /openai/deployments/{deployment}/chat/completions`
//! with exactly one well-formed `api-version` and exactly one of the `api-key` header and an
//! `Authorization: Bearer` token; anything else gets Azure's 400/401/404 body, which would show
//! here as a failover to the backup. Errors, content-filter answers and throttling come in
//! Azure's own shapes.

mod common;

use common::*;
use std::path::Path;

/// Model `m` on an Azure OpenAI provider whose deployment is `deployment` (`auth` is the
/// provider's authentication lines), and model `alt` on an OpenAI-compatible backup.
fn azure_policy(dir: &Path, mock_root: &str, deployment: &str, auth: &str) {
    let timeouts = "{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }";
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: azure\n    type: azure_openai\n    region: eastus\n    base_url: {mock_root}\n{auth}    timeouts: {timeouts}\n  - name: compat\n    type: openai_compatible\n    region: r2\n    base_url: {mock_root}/v1\n    timeouts: {timeouts}\n"
    );
    let models = format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: chat\n    quality: 0.9\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 3, output_per_mtok: 15 }}\n    deployments:\n      - provider: azure\n        upstream_model: \"{deployment}\"\n  - name: alt\n    class: chat\n    quality: 0.5\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: compat\n        upstream_model: \"alt+ok\"\n"
    );
    std::fs::write(dir.join("providers.yaml"), providers).expect("write");
    std::fs::write(dir.join("models.yaml"), models).expect("write");
}

/// The `api-key` authentication of [`azure_policy`].
const API_KEY: &str =
    "    api_key: env:LLMGW_TEST_UPSTREAM_KEY\n    azure:\n      api_version: \"2024-10-21\"\n";

fn root(mock: &llmgw_mock_provider::MockHandle) -> String {
    format!("http://{}", mock.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_openai_whole_and_streamed() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), "gpt-4o+ok", API_KEY));
    let body = serde_json::json!({
        "model": "m", "max_tokens": 5,
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Say something." },
        ],
    });
    let a = post(&gw.url("/v1/chat/completions"), &body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "azure");
    let v = a.json();
    assert_eq!(v["model"], "m");
    assert_eq!(v["choices"][0]["message"]["content"], expected_text(5));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // Azure got OpenAI's body unchanged but for the upstream name.
    let sent = mock.stats.last_body("gpt-4o+ok").expect("a request");
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(sent["max_tokens"], 5);
    assert!(sent.get("stream").is_none(), "{sent}");

    let s = post(&gw.url("/v1/chat/completions"), &chat("m", true, 6)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.streamed_text(), expected_text(6));
    assert_eq!(s.streamed_models(), vec!["m"]);
    assert!(s.done() && !s.stream_error());
    let sent = mock.stats.last_body("gpt-4o+ok").expect("a request");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(mock.stats.attempts("gpt-4o+ok"), 2);
    assert_eq!(mock.stats.attempts("alt+ok"), 0, "no request was refused");
    gw.wait_request_logs(2);
    assert!(!gw.logs().contains(UPSTREAM_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_openai_with_an_entra_id_token() {
    let mock = mock().await;
    let token_dir = tempfile::tempdir().expect("tempdir");
    let token = token_dir.path().join("token");
    std::fs::write(
        &token,
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-test-token\n",
    )
    .expect("write");
    let auth = format!(
        "    azure:\n      api_version: \"2025-01-01-preview\"\n      entra_token: file:{}\n",
        token.display()
    );
    let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), "gpt-4o+ok", &auth));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "azure");
    assert_eq!(mock.stats.attempts("alt+ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_azure_request_fails_over() {
    // No credentials at all: Azure's 401 is an auth failure, and the backup answers.
    let mock = mock().await;
    let auth = "    azure:\n      api_version: \"2024-10-21\"\n";
    let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), "gpt-4o+ok", auth));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "compat");
    assert_eq!(
        mock.stats.attempts("gpt-4o+ok"),
        0,
        "refused before counting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_content_filter_answers_are_content_filter_errors() {
    for deployment in ["gpt-4o+content-filter", "gpt-4o+filtered-answer"] {
        let mock = mock().await;
        let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), deployment, API_KEY));
        let a = post(&gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
        assert_eq!(a.status, 400, "{deployment}: {}", a.body);
        assert!(
            a.body.contains("content_filter"),
            "{deployment}: {}",
            a.body
        );
        assert_eq!(mock.stats.attempts(deployment), 1);
        assert_eq!(
            mock.stats.attempts("alt+ok"),
            0,
            "a filtered prompt is not sent elsewhere"
        );
        let log = gw.wait_request_logs(1).pop().expect("request log");
        assert!(log.to_string().contains("content_filter"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_throttling_fails_over() {
    // Azure always sends `retry-after`; one longer than a pause is worth moves on at once.
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), "gpt-4o+429-ra-30", API_KEY));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_models(), vec!["alt"]);
    assert_eq!(a.streamed_text(), expected_text(4));
    assert_eq!(mock.stats.attempts("gpt-4o+429-ra-30"), 1);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert!(log.to_string().contains("rate_limited"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_on_azure_resumes_on_another_provider() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| azure_policy(d, &root(&mock), "gpt-4o+cut-3", API_KEY));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert_eq!(a.streamed_models(), vec!["m", "alt"]);
    assert!(a.done() && !a.stream_error());
    assert_eq!(mock.stats.attempts("gpt-4o+cut-3"), 1);
    assert_eq!(mock.stats.attempts("alt+ok"), 1);
}

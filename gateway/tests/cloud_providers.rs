//! The cloud upstreams through the real `llmgw` binary against the mock provider, which checks
//! each one's wire format and refuses what a real service would refuse.
//!
//! Azure OpenAI: the mock answers only `POST /openai/deployments/{deployment}/chat/completions`
//! with exactly one well-formed `api-version` and exactly one of the `api-key` header and an
//! `Authorization: Bearer` token; anything else gets Azure's 400/401/404 body, which would show
//! here as a failover to the backup. Errors, content-filter answers and throttling come in
//! Azure's own shapes.
//!
//! Vertex AI: the mock's token endpoint grants access tokens only for a JWT assertion signed by
//! the test service account's key with the right claims, and its model paths answer only a
//! request carrying an unexpired token it granted (401 `UNAUTHENTICATED` otherwise).

mod common;

use common::*;
use llmgw_mock_provider::vertex;
use std::path::Path;

/// Model `m` on an Azure OpenAI provider whose deployment is `deployment` (`auth` is the
/// provider's authentication lines), and model `alt` on an OpenAI-compatible backup.
fn azure_policy(dir: &Path, mock_root: &str, deployment: &str, auth: &str) {
    let azure =
        format!("    type: azure_openai\n    region: eastus\n    base_url: {mock_root}\n{auth}");
    cloud_policy(dir, mock_root, "azure", &azure, deployment);
}

/// Model `m` on provider `name` of the mock (`settings` are its lines after the name, but for
/// `timeouts`) whose upstream model is `upstream`, and model `alt` on an OpenAI-compatible
/// backup.
fn cloud_policy(dir: &Path, mock_root: &str, name: &str, settings: &str, upstream: &str) {
    let timeouts = "{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }";
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: {name}\n{settings}    timeouts: {timeouts}\n  - name: compat\n    type: openai_compatible\n    region: r2\n    base_url: {mock_root}/v1\n    timeouts: {timeouts}\n"
    );
    let models = format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: chat\n    quality: 0.9\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 3, output_per_mtok: 15 }}\n    deployments:\n      - provider: {name}\n        upstream_model: \"{upstream}\"\n  - name: alt\n    class: chat\n    quality: 0.5\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: compat\n        upstream_model: \"alt+ok\"\n"
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

/// A gateway whose model `m` is `upstream` on a Vertex AI provider of the mock, with the
/// backup `alt`.
struct OnVertex {
    mock: llmgw_mock_provider::MockHandle,
    gw: Gateway,
    _policy: tempfile::TempDir,
}

async fn on_vertex(upstream: &str) -> OnVertex {
    let mock = mock().await;
    let (gw, policy) = gateway_for(|d| {
        let vertex = vertex_provider(d, &mock);
        cloud_policy(d, &root(&mock), "vertex", &vertex, upstream)
    });
    OnVertex {
        mock,
        gw,
        _policy: policy,
    }
}

/// Fails when `text` holds a token the mock granted or a piece of the service account's
/// private key (any 8 characters of its base64).
fn assert_no_vertex_secret(mock: &llmgw_mock_provider::MockHandle, what: &str, text: &str) {
    let key: serde_json::Value =
        serde_json::from_str(&vertex::service_account_key("")).expect("json");
    let body: String = key["private_key"]
        .as_str()
        .expect("a private key")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let tokens = mock.stats.vertex.granted();
    assert!(!tokens.is_empty(), "a token was granted");
    for token in &tokens {
        assert!(
            !text.contains(token.as_str()),
            "{what} holds a token:\n{text}"
        );
    }
    for i in 0..=body.len() - 8 {
        let fragment = &body[i..i + 8];
        assert!(
            !text.contains(fragment),
            "{what} holds `{fragment}` of the private key:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_whole_and_streamed_with_usage_and_cost() {
    let v = on_vertex("gemini-2.0-flash+ok").await;
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", false, 5)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "vertex");
    let body = a.json();
    assert_eq!(body["choices"][0]["message"]["content"], expected_text(5));
    let input = body["usage"]["prompt_tokens"].as_u64().expect("input");
    assert!(input > 0, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let cost: f64 = a.header("x-llmgw-cost-usd").parse().expect("a cost");
    let priced = (3.0 * input as f64 + 15.0 * 5.0) / 1e6;
    assert!((cost - priced).abs() < 1e-12, "{cost} vs {priced}");
    // Vertex got Gemini's body.
    let sent = v.mock.stats.last_body("gemini-2.0-flash+ok").expect("sent");
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "Say something.");
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 5);

    let streamed = serde_json::json!({
        "model": "m", "stream": true, "max_tokens": 6,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let s = post(&v.gw.url("/v1/chat/completions"), &streamed.to_string()).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.streamed_text(), expected_text(6));
    assert_eq!(s.streamed_models(), vec!["m"]);
    assert!(s.done() && !s.stream_error(), "{}", s.body);
    let usage = s
        .events()
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(&d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .expect("a usage chunk");
    assert_eq!(usage["completion_tokens"], 6);
    let input = usage["prompt_tokens"].as_u64().expect("input");
    let cost: f64 = s
        .body
        .lines()
        .find_map(|l| l.strip_prefix(": x-llmgw-cost-usd="))
        .expect("a cost comment")
        .parse()
        .expect("a cost");
    let priced = (3.0 * input as f64 + 15.0 * 6.0) / 1e6;
    assert!((cost - priced).abs() < 1e-12, "{cost} vs {priced}");
    assert_eq!(v.mock.stats.attempts("gemini-2.0-flash+ok"), 2);
    assert_eq!(v.mock.stats.attempts("alt+ok"), 0, "no request was refused");
    assert_eq!(v.mock.stats.vertex.grants(), 1, "both used one token");
    let logs = v.gw.wait_request_logs(2);
    assert_eq!(logs.len(), 2);
    assert_no_vertex_secret(&v.mock, "the log", &v.gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_vertex_requests_share_one_token_grant() {
    let v = on_vertex("gemini+ok").await;
    let url = v.gw.url("/v1/chat/completions");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let url = url.clone();
        requests.spawn(async move { post(&url, &chat("m", false, 2)).await });
    }
    while let Some(a) = requests.join_next().await {
        let a = a.expect("request task");
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-provider"), "vertex");
    }
    assert_eq!(v.mock.stats.attempts("gemini+ok"), 12);
    assert_eq!(v.mock.stats.vertex.grants(), 1, "one grant for all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertex_token_shorter_than_the_refresh_margin_is_renewed_by_the_next_request() {
    let v = on_vertex("gemini+ok").await;
    // 60 s is within the 5-minute margin: the token serves the request that obtained it.
    v.mock.stats.vertex.set_expires_in(60);
    let url = v.gw.url("/v1/chat/completions");
    for grants in 1..=3 {
        let a = post(&url, &chat("m", false, 2)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(v.mock.stats.vertex.grants(), grants);
    }
    // An hour-long token is kept.
    v.mock.stats.vertex.set_expires_in(3600);
    for _ in 0..3 {
        let a = post(&url, &chat("m", true, 2)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-provider"), "vertex");
    }
    assert_eq!(v.mock.stats.vertex.grants(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertex_token_endpoint_outage_is_an_auth_error_and_fails_over() {
    let v = on_vertex("gemini+ok").await;
    v.mock.stats.vertex.set_outage(Some(503));
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "compat");
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        expected_text(3)
    );
    assert_eq!(v.mock.stats.attempts("gemini+ok"), 0, "never called");
    let log = v.gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["attempts"][0]["deployment"], "m@vertex", "{log}");
    assert_eq!(log["attempts"][0]["outcome"], "auth", "{log}");
    // Back up: the provider serves again.
    v.mock.stats.vertex.set_outage(None);
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "vertex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_resource_exhausted_is_rate_limited_and_fails_over() {
    let v = on_vertex("gemini+429").await;
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", true, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_models(), vec!["alt"]);
    assert_eq!(a.streamed_text(), expected_text(4));
    assert_eq!(v.mock.stats.attempts("gemini+429"), 1);
    let log = v.gw.wait_request_logs(1).pop().expect("request log");
    assert!(log.to_string().contains("rate_limited"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_on_vertex_resumes_on_another_provider() {
    let v = on_vertex("gemini+cut-3").await;
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert_eq!(a.streamed_models(), vec!["m", "alt"]);
    assert!(a.done() && !a.stream_error());
    assert_eq!(v.mock.stats.attempts("gemini+cut-3"), 1);
    assert_eq!(v.mock.stats.attempts("alt+ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_access_tokens_and_the_private_key_never_reach_answers_or_logs() {
    // The mock quotes the bearer token it received, whole and in part, in a JSON error and
    // in an in-band stream error.
    let v = on_vertex("gemini+echo-400").await;
    let a = post(&v.gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("[redacted]"), "{}", a.body);
    assert_no_vertex_secret(&v.mock, "the answer", &a.body);

    let v2 = on_vertex("gemini+echo-stream-500").await;
    let s = post(&v2.gw.url("/v1/chat/completions"), &chat("m", true, 6)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_no_vertex_secret(&v2.mock, "the stream", &s.body);
    for (mock, gw) in [(&v.mock, &v.gw), (&v2.mock, &v2.gw)] {
        gw.wait_request_logs(1);
        let logs = gw.logs();
        assert!(
            logs.contains("[redacted]"),
            "the quote was logged scrubbed: {logs}"
        );
        assert_no_vertex_secret(mock, "the log", &logs);
    }
}

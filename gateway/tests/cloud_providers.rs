//! The cloud upstreams through the real `llmgw` binary against the mock provider, which checks
//! each one's wire format and refuses what a real service would refuse.
//!
//! Azure OpenAI: the mock answers only `POST /openai/deployments/{deployment}/chat/completions`
//! with exactly one well-formed `api-version` and exactly one of the `api-key` header and an
//! `Authorization: Bearer` token; anything else gets Azure's 400/401/404 body, which would show
//! here as a failover to the backup. Errors, content-filter answers and throttling come in
//! Azure's own shapes.
//!
//! AWS Bedrock: the mock answers only Converse and ConverseStream requests whose SigV4
//! signature its own verifier (checked against botocore's signer below) accepts, with one of
//! its key pairs; anything else gets Bedrock's 403 exception. Streams come in AWS's binary
//! event-stream framing, errors as Bedrock's exceptions, in-band ones as exception messages.
//!
//! Vertex AI: the mock's token endpoint grants access tokens only for a JWT assertion signed by
//! the test service account's key with the right claims, and its model paths answer only a
//! request carrying an unexpired token it granted (401 `UNAUTHENTICATED` otherwise).

mod common;

use common::*;
use llmgw_mock_provider::vertex;
use serde_json::{json, Value};
use std::path::Path;

/// Model `m` on a provider `name` of type `kind` at the mock whose upstream model is `upstream`
/// (`settings` are the provider's own lines), and model `alt` on an OpenAI-compatible backup.
fn cloud_policy(
    dir: &Path,
    name: &str,
    kind: &str,
    mock_root: &str,
    upstream: &str,
    settings: &str,
) {
    let timeouts = "{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }";
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: {name}\n    type: {kind}\n    region: cloud\n    base_url: {mock_root}\n{settings}    timeouts: {timeouts}\n  - name: compat\n    type: openai_compatible\n    region: r2\n    base_url: {mock_root}/v1\n    timeouts: {timeouts}\n"
    );
    let models = format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: m\n    class: chat\n    quality: 0.9\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 3, output_per_mtok: 15 }}\n    deployments:\n      - provider: {name}\n        upstream_model: \"{upstream}\"\n  - name: alt\n    class: chat\n    quality: 0.5\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: compat\n        upstream_model: \"alt+ok\"\n"
    );
    std::fs::write(dir.join("providers.yaml"), providers).expect("write");
    std::fs::write(dir.join("models.yaml"), models).expect("write");
}

/// Model `m` on an Azure OpenAI provider whose deployment is `deployment` (`auth` is the
/// provider's authentication lines), and model `alt` on an OpenAI-compatible backup.
fn azure_policy(dir: &Path, mock_root: &str, deployment: &str, auth: &str) {
    cloud_policy(dir, "azure", "azure_openai", mock_root, deployment, auth);
}

/// Model `m` on a Bedrock provider whose model id is `model_id` (`settings` are its `bedrock`
/// lines), and model `alt` on an OpenAI-compatible backup.
fn bedrock_policy(dir: &Path, mock_root: &str, model_id: &str, settings: &str) {
    cloud_policy(dir, "bedrock", "bedrock", mock_root, model_id, settings);
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

/// A Bedrock model id with a `:`, which goes percent-encoded into the URL path (and encoded
/// twice into the signature).
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// The `bedrock` settings of a provider signing with the mock's temporary keys, with or
/// without their session token.
fn temporary_keys(with_token: bool) -> String {
    let token = if with_token {
        "      session_token: env:LLMGW_TEST_AWS_SESSION_TOKEN\n"
    } else {
        ""
    };
    format!("    bedrock:\n      region: eu-west-3\n      access_key_id: env:LLMGW_TEST_AWS_TEMP_ACCESS_KEY_ID\n      secret_access_key: env:LLMGW_TEST_AWS_TEMP_SECRET_ACCESS_KEY\n{token}")
}

/// A chat request for model `m` asking for usage in streams.
fn bedrock_chat(stream: bool, max_tokens: u64) -> String {
    json!({
        "model": "m", "stream": stream, "max_tokens": max_tokens,
        "stream_options": { "include_usage": true },
        "temperature": 0.2, "top_p": 0.9, "stop": ["END"],
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Say something." },
        ],
    })
    .to_string()
}

/// The cost of `input` and `output` tokens of model `m` (3 and 15 USD per million).
fn cost_of_m(input: u64, output: u64) -> f64 {
    (3.0 * input as f64 + 15.0 * output as f64) / 1e6
}

/// Whether any of the mock's AWS secrets, or the test upstream key, shows in `text`.
fn shows_a_secret(text: &str) -> bool {
    use llmgw_mock_provider::bedrock;
    [
        UPSTREAM_SECRET,
        bedrock::SECRET_ACCESS_KEY,
        bedrock::TEMP_SECRET_ACCESS_KEY,
        &bedrock::SESSION_TOKEN[..12],
        &bedrock::SESSION_TOKEN[bedrock::SESSION_TOKEN.len() - 8..],
    ]
    .iter()
    .any(|s| text.contains(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_converse_whole_and_streamed_with_usage_and_cost() {
    let mock = mock().await;
    let id = format!("{HAIKU}+ok");
    let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, BEDROCK_SETTINGS));
    let a = post(&gw.url("/v1/chat/completions"), &bedrock_chat(false, 5)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "bedrock");
    let v = a.json();
    assert_eq!(v["model"], "m");
    assert_eq!(v["choices"][0]["message"]["content"], expected_text(5));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // "Say something." is 4 tokens to the mock.
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let cost: f64 = a.header("x-llmgw-cost-usd").parse().expect("a cost");
    assert!((cost - cost_of_m(4, 5)).abs() < 1e-12, "{cost}");
    // Bedrock got Converse's body: system apart, sampling settings in inferenceConfig.
    let sent = mock.stats.last_body(&id).expect("a request");
    assert_eq!(sent["system"], json!([{ "text": "Be brief." }]));
    assert_eq!(
        sent["messages"],
        json!([{ "role": "user", "content": [{ "text": "Say something." }] }])
    );
    assert_eq!(
        sent["inferenceConfig"],
        json!({ "maxTokens": 5, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"] })
    );
    assert!(
        sent.get("model").is_none(),
        "the model is in the path: {sent}"
    );

    let s = post(&gw.url("/v1/chat/completions"), &bedrock_chat(true, 6)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.streamed_text(), expected_text(6));
    assert_eq!(s.streamed_models(), vec!["m"]);
    assert!(s.done() && !s.stream_error(), "{}", s.body);
    let usage = s
        .events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .expect("a usage chunk");
    assert_eq!(usage["prompt_tokens"], 4);
    assert_eq!(usage["completion_tokens"], 6);
    let told: f64 = s
        .body
        .lines()
        .find_map(|l| l.strip_prefix(": x-llmgw-cost-usd="))
        .expect("a cost comment")
        .parse()
        .expect("a cost");
    assert!((told - cost_of_m(4, 6)).abs() < 1e-12, "{told}");
    assert_eq!(mock.stats.attempts(&id), 2, "both signatures were accepted");
    assert_eq!(mock.stats.attempts("alt+ok"), 0);
    let logs = gw.wait_request_logs(2);
    assert_eq!(logs[1]["output_tokens"], 6, "{}", logs[1]);
    assert!(!shows_a_secret(&gw.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_tool_calls_and_results_round_trip() {
    let mock = mock().await;
    let id = format!("{HAIKU}+tool");
    let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, BEDROCK_SETTINGS));
    let tools = json!([{ "type": "function", "function": {
        "name": "lookup", "description": "Looks a word up.",
        "parameters": { "type": "object", "properties": { "q": { "type": "string" } } } } }]);
    let ask = |stream: bool| {
        json!({ "model": "m", "stream": stream, "max_tokens": 5, "tools": tools,
            "tool_choice": "required",
            "messages": [{ "role": "user", "content": "Look up t0." }] })
        .to_string()
    };
    let a = post(&gw.url("/v1/chat/completions"), &ask(false)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["id"], "tooluse_mock");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("args")).expect("JSON");
    assert_eq!(args, json!({ "q": "t0" }));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let sent = mock.stats.last_body(&id).expect("a request");
    assert_eq!(sent["toolConfig"]["tools"][0]["toolSpec"]["name"], "lookup");
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["q"],
        json!({ "type": "string" })
    );
    assert_eq!(sent["toolConfig"]["toolChoice"], json!({ "any": {} }));

    // Streamed: the call's name first, then its arguments in pieces.
    let s = post(&gw.url("/v1/chat/completions"), &ask(true)).await;
    assert_eq!(s.status, 200, "{}", s.body);
    let chunks: Vec<Value> = s
        .events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str(d).ok())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .map(|_| &c["choices"][0]["delta"]["tool_calls"][0])
        })
        .collect();
    assert_eq!(calls[0]["function"]["name"], "lookup", "{}", s.body);
    let streamed_args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(streamed_args, "{\"q\":\"t0\"}");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert!(s.done(), "{}", s.body);

    // The result goes back as a toolResult in a user turn, after the assistant's toolUse.
    let answer = json!({ "model": "m", "max_tokens": 3, "tools": tools, "messages": [
        { "role": "user", "content": "Look up t0." },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "tooluse_mock",
            "type": "function", "function": { "name": "lookup", "arguments": "{\"q\":\"t0\"}" } }] },
        { "role": "tool", "tool_call_id": "tooluse_mock", "content": "a word" },
    ]});
    let r = post(&gw.url("/v1/chat/completions"), &answer.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        expected_text(3)
    );
    let sent = mock.stats.last_body(&id).expect("a request");
    assert_eq!(
        sent["messages"][1]["content"][0]["toolUse"],
        json!({ "toolUseId": "tooluse_mock", "name": "lookup", "input": { "q": "t0" } })
    );
    assert_eq!(
        sent["messages"][2],
        json!({ "role": "user", "content": [{ "toolResult": {
            "toolUseId": "tooluse_mock", "content": [{ "text": "a word" }] } }] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_throttling_is_rate_limited_and_fails_over() {
    let mock = mock().await;
    let id = format!("{HAIKU}+429-ra-30");
    let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, BEDROCK_SETTINGS));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_models(), vec!["alt"]);
    assert_eq!(a.streamed_text(), expected_text(4));
    assert_eq!(mock.stats.attempts(&id), 1);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["attempts"][0]["outcome"], "rate_limited", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_stream_broken_mid_way_resumes_on_another_provider() {
    // Cut on the wire after 3 tokens, and an in-band throttlingException (quoting the
    // request's credentials) after 2.
    for fault in ["cut-3", "echo-stream-429"] {
        let mock = mock().await;
        let id = format!("{HAIKU}+{fault}");
        let settings = temporary_keys(true);
        let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, &settings));
        let a = post(&gw.url("/v1/chat/completions"), &chat("m", true, 8)).await;
        assert_eq!(a.status, 200, "{fault}: {}", a.body);
        assert_eq!(a.streamed_text(), expected_text(8), "{fault}");
        assert_eq!(a.streamed_models(), vec!["m", "alt"], "{fault}");
        assert!(a.done() && !a.stream_error(), "{fault}: {}", a.body);
        assert_eq!(mock.stats.attempts(&id), 1, "{fault}");
        assert_eq!(mock.stats.attempts("alt+ok"), 1, "{fault}");
        gw.wait_request_logs(1);
        assert!(!shows_a_secret(&a.body), "{fault}: {}", a.body);
        assert!(!shows_a_secret(&gw.logs()), "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_temporary_credentials_send_the_session_token() {
    // The mock refuses the temporary key without its session token (as AWS does), so the
    // answer comes from Bedrock only when the token was sent and signed.
    for (with_token, provider) in [(true, "bedrock"), (false, "compat")] {
        let mock = mock().await;
        let id = format!("{HAIKU}+ok");
        let settings = temporary_keys(with_token);
        let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, &settings));
        for stream in [false, true] {
            let a = post(&gw.url("/v1/chat/completions"), &chat("m", stream, 3)).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.header("x-llmgw-provider"), provider, "token {with_token}");
        }
        let expected = if with_token { 2 } else { 0 };
        assert_eq!(mock.stats.attempts(&id), expected, "token {with_token}");
        gw.wait_request_logs(2);
        assert!(!shows_a_secret(&gw.logs()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bedrock_secret_is_an_auth_error_and_never_shown() {
    // The test upstream key stands in for the secret access key: the mock's verifier computes
    // another signature and answers 403 InvalidSignatureException.
    let mock = mock().await;
    let id = format!("{HAIKU}+ok");
    let settings = "    bedrock:\n      region: us-east-1\n      access_key_id: env:LLMGW_TEST_AWS_ACCESS_KEY_ID\n      secret_access_key: env:LLMGW_TEST_UPSTREAM_KEY\n";
    let (gw, _dir) = gateway_for(|d| bedrock_policy(d, &root(&mock), &id, settings));
    let a = post(&gw.url("/v1/chat/completions"), &chat("m", false, 3)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-provider"), "compat");
    assert_eq!(mock.stats.attempts(&id), 0, "refused before counting");
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert!(log.to_string().contains("auth"), "{log}");
    assert!(!shows_a_secret(&a.body) && !shows_a_secret(&gw.logs()));
    let metrics = gw.metrics().await;
    assert!(!shows_a_secret(&metrics));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_signatures_are_accepted_by_the_mock_and_tampered_ones_refused() {
    use llmgw_mock_provider::bedrock;
    let python = match python::venv("botocore-venv", "botocore>=1.34", "botocore.auth") {
        Ok(p) => p,
        Err(why) => {
            eprintln!(
                "SKIPPED botocore_signatures_are_accepted_by_the_mock_and_tampered_ones_refused: {why}"
            );
            return;
        }
    };
    let mock = mock().await;
    let addr = mock.addr.to_string();
    tokio::task::spawn_blocking(move || {
        python::run_script_with_env(
            &python,
            "bedrock_sigv4.py",
            &addr,
            &[
                ("AWS_ACCESS_KEY_ID", bedrock::ACCESS_KEY_ID),
                ("AWS_SECRET_ACCESS_KEY", bedrock::SECRET_ACCESS_KEY),
                ("AWS_TEMP_ACCESS_KEY_ID", bedrock::TEMP_ACCESS_KEY_ID),
                (
                    "AWS_TEMP_SECRET_ACCESS_KEY",
                    bedrock::TEMP_SECRET_ACCESS_KEY,
                ),
                ("AWS_SESSION_TOKEN", bedrock::SESSION_TOKEN),
            ],
        )
    })
    .await
    .expect("the script ran");
    assert_eq!(
        mock.stats.attempts(&format!("{HAIKU}+ok")),
        2,
        "the two well-signed requests, and only they, were answered"
    );
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
        // The provider's own lines after `type`, `region` and `base_url`.
        let settings: String = vertex_provider(d, &mock)
            .lines()
            .skip(3)
            .map(|l| format!("{l}\n"))
            .collect();
        cloud_policy(d, "vertex", "vertex", &root(&mock), upstream, &settings)
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

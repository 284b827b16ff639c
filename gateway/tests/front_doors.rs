//! The front doors (OpenAI chat completions, Anthropic Messages, OpenAI Responses) over every
//! upstream type (OpenAI-compatible, Anthropic, Gemini, Bedrock and Vertex AI, all spoken by the mock
//! provider, and the simulated provider), JSON and streamed: the answer, the usage the client sees, the
//! cost header or comment, and the request log agree. Then failover and budgets for requests
//! that enter by `/v1/messages`, and stored responses.

mod common;
mod state_support;

use common::*;
use serde_json::{json, Value};
use state_support::{budget_policy, cleanup_redis, create_key, fresh_prefix, mock_cost, redis_url};
use std::path::Path;

const MAX_TOKENS: u64 = 4;

/// One model per upstream type, each priced 1 and 2 USD per million input and output tokens.
fn matrix_policy(dir: &Path, mock: &llmgw_mock_provider::MockHandle) {
    let base_url = mock.base_url();
    let provider = |name: &str, kind: &str| {
        format!(
            "  - name: {name}\n    type: {kind}\n    region: local\n    base_url: {base_url}\n    api_key: env:LLMGW_TEST_UPSTREAM_KEY\n"
        )
    };
    // Bedrock's paths start at the root, and its requests are signed with the mock's keys.
    let bedrock = format!(
        "  - name: up-bedrock\n    type: bedrock\n    region: local\n    base_url: {}\n{BEDROCK_SETTINGS}",
        base_url.trim_end_matches("/v1")
    );
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n{}{}{}{bedrock}  - name: up-vertex\n{}  - name: up-simulated\n    type: simulated\n    region: local\n    simulated: {{ ttft_ms: 1, tokens_per_second: 5000, output_tokens: 16 }}\n",
        provider("up-openai", "openai_compatible"),
        provider("up-anthropic", "anthropic"),
        provider("up-gemini", "gemini"),
        vertex_provider(dir, mock),
    );
    let mut models = String::from("apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n");
    for (name, provider, upstream) in UPSTREAMS {
        models.push_str(&format!(
            "  - name: {name}\n    class: {name}\n    quality: 0.8\n    context_window: 100000\n    capabilities: [chat, tools]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: {provider}\n        upstream_model: \"{upstream}\"\n"
        ));
    }
    std::fs::write(dir.join("providers.yaml"), providers).expect("write policy");
    std::fs::write(dir.join("models.yaml"), models).expect("write policy");
}

/// (model, provider, upstream model) of [`matrix_policy`].
const UPSTREAMS: [(&str, &str, &str); 6] = [
    ("via-openai", "up-openai", "o+ok"),
    ("via-anthropic", "up-anthropic", "a+ok"),
    ("via-gemini", "up-gemini", "g+ok"),
    (
        "via-bedrock",
        "up-bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0+ok",
    ),
    ("via-vertex", "up-vertex", "v+ok"),
    ("via-simulated", "up-simulated", "sim"),
];

#[derive(Debug, Clone, Copy)]
enum Door {
    Chat,
    Messages,
    Responses,
}

impl Door {
    fn path(self) -> &'static str {
        match self {
            Door::Chat => "/v1/chat/completions",
            Door::Messages => "/v1/messages",
            Door::Responses => "/v1/responses",
        }
    }

    /// The door's name in the request log.
    fn logged(self) -> &'static str {
        match self {
            Door::Chat => "openai",
            Door::Messages => "anthropic_messages",
            Door::Responses => "openai_responses",
        }
    }

    fn body(self, model: &str, stream: bool, max_tokens: u64) -> String {
        let prompt = "Say something.";
        match self {
            Door::Chat => json!({ "model": model, "stream": stream, "max_tokens": max_tokens,
                "stream_options": { "include_usage": true },
                "messages": [{ "role": "user", "content": prompt }] }),
            Door::Messages => json!({ "model": model, "stream": stream, "max_tokens": max_tokens,
                "messages": [{ "role": "user", "content": prompt }] }),
            Door::Responses => json!({ "model": model, "stream": stream,
                "max_output_tokens": max_tokens, "store": false, "input": prompt }),
        }
        .to_string()
    }

    /// The answer's text and usage (input, output) as the client reads them.
    fn read(self, a: &Answer, stream: bool) -> (String, u64, u64) {
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a count: {}", a.body));
        if !stream {
            let v = a.json();
            return match self {
                Door::Chat => (
                    v["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    n(&v["usage"]["prompt_tokens"]),
                    n(&v["usage"]["completion_tokens"]),
                ),
                Door::Messages => (
                    v["content"][0]["text"].as_str().unwrap_or("").to_owned(),
                    n(&v["usage"]["input_tokens"]),
                    n(&v["usage"]["output_tokens"]),
                ),
                Door::Responses => (
                    v["output"][0]["content"][0]["text"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    n(&v["usage"]["input_tokens"]),
                    n(&v["usage"]["output_tokens"]),
                ),
            };
        }
        let events: Vec<(Option<String>, Value)> = a
            .events()
            .into_iter()
            .filter_map(|(e, d)| Some((e, serde_json::from_str(&d).ok()?)))
            .collect();
        match self {
            Door::Chat => {
                let usage = events
                    .iter()
                    .find(|(_, v)| v["usage"].is_object())
                    .map(|(_, v)| v["usage"].clone())
                    .expect("a usage chunk");
                (
                    a.streamed_text(),
                    n(&usage["prompt_tokens"]),
                    n(&usage["completion_tokens"]),
                )
            }
            Door::Messages => {
                let kinds: Vec<&str> = events.iter().filter_map(|(e, _)| e.as_deref()).collect();
                assert_eq!(kinds.first(), Some(&"message_start"), "{}", a.body);
                assert_eq!(kinds.get(1), Some(&"ping"), "{}", a.body);
                assert_eq!(kinds.last(), Some(&"message_stop"), "{}", a.body);
                let text = events
                    .iter()
                    .filter(|(_, v)| v["delta"]["type"] == "text_delta")
                    .filter_map(|(_, v)| v["delta"]["text"].as_str())
                    .collect();
                let (_, delta) = events
                    .iter()
                    .find(|(e, _)| e.as_deref() == Some("message_delta"))
                    .expect("message_delta");
                // The upstreams all say they stopped on their own.
                assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{}", a.body);
                (
                    text,
                    n(&delta["usage"]["input_tokens"]),
                    n(&delta["usage"]["output_tokens"]),
                )
            }
            Door::Responses => {
                let text = events
                    .iter()
                    .filter(|(e, _)| e.as_deref() == Some("response.output_text.delta"))
                    .filter_map(|(_, v)| v["delta"].as_str())
                    .collect();
                let (_, last) = events.last().expect("events");
                assert_eq!(last["type"], "response.completed", "{}", a.body);
                let usage = &last["response"]["usage"];
                (text, n(&usage["input_tokens"]), n(&usage["output_tokens"]))
            }
        }
    }
}

/// The cost the client was told: the header of a JSON answer, the final comment of a stream.
fn told_cost(a: &Answer, stream: bool) -> f64 {
    let text = if stream {
        a.body
            .lines()
            .find_map(|l| l.strip_prefix(": x-llmgw-cost-usd="))
            .unwrap_or_else(|| panic!("a cost comment: {}", a.body))
            .to_owned()
    } else {
        a.header("x-llmgw-cost-usd").to_owned()
    };
    text.parse().unwrap_or_else(|_| panic!("a cost: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_door_is_served_by_every_upstream_type_with_usage_and_cost() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| matrix_policy(d, &mock));
    let mut seen = Vec::new();
    for door in [Door::Chat, Door::Messages, Door::Responses] {
        for (model, provider, _) in UPSTREAMS {
            for stream in [false, true] {
                let case = format!("{door:?} via {model}, stream {stream}");
                let a = post(&gw.url(door.path()), &door.body(model, stream, MAX_TOKENS)).await;
                assert_eq!(a.status, 200, "{case}: {}", a.body);
                assert_eq!(a.header("x-llmgw-model"), model, "{case}");
                assert_eq!(a.header("x-llmgw-provider"), provider, "{case}");
                let (text, input, output) = door.read(&a, stream);
                if provider == "up-simulated" {
                    assert_eq!(text.split_whitespace().count(), 4, "{case}: {text}");
                } else {
                    assert_eq!(text, expected_text(MAX_TOKENS), "{case}");
                }
                assert_eq!(output, MAX_TOKENS, "{case}");
                assert!(input > 0, "{case}");
                let cost = told_cost(&a, stream);
                let priced = (input as f64 + 2.0 * output as f64) / 1e6;
                assert!((cost - priced).abs() < 1e-12, "{case}: {cost} vs {priced}");
                seen.push((
                    case,
                    door.logged(),
                    a.header("x-request-id").to_owned(),
                    input,
                    output,
                    cost,
                ));
            }
        }
    }
    let logs = gw.wait_request_logs(seen.len());
    for (case, door, id, input, output, cost) in seen {
        let log = logs
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{case}: no request log {id}"));
        assert_eq!(log["door"], door, "{case}: {log}");
        assert_eq!(log["input_tokens"], input, "{case}: {log}");
        assert_eq!(log["output_tokens"], output, "{case}: {log}");
        let logged = log["cost_usd"].as_f64().expect("cost_usd");
        assert!((logged - cost).abs() < 1e-12, "{case}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_stream_cut_after_output_resumes_on_another_model() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "cut-3"));
    let a = post(
        &gw.url("/v1/messages"),
        &Door::Messages.body("primary", true, 8),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "primary");
    let (text, _, output) = Door::Messages.read(&a, true);
    assert_eq!(text, expected_text(8), "continued, not repeated");
    assert_eq!(output, 8);
    assert!(!a.stream_error(), "{}", a.body);
    assert_eq!(mock.stats.attempts("p+cut-3"), 1);
    assert_eq!(mock.stats.attempts("b+ok"), 1);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["resumed"], 1, "{log}");
    assert_eq!(log["outcome"], "ok", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_stream_that_cannot_resume_ends_with_an_anthropic_error_event() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[TestModel {
                name: "alone",
                quality: 0.9,
                context: 100_000,
                prefill: true,
                provider: "mock-a",
                upstream: "p+cut-3",
            }],
        )
    });
    let a = post(
        &gw.url("/v1/messages"),
        &Door::Messages.body("alone", true, 8),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let events = a.events();
    let (kind, data) = events.last().expect("events");
    assert_eq!(kind.as_deref(), Some("error"), "{}", a.body);
    let v: Value = serde_json::from_str(data).expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(!a.body.contains("message_stop"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_a_messages_request_in_anthropic_shape() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    // Room for one request of 100 output tokens.
    let cap = mock_cost(100) * 1.5;
    let budget = format!(
        "  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: {cap}\n    on_exceed: block\n"
    );
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        &budget,
    );
    let gw = Gateway::start_with(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &UPSTREAM_ENV,
        true,
    );
    let body = Door::Messages.body("chat-a", false, 100);
    let first = post(&gw.url("/v1/messages"), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let refused = post(&gw.url("/v1/messages"), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let e = refused.json();
    assert_eq!(e["type"], "error", "{}", refused.body);
    assert_eq!(e["error"]["type"], "rate_limit_error", "{}", refused.body);
    assert_eq!(e["error"]["code"], "budget_exceeded", "{}", refused.body);
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`key-cap`")),
        "{}",
        refused.body
    );
    assert_eq!(
        mock.stats.attempts("a+ok"),
        1,
        "the refused request never went upstream"
    );
}

/// Sends `body` (GET when `None`) to `url` with gateway key `key`.
async fn as_key(method: &str, url: &str, body: Option<&str>, key: &str) -> Answer {
    send(
        method,
        url,
        body,
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await
}

/// Responses stored through replica `a` are continued, read and deleted through replica `b`
/// (the same gateway on SQLite) by their tenant's key `acme`, and by no other tenant's
/// (`globex`).
async fn stored_responses_scenario(
    mock: &llmgw_mock_provider::MockHandle,
    a: &Gateway,
    b: &Gateway,
    acme: &str,
    globex: &str,
) {
    let create = |gw: &Gateway, body: Value, key: &str| {
        let url = gw.url("/v1/responses");
        let key = key.to_owned();
        async move { as_key("POST", &url, Some(&body.to_string()), &key).await }
    };
    let first = create(
        a,
        json!({ "model": "via-openai", "input": "My name is Ada.", "max_output_tokens": 2 }),
        acme,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let id = first.json()["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    let next = create(
        b,
        json!({ "model": "via-anthropic", "input": "What is my name?", "max_output_tokens": 2,
                 "previous_response_id": id, "instructions": "Answer briefly." }),
        acme,
    )
    .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.json()["previous_response_id"], id.as_str());
    // The upstream got the whole conversation, in its own protocol.
    let sent = mock.stats.last_body("a+ok").expect("an upstream request");
    assert_eq!(sent["system"], "Answer briefly.", "{sent}");
    let turns = sent["messages"].as_array().expect("messages");
    assert_eq!(turns.len(), 3, "{sent}");
    assert_eq!(turns[0]["content"][0]["text"], "My name is Ada.", "{sent}");
    assert_eq!(turns[1]["role"], "assistant", "{sent}");
    let stored = b.url(&format!("/v1/responses/{id}"));
    let got = as_key("GET", &stored, None, acme).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["output"], first.json()["output"]);
    // Another tenant sees nothing of it.
    assert_eq!(as_key("GET", &stored, None, globex).await.status, 404);
    assert_eq!(as_key("DELETE", &stored, None, globex).await.status, 404);
    let foreign = create(
        a,
        json!({ "model": "via-openai", "input": "Hi", "previous_response_id": id }),
        globex,
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(foreign.json()["error"]["param"], "previous_response_id");
    let deleted = as_key("DELETE", &stored, None, acme).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["deleted"], true);
    assert_eq!(
        as_key("GET", &a.url(&format!("/v1/responses/{id}")), None, acme)
            .await
            .status,
        404
    );
    let gone = create(
        a,
        json!({ "model": "via-openai", "input": "Hi", "previous_response_id": id }),
        acme,
    )
    .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let unstored = create(
        a,
        json!({ "model": "via-openai", "input": "Hi", "store": false, "max_output_tokens": 1 }),
        acme,
    )
    .await;
    let unstored = unstored.json()["id"].as_str().expect("id").to_owned();
    let url = b.url(&format!("/v1/responses/{unstored}"));
    assert_eq!(as_key("GET", &url, None, acme).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_continue_conversations_per_tenant_and_can_be_deleted() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    matrix_policy(policies.path(), &mock);
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8");
    let s = ["--state", location];
    let acme = create_key(&s, &["--tenant", "acme"]);
    let globex = create_key(&s, &["--tenant", "globex"]);
    let gw = Gateway::start_on(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &UPSTREAM_ENV,
        false,
        Some(location),
    );
    stored_responses_scenario(&mock, &gw, &gw, &acme.secret, &globex.secret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn stored_responses_are_shared_by_replicas_on_redis() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    matrix_policy(policies.path(), &mock);
    let s = ["--state", url.as_str(), "--state-prefix", prefix.as_str()];
    let acme = create_key(&s, &["--tenant", "acme"]);
    let globex = create_key(&s, &["--tenant", "globex"]);
    let replica = || {
        Gateway::start_on(
            &[
                "--policies",
                policies.path().to_str().expect("utf-8"),
                "--state-prefix",
                prefix.as_str(),
            ],
            &UPSTREAM_ENV,
            false,
            Some(&url),
        )
    };
    let (a, b) = (replica(), replica());
    stored_responses_scenario(&mock, &a, &b, &acme.secret, &globex.secret).await;
    cleanup_redis(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_are_replayed_in_the_shape_of_each_door() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        matrix_policy(d, &mock);
        let cache = "apiVersion: llmgw.dev/v1\nkind: Cache\ndefault_ttl_secs: 0\nrules:\n  - model: via-openai\n    ttl_secs: 600\n";
        std::fs::write(d.join("cache.yaml"), cache).expect("write policy");
    });
    // The doors translate to the same internal request, so one answer serves them all.
    let miss = post(
        &gw.url("/v1/messages"),
        &Door::Messages.body("via-openai", false, MAX_TOKENS),
    )
    .await;
    assert_eq!(miss.status, 200, "{}", miss.body);
    assert_eq!(miss.header("x-llmgw-cache"), "miss");
    for door in [Door::Chat, Door::Messages, Door::Responses] {
        for stream in [true, false] {
            let case = format!("{door:?}, stream {stream}");
            let body = door.body("via-openai", stream, MAX_TOKENS);
            let hit = post(&gw.url(door.path()), &body).await;
            assert_eq!(hit.status, 200, "{case}: {}", hit.body);
            assert_eq!(hit.header("x-llmgw-cache"), "hit", "{case}");
            let (text, _, output) = door.read(&hit, stream);
            assert_eq!(text, expected_text(MAX_TOKENS), "{case}");
            assert_eq!(output, MAX_TOKENS, "{case}");
            assert_eq!(told_cost(&hit, stream), 0.0, "{case}");
        }
    }
    assert_eq!(mock.stats.attempts("o+ok"), 1, "one call upstream");
}

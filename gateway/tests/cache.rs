//! The response cache through the real `llmgw` binary against the mock provider, whose attempt
//! counters show whether an answer came from upstream: exact hits for JSON, streams and
//! embeddings, a cached answer replayed the other way (JSON ↔ SSE), TTL expiry, parameters
//! that change the answer, tenant isolation, `cache-control`, failed and truncated answers,
//! near-duplicate prompts, and budgets that a hit never touches.

mod common;
mod state_support;

use common::*;
use serde_json::{json, Value};
use state_support::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Models of the test policy, each in its own class (no failover between them):
/// (name, upstream model on the mock).
const MODELS: [(&str, &str); 7] = [
    ("chat-a", "a+ok"),
    ("short", "s+ok"),
    ("near", "n+ok"),
    ("cut", "c+cut-3"),
    ("fail", "f+503"),
    ("emb", "e+ok"),
    ("plain", "p+ok"),
];

/// Cache rules: `short` lives 1 s, `near` matches near-duplicates at 0.9, `plain` (no rule,
/// default 0) is not cached.
const CACHE_YAML: &str = "apiVersion: llmgw.dev/v1
kind: Cache
default_ttl_secs: 0
rules:
  - model: chat-a
    ttl_secs: 600
  - model: short
    ttl_secs: 1
  - model: near
    ttl_secs: 600
    semantic_threshold: 0.9
  - model: cut
    ttl_secs: 600
  - model: fail
    ttl_secs: 600
  - model: emb
    ttl_secs: 600
";

/// Writes the test policy for the mock at `base_url`, with these budgets (YAML list items).
fn policy(dir: &Path, base_url: &str, budgets: &str) {
    let models: Vec<(&str, &str, &str)> = MODELS.iter().map(|&(n, u)| (n, n, u)).collect();
    budget_policy(dir, base_url, &models, budgets);
    let m = std::fs::read_to_string(dir.join("models.yaml")).expect("models");
    let m = m.replacen(
        "  - name: emb\n    class: emb\n    quality: 0.8\n    context_window: 100000\n    capabilities: [chat, tools]\n",
        "  - name: emb\n    class: emb\n    quality: 0.8\n    context_window: 100000\n    capabilities: [embeddings]\n",
        1,
    );
    std::fs::write(dir.join("models.yaml"), m).expect("write models");
    std::fs::write(dir.join("cache.yaml"), CACHE_YAML).expect("write cache");
}

/// A mock and a gateway (dev key, tenant `dev`) on the test policy.
struct World {
    gw: Gateway,
    mock: llmgw_mock_provider::MockHandle,
    _policies: tempfile::TempDir,
}

async fn world() -> World {
    let mock = mock().await;
    let (gw, policies) = gateway_for(|dir| policy(dir, &mock.base_url(), ""));
    World {
        gw,
        mock,
        _policies: policies,
    }
}

impl World {
    /// Upstream attempts the mock counted for a model of [`MODELS`].
    fn upstream(&self, model: &str) -> u64 {
        let (_, up) = MODELS
            .iter()
            .find(|(n, _)| *n == model)
            .expect("a test model");
        self.mock.stats.attempts(up)
    }

    async fn chat(&self, body: &Value) -> Answer {
        self.chat_with(body, &[]).await
    }

    async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let auth = format!("Bearer {KEY}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        send(
            "POST",
            &self.gw.url("/v1/chat/completions"),
            Some(&body.to_string()),
            &all,
        )
        .await
    }
}

/// A chat body for `model` asking `prompt`, answered with `max_tokens` words by the mock.
fn ask(model: &str, prompt: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": prompt },
        ],
    })
}

fn streamed(mut body: Value, include_usage: bool) -> Value {
    body["stream"] = true.into();
    if include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

/// The text of a JSON chat answer.
fn text(a: &Answer) -> String {
    a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {}", a.body))
        .to_owned()
}

fn assert_hit(a: &Answer, model: &str) {
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-cache"), "hit", "{:?}", a.headers);
    assert_eq!(a.header("x-llmgw-cost-usd"), "0");
    assert_eq!(a.header("x-llmgw-model"), model);
    assert_eq!(a.header("x-llmgw-provider"), "mock-a");
    assert!(!a.header("x-llmgw-policy-rev").is_empty());
    assert!(!a.header("x-llmgw-rule").is_empty());
    assert!(!a.header("age").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_request_is_answered_from_the_cache_without_an_upstream_call() {
    let w = world().await;
    let body = ask("chat-a", "Summarise the quarterly report.", 6);
    let first = w.chat(&body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    assert_ne!(first.header("x-llmgw-cost-usd"), "0");
    assert_eq!(w.upstream("chat-a"), 1);

    // The same request, spelled differently and from another end user: the same answer.
    let mut same = json!({
        "messages": [
            { "content": [{ "type": "text", "text": "You are terse." }], "role": "system" },
            { "role": "user", "content": "Summarise the quarterly report." },
        ],
        "max_completion_tokens": 6,
        "model": "chat-a",
        "user": "someone-else",
    });
    let second = w.chat(&same).await;
    assert_hit(&second, "chat-a");
    assert_eq!(w.upstream("chat-a"), 1, "no upstream call for a hit");
    assert_eq!(text(&second), text(&first));
    assert_eq!(text(&second), expected_text(6));
    let v = second.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "chat-a");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"]["completion_tokens"],
        first.json()["usage"]["completion_tokens"]
    );
    same["metadata"] = json!({ "trace": "abc" });
    assert_hit(&w.chat(&same).await, "chat-a");

    // The request log says what the cache did; metrics count it.
    let logs = w.gw.wait_request_logs(3);
    let caches: Vec<&str> = logs.iter().filter_map(|l| l["cache"].as_str()).collect();
    assert_eq!(caches, ["miss", "hit", "hit"], "{logs:?}");
    assert_eq!(logs[1]["provider"], "cache");
    assert_eq!(logs[1]["cost_usd"], 0.0);
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains("llmgw_cache_lookups_total{outcome=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("llmgw_cache_lookups_total{outcome=\"miss\"} 1"));
    assert!(metrics.contains("llmgw_cache_stores_total 1"));
    assert!(metrics.contains("llmgw_cache_entries 1"));
    let bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llmgw_cache_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("llmgw_cache_bytes");
    assert!(bytes > 0.0);

    // A model whose TTL is 0 is never cached.
    let plain = ask("plain", "Summarise the quarterly report.", 6);
    for _ in 0..2 {
        let a = w.chat(&plain).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-cache"), "bypass");
    }
    assert_eq!(w.upstream("plain"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_is_replayed_as_a_stream_and_a_streamed_one_as_json() {
    let w = world().await;
    // JSON first, then the same question as a stream with usage.
    let body = ask("chat-a", "List three colours.", 5);
    let first = w.chat(&body).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    let s = w.chat(&streamed(body, true)).await;
    assert_hit(&s, "chat-a");
    assert_eq!(s.header("content-type"), "text/event-stream");
    assert_eq!(w.upstream("chat-a"), 1);
    let events = s.events();
    let chunks: Vec<Value> = events
        .iter()
        .filter(|(e, d)| e.is_none() && d != "[DONE]")
        .map(|(_, d)| serde_json::from_str(d).expect("json chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(s.streamed_text(), expected_text(5));
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "chat-a"));
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    assert!(!s.stream_error());
    // Without `include_usage`, no usage chunk.
    let plain = w
        .chat(&streamed(ask("chat-a", "List three colours.", 5), false))
        .await;
    assert_hit(&plain, "chat-a");
    assert!(!plain.body.contains("\"usage\""), "{}", plain.body);
    assert!(plain.done());

    // A stream first (stored once complete), then the same question as JSON.
    let body = ask("chat-a", "Name two rivers.", 7);
    let first = w.chat(&streamed(body.clone(), false)).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    assert!(first.done());
    assert_eq!(first.streamed_text(), expected_text(7));
    assert_eq!(w.upstream("chat-a"), 2);
    let j = w.chat(&body).await;
    assert_hit(&j, "chat-a");
    assert_eq!(w.upstream("chat-a"), 2);
    assert_eq!(text(&j), expected_text(7));
    assert_eq!(j.json()["usage"]["completion_tokens"], 7);
    assert_eq!(j.json()["choices"][0]["finish_reason"], "stop");
    // And as a stream again.
    let again = w.chat(&streamed(body, true)).await;
    assert_hit(&again, "chat-a");
    assert_eq!(again.streamed_text(), expected_text(7));
    assert_eq!(w.upstream("chat-a"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_cached() {
    let w = world().await;
    let body = json!({ "model": "emb", "input": ["alpha", "beta"] });
    let url = w.gw.url("/v1/embeddings");
    let first = post(&url, &body.to_string()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    let second = post(&url, &body.to_string()).await;
    assert_hit(&second, "emb");
    assert_eq!(w.upstream("emb"), 1);
    assert_eq!(second.json()["data"], first.json()["data"]);
    assert_eq!(second.json()["model"], "emb");
    let other = post(
        &url,
        &json!({ "model": "emb", "input": ["alpha"] }).to_string(),
    )
    .await;
    assert_eq!(other.header("x-llmgw-cache"), "miss");
    assert_eq!(w.upstream("emb"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_expires_after_its_ttl() {
    let w = world().await;
    let body = ask("short", "What time is it?", 3);
    let stored = Instant::now();
    assert_eq!(w.chat(&body).await.header("x-llmgw-cache"), "miss");
    assert_eq!(w.chat(&body).await.header("x-llmgw-cache"), "hit");
    assert_eq!(w.upstream("short"), 1);
    let waited = until(Duration::from_secs(5), "the 1 s entry expires", || async {
        w.chat(&body).await.header("x-llmgw-cache") == "miss"
    })
    .await;
    assert!(
        stored.elapsed() >= Duration::from_millis(950),
        "expired after {waited:?}"
    );
    assert_eq!(
        w.upstream("short"),
        2,
        "the miss after expiry went upstream"
    );
    assert_eq!(
        w.chat(&body).await.header("x-llmgw-cache"),
        "hit",
        "stored again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_parameters_miss() {
    let w = world().await;
    let base = ask("chat-a", "Describe the sea.", 4);
    assert_eq!(w.chat(&base).await.header("x-llmgw-cache"), "miss");
    let mut variants = Vec::new();
    for (field, value) in [
        ("temperature", json!(0.3)),
        ("top_p", json!(0.5)),
        ("max_tokens", json!(5)),
        ("response_format", json!({ "type": "json_object" })),
        ("seed", json!(7)),
        ("stop", json!(["\n"])),
        (
            "tools",
            json!([{ "type": "function", "function": { "name": "f", "parameters": {} } }]),
        ),
    ] {
        let mut v = base.clone();
        v[field] = value;
        variants.push(v);
    }
    variants.push(ask("chat-a", "Describe the sea!", 4));
    variants.push(ask("near", "Describe the sea.", 4));
    let mut last_system = base.clone();
    last_system["messages"][0]["content"] = "You are verbose.".into();
    variants.push(last_system);
    for v in &variants {
        let a = w.chat(v).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-cache"), "miss", "{v}");
    }
    assert_eq!(w.upstream("chat-a") + w.upstream("near"), 11);
    // Each of them is now cached on its own.
    for v in &variants {
        assert_eq!(w.chat(v).await.header("x-llmgw-cache"), "hit", "{v}");
    }
    assert_eq!(w.chat(&base).await.header("x-llmgw-cache"), "hit");
    assert_eq!(w.upstream("chat-a") + w.upstream("near"), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_answers() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url(), "");
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8").to_owned();
    let s = ["--state", location.as_str()];
    let acme = create_key(&s, &["--tenant", "acme"]);
    let acme_other = create_key(&s, &["--tenant", "acme", "--project", "p2"]);
    let globex = create_key(&s, &["--tenant", "globex"]);
    let gw = Gateway::start_on(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(&location),
    );
    let body = ask("chat-a", "What is our refund policy?", 4).to_string();
    let as_ = |k: &state_support::NewKey| k.bearer();
    let a1 = chat_as(&gw, &as_(&acme), &body).await;
    assert_eq!(a1.header("x-llmgw-cache"), "miss", "{}", a1.body);
    let a2 = chat_as(&gw, &as_(&acme), &body).await;
    assert_eq!(a2.header("x-llmgw-cache"), "hit");
    // Another key of the same tenant shares the tenant's answers.
    let a3 = chat_as(&gw, &as_(&acme_other), &body).await;
    assert_eq!(a3.header("x-llmgw-cache"), "hit");
    assert_eq!(mock.stats.attempts("a+ok"), 1);
    // Another tenant never gets them.
    let g1 = chat_as(&gw, &as_(&globex), &body).await;
    assert_eq!(g1.status, 200, "{}", g1.body);
    assert_eq!(g1.header("x-llmgw-cache"), "miss");
    assert_eq!(mock.stats.attempts("a+ok"), 2);
    let g2 = chat_as(&gw, &as_(&globex), &body).await;
    assert_eq!(g2.header("x-llmgw-cache"), "hit");
    assert_eq!(mock.stats.attempts("a+ok"), 2);
    let logs = gw.wait_request_logs(5);
    let by: Vec<(&str, &str)> = logs
        .iter()
        .map(|l| {
            (
                l["tenant"].as_str().unwrap_or(""),
                l["cache"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("acme", "miss"),
            ("acme", "hit"),
            ("acme", "hit"),
            ("globex", "miss"),
            ("globex", "hit")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_no_cache_and_no_store() {
    let w = world().await;
    let body = ask("chat-a", "Tell me a fact.", 4);
    // no-cache: neither read nor written.
    let a = w.chat_with(&body, &[("cache-control", "no-cache")]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-cache"), "bypass");
    assert_eq!(w.chat(&body).await.header("x-llmgw-cache"), "miss");
    assert_eq!(w.upstream("chat-a"), 2);
    let a = w.chat_with(&body, &[("cache-control", "no-cache")]).await;
    assert_eq!(a.header("x-llmgw-cache"), "bypass", "not read either");
    assert_ne!(a.header("x-llmgw-cost-usd"), "0");
    assert_eq!(w.upstream("chat-a"), 3);

    // no-store: a miss is not written; a cached answer is still read.
    let other = ask("chat-a", "Tell me another fact.", 4);
    let a = w
        .chat_with(&other, &[("cache-control", "no-store, max-age=0")])
        .await;
    assert_eq!(a.header("x-llmgw-cache"), "bypass");
    assert_eq!(w.upstream("chat-a"), 4);
    assert_eq!(w.chat(&other).await.header("x-llmgw-cache"), "miss");
    assert_eq!(w.upstream("chat-a"), 5);
    let a = w.chat_with(&other, &[("cache-control", "no-store")]).await;
    assert_eq!(a.header("x-llmgw-cache"), "hit");
    assert_eq!(w.upstream("chat-a"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_truncated_answers_are_not_cached() {
    let w = world().await;
    // An upstream error (503, no equivalent model): not stored.
    let body = ask("fail", "Anything.", 4);
    for n in 1..=2 {
        let a = w.chat(&body).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.header("x-llmgw-cache"), "miss");
        assert_eq!(w.upstream("fail"), n);
    }
    // A stream cut after 3 of 8 tokens, with no model to resume on: an in-band error, and
    // the partial answer is not stored, for a stream or a JSON request.
    let body = streamed(ask("cut", "Anything.", 8), true);
    for n in 1..=2 {
        let a = w.chat(&body).await;
        assert_eq!(a.status, 200);
        assert!(a.stream_error(), "{}", a.body);
        assert!(!a.done());
        assert_eq!(a.header("x-llmgw-cache"), "miss");
        assert_eq!(w.upstream("cut"), n);
    }
    // A JSON answer that breaks off: a 502, not stored either.
    let json_body = ask("cut", "Anything.", 8);
    for n in 3..=4 {
        let a = w.chat(&json_body).await;
        assert_eq!(a.status, 502, "{}", a.body);
        assert_eq!(a.header("x-llmgw-cache"), "miss");
        assert_eq!(w.upstream("cut"), n);
    }
    let metrics = w.gw.metrics().await;
    assert!(metrics.contains("llmgw_cache_stores_total 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_duplicate_prompt_hits_and_a_different_one_does_not() {
    let w = world().await;
    let ticket = "Summarise this support ticket in two sentences. The customer cannot log in \
                  after resetting their password; the dashboard answers 403 since Monday and \
                  clearing cookies did not help.";
    let first = w.chat(&ask("near", ticket, 6)).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    // Case, spacing and a small wording change: a near-duplicate hit (threshold 0.9).
    let retyped = "summarise this support ticket in two sentences.  The customer cannot log in \
                   after resetting their password; the dashboard answers 403 since Monday, and \
                   clearing the cookies did not help!";
    let near = w.chat(&ask("near", retyped, 6)).await;
    assert_hit(&near, "near");
    let similarity: f64 = near
        .header("x-llmgw-cache-similarity")
        .parse()
        .expect("similarity header");
    assert!((0.9..1.0).contains(&similarity), "{similarity}");
    assert_eq!(text(&near), text(&first));
    assert_eq!(w.upstream("near"), 1);
    // Served as a stream too.
    let s = w.chat(&streamed(ask("near", retyped, 6), false)).await;
    assert_hit(&s, "near");
    assert_eq!(s.streamed_text(), expected_text(6));
    // A different prompt misses.
    let other = w
        .chat(&ask(
            "near",
            "Write a short poem about the sea at night.",
            6,
        ))
        .await;
    assert_eq!(other.header("x-llmgw-cache"), "miss");
    assert_eq!(w.upstream("near"), 2);
    // So does the near-duplicate with other parameters (another bucket)…
    let mut hotter = ask("near", retyped, 6);
    hotter["temperature"] = 1.5.into();
    assert_eq!(w.chat(&hotter).await.header("x-llmgw-cache"), "miss");
    assert_eq!(w.upstream("near"), 3);
    // …and a near miss whose answer differs: another target language, the other option.
    let email = "Hi Anna, the invoice for March is attached; please confirm the payment date.";
    for (first, second) in [
        (
            format!("Translate this email into French: {email}"),
            format!("Translate this email into German: {email}"),
        ),
        (
            "Reply YES if this is a complaint: my order arrived late.".to_owned(),
            "Reply NO if this is a complaint: my order arrived late.".to_owned(),
        ),
    ] {
        let mut a = ask("near", &first, 6);
        a["temperature"] = 0.5.into();
        assert_eq!(w.chat(&a).await.header("x-llmgw-cache"), "miss");
        let mut b = ask("near", &second, 6);
        b["temperature"] = 0.5.into();
        assert_eq!(w.chat(&b).await.header("x-llmgw-cache"), "miss", "{second}");
    }
    assert_eq!(w.upstream("near"), 7);
    // …and on a model whose cache rule matches exactly only.
    assert_eq!(
        w.chat(&ask("chat-a", ticket, 6))
            .await
            .header("x-llmgw-cache"),
        "miss"
    );
    assert_eq!(
        w.chat(&ask("chat-a", retyped, 6))
            .await
            .header("x-llmgw-cache"),
        "miss"
    );
    let logs = w.gw.wait_request_logs(11);
    assert_eq!(logs[1]["cache"], "near_hit", "{:?}", logs[1]);
    let metrics = w.gw.metrics().await;
    assert!(
        metrics.contains("llmgw_cache_lookups_total{outcome=\"near_hit\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_reserves_and_spends_nothing() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    // Room for one and a half answers of 100 tokens a day per user, strictly held.
    let budget = format!(
        "  - name: user-daily\n    scope: user\n    period: daily\n    limit_usd: {}\n    on_exceed: block\n",
        mock_cost(100) * 1.5
    );
    policy(policies.path(), &mock.base_url(), &budget);
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8").to_owned();
    let gw = Gateway::start_on(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        Some(&location),
    );
    let url = gw.url("/v1/chat/completions");
    let body = chat_for("chat-a", Some(100), Some("ann"));
    let first = post(&url, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    // A second answer would not fit the budget's hold, but a hit needs none.
    for _ in 0..3 {
        let hit = post(&url, &body).await;
        assert_eq!(hit.status, 200, "{}", hit.body);
        assert_eq!(hit.header("x-llmgw-cache"), "hit");
        assert_eq!(hit.header("x-llmgw-cost-usd"), "0");
    }
    // The budget is in force for anything not cached.
    let other = post(&url, &chat_for("chat-a", Some(99), Some("ann"))).await;
    assert_eq!(other.status, 429, "{}", other.body);
    assert_eq!(other.json()["error"]["code"], "budget_exceeded");
    assert_eq!(mock.stats.attempts("a+ok"), 1);
    // Only the first answer was spent.
    let spend = spend_once_written(&["spend", "--json", "--state", &location], |o| {
        total_is(o, mock_cost(100))
    });
    assert_eq!(spend.code, 0, "{}", spend.stderr);
    let total = spend.json()["total_usd"].as_f64().expect("total");
    assert!(
        (total - mock_cost(100)).abs() < 1e-9,
        "spent {total}, one answer costs {}",
        mock_cost(100)
    );
}

#[test]
fn cache_eval_reports_precision_and_recall_and_names_a_bad_line() {
    let pairs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cache-eval/pairs.jsonl");
    let pairs = pairs.to_str().expect("utf-8");
    let out = llmgw(&["cache-eval", "--pairs", pairs, "--thresholds", "0.9,0.95"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The bundled thresholds: every hit with the guard is a paraphrase.
    for t in ["0.9", "0.95"] {
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {t} | facts |")))
            .unwrap_or_else(|| panic!("no row for {t}: {}", out.stdout));
        assert!(row.contains("| 1.000 |") && row.contains("| 0/"), "{row}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("pairs.jsonl");
    std::fs::write(
        &bad,
        "{\"a\":\"x\",\"b\":\"y\",\"label\":\"paraphrase\",\"kind\":\"k\"}\n{\"a\":1}\n",
    )
    .expect("write");
    let out = llmgw(&["cache-eval", "--pairs", bad.to_str().expect("utf-8")]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stderr.contains("pairs.jsonl:2: not a labelled pair"),
        "{}",
        out.stderr
    );
}

// --- The shared cache: replicas on one Redis --------------------------------------------------
//
// These need a Redis: set `LLMGW_TEST_REDIS_URL` and run with `--include-ignored`. Each writes
// under a prefix of its own; the outage test starts a Redis of its own.

/// Two replicas on the test Redis under a prefix of their own, serving the test policy.
struct Fleet {
    a: Gateway,
    b: Gateway,
    mock: llmgw_mock_provider::MockHandle,
    url: String,
    prefix: String,
    _policies: tempfile::TempDir,
}

/// Starts a [`Fleet`]; `extra` are arguments of both replicas.
async fn fleet(extra: &[&str]) -> Fleet {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url(), "");
    let url = redis_url();
    let prefix = fresh_prefix();
    let a = replica_with(policies.path(), &url, &prefix, extra);
    let b = replica_with(policies.path(), &url, &prefix, extra);
    Fleet {
        a,
        b,
        mock,
        url,
        prefix,
        _policies: policies,
    }
}

impl Fleet {
    fn upstream(&self, upstream: &str) -> u64 {
        self.mock.stats.attempts(upstream)
    }

    /// The keys of the answers stored for `tenant`.
    async fn answers(&self, tenant: &str) -> Vec<String> {
        redis_keys(&self.url, &format!("{}cache:{{{tenant}}}:e:*", self.prefix)).await
    }

    /// Waits until `n` answers of `tenant` are stored (storing follows the answer).
    async fn stored(&self, tenant: &str, n: usize) {
        until(
            Duration::from_secs(5),
            &format!("{n} answers stored"),
            || async { self.answers(tenant).await.len() == n },
        )
        .await;
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects")
}

async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut redis_conn(url).await)
        .await
        .expect("keys")
}

async fn chat_on(gw: &Gateway, body: &Value) -> Answer {
    post(&gw.url("/v1/chat/completions"), &body.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_replica_serves_what_another_cached_as_json_and_as_sse() {
    let f = fleet(&[]).await;
    // Stored by A as JSON, served by B as JSON and as a stream.
    let body = ask("chat-a", "Summarise the quarterly report.", 6);
    let first = chat_on(&f.a, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    f.stored("dev", 1).await;
    let json = chat_on(&f.b, &body).await;
    assert_hit(&json, "chat-a");
    assert_eq!(text(&json), expected_text(6));
    assert_eq!(
        json.json()["usage"]["completion_tokens"],
        first.json()["usage"]["completion_tokens"]
    );
    let sse = chat_on(&f.b, &streamed(body, true)).await;
    assert_hit(&sse, "chat-a");
    assert_eq!(sse.header("content-type"), "text/event-stream");
    assert_eq!(sse.streamed_text(), expected_text(6));
    assert!(sse.done() && !sse.stream_error());
    assert_eq!(f.upstream("a+ok"), 1);

    // Streamed through B, served by A as JSON.
    let body = ask("chat-a", "Name two rivers.", 7);
    let first = chat_on(&f.b, &streamed(body.clone(), false)).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    assert!(first.done());
    f.stored("dev", 2).await;
    let json = chat_on(&f.a, &body).await;
    assert_hit(&json, "chat-a");
    assert_eq!(text(&json), expected_text(7));
    assert_eq!(json.json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(f.upstream("a+ok"), 2);

    // Embeddings too.
    let emb = json!({ "model": "emb", "input": ["alpha", "beta"] }).to_string();
    let first = post(&f.a.url("/v1/embeddings"), &emb).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss", "{}", first.body);
    f.stored("dev", 3).await;
    let second = post(&f.b.url("/v1/embeddings"), &emb).await;
    assert_hit(&second, "emb");
    assert_eq!(second.json()["data"], first.json()["data"]);

    // A near duplicate stored by A is found by B through the index in Redis.
    let ticket = "Summarise this support ticket in two sentences. The customer cannot log in \
                  after resetting their password; the dashboard answers 403 since Monday.";
    let first = chat_on(&f.a, &ask("near", ticket, 6)).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    f.stored("dev", 4).await;
    let retyped = "summarise this support ticket in two sentences.  The customer cannot log in \
                   after resetting their password; the dashboard answers 403 since Monday!";
    let near = chat_on(&f.b, &ask("near", retyped, 6)).await;
    assert_hit(&near, "near");
    let similarity: f64 = near
        .header("x-llmgw-cache-similarity")
        .parse()
        .expect("similarity header");
    assert!((0.9..1.0).contains(&similarity), "{similarity}");
    let other = chat_on(&f.b, &ask("near", "Write a short poem about the sea.", 6)).await;
    assert_eq!(other.header("x-llmgw-cache"), "miss");
    assert_eq!(f.upstream("n+ok"), 2);

    // Counted on the replica that served the hits; nothing failed.
    let metrics = f.b.metrics().await;
    assert!(
        metrics.contains("llmgw_cache_lookups_total{outcome=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("llmgw_cache_lookups_total{outcome=\"near_hit\"} 1"));
    assert!(metrics.contains("llmgw_cache_errors_total 0"), "{metrics}");
    // Every key is the tenant's and under the prefix.
    let all = redis_keys(&f.url, &format!("{}cache:*", f.prefix)).await;
    assert!(
        !all.is_empty() && all.iter().all(|k| k.contains("cache:{dev}:")),
        "{all:?}"
    );
    cleanup_redis(&f.url, &f.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn replicas_never_serve_one_tenant_another_tenants_answer() {
    let f = fleet(&[]).await;
    let state = [
        "--state",
        f.url.as_str(),
        "--state-prefix",
        f.prefix.as_str(),
    ];
    let acme = create_key(&state, &["--tenant", "acme"]).bearer();
    let globex = create_key(&state, &["--tenant", "globex"]).bearer();
    let body = ask("chat-a", "What is our refund policy?", 4).to_string();
    let a1 = chat_as(&f.a, &acme, &body).await;
    assert_eq!(a1.header("x-llmgw-cache"), "miss", "{}", a1.body);
    f.stored("acme", 1).await;
    let g1 = chat_as(&f.b, &globex, &body).await;
    assert_eq!(g1.status, 200, "{}", g1.body);
    assert_eq!(g1.header("x-llmgw-cache"), "miss");
    assert_eq!(f.upstream("a+ok"), 2);
    f.stored("globex", 1).await;
    assert_eq!(
        chat_as(&f.b, &acme, &body).await.header("x-llmgw-cache"),
        "hit"
    );
    assert_eq!(
        chat_as(&f.a, &globex, &body).await.header("x-llmgw-cache"),
        "hit"
    );
    assert_eq!(f.upstream("a+ok"), 2);
    // An answer copied under another tenant's name is still never served to it: the tenant is
    // checked again on every hit.
    let mut c = redis_conn(&f.url).await;
    let acme_keys = f.answers("acme").await;
    let globex_keys = f.answers("globex").await;
    let acme_value: String = redis::cmd("GET")
        .arg(&acme_keys[0])
        .query_async(&mut c)
        .await
        .expect("get");
    let _: () = redis::cmd("SET")
        .arg(&globex_keys[0])
        .arg(&acme_value)
        .query_async(&mut c)
        .await
        .expect("set");
    let g2 = chat_as(&f.b, &globex, &body).await;
    assert_eq!(g2.header("x-llmgw-cache"), "miss");
    assert_eq!(f.upstream("a+ok"), 3);
    cleanup_redis(&f.url, &f.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_shared_entry_expires_after_its_ttl() {
    let f = fleet(&[]).await;
    let body = ask("short", "What time is it?", 3);
    assert_eq!(chat_on(&f.a, &body).await.header("x-llmgw-cache"), "miss");
    f.stored("dev", 1).await;
    let key = f.answers("dev").await.remove(0);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis_conn(&f.url).await)
        .await
        .expect("pttl");
    assert!((1..=1000).contains(&ttl_ms), "{ttl_ms}");
    assert_eq!(chat_on(&f.b, &body).await.header("x-llmgw-cache"), "hit");
    // Redis expires it; then neither replica has it.
    until(Duration::from_secs(5), "the 1 s entry expires", || async {
        f.answers("dev").await.is_empty()
    })
    .await;
    assert_eq!(chat_on(&f.b, &body).await.header("x-llmgw-cache"), "miss");
    assert_eq!(f.upstream("s+ok"), 2, "the miss after expiry went upstream");
    cleanup_redis(&f.url, &f.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_tenant_keeps_at_most_its_entry_bound() {
    let f = fleet(&["--cache-tenant-entries", "2"]).await;
    for (i, prompt) in ["First question.", "Second question.", "Third question."]
        .iter()
        .enumerate()
    {
        let a = chat_on(&f.a, &ask("chat-a", prompt, 3)).await;
        assert_eq!(a.header("x-llmgw-cache"), "miss", "{}", a.body);
        let stores = format!("llmgw_cache_stores_total {}", i + 1);
        until(Duration::from_secs(5), "the answer is stored", || async {
            f.a.metrics().await.contains(&stores)
        })
        .await;
    }
    // The entry nearest its expiry (the first) made room for the third.
    assert_eq!(f.answers("dev").await.len(), 2);
    let members: u64 = redis::cmd("ZCARD")
        .arg(format!("{}cache:{{dev}}:z", f.prefix))
        .query_async(&mut redis_conn(&f.url).await)
        .await
        .expect("zcard");
    assert_eq!(members, 2);
    let metrics = f.a.metrics().await;
    assert!(
        metrics.contains("llmgw_cache_evictions_total{cause=\"size\"} 1"),
        "{metrics}"
    );
    let third = chat_on(&f.b, &ask("chat-a", "Third question.", 3)).await;
    assert_eq!(third.header("x-llmgw-cache"), "hit");
    let first = chat_on(&f.b, &ask("chat-a", "First question.", 3)).await;
    assert_eq!(first.header("x-llmgw-cache"), "miss");
    assert_eq!(f.upstream("a+ok"), 4);
    cleanup_redis(&f.url, &f.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts its own redis-server; run with --include-ignored"]
async fn a_redis_outage_turns_the_shared_cache_into_misses() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut redis = OwnRedis::ready(data.path()).await;
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    // A budget that serves while the state store is down: the cache must not refuse either.
    policy(
        policies.path(),
        &mock.base_url(),
        "  - name: cap\n    scope: key\n    period: daily\n    limit_usd: 100\n    on_exceed: block\n    on_store_unavailable: allow\n",
    );
    let gw = redis.gateway(policies.path());
    let body = ask("chat-a", "Summarise the quarterly report.", 6);
    assert_eq!(chat_on(&gw, &body).await.header("x-llmgw-cache"), "miss");
    until(Duration::from_secs(5), "the answer is stored", || async {
        gw.metrics().await.contains("llmgw_cache_stores_total 1")
    })
    .await;
    assert_eq!(chat_on(&gw, &body).await.header("x-llmgw-cache"), "hit");
    assert_eq!(mock.stats.attempts("a+ok"), 1);

    redis.kill();
    // Straight after the outage (the lookup meets it) and once the probe has seen it (the
    // cache is skipped): misses, answered from upstream.
    let early = chat_on(&gw, &body).await;
    assert_eq!(early.status, 200, "{}", early.body);
    assert_eq!(early.header("x-llmgw-cache"), "miss");
    until(Duration::from_secs(5), "/readyz fails", || async {
        send("GET", &gw.url("/readyz"), None, &[]).await.status == 503
    })
    .await;
    let late = chat_on(&gw, &streamed(body.clone(), false)).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(late.header("x-llmgw-cache"), "miss");
    assert_eq!(late.streamed_text(), expected_text(6));
    assert_eq!(mock.stats.attempts("a+ok"), 3);
    let metrics = gw.metrics().await;
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llmgw_cache_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("llmgw_cache_errors_total");
    assert!(errors >= 2, "{metrics}");

    // Back up (with its data): the answer stored before the outage is served again.
    let _redis = OwnRedis::start(data.path(), redis.port);
    until(Duration::from_secs(10), "/readyz recovers", || async {
        send("GET", &gw.url("/readyz"), None, &[]).await.status == 200
    })
    .await;
    assert_eq!(chat_on(&gw, &body).await.header("x-llmgw-cache"), "hit");
    assert_eq!(mock.stats.attempts("a+ok"), 3);
}

//! The real `llmgw` binary against the fault-injecting mock provider: for every fault, what the
//! client sees and how many upstream attempts were made.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_without_retry_after_moves_to_the_next_model_at_once() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "429"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "backup");
    assert_eq!(a.json()["model"], "backup");
    assert_eq!(
        mock.stats.attempts("p+429"),
        1,
        "no blind retry on a 429 without Retry-After"
    );
    assert_eq!(mock.stats.attempts("b+ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_retry_after_is_waited_then_the_same_provider_answers() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "429-once-ra-1"));
    let start = Instant::now();
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was waited"
    );
    assert_eq!(a.header("x-llmgw-model"), "primary");
    assert_eq!(mock.stats.attempts("p+429-once-ra-1"), 2);
    assert_eq!(mock.stats.attempts("b+ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_retry_after_opens_the_circuit_for_that_long() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "429-ra-30"));
    for _ in 0..4 {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-model"), "backup");
    }
    assert_eq!(
        mock.stats.attempts("p+429-ra-30"),
        1,
        "the 30 s Retry-After keeps the region closed"
    );
    assert_eq!(mock.stats.attempts("b+ok"), 4);
    let status = gw.admin_get("/admin/status").await.json();
    let region = region_breaker(&status, "mock-a");
    assert_eq!(
        region["state"], "closed",
        "one deployment's pause: {region}"
    );
    assert_eq!(deployment_breaker(&region, "primary")["state"], "open");
}

/// The breaker of provider `provider`'s region in an `/admin/status` answer.
fn region_breaker(status: &serde_json::Value, provider: &str) -> serde_json::Value {
    status["circuits"]
        .as_array()
        .expect("circuits")
        .iter()
        .find(|c| c["provider"] == provider)
        .cloned()
        .unwrap_or_else(|| panic!("no {provider} circuit in {status}"))
}

/// The breaker of `model`'s deployment under a region's breaker.
fn deployment_breaker(region: &serde_json::Value, model: &str) -> serde_json::Value {
    region["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["model"] == model)
        .cloned()
        .unwrap_or_else(|| panic!("no {model} deployment in {region}"))
}

/// Breakers that open after 2 failures (or half of at least 2 calls) for 30 s.
const TIGHT_CIRCUIT: &str =
    "{ window_secs: 10, min_requests: 2, error_ratio: 0.5, consecutive_failures: 2, cooldown_secs: 30 }";

/// A chat model on `mock-a` (one region) answering with `upstream`.
fn on_region_a<'a>(name: &'a str, quality: f64, upstream: &'a str) -> TestModel<'a> {
    TestModel {
        name,
        quality,
        context: 100_000,
        prefill: true,
        provider: "mock-a",
        upstream,
    }
}

/// Polls `/metrics` until it holds `line`, failing after 5 s.
async fn wait_metric(gw: &Gateway, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_failing_model_leaves_its_region_to_the_equivalent(fault: &str) {
    let mock = mock().await;
    let primary = format!("p+{fault}");
    let (gw, _dir) = gateway_for(|d| {
        mock_policy_with_circuit(
            d,
            &mock.base_url(),
            TIGHT_CIRCUIT,
            &[
                on_region_a("primary", 0.9, &primary),
                on_region_a("backup", 0.5, "b+ok"),
            ],
        )
    });
    for i in 0..12 {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(a.header("x-llmgw-model"), "backup");
    }
    assert_eq!(
        mock.stats.attempts(&primary),
        2,
        "two failures open the primary's breaker for 30 s"
    );
    assert_eq!(mock.stats.attempts("b+ok"), 12);
    let status = gw.admin_get("/admin/status").await.json();
    let region = region_breaker(&status, "mock-a");
    assert_eq!(region["state"], "closed", "{region}");
    assert_eq!(region["opened_times"], 0, "{region}");
    assert_eq!(deployment_breaker(&region, "primary")["state"], "open");
    assert_eq!(deployment_breaker(&region, "backup")["state"], "closed");
    wait_metric(
        &gw,
        "llmgw_deployment_circuit_state{deployment=\"primary@mock-a\",model=\"primary\",provider=\"mock-a\",region=\"region-a\"} 2",
    )
    .await;
    wait_metric(
        &gw,
        "llmgw_circuit_state{provider=\"mock-a\",region=\"region-a\"} 0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_opens_its_own_breaker_not_its_regions() {
    a_failing_model_leaves_its_region_to_the_equivalent("429").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_model_opens_its_own_breaker_not_its_regions() {
    a_failing_model_leaves_its_region_to_the_equivalent("503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failing_models_of_three_open_their_region() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy_with_circuit(
            d,
            &mock.base_url(),
            TIGHT_CIRCUIT,
            &[
                on_region_a("primary", 0.9, "p+503"),
                on_region_a("backup", 0.8, "b+503"),
                on_region_a("spare", 0.1, "s+ok"),
            ],
        )
    });
    let mut region = serde_json::Value::Null;
    for _ in 0..6 {
        post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        region = region_breaker(&gw.admin_get("/admin/status").await.json(), "mock-a");
        if region["state"] == "open" {
            break;
        }
    }
    assert_eq!(region["state"], "open", "{region}");
    assert_eq!(deployment_breaker(&region, "primary")["state"], "open");
    assert_eq!(deployment_breaker(&region, "backup")["state"], "open");
    assert_eq!(deployment_breaker(&region, "spare")["state"], "closed");
    let spare_calls = mock.stats.attempts("s+ok");
    let a = post(&gw.url("/v1/chat/completions"), &chat("spare", false, 4)).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(mock.stats.attempts("s+ok"), spare_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_of_two_deployments_open_their_region() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy_with_circuit(
            d,
            &mock.base_url(),
            TIGHT_CIRCUIT,
            &[
                on_region_a("primary", 0.9, "p+reset"),
                on_region_a("backup", 0.8, "b+reset"),
                on_region_a("spare", 0.1, "s+ok"),
            ],
        )
    });
    // Each request meets resets on both models before it may reach the spare; the region opens
    // within a few requests.
    let mut opened = false;
    for _ in 0..6 {
        post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        let status = gw.admin_get("/admin/status").await.json();
        if region_breaker(&status, "mock-a")["state"] == "open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "the region never opened");
    assert!(mock.stats.attempts("p+reset") >= 1);
    assert!(mock.stats.attempts("b+reset") >= 1);
    // The spare has no failure of its own, but its region is open: it is not called.
    let spare_calls = mock.stats.attempts("s+ok");
    let a = post(&gw.url("/v1/chat/completions"), &chat("spare", false, 4)).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(mock.stats.attempts("s+ok"), spare_calls);
    let status = gw.admin_get("/admin/status").await.json();
    let region = region_breaker(&status, "mock-a");
    assert_eq!(
        deployment_breaker(&region, "spare")["state"],
        "closed",
        "{region}"
    );
    let spare = status["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["model"] == "spare")
        .cloned()
        .expect("spare deployment");
    assert_eq!(spare["live"]["circuit"], "open", "{spare}");
    wait_metric(
        &gw,
        "llmgw_circuit_state{provider=\"mock-a\",region=\"region-a\"} 2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_500_is_retried_once_on_the_same_provider() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "500-once"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "primary");
    assert_eq!(mock.stats.attempts("p+500-once"), 2);
    assert_eq!(mock.stats.attempts("b+ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_forever_fails_over_and_the_circuit_stops_the_traffic() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "503"));
    for _ in 0..12 {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-model"), "backup");
    }
    // Three consecutive failures open the circuit; at most a probe after the 1 s cool-down.
    let primary = mock.stats.attempts("p+503");
    assert!((3..=4).contains(&primary), "primary attempts {primary}");
    assert_eq!(mock.stats.attempts("b+ok"), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_everywhere_does_not_multiply_upstream_traffic() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 100_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "p+503",
                },
                TestModel {
                    name: "backup",
                    quality: 0.5,
                    context: 100_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "b+503",
                },
            ],
        )
    });
    let requests = 20;
    for _ in 0..requests {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
        assert!(
            a.status == 503 || a.status == 502,
            "{} {}",
            a.status,
            a.body
        );
        assert_eq!(a.json()["error"]["type"], "server_error");
        if a.json()["error"]["code"] == "no_healthy_upstream" {
            assert_eq!(a.header("x-llmgw-rule"), "default", "{}", a.body);
        }
    }
    let total = mock.stats.attempts("p+503") + mock.stats.attempts("b+503");
    assert!(
        total <= requests / 2,
        "{total} upstream attempts for {requests} requests"
    );
    // Refused with every circuit open: the rule and revision of the refusing decision are
    // named; no error line carries a negative zero cost.
    let logs = gw.wait_request_logs(requests as usize);
    let refused = logs
        .iter()
        .find(|l| {
            l["status"] == 503
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("circuit is open"))
        })
        .expect("a request refused with every circuit open");
    assert_eq!(refused["rule"], "default", "{refused}");
    assert!(
        !refused["policy_revision"].as_str().unwrap_or("").is_empty(),
        "{refused}"
    );
    for log in &logs {
        let cost = log["cost_usd"].as_f64().expect("cost_usd");
        assert!(cost == 0.0 && cost.is_sign_positive(), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_before_headers_is_invisible() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "reset"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 5)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(5));
    assert_eq!(a.streamed_models(), vec!["backup"]);
    assert!(a.done());
    assert_eq!(mock.stats.attempts("p+reset"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_at_all_times_out_and_fails_over() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "hang"));
    let start = Instant::now();
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "backup");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the total timeout (3 s) applies"
    );
    assert_eq!(mock.stats.attempts("p+hang"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_token_fails_over_before_the_first_byte() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "slow-ttft-3000"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 6)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "backup");
    assert_eq!(
        a.streamed_models(),
        vec!["backup"],
        "nothing from the slow primary reached the client"
    );
    assert_eq!(a.streamed_text(), expected_text(6));
    assert!(a.done());
    assert_eq!(mock.stats.attempts("p+slow-ttft-3000"), 1);
    // The client waited the primary's first-token timeout (1 s) before its first token.
    let log = gw.wait_request_logs(1).pop().expect("request log");
    let ttft = log["ttft_ms"].as_f64().expect("ttft_ms");
    assert!(ttft >= 1000.0, "ttft measured from the request: {log}");
    assert_eq!(log["failovers"], 1);
    assert_eq!(log["attempts"][0]["outcome"], "timeout", "{log}");
    assert_eq!(log["attempts"][1]["outcome"], "ok", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_output_resumes_on_a_prefill_model() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "cut-3"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "primary");
    assert_eq!(
        a.streamed_text(),
        expected_text(8),
        "the partial answer was continued, not repeated"
    );
    assert_eq!(a.streamed_models(), vec!["primary", "backup"]);
    assert!(a.done() && !a.stream_error());
    assert_eq!(mock.stats.attempts("p+cut-3"), 1);
    assert_eq!(mock.stats.attempts("b+ok"), 1);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["resumed"], 1);
    assert_eq!(log["outcome"], "ok");
    let broken = &log["attempts"][0];
    assert_ne!(broken["outcome"], "ok", "the cut call is not ok: {log}");
    assert_eq!(broken["broke"], true, "{log}");
    assert_eq!(log["attempts"][1]["outcome"], "ok", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_reports_the_answer_received_and_bills_both_attempts() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "cut-3"));
    let body = serde_json::json!({
        "model": "primary", "stream": true, "max_tokens": 8,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let a = post(&gw.url("/v1/chat/completions"), &body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert_eq!(mock.stats.attempts("b+ok"), 1);
    let usage = a
        .events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone();
    // 3 tokens from the primary, the 5 the backup wrote after them: 8, once.
    assert_eq!(usage["completion_tokens"], 8, "{usage}");
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(usage["total_tokens"], prompt + 8);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    let billed_in = log["input_tokens"].as_u64().expect("input_tokens");
    let billed_out = log["output_tokens"].as_u64().expect("output_tokens");
    // The backup was sent the prompt and the partial answer: both attempts' input is paid.
    assert!(billed_in > prompt, "billed {billed_in}, reported {prompt}");
    assert_eq!(billed_out, 8);
    let cost = log["cost_usd"].as_f64().expect("cost_usd");
    let priced = (billed_in as f64 * 1.0 + billed_out as f64 * 2.0) / 1e6;
    assert!((cost - priced).abs() < 1e-12, "{cost} vs {priced}");
    assert!(
        a.body
            .contains(&format!(": x-llmgw-cost-usd={}", cost_text(cost))),
        "{}",
        a.body
    );
}

/// A cost as the gateway writes it in `x-llmgw-cost-usd`.
fn cost_text(usd: f64) -> String {
    let s = format!("{usd:.8}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A primary on `mock-a` and a backup on `mock-b`, neither with the `prefill` capability.
fn without_prefill(dir: &std::path::Path, base_url: &str, primary: &str, backup: &str) {
    let model = |name, quality, provider, upstream| TestModel {
        name,
        quality,
        context: 100_000,
        prefill: false,
        provider,
        upstream,
    };
    mock_policy(
        dir,
        base_url,
        &[
            model("primary", 0.9, "mock-a", primary),
            model("backup", 0.5, "mock-b", backup),
        ],
    );
}

/// A streamed chat request for 8 tokens that asks for the usage chunk.
fn chat_with_usage(model: &str) -> String {
    serde_json::json!({
        "model": model, "stream": true, "max_tokens": 8,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "Say something." }],
    })
    .to_string()
}

/// The `usage` of a streamed answer's usage chunk.
fn streamed_usage(a: &Answer) -> serde_json::Value {
    a.events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap_or_else(|| panic!("a usage chunk: {}", a.body))["usage"]
        .clone()
}

/// The prompt tokens the mock counts for a request body (its characters / 4 + 1).
fn mock_prompt_tokens(body: &serde_json::Value) -> u64 {
    let chars: usize = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().map_or(0, str::len))
        .sum();
    chars as u64 / 4 + 1
}

/// A primary cut after `cut` of 8 tokens, continued by a backup without prefill whose mock
/// continuation is `fault` and restates `restated` tokens first: the client gets the 8-token
/// answer once, its usage is that answer's, and the bill counts both calls in full.
async fn a_no_prefill_backup_continues_by_reasking(cut: u64, fault: &str, restated: u64) {
    let mock = mock().await;
    let primary = format!("p+cut-{cut}");
    let backup = format!("b+{fault}");
    let (gw, _dir) = gateway_for(|d| without_prefill(d, &mock.base_url(), &primary, &backup));
    let a = post(&gw.url("/v1/chat/completions"), &chat_with_usage("primary")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.streamed_text(),
        expected_text(8),
        "the whole answer, once, nothing restated"
    );
    assert!(a.done() && !a.stream_error(), "{}", a.body);
    assert_eq!(a.streamed_models(), vec!["primary", "backup"]);
    assert_eq!(mock.stats.attempts(&primary), 1);
    assert_eq!(mock.stats.attempts(&backup), 1, "one re-ask, no other call");
    // What the backup was asked: the client's messages, the partial answer, the instruction.
    let asked = mock.stats.last_body(&backup).expect("the re-ask");
    let messages = asked["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3, "{asked}");
    assert_eq!(messages[0]["content"], "Say something.");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], expected_text(cut).as_str());
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(
        messages[2]["content"],
        llmgw_gateway::continuation::INSTRUCTION
    );
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["outcome"], "ok", "{log}");
    assert_eq!(log["resumed"], 1, "{log}");
    assert_eq!(log["attempts"][0]["broke"], true, "{log}");
    assert_eq!(log["attempts"][1]["outcome"], "ok", "{log}");
    assert_eq!(log["attempts"][1]["resume"], "reask", "{log}");
    // The client is told the usage of the answer it received: the primary's tokens (cut before
    // it reported usage, so estimated from its text: 3 characters a token, 4 to a token) and
    // the backup's new ones; the tokens it restated were dropped, so they are not in it.
    let primary_out = (3 * cut).div_ceil(4);
    let usage = streamed_usage(&a);
    assert_eq!(usage["completion_tokens"], primary_out + 8 - cut, "{usage}");
    let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
    assert_eq!(usage["total_tokens"], prompt + primary_out + 8 - cut);
    // Billed: what was paid upstream, the re-ask's prompt and everything it wrote included.
    let billed_in = log["input_tokens"].as_u64().expect("input_tokens");
    let billed_out = log["output_tokens"].as_u64().expect("output_tokens");
    assert_eq!(billed_in, prompt + mock_prompt_tokens(&asked), "{log}");
    assert_eq!(billed_out, primary_out + restated + 8 - cut, "{log}");
    let cost = log["cost_usd"].as_f64().expect("cost_usd");
    let priced = (billed_in as f64 * 1.0 + billed_out as f64 * 2.0) / 1e6;
    assert!((cost - priced).abs() < 1e-12, "{cost} vs {priced}");
    assert!(
        a.body
            .contains(&format!(": x-llmgw-cost-usd={}", cost_text(cost))),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_prefill_backup_continues_a_broken_stream_where_it_stopped() {
    a_no_prefill_backup_continues_by_reasking(3, "no-prefill", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasked_continuation_that_restates_the_whole_answer_is_stitched() {
    a_no_prefill_backup_continues_by_reasking(3, "no-prefill-restate", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasked_continuation_that_restates_the_last_words_is_stitched() {
    a_no_prefill_backup_continues_by_reasking(5, "no-prefill-restate-3", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_declared_with_prefill_that_refuses_it_is_reasked() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 100_000,
                    prefill: false,
                    provider: "mock-a",
                    upstream: "p+cut-3",
                },
                TestModel {
                    name: "backup",
                    quality: 0.5,
                    context: 100_000,
                    // Declared with prefill, but its API refuses a trailing assistant message.
                    prefill: true,
                    provider: "mock-b",
                    upstream: "b+no-prefill",
                },
            ],
        )
    });
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert!(a.done() && !a.stream_error(), "{}", a.body);
    assert_eq!(
        mock.stats.attempts("b+no-prefill"),
        2,
        "the prefill, then the re-ask"
    );
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["outcome"], "ok", "{log}");
    assert_eq!(log["attempts"][1]["outcome"], "bad_request", "{log}");
    assert_eq!(log["attempts"][1]["resume"], "prefill", "{log}");
    assert_eq!(log["attempts"][2]["outcome"], "ok", "{log}");
    assert_eq!(log["attempts"][2]["resume"], "reask", "{log}");
    assert_eq!(log["retries"], 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasked_continuation_that_does_not_line_up_ends_with_an_error_event() {
    let mock = mock().await;
    let (gw, _dir) =
        gateway_for(|d| without_prefill(d, &mock.base_url(), "p+cut-5", "b+no-prefill-misaligned"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.streamed_text(),
        expected_text(5),
        "nothing of the misaligned continuation reached the client"
    );
    assert!(a.stream_error(), "an in-band error event: {}", a.body);
    assert!(!a.done(), "never a clean [DONE] after a truncated answer");
    assert_eq!(mock.stats.attempts("b+no-prefill-misaligned"), 1);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["outcome"], "truncated", "{log}");
    assert_eq!(log["attempts"][1]["outcome"], "misaligned", "{log}");
    assert_eq!(log["attempts"][1]["resume"], "reask", "{log}");
    // The re-ask was paid for: its output is billed on top of the primary's 4 (estimated).
    let billed_out = log["output_tokens"].as_u64().expect("output_tokens");
    assert!(billed_out > 4, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_that_no_fallback_can_continue_ends_with_an_error_event() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| without_prefill(d, &mock.base_url(), "p+cut-3", "b+503"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.streamed_text(), expected_text(3));
    assert!(a.stream_error(), "an in-band error event: {}", a.body);
    assert!(!a.done(), "never a clean [DONE] after a truncated answer");
    assert_eq!(mock.stats.attempts("b+503"), 1);
    let log = gw.wait_request_logs(1).pop().expect("log");
    assert_eq!(log["outcome"], "truncated");
    assert_eq!(log["attempts"][1]["outcome"], "unavailable", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_before_its_first_token_restarts_on_a_no_prefill_backup() {
    let mock = mock().await;
    let (gw, _dir) =
        gateway_for(|d| without_prefill(d, &mock.base_url(), "p+cut-0", "b+no-prefill"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(8));
    assert_eq!(a.streamed_models(), vec!["backup"]);
    assert!(a.done() && !a.stream_error());
    // A plain restart: the client's messages only, neither prefill nor re-ask.
    let asked = mock.stats.last_body("b+no-prefill").expect("the restart");
    assert_eq!(
        asked["messages"].as_array().map(Vec::len),
        Some(1),
        "{asked}"
    );
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["resumed"], 0, "{log}");
    assert_eq!(log["failovers"], 1, "{log}");
    assert!(log["attempts"][1].get("resume").is_none(), "{log}");
}

/// Streams `body` to the gateway; the time from sending the request to the first chunk with
/// answer text, as this client measured it, and the whole body.
async fn client_ttft(url: &str, body: &str) -> (Duration, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .expect("request");
    let sent = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    let mut text = String::new();
    let mut first = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), stream.frame())
        .await
        .expect("a frame within 30 s")
    {
        if let Some(data) = frame.expect("frame").data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
            if first.is_none() && text.contains("\"content\":\"t0") {
                first = Some(sent.elapsed());
            }
        }
    }
    (first.unwrap_or_else(|| panic!("no token in {text}")), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logged_ttft_is_what_the_client_measured_after_a_failover() {
    let mock = mock().await;
    // The primary times out at its first-token timeout (1 s); the backup's first token comes
    // 300 ms after it is asked.
    let (gw, _dir) = gateway_for(|d| {
        without_prefill(d, &mock.base_url(), "p+slow-ttft-3000", "b+slow-ttft-300")
    });
    let (measured, body) =
        client_ttft(&gw.url("/v1/chat/completions"), &chat("primary", true, 4)).await;
    assert!(body.contains("[DONE]"), "{body}");
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(log["failovers"], 1, "{log}");
    let logged = log["ttft_ms"].as_f64().expect("ttft_ms");
    let measured = measured.as_secs_f64() * 1000.0;
    assert!(
        (logged - measured).abs() <= 50.0,
        "logged {logged} ms, the client measured {measured} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_resumes_after_the_idle_timeout() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "stall-2"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 6)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(6));
    assert_eq!(a.streamed_models(), vec!["primary", "backup"]);
    assert!(a.done());
    assert_eq!(mock.stats.attempts("p+stall-2"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_is_skipped_and_the_stream_goes_on() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 100_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "p+malformed-3",
                },
                TestModel {
                    name: "early",
                    quality: 0.8,
                    context: 100_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "e+malformed-0",
                },
                TestModel {
                    name: "backup",
                    quality: 0.5,
                    context: 100_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "b+ok",
                },
            ],
        )
    });
    // Mid-answer, and before the first token (while the attempt waits for it).
    for (model, upstream) in [("primary", "p+malformed-3"), ("early", "e+malformed-0")] {
        let a = post(&gw.url("/v1/chat/completions"), &chat(model, true, 7)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.streamed_text(), expected_text(7));
        assert_eq!(a.streamed_models(), vec![model], "served by one model");
        assert!(a.done() && !a.stream_error());
        assert_eq!(mock.stats.attempts(upstream), 1);
    }
    assert_eq!(mock.stats.attempts("b+ok"), 0, "no extra upstream call");
    let logs = gw.wait_request_logs(2);
    for log in &logs {
        assert_eq!(log["outcome"], "ok", "{log}");
        assert_eq!(log["malformed_events"], 1, "{log}");
        assert_eq!(
            (log["resumed"].clone(), log["failovers"].clone()),
            (0.into(), 0.into())
        );
        assert_eq!(log["attempts"].as_array().map(Vec::len), Some(1), "{log}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("llmgw_upstream_malformed_events_total{provider=\"mock-a\"} 2"),
        "{metrics}"
    );
    assert!(
        gw.logs()
            .contains("skipped a stream event that could not be parsed"),
        "a warning names the skip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_stream_without_done_is_finished_by_the_gateway() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "no-done"));
    let body = serde_json::json!({
        "model": "primary", "stream": true, "max_tokens": 5,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    let a = post(&gw.url("/v1/chat/completions"), &body.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(5));
    assert!(a.done());
    let usage = a
        .events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(mock.stats.attempts("p+no-done"), 1);
    assert_eq!(mock.stats.attempts("b+ok"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_moves_to_a_larger_model() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 8_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "p+context-length",
                },
                TestModel {
                    name: "small",
                    quality: 0.6,
                    context: 4_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "s+ok",
                },
                TestModel {
                    name: "large",
                    quality: 0.5,
                    context: 200_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "l+ok",
                },
            ],
        )
    });
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "large");
    assert_eq!(
        mock.stats.attempts("s+ok"),
        0,
        "a smaller window would fail too"
    );
    assert_eq!(mock.stats.attempts("l+ok"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_is_returned_when_no_larger_model_exists() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 8_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "p+context-length",
                },
                TestModel {
                    name: "small",
                    quality: 0.6,
                    context: 4_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "s+ok",
                },
            ],
        )
    });
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(mock.stats.attempts("s+ok"), 0);
    let log = gw.wait_request_logs(1).pop().expect("request log");
    assert_eq!(
        log["failovers"], 0,
        "a skip without an upstream call: {log}"
    );
    assert_eq!(
        log["attempts"][1]["outcome"], "skipped_context_window",
        "{log}"
    );
    assert_eq!(log["cost_usd"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_tries_a_model_of_an_equal_window_but_never_the_refusing_model() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[
                TestModel {
                    name: "primary",
                    quality: 0.9,
                    context: 8_000,
                    prefill: true,
                    provider: "mock-a",
                    upstream: "p+context-length",
                },
                TestModel {
                    name: "twin",
                    quality: 0.5,
                    context: 8_000,
                    prefill: true,
                    provider: "mock-b",
                    upstream: "t+ok",
                },
            ],
        );
        // The refusing model has a second deployment: it is not asked again.
        let models = read(&d.join("models.yaml")).replace(
            "        upstream_model: \"p+context-length\"\n",
            "        upstream_model: \"p+context-length\"\n      - provider: mock-b\n        upstream_model: \"p2+ok\"\n",
        );
        std::fs::write(d.join("models.yaml"), models).expect("write policy");
    });
    for stream in [false, true] {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", stream, 4)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-model"), "twin");
    }
    assert_eq!(mock.stats.attempts("p+context-length"), 2);
    assert_eq!(mock.stats.attempts("p2+ok"), 0, "the model that refused");
    assert_eq!(mock.stats.attempts("t+ok"), 2);
    for log in gw.wait_request_logs(2) {
        assert_eq!(log["failovers"], 1, "{log}");
        let outcomes: Vec<&str> = log["attempts"]
            .as_array()
            .expect("attempts is an array")
            .iter()
            .filter_map(|c| c["outcome"].as_str())
            .collect();
        assert_eq!(
            outcomes,
            ["context_length", "skipped_context_window", "ok"],
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_filter_refusal_is_returned_as_is() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "content-filter"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 4)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let e = a.json();
    assert_eq!(e["error"]["code"], "content_filter");
    assert_eq!(e["error"]["param"], "prompt");
    assert_eq!(mock.stats.attempts("p+content-filter"), 1);
    assert_eq!(
        mock.stats.attempts("b+ok"),
        0,
        "a refusal that would repeat anywhere is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_primary_is_used_again_after_it_recovers() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "flap-1500"));
    let start = Instant::now();
    let mut served = Vec::new();
    // Steady traffic for 4 s: the primary fails for its first 1.5 s, then recovers.
    while start.elapsed() < Duration::from_secs(4) {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 2)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        served.push(a.header("x-llmgw-model").to_owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.first().map(String::as_str), Some("backup"));
    assert_eq!(
        served.last().map(String::as_str),
        Some("primary"),
        "{served:?}"
    );
    let during_outage = served.iter().filter(|m| *m == "backup").count() as u64;
    let primary_attempts = mock.stats.attempts("p+flap-1500");
    let primary_served = served.iter().filter(|m| *m == "primary").count() as u64;
    // Failed primary attempts: 3 to open the circuit plus about one probe per cool-down.
    assert!(
        primary_attempts - primary_served <= 5,
        "{primary_attempts} attempts, {primary_served} served"
    );
    assert!(during_outage >= 3);
    assert!(
        !gw.metrics().await.contains("llmgw_health_probes_total{"),
        "no probes without `health_probe`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keys_never_reach_clients_or_logs() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "503"));
    let mut bodies = String::new();
    for stream in [false, true] {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", stream, 3)).await;
        bodies.push_str(&a.body);
        bodies.push_str(&format!("{:?}", a.headers));
    }
    bodies.push_str(&gw.admin_get("/admin/status").await.body);
    gw.wait_request_logs(2);
    bodies.push_str(&gw.metrics().await);
    assert!(!bodies.contains(UPSTREAM_SECRET));
    assert!(!gw.logs().contains(UPSTREAM_SECRET));
    assert!(
        !gw.logs().contains(KEY),
        "the gateway key is not logged either"
    );
}

/// The sum of the `/metrics` samples whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The state of `model`'s own breaker on `mock-a`, from `/admin/status`.
async fn primary_breaker_state(gw: &Gateway, model: &str) -> String {
    let status = gw.admin_get("/admin/status").await.json();
    deployment_breaker(&region_breaker(&status, "mock-a"), model)["state"]
        .as_str()
        .expect("state")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_close_a_breaker_without_client_traffic_reaching_the_primary() {
    let mock = mock().await;
    let primary = "p+flap-1500";
    // A zero cool-down: without probes, the next client request would be the half-open probe.
    let (gw, _dir) = gateway_for(|d| {
        mock_policy_with_probes(
            d,
            &mock.base_url(),
            "{ window_secs: 10, min_requests: 10, error_ratio: 0.5, consecutive_failures: 2, cooldown_secs: 0 }",
            Some("{ interval_secs: 1, timeout_ms: 500 }"),
            &[
                on_region_a("primary", 0.9, primary),
                on_region_a("backup", 0.5, "b+ok"),
            ],
        )
    });
    let mut served = Vec::new();
    let ask = async |served: &mut Vec<String>| {
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 2)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        served.push(a.header("x-llmgw-model").to_owned());
    };
    // The primary fails until its breaker opens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while primary_breaker_state(&gw, "primary").await == "closed" {
        assert!(
            Instant::now() < deadline,
            "the primary's breaker never opened"
        );
        ask(&mut served).await;
    }
    // Client traffic goes to the backup until a probe closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary_breaker_state(&gw, "primary").await != "closed" {
        assert!(Instant::now() < deadline, "no probe closed the breaker");
        ask(&mut served).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.iter().any(|m| m == "backup"), "{served:?}");
    // Client traffic returns to the primary at once.
    for _ in 0..3 {
        ask(&mut served).await;
        assert_eq!(served.last().map(String::as_str), Some("primary"));
    }
    // Every attempt the mock saw on the primary is a client call (a failure counted in
    // the upstream errors, or an answer) or a probe. Probes count once answered, so poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = gw.metrics().await;
        let client_failures = metric_sum(
            &text,
            "llmgw_upstream_errors_total{provider=\"mock-a\",class=\"unavailable\"}",
        );
        let probes = metric_sum(
            &text,
            "llmgw_health_probes_total{deployment=\"primary@mock-a\"",
        );
        let probes_ok = metric_sum(
            &text,
            "llmgw_health_probes_total{deployment=\"primary@mock-a\",outcome=\"ok\"}",
        );
        let served_primary = served.iter().filter(|m| *m == "primary").count() as u64;
        let attempts = mock.stats.attempts(primary);
        if attempts == client_failures + served_primary + probes {
            assert!(probes_ok >= 1, "{text}");
            assert!(probes > probes_ok, "a failed probe kept it open: {text}");
            assert!(
                client_failures <= 2,
                "no client request was the half-open probe: {client_failures} failures"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{attempts} attempts, {client_failures} client failures, {served_primary} served, {probes} probes\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.wait_request_logs(served.len()).len(),
        served.len(),
        "probes write no request log line"
    );
}

/// Polls `/metrics` until the samples starting with `prefix` sum to at least 1, failing
/// after 10 s.
async fn wait_probes(gw: &Gateway, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics().await;
        if metric_sum(&text, prefix) >= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "no `{prefix}` sample in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_follow_policy_reloads() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |probe: Option<&str>, upstream: &str| {
        mock_policy_with_probes(
            dir.path(),
            &mock.base_url(),
            MOCK_CIRCUIT,
            probe,
            &[on_region_a("primary", 0.9, upstream)],
        )
    };
    write(None, "p+ok");
    let gw = Gateway::start_on(
        &[
            "--policies",
            dir.path().to_str().expect("utf-8 path"),
            "--poll-interval",
            "100ms",
        ],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        None,
    );
    // Probes turned on by a reload reach the idle deployment under the new revision's
    // upstream name; the first revision, without probes, sent nothing.
    write(Some("{ interval_secs: 1, timeout_ms: 500 }"), "p2+ok");
    wait_probes(
        &gw,
        "llmgw_health_probes_total{deployment=\"primary@mock-a\",outcome=\"ok\"}",
    )
    .await;
    assert!(
        mock.stats.attempts("p2+ok") >= 1,
        "the current revision is probed"
    );
    assert_eq!(
        mock.stats.attempts("p+ok"),
        0,
        "no probes without `health_probe`"
    );
    assert!(
        gw.request_logs().is_empty(),
        "probes write no request log line"
    );
}

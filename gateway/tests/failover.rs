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
    let circuit = status["circuits"]
        .as_array()
        .expect("circuits")
        .iter()
        .find(|c| c["provider"] == "mock-a")
        .cloned();
    assert_eq!(circuit.expect("mock-a circuit")["state"], "open");
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
    }
    let total = mock.stats.attempts("p+503") + mock.stats.attempts("b+503");
    assert!(
        total <= requests / 2,
        "{total} upstream attempts for {requests} requests"
    );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_without_a_prefill_model_ends_with_an_error_event() {
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
                    prefill: false,
                    provider: "mock-b",
                    upstream: "b+ok",
                },
            ],
        )
    });
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 8)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.streamed_text(), expected_text(3));
    assert!(a.stream_error(), "an in-band error event: {}", a.body);
    assert!(!a.done(), "never a clean [DONE] after a truncated answer");
    assert_eq!(
        mock.stats.attempts("b+ok"),
        0,
        "no restart that would repeat the answer"
    );
    assert_eq!(
        gw.wait_request_logs(1).pop().expect("log")["outcome"],
        "truncated"
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
async fn a_malformed_event_breaks_the_stream_which_then_resumes() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "malformed-3"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", true, 7)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.streamed_text(), expected_text(7));
    assert!(a.done() && !a.stream_error());
    assert_eq!(mock.stats.attempts("p+malformed-3"), 1);
    assert_eq!(mock.stats.attempts("b+ok"), 1);
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

//! Upstream keys never leave the gateway, whatever the upstream says: the mock provider quotes
//! the credentials it received (whole, and the way providers quote a bad key) in error bodies
//! of every status, as JSON and as plain text, and in an in-band error event in the middle of a
//! stream, for the OpenAI-compatible, Anthropic and Gemini adapters. Neither the key nor any
//! 8-character fragment of it may reach the client's answer (body and headers), the request
//! log, the decision log, `/metrics` or the state store.

mod common;
mod state_support;

use common::*;
use state_support::sqlite_bytes;
use std::path::Path;
use std::time::Duration;

/// The environment variable the providers' `api_key` names.
const KEY_ENV: &str = "LLMGW_TEST_SCRUB_KEY";
/// A long upstream key, as providers issue them.
const SECRET: &str = "sk-scrub-Q7wE9rT2yU4iO6pA8sD0fG1hJ3kL5zX7cV9bN2mQ4wE6rT8y";
/// Every error status the issue names.
const STATUSES: [u16; 8] = [400, 404, 409, 413, 422, 429, 500, 503];
/// The adapters: (provider type, short name).
const ADAPTERS: [(&str, &str); 3] = [
    ("openai_compatible", "oa"),
    ("anthropic", "an"),
    ("gemini", "ge"),
];
/// How the mock tells the error: JSON body, text body, in-band stream event.
const FORMS: [&str; 3] = ["json", "text", "stream"];

/// The key or the first of its 8-character fragments that `text` contains.
fn leak(text: &str) -> Option<&'static str> {
    (0..=SECRET.len() - 8)
        .map(|i| &SECRET[i..i + 8])
        .find(|fragment| text.contains(fragment))
}

/// Fails naming `what` and the fragment when `text` holds part of the key.
fn assert_clean(what: &str, text: &str) {
    if let Some(fragment) = leak(text) {
        panic!("{what} holds the upstream key fragment `{fragment}`:\n{text}");
    }
}

/// The logical model of an adapter, status and form; its upstream model is the mock's fault.
fn model(adapter: &str, status: u16, form: &str) -> (String, String) {
    let name = format!("{adapter}-{form}-{status}");
    let fault = match form {
        "json" => format!("echo-{status}"),
        other => format!("echo-{other}-{status}"),
    };
    let upstream = format!("{name}+{fault}");
    (name, upstream)
}

/// One provider per adapter on the mock, keyed from [`KEY_ENV`], with circuits that never open
/// (every request must reach the mock), and one model per adapter, status and form, each in a
/// class of its own (no failover hides an answer).
fn policy(dir: &Path, mock_root: &str) {
    let mut providers = String::from("apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n");
    for (kind, short) in ADAPTERS {
        let base = match kind {
            "gemini" => format!("{mock_root}/v1beta"),
            _ => format!("{mock_root}/v1"),
        };
        providers.push_str(&format!(
            "  - name: {short}\n    type: {kind}\n    region: r-{short}\n    base_url: {base}\n    api_key: env:{KEY_ENV}\n    timeouts: {{ connect_ms: 500, first_token_ms: 2000, idle_ms: 2000, total_ms: 5000 }}\n    circuit: {{ window_secs: 10, min_requests: 100000, error_ratio: 1, consecutive_failures: 100000, cooldown_secs: 0 }}\n"
        ));
    }
    let mut models = String::from("apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n");
    for (_, short) in ADAPTERS {
        for status in STATUSES {
            for form in FORMS {
                let (name, upstream) = model(short, status, form);
                models.push_str(&format!(
                    "  - name: {name}\n    class: {name}\n    quality: 0.9\n    context_window: 100000\n    capabilities: [chat, tools, prefill]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: {short}\n        upstream_model: \"{upstream}\"\n"
                ));
            }
        }
    }
    std::fs::write(dir.join("providers.yaml"), providers).expect("write policy");
    std::fs::write(dir.join("models.yaml"), models).expect("write policy");
}

/// The answer as text: status line, every header, the body.
fn answer_text(a: &Answer) -> String {
    let mut text = format!("HTTP {}\n", a.status);
    for (name, value) in &a.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&a.body);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keys_echoed_by_the_provider_never_leave_the_gateway() {
    let mock = mock().await;
    let mock_root = format!("http://{}", mock.addr);
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock_root);
    let work = tempfile::tempdir().expect("tempdir");
    let state = work.path().join("state");
    let decisions = work.path().join("decisions.jsonl");
    let mut gw = Gateway::start_on(
        &[
            "--policies",
            policies.path().to_str().expect("utf-8 path"),
            "--decision-log",
            decisions.to_str().expect("utf-8 path"),
        ],
        &[(KEY_ENV, SECRET)],
        true,
        Some(state.to_str().expect("utf-8 path")),
    );

    let mut requests = 0;
    let mut redacted = 0;
    for (_, short) in ADAPTERS {
        for status in STATUSES {
            for form in FORMS {
                let (name, upstream) = model(short, status, form);
                // A mid-stream error needs a stream; the other forms come in both shapes.
                let shapes: &[bool] = if form == "stream" {
                    &[true]
                } else {
                    &[false, true]
                };
                for &stream in shapes {
                    let a = post(&gw.url("/v1/chat/completions"), &chat(&name, stream, 6)).await;
                    requests += 1;
                    let what = format!("the answer to {name} (stream: {stream})");
                    if form == "stream" {
                        assert_eq!(a.status, 200, "{what}: {}", a.body);
                        assert!(
                            a.stream_error(),
                            "{what} ends with an in-band error: {}",
                            a.body
                        );
                    } else {
                        assert!(a.status >= 400, "{what} is an error: {}", a.body);
                    }
                    let text = answer_text(&a);
                    assert_clean(&what, &text);
                    redacted += usize::from(text.contains("[redacted]"));
                }
                assert!(
                    mock.stats.attempts(&upstream) >= 1,
                    "{upstream} was never asked: the echo was not exercised"
                );
            }
        }
    }
    // The provider's words reach the client (scrubbed) wherever they are relayed: every 4xx
    // other than 404 and 429, as JSON and text, for every adapter, and every mid-stream error.
    assert!(
        redacted >= ADAPTERS.len() * 4 * 2,
        "only {redacted} answers carried a scrubbed provider message"
    );

    let logs = gw.wait_request_logs(requests);
    assert_eq!(logs.len(), requests, "one request log line per request");
    assert!(
        logs.iter().any(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.contains("[redacted]"))),
        "the request log's `error` field carries the scrubbed provider message"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("llmgw_"), "metrics are served: {metrics}");
    assert_clean("/metrics", &metrics);

    // Shutdown flushes the decision log and the state store.
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "the gateway exits on SIGTERM"
    );
    assert_clean("the gateway's log (stderr)", &gw.logs());
    let decision_log = read(&decisions);
    assert_eq!(
        decision_log.lines().count(),
        requests,
        "one decision log line per request"
    );
    assert_clean("the decision log", &decision_log);
    let stored = sqlite_bytes(&state);
    assert!(!stored.is_empty(), "the state store was written");
    assert_clean("the state store", &stored);
}

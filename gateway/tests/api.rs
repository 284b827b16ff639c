//! The HTTP API of the real `llmgw` binary: authentication, validation, routes, headers,
//! observability endpoints, the embedded default policy and graceful shutdown.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

fn simulated_policy() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/policies/simulated")
        .display()
        .to_string()
}

fn simulated_gateway(extra: &[&str]) -> Gateway {
    let dir = simulated_policy();
    let mut args = vec!["--policies", dir.as_str()];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_answers_a_streamed_chat_with_the_printed_key() {
    // No --policies and no --dev-key: the bundled policy and a generated key.
    let gw = Gateway::start_with(&[], &[], false);
    let key_line = gw
        .banner
        .iter()
        .find(|l| l.starts_with("gateway key (shown once"))
        .expect("key line");
    let key = key_line.rsplit(' ').next().expect("key").to_owned();
    assert!(key.starts_with("llmgw_"), "{key}");
    let auth = format!("Bearer {key}");
    let models = send(
        "GET",
        &gw.url("/v1/models"),
        None,
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(models.status, 200, "{}", models.body);
    let first = models.json()["data"][0]["id"]
        .as_str()
        .expect("a model")
        .to_owned();
    let body = chat(&first, true, 6);
    let a = send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(&body),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), "text/event-stream");
    assert!(!a.streamed_text().is_empty());
    assert!(a.done());
    assert!(!a.header("x-llmgw-policy-rev").is_empty());
    assert!(!a.header("x-llmgw-rule").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_revision_rule_model_provider_cost_and_cache() {
    let gw = simulated_gateway(&[]);
    let a = post(
        &gw.url("/v1/chat/completions"),
        &chat("chat-large", false, 8),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    for h in [
        "x-llmgw-policy-rev",
        "x-llmgw-rule",
        "x-llmgw-model",
        "x-llmgw-provider",
        "x-llmgw-cost-usd",
        "x-llmgw-cache",
    ] {
        assert!(!a.header(h).is_empty(), "{h} missing");
    }
    let body = a.json();
    assert_eq!(body["model"], "chat-large");
    assert_eq!(a.header("x-llmgw-model"), "chat-large");
    assert_eq!(a.header("x-llmgw-provider"), "sim-fast");
    let usage = &body["usage"];
    let (input, output) = (
        usage["prompt_tokens"].as_f64().expect("in"),
        usage["completion_tokens"].as_f64().expect("out"),
    );
    let cost: f64 = a.header("x-llmgw-cost-usd").parse().expect("a number");
    let expected = (input * 2.5 + output * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    let log = gw.wait_request_logs(1).pop().expect("a request log line");
    assert_eq!(log["key_id"], "dev");
    assert_eq!(log["model"], "chat-large");
    assert_eq!(log["provider"], "sim-fast");
    assert!(log["cost_usd"].as_f64().expect("cost") > 0.0);
    assert_eq!(log["policy_revision"], a.header("x-llmgw-policy-rev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_usage_when_asked_and_done() {
    let gw = simulated_gateway(&[]);
    let body = serde_json::json!({
        "model": "chat-small", "stream": true, "max_tokens": 5,
        "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "hi" }],
    });
    let a = post(&gw.url("/v1/chat/completions"), &body.to_string()).await;
    assert_eq!(a.status, 200);
    let events = a.events();
    let first: serde_json::Value = serde_json::from_str(&events[0].1).expect("json");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["object"], "chat.completion.chunk");
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2].1).expect("json");
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(events.last().expect("events").1, "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_models() {
    let gw = simulated_gateway(&[]);
    let a = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"embed","input":["a","b"]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["data"].as_array().expect("data").len(), 2);
    assert_eq!(v["model"], "embed");
    let m = get(&gw.url("/v1/models")).await.json();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["chat-large", "chat-small", "embed"]);
    // The registry's view of each model, in an extension object.
    let large = &m["data"][0]["llmgw"];
    assert!(
        large["context_window"].as_u64().is_some_and(|w| w > 0),
        "{large}"
    );
    assert!(
        large["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "chat")),
        "{large}"
    );
    assert!(large["price_per_mtok"]["input"].is_number(), "{large}");
    assert!(large["price_per_mtok"]["output"].is_number(), "{large}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_have_openai_shape_and_status() {
    let gw = simulated_gateway(&["--max-body-bytes", "2000"]);
    let url = gw.url("/v1/chat/completions");
    let no_key = send("POST", &url, Some(&chat("chat-large", false, 3)), &[]).await;
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.json()["error"]["type"], "authentication_error");
    let bad_key = send(
        "POST",
        &url,
        Some("{}"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(bad_key.status, 401);
    let bad_json = post(&url, "{oops").await;
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["error"]["code"], "invalid_json");
    let missing = post(&url, r#"{"model":"chat-large"}"#).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"]["param"], "messages");
    let unknown = post(&url, &chat("no-such-model", false, 3)).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
    let route = get(&gw.url("/v1/nothing")).await;
    assert_eq!(route.status, 404);
    assert!(route.json()["error"]["message"].as_str().is_some());
    let big = format!(
        r#"{{"model":"chat-large","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    let too_large = post(&url, &big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["error"]["code"], "request_too_large");
    for a in [&no_key, &bad_json, &missing, &unknown, &too_large] {
        let e = &a.json()["error"];
        assert!(
            e.get("message").is_some()
                && e.get("type").is_some()
                && e.get("code").is_some()
                && e.get("param").is_some(),
            "{e}"
        );
    }
}

/// The Grafana dashboard in `examples/grafana/` queries only metrics the gateway exports, and
/// every chart has a unit and a legend for each series.
#[tokio::test]
async fn the_grafana_dashboard_queries_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grafana/llmgw-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let gw = simulated_gateway(&[]);
    let metrics = gw.metrics().await;
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let exported = |name: &str| {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        families.contains(&family) || families.contains(&name)
    };
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("title");
        assert!(
            panel["fieldConfig"]["defaults"]["unit"].is_string(),
            "{title}: no unit"
        );
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                target["legendFormat"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty()),
                "{title}: no legend for {expr}"
            );
            for (at, _) in expr.match_indices("llmgw_") {
                let m: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                assert!(exported(&m), "{title}: {m} is not exported");
                queried += 1;
            }
        }
    }
    assert!(queried > 20, "only {queried} metric references");
}

#[tokio::test]
async fn the_request_counter_names_the_rule_that_decided() {
    let gw = simulated_gateway(&[]);
    post(
        &gw.url("/v1/chat/completions"),
        &chat("chat-large", false, 3),
    )
    .await;
    let line = gw.wait_request_logs(1).remove(0);
    let rule = line["rule"].as_str().expect("rule").to_owned();
    assert!(!rule.is_empty(), "{line}");
    let metrics = gw.metrics().await;
    let counted = metrics.lines().find(|l| {
        l.starts_with("llmgw_requests_total{")
            && l.contains("status=\"200\"")
            && l.contains(&format!("rule=\"{rule}\""))
    });
    assert!(
        counted.is_some_and(|l| l.ends_with(" 1")),
        "no llmgw_requests_total for rule {rule} in\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_status() {
    let gw = simulated_gateway(&[]);
    assert_eq!(
        send("GET", &gw.url("/healthz"), None, &[]).await.status,
        200
    );
    assert_eq!(send("GET", &gw.url("/readyz"), None, &[]).await.status, 200);
    post(
        &gw.url("/v1/chat/completions"),
        &chat("chat-large", true, 3),
    )
    .await;
    let metrics = gw.metrics().await;
    for name in [
        "llmgw_requests_total",
        "llmgw_request_duration_seconds",
        "llmgw_time_to_first_token_seconds",
        "llmgw_tokens_total",
        "llmgw_cost_usd_total",
        "llmgw_in_flight_requests",
        "llmgw_policy_info",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let unauth = send("GET", &gw.admin_url("/admin/status"), None, &[]).await;
    assert_eq!(unauth.status, 401);
    let status = gw.admin_get("/admin/status").await.json();
    assert!(status["policy"]["applied_revision"]["id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(status["circuits"].as_array().expect("circuits").len(), 2);
    let live = status["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["deployment"] == "chat-large@sim-fast")
        .cloned();
    assert!(live.expect("deployment")["live"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_served_on_the_same_port() {
    let gw = simulated_gateway(&[]);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(gw.url("/healthz"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("h2c answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream_before_exiting() {
    let mut gw = simulated_gateway(&[]);
    // chat-small streams 300 tokens at 500 tokens/s: about 0.6 s.
    let url = gw.url("/v1/chat/completions");
    let pending = tokio::spawn(async move { post(&url, &chat("chat-small", true, 300)).await });
    // Wait until the stream is in flight (the gauge says so), then ask the gateway to stop.
    let mut seen = false;
    for _ in 0..200 {
        let m = gw.metrics().await;
        if m.lines()
            .any(|l| l.starts_with("llmgw_in_flight_requests ") && !l.ends_with(" 0"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the stream never showed as in flight");
    gw.terminate();
    let a = pending.await.expect("the client task");
    assert_eq!(a.status, 200);
    assert!(a.done(), "the in-flight stream completed: {}", a.body.len());
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("llmgw exits after draining");
    assert!(status.success(), "{status:?}");
}

/// Reads until the server closes the connection; returns the bytes and how long it took.
fn read_until_closed(stream: &mut std::net::TcpStream) -> (String, Duration) {
    use std::io::Read;
    let start = std::time::Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn idle_connections_and_slow_headers_are_closed() {
    use std::io::Write;
    let gw = simulated_gateway(&[
        "--idle-timeout-secs",
        "1",
        "--header-read-timeout-secs",
        "1",
    ]);
    // An idle keep-alive connection is closed after the idle timeout.
    let mut idle = std::net::TcpStream::connect(&gw.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let (text, took) = read_until_closed(&mut idle);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A client that never finishes its headers is cut off after the header-read timeout.
    let mut slow = std::net::TcpStream::connect(&gw.addr).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .expect("write");
    let (text, took) = read_until_closed(&mut slow);
    assert!(!text.contains("200 OK"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

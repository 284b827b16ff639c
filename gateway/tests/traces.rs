//! OpenTelemetry traces: the real binary exports over OTLP/HTTP (JSON) to a collector stand-in
//! on 127.0.0.1, continues the client's W3C trace and hands it on to each upstream call.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// A collector stand-in: every body POSTed to `/v1/traces` comes out of the receiver.
async fn collector() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("collector listens");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body: hyper::body::Incoming = req.into_body();
                        let bytes = body.collect().await.map(|b| b.to_bytes());
                        if let (Ok(bytes), "/v1/traces") = (bytes, path.as_str()) {
                            let value = serde_json::from_slice(&bytes)
                                .unwrap_or_else(|e| panic!("OTLP JSON: {e}"));
                            let _ = tx.send(value);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), rx)
}

/// The spans received until `n` have come (fails when they do not come within 20 s).
async fn spans(rx: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} spans exported: {out:#?}", out.len()))
            .expect("collector runs");
        for resource in batch["resourceSpans"].as_array().expect("resourceSpans") {
            let service = attribute(&resource["resource"], "service.name");
            assert_eq!(service, Value::from("llmgw"), "{resource}");
            for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                out.extend(scope["spans"].as_array().expect("spans").iter().cloned());
            }
        }
    }
    out
}

/// An attribute's value (strings as strings, integers as numbers, whichever way OTLP/JSON
/// wrote them).
fn attribute(item: &Value, key: &str) -> Value {
    let found = item["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"]);
    match found {
        Some(v) if v["stringValue"].is_string() => v["stringValue"].clone(),
        Some(v) if !v["intValue"].is_null() => match &v["intValue"] {
            Value::String(s) => Value::from(s.parse::<i64>().expect("int")),
            other => other.clone(),
        },
        Some(v) if !v["boolValue"].is_null() => v["boolValue"].clone(),
        Some(v) if !v["doubleValue"].is_null() => v["doubleValue"].clone(),
        _ => Value::Null,
    }
}

fn hex(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_that_failed_over_is_one_trace_from_client_to_upstreams() {
    let (collector, mut rx) = collector().await;
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    primary_and_backup(dir.path(), &mock.base_url(), "503");
    let gw = Gateway::start_with(
        &[
            "--policies",
            dir.path().to_str().expect("utf-8 path"),
            "--otlp-endpoint",
            &collector,
        ],
        &[
            ("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        true,
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace}-{client_span}-01");
    let auth = format!("Bearer {KEY}");
    let a = send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(&chat("primary", true, 4)),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-model"), "backup");

    // The request, its six phases and its two upstream calls.
    let spans = spans(&mut rx, 9).await;
    for s in &spans {
        assert_eq!(hex(&s["traceId"]), trace, "the client's trace: {s}");
    }
    let request = spans
        .iter()
        .find(|s| hex(&s["parentSpanId"]) == client_span)
        .unwrap_or_else(|| panic!("no span under the client's: {spans:#?}"));
    assert_eq!(request["name"], "chat primary");
    assert_eq!(request["kind"], Value::from(2), "server: {request}");
    for (key, want) in [
        ("gen_ai.operation.name", Value::from("chat")),
        ("gen_ai.request.model", Value::from("primary")),
        ("gen_ai.response.model", Value::from("backup")),
        ("gen_ai.provider.name", Value::from("mock-b")),
        ("gen_ai.usage.output_tokens", Value::from(4)),
        ("http.response.status_code", Value::from(200)),
        ("llmgw.failovers", Value::from(1)),
        ("llmgw.stream", Value::from(true)),
    ] {
        assert_eq!(attribute(request, key), want, "{key} of {request}");
    }
    let rule = attribute(request, "llmgw.rule");
    assert!(rule.as_str().is_some_and(|r| !r.is_empty()), "{request}");
    let revision = attribute(request, "llmgw.policy_revision");
    assert_eq!(
        revision.as_str(),
        Some(a.header("x-llmgw-policy-rev")),
        "{request}"
    );
    let request_id = hex(&request["spanId"]);
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| hex(&s["parentSpanId"]) == request_id)
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    for phase in [
        "authenticate",
        "identify",
        "decide",
        "cache",
        "reserve",
        "attempt",
    ] {
        assert!(names.contains(&phase), "no {phase} span in {names:?}");
    }
    let call = |deployment: &str| {
        *children
            .iter()
            .find(|s| attribute(s, "llmgw.deployment").as_str() == Some(deployment))
            .unwrap_or_else(|| panic!("no call span of {deployment} in {children:#?}"))
    };
    let (failed, served) = (call("primary@mock-a"), call("backup@mock-b"));
    assert_eq!(failed["kind"], Value::from(3), "client: {failed}");
    assert_eq!(attribute(failed, "llmgw.attempt.outcome"), "unavailable");
    assert_eq!(failed["status"]["code"], Value::from(2), "error: {failed}");
    assert_eq!(attribute(served, "llmgw.attempt.outcome"), "ok");
    // Each upstream call was told its own span as the parent.
    for (model, span) in [("p+503", failed), ("b+ok", served)] {
        assert_eq!(
            mock.stats.last_traceparent(model),
            Some(format!("00-{trace}-{}-01", hex(&span["spanId"]))),
            "{model}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_upstreams_get_no_traceparent() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "ok"));
    let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 4)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.stats.attempts("p+ok"), 1);
    assert_eq!(mock.stats.last_traceparent("p+ok"), None);
}

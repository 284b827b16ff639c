//! Limits that hold against clients that misbehave on the wire: bodies dribbled a byte at a
//! time, connections that send nothing, oversized or malformed request heads, request
//! strings past their length limits, and key expiries past what a clock can hold.

mod common;
mod state_support;

use common::*;
use serde_json::Value;
use state_support::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The small timeouts these tests configure (seconds).
const TIMEOUT_SECS: u64 = 1;

/// Far longer than any timeout the gateway is given here: past it, the gateway is holding a
/// connection it should have closed.
const BOUND: Duration = Duration::from_secs(20);

fn gateway(extra: &[&str]) -> Gateway {
    let secs = TIMEOUT_SECS.to_string();
    let mut args = vec![
        "--body-read-timeout-secs",
        secs.as_str(),
        "--header-read-timeout-secs",
        secs.as_str(),
    ];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

/// Everything the server sends until it closes the connection; fails the test if the
/// connection is still open after [`BOUND`].
async fn read_until_closed(read: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        closed.is_ok(),
        "the gateway still held the connection open after {BOUND:?}; received: {text:?}"
    );
    text
}

/// Sends `request` on a fresh connection and returns all the server sent until it closed.
async fn exchange(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_until_closed(&mut s).await
}

/// The JSON body of a raw HTTP/1.1 response (`content-length` framed).
fn json_body(response: &str) -> Value {
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_body_gets_408_and_the_connection_is_closed() {
    let gw = gateway(&[]);
    let stream = TcpStream::connect(&gw.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.expect("head");
    // One byte per quarter of the timeout: always some progress, never the whole body.
    let dribble = tokio::spawn(async move {
        for _ in 0..1000 {
            if write.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(TIMEOUT_SECS * 250)).await;
        }
    });
    let text = read_until_closed(&mut read).await;
    dribble.abort();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body = json_body(&text);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_read_timeout() {
    // The idle timeout is long: only the header-read timeout can close this connection.
    let gw = gateway(&["--idle-timeout-secs", "600"]);
    let mut s = TcpStream::connect(&gw.addr).await.expect("connect");
    let text = read_until_closed(&mut s).await;
    assert_eq!(
        text, "",
        "nothing is answered to a client that sent nothing"
    );
    // The gateway still serves.
    assert_eq!(get(&gw.url("/healthz")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_gets_431_with_an_openai_error() {
    let gw = gateway(&[]);
    let big = "a".repeat(100 << 10);
    let request = format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let text = exchange(&gw.addr, request.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    let body = json_body(&text);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(
        body["error"]["code"], "request_header_fields_too_large",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_and_broken_chunks_get_400() {
    let gw = gateway(&[]);
    // hyper rejects the head itself: a bare 400, then the connection is closed.
    let text = exchange(
        &gw.addr,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-length: 2\r\ncontent-length: 3\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // A chunk size that is not hexadecimal: the body cannot be read.
    let text = exchange(
        &gw.addr,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             transfer-encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let body = json_body(&text);
    assert_eq!(body["error"]["code"], "invalid_body", "{body}");
}

/// POSTs a chat body with extra fields and headers; returns (status, error param).
async fn rejected(gw: &Gateway, fields: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}]{fields}}}"#);
    let auth = format!("Bearer {KEY}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    let a = send("POST", &gw.url("/v1/chat/completions"), Some(&body), &all).await;
    let v = a.json();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    (a.status, v["error"]["param"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_strings_past_their_limits_get_400_naming_the_field() {
    let gw = gateway(&[]);
    let user = format!(r#","user":"{}""#, "u".repeat(1 << 20));
    assert_eq!(rejected(&gw, &user, &[]).await, (400, "user".into()));
    let value = format!(r#","metadata":{{"team":"{}"}}"#, "v".repeat(4096));
    assert_eq!(
        rejected(&gw, &value, &[]).await,
        (400, "metadata.team".into())
    );
    let key = format!(r#","metadata":{{"{}":"a"}}"#, "k".repeat(4096));
    let (status, param) = rejected(&gw, &key, &[]).await;
    assert_eq!(status, 400);
    assert!(
        param
            .as_str()
            .is_some_and(|p| p.starts_with("metadata.kkk")),
        "{param}"
    );
    let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}":"v""#)).collect();
    let many = format!(r#","metadata":{{{}}}"#, many.join(","));
    assert_eq!(rejected(&gw, &many, &[]).await, (400, "metadata".into()));
    let header = "h".repeat(4096);
    assert_eq!(
        rejected(&gw, "", &[("x-llmgw-meta-team", &header)]).await,
        (400, "x-llmgw-meta-team".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expiry_past_a_century_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8");
    let out = llmgw(&[
        "keys",
        "create",
        "--state",
        state,
        "--tenant",
        "acme",
        "--expires",
        "9999999999999d",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("`9999999999999d` is too long"),
        "{out:?}"
    );
    // The admin API refuses it too.
    let token = "adm-token-for-limits-7f3a";
    let gw = gateway(&["--admin-token", token]);
    let auth = format!("Bearer {token}");
    let a = send(
        "POST",
        &gw.admin_url("/admin/keys"),
        Some(r#"{"tenant":"acme","expires":"9999999999999d"}"#),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("9999999999999d"), "{}", a.body);
}

//! The upstream HTTP client shared by the network adapters: pooled connections, HTTPS through
//! rustls, timeouts, error classification and the task that turns an SSE body into events.

use crate::providers::secret::{Secret, SecretError};
use crate::sse::{SseEvent, SseParser};
use crate::upstream::{
    parse_retry_after, ChunkStream, ErrorClass, StreamEvent, UpstreamError, UpstreamRequest,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use llmgw_engine::model::{self, Timeouts};
use std::time::Duration;

/// A pooled HTTP/1.1 and HTTP/2 client for `http` and `https` upstreams.
pub type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest error or JSON body read from a provider.
const MAX_UPSTREAM_BODY: usize = 32 << 20;

/// A client with this connect timeout.
pub fn client(timeouts: &Timeouts) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(timeouts.connect_ms.max(1))));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// An authorization header value marked sensitive (never logged by hyper).
pub fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The key of a provider, or the auth error that says which reference is missing.
pub fn key_or_error(key: &Result<Secret, SecretError>) -> Result<&Secret, UpstreamError> {
    key.as_ref()
        .map_err(|e| UpstreamError::new(ErrorClass::Auth, e.to_string()))
}

/// What every HTTP provider holds: a pooled client, the base URL, the key and the timeouts.
pub struct Connection {
    /// The pooled client.
    pub client: Client,
    /// The API's base URL.
    pub base_url: Option<String>,
    /// The resolved key reference, if the provider names one.
    pub key: Option<Result<Secret, SecretError>>,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
}

impl Connection {
    /// The connection of a policy provider with its resolved key (`None` when it names
    /// none); `default_base_url` stands in for a missing `base_url`.
    pub fn new(
        provider: &model::Provider,
        key: Option<Result<Secret, SecretError>>,
        default_base_url: Option<&str>,
    ) -> Self {
        Connection {
            client: client(&provider.timeouts),
            base_url: provider
                .base_url
                .clone()
                .or_else(|| default_base_url.map(str::to_owned)),
            key,
            timeouts: provider.timeouts,
        }
    }

    /// The base URL (empty when there is none).
    pub fn base(&self) -> &str {
        self.base_url.as_deref().unwrap_or_default()
    }
}

/// Adds the request's `traceparent`, when traces are exported.
pub fn traceparent(req: &UpstreamRequest<'_>, headers: &mut Vec<(HeaderName, HeaderValue)>) {
    if let Some(v) = req.traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.push((HeaderName::from_static("traceparent"), v));
    }
}

/// POSTs a JSON body and waits for the answer's headers at most `first_byte`.
pub async fn post(
    client: &Client,
    url: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    first_byte: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    let uri: Uri = url.parse().map_err(|_| {
        UpstreamError::new(
            ErrorClass::Unsupported,
            "the provider's base_url is not a valid URL",
        )
    })?;
    let mut req = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| {
            UpstreamError::new(
                ErrorClass::Unsupported,
                format!("cannot build request: {e}"),
            )
        })?;
    let map = req.headers_mut();
    for (k, v) in headers {
        map.insert(k, v);
    }
    match tokio::time::timeout(first_byte, client.request(req)).await {
        Err(_) => Err(UpstreamError::new(
            ErrorClass::Timeout,
            format!("no answer within {} ms", first_byte.as_millis()),
        )),
        Ok(Err(e)) => {
            let class = if e.is_connect() {
                ErrorClass::Connect
            } else {
                ErrorClass::Network
            };
            Err(UpstreamError::new(class, describe(&e)))
        }
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// A description of a client error without URLs or headers.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "connection failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `Retry-After` of an answer (`retry-after-ms` first, then `retry-after`).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0));
        }
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Reads a whole body within `deadline`.
pub async fn read_body(
    resp: Response<Incoming>,
    deadline: Duration,
) -> Result<Bytes, UpstreamError> {
    let body = Limited::new(resp.into_body(), MAX_UPSTREAM_BODY);
    match tokio::time::timeout(deadline, body.collect()).await {
        Err(_) => Err(UpstreamError::new(
            ErrorClass::Timeout,
            format!("answer not complete within {} ms", deadline.as_millis()),
        )),
        Ok(Err(e)) => Err(UpstreamError::new(
            ErrorClass::Network,
            format!("answer broke off: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Turns a non-success answer into an error (reading its body briefly).
pub async fn error_from(resp: Response<Incoming>) -> UpstreamError {
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let body = read_body(resp, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    UpstreamError::from_status(status, &body, ra)
}

/// Reads a JSON answer within `deadline`, classifying non-success statuses.
pub async fn read_json(
    resp: Response<Incoming>,
    deadline: Duration,
) -> Result<serde_json::Value, UpstreamError> {
    if !resp.status().is_success() {
        return Err(error_from(resp).await);
    }
    let bytes = read_body(resp, deadline).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        UpstreamError::new(ErrorClass::Protocol, format!("the answer is not JSON: {e}"))
    })
}

/// The event that stands for an SSE event whose data is not the JSON the provider's protocol
/// says: the stream skips it and goes on (see [`StreamEvent::Malformed`]).
pub fn malformed(e: &serde_json::Error) -> StreamEvent {
    StreamEvent::Malformed(format!("malformed stream event: {e}"))
}

/// Maps one provider's stream events (SSE events unless said otherwise) to normalised events.
pub trait StreamTranslator<E = SseEvent>: Send + 'static {
    /// Events for one provider event (empty to skip it).
    fn event(&mut self, event: E) -> Result<Vec<StreamEvent>, UpstreamError>;
    /// Events at the end of the body (a `Done` if the answer was complete, else an error).
    fn end(&mut self) -> Result<Vec<StreamEvent>, UpstreamError>;
}

/// How a streamed body is cut into a provider's events: SSE lines or binary frames.
pub trait Framing: Send + 'static {
    /// One provider event.
    type Event: Send;
    /// Feeds bytes; returns the events they complete, or why the body is not this framing.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Self::Event>, String>;
    /// The event left when the body ends without its terminator.
    fn finish(&mut self) -> Option<Self::Event>;
}

impl Framing for SseParser {
    type Event = SseEvent;

    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        SseParser::feed(self, bytes).map_err(|e| e.to_string())
    }

    fn finish(&mut self) -> Option<SseEvent> {
        SseParser::finish(self)
    }
}

/// Spawns the task that reads an SSE answer into a [`ChunkStream`] (see [`spawn_framed`]).
pub fn spawn_sse(resp: Response<Incoming>, translator: impl StreamTranslator) -> ChunkStream {
    spawn_framed(resp, SseParser::default(), translator)
}

/// Spawns the task that reads a streamed answer, cut into events by `framing`, into a
/// [`ChunkStream`]. Errors after the translator produced output are marked as after the first
/// byte.
pub fn spawn_framed<F: Framing>(
    resp: Response<Incoming>,
    mut framing: F,
    mut translator: impl StreamTranslator<F::Event>,
) -> ChunkStream {
    let (tx, stream) = ChunkStream::channel();
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut produced = false;
        let mark =
            |e: UpstreamError, produced: bool| if produced { e.after_first_byte() } else { e };
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    let err = UpstreamError::new(ErrorClass::Network, format!("stream broke: {e}"));
                    let _ = tx.send(Err(mark(err, produced))).await;
                    return;
                }
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let events = match framing.feed(&data) {
                Ok(ev) => ev,
                Err(e) => {
                    let err = UpstreamError::new(ErrorClass::Protocol, e);
                    let _ = tx.send(Err(mark(err, produced))).await;
                    return;
                }
            };
            for event in events {
                match translator.event(event) {
                    Ok(out) => {
                        for ev in out {
                            let done = ev == StreamEvent::Done;
                            produced |= matches!(ev, StreamEvent::Delta(_));
                            if tx.send(Ok(ev)).await.is_err() || done {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(mark(e, produced))).await;
                        return;
                    }
                }
            }
        }
        let tail = framing.finish().map(|ev| translator.event(ev)).transpose();
        let end = tail.and_then(|t| {
            let mut out = t.unwrap_or_default();
            if !out.contains(&StreamEvent::Done) {
                out.extend(translator.end()?);
            }
            Ok(out)
        });
        match end {
            Ok(out) => {
                for ev in out {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(mark(e, produced))).await;
            }
        }
    });
    stream
}

/// Whether an answer is an SSE stream.
pub fn is_event_stream(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Joins a base URL and a path.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

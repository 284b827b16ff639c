//! A fault-injecting upstream that speaks the OpenAI API.
//!
//! Each request's behaviour is chosen by its `model` (or the `x-mock-fault` header, which wins).
//! A model name may carry a label before a `+` (`primary+503`): the label only separates attempt
//! counters, the part after the `+` is the fault. Attempts are counted per model name and
//! reported by `GET /_stats`, so tests can assert how many upstream calls a gateway made.
//!
//! Faults (see [`Fault::parse`]):
//!
//! | fault | behaviour |
//! |---|---|
//! | `ok` (or anything unknown) | a normal answer |
//! | `429` / `429-ra-N` | always 429, without / with `Retry-After: N` |
//! | `429-once` / `429-once-ra-N` | the first attempt 429, then normal |
//! | `500` / `500-once` | always 500 / the first attempt 500, then normal |
//! | `err-P` | P percent (0–100) of the model's attempts answer 500, evenly spread: attempt n fails when ⌊n·P/100⌋ > ⌊(n−1)·P/100⌋ (`err-4`: attempts 25, 50, 75…; `err-20`: every fifth) |
//! | `503` | always 503 |
//! | `reset` | the connection is closed before any response header |
//! | `hang` | no answer at all |
//! | `slow-ttft-MS` | the first token (or the JSON answer) comes after MS milliseconds |
//! | `lat-MS-J` | the first token (or the JSON answer) comes after MS milliseconds ± J percent (0–100), spread evenly over the range by the attempt number |
//! | `cut-N` | the stream is cut after N tokens |
//! | `stall-N` | the stream stalls after N tokens |
//! | `drip-MS` | the streamed tokens come MS milliseconds apart |
//! | `malformed-N` | one malformed SSE event after N tokens, then the rest |
//! | `no-done` | a complete stream without the final `data: [DONE]` |
//! | `context-length` | 400 `context_length_exceeded` |
//! | `content-filter` | 400 `content_filter` (Azure's shape, with `innererror`, on Azure paths) |
//! | `filtered-answer` | 200 whose only choice the content filter withheld (`finish_reason: content_filter`, no content, `content_filter_results`), as Azure OpenAI answers |
//! | `flap-MS` | 503 for MS milliseconds after the model's first attempt, then normal |
//! | `tpm-N` | a provider token quota of N: every answer carries `x-ratelimit-limit-tokens: N` and `x-ratelimit-remaining-tokens` (Anthropic's `anthropic-ratelimit-tokens-limit` and `-remaining` on `/v1/messages`); a request whose prompt and answer would take the model's tokens past N answers 429 `rate_limit_exceeded` (the quota is counted from the model's first attempt and never replenished: a test lasts less than the provider's minute) |
//! | `echo-STATUS` | STATUS with a JSON error, in the request's protocol, whose message, code and param quote the credentials the request carried (see [`Credentials`]) |
//! | `echo-text-STATUS` | STATUS with a `text/plain` body quoting the credentials |
//! | `tool` | when the request declares tools and its last message is not a tool result: a call of the first tool with the arguments `{"q":"t0"}` (5 output tokens), JSON or streamed, in the request's protocol; otherwise a normal answer |
//! | `echo-stream-STATUS` | a stream cut after 2 tokens by an in-band error event (in the request's protocol, of STATUS's kind) quoting the credentials; a JSON request gets the `echo-STATUS` answer |
//! | `no-prefill` | a model without assistant prefill: 400 `invalid_request_error` to a request whose last message is an assistant message; a request ending with an assistant message and then a user message (a re-ask to continue) is answered with the words after those the assistant message holds |
//! | `no-prefill-restate` | as `no-prefill`, but the continuation first restates every word of the assistant message, separated by line breaks instead of spaces |
//! | `no-prefill-restate-N` | as `no-prefill-restate`, restating only the assistant message's last N words |
//! | `no-prefill-misaligned` | as `no-prefill`, but the continuation starts the answer over and departs from it: the assistant message's words with its last one replaced by `xI`, then the words after them |
//!
//! Besides OpenAI's `POST /v1/chat/completions` and `/v1/embeddings`, it speaks Anthropic's
//! `POST /v1/messages` and Gemini's `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, Azure OpenAI's
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=…` (see [`azure`]: the
//! deployment stands for the model, the `api-version` and the `api-key` header or bearer token
//! are checked and a malformed request gets Azure's error), and AWS Bedrock's
//! `POST /model/{modelId}/converse` and `/converse-stream` (see [`bedrock`]: the SigV4
//! signature is verified, errors are Bedrock's exceptions and streams use AWS's binary
//! event-stream framing, in-band errors being exception messages), and Google Vertex AI's
//! `POST /v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse` with its OAuth token endpoint `POST /token` (see
//! [`vertex`]: Gemini's protocol, for a request with an access token the mock granted to a
//! verified JWT assertion), with the same faults. Gemini and Vertex AI throttle with Google's
//! 429 `RESOURCE_EXHAUSTED`.
//!
//! The rate and spread faults depend only on the attempt number, never on a clock or a random
//! source: the same sequence of attempts always fails and waits the same way, and any 100
//! consecutive attempts of an `err-P` model hold exactly P failures.
//!
//! Answers are deterministic: `max_tokens` (default 12) words `t0 t1 …`. When the last message is
//! an assistant message (a prefill), the answer continues after the words it already holds.
//! The continuation of a `no-prefill` model counts as much: restated words and the words after
//! them, up to `max_tokens` new words.
#![forbid(unsafe_code)]

pub mod azure;
pub mod bedrock;
pub mod vertex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Default answer length in tokens when the request sets no `max_tokens`.
pub const DEFAULT_TOKENS: u64 = 12;

/// What a request asks the mock to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// 429 on every attempt, with `Retry-After` seconds when set.
    RateLimit(Option<u64>),
    /// 429 on the first attempt only, with `Retry-After` seconds when set.
    RateLimitOnce(Option<u64>),
    /// 500 on every attempt.
    ServerError,
    /// 500 on the first attempt only.
    ServerErrorOnce,
    /// 500 on this percentage of attempts, evenly spread (see [`Fault::fails`]).
    ErrorRate(u64),
    /// 503 on every attempt.
    Unavailable,
    /// Close the connection before any header.
    Reset,
    /// Never answer.
    Hang,
    /// Delay the first token by this many milliseconds.
    SlowFirstToken(u64),
    /// Delay the first token by `ms` milliseconds ± `jitter_percent`, drawn from the attempt
    /// number (see [`Fault::first_token_delay`]).
    Latency {
        /// The middle of the range, milliseconds.
        ms: u64,
        /// Half the range's width, percent of `ms`.
        jitter_percent: u64,
    },
    /// Cut the stream after this many tokens.
    Cut(u64),
    /// Stall the stream after this many tokens.
    Stall(u64),
    /// Stream the tokens this many milliseconds apart.
    Drip(u64),
    /// Send one malformed event after this many tokens.
    Malformed(u64),
    /// Complete the stream without `[DONE]`.
    NoDone,
    /// 400 `context_length_exceeded`.
    ContextLength,
    /// 400 `content_filter`.
    ContentFilter,
    /// A whole answer withheld by the content filter.
    FilteredAnswer,
    /// 503 for this many milliseconds after the first attempt, then normal.
    Flap(u64),
    /// A model without prefill; a re-ask to continue is answered with the rest of the answer.
    NoPrefill(Continuation),
    /// A call of the request's first tool, unless it answers a tool call.
    ToolCall,
    /// A provider token quota of this many tokens, counted from the model's first attempt.
    TokenQuota(u64),
    /// An error quoting the credentials the request carried.
    Echo {
        /// The HTTP status (or, for a stream, the kind of the in-band error).
        status: u16,
        /// How the error is told.
        form: EchoForm,
    },
}

/// How a [`Fault::NoPrefill`] model continues a partial answer it is re-asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// With the words after it.
    Exact,
    /// Restating its last this many words first (all of them when `None`), one per line.
    Restate(Option<u64>),
    /// Starting over with its last word replaced, then the words after it.
    Misaligned,
}

/// How an [`Fault::Echo`] error is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoForm {
    /// A JSON error body in the request's protocol.
    Json,
    /// A `text/plain` body.
    Text,
    /// An in-band error event after part of a streamed answer.
    Stream,
}

impl Fault {
    /// Parses a fault name; unknown names mean [`Fault::None`].
    pub fn parse(name: &str) -> Fault {
        let name = name.rsplit('+').next().unwrap_or(name);
        let num = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
        };
        match name {
            "429" => return Fault::RateLimit(None),
            "429-once" => return Fault::RateLimitOnce(None),
            "500" => return Fault::ServerError,
            "500-once" => return Fault::ServerErrorOnce,
            "503" => return Fault::Unavailable,
            "reset" => return Fault::Reset,
            "hang" => return Fault::Hang,
            "no-done" => return Fault::NoDone,
            "context-length" => return Fault::ContextLength,
            "content-filter" => return Fault::ContentFilter,
            "no-prefill" => return Fault::NoPrefill(Continuation::Exact),
            "no-prefill-restate" => return Fault::NoPrefill(Continuation::Restate(None)),
            "no-prefill-misaligned" => return Fault::NoPrefill(Continuation::Misaligned),
            "tool" => return Fault::ToolCall,
            "filtered-answer" => return Fault::FilteredAnswer,
            _ => {}
        }
        if let Some(n) = num("429-once-ra-") {
            Fault::RateLimitOnce(Some(n))
        } else if let Some(n) = num("429-ra-") {
            Fault::RateLimit(Some(n))
        } else if let Some(n) = num("slow-ttft-") {
            Fault::SlowFirstToken(n)
        } else if let Some(p) = num("err-").filter(|p| *p <= 100) {
            Fault::ErrorRate(p)
        } else if let Some((ms, jitter_percent)) = name
            .strip_prefix("lat-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(ms, j)| Some((ms.parse().ok()?, j.parse().ok()?)))
            .filter(|(_, j)| *j <= 100)
        {
            Fault::Latency { ms, jitter_percent }
        } else if let Some(n) = num("cut-") {
            Fault::Cut(n)
        } else if let Some(n) = num("stall-") {
            Fault::Stall(n)
        } else if let Some(ms) = num("drip-") {
            Fault::Drip(ms)
        } else if let Some(n) = num("malformed-") {
            Fault::Malformed(n)
        } else if let Some(n) = num("flap-") {
            Fault::Flap(n)
        } else if let Some(n) = num("no-prefill-restate-") {
            Fault::NoPrefill(Continuation::Restate(Some(n)))
        } else if let Some(n) = num("tpm-") {
            Fault::TokenQuota(n)
        } else if let Some((form, status)) = [
            ("echo-text-", EchoForm::Text),
            ("echo-stream-", EchoForm::Stream),
            ("echo-", EchoForm::Json),
        ]
        .into_iter()
        .find_map(|(prefix, form)| Some((form, u16::try_from(num(prefix)?).ok()?)))
        .filter(|(_, status)| (400..600).contains(status))
        {
            Fault::Echo { status, form }
        } else {
            Fault::None
        }
    }

    /// Whether attempt `attempt` (1-based, counted per model) answers 500: always for `500`,
    /// the first for `500-once`, and for `err-P` attempt n when ⌊n·P/100⌋ > ⌊(n−1)·P/100⌋, so
    /// failures come every 100/P attempts and any 100 consecutive attempts hold exactly P.
    pub fn fails(&self, attempt: u64) -> bool {
        match *self {
            Fault::ServerError => true,
            Fault::ServerErrorOnce => attempt == 1,
            Fault::ErrorRate(p) => {
                let p = p.min(100);
                attempt > 0 && attempt * p / 100 > (attempt - 1) * p / 100
            }
            _ => false,
        }
    }

    /// How long attempt `attempt` waits before its first token (or its JSON answer). For
    /// `lat-MS-J` the offset is `MS × J/100 × (2u − 1)`, with `u` the fractional part of
    /// `attempt × φ` (a Weyl sequence): uniform over the range in the long run and spread
    /// evenly over it in any short run, so a quantile of a few hundred attempts is close to
    /// the uniform distribution's.
    pub fn first_token_delay(&self, attempt: u64) -> Duration {
        match *self {
            Fault::SlowFirstToken(ms) => Duration::from_millis(ms),
            Fault::Latency { ms, jitter_percent } => {
                // 2^64 / φ, odd: multiplying by it walks the circle in golden-ratio steps.
                const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
                let u = attempt.wrapping_mul(GOLDEN) as f64 / 2f64.powi(64);
                let jitter = jitter_percent.min(100) as f64 / 100.0;
                let factor = 1.0 + jitter * (2.0 * u - 1.0);
                Duration::from_secs_f64(ms as f64 * factor / 1000.0)
            }
            _ => Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct ModelStats {
    attempts: u64,
    first_seen: Option<Instant>,
    /// Tokens taken of a `tpm-N` quota.
    tokens: u64,
}

/// Attempt counters, shared by every connection of one mock.
#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
    bodies: Mutex<BTreeMap<String, Value>>,
    traceparents: Mutex<BTreeMap<String, String>>,
    /// Vertex AI's token endpoint: its grants, and how it answers.
    pub vertex: vertex::Vertex,
}

impl Stats {
    /// Counts an attempt for `model`; returns its number (1-based) and when the model was first seen.
    fn count(&self, model: &str) -> (u64, Instant) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let entry = models.entry(model.to_owned()).or_default();
        entry.attempts += 1;
        let first = *entry.first_seen.get_or_insert_with(Instant::now);
        (entry.attempts, first)
    }

    /// Takes `n` tokens of `model`'s quota of `quota` when they fit; returns the tokens left
    /// after it, or `None` (nothing taken) when they do not fit.
    fn take_tokens(&self, model: &str, n: u64, quota: u64) -> Option<u64> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let entry = models.entry(model.to_owned()).or_default();
        let after = entry.tokens.checked_add(n).filter(|t| *t <= quota)?;
        entry.tokens = after;
        Some(quota - after)
    }

    /// Attempts made so far for `model`.
    pub fn attempts(&self, model: &str) -> u64 {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models.get(model).map(|m| m.attempts).unwrap_or(0)
    }

    /// The body of the last request for `model`, as received.
    pub fn last_body(&self, model: &str) -> Option<Value> {
        let bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.get(model).cloned()
    }

    /// The `traceparent` header of the last request for `model` that carried one.
    pub fn last_traceparent(&self, model: &str) -> Option<String> {
        let seen = self.traceparents.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(model).cloned()
    }

    /// Every model's attempt count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models
            .iter()
            .map(|(k, v)| (k.clone(), v.attempts))
            .collect()
    }

    /// Forgets every counter and flap timer.
    pub fn reset(&self) {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Behaviour shared by all requests.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Delay between two streamed tokens.
    pub token_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token_interval: Duration::from_millis(2),
        }
    }
}

/// A running mock.
#[derive(Debug, Clone)]
pub struct MockHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its attempt counters.
    pub stats: Arc<Stats>,
}

impl MockHandle {
    /// The OpenAI base URL of this mock (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// Binds `addr` and serves on a background task of the current runtime.
pub async fn spawn(addr: &str, options: Options) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    tokio::spawn(serve(listener, stats.clone(), options));
    Ok(MockHandle { addr, stats })
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, options: Options) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let stats = stats.clone();
                async move { handle(req, stats, options).await }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder.serve_connection(io, service).await;
        });
    }
}

/// The error a service returns to make hyper drop the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    options: Options,
) -> Result<Response<MockBody>, DropConnection> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let header_fault = req
        .headers()
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let credentials = Credentials::of(&req);
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let azure_target = azure::target(&path);
    let bedrock_target = bedrock::target(&path);
    // What a SigV4 signature covers besides the body, kept before the body is read.
    let signed_parts = bedrock_target.as_ref().map(|_| {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        (req.uri().query().unwrap_or("").to_owned(), headers)
    });
    let path_dialect = match (path.as_str(), gemini_target(&path), &bedrock_target) {
        ("/v1/messages", _, _) => Dialect::Anthropic,
        (_, Some(_), _) => Dialect::Gemini,
        (_, _, Some(_)) => Dialect::Bedrock,
        _ => Dialect::OpenAi,
    };
    let on_vertex = vertex::models_path(&path).is_some();
    let vertex_authorized = on_vertex && stats.vertex.authorized(header("authorization"));
    let token_audience = format!(
        "http://{}{}",
        header("host").unwrap_or(""),
        vertex::TOKEN_PATH
    );
    let azure_problem = azure_target.as_ref().and_then(|_| {
        azure::check(
            req.uri().query(),
            header("api-key"),
            header("authorization"),
        )
    });
    match (method, path.as_str()) {
        (Method::GET, "/_stats") => {
            return Ok(json_response(
                StatusCode::OK,
                json!({ "attempts": stats.snapshot() }),
            ))
        }
        (Method::POST, "/_reset") => {
            stats.reset();
            return Ok(json_response(StatusCode::OK, json!({ "ok": true })));
        }
        (Method::GET, "/v1/models") => {
            let data: Vec<Value> = stats
                .snapshot()
                .keys()
                .map(|m| json!({ "id": m, "object": "model", "owned_by": "mock" }))
                .collect();
            return Ok(json_response(
                StatusCode::OK,
                json!({ "object": "list", "data": data }),
            ));
        }
        (Method::POST, "/v1/chat/completions") | (Method::POST, "/v1/embeddings") => {}
        (Method::POST, "/v1/messages") => {}
        (Method::POST, vertex::TOKEN_PATH) => {
            let Ok(body) = req.into_body().collect().await else {
                return Err(DropConnection);
            };
            let (status, answer) = stats.vertex.grant(&body.to_bytes(), &token_audience);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(json_response(status, answer));
        }
        (Method::POST, _) if on_vertex && !vertex_authorized => {
            return Ok(json_response(
                StatusCode::UNAUTHORIZED,
                vertex::unauthenticated(),
            ))
        }
        (Method::POST, p) if gemini_target(p).is_some() => {}
        (Method::POST, _) if bedrock_target.is_some() => {}
        (Method::POST, _) if azure_target.is_some() => {
            if let Some((status, body)) = azure_problem {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                return Ok(json_response(status, body));
            }
        }
        _ => {
            return Ok(error_response(
                Dialect::OpenAi,
                StatusCode::NOT_FOUND,
                "no such route",
                "not_found",
                None,
            ))
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    if let Some((query, headers)) = signed_parts {
        let signed = bedrock::Signed {
            method: "POST",
            path: &path,
            query: &query,
            headers,
            body: &body,
        };
        if let Err((status, name, message)) = bedrock::verify(&signed) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            return Ok(bedrock_error(status, name, &message));
        }
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error_response(
                path_dialect,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                "invalid_json",
                None,
            ))
        }
    };
    let received = request.clone();
    let dialect = path_dialect;
    let mut request = match (gemini_target(&path), &bedrock_target) {
        (Some((model, stream)), _) => from_gemini(&request, &model, stream),
        (_, Some((model, stream))) => bedrock::to_openai(&request, model, *stream),
        _ => request,
    };
    if let Some((deployment, _)) = &azure_target {
        // Azure ignores the body's `model`: the deployment is the model.
        request["model"] = Value::from(deployment.as_str());
    }
    let model = request["model"].as_str().unwrap_or("").to_owned();
    let to_call = tool_to_call(dialect, &received);
    let (attempt, first_seen) = stats.count(&model);
    stats
        .bodies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(model.clone(), received);
    if let Some(t) = traceparent {
        stats
            .traceparents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.clone(), t);
    }
    let fault = Fault::parse(header_fault.as_deref().unwrap_or(&model));
    let azure = azure_target.is_some();
    match fault {
        Fault::RateLimit(ra) | Fault::RateLimitOnce(ra)
            if azure && (attempt == 1 || fault == Fault::RateLimit(ra)) =>
        {
            let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, azure::rate_limited());
            resp.headers_mut()
                .insert("retry-after", ra.unwrap_or(1).into());
            return Ok(resp);
        }
        Fault::ContentFilter if azure => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                azure::prompt_filtered(),
            ))
        }
        Fault::FilteredAnswer => {
            return Ok(json_response(
                StatusCode::OK,
                azure::answer_filtered(&model),
            ))
        }
        Fault::RateLimit(ra) => return Ok(rate_limited(dialect, ra)),
        Fault::RateLimitOnce(ra) if attempt == 1 => return Ok(rate_limited(dialect, ra)),
        Fault::ServerError | Fault::ServerErrorOnce | Fault::ErrorRate(_)
            if fault.fails(attempt) =>
        {
            return Ok(server_error(dialect, StatusCode::INTERNAL_SERVER_ERROR))
        }
        Fault::Unavailable => return Ok(server_error(dialect, StatusCode::SERVICE_UNAVAILABLE)),
        Fault::Flap(ms) if first_seen.elapsed() < Duration::from_millis(ms) => {
            return Ok(server_error(dialect, StatusCode::SERVICE_UNAVAILABLE))
        }
        Fault::Reset => return Err(DropConnection),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            return Err(DropConnection);
        }
        Fault::ContextLength => {
            return Ok(error_response(
                dialect,
                StatusCode::BAD_REQUEST,
                "This model's maximum context length is 8 tokens.",
                "context_length_exceeded",
                Some("messages"),
            ))
        }
        Fault::NoPrefill(_) if ends_with_assistant(&request) => {
            return Ok(error_response(
                dialect,
                StatusCode::BAD_REQUEST,
                "This model does not support assistant message prefill. The conversation must end with a user message.",
                "invalid_request_error",
                Some("messages"),
            ))
        }
        Fault::Echo { status, form } if form != EchoForm::Stream || !streamed(&request) => {
            return Ok(echo_response(dialect, status, form, &credentials))
        }
        Fault::ContentFilter => return Ok(error_response(
            dialect,
            StatusCode::BAD_REQUEST,
            "The response was filtered due to the prompt triggering the content management policy.",
            "content_filter",
            Some("prompt"),
        )),
        _ => {}
    }
    if path == "/v1/embeddings" || azure_target.as_ref().is_some_and(|t| t.1) {
        return Ok(embeddings(&request, &model));
    }
    let answer = Answer::of(&request, fault);
    if fault == Fault::ToolCall {
        if let Some(name) = to_call {
            return Ok(tool_call(
                dialect,
                &model,
                &name,
                &answer,
                streamed(&request),
            ));
        }
    }
    let quota = match fault {
        Fault::TokenQuota(quota) => {
            let n = answer.prompt_tokens + answer.end - answer.start;
            match stats.take_tokens(&model, n, quota) {
                Some(left) => Some((quota, left)),
                None => return Ok(rate_limited(dialect, None)),
            }
        }
        _ => None,
    };
    let mut resp = answer_response(
        dialect,
        answer,
        model,
        fault,
        attempt,
        options,
        &request,
        &credentials,
    )
    .await;
    if let (Ok(resp), Some((quota, left))) = (&mut resp, quota) {
        let h = resp.headers_mut();
        let [limit, remaining] = match dialect {
            Dialect::Anthropic => [
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
            ],
            _ => ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"],
        };
        h.insert(limit, quota.into());
        h.insert(remaining, left.into());
    }
    resp
}

/// The answer of a chat request that no error fault refused.
#[allow(clippy::too_many_arguments)]
async fn answer_response(
    dialect: Dialect,
    answer: Answer,
    model: String,
    fault: Fault,
    attempt: u64,
    options: Options,
    request: &Value,
    credentials: &Credentials,
) -> Result<Response<MockBody>, DropConnection> {
    let delay = fault.first_token_delay(attempt);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if streamed(request) {
        let echo = match fault {
            Fault::Echo { status, .. } => Some(echo_event(dialect, status, credentials)),
            _ => None,
        };
        Ok(stream(dialect, answer, model, fault, options, echo))
    } else if let Fault::Cut(_) | Fault::Stall(_) = fault {
        // A JSON answer cut or stalled half way: headers, then part of the body.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Bytes::from_static(
                    b"{\"id\":\"chatcmpl-mock\",\"choices\":[",
                )))
                .await;
            if let Fault::Stall(_) = fault {
                tx.closed().await;
            } else {
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
            }
        });
        let mut resp = Response::new(ChannelBody { rx }.boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("static"));
        Ok(resp)
    } else {
        Ok(json_response(
            StatusCode::OK,
            answer.completion(dialect, &model),
        ))
    }
}

/// Whether a chat request's last message is an assistant message (a prefill).
fn ends_with_assistant(request: &Value) -> bool {
    request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "assistant")
}

/// The first tool a request (as received, in `dialect`) declares, unless its last message
/// carries a tool result.
fn tool_to_call(dialect: Dialect, request: &Value) -> Option<String> {
    let (name, answered) = match dialect {
        Dialect::Bedrock => return bedrock::tool_to_call(request),
        Dialect::OpenAi => (
            &request["tools"][0]["function"]["name"],
            request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["role"] == "tool"),
        ),
        Dialect::Anthropic => (
            &request["tools"][0]["name"],
            request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_array())
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result")),
        ),
        Dialect::Gemini => (
            &request["tools"][0]["functionDeclarations"][0]["name"],
            request["contents"]
                .as_array()
                .and_then(|c| c.last())
                .and_then(|c| c["parts"].as_array())
                .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some())),
        ),
    };
    name.as_str().filter(|_| !answered).map(str::to_owned)
}

/// Output tokens of a mock tool call.
const TOOL_CALL_TOKENS: u64 = 5;

/// A call of tool `name` with the arguments `{"q":"t0"}`, whole or streamed, in `dialect`.
fn tool_call(
    dialect: Dialect,
    model: &str,
    name: &str,
    answer: &Answer,
    stream: bool,
) -> Response<MockBody> {
    let (input, out) = (answer.prompt_tokens, TOOL_CALL_TOKENS);
    let args = json!({ "q": "t0" });
    let pieces = ["{\"q\":", "\"t0\"}"];
    if !stream {
        let body = match dialect {
            Dialect::OpenAi => json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000u64,
                "model": model,
                "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null, "tool_calls": [{
                        "id": "call_mock", "type": "function",
                        "function": { "name": name, "arguments": args.to_string() } }] } }],
                "usage": { "prompt_tokens": input, "completion_tokens": out, "total_tokens": input + out },
            }),
            Dialect::Anthropic => json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{ "type": "tool_use", "id": "toolu_mock", "name": name, "input": args }],
                "stop_reason": "tool_use",
                "usage": { "input_tokens": input, "output_tokens": out },
            }),
            Dialect::Gemini => json!({
                "candidates": [{ "content": { "role": "model", "parts": [
                    { "functionCall": { "name": name, "args": args } }] }, "finishReason": "STOP" }],
                "usageMetadata": { "promptTokenCount": input, "candidatesTokenCount": out },
            }),
            Dialect::Bedrock => bedrock::answer(
                vec![
                    json!({ "toolUse": { "toolUseId": "tooluse_mock", "name": name, "input": args } }),
                ],
                "tool_use",
                input,
                out,
            ),
        };
        return json_response(StatusCode::OK, body);
    }
    let events: Vec<Bytes> = match dialect {
        Dialect::OpenAi => {
            let usage = json!({ "id": "chatcmpl-mock", "object": "chat.completion.chunk",
                "created": 1_700_000_000u64, "model": model, "choices": [],
                "usage": { "prompt_tokens": input, "completion_tokens": out, "total_tokens": input + out } });
            let mut v = vec![
                chunk(model, json!({ "role": "assistant", "content": null }), None),
                chunk(
                    model,
                    json!({ "tool_calls": [{ "index": 0, "id": "call_mock", "type": "function",
                    "function": { "name": name, "arguments": "" } }] }),
                    None,
                ),
            ];
            for p in pieces {
                v.push(chunk(
                    model,
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": p } }] }),
                    None,
                ));
            }
            v.push(chunk(model, json!({}), Some("tool_calls")));
            v.push(Bytes::from(format!("data: {usage}\n\n")));
            v.push(Bytes::from_static(b"data: [DONE]\n\n"));
            v
        }
        Dialect::Anthropic => {
            let mut v = vec![
                anthropic_event(json!({ "type": "message_start", "message": {
                    "id": "msg_mock", "type": "message", "role": "assistant", "content": [],
                    "model": model, "usage": { "input_tokens": input, "output_tokens": 1 } } })),
                anthropic_event(json!({ "type": "content_block_start", "index": 0,
                    "content_block": { "type": "tool_use", "id": "toolu_mock", "name": name, "input": {} } })),
            ];
            for p in pieces {
                v.push(anthropic_event(
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "input_json_delta", "partial_json": p } }),
                ));
            }
            v.push(anthropic_event(
                json!({ "type": "content_block_stop", "index": 0 }),
            ));
            v.push(anthropic_event(json!({ "type": "message_delta",
                "delta": { "stop_reason": "tool_use" }, "usage": { "output_tokens": out } })));
            v.push(anthropic_event(json!({ "type": "message_stop" })));
            v
        }
        Dialect::Gemini => vec![gemini_chunk(json!({
            "candidates": [{ "content": { "role": "model", "parts": [
                { "functionCall": { "name": name, "args": args } }] }, "finishReason": "STOP" }],
            "usageMetadata": { "promptTokenCount": input, "candidatesTokenCount": out },
        }))],
        Dialect::Bedrock => {
            let mut v = vec![
                bedrock::event("messageStart", json!({ "role": "assistant" })),
                bedrock::event(
                    "contentBlockStart",
                    json!({ "contentBlockIndex": 0,
                    "start": { "toolUse": { "toolUseId": "tooluse_mock", "name": name } } }),
                ),
            ];
            for p in pieces {
                v.push(bedrock::event(
                    "contentBlockDelta",
                    json!({ "contentBlockIndex": 0, "delta": { "toolUse": { "input": p } } }),
                ));
            }
            v.push(bedrock::event(
                "contentBlockStop",
                json!({ "contentBlockIndex": 0 }),
            ));
            v.push(bedrock::event(
                "messageStop",
                json!({ "stopReason": "tool_use" }),
            ));
            v.push(bedrock::metadata(input, out));
            v
        }
    };
    let body = Full::new(Bytes::from(events.concat()))
        .map_err(|e: Infallible| match e {})
        .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", dialect.stream_type());
    resp
}

/// Whether a chat request asks for a stream.
fn streamed(request: &Value) -> bool {
    request["stream"].as_bool().unwrap_or(false)
}

/// The credentials a request carried: `Authorization`, `x-api-key`, `x-goog-api-key`, `api-key`,
/// `x-amz-security-token` and the `key` query parameter, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Every credential present, by where it came from.
    pub values: Vec<(&'static str, String)>,
}

impl Credentials {
    fn of<B>(req: &Request<B>) -> Credentials {
        let mut values = Vec::new();
        for name in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "api-key",
            "x-amz-security-token",
        ] {
            if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                values.push((name, v.to_owned()));
            }
        }
        let query = req.uri().query().unwrap_or("");
        if let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix("key=")) {
            values.push(("key", v.to_owned()));
        }
        Credentials { values }
    }

    /// The key of each credential (without a `Bearer ` scheme).
    fn keys(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values
            .iter()
            .map(|(name, v)| (*name, v.strip_prefix("Bearer ").unwrap_or(v)))
    }

    /// A message quoting each credential whole and the way providers quote a bad key (its
    /// first 12 and last 8 characters).
    pub fn message(&self) -> String {
        let mut text = String::from("Invalid request for this key.");
        for (name, key) in self.keys() {
            let chars: Vec<char> = key.chars().collect();
            let head: String = chars.iter().take(12).collect();
            let tail: String = chars[chars.len().saturating_sub(8)..].iter().collect();
            text.push_str(&format!(" {name}: {key} (provided: {head}…{tail})."));
        }
        text
    }

    /// A fragment of the first credential (characters 4 to 14), for `code` and `param`.
    fn fragment(&self) -> String {
        self.keys()
            .next()
            .map(|(_, key)| key.chars().skip(4).take(10).collect())
            .unwrap_or_default()
    }
}

/// An error answer of `status` quoting `credentials`.
fn echo_response(
    dialect: Dialect,
    status: u16,
    form: EchoForm,
    credentials: &Credentials,
) -> Response<MockBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    if form == EchoForm::Text {
        let text = format!("upstream error: {}", credentials.message());
        let body = Full::new(Bytes::from(text))
            .map_err(|e: Infallible| match e {})
            .boxed();
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert("content-type", "text/plain".parse().expect("static"));
        return resp;
    }
    if dialect == Dialect::Bedrock {
        let name = bedrock::exception_name(status.as_u16());
        return bedrock_error(status, name, &credentials.message());
    }
    json_response(status, echo_error(dialect, status.as_u16(), credentials))
}

/// An error object quoting `credentials`, in the protocol's shape.
fn echo_error(dialect: Dialect, status: u16, credentials: &Credentials) -> Value {
    let message = credentials.message();
    let fragment = credentials.fragment();
    match dialect {
        Dialect::OpenAi => json!({ "error": {
            "message": message,
            "type": if status == 429 { "requests" } else { "invalid_request_error" },
            "code": if status == 429 { "rate_limit_exceeded".to_owned() } else { format!("invalid_key_{fragment}") },
            "param": format!("key:{fragment}"),
        }}),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {
                "type": match status {
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    500..=599 => "api_error",
                    _ => "invalid_request_error",
                },
                "message": message,
            },
        }),
        Dialect::Gemini => json!({ "error": {
            "code": status,
            "message": message,
            "status": if status < 500 { "INVALID_ARGUMENT" } else { "INTERNAL" },
            "details": [{ "reason": "API_KEY_INVALID", "metadata": { "key": fragment } }],
        }}),
        Dialect::Bedrock => bedrock::error_body(&message),
    }
}

/// The in-band error event of a stream, quoting `credentials`.
fn echo_event(dialect: Dialect, status: u16, credentials: &Credentials) -> Bytes {
    let error = echo_error(dialect, status, credentials);
    match dialect {
        Dialect::OpenAi => Bytes::from(format!("data: {error}\n\n")),
        Dialect::Anthropic => anthropic_event(error),
        Dialect::Gemini => gemini_chunk(error),
        Dialect::Bedrock => bedrock::exception_event(status, &credentials.message()),
    }
}

/// The wire protocol a request arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Dialect {
    /// The content type of a streamed answer.
    fn stream_type(self) -> hyper::header::HeaderValue {
        hyper::header::HeaderValue::from_static(match self {
            Dialect::Bedrock => "application/vnd.amazon.eventstream",
            _ => "text/event-stream",
        })
    }

    /// An event whose data is not the protocol's JSON.
    fn malformed_event(self) -> Bytes {
        match self {
            Dialect::Bedrock => bedrock::frame(
                &[
                    (":event-type", "contentBlockDelta"),
                    (":message-type", "event"),
                ],
                b"{\"delta\": [oops",
            ),
            _ => Bytes::from_static(b"data: {\"choices\": [oops\n\n"),
        }
    }
}

/// `(model, stream)` of a Gemini `models/{model}:generateContent` path, on Google AI or on
/// Vertex AI.
fn gemini_target(path: &str) -> Option<(String, bool)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
        .or_else(|| vertex::models_path(path))?;
    let (model, action) = rest.split_once(':')?;
    match action {
        "generateContent" => Some((model.to_owned(), false)),
        "streamGenerateContent" => Some((model.to_owned(), true)),
        _ => None,
    }
}

/// A Gemini request in the OpenAI shape the rest of the mock reads.
fn from_gemini(request: &Value, model: &str, stream: bool) -> Value {
    let messages: Vec<Value> = request["contents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            let role = if c["role"] == "model" {
                "assistant"
            } else {
                "user"
            };
            json!({ "role": role, "content": text_of(&c["parts"]) })
        })
        .collect();
    let mut out = json!({ "model": model, "stream": stream, "messages": messages });
    if let Some(n) = request["generationConfig"]["maxOutputTokens"].as_u64() {
        out["max_tokens"] = Value::from(n);
    }
    out
}

/// The deterministic answer to a chat request.
#[derive(Debug, Clone)]
struct Answer {
    /// Tokens written before the answer's words (a `no-prefill` model's restatement).
    lead: Vec<String>,
    /// Index of the first word to produce (after a prefill).
    start: u64,
    /// Index one past the last word.
    end: u64,
    prompt_tokens: u64,
}

impl Answer {
    fn of(request: &Value, fault: Fault) -> Answer {
        let total = request["max_completion_tokens"]
            .as_u64()
            .or_else(|| request["max_tokens"].as_u64())
            .unwrap_or(DEFAULT_TOKENS);
        let messages = request["messages"].as_array().cloned().unwrap_or_default();
        let chars: usize = messages.iter().map(|m| text_of(&m["content"]).len()).sum();
        let words = |m: &Value| text_of(&m["content"]).split_whitespace().count() as u64;
        let (start, lead) = match (messages.as_slice(), fault) {
            ([.., m], _) if m["role"] == "assistant" => (words(m), Vec::new()),
            // A re-ask to continue the assistant message before the last user message.
            ([.., m, u], Fault::NoPrefill(how))
                if m["role"] == "assistant" && u["role"] == "user" =>
            {
                let held = words(m).min(total);
                let lead = match how {
                    Continuation::Exact => Vec::new(),
                    Continuation::Restate(n) => {
                        let from = n.map_or(0, |n| held.saturating_sub(n));
                        (from..held).map(|i| format!("t{i}\n")).collect()
                    }
                    Continuation::Misaligned => (0..held)
                        .map(|i| {
                            let mark = if i + 1 == held { 'x' } else { 't' };
                            format!("{mark}{i} ")
                        })
                        .collect(),
                };
                (held, lead)
            }
            _ => (0, Vec::new()),
        };
        Answer {
            lead,
            start: start.min(total),
            end: total,
            prompt_tokens: chars as u64 / 4 + 1,
        }
    }

    fn word(i: u64) -> String {
        format!("t{i} ")
    }

    /// The tokens to write, in order.
    fn tokens(&self) -> Vec<String> {
        let words = (self.start..self.end).map(Answer::word);
        self.lead.iter().cloned().chain(words).collect()
    }

    fn text(&self) -> String {
        self.tokens().concat()
    }

    /// Completion tokens: one per token written.
    fn completion_tokens(&self) -> u64 {
        self.lead.len() as u64 + self.end - self.start
    }

    fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn completion(&self, dialect: Dialect, model: &str) -> Value {
        let completion = self.completion_tokens();
        match dialect {
            Dialect::Anthropic => {
                return json!({
                    "id": "msg_mock",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{ "type": "text", "text": self.text() }],
                    "stop_reason": "end_turn",
                    "usage": { "input_tokens": self.prompt_tokens, "output_tokens": completion },
                })
            }
            Dialect::Gemini => {
                return json!({
                    "candidates": [{
                        "content": { "role": "model", "parts": [{ "text": self.text() }] },
                        "finishReason": "STOP",
                    }],
                    "usageMetadata": {
                        "promptTokenCount": self.prompt_tokens,
                        "candidatesTokenCount": completion,
                    },
                })
            }
            Dialect::Bedrock => {
                return bedrock::answer(
                    vec![json!({ "text": self.text() })],
                    "end_turn",
                    self.prompt_tokens,
                    completion,
                )
            }
            Dialect::OpenAi => {}
        }
        json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.text() },
                "finish_reason": "stop",
            }],
            "usage": self.usage(),
        })
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Bytes {
    let event = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

/// Events before the first token.
fn head(dialect: Dialect, model: &str, answer: &Answer) -> Vec<Bytes> {
    match dialect {
        Dialect::OpenAi => vec![chunk(
            model,
            json!({ "role": "assistant", "content": "" }),
            None,
        )],
        Dialect::Anthropic => vec![
            anthropic_event(json!({
                "type": "message_start",
                "message": {
                    "id": "msg_mock", "type": "message", "role": "assistant", "content": [],
                    "model": model,
                    "usage": { "input_tokens": answer.prompt_tokens, "output_tokens": 1 },
                },
            })),
            anthropic_event(json!({
                "type": "content_block_start", "index": 0,
                "content_block": { "type": "text", "text": "" },
            })),
        ],
        Dialect::Gemini => vec![],
        Dialect::Bedrock => vec![bedrock::event(
            "messageStart",
            json!({ "role": "assistant" }),
        )],
    }
}

/// The event of one token.
fn token(dialect: Dialect, model: &str, word: &str) -> Bytes {
    match dialect {
        Dialect::OpenAi => chunk(model, json!({ "content": word }), None),
        Dialect::Anthropic => anthropic_event(json!({
            "type": "content_block_delta", "index": 0,
            "delta": { "type": "text_delta", "text": word },
        })),
        Dialect::Gemini => gemini_chunk(json!({
            "candidates": [{ "content": { "role": "model", "parts": [{ "text": word }] } }],
        })),
        Dialect::Bedrock => bedrock::event(
            "contentBlockDelta",
            json!({ "contentBlockIndex": 0, "delta": { "text": word } }),
        ),
    }
}

/// Events after the last token; `done` adds the end marker.
fn tail(dialect: Dialect, model: &str, answer: &Answer, done: bool) -> Vec<Bytes> {
    let completion = answer.completion_tokens();
    let mut out = match dialect {
        Dialect::OpenAi => {
            let usage = json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64,
                "model": model,
                "choices": [],
                "usage": answer.usage(),
            });
            vec![
                chunk(model, json!({}), Some("stop")),
                Bytes::from(format!("data: {usage}\n\n")),
            ]
        }
        Dialect::Anthropic => vec![
            anthropic_event(json!({ "type": "content_block_stop", "index": 0 })),
            anthropic_event(json!({
                "type": "message_delta",
                "delta": { "stop_reason": "end_turn" },
                "usage": { "output_tokens": completion },
            })),
        ],
        Dialect::Gemini => vec![gemini_chunk(json!({
            "candidates": [{ "content": { "role": "model", "parts": [{ "text": "" }] }, "finishReason": "STOP" }],
            "usageMetadata": { "promptTokenCount": answer.prompt_tokens, "candidatesTokenCount": completion },
        }))],
        Dialect::Bedrock => vec![
            bedrock::event("contentBlockStop", json!({ "contentBlockIndex": 0 })),
            bedrock::event("messageStop", json!({ "stopReason": "end_turn" })),
        ],
    };
    if done {
        match dialect {
            Dialect::OpenAi => out.push(Bytes::from_static(b"data: [DONE]\n\n")),
            Dialect::Anthropic => out.push(anthropic_event(json!({ "type": "message_stop" }))),
            Dialect::Bedrock => out.push(bedrock::metadata(answer.prompt_tokens, completion)),
            Dialect::Gemini => {}
        }
    }
    out
}

fn anthropic_event(v: Value) -> Bytes {
    let kind = v["type"].as_str().unwrap_or("message").to_owned();
    Bytes::from(format!("event: {kind}\ndata: {v}\n\n"))
}

fn gemini_chunk(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\r\n\r\n"))
}

fn stream(
    dialect: Dialect,
    answer: Answer,
    model: String,
    fault: Fault,
    options: Options,
    echo: Option<Bytes>,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let send = |b: Bytes| tx.send(Ok(b));
        for b in head(dialect, &model, &answer) {
            if send(b).await.is_err() {
                return;
            }
        }
        for (n, word) in answer.tokens().into_iter().enumerate() {
            let n = n as u64;
            match fault {
                Fault::Cut(k) if n == k => {
                    // Let the tokens already sent reach the wire before the cut.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = tx.send(Err(std::io::Error::other("stream cut"))).await;
                    return;
                }
                Fault::Stall(k) if n == k => {
                    tx.closed().await;
                    return;
                }
                Fault::Echo { .. } if n == 2 => {
                    if let Some(event) = echo {
                        let _ = send(event).await;
                    }
                    return;
                }
                Fault::Malformed(k) if n == k && send(dialect.malformed_event()).await.is_err() => {
                    return;
                }
                _ => {}
            }
            let interval = match fault {
                Fault::Drip(ms) => Duration::from_millis(ms),
                _ => options.token_interval,
            };
            if n > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if send(token(dialect, &model, &word)).await.is_err() {
                return;
            }
        }
        for b in tail(dialect, &model, &answer, fault != Fault::NoDone) {
            if send(b).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut()
        .insert("content-type", dialect.stream_type());
    resp
}

fn embeddings(request: &Value, model: &str) -> Response<MockBody> {
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_owned())
            .collect(),
        _ => vec![],
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.len() as u64 / 4 + 1;
            let seed = text
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            let vector: Vec<f64> = (0..8)
                .map(|k| ((seed >> (k * 4)) & 0xf) as f64 / 15.0)
                .collect();
            json!({ "object": "embedding", "index": i, "embedding": vector })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
    )
}

fn json_response(status: StatusCode, value: Value) -> Response<MockBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|e: Infallible| match e {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    resp
}

fn error_response(
    dialect: Dialect,
    status: StatusCode,
    message: &str,
    code: &str,
    param: Option<&str>,
) -> Response<MockBody> {
    if dialect == Dialect::Bedrock {
        return bedrock_error(status, bedrock::exception_name(status.as_u16()), message);
    }
    json_response(
        status,
        json!({ "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": code,
            "param": param,
        }}),
    )
}

fn rate_limited(dialect: Dialect, retry_after: Option<u64>) -> Response<MockBody> {
    let mut resp = match dialect {
        Dialect::Bedrock => bedrock_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        Dialect::Gemini => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            vertex::error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource exhausted. Please try again later.",
            ),
        ),
        _ => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
                "param": null,
            }}),
        ),
    };
    if let Some(secs) = retry_after {
        resp.headers_mut().insert("retry-after", secs.into());
    }
    resp
}

fn server_error(dialect: Dialect, status: StatusCode) -> Response<MockBody> {
    if dialect == Dialect::Bedrock {
        let name = bedrock::exception_name(status.as_u16());
        return bedrock_error(status, name, "The server could not process the request.");
    }
    json_response(
        status,
        json!({ "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "code": null,
            "param": null,
        }}),
    )
}

/// Bedrock's answer of an exception: `{"message"}` and the exception's name in
/// `x-amzn-ErrorType`.
fn bedrock_error(status: StatusCode, name: &str, message: &str) -> Response<MockBody> {
    let mut resp = json_response(status, bedrock::error_body(message));
    if let Ok(v) = bedrock::error_type(name).parse() {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// A response body fed by a channel; an `Err` item aborts the connection.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_names() {
        assert_eq!(Fault::parse("primary+503"), Fault::Unavailable);
        assert_eq!(Fault::parse("429-once-ra-1"), Fault::RateLimitOnce(Some(1)));
        assert_eq!(Fault::parse("429-ra-30"), Fault::RateLimit(Some(30)));
        assert_eq!(Fault::parse("cut-3"), Fault::Cut(3));
        assert_eq!(Fault::parse("p+tpm-1000"), Fault::TokenQuota(1000));
        assert_eq!(Fault::parse("gpt-4o"), Fault::None);
        let echo = |status, form| Fault::Echo { status, form };
        assert_eq!(Fault::parse("e+echo-422"), echo(422, EchoForm::Json));
        assert_eq!(Fault::parse("echo-text-503"), echo(503, EchoForm::Text));
        assert_eq!(Fault::parse("echo-stream-429"), echo(429, EchoForm::Stream));
        assert_eq!(Fault::parse("echo-200"), Fault::None);
        assert_eq!(Fault::parse("echo-text-"), Fault::None);
        assert_eq!(Fault::parse("c+tool"), Fault::ToolCall);
    }

    #[test]
    fn a_tool_is_called_unless_the_last_message_answers_a_call() {
        let openai = json!({ "tools": [{ "type": "function", "function": { "name": "f" } }],
            "messages": [{ "role": "user", "content": "x" }] });
        assert_eq!(tool_to_call(Dialect::OpenAi, &openai).as_deref(), Some("f"));
        let mut answered = openai.clone();
        answered["messages"] = json!([{ "role": "tool", "tool_call_id": "c", "content": "y" }]);
        assert_eq!(tool_to_call(Dialect::OpenAi, &answered), None);
        let anthropic = json!({ "tools": [{ "name": "g" }], "messages": [{ "role": "user",
            "content": [{ "type": "tool_result", "tool_use_id": "t", "content": "y" }] }] });
        assert_eq!(tool_to_call(Dialect::Anthropic, &anthropic), None);
        let gemini = json!({ "tools": [{ "functionDeclarations": [{ "name": "h" }] }],
            "contents": [{ "role": "user", "parts": [{ "text": "x" }] }] });
        assert_eq!(tool_to_call(Dialect::Gemini, &gemini).as_deref(), Some("h"));
        assert_eq!(
            tool_to_call(Dialect::OpenAi, &json!({ "messages": [] })),
            None
        );
    }

    #[test]
    fn echoed_credentials_are_quoted_whole_and_in_part() {
        let req = Request::post("/v1beta/models/m:generateContent?alt=sse&key=query-key-123456")
            .header("authorization", "Bearer sk-abcdefghijklmnopqrstuvwxyz")
            .header("x-goog-api-key", "goog-0123456789")
            .body(())
            .expect("request");
        let c = Credentials::of(&req);
        assert_eq!(c.values.len(), 3);
        let m = c.message();
        assert!(
            m.contains(
                "authorization: sk-abcdefghijklmnopqrstuvwxyz (provided: sk-abcdefghi…stuvwxyz)"
            ),
            "{m}"
        );
        assert!(m.contains("x-goog-api-key: goog-0123456789"), "{m}");
        assert!(m.contains("key: query-key-123456"), "{m}");
        assert_eq!(c.fragment(), "bcdefghijk");
        let e = echo_error(Dialect::OpenAi, 400, &c);
        assert_eq!(e["error"]["param"], "key:bcdefghijk");
    }

    #[test]
    fn parses_rate_and_spread_faults() {
        assert_eq!(Fault::parse("cand+err-20"), Fault::ErrorRate(20));
        assert_eq!(Fault::parse("err-0"), Fault::ErrorRate(0));
        assert_eq!(Fault::parse("err-100"), Fault::ErrorRate(100));
        assert_eq!(Fault::parse("err-101"), Fault::None);
        assert_eq!(Fault::parse("err-"), Fault::None);
        assert_eq!(Fault::parse("err-x"), Fault::None);
        assert_eq!(
            Fault::parse("base+lat-40-25"),
            Fault::Latency {
                ms: 40,
                jitter_percent: 25
            }
        );
        assert_eq!(
            Fault::parse("lat-7-0"),
            Fault::Latency {
                ms: 7,
                jitter_percent: 0
            }
        );
        assert_eq!(Fault::parse("lat-40"), Fault::None);
        assert_eq!(Fault::parse("lat-40-101"), Fault::None);
        assert_eq!(Fault::parse("lat--25"), Fault::None);
        assert_eq!(Fault::parse("lat-40-25-1"), Fault::None);
        assert_eq!(Fault::parse("slow-ttft-30"), Fault::SlowFirstToken(30));
        assert_eq!(Fault::parse("m+drip-50"), Fault::Drip(50));
    }

    fn failures(fault: Fault, attempts: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        attempts.filter(|n| fault.fails(*n)).collect()
    }

    #[test]
    fn an_error_rate_is_spread_evenly_over_the_attempts() {
        assert_eq!(
            failures(Fault::ErrorRate(4), 1..=100),
            [25, 50, 75, 100],
            "err-4: every 25th"
        );
        assert_eq!(
            failures(Fault::ErrorRate(20), 1..=20),
            [5, 10, 15, 20],
            "err-20: every 5th"
        );
        assert_eq!(failures(Fault::ErrorRate(33), 1..=10), [4, 7, 10]);
        assert!(failures(Fault::ErrorRate(0), 1..=1000).is_empty());
        assert_eq!(failures(Fault::ErrorRate(100), 1..=50).len(), 50);
        for p in 0..=100 {
            let fault = Fault::ErrorRate(p);
            // Any 100 consecutive attempts hold exactly P failures.
            for start in [1, 2, 17, 99, 1_000_001] {
                let n = failures(fault, start..=start + 99).len() as u64;
                assert_eq!(n, p, "err-{p} from attempt {start}");
            }
            // At most half failing: never two failures in a row, so one retry always passes.
            if p <= 50 {
                assert!(
                    (1..=1000).all(|n| !(fault.fails(n) && fault.fails(n + 1))),
                    "err-{p}"
                );
            }
        }
        assert!(!Fault::ErrorRate(50).fails(0), "attempts count from 1");
        assert!(Fault::ServerError.fails(7));
        assert_eq!(failures(Fault::ServerErrorOnce, 1..=5), [1]);
        assert!(failures(Fault::None, 1..=100).is_empty());
    }

    #[test]
    fn a_latency_is_spread_over_its_range_by_the_attempt_number() {
        let fault = Fault::Latency {
            ms: 40,
            jitter_percent: 25,
        };
        let mut ms: Vec<f64> = (1..=200)
            .map(|n| fault.first_token_delay(n).as_secs_f64() * 1000.0)
            .collect();
        // The same attempt always waits as long.
        assert_eq!(fault.first_token_delay(37), fault.first_token_delay(37));
        assert!(ms.iter().all(|m| (30.0..=50.0).contains(m)), "{ms:?}");
        // Evenly spread: every tenth of the range holds close to a tenth of the attempts.
        for decile in 0..10 {
            let lo = 30.0 + 2.0 * decile as f64;
            let n = ms.iter().filter(|m| (lo..lo + 2.0).contains(*m)).count();
            assert!(
                (17..=23).contains(&n),
                "{n} attempts in {lo}–{} ms",
                lo + 2.0
            );
        }
        // So the quantiles are the uniform distribution's: p50 40 ms, p95 49 ms.
        ms.sort_by(f64::total_cmp);
        assert!((ms[99] - 40.0).abs() < 1.0, "p50 {}", ms[99]);
        assert!((ms[189] - 49.0).abs() < 0.5, "p95 {}", ms[189]);
        // 40% slower at every quantile: the same draws, scaled.
        let slower = Fault::Latency {
            ms: 56,
            jitter_percent: 25,
        };
        for n in [1, 2, 50, 199] {
            let a = fault.first_token_delay(n).as_secs_f64();
            let b = slower.first_token_delay(n).as_secs_f64();
            assert!((b / a - 1.4).abs() < 1e-6, "attempt {n}: {a} against {b}");
        }
        // No jitter: exactly MS; `slow-ttft-MS` is the same, and other faults wait nothing.
        let flat = Fault::Latency {
            ms: 7,
            jitter_percent: 0,
        };
        assert!((1..=50).all(|n| flat.first_token_delay(n) == Duration::from_millis(7)));
        assert_eq!(
            Fault::SlowFirstToken(30).first_token_delay(3),
            Duration::from_millis(30)
        );
        assert_eq!(Fault::ErrorRate(20).first_token_delay(5), Duration::ZERO);
    }

    #[test]
    fn prefill_continues_the_answer() {
        let req = json!({
            "max_tokens": 5,
            "messages": [
                { "role": "user", "content": "hi" },
                { "role": "assistant", "content": "t0 t1 " },
            ],
        });
        assert_eq!(Answer::of(&req, Fault::None).text(), "t2 t3 t4 ");
    }

    #[test]
    fn a_no_prefill_model_continues_a_reask_as_told() {
        assert_eq!(
            Fault::parse("b+no-prefill"),
            Fault::NoPrefill(Continuation::Exact)
        );
        assert_eq!(
            Fault::parse("no-prefill-restate-2"),
            Fault::NoPrefill(Continuation::Restate(Some(2)))
        );
        let req = json!({
            "max_tokens": 5,
            "messages": [
                { "role": "user", "content": "hi" },
                { "role": "assistant", "content": "t0 t1 t2 " },
                { "role": "user", "content": "go on" },
            ],
        });
        let text = |how| Answer::of(&req, Fault::NoPrefill(how)).text();
        assert_eq!(text(Continuation::Exact), "t3 t4 ");
        assert_eq!(text(Continuation::Restate(None)), "t0\nt1\nt2\nt3 t4 ");
        assert_eq!(text(Continuation::Restate(Some(2))), "t1\nt2\nt3 t4 ");
        assert_eq!(text(Continuation::Misaligned), "t0 t1 x2 t3 t4 ");
        let restated = Answer::of(&req, Fault::NoPrefill(Continuation::Restate(None)));
        assert_eq!(restated.completion_tokens(), 5);
        // Another model answers the conversation afresh.
        assert_eq!(Answer::of(&req, Fault::None).text(), "t0 t1 t2 t3 t4 ");
        assert!(ends_with_assistant(
            &json!({ "messages": [{ "role": "assistant", "content": "x" }] })
        ));
    }
}

//! What every provider adapter speaks: one request type, one response type (a whole answer or
//! a stream of normalised chunks) and one error type that knows whether it may be retried.

use crate::providers::redact::Redactor;
use llmgw_engine::input::Endpoint;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;

/// Token counts reported by a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds another attempt's tokens.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// An OpenAI chat completion with one choice: what every adapter of another protocol answers.
pub fn chat_completion(
    id: &str,
    model: &str,
    message: Value,
    finish_reason: &str,
    usage: Usage,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    })
}

/// The end of an upstream stream: done when the answer was complete (only a final marker may
/// be missing), else a protocol error.
pub fn stream_end(complete: bool) -> Result<Vec<StreamEvent>, UpstreamError> {
    if complete {
        Ok(vec![StreamEvent::Done])
    } else {
        Err(UpstreamError::new(
            ErrorClass::Protocol,
            "the stream ended before the answer was complete",
        ))
    }
}

/// What went wrong upstream, in classes that decide what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 429.
    RateLimited,
    /// 502, 503, 529: the provider is overloaded or down.
    Unavailable,
    /// 500 and other 5xx.
    Server,
    /// Connect, first-token, stream-idle or total timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection broke (reset, closed before an answer).
    Network,
    /// The provider answered something that is not its protocol (malformed or truncated).
    Protocol,
    /// The input does not fit the model's context window.
    ContextLength,
    /// The provider's content filter refused the request.
    ContentFilter,
    /// Any other 4xx about the request.
    BadRequest,
    /// The provider refused the gateway's credentials.
    Auth,
    /// The provider does not know the model or route.
    NotFound,
    /// The provider cannot do this (e.g. embeddings on a chat-only API).
    Unsupported,
}

impl ErrorClass {
    /// The class's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Server => "server",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Network => "network",
            ErrorClass::Protocol => "protocol",
            ErrorClass::ContextLength => "context_length",
            ErrorClass::ContentFilter => "content_filter",
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Auth => "auth",
            ErrorClass::NotFound => "not_found",
            ErrorClass::Unsupported => "unsupported",
        }
    }

    /// Whether another provider may succeed where this one failed.
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            ErrorClass::ContentFilter | ErrorClass::BadRequest | ErrorClass::ContextLength
        )
    }

    /// Whether the failure says something about the provider's health (counts for its circuit).
    pub fn is_health_failure(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::Unavailable
                | ErrorClass::Server
                | ErrorClass::Timeout
                | ErrorClass::Connect
                | ErrorClass::Network
                | ErrorClass::Protocol
        )
    }
}

impl ErrorClass {
    /// Whether the failure is at the connection level (refused, reset, TLS), evidence against
    /// the whole provider region rather than one of its models.
    pub fn is_connection_failure(self) -> bool {
        matches!(self, ErrorClass::Connect | ErrorClass::Network)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream failure. Its message never contains a secret: adapters build it from the
/// status, the provider's error text (except for authentication failures) and our own words,
/// and every error leaving an adapter built by [`crate::providers::build`] has had its text
/// scrubbed of the provider's key ([`UpstreamError::scrubbed`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{class} from upstream{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct UpstreamError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// The upstream HTTP status, if one came.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
    /// The provider's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Whether part of the answer had already been received.
    pub after_first_byte: bool,
    /// The provider's error `code`, relayed for errors returned as is.
    pub code: Option<String>,
    /// The provider's error `param`, relayed for errors returned as is.
    pub param: Option<String>,
}

impl UpstreamError {
    /// A failure of a class with a message.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        UpstreamError {
            class,
            status: None,
            message: message.into(),
            retry_after: None,
            after_first_byte: false,
            code: None,
            param: None,
        }
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Marks the failure as happening after part of the answer arrived.
    pub fn after_first_byte(mut self) -> Self {
        self.after_first_byte = true;
        self
    }

    /// The error with the key of `redactor`, and its fragments, removed from every text that
    /// came from the provider (message, code, param).
    pub fn scrubbed(mut self, redactor: &Redactor) -> Self {
        redactor.scrub_in_place(&mut self.message);
        for text in [&mut self.code, &mut self.param].into_iter().flatten() {
            redactor.scrub_in_place(text);
        }
        self
    }

    /// Classifies an HTTP error answer. `body` is the provider's error body, `retry_after` its
    /// header. Authentication failures never relay the provider's text, which may quote the key.
    pub fn from_status(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let err = json.as_ref().map(|j| j.get("error").unwrap_or(j));
        let text = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = text("message")
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let code = text("code")
            .or_else(|| text("type"))
            .or_else(|| text("status"));
        let lower = message.to_ascii_lowercase();
        let code_is = |c: &str| code.as_deref() == Some(c);
        let class = match status {
            429 => ErrorClass::RateLimited,
            401 | 403 => ErrorClass::Auth,
            404 => ErrorClass::NotFound,
            408 | 504 => ErrorClass::Timeout,
            502 | 503 | 529 => ErrorClass::Unavailable,
            400..=499
                if code_is("context_length_exceeded")
                    || lower.contains("context length")
                    || lower.contains("context window")
                    || lower.contains("prompt is too long")
                    || lower.contains("too many tokens")
                    || lower.contains("maximum number of tokens") =>
            {
                ErrorClass::ContextLength
            }
            400..=499
                if code_is("content_filter")
                    || code_is("content_policy_violation")
                    || lower.contains("content management policy")
                    || lower.contains("safety") =>
            {
                ErrorClass::ContentFilter
            }
            400..=499 => ErrorClass::BadRequest,
            _ if code_is("overloaded_error") => ErrorClass::Unavailable,
            _ => ErrorClass::Server,
        };
        let message = if class == ErrorClass::Auth {
            "the provider refused the gateway's credentials".to_owned()
        } else {
            message
        };
        UpstreamError {
            class,
            status: Some(status),
            message,
            retry_after,
            after_first_byte: false,
            code,
            param: text("param"),
        }
    }
}

/// One normalised piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    /// Text to append to the answer.
    pub content: Option<String>,
    /// Tool-call fragments in OpenAI's `delta.tool_calls` shape.
    pub tool_calls: Option<Value>,
    /// Why the answer ended (`stop`, `length`, `tool_calls`, `content_filter`).
    pub finish_reason: Option<String>,
}

impl Delta {
    /// Whether it carries anything a client would see.
    pub fn is_visible(&self) -> bool {
        self.content.as_deref().is_some_and(|c| !c.is_empty())
            || self.tool_calls.is_some()
            || self.finish_reason.is_some()
    }
}

/// An event of a normalised stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of the answer.
    Delta(Delta),
    /// Token counts (may come more than once; the last one wins).
    Usage(Usage),
    /// The provider said the answer is complete.
    Done,
    /// An event the provider sent that could not be parsed (why): it is skipped, counted and
    /// logged, and the stream goes on. One bad event does not make a healthy stream broken.
    Malformed(String),
}

/// A stream of normalised events; fed by a task that reads the provider's answer, which stops
/// (and drops the upstream connection) when this is dropped. Errors it yields are scrubbed by
/// each of its redactors.
#[derive(Debug)]
pub struct ChunkStream {
    rx: mpsc::Receiver<Result<StreamEvent, UpstreamError>>,
    redactors: Vec<Redactor>,
}

impl ChunkStream {
    /// A stream and the sender that feeds it.
    pub fn channel() -> (
        mpsc::Sender<Result<StreamEvent, UpstreamError>>,
        ChunkStream,
    ) {
        let (tx, rx) = mpsc::channel(32);
        (
            tx,
            ChunkStream {
                rx,
                redactors: Vec::new(),
            },
        )
    }

    /// The stream with its errors scrubbed of the key of `redactor` too (an adapter scrubs
    /// the secret of one request, such as an access token, before [`crate::providers::Scrubbing`]
    /// scrubs its provider's key).
    pub fn scrubbed(mut self, redactor: Redactor) -> Self {
        self.redactors.push(redactor);
        self
    }

    /// The next event; `None` when the feeding task ended without `Done` (a broken stream).
    pub async fn next(&mut self) -> Option<Result<StreamEvent, UpstreamError>> {
        let event = self.rx.recv().await?;
        Some(event.map_err(|e| {
            self.redactors
                .iter()
                .fold(e, |e, redactor| e.scrubbed(redactor))
        }))
    }
}

/// A whole (non-streamed) answer in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct FullResponse {
    /// The chat completion or embeddings list, OpenAI-shaped.
    pub body: Value,
    /// Its token counts.
    pub usage: Usage,
}

/// What an adapter returns.
#[derive(Debug)]
pub enum UpstreamResponse {
    /// A whole answer.
    Full(FullResponse),
    /// A stream.
    Stream(ChunkStream),
}

/// One call to a provider.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRequest<'a> {
    /// Chat or embeddings.
    pub endpoint: Endpoint,
    /// The client's body (OpenAI-shaped); adapters translate from it.
    pub body: &'a Value,
    /// The model name the provider expects.
    pub upstream_model: &'a str,
    /// Partial assistant answer to continue from (a resumed stream).
    pub prefill: Option<&'a str>,
    /// Whether to stream.
    pub stream: bool,
    /// The most output the model can write (its `max_output_tokens` in the policy), for APIs
    /// that require a limit when the client set none.
    pub max_output_tokens: Option<u64>,
    /// The W3C `traceparent` to send, when traces are exported.
    pub traceparent: Option<&'a str>,
    /// The deployment's provider quota, which reads the provider's rate limit headers.
    pub quota: Option<crate::quota::Quota<'a>>,
}

/// The future an adapter returns.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UpstreamResponse, UpstreamError>> + Send + 'a>>;

/// A provider adapter.
///
/// `send` applies the connect timeout and, for whole answers, the first-byte and total
/// timeouts; for streams the caller applies first-token and idle timeouts to
/// [`ChunkStream::next`].
pub trait Provider: Send + Sync {
    /// Sends one request.
    fn send<'a>(&'a self, request: UpstreamRequest<'a>) -> SendFuture<'a>;
}

/// Parses a `Retry-After` value (seconds, possibly fractional; or an HTTP date, which is
/// treated as one second since providers use seconds).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
        return None;
    }
    (!v.is_empty()).then(|| Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_provider_errors() {
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#;
        assert_eq!(
            UpstreamError::from_status(400, ctx, None).class,
            ErrorClass::ContextLength
        );
        let filt = br#"{"error":{"message":"filtered","code":"content_filter"}}"#;
        assert_eq!(
            UpstreamError::from_status(400, filt, None).class,
            ErrorClass::ContentFilter
        );
        assert_eq!(
            UpstreamError::from_status(503, b"", None).class,
            ErrorClass::Unavailable
        );
        assert_eq!(
            UpstreamError::from_status(529, b"", None).class,
            ErrorClass::Unavailable
        );
        let auth = br#"{"error":{"message":"Incorrect API key provided: sk-abc****wxyz"}}"#;
        let e = UpstreamError::from_status(401, auth, None);
        assert_eq!(e.class, ErrorClass::Auth);
        assert!(!e.message.contains("sk-"));
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
    }
}

//! OpenAI and every OpenAI-compatible API (DeepSeek, Qwen, Mistral, OpenRouter, vLLM, Together…).

use crate::providers::http::{self, Connection, StreamTranslator};
use crate::providers::secret::{Secret, SecretError};
use crate::sse::SseEvent;
use crate::upstream::{
    Delta, ErrorClass, FullResponse, Provider, SendFuture, StreamEvent, UpstreamError,
    UpstreamRequest, UpstreamResponse, Usage,
};
use ::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use llmgw_engine::input::Endpoint;
use llmgw_engine::model::{self, ProviderType};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::Duration;

/// Where OpenAI's API is when the policy names no `base_url`.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// An OpenAI-protocol provider.
pub struct OpenAi {
    conn: Connection,
    compatible: bool,
}

impl OpenAi {
    /// The adapter of a policy provider of type `openai` or `openai_compatible`, with its resolved key.
    pub fn new(provider: &model::Provider, key: Option<Result<Secret, SecretError>>) -> Self {
        let compatible = provider.kind == ProviderType::OpenaiCompatible;
        OpenAi {
            conn: Connection::new(provider, key, (!compatible).then_some(OPENAI_BASE_URL)),
            compatible,
        }
    }

    /// The body sent upstream, serialised straight from the client's body (no copy of it).
    fn body(&self, req: &UpstreamRequest<'_>) -> Vec<u8> {
        serde_json::to_vec(&Outgoing {
            req,
            compatible: self.compatible,
        })
        .unwrap_or_default()
    }
}

/// The client's body with the upstream model, stream options and prefill applied.
struct Outgoing<'a> {
    req: &'a UpstreamRequest<'a>,
    compatible: bool,
}

impl Serialize for Outgoing<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let req = self.req;
        let Some(obj) = req.body.as_object() else {
            return req.body.serialize(s);
        };
        let chat = req.endpoint == Endpoint::Chat;
        let mut map = s.serialize_map(None)?;
        for (k, v) in obj {
            match k.as_str() {
                "model" => {}
                "metadata" if self.compatible => {}
                "stream" | "stream_options" if chat => {}
                "messages" if chat && req.prefill.is_some() => {}
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.serialize_entry("model", req.upstream_model)?;
        if chat && req.stream {
            map.serialize_entry("stream", &true)?;
            map.serialize_entry(
                "stream_options",
                &StreamOptions {
                    include_usage: true,
                },
            )?;
        }
        if let (true, Some(prefill)) = (chat, req.prefill) {
            let base = obj
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            map.serialize_entry(
                "messages",
                &WithPrefill {
                    base,
                    prefill,
                    compatible: self.compatible,
                },
            )?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The messages followed by the partial assistant answer to continue.
struct WithPrefill<'a> {
    base: &'a [Value],
    prefill: &'a str,
    compatible: bool,
}

impl Serialize for WithPrefill<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.base.len() + 1))?;
        for m in self.base {
            seq.serialize_element(m)?;
        }
        let mut msg = json!({ "role": "assistant", "content": self.prefill });
        if self.compatible {
            // DeepSeek's and Mistral's flag for "continue this message".
            msg["prefix"] = Value::Bool(true);
        }
        seq.serialize_element(&msg)?;
        seq.end()
    }
}

impl OpenAi {
    /// Sends `req` to `url` with `headers` (the authentication) and reads the answer: a whole
    /// chat completion or embeddings list, or a stream of chat completion chunks. Shared with
    /// the APIs that speak OpenAI's bodies behind other URLs and credentials (Azure OpenAI).
    pub async fn exchange(
        &self,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        req: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = headers;
        http::traceparent(req, &mut headers);
        let body = self.body(req);
        let first = Duration::from_millis(self.conn.timeouts.first_token_ms);
        let resp = http::post(&self.conn.client, url, headers, body, first).await?;
        if let Some(q) = req.quota {
            q.observe(resp.headers());
        }
        if !resp.status().is_success() {
            return Err(http::error_from(resp).await);
        }
        if req.stream && http::is_event_stream(&resp) {
            return Ok(UpstreamResponse::Stream(http::spawn_sse(
                resp,
                OpenAiStream::default(),
            )));
        }
        let total = Duration::from_millis(self.conn.timeouts.total_ms);
        let body = http::read_json(resp, total).await?;
        let usage = usage_of(&body["usage"]);
        if req.stream {
            // A provider that ignored `stream`: replay its answer as a stream.
            return Ok(UpstreamResponse::Stream(replay(&body, usage)));
        }
        Ok(UpstreamResponse::Full(FullResponse { body, usage }))
    }

    /// The connection (client, base URL, key, timeouts).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Provider for OpenAi {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let base = self.conn.base_url.as_deref().ok_or_else(|| {
                UpstreamError::new(ErrorClass::Unsupported, "the provider has no base_url")
            })?;
            let mut headers = Vec::new();
            if let Some(key) = &self.conn.key {
                let key = http::key_or_error(key)?;
                if let Some(v) = http::sensitive(&format!("Bearer {}", key.expose())) {
                    headers.push((AUTHORIZATION, v));
                }
            }
            let url = http::join(base, path_of(req.endpoint));
            self.exchange(&url, headers, &req).await
        })
    }
}

/// The path of an endpoint under an OpenAI base URL.
pub fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Embeddings => "embeddings",
    }
}

/// Reads OpenAI's `usage` object.
pub fn usage_of(usage: &Value) -> Usage {
    Usage {
        input_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
    }
}

/// A whole chat completion as a stream.
fn replay(body: &Value, usage: Usage) -> crate::upstream::ChunkStream {
    let (tx, stream) = crate::upstream::ChunkStream::channel();
    let choice = &body["choices"][0];
    let delta = Delta {
        content: choice["message"]["content"].as_str().map(str::to_owned),
        tool_calls: choice["message"]
            .get("tool_calls")
            .filter(|v| !v.is_null())
            .cloned(),
        finish_reason: choice["finish_reason"]
            .as_str()
            .map(str::to_owned)
            .or(Some("stop".into())),
    };
    tokio::spawn(async move {
        for ev in [
            StreamEvent::Delta(delta),
            StreamEvent::Usage(usage),
            StreamEvent::Done,
        ] {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    stream
}

/// Translates OpenAI chat completion chunks.
#[derive(Debug, Default)]
pub struct OpenAiStream {
    finished: bool,
}

/// The parts of a chunk the gateway reads; everything else is skipped without being built.
#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceIn<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl StreamTranslator for OpenAiStream {
    fn event(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, UpstreamError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(vec![StreamEvent::Done]);
        }
        if data.is_empty() {
            return Ok(vec![]);
        }
        let chunk: ChunkIn<'_> = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(e) => return Ok(vec![http::malformed(&e)]),
        };
        if let Some(err) = chunk.error.filter(|e| !e.is_null()) {
            let status = match err["code"].as_str().or(err["type"].as_str()) {
                Some("rate_limit_exceeded") => 429,
                _ => 500,
            };
            let bytes = serde_json::to_vec(&json!({ "error": err })).unwrap_or_default();
            return Err(UpstreamError::from_status(status, &bytes, None));
        }
        let mut out = Vec::with_capacity(2);
        if let Some(choice) = chunk.choices.into_iter().next() {
            let (content, tool_calls) = match choice.delta {
                Some(d) => (
                    d.content.map(Cow::into_owned),
                    d.tool_calls.filter(|t| !t.is_null()),
                ),
                None => (None, None),
            };
            let delta = Delta {
                content,
                tool_calls,
                finish_reason: choice.finish_reason.map(Cow::into_owned),
            };
            self.finished |= delta.finish_reason.is_some();
            out.push(StreamEvent::Delta(delta));
        }
        if let Some(u) = chunk.usage {
            out.push(StreamEvent::Usage(Usage {
                input_tokens: u.prompt_tokens.unwrap_or(0),
                output_tokens: u.completion_tokens.unwrap_or(0),
            }));
        }
        Ok(out)
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>, UpstreamError> {
        crate::upstream::stream_end(self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_owned(),
        }
    }

    #[test]
    fn rewrites_the_body_for_the_upstream() {
        let provider: model::Provider = serde_json::from_value(json!({
            "name": "p", "type": "openai_compatible", "base_url": "http://127.0.0.1:1/v1",
        }))
        .expect("provider");
        let adapter = OpenAi::new(&provider, None);
        let body = json!({
            "model": "logical", "stream": false, "metadata": { "a": "b" }, "temperature": 0.5,
            "messages": [{ "role": "user", "content": "hi" }],
        });
        let req = UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &body,
            upstream_model: "up",
            prefill: Some("part"),
            stream: true,
            max_output_tokens: None,
            traceparent: None,
            quota: None,
        };
        let out: Value = serde_json::from_slice(&adapter.body(&req)).expect("json");
        assert_eq!(out["model"], "up");
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.5);
        assert!(out.get("metadata").is_none());
        assert_eq!(
            out["messages"][1],
            json!({ "role": "assistant", "content": "part", "prefix": true })
        );
    }

    #[test]
    fn translates_chunks_and_tolerates_a_missing_done() {
        let mut t = OpenAiStream::default();
        let out = t
            .event(ev(
                r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#,
            ))
            .expect("ok");
        assert_eq!(
            out,
            vec![StreamEvent::Delta(Delta {
                content: Some("hi".into()),
                ..Delta::default()
            })]
        );
        assert!(
            t.end().is_err(),
            "a stream without finish_reason is truncated"
        );
        t.event(ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#))
            .expect("ok");
        assert_eq!(t.end().expect("complete"), vec![StreamEvent::Done]);
        assert_eq!(t.event(ev("[DONE]")).expect("ok"), vec![StreamEvent::Done]);
        let skipped = t
            .event(ev("{oops"))
            .expect("a malformed event is not an error");
        assert!(
            matches!(skipped.as_slice(), [StreamEvent::Malformed(why)] if why.contains("malformed")),
            "{skipped:?}"
        );
    }
}

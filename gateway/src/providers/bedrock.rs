//! AWS Bedrock Converse: translation of OpenAI chat requests (system prompts, images, tools,
//! tool results, prefill, sampling settings) to `POST /model/{modelId}/converse` and
//! `/converse-stream`, signed with AWS Signature Version 4, and of its answers back: whole JSON
//! answers, and streams in AWS's binary event-stream framing whose exception messages are
//! in-band errors.

use crate::providers::anthropic::{self, parse_data_url};
use crate::providers::http::{self, Connection, Framing, StreamTranslator};
use crate::providers::redact::Redactor;
use crate::providers::secret::{self, Secret, SecretError};
use crate::upstream::{
    chat_completion, Delta, ErrorClass, FullResponse, Provider, SendFuture, StreamEvent,
    UpstreamError, UpstreamRequest, UpstreamResponse, Usage,
};
use crate::wire::content_text;
use ::http::header::{HeaderName, HeaderValue};
use ::http::Response;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::BytesMut;
use hyper::body::Incoming;
use llmgw_engine::input::Endpoint;
use llmgw_engine::model;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The SigV4 service name of the Bedrock runtime.
pub const SIGNING_SERVICE: &str = "bedrock";

/// Characters of a model id left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The resolved access key of a Bedrock provider.
struct Keys {
    access_key_id: Result<Secret, SecretError>,
    secret_access_key: Result<Secret, SecretError>,
    session_token: Option<Result<Secret, SecretError>>,
}

/// A Bedrock account in one AWS region.
pub struct Bedrock {
    conn: Connection,
    /// The AWS region signed into each request; `None` when the policy has no `bedrock`
    /// settings (every call then fails).
    region: Option<String>,
    keys: Option<Keys>,
}

impl Bedrock {
    /// The adapter of a policy provider of type `bedrock`; its secret references are resolved
    /// now.
    pub fn new(provider: &model::Provider) -> Self {
        let settings = provider.bedrock.as_ref();
        let default_url =
            settings.map(|s| format!("https://bedrock-runtime.{}.amazonaws.com", s.region));
        Bedrock {
            conn: Connection::new(provider, None, default_url.as_deref()),
            region: settings.map(|s| s.region.clone()),
            keys: settings.map(|s| Keys {
                access_key_id: secret::resolve(&s.access_key_id),
                secret_access_key: secret::resolve(&s.secret_access_key),
                session_token: s.session_token.as_deref().map(secret::resolve),
            }),
        }
    }

    /// A redactor of every secret the adapter sends or signs with.
    pub fn redactor(&self) -> Redactor {
        let Some(keys) = &self.keys else {
            return Redactor::default();
        };
        let secrets = [
            Some(&keys.access_key_id),
            Some(&keys.secret_access_key),
            keys.session_token.as_ref(),
        ];
        Redactor::for_keys(
            secrets
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_ref().ok())
                .map(Secret::expose),
        )
    }

    /// The SigV4 headers (`authorization`, `x-amz-date` and, with a session token,
    /// `x-amz-security-token`) of a JSON `POST` of `body` to `url` at `time`.
    fn signature(
        &self,
        url: &str,
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, UpstreamError> {
        let (Some(region), Some(keys)) = (&self.region, &self.keys) else {
            return Err(UpstreamError::new(
                ErrorClass::Unsupported,
                "the provider has no `bedrock` settings",
            ));
        };
        let access_key_id = http::key_or_error(&keys.access_key_id)?;
        let secret_access_key = http::key_or_error(&keys.secret_access_key)?;
        let session_token = keys
            .session_token
            .as_ref()
            .map(http::key_or_error)
            .transpose()?;
        let identity = Credentials::new(
            access_key_id.expose(),
            secret_access_key.expose(),
            session_token.map(|t| t.expose().to_owned()),
            None,
            "policy",
        )
        .into();
        let unsigned = |e: &dyn std::fmt::Display| {
            UpstreamError::new(
                ErrorClass::Unsupported,
                format!("cannot sign the request: {e}"),
            )
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SIGNING_SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| unsigned(&e))?
            .into();
        let request = SignableRequest::new(
            "POST",
            url,
            std::iter::once(("content-type", "application/json")),
            SignableBody::Bytes(body),
        )
        .map_err(|e| unsigned(&e))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| unsigned(&e))?
            .into_parts();
        Ok(instructions
            .headers()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    http::sensitive(value)?,
                ))
            })
            .collect())
    }
}

impl Provider for Bedrock {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            if req.endpoint == Endpoint::Embeddings {
                return Err(UpstreamError::new(
                    ErrorClass::Unsupported,
                    "Bedrock's Converse API has no embeddings",
                ));
            }
            let action = if req.stream {
                "converse-stream"
            } else {
                "converse"
            };
            let model = utf8_percent_encode(req.upstream_model, SEGMENT);
            let url = http::join(self.conn.base(), &format!("model/{model}/{action}"));
            let body = serde_json::to_vec(&to_converse(&req)?).unwrap_or_default();
            let mut headers = self.signature(&url, &body, SystemTime::now())?;
            http::traceparent(&req, &mut headers);
            let first = Duration::from_millis(self.conn.timeouts.first_token_ms);
            let resp = http::post(&self.conn.client, &url, headers, body, first).await?;
            if !resp.status().is_success() {
                return Err(error_from(resp).await);
            }
            if req.stream {
                return Ok(UpstreamResponse::Stream(http::spawn_framed(
                    resp,
                    EventStreamFraming::default(),
                    BedrockStream::default(),
                )));
            }
            let answer =
                http::read_json(resp, Duration::from_millis(self.conn.timeouts.total_ms)).await?;
            let (body, usage) = from_converse(&answer, req.upstream_model);
            Ok(UpstreamResponse::Full(FullResponse { body, usage }))
        })
    }
}

/// The status Bedrock answers an exception with, by the exception's name (`ThrottlingException`
/// in an `x-amzn-ErrorType` header, `throttlingException` in a stream).
fn exception_status(name: &str) -> Option<u16> {
    Some(match name.to_ascii_lowercase().as_str() {
        "throttlingexception" => 429,
        "serviceunavailableexception" | "modelnotreadyexception" => 503,
        "validationexception" => 400,
        "accessdeniedexception"
        | "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "expiredtokenexception"
        | "missingauthenticationtokenexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "internalserverexception" | "modelstreamerrorexception" | "modelerrorexception" => 500,
        _ => return None,
    })
}

/// The error of a Bedrock exception: classed by its name when known, else by `status`; the
/// name is the error's code.
fn exception(
    name: Option<&str>,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> UpstreamError {
    let status = name.and_then(exception_status).unwrap_or(status);
    let mut e = UpstreamError::from_status(status, body, retry_after);
    if let Some(name) = name {
        e.code = Some(name.to_owned());
    }
    e
}

/// The error of a non-success answer, named by its `x-amzn-ErrorType` header
/// (`ThrottlingException:http://internal.amazon.com/…`).
async fn error_from(resp: Response<Incoming>) -> UpstreamError {
    let name = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    let status = resp.status().as_u16();
    let retry_after = http::retry_after(resp.headers());
    let body = http::read_body(resp, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    exception(name.as_deref(), status, &body, retry_after)
}

/// A Converse image block for an image URL; Converse takes image bytes only, so only a `data:`
/// URL of a format it reads can be one.
fn image_block(url: &str) -> Result<Value, UpstreamError> {
    let (mime, data) = parse_data_url(url)
        .filter(|(mime, _)| {
            matches!(
                *mime,
                "image/png" | "image/jpeg" | "image/gif" | "image/webp"
            )
        })
        .ok_or_else(|| {
            UpstreamError::new(
                ErrorClass::Unsupported,
                "Bedrock takes images as PNG, JPEG, GIF or WebP `data:` URLs only",
            )
        })?;
    let format = mime.trim_start_matches("image/");
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// Content parts of an OpenAI message as Converse content blocks (empty text left out: Converse
/// refuses blank text blocks).
fn blocks(content: &Value) -> Result<Vec<Value>, UpstreamError> {
    let text = |t: &str| (!t.is_empty()).then(|| json!({ "text": t }));
    match content {
        Value::String(s) => Ok(text(s).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => out.extend(text(p["text"].as_str().unwrap_or(""))),
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or_else(|| p["image_url"].as_str())
                            .unwrap_or("");
                        out.push(image_block(url)?);
                    }
                    _ => {}
                }
            }
            Ok(out)
        }
        _ => Ok(Vec::new()),
    }
}

/// A Converse `toolUse` block for an OpenAI tool call (the Anthropic `tool_use` block renamed).
fn tool_use(call: &Value) -> Value {
    let block = anthropic::tool_use_block(call);
    json!({ "toolUse": { "toolUseId": block["id"], "name": block["name"], "input": block["input"] } })
}

/// The Converse `toolChoice` for an OpenAI `tool_choice` (`none` has no Converse form: the
/// model then chooses).
fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if s == "auto" => Some(json!({ "auto": {} })),
        Value::String(s) if s == "required" => Some(json!({ "any": {} })),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f["name"].as_str())
            .map(|n| json!({ "tool": { "name": n } })),
        _ => None,
    }
}

/// The Converse request for an OpenAI chat request (the model is in the URL, not the body).
pub fn to_converse(req: &UpstreamRequest<'_>) -> Result<Value, UpstreamError> {
    let body = req.body;
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match m["role"].as_str().unwrap_or("") {
            "system" | "developer" => {
                let text = content_text(&m["content"]);
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
            }
            "assistant" => {
                let mut content = blocks(&m["content"])?;
                for call in m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    content.push(tool_use(call));
                }
                anthropic::push(&mut messages, "assistant", content);
            }
            "tool" | "function" => anthropic::push(
                &mut messages,
                "user",
                vec![json!({ "toolResult": {
                    "toolUseId": m["tool_call_id"].as_str().unwrap_or(""),
                    "content": [{ "text": content_text(&m["content"]) }],
                }})],
            ),
            _ => anthropic::push(&mut messages, "user", blocks(&m["content"])?),
        }
    }
    if let Some(p) = req.prefill.map(str::trim_end).filter(|p| !p.is_empty()) {
        anthropic::push(&mut messages, "assistant", vec![json!({ "text": p })]);
    }
    let mut inference = Map::new();
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64())
        .or(req.max_output_tokens);
    if let Some(n) = max_tokens {
        inference.insert("maxTokens".into(), Value::from(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            inference.insert(to.into(), v.clone());
        }
    }
    match &body["stop"] {
        Value::String(s) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Value::Array(a) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = body["tools"].as_array().filter(|t| !t.is_empty()) {
        let specs: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut spec = json!({
                    "name": f["name"],
                    "inputSchema": { "json": f.get("parameters").cloned().unwrap_or_else(|| json!({ "type": "object" })) },
                });
                if let Some(d) = f["description"].as_str() {
                    spec["description"] = Value::from(d);
                }
                json!({ "toolSpec": spec })
            })
            .collect();
        let mut config = json!({ "tools": specs });
        if let Some(c) = tool_choice(&body["tool_choice"]) {
            config["toolChoice"] = c;
        }
        out.insert("toolConfig".into(), config);
    }
    Ok(Value::Object(out))
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// The token counts of a Converse `usage` (cached prompt tokens count as input).
fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    Usage {
        input_tokens: n("inputTokens") + n("cacheReadInputTokens") + n("cacheWriteInputTokens"),
        output_tokens: n("outputTokens"),
    }
}

/// An OpenAI chat completion for a Converse answer.
pub fn from_converse(answer: &Value, model: &str) -> (Value, Usage) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let content = &answer["output"]["message"]["content"];
    for block in content.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(t) = block["text"].as_str() {
            text.push_str(t);
        } else if let Some(u) = block.get("toolUse") {
            calls.push(json!({
                "id": u["toolUseId"],
                "type": "function",
                "function": { "name": u["name"], "arguments": u["input"].to_string() },
            }));
        }
    }
    let usage = usage_of(&answer["usage"]);
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = finish_reason(answer["stopReason"].as_str().unwrap_or("end_turn"));
    let body = chat_completion("chatcmpl-bedrock", model, message, finish, usage);
    (body, usage)
}

/// Cuts an `application/vnd.amazon.eventstream` body into messages, checking both CRCs of
/// each.
#[derive(Debug, Default)]
pub struct EventStreamFraming {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
}

impl Framing for EventStreamFraming {
    type Event = Message;

    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Message>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(message)) => out.push(message),
                Ok(DecodedFrame::Incomplete) => return Ok(out),
                Err(e) => return Err(format!("malformed event stream: {e}")),
            }
        }
    }

    fn finish(&mut self) -> Option<Message> {
        None
    }
}

/// A string header of an event-stream message.
fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// Translates ConverseStream events.
#[derive(Debug, Default)]
pub struct BedrockStream {
    usage: Usage,
    /// `messageStop` came: the answer is complete, its usage may follow.
    stopped: bool,
    /// Content block index → tool call index.
    tools: HashMap<u64, u64>,
}

impl StreamTranslator<Message> for BedrockStream {
    fn event(&mut self, message: Message) -> Result<Vec<StreamEvent>, UpstreamError> {
        let payload = message.payload();
        match header(&message, ":message-type") {
            Some("exception") => {
                let name = header(&message, ":exception-type");
                return Err(exception(name, 500, payload, None));
            }
            Some("error") => {
                let code = header(&message, ":error-code");
                let text = header(&message, ":error-message").unwrap_or("stream error");
                let body = json!({ "message": text }).to_string();
                return Err(exception(code, 500, body.as_bytes(), None));
            }
            _ => {}
        }
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Ok(vec![http::malformed(&e)]),
        };
        let delta = |d: Delta| Ok(vec![StreamEvent::Delta(d)]);
        let block = v["contentBlockIndex"].as_u64().unwrap_or(0);
        match header(&message, ":event-type").unwrap_or("") {
            "contentBlockStart" => {
                let Some(tool) = v["start"].get("toolUse") else {
                    return Ok(vec![]);
                };
                let index = self.tools.len() as u64;
                self.tools.insert(block, index);
                delta(Delta {
                    tool_calls: Some(json!([{
                        "index": index,
                        "id": tool["toolUseId"],
                        "type": "function",
                        "function": { "name": tool["name"], "arguments": "" },
                    }])),
                    ..Delta::default()
                })
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                if let Some(text) = d["text"].as_str() {
                    return delta(Delta {
                        content: Some(text.to_owned()),
                        ..Delta::default()
                    });
                }
                match d["toolUse"]["input"].as_str() {
                    Some(input) => delta(Delta {
                        tool_calls: Some(json!([{
                            "index": self.tools.get(&block).copied().unwrap_or(0),
                            "function": { "arguments": input },
                        }])),
                        ..Delta::default()
                    }),
                    None => Ok(vec![]),
                }
            }
            "messageStop" => {
                self.stopped = true;
                let stop = v["stopReason"].as_str().unwrap_or("end_turn");
                delta(Delta {
                    finish_reason: Some(finish_reason(stop).to_owned()),
                    ..Delta::default()
                })
            }
            "metadata" => {
                self.usage = usage_of(&v["usage"]);
                let mut out = vec![StreamEvent::Usage(self.usage)];
                if self.stopped {
                    out.push(StreamEvent::Done);
                }
                Ok(out)
            }
            _ => Ok(vec![]),
        }
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>, UpstreamError> {
        crate::upstream::stream_end(self.stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_mock_provider::bedrock as mock;

    fn request<'a>(body: &'a Value, stream: bool) -> UpstreamRequest<'a> {
        UpstreamRequest {
            endpoint: Endpoint::Chat,
            body,
            upstream_model: "anthropic.claude-3-haiku-20240307-v1:0",
            prefill: None,
            stream,
            max_output_tokens: None,
            traceparent: None,
            quota: None,
        }
    }

    #[test]
    fn translates_system_images_tools_results_and_prefill() {
        let body = json!({
            "max_tokens": 100, "temperature": 0.5, "stop": "END",
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": [
                    { "type": "text", "text": "What is this?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
                ]},
                { "role": "assistant", "content": null, "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "look", "arguments": "{\"x\":1}" } },
                ]},
                { "role": "tool", "tool_call_id": "call_1", "content": "a cat" },
                { "role": "user", "content": "And now?" },
            ],
            "tools": [{ "type": "function", "function": { "name": "look", "description": "Looks." } }],
            "tool_choice": { "type": "function", "function": { "name": "look" } },
        });
        let mut req = request(&body, false);
        req.prefill = Some("It is a ");
        let out = to_converse(&req).expect("translates");
        assert_eq!(out["system"], json!([{ "text": "Be brief." }]));
        assert_eq!(
            out["inferenceConfig"],
            json!({ "maxTokens": 100, "temperature": 0.5, "stopSequences": ["END"] })
        );
        let m = out["messages"].as_array().expect("messages");
        assert_eq!(
            m[0]["content"][1],
            json!({ "image": { "format": "png", "source": { "bytes": "AAAA" } } })
        );
        assert_eq!(
            m[1]["content"][0]["toolUse"],
            json!({ "toolUseId": "call_1", "name": "look", "input": { "x": 1 } })
        );
        // The tool result and the next user message make one user turn.
        assert_eq!(m[2]["role"], "user");
        assert_eq!(m[2]["content"][0]["toolResult"]["toolUseId"], "call_1");
        assert_eq!(m[2]["content"][1], json!({ "text": "And now?" }));
        assert_eq!(
            m[3],
            json!({ "role": "assistant", "content": [{ "text": "It is a" }] })
        );
        let spec = &out["toolConfig"]["tools"][0]["toolSpec"];
        assert_eq!(spec["inputSchema"]["json"], json!({ "type": "object" }));
        assert_eq!(spec["description"], "Looks.");
        assert_eq!(
            out["toolConfig"]["toolChoice"],
            json!({ "tool": { "name": "look" } })
        );
        let remote = json!({ "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": "https://example.com/cat.png" } }] }] });
        let e = to_converse(&request(&remote, false)).unwrap_err();
        assert_eq!(e.class, ErrorClass::Unsupported);
    }

    #[test]
    fn translates_answers() {
        let answer = json!({
            "output": { "message": { "role": "assistant", "content": [
                { "text": "Calling." },
                { "toolUse": { "toolUseId": "tu_1", "name": "look", "input": { "x": 2 } } },
            ]}},
            "stopReason": "tool_use",
            "usage": { "inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 2 },
        });
        let (body, usage) = from_converse(&answer, "m");
        assert_eq!(
            usage,
            Usage {
                input_tokens: 12,
                output_tokens: 5
            }
        );
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Calling.");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":2}"
        );
        assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
        assert_eq!(finish_reason("max_tokens"), "length");
    }

    #[test]
    fn classes_exceptions_by_name() {
        let class = |name: &str| exception(Some(name), 400, b"{\"message\":\"m\"}", None).class;
        assert_eq!(class("ThrottlingException"), ErrorClass::RateLimited);
        assert_eq!(class("throttlingException"), ErrorClass::RateLimited);
        assert_eq!(class("ModelNotReadyException"), ErrorClass::Unavailable);
        assert_eq!(
            class("ServiceUnavailableException"),
            ErrorClass::Unavailable
        );
        assert_eq!(class("ValidationException"), ErrorClass::BadRequest);
        assert_eq!(class("InvalidSignatureException"), ErrorClass::Auth);
        assert_eq!(class("UnrecognizedClientException"), ErrorClass::Auth);
        assert_eq!(class("modelStreamErrorException"), ErrorClass::Server);
        let e = exception(
            Some("ThrottlingException"),
            429,
            b"{}",
            Some(Duration::from_secs(2)),
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(e.code.as_deref(), Some("ThrottlingException"));
        assert_eq!(
            exception(None, 503, b"{}", None).class,
            ErrorClass::Unavailable
        );
    }

    /// Feeds `bytes` to a framing a few bytes at a time.
    fn frames(bytes: &[u8]) -> Result<Vec<Message>, String> {
        let mut framing = EventStreamFraming::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(7) {
            out.extend(framing.feed(piece)?);
        }
        Ok(out)
    }

    #[test]
    fn translates_event_streams_split_anywhere() {
        let wire = [
            mock::event("messageStart", json!({ "role": "assistant" })),
            mock::event(
                "contentBlockDelta",
                json!({ "contentBlockIndex": 0, "delta": { "text": "Hi " } }),
            ),
            mock::event(
                "contentBlockStart",
                json!({ "contentBlockIndex": 1,
                    "start": { "toolUse": { "toolUseId": "tu_1", "name": "look" } } }),
            ),
            mock::event(
                "contentBlockDelta",
                json!({ "contentBlockIndex": 1, "delta": { "toolUse": { "input": "{\"x\":" } } }),
            ),
            mock::event("messageStop", json!({ "stopReason": "tool_use" })),
            mock::metadata(7, 3),
        ]
        .concat();
        let mut t = BedrockStream::default();
        let mut out = Vec::new();
        for m in frames(&wire).expect("well framed") {
            out.extend(t.event(m).expect("events"));
        }
        assert_eq!(
            out[0],
            StreamEvent::Delta(Delta {
                content: Some("Hi ".into()),
                ..Delta::default()
            })
        );
        let StreamEvent::Delta(call) = &out[1] else {
            panic!("{out:?}");
        };
        assert_eq!(
            call.tool_calls,
            Some(json!([{ "index": 0, "id": "tu_1", "type": "function",
                "function": { "name": "look", "arguments": "" } }]))
        );
        let StreamEvent::Delta(args) = &out[2] else {
            panic!("{out:?}");
        };
        assert_eq!(
            args.tool_calls,
            Some(json!([{ "index": 0, "function": { "arguments": "{\"x\":" } }]))
        );
        assert_eq!(
            out[3..],
            [
                StreamEvent::Delta(Delta {
                    finish_reason: Some("tool_calls".into()),
                    ..Delta::default()
                }),
                StreamEvent::Usage(Usage {
                    input_tokens: 7,
                    output_tokens: 3
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn exceptions_are_errors_and_corrupt_frames_are_refused() {
        let wire = mock::exception_event(429, "Too many tokens, slow down.");
        let message = frames(&wire).expect("framed").pop().expect("a message");
        let e = BedrockStream::default().event(message).unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.code.as_deref(), Some("throttlingException"));
        let mut corrupt = mock::event("messageStop", json!({ "stopReason": "end_turn" })).to_vec();
        let last = corrupt.len() - 6;
        corrupt[last] ^= 1;
        assert!(frames(&corrupt).is_err(), "a payload byte changed");
        let mut prelude = mock::metadata(1, 1).to_vec();
        prelude[9] ^= 1;
        assert!(frames(&prelude).is_err(), "a prelude byte changed");
        assert!(
            BedrockStream::default().end().is_err(),
            "no messageStop: the answer is incomplete"
        );
    }

    #[test]
    fn signatures_verify_with_an_independent_implementation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).expect("write");
            format!("file:{}", path.display())
        };
        let settings = |key_id: &str| {
            json!({
                "name": "b", "type": "bedrock", "base_url": "http://127.0.0.1:9",
                "bedrock": {
                    "region": "us-west-2",
                    "access_key_id": key_id,
                    "secret_access_key": key_file("secret", mock::SECRET_ACCESS_KEY),
                },
            })
        };
        let provider: model::Provider =
            serde_json::from_value(settings(&key_file("id", mock::ACCESS_KEY_ID)))
                .expect("a provider");
        let bedrock = Bedrock::new(&provider);
        let url = "http://127.0.0.1:9/model/anthropic.claude-v2%3A1/converse";
        let body = br#"{"messages":[]}"#;
        let headers = bedrock
            .signature(
                url,
                body,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )
            .expect("signed");
        let mut received: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ASCII").to_owned()))
            .collect();
        received.push(("host".into(), "127.0.0.1:9".into()));
        received.push(("content-type".into(), "application/json".into()));
        let signed = |body: &'static [u8]| mock::Signed {
            method: "POST",
            path: "/model/anthropic.claude-v2%3A1/converse",
            query: "",
            headers: received.clone(),
            body,
        };
        assert_eq!(mock::verify(&signed(body)), Ok(()));
        let refused = mock::verify(&signed(br#"{"messages":[1]}"#)).unwrap_err();
        assert_eq!(refused.1, "InvalidSignatureException");
        // Without its keys the adapter fails as an auth error naming the reference only.
        let unset: model::Provider =
            serde_json::from_value(settings("env:LLMGW_UNIT_BEDROCK_KEY_ID")).expect("a provider");
        let unresolved = Bedrock::new(&unset)
            .signature(url, body, SystemTime::now())
            .unwrap_err();
        assert_eq!(unresolved.class, ErrorClass::Auth);
        assert!(unresolved.message.contains("LLMGW_UNIT_BEDROCK_KEY_ID"));
    }
}

//! Anthropic Messages: translation of OpenAI chat requests (system prompts, images, tools,
//! tool results, prefill) to `POST /v1/messages`, and of its answers and stream events back.

use crate::providers::http::{self, Connection, StreamTranslator};
use crate::providers::secret::{Secret, SecretError};
use crate::sse::SseEvent;
use crate::upstream::{
    chat_completion, Delta, ErrorClass, FullResponse, Provider, SendFuture, StreamEvent,
    UpstreamError, UpstreamRequest, UpstreamResponse, Usage,
};
use crate::wire::content_text;
use ::http::header::{HeaderName, HeaderValue};
use llmgw_engine::input::Endpoint;
use llmgw_engine::model;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Where Anthropic's API is when the policy names no `base_url`.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The API version sent in `anthropic-version`.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the Messages API: used when the client sets none and the policy
/// declares no `max_output_tokens` for the model.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An Anthropic provider.
pub struct Anthropic {
    conn: Connection,
}

impl Anthropic {
    /// The adapter of a policy provider of type `anthropic`, with its resolved key.
    pub fn new(provider: &model::Provider, key: Option<Result<Secret, SecretError>>) -> Self {
        Anthropic {
            conn: Connection::new(provider, key, Some(ANTHROPIC_BASE_URL)),
        }
    }
}

impl Provider for Anthropic {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            if req.endpoint == Endpoint::Embeddings {
                return Err(UpstreamError::new(
                    ErrorClass::Unsupported,
                    "Anthropic has no embeddings API",
                ));
            }
            let mut headers = vec![(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            )];
            if let Some(key) = &self.conn.key {
                let key = http::key_or_error(key)?;
                if let Some(v) = http::sensitive(key.expose()) {
                    headers.push((HeaderName::from_static("x-api-key"), v));
                }
            }
            http::traceparent(&req, &mut headers);
            let body = to_messages(&req);
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let first = Duration::from_millis(self.conn.timeouts.first_token_ms);
            let url = http::join(self.conn.base(), "messages");
            let resp = http::post(&self.conn.client, &url, headers, body, first).await?;
            if let Some(q) = req.quota {
                q.observe(resp.headers());
            }
            if !resp.status().is_success() {
                return Err(http::error_from(resp).await);
            }
            if req.stream {
                return Ok(UpstreamResponse::Stream(http::spawn_sse(
                    resp,
                    AnthropicStream::default(),
                )));
            }
            let answer =
                http::read_json(resp, Duration::from_millis(self.conn.timeouts.total_ms)).await?;
            let (body, usage) = from_message(&answer, req.upstream_model);
            Ok(UpstreamResponse::Full(FullResponse { body, usage }))
        })
    }
}

/// Content parts of an OpenAI message as Anthropic content blocks.
fn blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) if s.is_empty() => vec![],
        Value::String(s) => vec![json!({ "type": "text", "text": s })],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p["type"].as_str() {
                Some("text") => {
                    Some(json!({ "type": "text", "text": p["text"].as_str().unwrap_or("") }))
                }
                Some("image_url") => {
                    let url = p["image_url"]["url"]
                        .as_str()
                        .or_else(|| p["image_url"].as_str())?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

/// An image block for an image URL (a `data:` URL becomes a base64 source).
fn image_block(url: &str) -> Value {
    match parse_data_url(url) {
        Some((media_type, data)) => json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }),
        None => json!({ "type": "image", "source": { "type": "url", "url": url } }),
    }
}

/// The image URL of an image block's `source` (the inverse of [`image_block`]): a `data:` URL
/// for a base64 source.
pub fn image_url(source: &Value) -> Option<String> {
    match source["type"].as_str()? {
        "base64" => Some(format!(
            "data:{};base64,{}",
            source["media_type"].as_str()?,
            source["data"].as_str()?
        )),
        "url" => source["url"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// A `tool_use` block for an OpenAI tool call (its arguments parsed; `{}` when they are not
/// JSON).
pub fn tool_use_block(call: &Value) -> Value {
    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
    json!({
        "type": "tool_use",
        "id": call["id"],
        "name": call["function"]["name"],
        "input": input,
    })
}

/// An OpenAI tool call for a `tool_use` block (the inverse of [`tool_use_block`]).
pub fn tool_call(block: &Value) -> Value {
    json!({
        "id": block["id"],
        "type": "function",
        "function": { "name": block["name"], "arguments": block["input"].to_string() },
    })
}

/// An Anthropic tool for an OpenAI function tool.
fn tool_def(t: &Value) -> Value {
    let f = &t["function"];
    let mut tool = json!({
        "name": f["name"],
        "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({ "type": "object" })),
    });
    if let Some(d) = f["description"].as_str() {
        tool["description"] = Value::from(d);
    }
    tool
}

/// An OpenAI function tool for an Anthropic tool (the inverse of [`tool_def`]).
pub fn function_tool(tool: &Value) -> Value {
    let mut function = json!({
        "name": tool["name"],
        "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({ "type": "object" })),
    });
    if let Some(d) = tool["description"].as_str() {
        function["description"] = Value::from(d);
    }
    json!({ "type": "function", "function": function })
}

/// The Anthropic `tool_choice` for an OpenAI one (`auto` is the default and maps to none).
fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) if s == "required" => Some(json!({ "type": "any" })),
        Value::String(s) if s == "none" => Some(json!({ "type": "none" })),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f["name"].as_str())
            .map(|n| json!({ "type": "tool", "name": n })),
        _ => None,
    }
}

/// The OpenAI `tool_choice` for an Anthropic one (the inverse of [`tool_choice`]).
pub fn openai_tool_choice(choice: &Value) -> Option<Value> {
    match choice["type"].as_str()? {
        "auto" => Some(json!("auto")),
        "any" => Some(json!("required")),
        "none" => Some(json!("none")),
        "tool" => Some(json!({ "type": "function", "function": { "name": choice["name"] } })),
        _ => None,
    }
}

/// Splits a `data:<mime>;base64,<data>` URL.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

/// Appends a message, merging it into the previous one of the same role (the API wants
/// alternating roles).
pub(crate) fn push(messages: &mut Vec<Value>, role: &str, mut content: Vec<Value>) {
    if content.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last["content"].as_array_mut() {
                arr.append(&mut content);
                return;
            }
        }
    }
    messages.push(json!({ "role": role, "content": content }));
}

/// The Messages request for an OpenAI chat request.
pub fn to_messages(req: &UpstreamRequest<'_>) -> Value {
    let (body, model, prefill, stream) = (req.body, req.upstream_model, req.prefill, req.stream);
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match m["role"].as_str().unwrap_or("") {
            "system" | "developer" => system.push(content_text(&m["content"])),
            "assistant" => {
                let mut content = blocks(&m["content"]);
                for call in m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    content.push(tool_use_block(call));
                }
                push(&mut messages, "assistant", content);
            }
            "tool" | "function" => push(
                &mut messages,
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"].as_str().unwrap_or(""),
                    "content": content_text(&m["content"]),
                })],
            ),
            _ => push(&mut messages, "user", blocks(&m["content"])),
        }
    }
    if let Some(p) = prefill {
        // The API refuses a final assistant turn that ends in whitespace.
        let p = p.trim_end();
        if !p.is_empty() {
            push(
                &mut messages,
                "assistant",
                vec![json!({ "type": "text", "text": p })],
            );
        }
    }
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64())
        .or(req.max_output_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = Map::new();
    out.insert("model".into(), Value::from(model));
    out.insert("max_tokens".into(), Value::from(max_tokens));
    out.insert("messages".into(), Value::Array(messages));
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::from(system.join("\n\n")));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            out.insert(to.into(), v.clone());
        }
    }
    match &body["stop"] {
        Value::String(s) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Value::Array(a) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = body["tools"].as_array().filter(|t| !t.is_empty()) {
        out.insert(
            "tools".into(),
            Value::Array(tools.iter().map(tool_def).collect()),
        );
        if let Some(c) = tool_choice(&body["tool_choice"]) {
            out.insert("tool_choice".into(), c);
        }
    }
    if let Some(user) = body["user"].as_str() {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    Value::Object(out)
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason` (the inverse of [`finish_reason`]).
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    Usage {
        input_tokens: n("input_tokens")
            + n("cache_creation_input_tokens")
            + n("cache_read_input_tokens"),
        output_tokens: n("output_tokens"),
    }
}

/// An OpenAI chat completion for a Messages answer.
pub fn from_message(msg: &Value, model: &str) -> (Value, Usage) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(tool_call(block)),
            _ => {}
        }
    }
    let usage = usage_of(&msg["usage"]);
    let mut message = json!({ "role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) } });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let id = msg["id"].as_str().map_or_else(
        || "chatcmpl-anthropic".to_owned(),
        |id| format!("chatcmpl-{id}"),
    );
    let finish = finish_reason(msg["stop_reason"].as_str().unwrap_or("end_turn"));
    let body = chat_completion(&id, model, message, finish, usage);
    (body, usage)
}

/// Translates Messages stream events.
#[derive(Debug, Default)]
pub struct AnthropicStream {
    usage: Usage,
    finished: bool,
    /// Content block index → tool call index.
    tools: HashMap<u64, u64>,
}

impl StreamTranslator for AnthropicStream {
    fn event(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, UpstreamError> {
        if event.data.trim().is_empty() {
            return Ok(vec![]);
        }
        let v: Value = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(e) => return Ok(vec![http::malformed(&e)]),
        };
        let kind = v["type"].as_str().or(event.event.as_deref()).unwrap_or("");
        let delta = |d: Delta| Ok(vec![StreamEvent::Delta(d)]);
        match kind {
            "message_start" => {
                self.usage = usage_of(&v["message"]["usage"]);
                Ok(vec![])
            }
            "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                let index = self.tools.len() as u64;
                self.tools.insert(v["index"].as_u64().unwrap_or(0), index);
                let b = &v["content_block"];
                delta(Delta {
                    tool_calls: Some(json!([{
                        "index": index,
                        "id": b["id"],
                        "type": "function",
                        "function": { "name": b["name"], "arguments": "" },
                    }])),
                    ..Delta::default()
                })
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => delta(Delta {
                        content: d["text"].as_str().map(str::to_owned),
                        ..Delta::default()
                    }),
                    Some("input_json_delta") => {
                        let index = self
                            .tools
                            .get(&v["index"].as_u64().unwrap_or(0))
                            .copied()
                            .unwrap_or(0);
                        delta(Delta {
                            tool_calls: Some(json!([{
                                "index": index,
                                "function": { "arguments": d["partial_json"].as_str().unwrap_or("") },
                            }])),
                            ..Delta::default()
                        })
                    }
                    _ => Ok(vec![]),
                }
            }
            "message_delta" => {
                let mut out = Vec::new();
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                }
                if let Some(n) = v["usage"]["input_tokens"].as_u64().filter(|n| *n > 0) {
                    self.usage.input_tokens = n;
                }
                if let Some(stop) = v["delta"]["stop_reason"].as_str() {
                    self.finished = true;
                    out.push(StreamEvent::Delta(Delta {
                        finish_reason: Some(finish_reason(stop).to_owned()),
                        ..Delta::default()
                    }));
                }
                out.push(StreamEvent::Usage(self.usage));
                Ok(out)
            }
            "message_stop" => Ok(vec![StreamEvent::Done]),
            "error" => {
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                let status = match v["error"]["type"].as_str() {
                    Some("overloaded_error") => 529,
                    Some("rate_limit_error") => 429,
                    Some("invalid_request_error") => 400,
                    _ => 500,
                };
                Err(UpstreamError::from_status(status, &bytes, None))
            }
            _ => Ok(vec![]),
        }
    }

    fn end(&mut self) -> Result<Vec<StreamEvent>, UpstreamError> {
        if self.finished {
            Ok(vec![StreamEvent::Done])
        } else {
            Err(UpstreamError::new(
                ErrorClass::Protocol,
                "the stream ended before the answer was complete",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_system_images_tools_and_prefill() {
        let body = json!({
            "model": "claude",
            "max_tokens": 100,
            "stop": "END",
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
            ],
            "tools": [{ "type": "function", "function": { "name": "look", "parameters": { "type": "object" } } }],
            "tool_choice": "required",
        });
        let out = to_messages(&UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &body,
            upstream_model: "claude-x",
            prefill: Some("It is a "),
            stream: true,
            max_output_tokens: Some(64_000),
            traceparent: None,
            quota: None,
        });
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 100, "the client's limit goes first");
        let mut unlimited = body.clone();
        unlimited
            .as_object_mut()
            .expect("object")
            .remove("max_tokens");
        let req = |max_output_tokens| UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &unlimited,
            upstream_model: "claude-x",
            prefill: None,
            stream: false,
            max_output_tokens,
            traceparent: None,
            quota: None,
        };
        assert_eq!(to_messages(&req(Some(64_000)))["max_tokens"], 64_000);
        assert_eq!(to_messages(&req(None))["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["tool_choice"], json!({ "type": "any" }));
        assert_eq!(out["tools"][0]["input_schema"], json!({ "type": "object" }));
        let m = out["messages"].as_array().expect("messages");
        assert_eq!(m[0]["content"][1]["source"]["media_type"], "image/png");
        assert_eq!(m[1]["content"][0]["type"], "tool_use");
        assert_eq!(m[1]["content"][0]["input"], json!({ "x": 1 }));
        assert_eq!(m[2]["content"][0]["type"], "tool_result");
        assert_eq!(
            m[3],
            json!({ "role": "assistant", "content": [{ "type": "text", "text": "It is a" }] })
        );
    }

    #[test]
    fn translates_answers() {
        let msg = json!({
            "id": "msg_1",
            "content": [
                { "type": "text", "text": "Calling." },
                { "type": "tool_use", "id": "tu_1", "name": "look", "input": { "x": 2 } },
            ],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 10, "output_tokens": 5 },
        });
        let (body, usage) = from_message(&msg, "claude");
        assert_eq!(
            usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5
            }
        );
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":2}"
        );
    }

    #[test]
    fn translates_stream_events() {
        let mut t = AnthropicStream::default();
        let ev = |data: Value| SseEvent {
            event: None,
            data: data.to_string(),
        };
        t.event(ev(json!({ "type": "message_start", "message": { "usage": { "input_tokens": 7, "output_tokens": 1 } } }))).expect("ok");
        let out = t
            .event(ev(json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Hi" } })))
            .expect("ok");
        assert_eq!(
            out,
            vec![StreamEvent::Delta(Delta {
                content: Some("Hi".into()),
                ..Delta::default()
            })]
        );
        assert!(t.end().is_err());
        let out = t
            .event(ev(json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": 3 } })))
            .expect("ok");
        assert_eq!(
            out[1],
            StreamEvent::Usage(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert_eq!(
            t.event(ev(json!({ "type": "message_stop" }))).expect("ok"),
            vec![StreamEvent::Done]
        );
        let err = t
            .event(ev(json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })))
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Unavailable);
    }
}

//! The Anthropic Messages front door (`POST /v1/messages`): its requests become the OpenAI
//! chat form every adapter takes, and the answers and stream events of any upstream become
//! Anthropic's. The mappings of single items (tool calls, tools, images, stop reasons) are the
//! Anthropic upstream adapter's, used the other way round.

use super::cost_comment;
use crate::error::ApiError;
use crate::providers::anthropic::{
    function_tool, image_url, openai_tool_choice, stop_reason, tool_call, tool_use_block,
};
use crate::upstream::{Delta, Usage};
use crate::wire::{content_text, missing};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The OpenAI chat body for a Messages request body; `max_tokens` is required, as Anthropic
/// requires it, unless `count_only` (a `count_tokens` request).
pub fn to_chat(body: &Value, count_only: bool) -> Result<Value, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({ "role": "system", "content": s })),
        Some(Value::Array(blocks)) if blocks.iter().all(|b| b["type"] == "text") => {
            messages.push(json!({ "role": "system", "content": content_text(&obj["system"]) }))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "system",
                "`system` must be a string or an array of text blocks",
            ))
        }
    }
    let list = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_field(
                "messages",
                "`messages` must not be empty",
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "messages",
                "`messages` must be an array",
            ))
        }
        None => return Err(missing("messages")),
    };
    for (i, m) in list.iter().enumerate() {
        translate_message(i, m, &mut messages)?;
    }
    let mut out = Map::new();
    for field in ["model", "stream", "temperature", "top_p"] {
        if let Some(v) = obj.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    match obj.get("max_tokens") {
        Some(v) => {
            out.insert("max_tokens".into(), v.clone());
        }
        None if !count_only => return Err(missing("max_tokens")),
        None => {}
    }
    match obj.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(s)) if s.iter().all(Value::is_string) => {
            out.insert("stop".into(), Value::Array(s.clone()));
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "stop_sequences",
                "`stop_sequences` must be an array of strings",
            ))
        }
    }
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            let mut defs = Vec::with_capacity(tools.len());
            for (i, t) in tools.iter().enumerate() {
                let custom =
                    matches!(t.get("type"), None | Some(Value::Null)) || t["type"] == "custom";
                if !custom || !t["name"].is_string() {
                    return Err(ApiError::invalid_field(
                        &format!("tools[{i}]"),
                        "only client tools (`name`, `description`, `input_schema`) are \
                         supported; server tools are not",
                    ));
                }
                defs.push(function_tool(t));
            }
            out.insert("tools".into(), Value::Array(defs));
        }
        Some(_) => return Err(ApiError::invalid_field("tools", "`tools` must be an array")),
    }
    if let Some(choice) = obj.get("tool_choice").filter(|c| !c.is_null()) {
        let Some(choice) = openai_tool_choice(choice) else {
            return Err(ApiError::invalid_field(
                "tool_choice",
                "`tool_choice.type` must be auto, any, tool or none",
            ));
        };
        out.insert("tool_choice".into(), choice);
    }
    match obj.get("metadata").and_then(|m| m.get("user_id")) {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) => {
            out.insert("user".into(), Value::from(u.as_str()));
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "metadata.user_id",
                "`metadata.user_id` must be a string",
            ))
        }
    }
    Ok(Value::Object(out))
}

/// Appends the OpenAI messages of Messages entry `i`: its tool results as `tool` messages
/// first (they answer the previous assistant turn), then what else it says.
fn translate_message(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match m["role"].as_str() {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(ApiError::invalid_field(
                &format!("messages[{i}].role"),
                "each message needs a `role` of user or assistant",
            ))
        }
    };
    let blocks = match &m["content"] {
        Value::String(s) => vec![json!({ "type": "text", "text": s })],
        Value::Array(b) => b.clone(),
        _ => {
            return Err(ApiError::invalid_field(
                &format!("messages[{i}].content"),
                "`content` must be a string or an array of content blocks",
            ))
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match (b["type"].as_str(), role) {
            (Some("text"), _) => {
                parts.push(json!({ "type": "text", "text": b["text"].as_str().unwrap_or("") }))
            }
            (Some("image"), "user") => {
                let Some(url) = image_url(&b["source"]) else {
                    return Err(ApiError::invalid_field(
                        &format!("{at}.source"),
                        "an image needs a `base64` source (`media_type`, `data`) or a `url` source",
                    ));
                };
                parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
            }
            (Some("tool_use"), "assistant") => calls.push(tool_call(b)),
            (Some("tool_result"), "user") => {
                let mut content = content_text(&b["content"]);
                if b["is_error"] == true {
                    content = format!("Error: {content}");
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": b["tool_use_id"].as_str().unwrap_or(""),
                    "content": content,
                }));
            }
            // The reasoning of an earlier turn is not sent on: other models cannot read it.
            (Some("thinking" | "redacted_thinking"), "assistant") => {}
            (kind, _) => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.type"),
                    format!(
                        "a {role} message cannot carry a `{}` block here",
                        kind.unwrap_or("(missing)")
                    ),
                ))
            }
        }
    }
    if role == "assistant" {
        let text = content_text(&Value::Array(parts));
        if text.is_empty() && calls.is_empty() {
            return Ok(());
        }
        let mut msg = json!({ "role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::from(text) } });
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({ "role": "user", "content": parts }));
    }
    Ok(())
}

/// The Messages answer for an OpenAI chat completion, named `id`.
pub fn message(completion: &Value, id: &str) -> Value {
    let choice = &completion["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({ "type": "text", "text": text }));
    }
    for call in msg["tool_calls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        content.push(tool_use_block(call));
    }
    let usage = &completion["usage"];
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage["prompt_tokens"].as_u64().unwrap_or(0),
            "output_tokens": usage["completion_tokens"].as_u64().unwrap_or(0),
        },
    })
}

/// Anthropic's error `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error in Anthropic's shape; the gateway's code and the field at fault are kept alongside.
pub fn error_body(err: &ApiError) -> Value {
    json!({
        "type": "error",
        "error": {
            "type": error_type(err.status),
            "message": err.message,
            "code": err.code,
            "param": err.param,
        },
    })
}

/// The block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

/// Writes Anthropic's stream: `message_start` and a `ping`, each block's
/// `content_block_start`/`_delta`/`_stop`, then `message_delta` (stop reason and usage) and
/// `message_stop`; a broken stream ends with an in-band `error` event.
#[derive(Debug)]
pub struct MessagesStream {
    id: String,
    model: String,
    input_estimate: u64,
    started: bool,
    open: Option<Open>,
    next_block: u64,
    /// OpenAI tool call index → block index.
    tools: HashMap<u64, u64>,
    finish: Option<String>,
}

fn event(out: &mut Vec<u8>, v: &Value) {
    let kind = v["type"].as_str().unwrap_or("message");
    out.extend_from_slice(format!("event: {kind}\ndata: {v}\n\n").as_bytes());
}

impl MessagesStream {
    /// A writer of message `id` by `model`; `input_estimate` is the input tokens announced in
    /// `message_start` (the real count comes in `message_delta`).
    pub fn new(id: String, model: &str, input_estimate: u64) -> Self {
        MessagesStream {
            id,
            model: model.to_owned(),
            input_estimate,
            started: false,
            open: None,
            next_block: 0,
            tools: HashMap::new(),
            finish: None,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        event(
            out,
            &json!({ "type": "message_start", "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": self.input_estimate, "output_tokens": 0 },
            }}),
        );
        event(out, &json!({ "type": "ping" }));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(Open::Text(i) | Open::Tool(i)) = self.open.take() {
            event(out, &json!({ "type": "content_block_stop", "index": i }));
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, block: Value, kind: fn(u64) -> Open) -> u64 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        event(
            out,
            &json!({ "type": "content_block_start", "index": index, "content_block": block }),
        );
        self.open = Some(kind(index));
        index
    }

    /// The events of one piece of the answer.
    pub fn delta(&mut self, d: &Delta) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        if let Some(text) = d.content.as_deref().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some(Open::Text(i)) => i,
                _ => self.open_block(&mut out, json!({ "type": "text", "text": "" }), Open::Text),
            };
            event(
                &mut out,
                &json!({ "type": "content_block_delta", "index": index,
                         "delta": { "type": "text_delta", "text": text } }),
            );
        }
        for f in d
            .tool_calls
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let call = f["index"].as_u64().unwrap_or(0);
            let index = match self.tools.get(&call) {
                Some(i) => *i,
                None => {
                    let block = json!({ "type": "tool_use", "id": f["id"],
                        "name": f["function"]["name"], "input": {} });
                    let i = self.open_block(&mut out, block, Open::Tool);
                    self.tools.insert(call, i);
                    i
                }
            };
            if let Some(args) = f["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                event(
                    &mut out,
                    &json!({ "type": "content_block_delta", "index": index,
                             "delta": { "type": "input_json_delta", "partial_json": args } }),
                );
            }
        }
        if let Some(f) = &d.finish_reason {
            self.finish = Some(f.clone());
        }
        Bytes::from(out)
    }

    /// The end of a complete answer: the open block closed, `message_delta` with the stop
    /// reason and the tokens delivered, the cost comment, `message_stop`.
    pub fn end(&mut self, usage: Usage, cost: &str) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out);
        let stop = stop_reason(self.finish.as_deref().unwrap_or("stop"));
        event(
            &mut out,
            &json!({ "type": "message_delta",
                     "delta": { "stop_reason": stop, "stop_sequence": null },
                     "usage": { "input_tokens": usage.input_tokens,
                                "output_tokens": usage.output_tokens } }),
        );
        out.extend_from_slice(cost_comment(cost).as_bytes());
        event(&mut out, &json!({ "type": "message_stop" }));
        Bytes::from(out)
    }

    /// The in-band error that ends a broken stream (no `message_stop` follows).
    pub fn error(message: &str) -> Bytes {
        let mut out = Vec::new();
        event(
            &mut out,
            &json!({ "type": "error", "error": { "type": "api_error", "message": message } }),
        );
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_a_request_with_system_images_tools_and_results() {
        let body = json!({
            "model": "m",
            "max_tokens": 50,
            "system": [{ "type": "text", "text": "Be brief." }],
            "stop_sequences": ["END"],
            "metadata": { "user_id": "u1" },
            "messages": [
                { "role": "user", "content": [
                    { "type": "text", "text": "What is this?" },
                    { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "AAAA" } },
                ]},
                { "role": "assistant", "content": [
                    { "type": "text", "text": "Looking." },
                    { "type": "tool_use", "id": "tu_1", "name": "look", "input": { "x": 1 } },
                ]},
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "tu_1", "content": [{ "type": "text", "text": "a cat" }] },
                    { "type": "text", "text": "And now?" },
                ]},
            ],
            "tools": [{ "name": "look", "description": "Looks.", "input_schema": { "type": "object" } }],
            "tool_choice": { "type": "any" },
        });
        let chat = to_chat(&body, false).expect("valid");
        let m = chat["messages"].as_array().expect("messages");
        assert_eq!(m[0], json!({ "role": "system", "content": "Be brief." }));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(m[2]["content"], "Looking.");
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(
            m[3],
            json!({ "role": "tool", "tool_call_id": "tu_1", "content": "a cat" })
        );
        assert_eq!(m[4]["content"][0]["text"], "And now?");
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({ "type": "object" })
        );
        assert_eq!(chat["max_tokens"], 50);
    }

    #[test]
    fn names_the_field_at_fault() {
        let e = to_chat(
            &json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }] }),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(to_chat(
            &json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }] }),
            true
        )
        .is_ok());
        let e = to_chat(
            &json!({ "model": "m", "max_tokens": 1, "messages": [{ "role": "user", "content": [{ "type": "document" }] }] }),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = to_chat(
            &json!({ "model": "m", "max_tokens": 1, "messages": [{ "role": "user", "content": "x" }],
                     "tools": [{ "type": "web_search_20250305", "name": "web_search" }] }),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0]"));
        assert_eq!(error_body(&e)["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn answers_in_anthropic_shape() {
        let completion = json!({
            "model": "m",
            "choices": [{ "message": { "role": "assistant", "content": "Calling.", "tool_calls": [
                { "id": "c1", "type": "function", "function": { "name": "look", "arguments": "{\"x\":2}" } }] },
                "finish_reason": "tool_calls" }],
            "usage": { "prompt_tokens": 10, "completion_tokens": 5 },
        });
        let m = message(&completion, "msg_1");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["content"][0]["text"], "Calling.");
        assert_eq!(m["content"][1]["input"], json!({ "x": 2 }));
        assert_eq!(
            m["usage"],
            json!({ "input_tokens": 10, "output_tokens": 5 })
        );
    }

    #[test]
    fn streams_anthropic_events_in_order() {
        let mut s = MessagesStream::new("msg_1".into(), "m", 3);
        let mut all = Vec::new();
        all.extend_from_slice(&s.delta(&Delta {
            content: Some("Hi".into()),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.delta(&Delta {
            tool_calls: Some(json!([{ "index": 0, "id": "c1", "function": { "name": "look", "arguments": "" } }])),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.delta(&Delta {
            tool_calls: Some(json!([{ "index": 0, "function": { "arguments": "{}" } }])),
            finish_reason: Some("tool_calls".into()),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.end(
            Usage {
                input_tokens: 4,
                output_tokens: 2,
            },
            "0.1",
        ));
        let text = String::from_utf8(all).expect("utf-8");
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains(r#""stop_reason":"tool_use""#), "{text}");
        assert!(text.contains(r#""output_tokens":2"#), "{text}");
    }
}

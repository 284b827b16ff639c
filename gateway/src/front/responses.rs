//! The OpenAI Responses front door (`POST /v1/responses`, `GET` and `DELETE
//! /v1/responses/{id}`): its requests become the internal chat form, and the answers and stream
//! events of any upstream become Responses objects and events. A response created with `store`
//! (the default) is kept in the state store, per tenant, for the retention period
//! (`--response-retention-secs`) with the conversation that led to it, so that a later request
//! can continue it with `previous_response_id`.

use super::cost_comment;
use crate::app::App;
use crate::error::ApiError;
use crate::upstream::{Delta, Usage};
use crate::wire::{content_text, missing};
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The state store namespace of stored responses.
const NS: &str = "responses";

/// What a Responses request carries beyond its internal chat form.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The tenant whose conversation it is.
    tenant: String,
    /// Whether to keep the response.
    store: bool,
    /// The conversation sent upstream, without the instructions (which are not carried over
    /// to a continuation): the previous response's conversation and this request's input.
    history: Vec<Value>,
    /// The response object before its output: id, model, the request's settings.
    template: Value,
}

/// A stored response: the object `GET` answers and the conversation it ended.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    tenant: String,
    response: Value,
    messages: Vec<Value>,
}

fn key(tenant: &str, id: &str) -> String {
    format!("{tenant}/{id}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// 404 for a response that does not exist (or expired, or is another tenant's).
fn not_found(id: &str, param: Option<&str>) -> ApiError {
    let e = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "response_not_found",
        format!("no stored response `{id}` (it may have expired or been deleted)"),
    );
    match param {
        Some(p) => e.with_param(p),
        None => e,
    }
}

/// The stored response `id` of `tenant`.
async fn load(app: &App, tenant: &str, id: &str) -> Result<Option<Stored>, ApiError> {
    let got = app
        .state
        .get_expiring(NS, &key(tenant, id), now_ms())
        .await
        .map_err(|e| crate::store::health::failed("reading a stored response", &e))?;
    let Some(text) = got else {
        return Ok(None);
    };
    let stored: Stored = serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("a stored response is malformed: {e}")))?;
    Ok((stored.tenant == tenant).then_some(stored))
}

/// `GET /v1/responses/{id}`: the stored response.
pub async fn get(app: &App, tenant: &str, id: &str) -> Result<Value, ApiError> {
    match load(app, tenant, id).await? {
        Some(s) => Ok(s.response),
        None => Err(not_found(id, None)),
    }
}

/// `DELETE /v1/responses/{id}`: forgets the stored response.
pub async fn delete(app: &App, tenant: &str, id: &str) -> Result<Value, ApiError> {
    let deleted = app
        .state
        .delete_expiring(NS, &key(tenant, id))
        .await
        .map_err(|e| crate::store::health::failed("deleting a stored response", &e))?;
    if deleted {
        Ok(json!({ "id": id, "object": "response", "deleted": true }))
    } else {
        Err(not_found(id, None))
    }
}

/// The internal chat body and the turn of a Responses request body of `tenant`, answered as
/// `id`; a `previous_response_id` is looked up in the state store.
pub async fn to_chat(
    app: &App,
    tenant: &str,
    id: &str,
    body: &Value,
) -> Result<(Value, Turn), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let store = match obj.get("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "store",
                "`store` must be a boolean",
            ))
        }
    };
    let previous = match obj.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.as_str()),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "previous_response_id",
                "`previous_response_id` must be a string",
            ))
        }
    };
    let mut history = match previous {
        Some(p) => match load(app, tenant, p).await? {
            Some(s) => s.messages,
            None => return Err(not_found(p, Some("previous_response_id"))),
        },
        None => Vec::new(),
    };
    match obj.get("input") {
        Some(Value::String(s)) => history.push(json!({ "role": "user", "content": s })),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut history)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "input",
                "`input` must be a string or a non-empty array of items",
            ))
        }
        None => return Err(missing("input")),
    }
    let instructions = match obj.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "instructions",
                "`instructions` must be a string",
            ))
        }
    };
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = &instructions {
        messages.push(json!({ "role": "system", "content": i }));
    }
    messages.extend(history.iter().cloned());
    let mut chat = Map::new();
    for field in [
        "model",
        "stream",
        "temperature",
        "top_p",
        "user",
        "metadata",
        "parallel_tool_calls",
    ] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.into(), v.clone());
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(n) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_tokens".into(), n.clone());
    }
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        chat.insert("tools".into(), function_tools(tools)?);
    }
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            chat.insert("tool_choice".into(), Value::from(s.as_str()));
        }
        Some(Value::Object(c)) if c.get("type") == Some(&json!("function")) => {
            chat.insert(
                "tool_choice".into(),
                json!({ "type": "function", "function": { "name": c.get("name") } }),
            );
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "tool_choice",
                "`tool_choice` must be auto, none, required or a function",
            ))
        }
    }
    match obj.get("text").map(|t| &t["format"]) {
        Some(f) if f["type"] == "json_schema" => {
            let mut schema = json!({ "name": f["name"], "schema": f["schema"] });
            if let Some(strict) = f.get("strict") {
                schema["strict"] = strict.clone();
            }
            chat.insert(
                "response_format".into(),
                json!({ "type": "json_schema", "json_schema": schema }),
            );
        }
        Some(f) if f["type"] == "json_object" => {
            chat.insert("response_format".into(), json!({ "type": "json_object" }));
        }
        _ => {}
    }
    let setting = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
    let template = json!({
        "id": id,
        "object": "response",
        "created_at": chrono::Utc::now().timestamp(),
        "status": "in_progress",
        "error": null,
        "incomplete_details": null,
        "instructions": instructions,
        "max_output_tokens": setting("max_output_tokens"),
        "model": setting("model"),
        "output": [],
        "parallel_tool_calls": obj.get("parallel_tool_calls").cloned().unwrap_or(Value::Bool(true)),
        "previous_response_id": previous,
        "store": store,
        "temperature": setting("temperature"),
        "text": obj.get("text").cloned().unwrap_or_else(|| json!({ "format": { "type": "text" } })),
        "tool_choice": obj.get("tool_choice").cloned().unwrap_or_else(|| json!("auto")),
        "tools": obj.get("tools").cloned().unwrap_or_else(|| json!([])),
        "top_p": setting("top_p"),
        "usage": null,
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    });
    let turn = Turn {
        tenant: tenant.to_owned(),
        store,
        history,
        template,
    };
    Ok((Value::Object(chat), turn))
}

/// The chat tools of Responses `tools` (function tools only).
fn function_tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(tools) = tools.as_array() else {
        return Err(ApiError::invalid_field("tools", "`tools` must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t["type"] != "function" || !t["name"].is_string() {
            return Err(ApiError::invalid_field(
                &format!("tools[{i}]"),
                "only function tools (`type: function`, `name`, `parameters`) are supported",
            ));
        }
        let mut function = json!({
            "name": t["name"],
            "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({ "type": "object" })),
        });
        for field in ["description", "strict"] {
            if let Some(v) = t.get(field).filter(|v| !v.is_null()) {
                function[field] = v.clone();
            }
        }
        out.push(json!({ "type": "function", "function": function }));
    }
    Ok(Value::Array(out))
}

/// Appends the chat messages of input item `i`.
fn input_item(i: usize, item: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let kind = match item["type"].as_str() {
        Some(k) => k,
        None if item.get("role").is_some() => "message",
        None => {
            return Err(ApiError::invalid_field(
                &format!("input[{i}]"),
                "each input item needs a `type` or a `role`",
            ))
        }
    };
    match kind {
        "message" => {
            let role = match item["role"].as_str() {
                Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
                _ => {
                    return Err(ApiError::invalid_field(
                        &format!("input[{i}].role"),
                        "a message needs a `role` of user, assistant, system or developer",
                    ))
                }
            };
            let content = match &item["content"] {
                Value::String(s) => Value::from(s.as_str()),
                Value::Array(parts) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        out.push(content_part(i, j, p)?);
                    }
                    if role == "user" {
                        Value::Array(out)
                    } else {
                        Value::from(content_text(&Value::Array(out)))
                    }
                }
                _ => {
                    return Err(ApiError::invalid_field(
                        &format!("input[{i}].content"),
                        "`content` must be a string or an array of parts",
                    ))
                }
            };
            out.push(json!({ "role": role, "content": content }));
        }
        "function_call" => {
            let call = json!({
                "id": item["call_id"],
                "type": "function",
                "function": { "name": item["name"], "arguments": item["arguments"].as_str().unwrap_or("{}") },
            });
            // Calls made together are one assistant turn.
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => {
                    out.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }))
                }
            }
        }
        "function_call_output" => {
            let output = match &item["output"] {
                Value::String(s) => s.clone(),
                other => content_text(other),
            };
            out.push(json!({ "role": "tool", "tool_call_id": item["call_id"], "content": output }));
        }
        // Reasoning of an earlier turn is not sent on: other models cannot read it.
        "reasoning" => {}
        other => {
            return Err(ApiError::invalid_field(
                &format!("input[{i}].type"),
                format!("input items of type `{other}` are not supported"),
            ))
        }
    }
    Ok(())
}

/// The chat content part of a Responses content part.
fn content_part(i: usize, j: usize, p: &Value) -> Result<Value, ApiError> {
    match p["type"].as_str() {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({ "type": "text", "text": p["text"].as_str().unwrap_or("") }))
        }
        Some("input_image") => match p["image_url"].as_str() {
            Some(url) => {
                let mut image = json!({ "url": url });
                if let Some(d) = p["detail"].as_str() {
                    image["detail"] = Value::from(d);
                }
                Ok(json!({ "type": "image_url", "image_url": image }))
            }
            None => Err(ApiError::invalid_field(
                &format!("input[{i}].content[{j}].image_url"),
                "an input image needs an `image_url` (a URL or a data: URL); file ids are not supported",
            )),
        },
        other => Err(ApiError::invalid_field(
            &format!("input[{i}].content[{j}].type"),
            format!(
                "content parts of type `{}` are not supported",
                other.unwrap_or("(missing)")
            ),
        )),
    }
}

/// A message output item.
fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{ "type": "output_text", "text": text, "annotations": [] }])
    } else {
        json!([])
    };
    json!({ "type": "message", "id": id, "status": status, "role": "assistant", "content": content })
}

/// A function call output item for an OpenAI tool call.
fn call_item(id: &str, call: &Value, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"].as_str().unwrap_or(""),
        "status": status,
    })
}

/// The Responses `usage` object.
fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": u.output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

impl Turn {
    /// The id of the response.
    fn id(&self) -> &str {
        self.template["id"].as_str().unwrap_or("")
    }

    /// The finished response object: `model` served, the output items, why it ended, usage.
    fn finished(&self, model: &str, output: Vec<Value>, finish: &str, usage: Usage) -> Value {
        let mut r = self.template.clone();
        r["model"] = Value::from(model);
        r["output"] = Value::Array(output);
        if finish == "length" {
            r["status"] = json!("incomplete");
            r["incomplete_details"] = json!({ "reason": "max_output_tokens" });
        } else if finish == "content_filter" {
            r["status"] = json!("incomplete");
            r["incomplete_details"] = json!({ "reason": "content_filter" });
        } else {
            r["status"] = json!("completed");
        }
        r["usage"] = usage_json(usage);
        r
    }

    /// The response object for an OpenAI chat completion (its `model` the model that served).
    pub fn response(&self, completion: &Value) -> Value {
        let choice = &completion["choices"][0];
        let msg = &choice["message"];
        let mut output = Vec::new();
        if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
            output.push(message_item(
                &item_id(self.id(), "msg", 0),
                text,
                "completed",
            ));
        }
        for (i, call) in msg["tool_calls"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            output.push(call_item(&item_id(self.id(), "fc", i), call, "completed"));
        }
        let usage = Usage {
            input_tokens: completion["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: completion["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or(0),
        };
        self.finished(
            completion["model"].as_str().unwrap_or(""),
            output,
            choice["finish_reason"].as_str().unwrap_or("stop"),
            usage,
        )
    }

    /// Keeps `response` (a finished response object) with the conversation it ends, when the
    /// request asked for it. A failure is logged: the client has its answer already.
    pub async fn save(&self, app: &App, response: &Value) {
        if !self.store {
            return;
        }
        let mut messages = self.history.clone();
        messages.push(assistant_message(response));
        let stored = Stored {
            tenant: self.tenant.clone(),
            response: response.clone(),
            messages,
        };
        let Ok(text) = serde_json::to_string(&stored) else {
            return;
        };
        let now = now_ms();
        let retention =
            i64::try_from(app.limits.response_retention.as_millis()).unwrap_or(i64::MAX);
        let expires = now.saturating_add(retention);
        if let Err(e) = app
            .state
            .put_expiring(NS, &key(&self.tenant, self.id()), &text, expires, now)
            .await
        {
            tracing::warn!(
                target: "llmgw::responses",
                response_id = self.id(),
                error = %e,
                "the response could not be stored; it cannot be continued or fetched"
            );
        }
    }
}

/// The id of output item `i` of kind `kind` (`msg`, `fc`) of response `response`.
fn item_id(response: &str, kind: &str, i: usize) -> String {
    let base = response.strip_prefix("resp_").unwrap_or(response);
    format!("{kind}_{base}_{i}")
}

/// The chat assistant message of a response's output (its text and function calls).
fn assistant_message(response: &Value) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in response["output"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match item["type"].as_str() {
            Some("message") => text.push_str(&content_text(&item["content"])),
            Some("function_call") => calls.push(json!({
                "id": item["call_id"],
                "type": "function",
                "function": { "name": item["name"], "arguments": item["arguments"] },
            })),
            _ => {}
        }
    }
    let mut msg = json!({ "role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::from(text) } });
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    msg
}

/// The output item being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// The message item at this output index.
    Text(usize),
    /// The function call item at this output index, of this OpenAI tool call index.
    Call(usize, u64),
}

/// A function call being streamed.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    call_id: Value,
    name: Value,
    arguments: String,
}

/// Writes the Responses stream: `response.created`, `response.in_progress`, each output item's
/// `response.output_item.added`, its content or argument deltas and `…done` events, then
/// `response.completed` (or `response.incomplete`) with the whole response; a broken stream
/// ends with an in-band `error` event. Every event carries its `sequence_number`.
#[derive(Debug)]
pub struct ResponsesStream {
    turn: Turn,
    model: String,
    seq: u64,
    started: bool,
    open: Option<Open>,
    /// Output items done, by output index.
    output: BTreeMap<usize, Value>,
    text: String,
    calls: BTreeMap<u64, Call>,
    finish: Option<String>,
    /// The response object of the completed stream.
    done: Option<Value>,
}

impl ResponsesStream {
    /// A writer of the response of `turn` by `model`.
    pub fn new(turn: Turn, model: &str) -> Self {
        ResponsesStream {
            turn,
            model: model.to_owned(),
            seq: 0,
            started: false,
            open: None,
            output: BTreeMap::new(),
            text: String::new(),
            calls: BTreeMap::new(),
            finish: None,
            done: None,
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, mut v: Value) {
        v["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        let kind = v["type"].as_str().unwrap_or("").to_owned();
        out.extend_from_slice(format!("event: {kind}\ndata: {v}\n\n").as_bytes());
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut r = self.turn.template.clone();
        r["model"] = Value::from(self.model.as_str());
        self.event(out, json!({ "type": "response.created", "response": r }));
        self.event(
            out,
            json!({ "type": "response.in_progress", "response": r }),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            Some(Open::Text(index)) => {
                let id = item_id(self.turn.id(), "msg", index);
                let text = std::mem::take(&mut self.text);
                let part = json!({ "type": "output_text", "text": text, "annotations": [] });
                self.event(
                    out,
                    json!({ "type": "response.output_text.done", "item_id": id,
                            "output_index": index, "content_index": 0, "text": text }),
                );
                self.event(
                    out,
                    json!({ "type": "response.content_part.done", "item_id": id,
                            "output_index": index, "content_index": 0, "part": part }),
                );
                let item = message_item(&id, &text, "completed");
                self.event(
                    out,
                    json!({ "type": "response.output_item.done", "output_index": index, "item": item }),
                );
                self.output.insert(index, item);
            }
            Some(Open::Call(index, call)) => {
                let Some(c) = self.calls.get(&call).cloned() else {
                    return;
                };
                self.event(
                    out,
                    json!({ "type": "response.function_call_arguments.done", "item_id": c.id,
                            "output_index": index, "arguments": c.arguments }),
                );
                let item = json!({ "type": "function_call", "id": c.id, "call_id": c.call_id,
                    "name": c.name, "arguments": c.arguments, "status": "completed" });
                self.event(
                    out,
                    json!({ "type": "response.output_item.done", "output_index": index, "item": item }),
                );
                self.output.insert(index, item);
            }
            None => {}
        }
    }

    fn next_index(&self) -> usize {
        self.output.len() + usize::from(self.open.is_some())
    }

    /// The events of one piece of the answer.
    pub fn delta(&mut self, d: &Delta) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        if let Some(text) = d.content.as_deref().filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some(Open::Text(i)) => i,
                _ => {
                    self.close(&mut out);
                    let index = self.next_index();
                    let id = item_id(self.turn.id(), "msg", index);
                    self.event(
                        &mut out,
                        json!({ "type": "response.output_item.added", "output_index": index,
                                "item": message_item(&id, "", "in_progress") }),
                    );
                    self.event(
                        &mut out,
                        json!({ "type": "response.content_part.added", "item_id": id,
                                "output_index": index, "content_index": 0,
                                "part": { "type": "output_text", "text": "", "annotations": [] } }),
                    );
                    self.open = Some(Open::Text(index));
                    index
                }
            };
            self.text.push_str(text);
            let id = item_id(self.turn.id(), "msg", index);
            self.event(
                &mut out,
                json!({ "type": "response.output_text.delta", "item_id": id,
                        "output_index": index, "content_index": 0, "delta": text }),
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
            let index = match self.open {
                Some(Open::Call(i, c)) if c == call => i,
                _ if self.calls.contains_key(&call) => continue,
                _ => {
                    self.close(&mut out);
                    let index = self.next_index();
                    let c = Call {
                        id: item_id(self.turn.id(), "fc", call as usize),
                        call_id: f["id"].clone(),
                        name: f["function"]["name"].clone(),
                        arguments: String::new(),
                    };
                    let item = json!({ "type": "function_call", "id": c.id, "call_id": c.call_id,
                        "name": c.name, "arguments": "", "status": "in_progress" });
                    self.calls.insert(call, c);
                    self.event(
                        &mut out,
                        json!({ "type": "response.output_item.added", "output_index": index, "item": item }),
                    );
                    self.open = Some(Open::Call(index, call));
                    index
                }
            };
            if let Some(args) = f["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                let Some(c) = self.calls.get_mut(&call) else {
                    continue;
                };
                c.arguments.push_str(args);
                let id = c.id.clone();
                self.event(
                    &mut out,
                    json!({ "type": "response.function_call_arguments.delta", "item_id": id,
                            "output_index": index, "delta": args }),
                );
            }
        }
        if let Some(f) = &d.finish_reason {
            self.finish = Some(f.clone());
        }
        Bytes::from(out)
    }

    /// The end of a complete answer: open items done, the cost comment, and
    /// `response.completed` (or `response.incomplete`) with the whole response.
    pub fn end(&mut self, usage: Usage, cost: &str) -> Bytes {
        let mut out = Vec::new();
        self.start(&mut out);
        self.close(&mut out);
        let output: Vec<Value> = std::mem::take(&mut self.output).into_values().collect();
        let finish = self.finish.as_deref().unwrap_or("stop");
        let response = self.turn.finished(&self.model, output, finish, usage);
        out.extend_from_slice(cost_comment(cost).as_bytes());
        let kind = if response["status"] == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(&mut out, json!({ "type": kind, "response": response }));
        self.done = Some(response);
        Bytes::from(out)
    }

    /// The in-band error that ends a broken stream.
    pub fn error(&mut self, message: &str) -> Bytes {
        let mut out = Vec::new();
        self.event(
            &mut out,
            json!({ "type": "error", "code": "stream_interrupted", "message": message, "param": null }),
        );
        Bytes::from(out)
    }

    /// The turn and the finished response, once the stream completed.
    pub fn finished(&self) -> Option<(&Turn, &Value)> {
        self.done.as_ref().map(|r| (&self.turn, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn() -> Turn {
        Turn {
            tenant: "t".into(),
            store: true,
            history: vec![json!({ "role": "user", "content": "hi" })],
            template: json!({ "id": "resp_1", "object": "response", "status": "in_progress",
                              "model": "m", "output": [] }),
        }
    }

    #[test]
    fn translates_input_items() {
        let mut out = Vec::new();
        let items = json!([
            { "role": "user", "content": [
                { "type": "input_text", "text": "What is this?" },
                { "type": "input_image", "image_url": "data:image/png;base64,AAAA" } ] },
            { "type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}" },
            { "type": "function_call", "call_id": "c2", "name": "look", "arguments": "{}" },
            { "type": "function_call_output", "call_id": "c1", "output": "a cat" },
        ]);
        for (i, item) in items.as_array().expect("array").iter().enumerate() {
            input_item(i, item, &mut out).expect("valid");
        }
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(out[1]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            out[2],
            json!({ "role": "tool", "tool_call_id": "c1", "content": "a cat" })
        );
        let e = input_item(0, &json!({ "type": "file_search_call" }), &mut out).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].type"));
        let e = function_tools(&json!([{ "type": "web_search" }])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0]"));
    }

    #[test]
    fn answers_and_remembers_in_responses_shape() {
        let completion = json!({ "model": "served", "choices": [{ "finish_reason": "tool_calls",
            "message": { "content": "Calling.", "tool_calls": [
                { "id": "c1", "type": "function", "function": { "name": "look", "arguments": "{\"x\":1}" } }] } }],
            "usage": { "prompt_tokens": 3, "completion_tokens": 4 } });
        let r = turn().response(&completion);
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "served");
        assert_eq!(r["output"][0]["content"][0]["text"], "Calling.");
        assert_eq!(r["output"][1]["call_id"], "c1");
        assert_eq!(r["usage"]["total_tokens"], 7);
        let m = assistant_message(&r);
        assert_eq!(m["content"], "Calling.");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
    }

    #[test]
    fn streams_responses_events_in_order() {
        let mut s = ResponsesStream::new(turn(), "m");
        let mut all = Vec::new();
        all.extend_from_slice(&s.delta(&Delta {
            content: Some("Hi ".into()),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.delta(&Delta {
            content: Some("there".into()),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.delta(&Delta {
            tool_calls: Some(json!([{ "index": 0, "id": "c1", "function": { "name": "look", "arguments": "{\"a\"" } }])),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.delta(&Delta {
            tool_calls: Some(json!([{ "index": 0, "function": { "arguments": ":1}" } }])),
            finish_reason: Some("tool_calls".into()),
            ..Delta::default()
        }));
        all.extend_from_slice(&s.end(
            Usage {
                input_tokens: 2,
                output_tokens: 3,
            },
            "0",
        ));
        let text = String::from_utf8(all).expect("utf-8");
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| e["sequence_number"].as_u64())
            .collect();
        assert_eq!(seqs, (0..15).collect::<Vec<_>>());
        let done = events.last().expect("completed");
        assert_eq!(
            done["response"]["output"][0]["content"][0]["text"],
            "Hi there"
        );
        assert_eq!(done["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["response"]["output"][1]["output_index"], Value::Null);
        assert_eq!(done["response"]["usage"]["output_tokens"], 3);
        assert!(s.finished().is_some());
    }
}

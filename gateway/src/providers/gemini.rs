//! Google Gemini: translation of OpenAI chat requests to `generateContent` /
//! `streamGenerateContent` (system instruction, images, function calling, prefill) and of
//! embeddings to `batchEmbedContents`; answers and stream chunks back to OpenAI's shape.

use crate::providers::anthropic::parse_data_url;
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

/// Where Gemini's API is when the policy names no `base_url`.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// A Gemini provider. The key goes in the `x-goog-api-key` header, never in the URL.
pub struct Gemini {
    conn: Connection,
}

impl Gemini {
    /// The adapter of a policy provider of type `gemini`, with its resolved key.
    pub fn new(provider: &model::Provider, key: Option<Result<Secret, SecretError>>) -> Self {
        Gemini {
            conn: Connection::new(provider, key, Some(GEMINI_BASE_URL)),
        }
    }

    /// The connection (client, base URL, key, timeouts).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sends `req`, translated, to the model `{models_url}/{model}` with `headers` (the
    /// authentication) and translates the answer back: the one exchange of every API that
    /// speaks Gemini's `generateContent` (Google AI and Vertex AI).
    pub async fn exchange(
        &self,
        models_url: &str,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        req: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        http::traceparent(req, &mut headers);
        let model = req.upstream_model.trim_start_matches("models/");
        let (action, body) = match req.endpoint {
            Endpoint::Embeddings => ("batchEmbedContents", to_embed(req.body, model)),
            Endpoint::Chat if req.stream => (
                "streamGenerateContent?alt=sse",
                to_generate(req.body, req.prefill),
            ),
            Endpoint::Chat => ("generateContent", to_generate(req.body, req.prefill)),
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let first = Duration::from_millis(self.conn.timeouts.first_token_ms);
        let url = http::join(models_url, &format!("{model}:{action}"));
        let resp = http::post(&self.conn.client, &url, headers, body, first).await?;
        if !resp.status().is_success() {
            return Err(http::error_from(resp).await);
        }
        if req.stream && req.endpoint == Endpoint::Chat {
            return Ok(UpstreamResponse::Stream(http::spawn_sse(
                resp,
                GeminiStream::default(),
            )));
        }
        let answer =
            http::read_json(resp, Duration::from_millis(self.conn.timeouts.total_ms)).await?;
        let (body, usage) = match req.endpoint {
            Endpoint::Embeddings => from_embed(&answer, req.body, req.upstream_model),
            Endpoint::Chat => from_generate(&answer, req.upstream_model)?,
        };
        Ok(UpstreamResponse::Full(FullResponse { body, usage }))
    }
}

impl Provider for Gemini {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let mut headers = Vec::new();
            if let Some(key) = &self.conn.key {
                let key = http::key_or_error(key)?;
                if let Some(v) = http::sensitive(key.expose()) {
                    headers.push((HeaderName::from_static("x-goog-api-key"), v));
                }
            }
            let models = http::join(self.conn.base(), "models");
            self.exchange(&models, headers, &req).await
        })
    }
}

fn parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) if s.is_empty() => vec![],
        Value::String(s) => vec![json!({ "text": s })],
        Value::Array(items) => items
            .iter()
            .filter_map(|p| match p["type"].as_str() {
                Some("text") => Some(json!({ "text": p["text"].as_str().unwrap_or("") })),
                Some("image_url") => {
                    let url = p["image_url"]["url"]
                        .as_str()
                        .or_else(|| p["image_url"].as_str())?;
                    Some(match parse_data_url(url) {
                        Some((mime, data)) => {
                            json!({ "inlineData": { "mimeType": mime, "data": data } })
                        }
                        None => {
                            json!({ "fileData": { "mimeType": guess_mime(url), "fileUri": url } })
                        }
                    })
                }
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

fn guess_mime(url: &str) -> &'static str {
    let lower = url.to_ascii_lowercase();
    if lower.ends_with(".png") {
        "image/png"
    } else if lower.ends_with(".webp") {
        "image/webp"
    } else if lower.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

fn push(contents: &mut Vec<Value>, role: &str, mut new: Vec<Value>) {
    if new.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut() {
        if last["role"] == role {
            if let Some(arr) = last["parts"].as_array_mut() {
                arr.append(&mut new);
                return;
            }
        }
    }
    contents.push(json!({ "role": role, "parts": new }));
}

/// The `generateContent` request for an OpenAI chat request.
pub fn to_generate(body: &Value, prefill: Option<&str>) -> Value {
    let mut system = Vec::new();
    let mut contents = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for m in body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match m["role"].as_str().unwrap_or("") {
            "system" | "developer" => system.push(json!({ "text": content_text(&m["content"]) })),
            "assistant" => {
                let mut p = parts(&m["content"]);
                for call in m["tool_calls"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    let name = call["function"]["name"].as_str().unwrap_or("").to_owned();
                    if let Some(id) = call["id"].as_str() {
                        call_names.insert(id.to_owned(), name.clone());
                    }
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    p.push(json!({ "functionCall": { "name": name, "args": args } }));
                }
                push(&mut contents, "model", p);
            }
            "tool" | "function" => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                let name = call_names
                    .get(id)
                    .cloned()
                    .or_else(|| m["name"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let text = content_text(&m["content"]);
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({ "content": text }));
                push(
                    &mut contents,
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": response } })],
                );
            }
            _ => push(&mut contents, "user", parts(&m["content"])),
        }
    }
    if let Some(p) = prefill.filter(|p| !p.is_empty()) {
        push(&mut contents, "model", vec![json!({ "text": p })]);
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let mut config = Map::new();
    if let Some(n) = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64())
    {
        config.insert("maxOutputTokens".into(), Value::from(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| v.is_number()) {
            config.insert(to.into(), v.clone());
        }
    }
    match &body["stop"] {
        Value::String(s) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Value::Array(a) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(tools) = body["tools"].as_array().filter(|t| !t.is_empty()) {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut d = json!({ "name": f["name"] });
                if let Some(desc) = f["description"].as_str() {
                    d["description"] = Value::from(desc);
                }
                if let Some(p) = f.get("parameters") {
                    d["parameters"] = p.clone();
                }
                d
            })
            .collect();
        out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
        let mode = match &body["tool_choice"] {
            Value::String(s) if s == "required" => Some(json!({ "mode": "ANY" })),
            Value::String(s) if s == "none" => Some(json!({ "mode": "NONE" })),
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f["name"].as_str())
                .map(|n| json!({ "mode": "ANY", "allowedFunctionNames": [n] })),
            _ => None,
        };
        if let Some(m) = mode {
            out.insert("toolConfig".into(), json!({ "functionCallingConfig": m }));
        }
    }
    Value::Object(out)
}

fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        _ if has_calls => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ => "stop",
    }
}

fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    Usage {
        input_tokens: n("promptTokenCount"),
        output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
    }
}

fn blocked(answer: &Value) -> Option<UpstreamError> {
    let reason = answer["promptFeedback"]["blockReason"].as_str()?;
    let mut e = UpstreamError::new(
        ErrorClass::ContentFilter,
        format!("the provider blocked the prompt ({reason})"),
    )
    .with_status(400);
    e.code = Some("content_filter".to_owned());
    Some(e)
}

/// An OpenAI chat completion for a `generateContent` answer.
pub fn from_generate(answer: &Value, model: &str) -> Result<(Value, Usage), UpstreamError> {
    if let Some(e) = blocked(answer) {
        return Err(e);
    }
    let candidate = &answer["candidates"][0];
    let mut text = String::new();
    let mut calls = Vec::new();
    for (i, part) in candidate["content"]["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        if part["thought"].as_bool() == Some(true) {
            continue;
        }
        if let Some(t) = part["text"].as_str() {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            calls.push(json!({
                "id": format!("call_{i}"),
                "type": "function",
                "function": { "name": call["name"], "arguments": call["args"].to_string() },
            }));
        }
    }
    let usage = usage_of(&answer["usageMetadata"]);
    let finish = finish_reason(
        candidate["finishReason"].as_str().unwrap_or("STOP"),
        !calls.is_empty(),
    );
    let mut message = json!({ "role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) } });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let id = answer["responseId"].as_str().map_or_else(
        || "chatcmpl-gemini".to_owned(),
        |id| format!("chatcmpl-{id}"),
    );
    let body = chat_completion(&id, model, message, finish, usage);
    Ok((body, usage))
}

fn embed_inputs(body: &Value) -> Vec<String> {
    match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// The `batchEmbedContents` request for an OpenAI embeddings request.
pub fn to_embed(body: &Value, model: &str) -> Value {
    let requests: Vec<Value> = embed_inputs(body)
        .into_iter()
        .map(|text| json!({ "model": format!("models/{model}"), "content": { "parts": [{ "text": text }] } }))
        .collect();
    json!({ "requests": requests })
}

/// An OpenAI embeddings list for a `batchEmbedContents` answer (Gemini reports no token
/// counts for embeddings: they are estimated from the input).
pub fn from_embed(answer: &Value, request: &Value, model: &str) -> (Value, Usage) {
    let data: Vec<Value> = answer["embeddings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e["values"] }))
        .collect();
    let chars: usize = embed_inputs(request).iter().map(String::len).sum();
    let tokens = crate::wire::estimate_tokens(chars);
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    });
    (
        body,
        Usage {
            input_tokens: tokens,
            output_tokens: 0,
        },
    )
}

/// Translates `streamGenerateContent?alt=sse` chunks.
#[derive(Debug, Default)]
pub struct GeminiStream {
    finished: bool,
    calls: u64,
}

impl StreamTranslator for GeminiStream {
    fn event(&mut self, event: SseEvent) -> Result<Vec<StreamEvent>, UpstreamError> {
        if event.data.trim().is_empty() {
            return Ok(vec![]);
        }
        let v: Value = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(e) => return Ok(vec![http::malformed(&e)]),
        };
        if let Some(err) = v.get("error") {
            let status = err["code"].as_u64().unwrap_or(500) as u16;
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            return Err(UpstreamError::from_status(status, &bytes, None));
        }
        if let Some(e) = blocked(&v) {
            return Err(e);
        }
        let mut out = Vec::new();
        let candidate = &v["candidates"][0];
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in candidate["content"]["parts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if part["thought"].as_bool() == Some(true) {
                continue;
            }
            if let Some(t) = part["text"].as_str() {
                text.push_str(t);
            }
            if let Some(call) = part.get("functionCall") {
                calls.push(json!({
                    "index": self.calls,
                    "id": format!("call_{}", self.calls),
                    "type": "function",
                    "function": { "name": call["name"], "arguments": call["args"].to_string() },
                }));
                self.calls += 1;
            }
        }
        let finish = candidate["finishReason"]
            .as_str()
            .map(|r| finish_reason(r, self.calls > 0).to_owned());
        self.finished |= finish.is_some();
        if !text.is_empty() || !calls.is_empty() || finish.is_some() {
            out.push(StreamEvent::Delta(Delta {
                content: (!text.is_empty()).then_some(text),
                tool_calls: (!calls.is_empty()).then_some(Value::Array(calls)),
                finish_reason: finish,
            }));
        }
        if v["usageMetadata"].is_object() {
            out.push(StreamEvent::Usage(usage_of(&v["usageMetadata"])));
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

    #[test]
    fn translates_requests() {
        let body = json!({
            "max_tokens": 50,
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": "Weather?" },
                { "role": "assistant", "tool_calls": [
                    { "id": "c1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Oslo\"}" } },
                ]},
                { "role": "tool", "tool_call_id": "c1", "content": "{\"temp\":3}" },
            ],
            "tools": [{ "type": "function", "function": { "name": "weather", "parameters": { "type": "object" } } }],
        });
        let out = to_generate(&body, Some("It is"));
        assert_eq!(out["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(out["generationConfig"]["maxOutputTokens"], 50);
        let c = out["contents"].as_array().expect("contents");
        assert_eq!(
            c[1]["parts"][0]["functionCall"]["args"],
            json!({ "city": "Oslo" })
        );
        assert_eq!(c[2]["parts"][0]["functionResponse"]["name"], "weather");
        assert_eq!(
            c[2]["parts"][0]["functionResponse"]["response"],
            json!({ "temp": 3 })
        );
        assert_eq!(
            c[3],
            json!({ "role": "model", "parts": [{ "text": "It is" }] })
        );
        assert_eq!(
            out["tools"][0]["functionDeclarations"][0]["name"],
            "weather"
        );
    }

    #[test]
    fn translates_answers_and_blocks() {
        let answer = json!({
            "candidates": [{ "content": { "parts": [{ "text": "Hello" }] }, "finishReason": "MAX_TOKENS" }],
            "usageMetadata": { "promptTokenCount": 4, "candidatesTokenCount": 2 },
        });
        let (body, usage) = from_generate(&answer, "gemini").expect("answer");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(
            usage,
            Usage {
                input_tokens: 4,
                output_tokens: 2
            }
        );
        let blocked = json!({ "promptFeedback": { "blockReason": "SAFETY" } });
        assert_eq!(
            from_generate(&blocked, "g").unwrap_err().class,
            ErrorClass::ContentFilter
        );
    }

    #[test]
    fn translates_stream_chunks() {
        let mut t = GeminiStream::default();
        let ev = |v: Value| SseEvent {
            event: None,
            data: v.to_string(),
        };
        let out = t
            .event(ev(
                json!({ "candidates": [{ "content": { "parts": [{ "text": "Hi" }] } }] }),
            ))
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
            .event(ev(json!({
                "candidates": [{ "content": { "parts": [{ "text": "!" }] }, "finishReason": "STOP" }],
                "usageMetadata": { "promptTokenCount": 3, "candidatesTokenCount": 2 },
            })))
            .expect("ok");
        assert_eq!(out.len(), 2);
        assert_eq!(t.end().expect("done"), vec![StreamEvent::Done]);
    }
}

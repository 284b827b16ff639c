//! A cached answer, in one form for both ways of serving it: a chat answer is kept as its
//! parts (text, tool calls, finish reason, usage) so that it can be written as a
//! `chat.completion` JSON body or replayed as OpenAI's SSE chunks, whichever way it was
//! produced; an embeddings answer is kept as the body sent.

use crate::upstream::{Delta, Usage};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// A complete answer and who produced it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The logical model that produced it.
    pub model: Arc<str>,
    /// The provider that produced it.
    pub provider: Arc<str>,
    /// Its tokens (reported in the replayed body; a hit costs nothing).
    pub usage: Usage,
    /// What it says.
    pub body: Body,
}

/// What an answer says.
#[derive(Debug, Clone)]
pub enum Body {
    /// A chat completion with one choice.
    Chat(Chat),
    /// An embeddings list, as sent to the client.
    Embeddings(Bytes),
}

/// The one choice of a chat completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// The assistant's text.
    pub content: Option<String>,
    /// Complete tool calls in OpenAI's message shape (`id`, `type`, `function`).
    pub tool_calls: Vec<Value>,
    /// Why it ended.
    pub finish_reason: String,
}

impl Chat {
    /// The choice of a `chat.completion` body; `None` unless it is one complete choice
    /// (a content filter's ending or a refusal is not kept).
    pub fn from_completion(body: &Value) -> Option<Chat> {
        let choices = body.get("choices")?.as_array()?;
        let [choice] = choices.as_slice() else {
            return None;
        };
        let finish_reason = choice.get("finish_reason")?.as_str()?.to_owned();
        if finish_reason == "content_filter" {
            return None;
        }
        let message = choice.get("message")?;
        if message
            .get("refusal")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty())
        {
            return None;
        }
        let content = match message.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return None,
        };
        let tool_calls = match message.get("tool_calls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(calls)) => calls
                .iter()
                .map(|c| {
                    let mut c = c.as_object()?.clone();
                    c.remove("index");
                    Some(Value::Object(c))
                })
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        Some(Chat {
            content,
            tool_calls,
            finish_reason,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.content.as_ref().map_or(0, String::len)
            + self.finish_reason.len()
            + self
                .tool_calls
                .iter()
                .map(|c| c.to_string().len())
                .sum::<usize>()
    }

    /// A `chat.completion` body.
    pub fn completion(&self, id: &str, created: u64, model: &str, usage: Usage) -> Bytes {
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert(
            "content".into(),
            self.content.clone().map_or(Value::Null, Value::String),
        );
        if !self.tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(self.tool_calls.clone()));
        }
        message.insert("refusal".into(), Value::Null);
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": usage_json(usage),
        });
        Bytes::from(body.to_string())
    }

    /// The answer as the deltas of a stream: its text in pieces, each tool call whole, the
    /// finish reason.
    pub fn deltas(&self) -> Vec<Delta> {
        let mut out: Vec<Delta> = self
            .content
            .as_deref()
            .map(pieces)
            .unwrap_or_default()
            .into_iter()
            .map(|piece| Delta {
                content: Some(piece.to_owned()),
                ..Delta::default()
            })
            .collect();
        for (i, call) in self.tool_calls.iter().enumerate() {
            let mut call = call.as_object().cloned().unwrap_or_default();
            call.insert("index".into(), i.into());
            out.push(Delta {
                tool_calls: Some(Value::Array(vec![Value::Object(call)])),
                ..Delta::default()
            });
        }
        out.push(Delta {
            finish_reason: Some(self.finish_reason.clone()),
            ..Delta::default()
        });
        out
    }

    /// The answer as OpenAI's stream: a role chunk, content chunks, tool calls, the finish
    /// reason, the usage chunk when asked for, the cost comment and `[DONE]`.
    pub fn stream(
        &self,
        id: &str,
        created: u64,
        model: &str,
        usage: Usage,
        include_usage: bool,
    ) -> Bytes {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            })
        };
        let mut out = String::new();
        let mut event = |v: Value| {
            let _ = write!(out, "data: {v}\n\n");
        };
        event(chunk(json!({ "role": "assistant", "content": "" }), None));
        if let Some(text) = &self.content {
            for piece in pieces(text) {
                event(chunk(json!({ "content": piece }), None));
            }
        }
        for (i, call) in self.tool_calls.iter().enumerate() {
            let mut call = call.as_object().cloned().unwrap_or_default();
            call.insert("index".into(), i.into());
            event(chunk(json!({ "tool_calls": [call] }), None));
        }
        event(chunk(json!({}), Some(&self.finish_reason)));
        if include_usage {
            event(json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage_json(usage),
            }));
        }
        out.push_str(": x-llmgw-cost-usd=0\n\n");
        out.push_str("data: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// OpenAI's `usage` object.
fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// The text cut into stream pieces of a few words (each ending after whitespace, at least
/// 16 bytes unless it is the last).
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        if c.is_whitespace() && end - start >= 16 {
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Assembles a streamed answer from its deltas, to be stored once it is complete.
#[derive(Debug)]
pub struct StreamCapture {
    content: Option<String>,
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    finish_reason: Option<String>,
    bytes: usize,
    limit: usize,
}

impl StreamCapture {
    /// A capture that gives up past `limit` bytes.
    pub fn new(limit: usize) -> Self {
        StreamCapture {
            content: None,
            tool_calls: BTreeMap::new(),
            finish_reason: None,
            bytes: 0,
            limit,
        }
    }

    /// Adds a delta as it is sent to the client.
    pub fn push(&mut self, d: &Delta) {
        if self.bytes > self.limit {
            return;
        }
        if let Some(c) = &d.content {
            self.bytes += c.len();
            self.content.get_or_insert_with(String::new).push_str(c);
        }
        if let Some(Value::Array(fragments)) = &d.tool_calls {
            for f in fragments {
                self.tool_fragment(f);
            }
        }
        if let Some(f) = &d.finish_reason {
            self.finish_reason = Some(f.clone());
        }
    }

    /// Merges one `delta.tool_calls` item: the first fragment of a call names it, later ones
    /// carry pieces of its arguments.
    fn tool_fragment(&mut self, f: &Value) {
        let index = f.get("index").and_then(Value::as_u64).unwrap_or(0);
        let call = self.tool_calls.entry(index).or_insert_with(|| {
            let mut m = Map::new();
            m.insert("id".into(), Value::Null);
            m.insert("type".into(), "function".into());
            m.insert("function".into(), json!({ "name": "", "arguments": "" }));
            m
        });
        if let Some(id) = f.get("id").and_then(Value::as_str) {
            call.insert("id".into(), id.into());
        }
        if let Some(t) = f.get("type").and_then(Value::as_str) {
            call.insert("type".into(), t.into());
        }
        let Some(func) = f.get("function") else {
            return;
        };
        for field in ["name", "arguments"] {
            if let Some(piece) = func.get(field).and_then(Value::as_str) {
                self.bytes += piece.len();
                if let Some(Value::String(s)) =
                    call.get_mut("function").and_then(|f| f.get_mut(field))
                {
                    s.push_str(piece);
                }
            }
        }
    }

    /// The complete answer; `None` when it did not end with a finish reason (or a content
    /// filter ended it), or it grew past the limit.
    pub fn finish(self) -> Option<Chat> {
        let finish_reason = self.finish_reason?;
        if finish_reason == "content_filter" || self.bytes > self.limit {
            return None;
        }
        Some(Chat {
            content: self.content,
            tool_calls: self.tool_calls.into_values().map(Value::Object).collect(),
            finish_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sse: &[u8]) -> Vec<Value> {
        std::str::from_utf8(sse)
            .expect("utf-8")
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect()
    }

    #[test]
    fn a_streamed_answer_is_replayed_as_the_same_chunks_and_as_json() {
        let mut cap = StreamCapture::new(1 << 20);
        let text = "The quick brown fox jumps over the lazy dog, twice.";
        for w in text.split_inclusive(' ') {
            cap.push(&Delta {
                content: Some(w.into()),
                ..Delta::default()
            });
        }
        cap.push(&Delta {
            finish_reason: Some("stop".into()),
            ..Delta::default()
        });
        let chat = cap.finish().expect("complete");
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 11,
        };
        let sse = chat.stream("id-1", 7, "m", usage, true);
        let s = std::str::from_utf8(&sse).expect("utf-8");
        assert!(
            s.ends_with(": x-llmgw-cost-usd=0\n\ndata: [DONE]\n\n"),
            "{s}"
        );
        let ev = events(&sse);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        let replayed: String = ev
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(replayed, text);
        let finish = &ev[ev.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let last = ev.last().expect("usage");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 14);
        assert!(ev.iter().all(|e| e["model"] == "m" && e["id"] == "id-1"));
        let no_usage = events(&chat.stream("id-1", 7, "m", usage, false));
        assert!(no_usage.iter().all(|e| e.get("usage").is_none()));

        let body: Value =
            serde_json::from_slice(&chat.completion("id-2", 8, "m", usage)).expect("json");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], text);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["completion_tokens"], 11);
        assert_eq!(Chat::from_completion(&body), Some(chat));
    }

    #[test]
    fn streamed_tool_calls_are_assembled_and_replayed_whole() {
        let mut cap = StreamCapture::new(1 << 20);
        let frag = |v: Value| Delta {
            tool_calls: Some(v),
            ..Delta::default()
        };
        cap.push(&frag(
            json!([{ "index": 0, "id": "call_1", "type": "function",
            "function": { "name": "lookup", "arguments": "" } }]),
        ));
        cap.push(&frag(
            json!([{ "index": 0, "function": { "arguments": "{\"q\":" } }]),
        ));
        cap.push(&frag(
            json!([{ "index": 0, "function": { "arguments": "\"x\"}" } }]),
        ));
        cap.push(&Delta {
            finish_reason: Some("tool_calls".into()),
            ..Delta::default()
        });
        let chat = cap.finish().expect("complete");
        assert_eq!(chat.content, None);
        assert_eq!(
            chat.tool_calls,
            vec![json!({ "id": "call_1", "type": "function",
                "function": { "name": "lookup", "arguments": "{\"q\":\"x\"}" } })]
        );
        let ev = events(&chat.stream("i", 1, "m", Usage::default(), false));
        let call = &ev[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert_eq!(call["function"]["arguments"], "{\"q\":\"x\"}");
    }

    #[test]
    fn an_unfinished_or_filtered_answer_is_not_kept() {
        let mut cap = StreamCapture::new(1 << 20);
        cap.push(&Delta {
            content: Some("partial".into()),
            ..Delta::default()
        });
        assert!(cap.finish().is_none());
        let mut big = StreamCapture::new(4);
        big.push(&Delta {
            content: Some("too long".into()),
            finish_reason: Some("stop".into()),
            ..Delta::default()
        });
        assert!(big.finish().is_none());
        let filtered = json!({ "choices": [{ "message": { "content": "" },
            "finish_reason": "content_filter" }] });
        assert!(Chat::from_completion(&filtered).is_none());
        let two = json!({ "choices": [
            { "message": { "content": "a" }, "finish_reason": "stop" },
            { "message": { "content": "b" }, "finish_reason": "stop" }] });
        assert!(Chat::from_completion(&two).is_none());
    }
}

//! The OpenAI chat completions front door's stream: `chat.completion.chunk` events.

use super::cost_comment;
use crate::upstream::{Delta, Usage};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

/// Writes OpenAI chat completion chunks.
pub struct ChatStream {
    id: String,
    created: u64,
    model: Arc<str>,
    role_sent: bool,
}

impl ChatStream {
    /// A writer of the chunks of completion `id`, created at `created` (seconds), by `model`.
    pub fn new(id: String, created: u64, model: Arc<str>) -> Self {
        ChatStream {
            id,
            created,
            model,
            role_sent: false,
        }
    }

    /// The model named by the chunks written from now on (after a resume elsewhere).
    pub fn set_model(&mut self, model: Arc<str>) {
        self.model = model;
    }

    fn event(value: &Value) -> Bytes {
        Bytes::from(format!("data: {value}\n\n"))
    }

    /// One chunk, written by hand: this runs once per streamed token.
    pub fn delta(&mut self, d: &Delta) -> Bytes {
        let mut out = Vec::with_capacity(192 + d.content.as_ref().map_or(0, String::len));
        out.extend_from_slice(b"data: {\"id\":");
        json_str(&mut out, &self.id);
        out.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        out.extend_from_slice(self.created.to_string().as_bytes());
        out.extend_from_slice(b",\"model\":");
        json_str(&mut out, &self.model);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, name: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(name);
        };
        if !self.role_sent {
            field(&mut out, b"\"role\":\"assistant\"");
            self.role_sent = true;
        }
        if let Some(c) = &d.content {
            field(&mut out, b"\"content\":");
            json_str(&mut out, c);
        }
        if let Some(t) = &d.tool_calls {
            field(&mut out, b"\"tool_calls\":");
            let _ = serde_json::to_writer(&mut out, t);
        }
        out.extend_from_slice(b"},\"finish_reason\":");
        match &d.finish_reason {
            Some(f) => json_str(&mut out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
        Bytes::from(out)
    }

    /// The end of a complete answer: the usage chunk when the client asked for it (`include`),
    /// the cost comment and `[DONE]`.
    pub fn end(&self, usage: Usage, include: bool, cost: &str) -> Bytes {
        let mut out = Vec::new();
        if include {
            out.extend_from_slice(&self.usage(usage));
        }
        out.extend_from_slice(cost_comment(cost).as_bytes());
        out.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(out)
    }

    fn usage(&self, u: Usage) -> Bytes {
        ChatStream::event(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": &*self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": u.input_tokens,
                "completion_tokens": u.output_tokens,
                "total_tokens": u.input_tokens + u.output_tokens,
            },
        }))
    }

    /// The in-band error that ends a broken stream (no `[DONE]` follows).
    pub fn error(message: &str) -> Bytes {
        let body = json!({ "error": {
            "message": message,
            "type": "server_error",
            "code": "stream_interrupted",
            "param": null,
        }});
        Bytes::from(format!("event: error\ndata: {body}\n\n"))
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_openai_json() {
        let mut out = ChatStream::new("chatcmpl-1".into(), 7, "m\"x".into());
        let d = Delta {
            content: Some("a \"quoted\"\nline".into()),
            tool_calls: Some(json!([{ "index": 0 }])),
            finish_reason: None,
        };
        let first = out.delta(&d);
        let text = std::str::from_utf8(&first).expect("utf-8");
        let v: Value = serde_json::from_str(text.strip_prefix("data: ").expect("data").trim_end())
            .expect("json");
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v["choices"][0]["delta"]["content"], "a \"quoted\"\nline");
        assert_eq!(v["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert!(v["choices"][0]["finish_reason"].is_null());
        let last = out.delta(&Delta {
            finish_reason: Some("stop".into()),
            ..Delta::default()
        });
        let v: Value =
            serde_json::from_str(std::str::from_utf8(&last).expect("utf-8")[6..].trim_end())
                .expect("json");
        assert_eq!(v["choices"][0]["delta"], json!({}));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

//! What makes two requests the same question: a digest of the tenant, the endpoint and the
//! normalised request, and for near-duplicate matching the bucket of requests that differ only
//! in their prompt text, with that text normalised.
//!
//! The digest covers every field that can change the answer (model, messages or input, tools,
//! tool choice, temperature, top_p, max_tokens, response format, seed, stop, penalties, …) and
//! leaves out those that cannot: `stream`, `stream_options`, `user`, `metadata`, `store` and
//! `service_tier`. Normalisation only removes differences of spelling that mean the same
//! request: JSON key order and whitespace, `1` versus `1.0`, `max_completion_tokens` versus
//! `max_tokens`, and a content array holding a single text part versus a plain string.

use crate::wire::ClientRequest;
use llmgw_engine::input::Endpoint;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest naming a cached answer (or a near-duplicate bucket).
pub type Digest = [u8; 32];

/// Top-level fields that do not change the answer.
const IGNORED: [&str; 6] = [
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
];

/// Longest prompt, in characters, that near-duplicate matching compares; longer prompts are
/// matched exactly only (two long documents sharing a prefix must not look alike).
pub const MAX_NEAR_CHARS: usize = 16_384;

/// Whether an answer to this request can be cached and replayed in both JSON and SSE: one
/// choice, no log probabilities.
pub fn cacheable(request: &ClientRequest) -> bool {
    if request.facts.endpoint == Endpoint::Embeddings {
        return true;
    }
    let obj = match request.body.as_object() {
        Some(o) => o,
        None => return false,
    };
    let n_is_one = match obj.get("n") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_f64() == Some(1.0),
    };
    let logprobs = obj
        .get("logprobs")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    n_is_one && !logprobs
}

/// The digest of a request of `tenant`: the key of its cached answer.
pub fn digest(tenant: &str, request: &ClientRequest) -> Digest {
    let mut h = Canonical::new(b"llmgw-cache-exact-v1", tenant, request.facts.endpoint);
    h.body(&request.body, Part::Whole);
    h.finish()
}

/// For a chat request ending in a plain-text user turn: the digest of its near-duplicate
/// bucket (everything but the text of that final turn: model, parameters, system prompt and
/// every earlier message, compared exactly) and that final turn as the client wrote it (text
/// parts joined by a space). `None` for other requests (embeddings, a final turn that is not
/// the user's, images, very long prompts), which match exactly only.
pub fn near(tenant: &str, request: &ClientRequest) -> Option<(Digest, String)> {
    if request.facts.endpoint != Endpoint::Chat {
        return None;
    }
    let last = request
        .body
        .get("messages")?
        .as_array()?
        .last()?
        .as_object()?;
    if last.keys().any(|k| k != "role" && k != "content") || last.get("role")? != "user" {
        return None;
    }
    let text = match last.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                texts.push(p.get("text")?.as_str()?);
            }
            texts.join(" ")
        }
        _ => return None,
    };
    if text.len() > MAX_NEAR_CHARS * 4 || text.chars().count() > MAX_NEAR_CHARS {
        return None;
    }
    let mut h = Canonical::new(b"llmgw-cache-near-v2", tenant, request.facts.endpoint);
    h.body(&request.body, Part::AllButPrompt);
    Some((h.finish(), text))
}

/// A prompt lowercased, with runs of whitespace written as one space: the text the lexical
/// vector is made of.
pub fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Which part of the body a digest covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Every field that can change the answer.
    Whole,
    /// The same, with the content of the final message left out.
    AllButPrompt,
}

/// A canonical, unambiguous encoding of JSON fed into SHA-256: type tags and lengths, object
/// keys sorted, numbers in one spelling.
struct Canonical(Sha256);

impl Canonical {
    fn new(domain: &[u8], tenant: &str, endpoint: Endpoint) -> Self {
        let mut c = Canonical(Sha256::new());
        c.0.update(domain);
        c.str(tenant);
        c.str(endpoint.as_str());
        c
    }

    fn finish(self) -> Digest {
        self.0.finalize().into()
    }

    fn len(&mut self, n: usize) {
        self.0.update((n as u64).to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.0.update(b"s");
        self.len(s.len());
        self.0.update(s.as_bytes());
    }

    fn body(&mut self, body: &Value, part: Part) {
        let Some(obj) = body.as_object() else {
            self.value(body);
            return;
        };
        let mut fields: Vec<(&str, &Value)> = obj
            .iter()
            .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
            .map(|(k, v)| match k.as_str() {
                "max_completion_tokens" => ("max_tokens", v),
                k => (k, v),
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        self.0.update(b"{");
        self.len(fields.len());
        for (k, v) in fields {
            self.str(k);
            match (k, part) {
                ("messages", Part::AllButPrompt) => self.prefix(v),
                ("messages", Part::Whole) => self.messages(v),
                _ => self.value(v),
            }
        }
    }

    /// Messages with a content array of one text part spelled as a string.
    fn messages(&mut self, messages: &Value) {
        match messages.as_array() {
            Some(list) => self.message_list(list),
            None => self.value(messages),
        }
    }

    fn message_list(&mut self, list: &[Value]) {
        self.0.update(b"[");
        self.len(list.len());
        for m in list {
            let single_text = m
                .get("content")
                .and_then(Value::as_array)
                .filter(|parts| parts.len() == 1)
                .and_then(|parts| {
                    let p = parts[0].as_object()?;
                    (p.len() == 2 && p.get("type")?.as_str()? == "text")
                        .then(|| p.get("text")?.as_str())
                        .flatten()
                });
            match (m.as_object(), single_text) {
                (Some(obj), Some(text)) => {
                    let mut keys: Vec<&String> = obj.keys().collect();
                    keys.sort();
                    self.0.update(b"{");
                    self.len(keys.len());
                    for k in keys {
                        self.str(k);
                        if k == "content" {
                            self.str(text);
                        } else {
                            self.value(&obj[k]);
                        }
                    }
                }
                _ => self.value(m),
            }
        }
    }

    /// The messages but the last, and the last one's role.
    fn prefix(&mut self, messages: &Value) {
        let list = messages.as_array().map_or(&[][..], Vec::as_slice);
        let Some((last, earlier)) = list.split_last() else {
            self.value(messages);
            return;
        };
        self.0.update(b"p");
        self.message_list(earlier);
        self.str(last.get("role").and_then(Value::as_str).unwrap_or(""));
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.update(b"n"),
            Value::Bool(true) => self.0.update(b"t"),
            Value::Bool(false) => self.0.update(b"f"),
            Value::Number(n) => {
                self.0.update(b"#");
                let text = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => i.to_string(),
                    (_, Some(u), _) => u.to_string(),
                    (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                        (f as i64).to_string()
                    }
                    (_, _, Some(f)) => format!("{f:?}"),
                    _ => n.to_string(),
                };
                self.str(&text);
            }
            Value::String(s) => self.str(s),
            Value::Array(items) => {
                self.0.update(b"[");
                self.len(items.len());
                items.iter().for_each(|i| self.value(i));
            }
            Value::Object(obj) => {
                let mut keys: Vec<&String> = obj.keys().collect();
                keys.sort();
                self.0.update(b"{");
                self.len(keys.len());
                for k in keys {
                    self.str(k);
                    self.value(&obj[k]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn chat(body: &str) -> ClientRequest {
        crate::wire::parse(Endpoint::Chat, body.as_bytes(), BTreeMap::new()).expect("valid")
    }

    fn key(body: &str) -> Digest {
        digest("t", &chat(body))
    }

    #[test]
    fn spelling_that_means_the_same_request_has_the_same_key() {
        let a = key(
            r#"{"model":"m","temperature":1,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let b = key(
            r#"{ "messages":[{"content":[{"type":"text","text":"hi"}],"role":"user"}],
                 "max_completion_tokens":5, "temperature":1.0, "model":"m",
                 "stream":true, "stream_options":{"include_usage":true}, "user":"u",
                 "metadata":{"trace":"x"} }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let base = r#"{"model":"m","temperature":0.2,"messages":[{"role":"user","content":"hi"}]}"#;
        let k = key(base);
        for other in [
            r#"{"model":"n","temperature":0.2,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.3,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.2,"messages":[{"role":"user","content":"hi "}]}"#,
            r#"{"model":"m","temperature":0.2,"top_p":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.2,"max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.2,"response_format":{"type":"json_object"},"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.2,"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.2,"messages":[{"role":"system","content":"hi"}]}"#,
        ] {
            assert_ne!(k, key(other), "{other}");
        }
        assert_ne!(digest("t", &chat(base)), digest("u", &chat(base)));
        let emb = crate::wire::parse(
            Endpoint::Embeddings,
            br#"{"model":"m","input":"hi"}"#,
            BTreeMap::new(),
        )
        .expect("valid");
        assert_ne!(digest("t", &emb), k);
    }

    #[test]
    fn near_duplicates_share_a_bucket_and_differ_in_text() {
        let a = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"Hello   World"}],"temperature":0}"#,
        );
        let b = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"hello world!"}],"temperature":0}"#,
        );
        let c = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"hello world!"}],"temperature":1}"#,
        );
        let (ba, ta) = near("t", &a).expect("text only");
        let (bb, tb) = near("t", &b).expect("text only");
        let (bc, _) = near("t", &c).expect("text only");
        assert_eq!(ba, bb);
        assert_ne!(ba, bc);
        assert_eq!(normalise(&ta), "hello world");
        assert_eq!(tb, "hello world!");
        let image = chat(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert!(near("t", &image).is_none());
    }

    #[test]
    fn the_bucket_holds_the_conversation_and_only_the_final_user_turn_is_compared() {
        let turn = |system: &str, earlier: &str, last: &str| {
            chat(&format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},
                    {{"role":"user","content":"{earlier}"}},
                    {{"role":"assistant","content":"ok"}},
                    {{"role":"user","content":"{last}"}}]}}"#
            ))
        };
        let (b, text) = near("t", &turn("Be brief.", "Hi", "Translate it")).expect("text");
        assert_eq!(text, "Translate it");
        let (same, _) = near("t", &turn("Be brief.", "Hi", "Please translate it")).expect("t");
        assert_eq!(b, same);
        let (system, _) = near("t", &turn("Be verbose.", "Hi", "Translate it")).expect("t");
        let (earlier, _) = near("t", &turn("Be brief.", "Hello", "Translate it")).expect("t");
        assert_ne!(b, system);
        assert_ne!(b, earlier);
        assert_ne!(
            b,
            near("u", &turn("Be brief.", "Hi", "Translate it"))
                .expect("t")
                .0
        );
        let ends_with_assistant = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        );
        assert!(near("t", &ends_with_assistant).is_none());
    }

    #[test]
    fn several_choices_or_logprobs_are_not_cached() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert!(cacheable(&chat(&format!(r#"{{"model":"m",{m}}}"#))));
        assert!(cacheable(&chat(&format!(r#"{{"model":"m","n":1,{m}}}"#))));
        assert!(!cacheable(&chat(&format!(r#"{{"model":"m","n":2,{m}}}"#))));
        assert!(!cacheable(&chat(&format!(
            r#"{{"model":"m","logprobs":true,{m}}}"#
        ))));
    }
}

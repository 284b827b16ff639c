//! The OpenAI request bodies the gateway accepts: parsing, validation and the facts rules read.

use crate::error::ApiError;
use http::HeaderMap;
use llmgw_engine::input::{Endpoint, RequestFacts};
use serde_json::Value;
use std::collections::BTreeMap;

/// Longest `model` name accepted.
const MAX_MODEL_LEN: usize = 256;
/// Longest `user` accepted, in bytes (it keys budgets and spend and is logged).
pub const MAX_USER_BYTES: usize = 256;
/// Most metadata entries a request may carry (body `metadata` and `x-llmgw-meta-*` together).
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 512;

/// The prefix of headers that carry request metadata.
const META_HEADER_PREFIX: &str = "x-llmgw-meta-";

/// A validated client request.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The body in OpenAI's shape: as sent, or as its front door translated it (adapters
    /// translate from it).
    pub body: Value,
    /// The facts rules read.
    pub facts: RequestFacts,
    /// Whether the client wants the final usage chunk of a stream.
    pub include_usage: bool,
    /// The `user` field, if any.
    pub user: Option<String>,
}

/// Parses and validates a body for `endpoint`; `meta` are the `x-llmgw-meta-*` headers.
pub fn parse(
    endpoint: Endpoint,
    bytes: &[u8],
    meta: BTreeMap<String, String>,
) -> Result<ClientRequest, ApiError> {
    parse_value(endpoint, parse_json(bytes)?, meta)
}

/// A body as JSON, or 400 naming what is wrong with it.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// Validates an OpenAI-shaped body for `endpoint` (the other front doors translate theirs to
/// it first); `meta` are the `x-llmgw-meta-*` headers.
pub fn parse_value(
    endpoint: Endpoint,
    body: Value,
    meta: BTreeMap<String, String>,
) -> Result<ClientRequest, ApiError> {
    let Value::Object(obj) = &body else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_MODEL_LEN => m.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid_field(
                "model",
                "`model` must be 1 to 256 characters",
            ))
        }
        Some(_) => return Err(ApiError::invalid_field("model", "`model` must be a string")),
        None => return Err(missing("model")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "stream",
                "`stream` must be a boolean",
            ))
        }
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = match obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                let name = if obj.contains_key("max_completion_tokens") {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::invalid_field(
                    name,
                    format!("`{name}` must be a positive integer"),
                ));
            }
        },
    };
    let user = match obj.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.len() > MAX_USER_BYTES => {
            return Err(too_long("user", "`user`", MAX_USER_BYTES, u.len()))
        }
        Some(Value::String(u)) => Some(u.clone()),
        Some(_) => return Err(ApiError::invalid_field("user", "`user` must be a string")),
    };
    let mut metadata = meta;
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(ApiError::invalid_field(
                        "metadata",
                        "`metadata` values must be strings",
                    ));
                };
                check_meta_entry("metadata.", k, s)?;
                metadata.insert(k.clone(), s.clone());
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "metadata",
                "`metadata` must be an object",
            ))
        }
    }
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ApiError::invalid_field(
            "metadata",
            format!(
                "a request carries at most {MAX_METADATA_ENTRIES} metadata entries \
                 (`metadata` and `x-llmgw-meta-*` headers together), not {}",
                metadata.len()
            ),
        ));
    }
    let mut chars = 0usize;
    let mut vision = false;
    let tools;
    match endpoint {
        Endpoint::Chat => {
            let messages = match obj.get("messages") {
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
            for (i, m) in messages.iter().enumerate() {
                let role = m.get("role").and_then(Value::as_str);
                match role {
                    Some("system" | "developer" | "user" | "assistant" | "tool" | "function") => {}
                    _ => return Err(ApiError::invalid_field(
                        &format!("messages[{i}].role"),
                        "each message needs a `role` of system, developer, user, assistant or tool",
                    )),
                }
                match m.get("content") {
                    Some(Value::String(s)) => chars += s.len(),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            match p.get("type").and_then(Value::as_str) {
                                Some("text") => {
                                    chars +=
                                        p.get("text").and_then(Value::as_str).map_or(0, str::len)
                                }
                                Some("image_url" | "input_image") => vision = true,
                                _ => {}
                            }
                        }
                    }
                    None | Some(Value::Null) => {
                        if role != Some("assistant") {
                            return Err(ApiError::invalid_field(
                                &format!("messages[{i}].content"),
                                "`content` is required",
                            ));
                        }
                    }
                    Some(_) => {
                        return Err(ApiError::invalid_field(
                            &format!("messages[{i}].content"),
                            "`content` must be a string or an array of parts",
                        ))
                    }
                }
                if let Some(calls) = m.get("tool_calls") {
                    chars += calls.to_string().len();
                }
            }
            tools = match obj.get("tools") {
                None | Some(Value::Null) => false,
                Some(Value::Array(t)) => {
                    chars += Value::Array(t.clone()).to_string().len();
                    !t.is_empty()
                }
                Some(_) => {
                    return Err(ApiError::invalid_field("tools", "`tools` must be an array"))
                }
            };
        }
        Endpoint::Embeddings => {
            tools = false;
            match obj.get("input") {
                Some(Value::String(s)) if !s.is_empty() => chars += s.len(),
                Some(Value::Array(items)) if !items.is_empty() => {
                    for item in items {
                        match item {
                            Value::String(s) => chars += s.len(),
                            Value::Array(tokens) => chars += tokens.len() * 4,
                            Value::Number(_) => chars += 4,
                            _ => {
                                return Err(ApiError::invalid_field(
                                    "input",
                                    "`input` must be a string or an array of strings or tokens",
                                ))
                            }
                        }
                    }
                }
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        "input",
                        "`input` must be a non-empty string or array",
                    ))
                }
                None => return Err(missing("input")),
            }
            if stream {
                return Err(ApiError::invalid_field(
                    "stream",
                    "embeddings cannot be streamed",
                ));
            }
        }
    }
    let facts = RequestFacts {
        model,
        endpoint,
        stream,
        input_tokens: estimate_tokens(chars),
        max_tokens,
        tools,
        vision,
        metadata,
    };
    Ok(ClientRequest {
        body,
        facts,
        include_usage,
        user,
    })
}

/// The `x-llmgw-meta-*` headers as request metadata, each within the length limits.
pub fn meta_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let mut meta = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(META_HEADER_PREFIX) else {
            continue;
        };
        let Ok(value) = value.to_str() else {
            continue;
        };
        check_meta_entry(META_HEADER_PREFIX, key, value)?;
        meta.insert(key.to_owned(), value.to_owned());
    }
    Ok(meta)
}

/// Checks one metadata entry; `prefix` (`metadata.` or the header prefix) and the key name the
/// field in the error.
fn check_meta_entry(prefix: &str, key: &str, value: &str) -> Result<(), ApiError> {
    if key.len() > MAX_METADATA_KEY_BYTES {
        let param = format!("{prefix}{}…", head(key, MAX_METADATA_KEY_BYTES));
        return Err(too_long(
            &param,
            "a metadata key",
            MAX_METADATA_KEY_BYTES,
            key.len(),
        ));
    }
    if value.len() > MAX_METADATA_VALUE_BYTES {
        let param = format!("{prefix}{key}");
        let what = format!("the value of `{param}`");
        return Err(too_long(
            &param,
            &what,
            MAX_METADATA_VALUE_BYTES,
            value.len(),
        ));
    }
    Ok(())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn head(text: &str, max: usize) -> &str {
    let end = (0..=max.min(text.len()))
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[..end]
}

/// 400 for a field longer than its limit.
fn too_long(param: &str, what: &str, max: usize, len: usize) -> ApiError {
    ApiError::bad_request(
        "string_above_max_length",
        format!("{what} must be at most {max} bytes, not {len}"),
    )
    .with_param(param)
}

/// 400 for a required field that is absent.
pub fn missing(field: &str) -> ApiError {
    ApiError::bad_request(
        "missing_required_parameter",
        format!("`{field}` is required"),
    )
    .with_param(field)
}

/// Estimated tokens of a text of this many bytes (about four per token).
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// The text of a message `content` (a string or text parts).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ClientRequest, ApiError> {
        parse(Endpoint::Chat, body.as_bytes(), BTreeMap::new())
    }

    #[test]
    fn names_the_missing_field() {
        let e = chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = chat(r#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = chat(r#"{"model":"m","messages":[{"content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat("{not json").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("invalid_json"));
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn reads_the_facts() {
        let r = chat(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
                "max_tokens":7,"metadata":{"team":"a"},
                "messages":[{"role":"user","content":[{"type":"text","text":"12345678"},
                {"type":"image_url","image_url":{"url":"data:x"}}]}],
                "tools":[{"type":"function","function":{"name":"f"}}]}"#,
        )
        .expect("valid");
        assert!(r.facts.stream && r.include_usage && r.facts.vision && r.facts.tools);
        assert_eq!(r.facts.max_tokens, Some(7));
        assert_eq!(r.facts.metadata["team"], "a");
        assert!(r.facts.input_tokens >= 2);
    }

    #[test]
    fn names_the_field_over_its_length_limit() {
        let long = |n: usize| "x".repeat(n);
        let body = |extra: &str| {
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
        };
        let e = chat(&body(&format!(r#","user":"{}""#, long(MAX_USER_BYTES + 1)))).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("user")));
        assert!(chat(&body(&format!(r#","user":"{}""#, long(MAX_USER_BYTES)))).is_ok());
        let e = chat(&body(&format!(
            r#","metadata":{{"team":"{}"}}"#,
            long(MAX_METADATA_VALUE_BYTES + 1)
        )))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("metadata.team"));
        let e = chat(&body(&format!(
            r#","metadata":{{"{}":"a"}}"#,
            long(MAX_METADATA_KEY_BYTES + 1)
        )))
        .unwrap_err();
        assert!(
            e.param
                .as_deref()
                .is_some_and(|p| p.starts_with("metadata.x")),
            "{e:?}"
        );
        let many: Vec<String> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect();
        let e = chat(&body(&format!(r#","metadata":{{{}}}"#, many.join(",")))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("metadata"));
        let mut h = HeaderMap::new();
        h.insert("x-llmgw-meta-team", "a".parse().expect("header"));
        assert_eq!(meta_headers(&h).expect("short")["team"], "a");
        h.insert(
            "x-llmgw-meta-team",
            long(MAX_METADATA_VALUE_BYTES + 1).parse().expect("header"),
        );
        let e = meta_headers(&h).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("x-llmgw-meta-team"));
        assert_eq!(head("aé", 2), "a");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for body in [
            "null",
            "[]",
            "1",
            r#"{"model":1}"#,
            r#"{"model":"m","messages":{}}"#,
            "",
        ] {
            assert!(chat(body).is_err(), "{body}");
        }
    }
}

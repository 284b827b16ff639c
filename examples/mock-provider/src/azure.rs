//! Azure OpenAI's side of the mock: deployment URLs, the `api-version` query parameter, the
//! `api-key` header or an Entra ID bearer token, and Azure's error and content-filter shapes.
//! The body is OpenAI's; the deployment in the path stands for the model (faults, counters).

use serde_json::{json, Value};

/// `(deployment, embeddings)` of an `/openai/deployments/{deployment}/…` path.
pub fn target(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, action) = rest.split_once('/')?;
    let embeddings = match action {
        "chat/completions" => false,
        "embeddings" => true,
        _ => return None,
    };
    (!deployment.is_empty()).then(|| (deployment.to_owned(), embeddings))
}

/// What is wrong with a request's URL query and credentials, as Azure answers it: the status
/// and error body. `None` when the request is well formed.
pub fn check(
    query: Option<&str>,
    api_key: Option<&str>,
    authorization: Option<&str>,
) -> Option<(u16, Value)> {
    let versions: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("api-version="))
        .collect();
    let well_formed = |v: &str| {
        let date = v.strip_suffix("-preview").unwrap_or(v);
        date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            })
    };
    match versions.as_slice() {
        [v] if well_formed(v) => {}
        [] => return Some((404, error("404", "Resource not found"))),
        _ => {
            return Some((
                400,
                error(
                    "BadRequest",
                    "API version not supported: give exactly one api-version such as 2024-10-21",
                ),
            ))
        }
    }
    let bearer = authorization.and_then(|a| a.strip_prefix("Bearer "));
    match (api_key, bearer) {
        (Some(k), None) if !k.is_empty() => None,
        (None, Some(t)) if !t.is_empty() => None,
        (Some(_), Some(_)) => Some((
            400,
            error(
                "BadRequest",
                "Send either an api-key header or a bearer token, not both",
            ),
        )),
        _ => Some((
            401,
            error(
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint.",
            ),
        )),
    }
}

/// Azure's error body.
pub fn error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

/// Azure's 429 body.
pub fn rate_limited() -> Value {
    error(
        "429",
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version \
         2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. \
         Please retry after 1 second.",
    )
}

/// The 400 Azure sends when the prompt trips the content filter.
pub fn prompt_filtered() -> Value {
    json!({ "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": { "filtered": false, "severity": "safe" },
                "self_harm": { "filtered": false, "severity": "safe" },
                "sexual": { "filtered": false, "severity": "safe" },
                "violence": { "filtered": true, "severity": "high" },
            },
        },
    }})
}

/// A whole answer the content filter withheld: `finish_reason: content_filter`, no content.
pub fn answer_filtered(deployment: &str) -> Value {
    json!({
        "id": "chatcmpl-azure",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": deployment,
        "prompt_filter_results": [{ "prompt_index": 0, "content_filter_results": {} }],
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": null },
            "finish_reason": "content_filter",
            "content_filter_results": {
                "hate": { "filtered": false, "severity": "safe" },
                "violence": { "filtered": true, "severity": "medium" },
            },
        }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_paths_versions_and_credentials() {
        assert_eq!(
            target("/openai/deployments/gpt-4o/chat/completions"),
            Some(("gpt-4o".into(), false))
        );
        assert_eq!(target("/openai/deployments//chat/completions"), None);
        assert!(check(Some("api-version=2024-10-21"), Some("k"), None).is_none());
        assert!(check(
            Some("api-version=2025-01-01-preview"),
            None,
            Some("Bearer t")
        )
        .is_none());
        assert_eq!(check(None, Some("k"), None).map(|e| e.0), Some(404));
        assert_eq!(
            check(Some("api-version=latest"), Some("k"), None).map(|e| e.0),
            Some(400)
        );
        assert_eq!(
            check(Some("api-version=2024-10-21"), None, Some("Basic x")).map(|e| e.0),
            Some(401)
        );
    }
}

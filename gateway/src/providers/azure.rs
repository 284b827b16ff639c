//! Azure OpenAI: OpenAI's chat and embeddings bodies (translated by [`OpenAi`]) sent to a
//! resource's deployment URLs with an `api-version`, authenticated by the `api-key` header or
//! an Entra ID bearer token. Azure's content filter answers are classed as `content_filter`.

use crate::providers::http;
use crate::providers::openai::{path_of, OpenAi};
use crate::providers::secret::{Secret, SecretError};
use crate::upstream::{
    ErrorClass, FullResponse, Provider, SendFuture, UpstreamError, UpstreamRequest,
    UpstreamResponse,
};
use ::http::header::{HeaderName, AUTHORIZATION};
use llmgw_engine::model;
use serde_json::Value;

/// An Azure OpenAI resource. The deployment's `upstream_model` is the Azure deployment name.
pub struct Azure {
    openai: OpenAi,
    api_version: String,
    /// The Entra ID token, when one is named (it replaces the `api-key` header).
    entra_token: Option<Result<Secret, SecretError>>,
}

impl Azure {
    /// The adapter of a policy provider of type `azure_openai`, with its resolved key and
    /// Entra ID token (`None` when it names none).
    pub fn new(
        provider: &model::Provider,
        key: Option<Result<Secret, SecretError>>,
        entra_token: Option<Result<Secret, SecretError>>,
    ) -> Self {
        Azure {
            openai: OpenAi::new(provider, key),
            api_version: provider
                .azure
                .as_ref()
                .map(|s| s.api_version.clone())
                .unwrap_or_default(),
            entra_token,
        }
    }

    /// The authentication header: the Entra ID token when named, else the `api-key`.
    fn auth(&self) -> Result<Vec<(HeaderName, ::http::HeaderValue)>, UpstreamError> {
        let (name, value) = match (&self.entra_token, &self.openai.connection().key) {
            (Some(token), _) => (
                AUTHORIZATION,
                format!("Bearer {}", http::key_or_error(token)?.expose()),
            ),
            (None, Some(key)) => (
                HeaderName::from_static("api-key"),
                http::key_or_error(key)?.expose().to_owned(),
            ),
            (None, None) => return Ok(Vec::new()),
        };
        Ok(http::sensitive(&value)
            .map(|v| (name, v))
            .into_iter()
            .collect())
    }
}

/// Whether a deployment name can go in a URL path as it is: no `/`, `?`, `#`, `%`, control
/// characters or whitespace (Azure's own names are letters, digits, `-`, `_` and `.`).
fn valid_deployment(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
}

/// A whole answer that Azure's content filter emptied (`finish_reason: content_filter` and no
/// content) as the `content_filter` error it is; anything else unchanged.
fn filtered(body: &Value) -> Option<UpstreamError> {
    let choice = &body["choices"][0];
    let empty = choice["message"]["content"]
        .as_str()
        .is_none_or(str::is_empty)
        && choice["message"]
            .get("tool_calls")
            .is_none_or(Value::is_null);
    if choice["finish_reason"] != "content_filter" || !empty {
        return None;
    }
    let categories: Vec<&str> = choice["content_filter_results"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["filtered"] == true)
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut e = UpstreamError::new(
        ErrorClass::ContentFilter,
        format!(
            "the provider's content filter withheld the answer ({})",
            if categories.is_empty() {
                "no category given".to_owned()
            } else {
                categories.join(", ")
            }
        ),
    )
    .with_status(400);
    e.code = Some("content_filter".to_owned());
    Some(e)
}

impl Provider for Azure {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let base = self
                .openai
                .connection()
                .base_url
                .as_deref()
                .ok_or_else(|| {
                    UpstreamError::new(ErrorClass::Unsupported, "the provider has no base_url")
                })?;
            if !valid_deployment(req.upstream_model) {
                return Err(UpstreamError::new(
                    ErrorClass::Unsupported,
                    format!(
                        "`{}` cannot be an Azure deployment name in a URL path",
                        req.upstream_model
                    ),
                ));
            }
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("api-version", &self.api_version)
                .finish();
            let url = format!(
                "{}?{query}",
                http::join(
                    base,
                    &format!(
                        "openai/deployments/{}/{}",
                        req.upstream_model,
                        path_of(req.endpoint)
                    )
                )
            );
            let answer = self.openai.exchange(&url, self.auth()?, &req).await?;
            if let UpstreamResponse::Full(FullResponse { body, .. }) = &answer {
                if let Some(e) = filtered(body) {
                    return Err(e);
                }
            }
            Ok(answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_emptied_answer_is_a_content_filter_error() {
        let body = json!({ "choices": [{
            "message": { "role": "assistant", "content": null },
            "finish_reason": "content_filter",
            "content_filter_results": {
                "hate": { "filtered": false, "severity": "safe" },
                "violence": { "filtered": true, "severity": "high" },
            },
        }]});
        let e = filtered(&body).expect("filtered");
        assert_eq!(e.class, ErrorClass::ContentFilter);
        assert!(e.message.contains("violence") && !e.message.contains("hate"));
        let partial = json!({ "choices": [{
            "message": { "content": "Part of it" }, "finish_reason": "content_filter",
        }]});
        assert!(
            filtered(&partial).is_none(),
            "what was written is delivered"
        );
        assert!(!valid_deployment("gpt/4o?x=1") && valid_deployment("gpt-4o.mini_2"));
    }
}

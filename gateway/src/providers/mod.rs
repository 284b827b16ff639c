//! Provider adapters, one per wire protocol, all behind [`crate::upstream::Provider`].

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod redact;
pub mod secret;
pub mod simulated;
pub mod vertex;

use crate::upstream::{Provider, SendFuture, UpstreamRequest, UpstreamResponse};
use llmgw_engine::model::{self, ProviderType};
use redact::Redactor;
use secret::{Secret, SecretError};
use std::sync::Arc;

/// Builds the adapter for a provider of the policy. Secret references are resolved now; a
/// reference that cannot be resolved makes every call fail with an `auth` error naming the
/// reference (never a secret), so routing moves on to other providers. Every adapter is wrapped
/// in [`Scrubbing`] with its key: nothing the provider says leaves the adapter with the key in it.
pub fn build(provider: &model::Provider) -> Arc<dyn Provider> {
    let key: Option<Result<Secret, SecretError>> = provider.api_key.as_deref().map(secret::resolve);
    let redactor = match &key {
        Some(Ok(secret)) => Redactor::for_key(secret.expose()),
        _ => Redactor::default(),
    };
    match provider.kind {
        ProviderType::Simulated => Arc::new(simulated::Simulated::new(
            provider
                .simulated
                .clone()
                .unwrap_or_else(simulated::default_profile),
        )),
        ProviderType::Openai | ProviderType::OpenaiCompatible => {
            Scrubbing::wrap(openai::OpenAi::new(provider, key), redactor)
        }
        ProviderType::Anthropic => {
            Scrubbing::wrap(anthropic::Anthropic::new(provider, key), redactor)
        }
        ProviderType::Gemini => Scrubbing::wrap(gemini::Gemini::new(provider, key), redactor),
        ProviderType::AzureOpenai => {
            let token = provider
                .azure
                .as_ref()
                .and_then(|a| a.entra_token.as_deref())
                .map(secret::resolve);
            let redactor = match &token {
                Some(Ok(token)) => Redactor::for_key(token.expose()),
                _ => redactor,
            };
            Scrubbing::wrap(azure::Azure::new(provider, key, token), redactor)
        }
        ProviderType::Bedrock => {
            let bedrock = bedrock::Bedrock::new(provider);
            let redactor = bedrock.redactor();
            Scrubbing::wrap(bedrock, redactor)
        }
        ProviderType::Vertex => {
            let vertex = vertex::Vertex::new(provider);
            let redactor = vertex.redactor();
            Scrubbing::wrap(vertex, redactor)
        }
    }
}

/// An adapter whose errors, returned or streamed, are scrubbed of its provider's key: the one
/// place where provider text (error messages, codes, params, body excerpts, in-band stream
/// errors) is cleaned before the gateway answers, logs, counts or stores anything about it.
pub struct Scrubbing<P> {
    inner: P,
    redactor: Redactor,
}

impl<P: Provider + 'static> Scrubbing<P> {
    /// `inner` scrubbed by `redactor`, ready to be shared.
    pub fn wrap(inner: P, redactor: Redactor) -> Arc<dyn Provider> {
        Arc::new(Scrubbing { inner, redactor })
    }
}

impl<P: Provider> Provider for Scrubbing<P> {
    fn send<'a>(&'a self, request: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            match self.inner.send(request).await {
                Ok(UpstreamResponse::Stream(s)) => {
                    Ok(UpstreamResponse::Stream(s.scrubbed(self.redactor.clone())))
                }
                Ok(full) => Ok(full),
                Err(e) => Err(e.scrubbed(&self.redactor)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ChunkStream, UpstreamError};
    use llmgw_engine::input::Endpoint;

    const KEY: &str = "sk-live-0123456789abcdefghijklmnop";

    /// A provider that quotes its key in every error, returned or streamed.
    struct Quoting;

    impl Provider for Quoting {
        fn send<'a>(&'a self, request: UpstreamRequest<'a>) -> SendFuture<'a> {
            Box::pin(async move {
                let body = serde_json::json!({ "error": {
                    "message": format!("Incorrect API key provided: {KEY}"),
                    "code": format!("bad_{}", &KEY[..9]),
                    "param": &KEY[10..20],
                }})
                .to_string();
                if !request.stream {
                    return Err(UpstreamError::from_status(422, body.as_bytes(), None));
                }
                let (tx, stream) = ChunkStream::channel();
                let err = UpstreamError::from_status(400, body.as_bytes(), None);
                tx.try_send(Err(err.after_first_byte())).expect("room");
                Ok(UpstreamResponse::Stream(stream))
            })
        }
    }

    fn assert_clean(e: &UpstreamError) {
        let texts = [
            Some(e.message.as_str()),
            e.code.as_deref(),
            e.param.as_deref(),
        ];
        for text in texts.into_iter().flatten() {
            assert!(text.contains("[redacted]"), "{text}");
            assert!(
                !text.contains(&KEY[..8]) && !text.contains(&KEY[10..18]),
                "{text}"
            );
        }
        assert!(!e.to_string().contains(&KEY[12..20]), "{e}");
    }

    #[tokio::test]
    async fn errors_returned_or_streamed_by_an_adapter_are_scrubbed() {
        let provider = Scrubbing::wrap(Quoting, Redactor::for_key(KEY));
        let body = serde_json::json!({});
        let request = |stream| UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &body,
            upstream_model: "m",
            prefill: None,
            stream,
            max_output_tokens: None,
            traceparent: None,
            quota: None,
        };
        let Err(e) = provider.send(request(false)).await else {
            panic!("an error");
        };
        assert_clean(&e);
        let Ok(UpstreamResponse::Stream(mut s)) = provider.send(request(true)).await else {
            panic!("a stream");
        };
        let Some(Err(e)) = s.next().await else {
            panic!("an in-band error");
        };
        assert!(e.after_first_byte);
        assert_clean(&e);
    }
}

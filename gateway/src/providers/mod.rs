//! Provider adapters, one per wire protocol, all behind [`crate::upstream::Provider`].

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod redact;
pub mod secret;
pub mod simulated;

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

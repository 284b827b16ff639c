//! Provider adapters, one per wire protocol, all behind [`crate::upstream::Provider`].

pub mod anthropic;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod secret;
pub mod simulated;

use crate::upstream::Provider;
use llmgw_engine::model::{self, ProviderType};
use std::sync::Arc;

/// Builds the adapter for a provider of the policy. Secret references are resolved now; a
/// reference that cannot be resolved makes every call fail with an `auth` error naming the
/// reference (never a secret), so routing moves on to other providers.
pub fn build(provider: &model::Provider) -> Arc<dyn Provider> {
    match provider.kind {
        ProviderType::Simulated => Arc::new(simulated::Simulated::new(
            provider
                .simulated
                .clone()
                .unwrap_or_else(simulated::default_profile),
        )),
        ProviderType::Openai | ProviderType::OpenaiCompatible => {
            Arc::new(openai::OpenAi::new(provider))
        }
        ProviderType::Anthropic => Arc::new(anthropic::Anthropic::new(provider)),
        ProviderType::Gemini => Arc::new(gemini::Gemini::new(provider)),
    }
}

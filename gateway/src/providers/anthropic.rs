//! Anthropic adapter (translation to be completed).

use crate::upstream::{ErrorClass, Provider, SendFuture, UpstreamError, UpstreamRequest};
use llmgw_engine::model;

/// A Anthropic provider.
pub struct Anthropic {}

impl Anthropic {
    /// The adapter of a policy provider.
    pub fn new(_provider: &model::Provider) -> Self {
        Anthropic {}
    }
}

impl Provider for Anthropic {
    fn send<'a>(&'a self, _req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async {
            Err(UpstreamError::new(
                ErrorClass::Unsupported,
                "not implemented",
            ))
        })
    }
}

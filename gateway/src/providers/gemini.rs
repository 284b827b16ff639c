//! Gemini adapter (translation to be completed).

use crate::upstream::{ErrorClass, Provider, SendFuture, UpstreamError, UpstreamRequest};
use llmgw_engine::model;

/// A Gemini provider.
pub struct Gemini {}

impl Gemini {
    /// The adapter of a policy provider.
    pub fn new(_provider: &model::Provider) -> Self {
        Gemini {}
    }
}

impl Provider for Gemini {
    fn send<'a>(&'a self, _req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async {
            Err(UpstreamError::new(
                ErrorClass::Unsupported,
                "not implemented",
            ))
        })
    }
}

//! Whether the state store can be used, as last found by a background probe: `/readyz`, the
//! admin status and the request path read the verdict, none of them waits on the store.

use super::{Store, StoreError};
use crate::error::ApiError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the probe looks at the store.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long one probe may take before the store counts as unavailable.
pub const PROBE_LIMIT: Duration = Duration::from_secs(1);

/// The probe's last verdict; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    fault: Arc<Mutex<Option<String>>>,
}

impl StoreHealth {
    /// Why the store is unavailable, or `None` when the last probe found it usable.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The 503 a request gets while the store is unavailable, or `None`.
    pub fn refusal(&self) -> Option<ApiError> {
        self.fault().map(|reason| unavailable(&reason))
    }

    /// Probes `store` once (bounded by [`PROBE_LIMIT`]) and records the verdict; a change is
    /// logged.
    pub async fn probe(&self, store: &Store) {
        let verdict = match tokio::time::timeout(PROBE_LIMIT, store.check()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "it did not answer within {} ms",
                PROBE_LIMIT.as_millis()
            )),
        };
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if *fault != verdict {
            match &verdict {
                Some(reason) => {
                    tracing::error!(target: "llmgw::state", reason = %reason, "the state store is unavailable; requests are refused")
                }
                None => {
                    tracing::warn!(target: "llmgw::state", "the state store is available again")
                }
            }
            *fault = verdict;
        }
    }

    /// Probes `store` every [`PROBE_INTERVAL`] until the task is aborted.
    pub fn spawn(&self, store: Store) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                health.probe(&store).await;
            }
        })
    }
}

/// The 503 (with `Retry-After: 1`) for a request the state store cannot serve now.
pub fn unavailable(reason: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable(
        "state_unavailable",
        format!("the state store is unavailable: {reason}"),
    )
    .with_retry_after(Some(Duration::from_secs(1)))
}

/// The 503 for a failed store operation, logged with what the gateway was doing.
pub fn failed(doing: &str, err: &StoreError) -> ApiError {
    tracing::error!(target: "llmgw::state", error = %err, "state store failed {doing}");
    unavailable(err)
}

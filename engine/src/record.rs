//! The decision log's record: one line of JSONL per request, enough to replay the decision.

use crate::decision::Decision;
use crate::input::DecisionInput;
use serde::{Deserialize, Serialize};

/// One logged request: the inputs its decision read, what was decided, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Decision id (the request id).
    pub id: String,
    /// When it was decided (RFC 3339).
    pub time: chrono::DateTime<chrono::Utc>,
    /// Policy revision that decided.
    pub revision: String,
    /// Rule that decided.
    pub rule: String,
    /// Model the client asked for.
    pub requested_model: String,
    /// Model that served it (after failover), if any did.
    #[serde(default)]
    pub served_model: Option<String>,
    /// Provider that served it.
    #[serde(default)]
    pub provider: Option<String>,
    /// Canary arm, if a canary applied.
    #[serde(default)]
    pub canary_arm: Option<String>,
    /// `route`, `downgrade` or `block`.
    pub budget_action: String,
    /// Everything the rules could read, as a policy test or `explain` takes it.
    pub input: DecisionInput,
    /// Input tokens billed.
    #[serde(default)]
    pub tokens_in: u64,
    /// Output tokens billed.
    #[serde(default)]
    pub tokens_out: u64,
    /// Cost in USD.
    #[serde(default)]
    pub cost_usd: f64,
    /// HTTP status returned to the client.
    #[serde(default)]
    pub status: u16,
    /// How the request went at the gateway: latency, failovers, the response cache. Absent
    /// from records written before it was logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RecordOutcome>,
}

/// What the gateway saw of a request after its decision (what the dashboard shows per
/// decision); not read when a decision is replayed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordOutcome {
    /// Milliseconds from the request's arrival to its last byte.
    pub latency_ms: f64,
    /// Milliseconds to the first token of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Moves to a later attempt that made an upstream call.
    #[serde(default)]
    pub failovers: u32,
    /// Same-provider retries.
    #[serde(default)]
    pub retries: u32,
    /// What the response cache did: `hit`, `near_hit`, `miss` or `bypass` (empty when it was
    /// not consulted).
    #[serde(default)]
    pub cache: String,
}

impl DecisionRecord {
    /// A record of a decision, before the outcome is known.
    pub fn new(
        id: String,
        time: chrono::DateTime<chrono::Utc>,
        input: DecisionInput,
        decision: &Decision,
    ) -> Self {
        DecisionRecord {
            id,
            time,
            revision: decision.revision.to_string(),
            rule: decision.rule.to_string(),
            requested_model: decision.requested_model.clone(),
            served_model: decision.primary().map(|a| a.model.to_string()),
            provider: decision.primary().map(|a| a.provider.to_string()),
            canary_arm: decision.canary.as_ref().map(|c| c.arm.as_str().to_owned()),
            budget_action: decision.budget_action.as_str().to_owned(),
            input,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            status: 0,
            outcome: None,
        }
    }
}

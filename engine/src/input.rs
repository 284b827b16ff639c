//! What a decision is made from: the request, who sent it, live stats and state.
//!
//! The gateway fills these from the HTTP request, its key store, its live stats and its state
//! store; `llmgw-policy test` and `explain` fill them from YAML or JSON. Both then call the same
//! [`crate::CompiledPolicy::decide`], which is what makes tests and explanations exact replays.

use crate::model::Scope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The API endpoint a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// `POST /v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The name rules compare `request.endpoint` with.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// The facts of a request that rules may read (`request.*` in CEL).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFacts {
    /// The model the client asked for.
    pub model: String,
    /// The endpoint.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Whether the client asked for a stream.
    #[serde(default)]
    pub stream: bool,
    /// Estimated input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// `max_tokens` as sent, if any.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Whether the request offers tools.
    #[serde(default)]
    pub tools: bool,
    /// Whether the request carries images.
    #[serde(default)]
    pub vision: bool,
    /// Client metadata (`metadata` of the request body and `x-llmgw-meta-*` headers).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A key, user, project or tenant: an id and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The id; empty when the request has none of this kind.
    #[serde(default)]
    pub id: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Who sent a request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The gateway key.
    #[serde(default)]
    pub key: Arc<Principal>,
    /// The user.
    #[serde(default)]
    pub user: Arc<Principal>,
    /// The project.
    #[serde(default)]
    pub project: Arc<Principal>,
    /// The tenant.
    #[serde(default)]
    pub tenant: Arc<Principal>,
}

impl Identity {
    /// The principal of a budget scope.
    pub fn of(&self, scope: Scope) -> &Principal {
        match scope {
            Scope::Key => &self.key,
            Scope::User => &self.user,
            Scope::Project => &self.project,
            Scope::Tenant => &self.tenant,
        }
    }
}

/// Circuit breaker state of a deployment: the worse of its own breaker and its provider region's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Serving.
    #[default]
    Closed,
    /// A probe is allowed.
    HalfOpen,
    /// Not serving.
    Open,
}

impl CircuitState {
    /// The name rules compare `m.circuit` with.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

/// Live statistics of one deployment (`m.*` live fields in CEL).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStats {
    /// Latency p50, milliseconds.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// Latency p95, milliseconds.
    #[serde(default)]
    pub p95_ms: Option<f64>,
    /// Latency p99, milliseconds.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Time to first token p50, milliseconds.
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    /// Error rate over the recent window.
    #[serde(default)]
    pub error_rate: f64,
    /// Requests in flight.
    #[serde(default)]
    pub in_flight: u64,
    /// Circuit breaker state.
    #[serde(default)]
    pub circuit: CircuitState,
    /// Requests left of its declared provider RPM in the current minute, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_requests_left: Option<f64>,
    /// Tokens left of its declared provider TPM in the current minute, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_tokens_left: Option<f64>,
}

/// Live stats as the gateway sees them at decision time.
pub trait LiveView {
    /// Stats of the deployment with this name and index in [`crate::CompiledPolicy::deployments`];
    /// `None` when nothing has been observed yet.
    fn stats(&self, index: usize, name: &str) -> Option<DeploymentStats>;
}

/// Durable state as the gateway sees it at decision time.
pub trait StateView {
    /// USD spent so far in the current period of `budget` by the principal `id` of `scope`.
    fn spent_usd(&self, budget: &str, scope: Scope, id: &str) -> f64;
    /// The current candidate weight in percent of a canary, `None` when it has no state yet.
    fn canary_weight(&self, canary: &str) -> Option<f64>;
    /// The share in [0, 1] of rate limit `rule` still available in `bucket` (both its rates,
    /// the tighter); 1 when unknown. What `ratelimit.*` reads.
    fn ratelimit_remaining(&self, _rule: &str, _bucket: &str) -> f64 {
        1.0
    }
}

/// A request plus the context a decision needs besides live stats and state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestContext {
    /// The request's facts.
    pub request: RequestFacts,
    /// Who sent it.
    pub identity: Identity,
    /// The time of the decision, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// A uniform random number in [0, 1) drawn for this request: the weighted strategy.
    pub random: f64,
    /// A second, independent uniform number in [0, 1): the canary split. Independence keeps
    /// the candidate probability exactly the canary's weight whatever routing drew.
    pub canary_random: f64,
}

/// A decision input written out in full: the form of policy tests, `explain` requests and
/// decision-log replays. Live stats are keyed by deployment name, spend by budget name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInput {
    /// The request.
    pub request: RequestFacts,
    /// Who sent it.
    #[serde(default)]
    pub identity: Identity,
    /// Live stats by deployment name.
    #[serde(default)]
    pub live: BTreeMap<String, DeploymentStats>,
    /// Spend so far by budget name (for the request's principal of that budget's scope).
    #[serde(default)]
    pub spent_usd: BTreeMap<String, f64>,
    /// Share of each rate limit still available in the request's bucket, by rate limit name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ratelimit_remaining: BTreeMap<String, f64>,
    /// Canary weights in percent by canary name.
    #[serde(default)]
    pub canary_weights: BTreeMap<String, f64>,
    /// The request's random number for the weighted strategy; 0.5 when absent.
    #[serde(default)]
    pub random: Option<f64>,
    /// The request's random number for the canary split; `random` when absent.
    #[serde(default)]
    pub canary_random: Option<f64>,
    /// The decision time (RFC 3339); the Unix epoch when absent.
    #[serde(default)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

impl DecisionInput {
    /// The request context this input describes.
    pub fn context(&self) -> RequestContext {
        RequestContext {
            request: self.request.clone(),
            identity: self.identity.clone(),
            now_ms: self.now.map(|t| t.timestamp_millis()).unwrap_or(0),
            random: self.random.unwrap_or(0.5),
            canary_random: self.canary_random.or(self.random).unwrap_or(0.5),
        }
    }
}

impl LiveView for DecisionInput {
    fn stats(&self, _index: usize, name: &str) -> Option<DeploymentStats> {
        self.live.get(name).copied()
    }
}

impl StateView for DecisionInput {
    fn spent_usd(&self, budget: &str, _scope: Scope, _id: &str) -> f64 {
        self.spent_usd.get(budget).copied().unwrap_or(0.0)
    }

    fn canary_weight(&self, canary: &str) -> Option<f64> {
        self.canary_weights.get(canary).copied()
    }

    fn ratelimit_remaining(&self, rule: &str, _bucket: &str) -> f64 {
        self.ratelimit_remaining.get(rule).copied().unwrap_or(1.0)
    }
}

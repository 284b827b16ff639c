//! What the engine decides for one request.

use crate::model::{OnStoreUnavailable, Scope, Strategy, TokenCount};
use serde::Serialize;
use std::sync::Arc;

/// One upstream attempt: a deployment of a logical model on a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// Index into [`crate::CompiledPolicy::deployments`].
    #[serde(skip)]
    pub index: usize,
    /// The deployment's name.
    pub deployment: Arc<str>,
    /// The logical model it serves.
    pub model: Arc<str>,
    /// The provider.
    pub provider: Arc<str>,
    /// The provider's region.
    pub region: Arc<str>,
    /// The model name sent upstream.
    pub upstream_model: Arc<str>,
}

/// What the budgets did to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    /// Within every budget.
    Allow,
    /// Moved to a cheaper model.
    Downgrade,
    /// Refused.
    Block,
}

impl BudgetAction {
    /// The name used in test expectations and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetAction::Allow => "route",
            BudgetAction::Downgrade => "downgrade",
            BudgetAction::Block => "block",
        }
    }
}

/// A reservation the gateway must make before the upstream call and settle after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    /// The budget.
    pub budget: Arc<str>,
    /// Its scope.
    pub scope: Scope,
    /// The principal id within the scope.
    pub principal: String,
    /// Worst-case cost in USD over the whole attempt list.
    pub amount_usd: f64,
    /// The budget's limit in USD.
    pub limit_usd: f64,
    /// Whether the reservation must be atomic against the limit (never for a downgrade budget
    /// that this request was downgraded for).
    pub strict: bool,
    /// What the budget does while the state store is unavailable.
    pub on_store_unavailable: OnStoreUnavailable,
}

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Requests.
    Requests,
    /// Tokens of the given kind.
    Tokens(TokenCount),
}

impl Measure {
    /// `requests` or `tokens`: the suffix of the `x-ratelimit-*` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Requests => "requests",
            Measure::Tokens(_) => "tokens",
        }
    }
}

/// One rate a request is counted against: the gateway checks it (GCRA) before the upstream
/// call and corrects a token charge from `usage` after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateCharge {
    /// The rate limit.
    pub rule: Arc<str>,
    /// What it counts.
    pub measure: Measure,
    /// The bucket: `<scope>:<principal, model or expression value>`.
    pub bucket: String,
    /// Units the request takes: 1 request, or its estimated tokens (input, and the worst-case
    /// output over its attempt list).
    pub amount: u64,
    /// Units per period.
    pub limit: f64,
    /// The period, milliseconds.
    pub period_ms: u64,
    /// Most units at once.
    pub burst: f64,
    /// What the rate does while the state store is unavailable.
    pub on_store_unavailable: OnStoreUnavailable,
}

/// A downgrade that was applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Downgrade {
    /// The model asked for.
    pub from: Arc<str>,
    /// The model used instead.
    pub to: Arc<str>,
    /// The downgrade rule that applied.
    pub rule: Arc<str>,
    /// The budget that triggered it, if a budget did.
    pub budget: Option<Arc<str>>,
}

/// Which side of a canary a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The current deployment.
    Baseline,
    /// The new deployment.
    Candidate,
}

impl Arm {
    /// The name used in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline",
            Arm::Candidate => "candidate",
        }
    }
}

/// A canary split applied to a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryAssignment {
    /// The canary.
    pub canary: Arc<str>,
    /// The arm drawn.
    pub arm: Arm,
    /// The candidate probability used, in [0, 1].
    pub weight: f64,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The policy revision that decided.
    pub revision: Arc<str>,
    /// The routing rule that decided (`default` when none matched), or the budget that blocked.
    pub rule: Arc<str>,
    /// The strategy that ordered the candidates.
    pub strategy: Strategy,
    /// The model the client asked for.
    pub requested_model: String,
    /// The logical model routing started from (after any downgrade).
    pub model: Arc<str>,
    /// Ordered upstream attempts; empty when blocked.
    pub attempts: Vec<Attempt>,
    /// What the budgets did.
    pub budget_action: BudgetAction,
    /// The budget that blocked or downgraded.
    pub budget: Option<Arc<str>>,
    /// Reservations to make before the call.
    pub reservations: Vec<Reservation>,
    /// Rates to check before the call, in policy order.
    pub rate_charges: Vec<RateCharge>,
    /// The downgrade applied, if any.
    pub downgrade: Option<Downgrade>,
    /// The canary split, if one applied.
    pub canary: Option<CanaryAssignment>,
    /// Worst-case cost of the first attempt, USD.
    pub estimated_cost_usd: f64,
    /// Response cache TTL of the first attempt's model, seconds (0: do not cache).
    pub cache_ttl_secs: u64,
    /// Near-duplicate threshold of the first attempt's model's cache rule, if it sets one.
    pub cache_semantic_threshold: Option<f64>,
    /// Conditions that failed to evaluate (taken as not matching; budgets as applying).
    pub eval_errors: Vec<crate::EvalError>,
}

impl Decision {
    /// The first attempt, if the request is not blocked.
    pub fn primary(&self) -> Option<&Attempt> {
        self.attempts.first()
    }
}

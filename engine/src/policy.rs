//! A compiled policy: an immutable value built once per revision.

use crate::expr::CompiledExpr;
use crate::model::{
    Budget, Capability, Failover, LatencyMetric, OnExceed, Price, Provider, ProviderQuota,
    RateLimit, Strategy,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Where something was written: file, line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Location {
    /// Path of the file within the policy repository.
    pub file: Arc<str>,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A logical model with everything routing needs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Its name.
    pub name: Arc<str>,
    /// Equivalence class.
    pub class: Arc<str>,
    /// Quality score.
    pub quality: f64,
    /// Context window in tokens.
    pub context_window: u64,
    /// Most output tokens one answer can have, when the policy declares it.
    pub max_output_tokens: Option<u64>,
    /// Capabilities.
    pub capabilities: Vec<Capability>,
    /// Prices.
    pub price: Price,
    /// Indices of its routable deployments (not canary-only ones), in preference order.
    pub deployments: Vec<usize>,
    /// Indices of the other models of its class, best quality first, then cheapest.
    pub equivalents: Vec<usize>,
    /// Where it was declared.
    pub location: Location,
}

impl ModelInfo {
    /// Whether it has a capability.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// A deployment with its provider resolved.
#[derive(Debug, Clone)]
pub struct DeploymentInfo {
    /// Unique name.
    pub name: Arc<str>,
    /// Index of its logical model in [`CompiledPolicy::models`].
    pub model: usize,
    /// Name of its logical model.
    pub model_name: Arc<str>,
    /// Index of its provider in [`CompiledPolicy::providers`].
    pub provider: usize,
    /// Name of its provider.
    pub provider_name: Arc<str>,
    /// Its provider's region.
    pub region: Arc<str>,
    /// The model name sent upstream.
    pub upstream_model: Arc<str>,
    /// Only reachable through a canary.
    pub canary_only: bool,
    /// The provider's declared limits on it.
    pub quota: Option<ProviderQuota>,
}

/// A compiled routing rule.
#[derive(Debug)]
pub struct Rule {
    /// Unique name.
    pub name: Arc<str>,
    /// Condition; `None` means always.
    pub(crate) when: Option<CompiledExpr>,
    /// Candidate model indices; `None` means the requested model.
    pub candidates: Option<Vec<usize>>,
    /// Candidate filter over `m`.
    pub(crate) filter: Option<CompiledExpr>,
    /// Strategy.
    pub strategy: Strategy,
    /// Latency strategy: metric.
    pub latency_metric: LatencyMetric,
    /// Latency strategy: SLO.
    pub latency_slo_ms: Option<f64>,
    /// Weighted strategy: weight per candidate, aligned with `candidates`.
    pub weights: Vec<f64>,
    /// Failover.
    pub failover: Failover,
    /// Where it was declared.
    pub location: Location,
}

/// A compiled budget.
#[derive(Debug)]
pub struct BudgetRule {
    /// The budget as written.
    pub spec: Budget,
    /// Its name, shared.
    pub name: Arc<str>,
    /// Condition; `None` means all requests.
    pub(crate) when: Option<CompiledExpr>,
    /// Where it was declared.
    pub location: Location,
}

impl BudgetRule {
    /// Whether exceeding it downgrades rather than blocks.
    pub fn downgrades(&self) -> bool {
        self.spec.on_exceed == OnExceed::Downgrade
    }
}

/// A compiled rate limit.
#[derive(Debug)]
pub struct RateLimitRule {
    /// The rate limit as written.
    pub spec: RateLimit,
    /// Its name, shared.
    pub name: Arc<str>,
    /// Condition; `None` means all requests.
    pub(crate) when: Option<CompiledExpr>,
    /// Scope `expression`: the bucket.
    pub(crate) bucket: Option<CompiledExpr>,
    /// Where it was declared.
    pub location: Location,
}

/// A compiled downgrade rule.
#[derive(Debug)]
pub struct DowngradeRuleInfo {
    /// Unique name.
    pub name: Arc<str>,
    /// Condition; `None` means whenever a downgrade budget is exceeded.
    pub(crate) when: Option<CompiledExpr>,
    /// Model indices it moves away from.
    pub from: Vec<usize>,
    /// Model index it moves to.
    pub to: usize,
    /// Where it was declared.
    pub location: Location,
}

/// A canary with its references resolved.
#[derive(Debug, Clone)]
pub struct CanaryInfo {
    /// Unique name.
    pub name: Arc<str>,
    /// The logical model index.
    pub model: usize,
    /// Baseline deployment index.
    pub baseline: usize,
    /// Candidate deployment index.
    pub candidate: usize,
    /// The rollout spec.
    pub spec: llmgw_canary::spec::CanarySpec,
    /// Stable hash of the whole canary definition: persisted state is keyed by name and hash.
    pub spec_hash: String,
    /// Seed of a sticky split's hash: different canaries pick independent sets of clients.
    pub salt: u64,
    /// Where it was declared.
    pub location: Location,
}

/// A compiled, immutable policy revision.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) revision: Arc<str>,
    pub(crate) providers: Vec<Provider>,
    pub(crate) models: Vec<ModelInfo>,
    pub(crate) model_index: HashMap<Arc<str>, usize>,
    pub(crate) deployments: Vec<DeploymentInfo>,
    pub(crate) deployment_index: HashMap<Arc<str>, usize>,
    pub(crate) rules: Vec<Rule>,
    /// Per requested model: indices of the rules that may match it, in order.
    pub(crate) rules_by_model: HashMap<Arc<str>, Vec<usize>>,
    /// Rules for a model no rule names: those not indexed on a model.
    pub(crate) rules_for_other: Vec<usize>,
    pub(crate) budgets: Vec<BudgetRule>,
    pub(crate) rate_limits: Vec<RateLimitRule>,
    pub(crate) downgrades: Vec<DowngradeRuleInfo>,
    pub(crate) canaries: Vec<CanaryInfo>,
    /// Per model index: the canary splitting its traffic.
    pub(crate) canary_by_model: HashMap<usize, usize>,
    pub(crate) cache_default_ttl: u64,
    pub(crate) cache_ttl: HashMap<usize, u64>,
    pub(crate) cache_semantic: HashMap<usize, f64>,
    pub(crate) default_rule: Arc<str>,
}

impl CompiledPolicy {
    /// The revision (commit id, or a content hash for a directory).
    pub fn revision(&self) -> &str {
        &self.revision
    }
    /// Providers.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }
    /// Provider by name.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }
    /// Logical models.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }
    /// Logical model by name.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.model_index.get(name).map(|&i| &self.models[i])
    }
    /// Deployments.
    pub fn deployments(&self) -> &[DeploymentInfo] {
        &self.deployments
    }
    /// Deployment by name.
    pub fn deployment(&self, name: &str) -> Option<&DeploymentInfo> {
        self.deployment_index
            .get(name)
            .map(|&i| &self.deployments[i])
    }
    /// Routing rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
    /// Budgets.
    pub fn budgets(&self) -> &[BudgetRule] {
        &self.budgets
    }
    /// Rate limits in order.
    pub fn rate_limits(&self) -> &[RateLimitRule] {
        &self.rate_limits
    }
    /// Whether a routing rule reads `ratelimit.*`: only then must the shares left of the rate
    /// limits be known before deciding.
    pub fn reads_ratelimit(&self) -> bool {
        self.rules.iter().any(|r| {
            [&r.when, &r.filter]
                .into_iter()
                .flatten()
                .any(|e| e.reads("ratelimit"))
        })
    }
    /// Downgrade rules in order.
    pub fn downgrades(&self) -> &[DowngradeRuleInfo] {
        &self.downgrades
    }
    /// Canaries.
    pub fn canaries(&self) -> &[CanaryInfo] {
        &self.canaries
    }
    /// Similarity above which a near-duplicate prompt for a logical model is a cache hit, when
    /// its cache rule sets one.
    pub fn cache_semantic_threshold(&self, model: &str) -> Option<f64> {
        self.model_index
            .get(model)
            .and_then(|i| self.cache_semantic.get(i))
            .copied()
    }

    /// Cache TTL of a logical model in seconds (0: not cached).
    pub fn cache_ttl_secs(&self, model: &str) -> u64 {
        self.model_index
            .get(model)
            .and_then(|i| self.cache_ttl.get(i))
            .copied()
            .unwrap_or(self.cache_default_ttl)
    }
}

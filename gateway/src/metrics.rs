//! Prometheus metrics. Labels carry model, provider, status and error class, never a key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a served request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP status.
    pub status: u16,
    /// Logical model that served it (or was asked for, when none did).
    pub model: String,
    /// Provider that served it (empty when none did).
    pub provider: String,
    /// The routing rule that decided, or the budget that refused (empty when no rule did).
    pub rule: String,
}

/// Labels of a model on a provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Logical model.
    pub model: String,
    /// Provider.
    pub provider: String,
}

/// Labels of token counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Logical model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// `input` or `output`.
    pub kind: &'static str,
}

/// Labels of an upstream failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Provider.
    pub provider: String,
    /// Error class.
    pub class: &'static str,
}

/// Labels of an active health probe.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// Deployment probed.
    pub deployment: String,
    /// `ok`, or the class of the failure.
    pub outcome: &'static str,
}

/// Labels of an upstream provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Provider.
    pub provider: String,
}

/// Labels of a provider region.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider.
    pub provider: String,
    /// Region.
    pub region: String,
}

/// Labels of a deployment's breaker.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// Deployment.
    pub deployment: String,
    /// Logical model.
    pub model: String,
    /// Provider.
    pub provider: String,
    /// Region.
    pub region: String,
}

impl DeploymentLabels {
    /// The labels of deployment `d`.
    pub fn of(d: &llmgw_engine::policy::DeploymentInfo) -> Self {
        DeploymentLabels {
            deployment: d.name.to_string(),
            model: d.model_name.to_string(),
            provider: d.provider_name.to_string(),
            region: d.region.to_string(),
        }
    }
}

/// Labels of spend attribution.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    /// Tenant.
    pub tenant: String,
    /// Project (empty when none).
    pub project: String,
}

/// Labels of a budget alert.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// Budget.
    pub budget: String,
    /// Tenant.
    pub tenant: String,
    /// The threshold crossed, a fraction of the limit.
    pub threshold: String,
}

/// Labels of a rate limit refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The rate limit.
    pub limit: String,
    /// `requests` or `tokens`.
    pub measure: &'static str,
}

/// Labels of the policy in force.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Revision.
    pub revision: String,
}

/// Labels of a policy reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied`, `failed` or `unchanged`.
    pub result: &'static str,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Whole-request latency.
    pub latency: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Time to first token of streams.
    pub ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Tokens.
    pub tokens: Family<TokenLabels, Counter>,
    /// Cost in USD.
    pub cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// Upstream failures by class.
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Stream events a provider sent that could not be parsed (skipped).
    pub upstream_malformed_events: Family<UpstreamLabels, Counter>,
    /// Circuit state per provider region (0 closed, 1 half-open, 2 open).
    pub circuit: Family<ProviderLabels, Gauge>,
    /// Circuit state of each deployment's own breaker (0 closed, 1 half-open, 2 open).
    pub deployment_circuit: Family<DeploymentLabels, Gauge>,
    /// Active health probes sent, by deployment and outcome.
    pub health_probes: Family<ProbeLabels, Counter>,
    /// Same-provider retries.
    pub retries: Family<ModelLabels, Counter>,
    /// Moves to a later attempt of the list that made an upstream call.
    pub failovers: Family<ModelLabels, Counter>,
    /// Streams resumed on another model after a break.
    pub resumed_streams: Family<ModelLabels, Counter>,
    /// Extra attempts refused by the retry budget.
    pub retry_budget_exhausted: Counter,
    /// Requests in flight.
    pub in_flight: Gauge,
    /// The policy in force (value 1).
    pub policy: Family<PolicyLabels, Gauge>,
    /// Spend in USD by tenant and project.
    pub spend: Family<SpendLabels, Counter<f64, AtomicU64>>,
    /// Budget alert thresholds crossed.
    pub budget_alerts: Family<AlertLabels, Counter>,
    /// Requests served without budget holds while the state store was unavailable, because
    /// every budget that applied said `on_store_unavailable: allow`.
    pub unbudgeted_requests: Counter,
    /// Requests refused by a rate limit, by limit and measure.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// Requests served without counting them against rate limits while the state store was
    /// unavailable, because every rate limit that applied said `on_store_unavailable: allow`.
    pub unlimited_requests: Counter,
    /// Policy reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Decision-log records written.
    pub decision_log_written: Counter,
    /// Decision-log records dropped because the writer fell behind.
    pub decision_log_dropped: Counter,
    /// Decision-log rotations.
    pub decision_log_rotations: Counter,
    /// Spend-ledger rows dropped because the ledger writer fell behind.
    pub ledger_dropped: Counter,
    /// Canary rollouts: weight, state, log E, transitions.
    pub canary: crate::canary_controller::CanaryMetrics,
    /// The response cache: lookups by outcome, stores, evictions, bytes, entries.
    pub cache: crate::cache::CacheMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The metrics of successful requests served by one deployment, resolved once so the hot
/// path touches atomics only.
#[derive(Debug, Clone)]
pub struct ServedHandles {
    /// Latency.
    pub latency: Histogram,
    /// Time to first token.
    pub ttft: Histogram,
    /// Input tokens.
    pub tokens_in: Counter,
    /// Output tokens.
    pub tokens_out: Counter,
    /// Cost.
    pub cost: Counter<f64, AtomicU64>,
}

impl Metrics {
    /// The handles of successful requests served by `model` on `provider`.
    pub fn served(&self, model: &str, provider: &str) -> ServedHandles {
        // One statement per lookup: a family's read guard must be gone before the next
        // lookup in the same family may need its write lock.
        let labels = ModelLabels {
            model: model.to_owned(),
            provider: provider.to_owned(),
        };
        let tokens = |kind| TokenLabels {
            model: model.to_owned(),
            provider: provider.to_owned(),
            kind,
        };
        let latency = self.latency.get_or_create(&labels).clone();
        let ttft = self.ttft.get_or_create(&labels).clone();
        let tokens_in = self.tokens.get_or_create(&tokens("input")).clone();
        let tokens_out = self.tokens.get_or_create(&tokens("output")).clone();
        let cost = self.cost.get_or_create(&labels).clone();
        ServedHandles {
            latency,
            ttft,
            tokens_in,
            tokens_out,
            cost,
        }
    }

    /// `requests{status=200}` of `model` on `provider` decided by `rule`.
    pub fn ok_requests(&self, model: &str, provider: &str, rule: &str) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                status: 200,
                model: model.to_owned(),
                provider: provider.to_owned(),
                rule: rule.to_owned(),
            })
            .clone()
    }

    /// Registers every metric.
    pub fn new() -> Self {
        Self::with_ledger_dropped(Counter::default())
    }

    /// Registers every metric; `ledger_dropped` is the state store's count of dropped
    /// spend-ledger rows.
    pub fn with_ledger_dropped(ledger_dropped: Counter) -> Self {
        let mut registry = Registry::with_prefix("llmgw");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            ttft: Family::new_with_constructor(latency_buckets),
            tokens: Family::default(),
            cost: Family::default(),
            upstream_errors: Family::default(),
            upstream_malformed_events: Family::default(),
            circuit: Family::default(),
            deployment_circuit: Family::default(),
            health_probes: Family::default(),
            retries: Family::default(),
            failovers: Family::default(),
            resumed_streams: Family::default(),
            retry_budget_exhausted: Counter::default(),
            in_flight: Gauge::default(),
            policy: Family::default(),
            spend: Family::default(),
            budget_alerts: Family::default(),
            unbudgeted_requests: Counter::default(),
            rate_limited: Family::default(),
            unlimited_requests: Counter::default(),
            policy_reloads: Family::default(),
            decision_log_written: Counter::default(),
            decision_log_dropped: Counter::default(),
            decision_log_rotations: Counter::default(),
            ledger_dropped,
            canary: crate::canary_controller::CanaryMetrics::default(),
            cache: crate::cache::CacheMetrics::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests answered", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Request latency",
            m.latency.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time to first token of streams",
            m.ttft.clone(),
        );
        registry.register("tokens", "Tokens by kind", m.tokens.clone());
        registry.register("cost_usd", "Cost in USD", m.cost.clone());
        registry.register(
            "upstream_errors",
            "Upstream failures by class",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_malformed_events",
            "Stream events a provider sent that could not be parsed and were skipped",
            m.upstream_malformed_events.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit state of a provider region's breaker: 0 closed, 1 half-open, 2 open",
            m.circuit.clone(),
        );
        registry.register(
            "deployment_circuit_state",
            "Circuit state of a deployment's own breaker: 0 closed, 1 half-open, 2 open",
            m.deployment_circuit.clone(),
        );
        registry.register(
            "health_probes",
            "Active health probes sent to deployments, by outcome",
            m.health_probes.clone(),
        );
        registry.register("retries", "Same-provider retries", m.retries.clone());
        registry.register(
            "failovers",
            "Moves to a later attempt that made an upstream call",
            m.failovers.clone(),
        );
        registry.register(
            "resumed_streams",
            "Streams resumed on another model",
            m.resumed_streams.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Extra attempts refused by the retry budget",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight",
            m.in_flight.clone(),
        );
        registry.register(
            "unbudgeted_requests",
            "Requests served without budget holds while the state store was unavailable",
            m.unbudgeted_requests.clone(),
        );
        registry.register(
            "policy_info",
            "The policy revision in force",
            m.policy.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads by result: applied, failed or unchanged",
            m.policy_reloads.clone(),
        );
        registry.register(
            "decision_log_records",
            "Decision-log records written",
            m.decision_log_written.clone(),
        );
        registry.register(
            "decision_log_dropped",
            "Decision-log records dropped because the writer fell behind",
            m.decision_log_dropped.clone(),
        );
        registry.register(
            "ledger_dropped",
            "Spend-ledger rows dropped because the ledger writer fell behind",
            m.ledger_dropped.clone(),
        );
        registry.register(
            "decision_log_rotations",
            "Decision-log file rotations",
            m.decision_log_rotations.clone(),
        );
        registry.register(
            "spend_usd",
            "Spend in USD by tenant and project",
            m.spend.clone(),
        );
        registry.register(
            "budget_alerts",
            "Budget alert thresholds crossed",
            m.budget_alerts.clone(),
        );
        registry.register(
            "ratelimit_refused",
            "Requests refused by a rate limit, by limit and measure",
            m.rate_limited.clone(),
        );
        registry.register(
            "ratelimit_unlimited_requests",
            "Requests served without rate limits while the state store was unavailable",
            m.unlimited_requests.clone(),
        );
        m.canary.register(&mut registry);
        m.cache.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Counts a budget alert.
    pub fn budget_alert(&self, budget: &str, tenant: &str, threshold: f64) {
        self.budget_alerts
            .get_or_create(&AlertLabels {
                budget: budget.to_owned(),
                tenant: tenant.to_owned(),
                threshold: threshold.to_string(),
            })
            .inc();
    }

    /// Counts a request refused by a rate limit.
    pub fn rate_limited(&self, limit: &str, measure: &'static str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                limit: limit.to_owned(),
                measure,
            })
            .inc();
    }

    /// Adds spend attributed to a tenant and project.
    pub fn add_spend(&self, tenant: &str, project: &str, usd: f64) {
        self.spend
            .get_or_create(&SpendLabels {
                tenant: tenant.to_owned(),
                project: project.to_owned(),
            })
            .inc_by(usd);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

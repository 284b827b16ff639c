//! The gateway's shared state: the policy in force with its adapters, circuits and live stats
//! (swapped as one value), the keys, the metrics and the retry budget.

use crate::circuit::{severity, Breakers, Circuit};
use crate::keys::KeyCache;
use crate::live::{DeploymentLive, LiveStats};
use crate::metrics::{DeploymentLabels, Metrics, PolicyLabels, ProviderLabels, ServedHandles};
use crate::policy_source::PolicyLocation;
use crate::providers;
use crate::retry_budget::RetryBudget;
use crate::upstream::Provider;
use arc_swap::ArcSwap;
use llmgw_engine::CompiledPolicy;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Seconds a stored response is kept unless `--response-retention-secs` says otherwise: 30 days.
pub const DEFAULT_RESPONSE_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// Limits applied to clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time allowed for a client to send its request headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a client to send a whole request body.
    pub body_read_timeout: Duration,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How long a stored response (`POST /v1/responses` with `store`) is kept.
    pub response_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(30),
            response_retention: Duration::from_secs(DEFAULT_RESPONSE_RETENTION_SECS),
        }
    }
}

/// A policy revision with everything built from it.
pub struct Runtime {
    /// The compiled policy.
    pub policy: Arc<CompiledPolicy>,
    /// Where it came from.
    pub location: PolicyLocation,
    /// One adapter per provider, by provider index.
    pub providers: Vec<Arc<dyn Provider>>,
    /// The breakers: one per provider region (by provider index), one per deployment.
    pub breakers: Arc<Breakers>,
    /// Live stats by deployment index.
    pub live: LiveStats,
    served: Vec<OnceLock<ServedHandles>>,
    served_ok: RwLock<HashMap<(usize, Arc<str>), Counter>>,
}

impl Runtime {
    /// Builds adapters, circuits and live stats for a policy.
    pub fn new(policy: CompiledPolicy, location: PolicyLocation) -> Self {
        Runtime::carrying_over(policy, location, None)
    }

    /// Builds adapters, circuits and live stats for a policy that replaces `previous`: the
    /// breakers of providers still there with the same circuit settings (and of their
    /// deployments still there), and the live stats of deployments still there, are carried
    /// over by name; the rest start afresh.
    pub fn carrying_over(
        policy: CompiledPolicy,
        location: PolicyLocation,
        previous: Option<&Runtime>,
    ) -> Self {
        let providers: Vec<Arc<dyn Provider>> =
            policy.providers().iter().map(providers::build).collect();
        // The provider of the previous revision with the same name and circuit settings.
        let kept = |p: usize| {
            let p = &policy.providers()[p];
            let prev = previous?;
            let i = prev
                .policy
                .providers()
                .iter()
                .position(|q| q.name == p.name && q.circuit == p.circuit)?;
            Some((prev, i))
        };
        let regions: Vec<Arc<Circuit>> = (0..policy.providers().len())
            .map(|p| {
                kept(p)
                    .and_then(|(prev, i)| prev.breakers.region(i).cloned())
                    .unwrap_or_else(|| Arc::new(Circuit::new(policy.providers()[p].circuit)))
            })
            .collect();
        let deployment_circuits: Vec<Arc<Circuit>> = policy
            .deployments()
            .iter()
            .map(|d| {
                kept(d.provider)
                    .and_then(|(prev, p)| {
                        let old = prev.policy.deployments();
                        let i = old
                            .iter()
                            .position(|q| q.name == d.name && q.provider == p)?;
                        prev.breakers.deployment(i).cloned()
                    })
                    .unwrap_or_else(|| {
                        Arc::new(Circuit::new(policy.providers()[d.provider].circuit))
                    })
            })
            .collect();
        let region_of = policy.deployments().iter().map(|d| d.provider).collect();
        let probed = policy
            .deployments()
            .iter()
            .map(|d| policy.providers()[d.provider].health_probe.is_some())
            .collect();
        let breakers =
            Arc::new(Breakers::new(regions, deployment_circuits, region_of).with_probes(probed));
        let n = policy.deployments().len();
        let recorders = policy
            .deployments()
            .iter()
            .map(|d| {
                previous
                    .and_then(|prev| {
                        let old = prev.policy.deployments();
                        let i = old.iter().position(|q| q.name == d.name)?;
                        prev.live.deployment(i).cloned()
                    })
                    .unwrap_or_else(|| Arc::new(DeploymentLive::default()))
            })
            .collect();
        // A quota's use carries over to the next revision when the deployment and its quota
        // stay the same.
        let quotas = policy
            .deployments()
            .iter()
            .map(|d| {
                let quota = d.quota?;
                previous
                    .and_then(|prev| {
                        let old = prev.policy.deployment(&d.name)?;
                        let i = prev
                            .policy
                            .deployments()
                            .iter()
                            .position(|q| q.name == d.name)?;
                        (old.quota == Some(quota)).then(|| prev.live.quota(i).cloned())?
                    })
                    .or_else(|| Some(Arc::new(crate::quota::QuotaCell::new(&d.name, quota))))
            })
            .collect();
        Runtime {
            policy: Arc::new(policy),
            location,
            providers,
            live: LiveStats::new(recorders, breakers.clone(), quotas),
            breakers,
            served: (0..n).map(|_| OnceLock::new()).collect(),
            served_ok: RwLock::default(),
        }
    }

    /// The metrics of successful requests served by deployment `index` under `rule`: the
    /// deployment's handles and its `requests{status=200}` counter for that rule.
    pub fn served_metrics(
        &self,
        index: usize,
        rule: &Arc<str>,
        metrics: &Metrics,
    ) -> Option<(&ServedHandles, Counter)> {
        let d = self.policy.deployments().get(index)?;
        let handles = self
            .served
            .get(index)?
            .get_or_init(|| metrics.served(&d.model_name, &d.provider_name));
        let key = (index, rule.clone());
        // A poisoned lock still holds a consistent map: each use is one call on it.
        let known = self
            .served_ok
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let ok = known.unwrap_or_else(|| {
            self.served_ok
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_insert_with(|| metrics.ok_requests(&d.model_name, &d.provider_name, rule))
                .clone()
        });
        Some((handles, ok))
    }
}

/// Everything a request handler needs.
pub struct App {
    /// The policy in force.
    pub runtime: ArcSwap<Runtime>,
    /// Gateway keys, looked up in the state store (each lookup reused for at most 500 ms).
    pub keys: KeyCache,
    /// Metrics.
    pub metrics: Metrics,
    /// The retry budget shared by all requests.
    pub retry_budget: RetryBudget,
    /// Client limits.
    pub limits: Limits,
    /// Durable state: keys, budget spend, the spend ledger, replay protection.
    pub state: crate::store::Store,
    /// Whether the state store can serve, as last probed (`/readyz`, refusals).
    pub store_health: crate::store::StoreHealth,
    /// The gateway's admin token, when one is set (`--admin-token`).
    pub admin_token: Option<crate::admin::AdminToken>,
    /// Revisions applied and attempted, for `/admin/status`.
    pub policy_status: crate::reload::PolicyStatus,
    /// The decision log (disabled unless `serve` opens one).
    pub decision_log: crate::decision_log::DecisionLog,
    /// The canary controller: weights for decisions, outcomes, commands, status.
    pub canaries: crate::canary_controller::Canaries,
    /// The response cache (`--cache-max-bytes`).
    pub cache: crate::cache::ResponseCache,
    /// The keys tenant tokens are opened with (`--tenant-token-key`); none by default.
    pub tenant_tokens: crate::tenant_token::TenantTokens,
    /// The trace exporter (`--otlp-endpoint`); none by default.
    pub otel: Option<crate::otel::Exporter>,
    /// Wakes the policy watcher for an immediate fetch (`POST /hooks/git`).
    pub policy_fetch: Arc<tokio::sync::Notify>,
    /// The secret `POST /hooks/git` notifications are checked with (`--webhook-secret`);
    /// the route is off without one.
    pub webhook_secret: Option<crate::providers::secret::Secret>,
    /// Recent snapshots of live stats and canaries, for the dashboard's charts.
    pub history: crate::dashboard::history::History,
    draining: AtomicBool,
}

impl App {
    /// The app serving `runtime`.
    pub fn new(runtime: Runtime, keys: KeyCache, limits: Limits) -> Self {
        let metrics = Metrics::with_ledger_dropped(keys.store().ledger_dropped());
        let cache = crate::cache::ResponseCache::new(
            crate::cache::DEFAULT_MAX_BYTES,
            metrics.cache.clone(),
        );
        let app = App {
            runtime: ArcSwap::from_pointee(runtime),
            state: keys.store().clone(),
            store_health: crate::store::StoreHealth::default(),
            admin_token: None,
            keys,
            metrics,
            retry_budget: RetryBudget::default(),
            limits,
            policy_status: crate::reload::PolicyStatus::default(),
            decision_log: crate::decision_log::DecisionLog::disabled(),
            canaries: crate::canary_controller::Canaries::new(),
            cache,
            tenant_tokens: Default::default(),
            otel: None,
            policy_fetch: Default::default(),
            webhook_secret: None,
            history: Default::default(),
            draining: AtomicBool::new(false),
        };
        let revision = app.runtime.load().policy.revision().to_owned();
        app.metrics
            .policy
            .get_or_create(&PolicyLabels { revision })
            .set(1);
        app
    }

    /// Marks the gateway as shutting down (`/readyz` turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Refreshes the live-stats snapshot and circuit gauges; called periodically.
    pub fn refresh(&self) {
        let rt = self.runtime.load();
        rt.live.refresh();
        self.cache.maintain();
        for (i, p) in rt.policy.providers().iter().enumerate() {
            if let Some(c) = rt.breakers.region(i) {
                self.metrics
                    .circuit
                    .get_or_create(&ProviderLabels {
                        provider: p.name.clone(),
                        region: p.region.clone(),
                    })
                    .set(severity(c.state()));
            }
        }
        for (i, d) in rt.policy.deployments().iter().enumerate() {
            if let Some(c) = rt.breakers.deployment(i) {
                self.metrics
                    .deployment_circuit
                    .get_or_create(&DeploymentLabels::of(d))
                    .set(severity(c.state()));
            }
        }
    }
}

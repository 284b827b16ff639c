//! The canary metrics: weight, state, step, log E per metric, requests per arm, transitions.

use llmgw_canary::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a canary.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    /// The canary's name.
    pub canary: String,
}

/// Labels of a canary's state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryStateLabels {
    /// The canary's name.
    pub canary: String,
    /// `pending`, `progressing`, `paused`, `promoted`, `rolled_back` or `state_error`.
    pub state: &'static str,
}

/// Labels of one checked metric of a canary.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryMetricLabels {
    /// The canary's name.
    pub canary: String,
    /// `error_rate`, `latency_p95`, …
    pub metric: &'static str,
}

/// Labels of a canary's arm.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryArmLabels {
    /// The canary's name.
    pub canary: String,
    /// `baseline` or `candidate`.
    pub arm: &'static str,
}

/// Labels of a canary transition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryTransitionLabels {
    /// The canary's name.
    pub canary: String,
    /// The state entered.
    pub to: &'static str,
    /// Why: `started`, `step_completed`, `alarm`, `paused`, `resumed` or `manual_rollback`.
    pub reason: &'static str,
}

/// Every state a canary can be reported in, as `llmgw_canary_state` labels.
pub const STATES: [&str; 6] = [
    "pending",
    "progressing",
    "paused",
    "promoted",
    "rolled_back",
    "state_error",
];

/// The name of a phase in metrics, logs and status.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Progressing { .. } => "progressing",
        Phase::Paused { .. } => "paused",
        Phase::Promoted => "promoted",
        Phase::RolledBack => "rolled_back",
    }
}

/// The canary metrics, registered with the gateway's other metrics.
#[derive(Debug, Default)]
pub struct CanaryMetrics {
    /// `llmgw_canary_weight`: the candidate's share of traffic now, percent.
    pub weight: Family<CanaryLabels, Gauge<f64, AtomicU64>>,
    /// `llmgw_canary_state`: 1 for the canary's current state, 0 for the others.
    pub state: Family<CanaryStateLabels, Gauge>,
    /// `llmgw_canary_step`: the current step, 0-based (-1 outside the steps).
    pub step: Family<CanaryLabels, Gauge>,
    /// `llmgw_canary_log_e`: log E of each checked metric's e-process.
    pub log_e: Family<CanaryMetricLabels, Gauge<f64, AtomicU64>>,
    /// `llmgw_canary_log_threshold`: the rollback threshold on log E, ln(K/α).
    pub log_threshold: Family<CanaryLabels, Gauge<f64, AtomicU64>>,
    /// `llmgw_canary_requests`: requests observed per arm since the rollout began.
    pub requests: Family<CanaryArmLabels, Gauge>,
    /// `llmgw_canary_transitions_total`: transitions by state entered and reason.
    pub transitions: Family<CanaryTransitionLabels, Counter>,
    /// `llmgw_canary_observations_dropped_total`: outcomes dropped because the controller
    /// fell behind (the queue was full).
    pub dropped: Counter,
}

impl CanaryMetrics {
    /// Registers the canary metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "canary_weight",
            "Candidate share of a canary's traffic, percent",
            self.weight.clone(),
        );
        registry.register(
            "canary_state",
            "Canary state: 1 for the current state, 0 for the others",
            self.state.clone(),
        );
        registry.register(
            "canary_step",
            "Current canary step, 0-based (-1 outside the steps)",
            self.step.clone(),
        );
        registry.register(
            "canary_log_e",
            "log E of a canary metric's anytime-valid test",
            self.log_e.clone(),
        );
        registry.register(
            "canary_log_threshold",
            "log E at which a canary rolls back, ln(K/alpha)",
            self.log_threshold.clone(),
        );
        registry.register(
            "canary_requests",
            "Requests observed per canary arm since the rollout began",
            self.requests.clone(),
        );
        registry.register(
            "canary_transitions",
            "Canary transitions by state entered and reason",
            self.transitions.clone(),
        );
        registry.register(
            "canary_observations_dropped",
            "Request outcomes the canary controller dropped because it fell behind",
            self.dropped.clone(),
        );
    }

    /// Sets the state gauges of a canary: 1 for `current`, 0 for the others.
    pub fn set_state(&self, canary: &str, current: &'static str) {
        for state in STATES {
            self.state
                .get_or_create(&CanaryStateLabels {
                    canary: canary.to_owned(),
                    state,
                })
                .set(i64::from(state == current));
        }
    }

    /// Removes every series of a canary that left the policy (transition counters stay).
    pub fn remove(&self, canary: &str, metrics: &[&'static str]) {
        let name = || CanaryLabels {
            canary: canary.to_owned(),
        };
        self.weight.remove(&name());
        self.step.remove(&name());
        self.log_threshold.remove(&name());
        for state in STATES {
            self.state.remove(&CanaryStateLabels {
                canary: canary.to_owned(),
                state,
            });
        }
        for metric in metrics {
            self.log_e.remove(&CanaryMetricLabels {
                canary: canary.to_owned(),
                metric,
            });
        }
        for arm in ["baseline", "candidate"] {
            self.requests.remove(&CanaryArmLabels {
                canary: canary.to_owned(),
                arm,
            });
        }
    }
}

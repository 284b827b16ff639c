//! The canary controller: walks every canary of the live policy through its rollout, splits
//! traffic by the rollout's current weight, and rolls the candidate back when a check fails.
//!
//! - **Weights on the request path.** Decisions read a canary's weight through
//!   [`DecisionState`] from a snapshot: one pointer load (arc-swap) and one atomic load. A
//!   weight is bound to the canary's spec hash in the policy that decides, so a decision never
//!   uses the weight of another spec of the same name (for instance right after a reload).
//!   A canary without a rollout yet has no weight and splits nothing.
//! - **Outcomes off the request path.** The record phase turns each finished request that a
//!   canary split into an [`llmgw_canary::Observation`] ([`observe`]) and queues it on a bounded
//!   channel; when the controller falls behind, outcomes are dropped and counted
//!   (`llmgw_canary_observations_dropped_total`), never waited for.
//! - **One task** ([`start`]) owns every [`llmgw_canary::Rollout`]: it feeds them the
//!   outcomes, ticks them every [`TICK`] for the steps' minimum durations, follows policy
//!   reloads, applies operator commands, and publishes weights, metrics and `/admin/status`.
//!   A rollback sets the weight to 0 before anything else, so the next decision sees 0.
//! - **One rollout per canary for the fleet.** The rollout lives in the state store (namespace
//!   [`NAMESPACE`], key `<name>:<spec hash>`), one versioned record changed only by
//!   compare-and-set: every [`TICK`] each replica adds its outcomes to the latest record, so
//!   the e-processes test the whole fleet's traffic at once, and looks for other replicas'
//!   changes (see `controller`). A restarted gateway resumes each canary where the fleet is;
//!   a changed spec has another key and starts a new rollout; a rolled-back or promoted spec
//!   stays so until the spec changes. A stored state that cannot be read back holds the canary
//!   on the baseline (reported as `state_error`) rather than start over a rollout an operator
//!   may have stopped.
//! - **Promotion** is final for a spec: the candidate then takes 100% of the model's traffic
//!   (weight 100; a candidate whose circuit is open still falls back to the baseline) until the
//!   policy makes the candidate the model's regular deployment and drops the canary. Dropping
//!   the canary without that change sends the traffic back to the baseline.

mod admin;
mod controller;
pub mod metrics;
mod observe;

pub use admin::{handle as admin, is_admin_path};
pub use controller::start;
pub use metrics::CanaryMetrics;
pub use observe::observation;

use crate::app::App;
use crate::phases::record::RequestRecord;
use arc_swap::ArcSwap;
use llmgw_canary::{Command, CommandError, Observation};
use llmgw_engine::input::StateView;
use llmgw_engine::model::Scope;
use llmgw_engine::CompiledPolicy;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Namespace of rollout states in the state store.
pub const NAMESPACE: &str = "canary";
/// How often each replica adds its outcomes to the shared rollouts, ticks them (for minimum
/// durations), looks for another replica's changes and for policy reloads.
pub const TICK: Duration = Duration::from_millis(200);
/// Outcomes queued for the controller before new ones are dropped.
pub const QUEUE: usize = 8192;

/// The store key of a canary's rollout: its name and spec hash.
pub fn state_key(name: &str, spec_hash: &str) -> String {
    format!("{name}:{spec_hash}")
}

/// Wall-clock milliseconds since the Unix epoch: rollout time survives restarts.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The weight decisions read for one canary under one spec.
#[derive(Debug)]
struct Slot {
    spec_hash: String,
    weight_bits: AtomicU64,
}

impl Slot {
    fn new(spec_hash: &str, weight: f64) -> Self {
        Slot {
            spec_hash: spec_hash.to_owned(),
            weight_bits: AtomicU64::new(weight.to_bits()),
        }
    }

    fn weight(&self) -> f64 {
        f64::from_bits(self.weight_bits.load(Ordering::Acquire))
    }

    fn set(&self, weight: f64) {
        self.weight_bits.store(weight.to_bits(), Ordering::Release);
    }
}

type Slots = HashMap<Arc<str>, Arc<Slot>>;

/// One request's outcome for a canary, as queued by the record phase.
#[derive(Debug)]
struct Observed {
    canary: Arc<str>,
    /// The policy revision that decided: tells which spec of the canary split it.
    revision: Arc<str>,
    obs: Observation,
}

/// A request to the controller task.
enum Control {
    Command {
        canary: String,
        command: Command,
        reply: oneshot::Sender<Result<Value, CommandFailure>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Why an operator's command was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandFailure {
    /// The controller is not running (the gateway is starting or stopping).
    #[error("the canary controller is not running")]
    NotRunning,
    /// The live policy has no canary of that name.
    #[error("the policy has no canary `{0}`")]
    Unknown(String),
    /// The command does not apply in the canary's state.
    #[error("cannot {} canary `{canary}`: it is {}", command_name(.error.command), phase_words(.error.phase))]
    NotApplicable {
        /// The canary.
        canary: String,
        /// The command and the phase it was given in.
        error: CommandError,
    },
    /// The canary's stored state cannot be read; it is held on the baseline.
    #[error("canary `{0}` is held on the baseline: its stored state cannot be read")]
    StateError(String),
    /// The state store could not be read or written.
    #[error("the canary state could not be saved: {0}")]
    Store(String),
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Start => "start",
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Rollback => "roll back",
    }
}

fn phase_words(phase: llmgw_canary::Phase) -> String {
    use llmgw_canary::Phase;
    match phase {
        Phase::Pending => "pending".to_owned(),
        Phase::Progressing { step } => format!("progressing at step {step}"),
        Phase::Paused { step } => format!("paused at step {step}"),
        Phase::Promoted => "promoted".to_owned(),
        Phase::RolledBack => "rolled back".to_owned(),
    }
}

/// The controller as the rest of the gateway sees it: weights for decisions, a queue for
/// outcomes, operator commands and the status.
pub struct Canaries {
    slots: ArcSwap<Slots>,
    status: ArcSwap<Value>,
    observations: mpsc::Sender<Observed>,
    control: mpsc::Sender<Control>,
    receivers: Mutex<Option<(mpsc::Receiver<Observed>, mpsc::Receiver<Control>)>>,
    running: AtomicBool,
}

impl Default for Canaries {
    fn default() -> Self {
        Canaries::new()
    }
}

impl std::fmt::Debug for Canaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canaries")
            .field("canaries", &self.slots.load().len())
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl Canaries {
    /// A controller handle with no canary; [`start`] runs it.
    pub fn new() -> Self {
        let (observations, obs_rx) = mpsc::channel(QUEUE);
        let (control, control_rx) = mpsc::channel(64);
        Canaries {
            slots: ArcSwap::from_pointee(Slots::new()),
            status: ArcSwap::from_pointee(Value::Array(Vec::new())),
            observations,
            control,
            receivers: Mutex::new(Some((obs_rx, control_rx))),
            running: AtomicBool::new(false),
        }
    }

    /// The weight in percent of canary `name` under the spec with `spec_hash`; `None` when
    /// that rollout is not loaded.
    pub fn weight(&self, name: &str, spec_hash: &str) -> Option<f64> {
        let slots = self.slots.load();
        let slot = slots.get(name)?;
        (slot.spec_hash == spec_hash).then(|| slot.weight())
    }

    /// The `canaries` array of `/admin/status`.
    pub fn status_json(&self) -> Value {
        Value::clone(&self.status.load())
    }

    /// Queues one outcome; drops it (and counts it) when the controller is behind.
    fn queue(&self, app: &App, observed: Observed) {
        if !self.running.load(Ordering::Relaxed) {
            return;
        }
        if self.observations.try_send(observed).is_err() {
            app.metrics.canary.dropped.inc();
        }
    }

    /// Applies an operator's command to canary `name`; answers its status afterwards.
    pub async fn command(&self, name: &str, command: Command) -> Result<Value, CommandFailure> {
        if !self.running.load(Ordering::Relaxed) {
            return Err(CommandFailure::NotRunning);
        }
        let (reply, answer) = oneshot::channel();
        let control = Control::Command {
            canary: name.to_owned(),
            command,
            reply,
        };
        self.control
            .send(control)
            .await
            .map_err(|_| CommandFailure::NotRunning)?;
        answer.await.map_err(|_| CommandFailure::NotRunning)?
    }

    /// Saves every rollout with unsaved progress; waits at most `limit`. Called at shutdown.
    pub async fn flush(&self, limit: Duration) {
        if !self.running.load(Ordering::Relaxed) {
            return;
        }
        let (done, saved) = oneshot::channel();
        if self.control.send(Control::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, saved).await;
        }
    }
}

/// Hands a finished request's outcome to the controller when a canary split it. Called by the
/// record phase; never blocks.
pub fn observe(app: &App, r: &RequestRecord<'_>) {
    let Some(d) = r.decision else { return };
    let Some(c) = &d.canary else { return };
    if let Some(obs) = observation(d, r, now_ms()) {
        let observed = Observed {
            canary: c.canary.clone(),
            revision: d.revision.clone(),
            obs,
        };
        app.canaries.queue(app, observed);
    }
}

/// The state a decision reads: spend from the budgets' view, canary weights from the
/// controller, each weight bound to the canary's spec in the deciding policy.
pub struct DecisionState<'a> {
    /// Budget spend (its canary weights are not used).
    pub spend: &'a dyn StateView,
    /// The controller.
    pub canaries: &'a Canaries,
    /// The policy deciding.
    pub policy: &'a CompiledPolicy,
}

impl StateView for DecisionState<'_> {
    fn spent_usd(&self, budget: &str, scope: Scope, id: &str) -> f64 {
        self.spend.spent_usd(budget, scope, id)
    }

    fn canary_weight(&self, canary: &str) -> Option<f64> {
        let info = self.policy.canaries().iter().find(|c| &*c.name == canary)?;
        self.canaries.weight(canary, &info.spec_hash)
    }

    fn ratelimit_remaining(&self, rule: &str, bucket: &str) -> f64 {
        self.spend.ratelimit_remaining(rule, bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_is_read_only_for_its_own_spec() {
        let c = Canaries::new();
        assert_eq!(c.weight("c", "h1"), None);
        let slot = Arc::new(Slot::new("h1", 5.0));
        let mut slots = Slots::new();
        slots.insert("c".into(), slot.clone());
        c.slots.store(Arc::new(slots));
        assert_eq!(c.weight("c", "h1"), Some(5.0));
        assert_eq!(c.weight("c", "h2"), None);
        slot.set(0.0);
        assert_eq!(c.weight("c", "h1"), Some(0.0));
    }

    #[test]
    fn state_keys_name_the_spec() {
        assert_eq!(state_key("gpt-4o-2026-11", "00e9"), "gpt-4o-2026-11:00e9");
    }

    #[test]
    fn a_refused_command_says_why_in_words() {
        let e = CommandFailure::NotApplicable {
            canary: "c".into(),
            error: CommandError {
                command: Command::Resume,
                phase: llmgw_canary::Phase::Progressing { step: 2 },
            },
        };
        assert_eq!(
            e.to_string(),
            "cannot resume canary `c`: it is progressing at step 2"
        );
    }
}

//! The controller task: one [`Controller`] per canary of the live policy, all owned by one task
//! that receives outcomes and commands, ticks, follows reloads and the shared state, and
//! publishes.
//!
//! The rollout of a canary lives in the state store, one record for the whole fleet, changed
//! only by compare-and-set. A replica queues its outcomes and, every [`TICK`], adds them to the
//! latest stored rollout and writes the result if no other replica wrote first (else it reads
//! the newer rollout and adds them to that). The e-processes are sums over events, so the
//! record holds one test over every replica's traffic in one order of events; transitions are
//! decided only on the record, and a rolled-back or promoted rollout stays so, since every
//! write starts from the record it replaces. Between its writes a replica looks at the
//! record's version every tick, so a rollback or a step change made elsewhere reaches it
//! within a tick or two. A replica that crashes loses only its unwritten outcomes.

use super::metrics::{
    phase_name, CanaryArmLabels, CanaryLabels, CanaryMetricLabels, CanaryMetrics,
    CanaryTransitionLabels,
};
use super::{
    now_ms, state_key, CommandFailure, Control, Observed, Slot, Slots, NAMESPACE, QUEUE, TICK,
};
use crate::app::App;
use crate::store::{Store, StoreError};
use llmgw_canary::{CanarySpec, Command, Observation, Phase, Reason, Rollout, Transition};
use llmgw_engine::policy::CanaryInfo;
use llmgw_engine::CompiledPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Transitions kept per canary for `/admin/status`.
const HISTORY: usize = 32;
/// Outcomes handled before the task looks at its other inputs again.
const BATCH: usize = 1024;
/// Policy revisions whose canary specs are remembered, to attribute late outcomes.
const REVISIONS: usize = 8;
/// Outcomes kept unwritten per canary while the store cannot be written; later ones are
/// dropped (and counted).
const MAX_PENDING: usize = 8 * QUEUE;
/// Compare-and-set attempts per update before waiting for the next tick.
const ATTEMPTS: usize = 8;

/// The spec hash of each canary of a policy revision, by name.
type SpecHashes = HashMap<Arc<str>, String>;

/// A canary's record in the state store, shared by every replica: the rollout and its recent
/// transitions.
#[derive(Serialize, Deserialize)]
struct Record {
    rollout: Rollout,
    transitions: VecDeque<Transition>,
}

/// Where a canary's rollout is, as far as the controller can tell.
enum State {
    /// A rollout in progress (or finished), as last read or written.
    Live(Box<Rollout>),
    /// The stored state could not be used: held on the baseline, with the reason.
    Held(String),
}

/// One canary of the live policy.
struct Controller {
    name: Arc<str>,
    spec_hash: String,
    spec: CanarySpec,
    key: String,
    model: String,
    baseline: String,
    candidate: String,
    slot: Arc<Slot>,
    state: State,
    /// Version of the stored record `state` is (0: nothing stored yet).
    version: u64,
    /// Recent transitions, fleet-wide.
    history: VecDeque<Transition>,
    /// Outcomes of this replica not in the stored record yet.
    pending: Vec<Observation>,
    /// When the current step began and the candidate requests seen then.
    step_base: (u64, u64),
    /// Outcomes the rollout refused as impossible.
    rejected: u64,
}

fn step_of(phase: Phase) -> Option<usize> {
    match phase {
        Phase::Progressing { step } | Phase::Paused { step } => Some(step),
        _ => None,
    }
}

fn reason_name(reason: &Reason) -> &'static str {
    match reason {
        Reason::Started => "started",
        Reason::StepCompleted { .. } => "step_completed",
        Reason::Alarm { .. } => "alarm",
        Reason::Paused => "paused",
        Reason::Resumed => "resumed",
        Reason::ManualRollback => "manual_rollback",
    }
}

/// When the rollout's current step began and the candidate requests counted then, as its
/// persisted form records them (the rollout keeps them private).
fn step_base(r: &Rollout) -> (u64, u64) {
    let v = serde_json::to_value(r).unwrap_or_default();
    let field = |name: &str| v[name].as_u64().unwrap_or(0);
    (field("step_started_ms"), field("step_start_candidates"))
}

/// A stored record read back for a canary of `spec`: its rollout and transitions, or why it cannot
/// be used.
fn decode(text: &str, spec: &CanarySpec) -> Result<Record, String> {
    match serde_json::from_str::<Record>(text) {
        Ok(r) if r.rollout.spec() == spec => Ok(r),
        Ok(_) => Err("the stored rollout is of another spec".to_owned()),
        Err(e) => Err(format!("the stored rollout cannot be read: {e}")),
    }
}
/// A transition in words, for the log line.
fn describe(name: &str, t: &Transition, weight: f64) -> String {
    let at = |p: Phase| match p {
        Phase::Progressing { step } => format!("step {step} ({weight}%)"),
        Phase::Paused { step } => format!("step {step}, paused ({weight}%)"),
        other => phase_name(other).replace('_', " "),
    };
    match t.reason {
        Reason::Started => format!("canary `{name}` started at {}", at(t.to)),
        Reason::StepCompleted { step } if t.to == Phase::Promoted => format!(
            "canary `{name}` promoted: step {step} met its minimums with no alarm; the candidate takes all traffic"
        ),
        Reason::StepCompleted { step } => {
            format!("canary `{name}` completed step {step}, now at {}", at(t.to))
        }
        Reason::Alarm {
            metric,
            log_e,
            log_threshold,
        } => format!(
            "canary `{name}` rolled back: {metric} regressed (log E {log_e:.2} >= {log_threshold:.2}); the candidate takes no more traffic"
        ),
        Reason::Paused => format!("canary `{name}` paused at {}", at(t.from)),
        Reason::Resumed => format!("canary `{name}` resumed at {}", at(t.to)),
        Reason::ManualRollback => format!(
            "canary `{name}` rolled back by an operator; the candidate takes no more traffic"
        ),
    }
}

/// Logs one transition: a readable message and the structured `canary_transition` event.
fn log_transition(name: &str, spec_hash: &str, t: &Transition, weight: f64) {
    let (metric, log_e, threshold) = match t.reason {
        Reason::Alarm {
            metric,
            log_e,
            log_threshold,
        } => (Some(metric.name()), Some(log_e), Some(log_threshold)),
        _ => (None, None, None),
    };
    let message = describe(name, t, weight);
    let transition = serde_json::to_string(t).unwrap_or_default();
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                target: "llmgw::canary",
                event = "canary_transition",
                canary = name,
                spec_hash = spec_hash,
                from = phase_name(t.from),
                from_step = step_of(t.from),
                to = phase_name(t.to),
                to_step = step_of(t.to),
                reason = reason_name(&t.reason),
                metric = metric,
                log_e = log_e,
                threshold = threshold,
                weight_percent = weight,
                at_ms = t.at_ms,
                transition = transition.as_str(),
                "{message}"
            )
        };
    }
    if t.to == Phase::RolledBack {
        event!(warn);
    } else {
        event!(info);
    }
}

impl Controller {
    /// The controller of a canary: the stored rollout, or a new one started now (stored at
    /// once, unless another replica stored one first: then that one).
    async fn load(
        info: &CanaryInfo,
        policy: &CompiledPolicy,
        store: &Store,
        metrics: &CanaryMetrics,
    ) -> Result<Controller, StoreError> {
        let key = state_key(&info.name, &info.spec_hash);
        let (version, mut stored) = store.get_versioned(NAMESPACE, &key).await?;
        if version == 0 && stored.is_none() {
            // A rollout an earlier release saved as a plain value: adopted as it stands (a
            // rolled-back or promoted canary is never started again), or, when it no longer
            // reads, held on the baseline like any unreadable record.
            stored = store.get(NAMESPACE, &key).await?;
        }
        let (state, history) = match stored {
            Some(text) => match decode(&text, &info.spec) {
                Ok(record) => {
                    let r = &record.rollout;
                    tracing::info!(target: "llmgw::canary", canary = &*info.name, state = phase_name(r.phase()), step = step_of(r.phase()), weight_percent = r.current_weight(), "canary `{}` resumed from the state store", info.name);
                    (State::Live(Box::new(record.rollout)), record.transitions)
                }
                Err(reason) => (State::Held(reason), VecDeque::new()),
            },
            None => match Rollout::new(info.spec.clone()) {
                Ok(r) => (State::Live(Box::new(r)), VecDeque::new()),
                Err(e) => (State::Held(e.to_string()), VecDeque::new()),
            },
        };
        if let State::Held(reason) = &state {
            tracing::error!(target: "llmgw::canary", canary = &*info.name, key = key.as_str(), error = reason.as_str(), "canary `{}` is held on the baseline; change its spec to start a new rollout", info.name);
        }
        let deployment = |i: usize| {
            policy
                .deployments()
                .get(i)
                .map_or_else(String::new, |d| d.name.to_string())
        };
        let mut ctl = Controller {
            name: info.name.clone(),
            spec_hash: info.spec_hash.clone(),
            spec: info.spec.clone(),
            key,
            model: policy
                .models()
                .get(info.model)
                .map_or_else(String::new, |m| m.name.to_string()),
            baseline: deployment(info.baseline),
            candidate: deployment(info.candidate),
            slot: Arc::new(Slot::new(&info.spec_hash, 0.0)),
            state,
            version,
            history,
            pending: Vec::new(),
            step_base: (0, 0),
            rejected: 0,
        };
        if let State::Live(r) = &ctl.state {
            ctl.slot.set(r.current_weight());
            ctl.step_base = step_base(r);
            if r.phase() == Phase::Pending {
                // Refused when another replica started it first: it is then loaded as is.
                let _ = ctl.update(store, Some(Command::Start), metrics).await;
            }
        }
        ctl.publish_gauges(metrics);
        Ok(ctl)
    }

    /// Queues one outcome for the next update.
    fn observe(&mut self, obs: Observation, metrics: &CanaryMetrics) {
        if !matches!(self.state, State::Live(_)) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            metrics.dropped.inc();
            return;
        }
        self.pending.push(obs);
    }

    /// Reads the stored record again when its version is not the one held.
    async fn refresh(&mut self, store: &Store, metrics: &CanaryMetrics) -> Result<(), StoreError> {
        if store.version(NAMESPACE, &self.key).await? == self.version {
            return Ok(());
        }
        let (version, stored) = store.get_versioned(NAMESPACE, &self.key).await?;
        let Some(text) = stored else {
            return Ok(());
        };
        let before = self.phase();
        self.version = version;
        match decode(&text, &self.spec) {
            Ok(record) => {
                self.state = State::Live(Box::new(record.rollout));
                self.history = record.transitions;
            }
            Err(reason) => {
                tracing::error!(target: "llmgw::canary", canary = &*self.name, error = reason.as_str(), "canary `{}` is held on the baseline", self.name);
                self.state = State::Held(reason);
            }
        }
        let State::Live(r) = &self.state else {
            self.slot.set(0.0);
            self.publish_gauges(metrics);
            return Ok(());
        };
        self.slot.set(r.current_weight());
        self.step_base = step_base(r);
        if before != Some(r.phase()) {
            tracing::info!(target: "llmgw::canary", event = "canary_followed", canary = &*self.name, spec_hash = self.spec_hash.as_str(), to = phase_name(r.phase()), step = step_of(r.phase()), weight_percent = r.current_weight(), "canary `{}` is now {} at {}% (changed by another replica)", self.name, phase_name(r.phase()).replace('_', " "), r.current_weight());
        }
        self.publish_gauges(metrics);
        Ok(())
    }

    /// The phase held, if the rollout is live.
    fn phase(&self) -> Option<Phase> {
        match &self.state {
            State::Live(r) => Some(r.phase()),
            State::Held(_) => None,
        }
    }

    /// Adds the queued outcomes (and `command`) to the stored rollout, lets time pass, and
    /// writes the result by compare-and-set; on a conflict, reads the newer record and does it
    /// again on that. Writes nothing when nothing changed.
    async fn update(
        &mut self,
        store: &Store,
        command: Option<Command>,
        metrics: &CanaryMetrics,
    ) -> Result<(), CommandFailure> {
        for _ in 0..ATTEMPTS {
            let State::Live(base) = &self.state else {
                self.pending.clear();
                return Err(CommandFailure::StateError(self.name.to_string()));
            };
            let mut next = Rollout::clone(base);
            let now = now_ms();
            let mut transitions = Vec::new();
            let mut rejected = 0;
            for obs in &self.pending {
                match next.observe(obs) {
                    Ok(ts) => transitions.extend(ts),
                    Err(e) => {
                        rejected += 1;
                        tracing::debug!(target: "llmgw::canary", canary = &*self.name, error = %e, "outcome refused");
                    }
                }
            }
            if let Some(command) = command {
                let ts =
                    next.command(command, now)
                        .map_err(|error| CommandFailure::NotApplicable {
                            canary: self.name.to_string(),
                            error,
                        })?;
                transitions.extend(ts);
            }
            transitions.extend(next.tick(now));
            if self.pending.is_empty() && transitions.is_empty() {
                return Ok(());
            }
            let mut history = self.history.clone();
            for t in &transitions {
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(*t);
            }
            let record = Record {
                rollout: next,
                transitions: history,
            };
            let text = serde_json::to_string(&record).map_err(StoreError::from);
            let written = match text {
                Ok(text) => {
                    store
                        .put_if_version(NAMESPACE, &self.key, self.version, &text)
                        .await
                }
                Err(e) => Err(e),
            };
            match written {
                Ok(Some(version)) => {
                    self.version = version;
                    self.state = State::Live(Box::new(record.rollout));
                    self.history = record.transitions;
                    self.pending.clear();
                    self.rejected += rejected;
                    self.transitioned(transitions, metrics);
                    return Ok(());
                }
                // Another replica wrote first: start again from its record.
                Ok(None) => self
                    .refresh(store, metrics)
                    .await
                    .map_err(|e| CommandFailure::Store(e.to_string()))?,
                Err(e) => {
                    tracing::warn!(target: "llmgw::canary", canary = &*self.name, error = %e, "cannot save the canary state; retrying later");
                    return Err(CommandFailure::Store(e.to_string()));
                }
            }
        }
        tracing::warn!(target: "llmgw::canary", canary = &*self.name, "the canary state kept changing under this replica's update; retrying later");
        Err(CommandFailure::Store(
            "the state kept changing; try again".to_owned(),
        ))
    }

    /// Publishes the weight after transitions this replica wrote, then logs and counts them.
    fn transitioned(&mut self, ts: Vec<Transition>, metrics: &CanaryMetrics) {
        let State::Live(r) = &self.state else {
            return;
        };
        let weight = r.current_weight();
        self.slot.set(weight);
        self.step_base = step_base(r);
        if ts.is_empty() {
            return;
        }
        for t in ts {
            log_transition(&self.name, &self.spec_hash, &t, weight);
            metrics
                .transitions
                .get_or_create(&CanaryTransitionLabels {
                    canary: self.name.to_string(),
                    to: phase_name(t.to),
                    reason: reason_name(&t.reason),
                })
                .inc();
        }
        self.publish_gauges(metrics);
    }

    /// Sets every gauge of the canary.
    fn publish_gauges(&self, m: &CanaryMetrics) {
        let name = self.name.to_string();
        let labels = CanaryLabels {
            canary: name.clone(),
        };
        let State::Live(r) = &self.state else {
            m.weight.get_or_create(&labels).set(0.0);
            m.step.get_or_create(&labels).set(-1);
            m.set_state(&name, "state_error");
            return;
        };
        m.weight.get_or_create(&labels).set(r.current_weight());
        m.step
            .get_or_create(&labels)
            .set(step_of(r.phase()).map_or(-1, |s| s as i64));
        m.set_state(&name, phase_name(r.phase()));
        let monitor = r.monitor();
        m.log_threshold
            .get_or_create(&labels)
            .set(monitor.log_threshold());
        for mm in monitor.metrics() {
            let labels = CanaryMetricLabels {
                canary: name.clone(),
                metric: mm.metric().name(),
            };
            m.log_e.get_or_create(&labels).set(mm.log_e());
        }
        let requests = monitor.requests();
        for (arm, n) in [
            ("baseline", requests.baseline),
            ("candidate", requests.candidate),
        ] {
            let labels = CanaryArmLabels {
                canary: name.clone(),
                arm,
            };
            m.requests.get_or_create(&labels).set(n as i64);
        }
    }

    /// Names of the checked metrics (to remove their series).
    fn metric_names(&self) -> Vec<&'static str> {
        match &self.state {
            State::Live(r) => r.spec().metrics.iter().map(|m| m.metric.name()).collect(),
            State::Held(_) => Vec::new(),
        }
    }

    /// The canary's entry in `/admin/status`.
    fn status(&self, now_ms: u64) -> Value {
        let mut v = json!({
            "canary": &*self.name,
            "model": self.model,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "spec_hash": self.spec_hash,
            "state_key": self.key,
        });
        let r = match &self.state {
            State::Held(reason) => {
                v["state"] = json!("state_error");
                v["weight_percent"] = json!(0.0);
                v["error"] = json!(reason);
                return v;
            }
            State::Live(r) => r,
        };
        let spec = r.spec();
        let monitor = r.monitor();
        let requests = monitor.requests();
        let step = step_of(r.phase());
        let progress = step.map(|s| {
            let st = &spec.steps[s];
            json!({
                "candidate_requests": requests.candidate.saturating_sub(self.step_base.1),
                "min_requests": st.min_requests,
                "elapsed_secs": now_ms.saturating_sub(self.step_base.0) as f64 / 1000.0,
                "min_duration_secs": st.min_duration_secs,
            })
        });
        let metrics: Vec<Value> = monitor
            .metrics()
            .iter()
            .zip(&spec.metrics)
            .map(|(mm, ms)| {
                json!({
                    "metric": mm.metric().name(),
                    "log_e": mm.log_e(),
                    "threshold": monitor.log_threshold(),
                    "margin": ms.margin,
                    "events": mm.events(),
                    "skipped_events": mm.skipped_events(),
                    "tested": mm.tested(),
                    "baseline_threshold_ms": monitor.baseline_threshold_ms(mm.metric()),
                })
            })
            .collect();
        v["state"] = json!(phase_name(r.phase()));
        v["step"] = json!(step);
        v["steps"] = json!(spec.steps.len());
        v["weight_percent"] = json!(r.current_weight());
        v["step_progress"] = json!(progress);
        v["requests"] = json!(requests);
        v["alpha"] = json!(spec.alpha);
        v["metrics"] = json!(metrics);
        v["alarm"] = json!(monitor.alarm());
        v["transitions"] = json!(self.history);
        v["observations_rejected"] = json!(self.rejected);
        v["observations_pending"] = json!(self.pending.len());
        v["store_version"] = json!(self.version);
        v
    }
}

/// Owns the controllers.
struct Supervisor {
    app: Arc<App>,
    controllers: HashMap<Arc<str>, Controller>,
    /// The policy the controllers follow, and whether every canary of it is loaded.
    synced: Option<Arc<CompiledPolicy>>,
    complete: bool,
    /// Recent revisions and the spec hash of each of their canaries.
    revisions: VecDeque<(Arc<str>, SpecHashes)>,
}

/// Loads the canaries of the live policy (resuming stored rollouts, starting new ones), then
/// runs the controller task. `None` when it already runs.
pub async fn start(app: Arc<App>) -> Option<JoinHandle<()>> {
    let receivers = app
        .canaries
        .receivers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let (observations, control) = receivers?;
    let mut sup = Supervisor {
        app: app.clone(),
        controllers: HashMap::new(),
        synced: None,
        complete: false,
        revisions: VecDeque::new(),
    };
    sup.sync().await;
    app.canaries.running.store(true, Ordering::Relaxed);
    Some(tokio::spawn(sup.run(observations, control)))
}

impl Supervisor {
    async fn run(
        mut self,
        mut observations: mpsc::Receiver<Observed>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(c) = control.recv() => self.on_control(c).await,
                Some(first) = observations.recv() => {
                    self.on_observed(first).await;
                    for _ in 1..BATCH {
                        match observations.try_recv() {
                            Ok(o) => self.on_observed(o).await,
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => self.on_tick().await,
                else => break,
            }
        }
    }

    fn metrics(&self) -> &CanaryMetrics {
        &self.app.metrics.canary
    }

    /// The spec hashes of a revision's canaries, if the revision is known.
    fn known(&self, revision: &str) -> Option<&SpecHashes> {
        self.revisions
            .iter()
            .find(|(r, _)| &**r == revision)
            .map(|(_, m)| m)
    }

    async fn on_observed(&mut self, o: Observed) {
        if self.known(&o.revision).is_none()
            && self.app.runtime.load().policy.revision() == &*o.revision
        {
            // Decided by a revision applied since the last look: follow it first.
            self.sync().await;
        }
        let Some(hash) = self
            .known(&o.revision)
            .and_then(|m| m.get(&o.canary))
            .cloned()
        else {
            return;
        };
        let metrics = &self.app.metrics.canary;
        if let Some(ctl) = self.controllers.get_mut(&o.canary) {
            if ctl.spec_hash == hash {
                ctl.observe(o.obs, metrics);
            }
        }
    }

    /// Follows the policy, then brings every canary in line with the shared record: reads a
    /// newer one, adds this replica's outcomes and lets time pass.
    async fn on_tick(&mut self) {
        self.sync().await;
        self.update_all().await;
        // Every tick: the status shows how long the current steps have run.
        self.publish_status();
    }

    async fn update_all(&mut self) {
        let store = self.app.state.clone();
        let metrics = &self.app.metrics.canary;
        for ctl in self.controllers.values_mut() {
            if let Err(e) = ctl.refresh(&store, metrics).await {
                tracing::warn!(target: "llmgw::canary", canary = &*ctl.name, error = %e, "cannot read the canary state; retrying");
                continue;
            }
            // A rollout that could not be started when loaded starts now.
            let start = (ctl.phase() == Some(Phase::Pending)).then_some(Command::Start);
            let had = ctl.pending.len();
            // Failures are logged where they happen; the outcomes wait for the next tick.
            let _ = ctl.update(&store, start, metrics).await;
            if had > 0 && ctl.pending.is_empty() {
                ctl.publish_gauges(metrics);
            }
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Command {
                canary,
                command,
                reply,
            } => {
                let result = self.command(&canary, command).await;
                self.publish_status();
                let now = now_ms();
                let answer = result.map(|()| {
                    self.controllers
                        .get(canary.as_str())
                        .map_or(Value::Null, |c| c.status(now))
                });
                let _ = reply.send(answer);
            }
            Control::Flush(done) => {
                self.update_all().await;
                let _ = done.send(());
            }
        }
    }

    /// Applies an operator's command to the shared record (with this replica's outcomes).
    async fn command(&mut self, canary: &str, command: Command) -> Result<(), CommandFailure> {
        let store = self.app.state.clone();
        let metrics = &self.app.metrics.canary;
        let ctl = self
            .controllers
            .get_mut(canary)
            .ok_or_else(|| CommandFailure::Unknown(canary.to_owned()))?;
        if let State::Held(_) = ctl.state {
            return Err(CommandFailure::StateError(canary.to_owned()));
        }
        ctl.refresh(&store, metrics)
            .await
            .map_err(|e| CommandFailure::Store(e.to_string()))?;
        ctl.update(&store, Some(command), metrics).await
    }

    fn remember(&mut self, policy: &CompiledPolicy) {
        let revision: Arc<str> = policy.revision().into();
        let hashes = policy
            .canaries()
            .iter()
            .map(|c| (c.name.clone(), c.spec_hash.clone()))
            .collect();
        self.revisions.retain(|(r, _)| *r != revision);
        if self.revisions.len() == REVISIONS {
            self.revisions.pop_front();
        }
        self.revisions.push_back((revision, hashes));
    }

    /// Follows the live policy: keeps the controllers of canaries whose name and spec are
    /// unchanged, saves and drops the others, loads or starts the new ones.
    async fn sync(&mut self) {
        let policy = self.app.runtime.load().policy.clone();
        let same = self
            .synced
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &policy));
        if same && self.complete {
            return;
        }
        self.remember(&policy);
        let store = self.app.state.clone();
        let wanted: HashMap<&str, &CanaryInfo> =
            policy.canaries().iter().map(|c| (&*c.name, c)).collect();
        let gone: Vec<Arc<str>> = self
            .controllers
            .iter()
            .filter(|(name, ctl)| {
                wanted.get(&***name).map(|c| &c.spec_hash) != Some(&ctl.spec_hash)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(mut ctl) = self.controllers.remove(&name) {
                // Its last outcomes go to the record; a failure is logged where it happens.
                let _ = ctl.update(&store, None, self.metrics()).await;
                self.metrics().remove(&name, &ctl.metric_names());
                tracing::info!(target: "llmgw::canary", canary = &*name, spec_hash = ctl.spec_hash.as_str(), "canary `{name}` left the policy (removed or changed); its state stays in the store");
            }
        }
        let mut complete = true;
        for info in policy.canaries() {
            if self.controllers.contains_key(&info.name) {
                continue;
            }
            match Controller::load(info, &policy, &store, self.metrics()).await {
                Ok(ctl) => {
                    self.controllers.insert(info.name.clone(), ctl);
                }
                Err(e) => {
                    complete = false;
                    tracing::warn!(target: "llmgw::canary", canary = &*info.name, error = %e, "cannot read the canary state; the canary splits no traffic until it can");
                }
            }
        }
        let slots: Slots = self
            .controllers
            .iter()
            .map(|(name, ctl)| (name.clone(), ctl.slot.clone()))
            .collect();
        self.app.canaries.slots.store(Arc::new(slots));
        self.synced = Some(policy);
        self.complete = complete;
        self.publish_status();
    }

    fn publish_status(&mut self) {
        let now = now_ms();
        let mut names: Vec<&Arc<str>> = self.controllers.keys().collect();
        names.sort();
        let list: Vec<Value> = names
            .into_iter()
            .filter_map(|n| self.controllers.get(n))
            .map(|c| c.status(now))
            .collect();
        self.app.canaries.status.store(Arc::new(Value::Array(list)));
    }
}

//! The rollout state machine: Pending → Progressing{step} → Promoted | RolledBack, with a
//! manual Paused.
//!
//! Inputs are completed requests (fed to the [`Monitor`]), the time, and commands; outputs are
//! the new weight and the transitions, returned as values for the gateway to log. The whole
//! state serialises, so a restarted gateway resumes exactly where it stopped, and it is a
//! deterministic function of its inputs. (JSON keeps every number exactly: this crate turns on
//! serde_json's `float_roundtrip`.) Time never goes backwards inside: an earlier `now_ms`
//! than already seen counts as the latest one seen.
//!
//! A step is complete when the candidate served `min_requests` requests since the step began
//! and `min_duration_secs` have passed. Completing the last step promotes. An alarm of any
//! metric rolls back at once, whatever the step, paused or not. Pausing holds the current
//! weight and stops progress (the statistics keep running); the step's clock is not reset.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::monitor::{Monitor, Observation, ObservationError};
use crate::spec::{CanarySpec, InvalidSpec, Metric};

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Not started: all traffic on the baseline.
    Pending,
    /// At step `step` (0-based) of the spec.
    Progressing {
        /// Index of the current step.
        step: usize,
    },
    /// Held at step `step` by an operator.
    Paused {
        /// Index of the step held.
        step: usize,
    },
    /// Done: all traffic on the candidate.
    Promoted,
    /// Stopped: all traffic back on the baseline.
    RolledBack,
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The start command.
    Started,
    /// Step `step` met its minimums without an alarm.
    StepCompleted {
        /// Index of the completed step.
        step: usize,
    },
    /// A metric's e-process crossed its threshold.
    Alarm {
        /// Which metric.
        metric: Metric,
        /// Its log E when it crossed.
        log_e: f64,
        /// The threshold crossed.
        log_threshold: f64,
    },
    /// The pause command.
    Paused,
    /// The resume command.
    Resumed,
    /// The rollback command.
    ManualRollback,
}

/// One change of phase, to be logged by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// Why.
    pub reason: Reason,
    /// When, in ms.
    pub at_ms: u64,
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Pending → first step.
    Start,
    /// Progressing → Paused.
    Pause,
    /// Paused → Progressing.
    Resume,
    /// Any live phase → RolledBack.
    Rollback,
}

/// A command that does not apply in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("cannot {command:?} a rollout that is {phase:?}")]
pub struct CommandError {
    /// The command given.
    pub command: Command,
    /// The phase it was given in.
    pub phase: Phase,
}

/// Persisted state that does not fit its own spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("inconsistent rollout state: {0}")]
pub struct StateError(String);

/// A canary rollout: spec, statistics and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Unchecked")]
pub struct Rollout {
    spec: CanarySpec,
    spec_hash: String,
    phase: Phase,
    monitor: Monitor,
    clock_ms: u64,
    step_started_ms: u64,
    step_start_candidates: u64,
}

/// A rollout as read back, before checking it against its spec.
#[derive(Deserialize)]
struct Unchecked {
    spec: CanarySpec,
    spec_hash: String,
    phase: Phase,
    monitor: Monitor,
    clock_ms: u64,
    step_started_ms: u64,
    step_start_candidates: u64,
}

impl TryFrom<Unchecked> for Rollout {
    type Error = StateError;

    fn try_from(u: Unchecked) -> Result<Self, StateError> {
        let fail = |what: String| Err(StateError(what));
        if let Some(p) = u.spec.validate().first() {
            return fail(format!("{}: {}", p.path, p.message));
        }
        if u.spec_hash != u.spec.spec_hash() {
            return fail(format!(
                "`spec_hash` {} does not match the spec",
                u.spec_hash
            ));
        }
        if let Phase::Progressing { step } | Phase::Paused { step } = u.phase {
            if step >= u.spec.steps.len() {
                return fail(format!("step {step} of {} steps", u.spec.steps.len()));
            }
        }
        let monitored = u.monitor.metrics().iter().map(|m| m.metric());
        if !monitored.eq(u.spec.metrics.iter().map(|m| m.metric)) {
            return fail("the monitored metrics are not the spec's".to_owned());
        }
        if u.step_start_candidates > u.monitor.requests().candidate {
            return fail("the step started after more candidate requests than seen".to_owned());
        }
        Ok(Rollout {
            spec: u.spec,
            spec_hash: u.spec_hash,
            phase: u.phase,
            monitor: u.monitor,
            clock_ms: u.clock_ms,
            step_started_ms: u.step_started_ms,
            step_start_candidates: u.step_start_candidates,
        })
    }
}

impl Rollout {
    /// A pending rollout of a valid spec.
    pub fn new(spec: CanarySpec) -> Result<Self, InvalidSpec> {
        let spec = spec.validated()?;
        let monitor = Monitor::new(&spec.metrics, spec.alpha)?;
        Ok(Rollout {
            spec_hash: spec.spec_hash(),
            spec,
            phase: Phase::Pending,
            monitor,
            clock_ms: 0,
            step_started_ms: 0,
            step_start_candidates: 0,
        })
    }

    /// The spec being rolled out.
    pub fn spec(&self) -> &CanarySpec {
        &self.spec
    }

    /// [`CanarySpec::spec_hash`] of the spec, to check persisted state still matches.
    pub fn spec_hash(&self) -> &str {
        &self.spec_hash
    }

    /// Where the rollout is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The statistics.
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// Percent of traffic for the candidate now: 0 when pending or rolled back, the step's
    /// weight when progressing or paused, 100 when promoted.
    pub fn current_weight(&self) -> f64 {
        match self.phase {
            Phase::Pending | Phase::RolledBack => 0.0,
            Phase::Progressing { step } | Phase::Paused { step } => {
                self.spec.steps[step].weight_percent
            }
            Phase::Promoted => 100.0,
        }
    }

    /// Adds one completed request, then rolls back or advances if due.
    pub fn observe(&mut self, obs: &Observation) -> Result<Vec<Transition>, ObservationError> {
        self.monitor.observe(obs)?;
        Ok(self.tick(obs.now_ms))
    }

    /// Lets time pass: rolls back on an alarm, or advances when the step's minimums are met.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        self.clock_ms = self.clock_ms.max(now_ms);
        let mut out = Vec::new();
        let live = matches!(self.phase, Phase::Progressing { .. } | Phase::Paused { .. });
        if let (true, Some(alarm)) = (live, self.monitor.alarm()) {
            let reason = Reason::Alarm {
                metric: alarm.metric,
                log_e: alarm.log_e,
                log_threshold: alarm.log_threshold,
            };
            out.push(self.go(Phase::RolledBack, reason));
        } else if let Phase::Progressing { step } = self.phase {
            if self.step_done(step) {
                let next = if step + 1 < self.spec.steps.len() {
                    Phase::Progressing { step: step + 1 }
                } else {
                    Phase::Promoted
                };
                out.push(self.go(next, Reason::StepCompleted { step }));
            }
        }
        out
    }

    /// Applies an operator's command at `now_ms`.
    pub fn command(
        &mut self,
        command: Command,
        now_ms: u64,
    ) -> Result<Vec<Transition>, CommandError> {
        self.clock_ms = self.clock_ms.max(now_ms);
        let (to, reason) = match (command, self.phase) {
            (Command::Start, Phase::Pending) => (Phase::Progressing { step: 0 }, Reason::Started),
            (Command::Pause, Phase::Progressing { step }) => {
                (Phase::Paused { step }, Reason::Paused)
            }
            (Command::Resume, Phase::Paused { step }) => {
                (Phase::Progressing { step }, Reason::Resumed)
            }
            (
                Command::Rollback,
                Phase::Pending | Phase::Progressing { .. } | Phase::Paused { .. },
            ) => (Phase::RolledBack, Reason::ManualRollback),
            (command, phase) => return Err(CommandError { command, phase }),
        };
        let mut out = vec![self.go(to, reason)];
        // A resumed step whose minimums were met while paused completes now.
        out.extend(self.tick(now_ms));
        Ok(out)
    }

    fn step_done(&self, step: usize) -> bool {
        let s = &self.spec.steps[step];
        let candidates = self.monitor.requests().candidate - self.step_start_candidates;
        let elapsed_ms = self.clock_ms.saturating_sub(self.step_started_ms);
        candidates >= s.min_requests && elapsed_ms >= s.min_duration_secs.saturating_mul(1000)
    }

    fn go(&mut self, to: Phase, reason: Reason) -> Transition {
        let from = self.phase;
        if let Phase::Progressing { step } = to {
            if from != (Phase::Paused { step }) {
                self.step_started_ms = self.clock_ms;
                self.step_start_candidates = self.monitor.requests().candidate;
            }
        }
        self.phase = to;
        Transition {
            from,
            to,
            reason,
            at_ms: self.clock_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MetricSpec, Split, Step};
    use crate::split::Arm;

    fn spec() -> CanarySpec {
        let step = |weight_percent, min_requests, min_duration_secs| Step {
            weight_percent,
            min_requests,
            min_duration_secs,
        };
        CanarySpec {
            steps: vec![step(5.0, 3, 60), step(50.0, 2, 0)],
            metrics: vec![MetricSpec {
                metric: Metric::ErrorRate,
                margin: 1.0,
            }],
            alpha: 0.01,
            split: Split::PerRequest,
        }
    }

    fn candidate(now_ms: u64, w: f64, error: bool) -> Observation {
        Observation {
            now_ms,
            arm: Arm::Candidate,
            w,
            error,
            latency_ms: Some(100.0),
            ttft_ms: None,
        }
    }

    fn started() -> Rollout {
        let mut r = Rollout::new(spec()).unwrap();
        let t = r.command(Command::Start, 1_000).unwrap();
        assert_eq!(t.len(), 1);
        r
    }

    #[test]
    fn starts_pending_with_no_traffic() {
        let r = Rollout::new(spec()).unwrap();
        assert_eq!(r.phase(), Phase::Pending);
        assert_eq!(r.current_weight(), 0.0);
        assert_eq!(r.spec_hash(), spec().spec_hash());
    }

    #[test]
    fn invalid_spec_is_refused() {
        let mut s = spec();
        s.steps[1].weight_percent = 5.0;
        let err = Rollout::new(s).unwrap_err();
        assert_eq!(err.problems[0].code, "steps_not_increasing");
    }

    #[test]
    fn advances_only_when_requests_and_duration_are_met() {
        let mut r = started();
        assert_eq!(r.phase(), Phase::Progressing { step: 0 });
        assert_eq!(r.current_weight(), 5.0);
        for t in [2_000, 3_000, 4_000] {
            assert!(r.observe(&candidate(t, 0.05, false)).unwrap().is_empty());
        }
        // Three candidate requests, but only 3 s of the 60 s.
        assert!(r.tick(60_999).is_empty());
        let t = r.tick(61_000);
        assert_eq!(
            t,
            vec![Transition {
                from: Phase::Progressing { step: 0 },
                to: Phase::Progressing { step: 1 },
                reason: Reason::StepCompleted { step: 0 },
                at_ms: 61_000,
            }]
        );
        assert_eq!(r.current_weight(), 50.0);
        // Step 1 counts its own candidate requests: two more are needed.
        assert!(r
            .observe(&candidate(61_500, 0.5, false))
            .unwrap()
            .is_empty());
        let t = r.observe(&candidate(62_000, 0.5, false)).unwrap();
        assert_eq!(t[0].to, Phase::Promoted);
        assert_eq!(t[0].reason, Reason::StepCompleted { step: 1 });
        assert_eq!(r.current_weight(), 100.0);
        // Promotion is final.
        assert!(r.observe(&candidate(63_000, 1.0, true)).unwrap().is_empty());
        assert!(r.command(Command::Rollback, 64_000).is_err());
    }

    #[test]
    fn alarm_rolls_back_at_once() {
        let mut r = started();
        let mut transitions = Vec::new();
        let mut t = 1_000;
        while transitions.is_empty() {
            t += 10;
            transitions = r.observe(&candidate(t, 0.05, true)).unwrap();
        }
        let tr = transitions[0];
        assert_eq!(tr.from, Phase::Progressing { step: 0 });
        assert_eq!(tr.to, Phase::RolledBack);
        assert_eq!(tr.at_ms, t);
        match tr.reason {
            Reason::Alarm {
                metric,
                log_e,
                log_threshold,
            } => {
                assert_eq!(metric, Metric::ErrorRate);
                assert!(log_e >= log_threshold);
            }
            other => panic!("unexpected reason {other:?}"),
        }
        assert_eq!(r.current_weight(), 0.0);
        // Four candidate errors in a row at w = 0.05 are enough:
        // log E = ln(mean_j (θ(0.05, r_j)/0.05)^4) = 5.63 >= ln 100, while three give 3.88.
        assert_eq!(t, 1_040);
    }

    #[test]
    fn pause_holds_the_weight_and_resume_continues_the_step() {
        let mut r = started();
        let t = r.command(Command::Pause, 2_000).unwrap();
        assert_eq!(t[0].to, Phase::Paused { step: 0 });
        assert_eq!(t[0].reason, Reason::Paused);
        assert_eq!(r.current_weight(), 5.0);
        for t in [3_000, 4_000, 5_000] {
            assert!(r.observe(&candidate(t, 0.05, false)).unwrap().is_empty());
        }
        assert!(r.tick(100_000).is_empty(), "no progress while paused");
        assert!(r.command(Command::Pause, 100_000).is_err());
        assert!(r.command(Command::Start, 100_000).is_err());
        // Minimums were met while paused: resuming completes the step at once.
        let t = r.command(Command::Resume, 100_000).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].to, t[0].reason),
            (Phase::Progressing { step: 0 }, Reason::Resumed)
        );
        assert_eq!(t[1].to, Phase::Progressing { step: 1 });
    }

    #[test]
    fn alarm_while_paused_still_rolls_back() {
        let mut r = started();
        r.command(Command::Pause, 2_000).unwrap();
        let mut last = Vec::new();
        for i in 0..10 {
            let t = r.observe(&candidate(3_000 + i, 0.05, true)).unwrap();
            if !t.is_empty() {
                last = t;
            }
        }
        assert_eq!(last[0].from, Phase::Paused { step: 0 });
        assert_eq!(r.phase(), Phase::RolledBack);
    }

    #[test]
    fn manual_rollback_and_command_errors() {
        let mut r = started();
        let t = r.command(Command::Rollback, 5_000).unwrap();
        assert_eq!(
            (t[0].to, t[0].reason),
            (Phase::RolledBack, Reason::ManualRollback)
        );
        let err = r.command(Command::Resume, 6_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot Resume a rollout that is RolledBack"
        );
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut r = started();
        for t in [70_000, 2_000, 3_000] {
            r.observe(&candidate(t, 0.05, false)).unwrap();
        }
        assert_eq!(r.phase(), Phase::Progressing { step: 1 });
    }

    #[test]
    fn serde_round_trip_resumes_identically() {
        let mut a = started();
        for i in 0..2 {
            a.observe(&candidate(2_000 + i, 0.05, i == 0)).unwrap();
        }
        let json = serde_json::to_string(&a).unwrap();
        let mut b: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        assert!(
            json.contains(r#""phase":{"state":"progressing","step":0}"#),
            "{json}"
        );
        let inputs: Vec<Observation> = (0..40)
            .map(|i| candidate(3_000 + i * 2_000, 0.05, i % 3 == 0))
            .collect();
        for o in &inputs {
            assert_eq!(a.observe(o).unwrap(), b.observe(o).unwrap());
            assert_eq!(a, b);
        }
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn inconsistent_state_is_refused_on_load() {
        let json = serde_json::to_string(&started()).unwrap();
        let load = |json: &str| {
            serde_json::from_str::<Rollout>(json)
                .unwrap_err()
                .to_string()
        };
        let bad_step = json.replace(r#""step":0"#, r#""step":2"#);
        assert!(
            load(&bad_step).contains("step 2 of 2 steps"),
            "{}",
            load(&bad_step)
        );
        let other_spec = json.replace(r#""min_requests":3"#, r#""min_requests":4"#);
        assert!(load(&other_spec).contains("does not match the spec"));
        let invalid = json.replace(r#""alpha":0.01"#, r#""alpha":2.0"#);
        assert!(load(&invalid).contains("alpha"));
    }

    #[test]
    fn transitions_serialise_for_logging() {
        let t = Transition {
            from: Phase::Paused { step: 1 },
            to: Phase::RolledBack,
            reason: Reason::ManualRollback,
            at_ms: 7,
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"from":{"state":"paused","step":1},"to":{"state":"rolled_back"},"reason":{"kind":"manual_rollback"},"at_ms":7}"#
        );
    }
}

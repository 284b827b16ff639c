//! Error-rate scenarios, simulated event by event.
//!
//! Requests are never drawn one by one. Within a stage each request is an error with
//! probability `q = w·p_c + (1−w)·p_b`, so the gap to the next error is geometric; an error was
//! served by the candidate with probability `w·p_c / q`. The number of candidate requests,
//! needed only at a look or an alarm, is drawn then: the requests between two looks that were
//! not errors went to the candidate independently with probability `w(1−p_c)/(1−q)`. This is
//! the exact joint law of what the three methods see, at a tiny fraction of the cost.

use rand::Rng;
use rand_distr::{Binomial, Distribution, Geometric};

use super::{Checkpoints, Outcome, ALPHA, LOOK_EVERY};
use crate::eprocess::{log_threshold, theta, EProcess, Increments};

/// One stretch of a rollout at a constant candidate share.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stage {
    pub w: f64,
    pub requests: u64,
}

/// A canary whose candidate fails `relative_risk` times as often as the baseline.
#[derive(Debug, Clone)]
pub(super) struct ErrorScenario {
    pub stages: Vec<Stage>,
    pub base_rate: f64,
    pub relative_risk: f64,
}

/// Counts seen so far, with candidate requests drawn lazily.
#[derive(Default)]
struct Walk {
    /// Requests so far.
    t: u64,
    candidate_errors: u64,
    baseline_errors: u64,
    /// Position up to which non-error requests were assigned to arms.
    sampled_to: u64,
    errors_at_sample: u64,
    non_error_candidates: u64,
}

impl Walk {
    /// Candidate requests among the first `to` requests; every error up to `to` must have been
    /// added, and `to` must lie in the current stage (whose non-error share is `nu`).
    fn candidates_at(&mut self, to: u64, nu: f64, rng: &mut impl Rng) -> u64 {
        let errors = self.candidate_errors + self.baseline_errors;
        let non_errors = (to - self.sampled_to) - (errors - self.errors_at_sample);
        if non_errors > 0 {
            let draw = Binomial::new(non_errors, nu).expect("share is a probability");
            self.non_error_candidates += draw.sample(rng);
        }
        self.sampled_to = to;
        self.errors_at_sample = errors;
        self.candidate_errors + self.non_error_candidates
    }

    /// The z-test's look at the first `to` requests.
    fn look(&mut self, to: u64, nu: f64, rng: &mut impl Rng) -> (bool, u64) {
        let n_c = self.candidates_at(to, nu, rng);
        (
            super::z_rejects(self.candidate_errors, n_c, self.baseline_errors, to - n_c),
            n_c,
        )
    }
}

/// One simulated canary; `fixed_at` is the fixed-horizon test's position in requests.
pub(super) fn run(sc: &ErrorScenario, fixed_at: u64, rng: &mut impl Rng) -> Outcome {
    let threshold = log_threshold(ALPHA, 1);
    let horizon = sc.stages.iter().map(|s| s.requests).sum();
    let mut checkpoints = Checkpoints::new(LOOK_EVERY, fixed_at, horizon);
    let mut eprocess = EProcess::new(1.0);
    let mut out = Outcome::default();
    let mut walk = Walk::default();
    for stage in &sc.stages {
        let w = stage.w;
        let (p_c, p_b) = (sc.base_rate * sc.relative_risk, sc.base_rate);
        let q = w * p_c + (1.0 - w) * p_b;
        // An error's chance of being the candidate's, w·p_c/q, is θ(w, relative risk).
        let candidate_share = theta(w, sc.relative_risk);
        let nu = w * (1.0 - p_c) / (1.0 - q);
        let increments = Increments::new(w, 1.0).expect("stage shares are in (0, 1)");
        let gaps = Geometric::new(q).expect("error rate is a probability");
        let stage_end = walk.t + stage.requests;
        loop {
            let next = walk.t.saturating_add(gaps.sample(rng)).saturating_add(1);
            while let Some(at) = checkpoints.next_before(next.min(stage_end + 1)) {
                let (rejects, n_c) = walk.look(at, nu, rng);
                checkpoints.record(at, rejects, n_c, &mut out);
            }
            if next > stage_end {
                walk.t = stage_end;
                walk.candidates_at(stage_end, nu, rng);
                break;
            }
            walk.t = next;
            let candidate = rng.random::<f64>() < candidate_share;
            if candidate {
                walk.candidate_errors += 1;
            } else {
                walk.baseline_errors += 1;
            }
            eprocess.apply(&increments, w, candidate);
            if out.e_process.is_none() && eprocess.crossed(threshold) {
                out.e_process = Some(walk.candidates_at(next, nu, rng));
            }
            if out.e_process.is_some() && checkpoints.done() {
                return out;
            }
        }
    }
    out
}

//! The latency scenario, simulated request by request through the real [`Monitor`].
//!
//! Latency events depend on a threshold estimated online from earlier baseline requests, so
//! there is no shortcut here; detection is quick, and every simulation stops once all three
//! methods have decided.

use rand::Rng;
use rand_distr::{Distribution, LogNormal};

use super::{Checkpoints, Outcome, ALPHA, LOOK_EVERY};
use crate::monitor::{Monitor, Observation};
use crate::spec::{Metric, MetricSpec};
use crate::split::Arm;

/// Lognormal latencies; the candidate's are scaled by `factor`, and `latency_p95` tolerates
/// a slowdown of `margin`.
#[derive(Debug, Clone)]
pub(super) struct LatencyScenario {
    pub w: f64,
    pub median_ms: f64,
    pub sigma: f64,
    pub factor: f64,
    pub margin: f64,
    pub requests: u64,
}

/// One simulated canary; `fixed_at` is the fixed-horizon test's position in requests.
pub(super) fn run(sc: &LatencyScenario, fixed_at: u64, rng: &mut impl Rng) -> Outcome {
    let metrics = [MetricSpec {
        metric: Metric::LatencyP95,
        margin: sc.margin,
    }];
    let mut monitor = Monitor::new(&metrics, ALPHA).expect("valid checks");
    let latencies = LogNormal::new(sc.median_ms.ln(), sc.sigma).expect("valid lognormal");
    let mut checkpoints = Checkpoints::new(LOOK_EVERY, fixed_at, sc.requests);
    let mut out = Outcome::default();
    for i in 1..=sc.requests {
        let candidate = rng.random::<f64>() < sc.w;
        let (arm, factor) = if candidate {
            (Arm::Candidate, sc.factor)
        } else {
            (Arm::Baseline, 1.0)
        };
        let obs = Observation {
            now_ms: i,
            arm,
            w: sc.w,
            error: false,
            latency_ms: Some(latencies.sample(rng) * factor),
            ttft_ms: None,
        };
        monitor.observe(&obs).expect("simulated requests are valid");
        let n_c = monitor.requests().candidate;
        if out.e_process.is_none() && monitor.alarm().is_some() {
            out.e_process = Some(n_c);
        }
        while let Some(at) = checkpoints.next_before(i + 1) {
            let m = &monitor.metrics()[0];
            let (tested, events) = (m.tested(), m.events());
            let rejects = super::z_rejects(
                events.candidate,
                tested.candidate,
                events.baseline,
                tested.baseline,
            );
            checkpoints.record(at, rejects, n_c, &mut out);
        }
        if out.e_process.is_some() && checkpoints.done() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::run_parallel;
    use super::*;

    /// Rollbacks of 100 simulated canaries (20,000 requests at 5%: 1,000 candidate requests
    /// each) and the median candidate requests they took.
    fn rollbacks(factor: f64, margin: f64) -> (usize, Option<u64>) {
        let sc = LatencyScenario {
            w: 0.05,
            median_ms: 800.0,
            sigma: 0.5,
            factor,
            margin,
            requests: 20_000,
        };
        let mut at: Vec<u64> = run_parallel(100, 11, 0, 0, |rng| run(&sc, u64::MAX, rng))
            .iter()
            .filter_map(|o| o.e_process)
            .collect();
        at.sort_unstable();
        (at.len(), at.get(at.len() / 2).copied())
    }

    #[test]
    fn a_latency_margin_is_the_slowdown_tolerated() {
        // "p95 may be up to 10% slower": a candidate exactly 10% slower is within it, and is
        // rolled back no more often than α = 1% (Ville; allow sampling noise: at most 3 of 100).
        let (within, _) = rollbacks(1.1, 1.1);
        assert!(within <= 3, "{within} of 100 rolled back within the margin");
        // The same candidate without a margin is a regression: already after 1,000 candidate
        // requests a good share of them is rolled back (all of them, given time).
        let (beyond, _) = rollbacks(1.1, 1.0);
        assert!(beyond >= 20, "{beyond} of 100 rolled back with no margin");
        // ×1.3 is beyond a margin of 1.1: caught every time, within a few hundred requests.
        let (caught, median) = rollbacks(1.3, 1.1);
        assert!(caught >= 98, "{caught} of 100");
        assert!(median.is_some_and(|m| m <= 400), "median {median:?}");
    }
}

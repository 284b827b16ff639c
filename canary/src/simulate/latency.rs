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

/// Lognormal latencies; the candidate's are scaled by `factor`.
#[derive(Debug, Clone)]
pub(super) struct LatencyScenario {
    pub w: f64,
    pub median_ms: f64,
    pub sigma: f64,
    pub factor: f64,
    pub requests: u64,
}

/// One simulated canary; `fixed_at` is the fixed-horizon test's position in requests.
pub(super) fn run(sc: &LatencyScenario, fixed_at: u64, rng: &mut impl Rng) -> Outcome {
    let metrics = [MetricSpec {
        metric: Metric::LatencyP95,
        margin: 1.0,
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

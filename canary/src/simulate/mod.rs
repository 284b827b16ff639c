//! Monte Carlo of the canary check against the classical alternatives.
//!
//! Scenarios (1M requests each, base error rate 1%): healthy canaries at a candidate share of
//! 1%, 5%, and staged 1/5/25/50% (equal quarters), which measure false rollbacks; an error-rate
//! doubling at 5% and a ×1.3 latency shift at 5% (lognormal latencies, metric `latency_p95`),
//! which measure detection delay in candidate requests. Methods side by side, all at α = 0.01:
//! the e-process (K = 1), a pooled two-proportion z-test looked at every 1,000 requests, and a
//! one-shot z-test at a horizon sized for 80% power.
//!
//! Every simulation has its own RNG stream derived from the seed, the scenario and its index,
//! so the report depends on the seed alone, not on the number of threads.

mod errors;
mod latency;
mod report;

use rand::rngs::StdRng;
use rand::SeedableRng;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::ztest::{fixed_horizon_candidate_requests, pooled_two_proportion};
use errors::{ErrorScenario, Stage};
use latency::LatencyScenario;
pub use report::{Method, MethodResult, ScenarioResult, SimReport};

/// Overall false-rollback budget of every method.
const ALPHA: f64 = 0.01;
/// The naive z-test looks after every this many requests.
const LOOK_EVERY: u64 = 1_000;
/// Power the fixed horizon is sized for.
const POWER: f64 = 0.8;
/// Requests per simulated canary.
const REQUESTS: u64 = 1_000_000;
/// Baseline error rate.
const BASE_ERROR_RATE: f64 = 0.01;

/// The seed used when none is given.
pub const DEFAULT_SEED: u64 = 20_261_124;

/// How much to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Simulated canaries per scenario.
    pub sims: usize,
    /// Seed of every random stream.
    pub seed: u64,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            sims: 10_000,
            seed: DEFAULT_SEED,
            threads: 0,
        }
    }
}

/// When each method rolled one simulated canary back, in candidate requests served by then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Outcome {
    e_process: Option<u64>,
    naive_z: Option<u64>,
    fixed: Option<u64>,
}

/// The z-tests' pending looks: every `every` requests for the naive test, once at `fixed_at`.
struct Checkpoints {
    every: u64,
    horizon: u64,
    next_look: Option<u64>,
    fixed_at: Option<u64>,
}

impl Checkpoints {
    fn new(every: u64, fixed_at: u64, horizon: u64) -> Self {
        Checkpoints {
            every,
            horizon,
            next_look: (every <= horizon).then_some(every),
            fixed_at: (fixed_at <= horizon).then_some(fixed_at),
        }
    }

    /// The earliest pending look strictly before request `limit`.
    fn next_before(&self, limit: u64) -> Option<u64> {
        [self.next_look, self.fixed_at]
            .into_iter()
            .flatten()
            .min()
            .filter(|&at| at < limit)
    }

    /// Records the verdict of the z-test at request `at` (with `n_c` candidate requests).
    fn record(&mut self, at: u64, rejects: bool, n_c: u64, out: &mut Outcome) {
        if self.next_look == Some(at) {
            let next = at + self.every;
            self.next_look = if rejects {
                out.naive_z = Some(n_c);
                None
            } else {
                (next <= self.horizon).then_some(next)
            };
        }
        if self.fixed_at == Some(at) {
            out.fixed = rejects.then_some(n_c);
            self.fixed_at = None;
        }
    }

    fn done(&self) -> bool {
        self.next_look.is_none() && self.fixed_at.is_none()
    }
}

/// One-sided pooled z-test of the candidate's event rate against the baseline's at level α.
fn z_rejects(candidate_events: u64, n_c: u64, baseline_events: u64, n_b: u64) -> bool {
    pooled_two_proportion(candidate_events, n_c, baseline_events, n_b)
        .is_some_and(|t| t.p_larger < ALPHA)
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No regression: every rollback is false.
    Healthy,
    /// A real regression: how soon it is caught.
    Regression,
}

#[derive(Debug, Clone)]
enum Model {
    Errors(ErrorScenario),
    Latency(LatencyScenario),
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    description: String,
    kind: Kind,
    model: Model,
    /// Candidate requests the fixed-horizon test needs, and where it looks (in requests).
    fixed_candidate_requests: u64,
    fixed_at: u64,
}

impl Scenario {
    fn errors(name: &'static str, kind: Kind, stages: Vec<Stage>, relative_risk: f64) -> Self {
        let w = stages[0].w;
        let n = fixed_horizon_candidate_requests(
            BASE_ERROR_RATE,
            2.0 * BASE_ERROR_RATE,
            w,
            ALPHA,
            POWER,
        );
        let shares: Vec<String> = stages.iter().map(|s| format!("{}%", s.w * 100.0)).collect();
        let description = format!(
            "{} requests at candidate share {}, baseline error rate {}%, candidate {}; fixed \
             horizon sized for an error-rate doubling at {}%",
            REQUESTS,
            shares.join("/"),
            BASE_ERROR_RATE * 100.0,
            if relative_risk == 1.0 {
                "the same".to_owned()
            } else {
                format!("x{relative_risk}")
            },
            w * 100.0,
        );
        Scenario {
            name,
            description,
            kind,
            model: Model::Errors(ErrorScenario {
                stages,
                base_rate: BASE_ERROR_RATE,
                relative_risk,
            }),
            fixed_candidate_requests: n,
            fixed_at: (n as f64 / w).ceil() as u64,
        }
    }

    fn latency(name: &'static str, sc: LatencyScenario) -> Self {
        // P(candidate above the baseline's p95) = P(Z > z_0.95 − ln(factor)/σ).
        let normal = Normal::standard();
        let p_candidate = normal.sf(normal.inverse_cdf(0.95) - sc.factor.ln() / sc.sigma);
        let n = fixed_horizon_candidate_requests(0.05, p_candidate, sc.w, ALPHA, POWER);
        let description = format!(
            "{} requests at candidate share {}%, lognormal latencies (median {} ms, sigma {}), \
             candidate x{}: {:.1}% of its requests above the baseline p95; metric latency_p95",
            sc.requests,
            sc.w * 100.0,
            sc.median_ms,
            sc.sigma,
            sc.factor,
            p_candidate * 100.0,
        );
        Scenario {
            name,
            description,
            kind: Kind::Regression,
            fixed_candidate_requests: n,
            fixed_at: (n as f64 / sc.w).ceil() as u64,
            model: Model::Latency(sc),
        }
    }

    fn run(&self, rng: &mut StdRng) -> Outcome {
        match &self.model {
            Model::Errors(sc) => errors::run(sc, self.fixed_at, rng),
            Model::Latency(sc) => latency::run(sc, self.fixed_at, rng),
        }
    }
}

fn scenarios() -> Vec<Scenario> {
    let single = |w| {
        vec![Stage {
            w,
            requests: REQUESTS,
        }]
    };
    let staged = [0.01, 0.05, 0.25, 0.5]
        .into_iter()
        .map(|w| Stage {
            w,
            requests: REQUESTS / 4,
        })
        .collect();
    vec![
        Scenario::errors("healthy_w1", Kind::Healthy, single(0.01), 1.0),
        Scenario::errors("healthy_w5", Kind::Healthy, single(0.05), 1.0),
        Scenario::errors("healthy_staged_1_5_25_50", Kind::Healthy, staged, 1.0),
        Scenario::errors("error_rate_x2_w5", Kind::Regression, single(0.05), 2.0),
        Scenario::latency(
            "latency_x1.3_w5",
            LatencyScenario {
                w: 0.05,
                median_ms: 800.0,
                sigma: 0.5,
                factor: 1.3,
                margin: 1.0,
                requests: REQUESTS,
            },
        ),
    ]
}

/// Runs every scenario `cfg.sims` times and summarises each method.
pub fn simulate(cfg: &SimConfig) -> SimReport {
    let mut results = Vec::new();
    for (stream, scenario) in scenarios().iter().enumerate() {
        let outcomes = run_parallel(cfg.sims, cfg.seed, cfg.threads, stream as u64, |rng| {
            scenario.run(rng)
        });
        results.extend(report::summarise(scenario, &outcomes));
    }
    SimReport {
        sims: cfg.sims,
        seed: cfg.seed,
        alpha: ALPHA,
        scenarios: results,
    }
}

/// `sims` results of `f`, computed on `threads` threads (0: one per core), in simulation
/// order; simulation `k` of stream `stream` draws from its own RNG, so the results do not
/// depend on the thread count.
pub(crate) fn run_parallel<T, F>(
    sims: usize,
    seed: u64,
    threads: usize,
    stream: u64,
    f: F,
) -> Vec<T>
where
    T: Default + Clone + Send,
    F: Fn(&mut StdRng) -> T + Sync,
{
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut out = vec![T::default(); sims];
    let chunk = sims.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (c, slice) in out.chunks_mut(chunk).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (k, slot) in slice.iter_mut().enumerate() {
                    let mut rng = sim_rng(seed, stream, (c * chunk + k) as u64);
                    *slot = f(&mut rng);
                }
            });
        }
    });
    out
}

/// The RNG of one simulation: the seed, scenario and index mixed with SplitMix64.
fn sim_rng(seed: u64, stream: u64, index: u64) -> StdRng {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    StdRng::seed_from_u64(mix(mix(mix(seed) ^ stream) ^ index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_look_every_thousand_and_once_at_the_horizon() {
        let mut c = Checkpoints::new(1000, 2500, 3000);
        let mut out = Outcome::default();
        let mut seen = Vec::new();
        while let Some(at) = c.next_before(u64::MAX) {
            seen.push(at);
            c.record(at, false, 0, &mut out);
        }
        assert_eq!(seen, vec![1000, 2000, 2500, 3000]);
        assert_eq!(out, Outcome::default());
        let mut c = Checkpoints::new(1000, 1000, 3000);
        c.record(1000, true, 42, &mut out);
        assert!(c.done());
        assert_eq!((out.naive_z, out.fixed), (Some(42), Some(42)));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let scenario = &scenarios()[3];
        let run = |threads| run_parallel(12, 7, threads, 3, |rng| scenario.run(rng));
        assert_eq!(run(1), run(5));
    }

    #[test]
    fn small_simulation_has_few_false_rollbacks_and_detects_regressions() {
        let report = simulate(&SimConfig {
            sims: 200,
            seed: DEFAULT_SEED,
            threads: 0,
        });
        assert_eq!(report.scenarios.len(), 15);
        let find = |name: &str, method: Method| {
            report
                .scenarios
                .iter()
                .find(|s| s.name == name && s.method == method)
                .map(|s| &s.result)
                .expect("scenario present")
        };
        for name in ["healthy_w1", "healthy_w5", "healthy_staged_1_5_25_50"] {
            match find(name, Method::EProcess) {
                // Ville's bound is 1%; with 200 canaries allow sampling noise (at most 4).
                MethodResult::FalseRollback {
                    false_rollbacks, ..
                } => {
                    assert!(*false_rollbacks <= 4, "{name}: {false_rollbacks}")
                }
                other => panic!("{name}: {other:?}"),
            }
            match find(name, Method::NaiveZ) {
                // Repeated looks inflate the naive test's false rollbacks far above 1%.
                MethodResult::FalseRollback {
                    false_rollback_rate,
                    ..
                } => assert!(*false_rollback_rate > 0.05, "{name}: {false_rollback_rate}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        for (name, max_median) in [("error_rate_x2_w5", 2_000), ("latency_x1.3_w5", 250)] {
            match find(name, Method::EProcess) {
                MethodResult::Detection {
                    median_detection_candidate_requests: Some(median),
                    detection_rate,
                    ..
                } => {
                    assert!(*detection_rate > 0.99, "{name}: {detection_rate}");
                    assert!(*median <= max_median, "{name}: {median}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let table = report.render_human();
        assert!(table.contains("error_rate_x2_w5"), "{table}");
    }
}

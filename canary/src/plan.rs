//! How long a rollout will take at a stated traffic rate, for the policy's own spec.
//!
//! A healthy candidate is promoted once every step has met its minimums: step `i` lasts
//! `max(min_duration_secs, min_requests / (rate · w_i))` (its candidate requests arrive at
//! `rate · w_i` an hour), unless it is falsely rolled back (probability ≤ α). Regressions, an
//! error-rate doubling and latencies ×1.3, are simulated request by request through the real
//! [`Rollout`] with every metric, margin and step of the spec, requests evenly spaced at the
//! rate, lognormal latencies (median 800 ms, σ = 0.5) and the stated baseline error rate; a
//! failed request has no latency. Each simulation has its own seeded stream, so a plan
//! depends on its inputs alone.
//!
//! [`fleet`] runs the same rollouts through a simulated fleet: requests spread over several
//! replicas, each queueing its outcomes and adding them to the one shared rollout in turn
//! every `batch` of its requests (as the gateway's replicas do every tick), routing with the
//! weight it last read there. Detection counts the candidate requests the whole fleet served
//! until the rollback, queued outcomes included. It also runs the cases a rollout meets in
//! operation: a provider incident on both arms, and users that differ from one another
//! (their own error rates and latencies) routed per request or, as a sticky split would,
//! each user to one arm.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

use crate::monitor::Observation;
use crate::rollout::{Command, Phase, Rollout};
use crate::simulate::{run_parallel, DEFAULT_SEED};
use crate::spec::{CanarySpec, InvalidSpec};
use crate::split::Arm;

/// A rollout that lasts longer than this is worth a warning.
pub const MONTH_HOURS: f64 = 30.0 * 24.0;
/// Simulated time after which a regression counts as not caught.
const HORIZON_HOURS: f64 = 365.0 * 24.0;
/// Requests after which a simulated rollout stops, whatever the time.
const MAX_REQUESTS: u64 = 2_000_000;
/// The simulated incident: from this request on…
const INCIDENT_START: u64 = 10_000;
/// …for this many requests…
const INCIDENT_REQUESTS: u64 = 3_000;
/// …both arms fail this often.
const INCIDENT_ERROR_RATE: f64 = 0.3;
/// Users of the heterogeneous-users case, each sending an equal share of the requests.
const USERS: usize = 1_000;
/// Spread of the users' error rates: each is the base rate times a lognormal factor of mean 1
/// and this σ.
const USER_ERROR_SIGMA: f64 = 1.0;
/// Spread of the users' latencies (long prompts, large answers): a lognormal factor of mean
/// 1 and this σ on every latency of the user.
const USER_LATENCY_SIGMA: f64 = 0.5;

/// The traffic a plan assumes and how much to simulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    /// Requests an hour to the canary's model (both arms).
    pub requests_per_hour: f64,
    /// Error rate of the baseline.
    pub base_error_rate: f64,
    /// Simulated rollouts per regression.
    pub sims: usize,
    /// Seed of every random stream.
    pub seed: u64,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            requests_per_hour: 1000.0,
            base_error_rate: 0.01,
            sims: 200,
            seed: DEFAULT_SEED,
            threads: 0,
        }
    }
}

/// When a simulated regression was rolled back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Share of simulated rollouts rolled back within a year.
    pub rolled_back: f64,
    /// Median hours to the rollback, among those rolled back.
    pub median_hours: Option<f64>,
    /// 90th percentile of hours to the rollback, when at least 90% were rolled back.
    pub p90_hours: Option<f64>,
    /// Median candidate requests served by then.
    pub median_candidate_requests: Option<u64>,
    /// 90th percentile of candidate requests served by then, when at least 90% were rolled
    /// back.
    pub p90_candidate_requests: Option<u64>,
    /// Share promoted instead (the regression went unnoticed).
    pub promoted: f64,
}

/// Expected durations of one canary's rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Requests an hour assumed.
    pub requests_per_hour: f64,
    /// Baseline error rate assumed.
    pub base_error_rate: f64,
    /// Hours each step lasts for a healthy candidate.
    pub step_hours: Vec<f64>,
    /// Hours to promotion of a healthy candidate (the sum of `step_hours`).
    pub promotion_hours: f64,
    /// A candidate with twice the baseline's error rate.
    pub error_rate_x2: Detection,
    /// A candidate whose latencies are 1.3 times the baseline's.
    pub latency_x1_3: Detection,
}

impl Plan {
    /// Whether a healthy candidate takes more than a month to be promoted.
    pub fn longer_than_a_month(&self) -> bool {
        self.promotion_hours > MONTH_HOURS
    }
}

/// Hours each step of `spec` lasts for a healthy candidate at `requests_per_hour`.
pub fn step_hours(spec: &CanarySpec, requests_per_hour: f64) -> Vec<f64> {
    spec.steps
        .iter()
        .map(|s| {
            let candidate_per_hour = requests_per_hour * s.weight_percent / 100.0;
            let for_requests = if s.min_requests == 0 {
                0.0
            } else {
                s.min_requests as f64 / candidate_per_hour
            };
            for_requests.max(s.min_duration_secs as f64 / 3600.0)
        })
        .collect()
}

/// The plan of a valid spec at the traffic of `cfg`.
pub fn plan(spec: &CanarySpec, cfg: &PlanConfig) -> Result<Plan, InvalidSpec> {
    let spec = spec.clone().validated()?;
    let step_hours = step_hours(&spec, cfg.requests_per_hour);
    let detect = |stream, error_factor, latency_factor| {
        let outcomes = run_parallel(cfg.sims, cfg.seed, cfg.threads, stream, |rng| {
            rollout(&spec, cfg, error_factor, latency_factor, SINGLE, rng)
        });
        summarise(&outcomes)
    };
    Ok(Plan {
        requests_per_hour: cfg.requests_per_hour,
        base_error_rate: cfg.base_error_rate,
        promotion_hours: step_hours.iter().sum(),
        step_hours,
        error_rate_x2: detect(100, 2.0, 1.0),
        latency_x1_3: detect(101, 1.0, 1.3),
    })
}

/// How one simulated rollout ended: rolled back or promoted at some hour with some candidate
/// requests served over the fleet, or neither within the horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct End {
    phase: Option<Phase>,
    hours: f64,
    candidate_requests: u64,
}

/// Who sends the simulated requests and how they are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Users {
    /// Alike: every request has the same chances, routed per request.
    Alike,
    /// [`USERS`] users with their own error rates and latencies, routed per request.
    Different,
    /// The same users, each routed to one arm (a stable number per user against the weight),
    /// as a sticky split does.
    DifferentSticky,
}

/// How the simulated requests reach the shared rollout, and whether an incident hits both
/// arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replicas {
    /// Replicas taking turns at the requests.
    count: usize,
    /// Requests each replica queues before adding them to the rollout.
    batch: usize,
    /// Requests [`INCIDENT_START`].. fail at [`INCIDENT_ERROR_RATE`] on both arms.
    incident: bool,
    /// Who sends the requests.
    users: Users,
}

/// One gateway adding each outcome at once.
const SINGLE: Replicas = Replicas {
    count: 1,
    batch: 1,
    incident: false,
    users: Users::Alike,
};

/// Each user's error-rate factor, latency factor and stable routing number.
fn draw_users(users: Users, rng: &mut StdRng) -> Vec<(f64, f64, f64)> {
    if users == Users::Alike {
        return Vec::new();
    }
    // exp(σZ − σ²/2) has mean 1.
    let factor = |sigma: f64| LogNormal::new(-sigma * sigma / 2.0, sigma).expect("valid lognormal");
    let (errors, latencies) = (factor(USER_ERROR_SIGMA), factor(USER_LATENCY_SIGMA));
    (0..USERS)
        .map(|_| {
            (
                errors.sample(rng),
                latencies.sample(rng),
                rng.random::<f64>(),
            )
        })
        .collect()
}

fn rollout(
    spec: &CanarySpec,
    cfg: &PlanConfig,
    error_factor: f64,
    latency_factor: f64,
    replicas: Replicas,
    rng: &mut StdRng,
) -> End {
    let mut r = Rollout::new(spec.clone()).expect("the spec was validated");
    let _ = r.command(Command::Start, 0);
    let latencies = LogNormal::new(800f64.ln(), 0.5).expect("valid lognormal");
    let gap_hours = 1.0 / cfg.requests_per_hour;
    let round = (replicas.count * replicas.batch) as u64;
    let users = draw_users(replicas.users, rng);
    let mut candidate_requests = 0;
    // Each replica's queued outcomes, and the weight it routes with.
    let mut queued: Vec<Vec<Observation>> = vec![Vec::new(); replicas.count];
    let mut weights = vec![r.current_weight() / 100.0; replicas.count];
    for i in 1..=MAX_REQUESTS {
        let hours = i as f64 * gap_hours;
        if hours > HORIZON_HOURS {
            break;
        }
        let replica = (i as usize) % replicas.count;
        let w = weights[replica];
        let (error_factor_of_user, latency_factor_of_user, candidate) = if users.is_empty() {
            (1.0, 1.0, rng.random::<f64>() < w)
        } else {
            let (errors, latencies, unit) = users[rng.random_range(0..users.len())];
            let sticky = replicas.users == Users::DifferentSticky;
            let u = if sticky { unit } else { rng.random::<f64>() };
            (errors, latencies, u < w)
        };
        candidate_requests += u64::from(candidate);
        let (arm, error_rate, slowdown) = if candidate {
            (
                Arm::Candidate,
                cfg.base_error_rate * error_factor,
                latency_factor,
            )
        } else {
            (Arm::Baseline, cfg.base_error_rate, 1.0)
        };
        let in_incident =
            replicas.incident && (INCIDENT_START..INCIDENT_START + INCIDENT_REQUESTS).contains(&i);
        let error_rate = if in_incident {
            INCIDENT_ERROR_RATE
        } else {
            error_rate
        };
        let error = rng.random::<f64>() < error_rate * error_factor_of_user;
        let latency = latencies.sample(rng) * slowdown * latency_factor_of_user;
        let obs = Observation {
            now_ms: (hours * 3_600_000.0) as u64,
            arm,
            w,
            error,
            latency_ms: (!error).then_some(latency),
            ttft_ms: None,
        };
        queued[replica].push(obs);
        if i % round != 0 {
            continue;
        }
        // Every replica adds its queue to the rollout in turn, then reads the weight.
        for (queue, weight) in queued.iter_mut().zip(&mut weights) {
            for obs in queue.drain(..) {
                let _ = r.observe(&obs);
            }
            if matches!(r.phase(), Phase::RolledBack | Phase::Promoted) {
                return End {
                    phase: Some(r.phase()),
                    hours,
                    candidate_requests,
                };
            }
            *weight = r.current_weight() / 100.0;
        }
    }
    End::default()
}

/// A spec's rollout run by a fleet of `replicas`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetResult {
    /// Replicas sharing the rollout.
    pub replicas: usize,
    /// Healthy candidates rolled back before their promotion, over the whole fleet.
    pub false_rollbacks: f64,
    /// Median hours to the promotion of a healthy candidate.
    pub promoted_after_hours: Option<f64>,
    /// A candidate with twice the baseline's error rate.
    pub error_rate_x2: Detection,
    /// A candidate whose latencies are 1.3 times the baseline's.
    pub latency_x1_3: Detection,
    /// Healthy candidates rolled back when an incident fails 30% of both arms' requests for
    /// 3,000 requests from the 10,000th.
    pub false_rollbacks_with_incident: f64,
    /// The error-rate doubling with that incident.
    pub error_rate_x2_with_incident: Detection,
}

/// Healthy candidates served to users that differ from one another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsersResult {
    /// Users sending the requests.
    pub users: usize,
    /// Rolled back before their promotion with every request routed on its own.
    pub false_rollbacks_per_request: f64,
    /// Rolled back before their promotion with each user's requests on one arm.
    pub false_rollbacks_sticky: f64,
}

/// A spec's rollout run by fleets of several sizes, and by one replica for users that differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// Requests an hour to the canary's model.
    pub requests_per_hour: f64,
    /// One entry per fleet size.
    pub results: Vec<FleetResult>,
    /// Healthy candidates with users that differ, per request and sticky.
    pub different_users: UsersResult,
}

/// The rollout of a valid spec run by fleets of each size in `replicas`, each replica adding
/// its outcomes every `batch` of its requests, at the traffic of `cfg` (spread over the fleet);
/// and by one such replica for users that differ.
pub fn fleet(
    spec: &CanarySpec,
    cfg: &PlanConfig,
    replicas: &[usize],
    batch: usize,
) -> Result<FleetReport, InvalidSpec> {
    let spec = spec.clone().validated()?;
    let run = |stream, error_factor, latency_factor, replicas| {
        run_parallel(cfg.sims, cfg.seed, cfg.threads, stream, |rng| {
            rollout(&spec, cfg, error_factor, latency_factor, replicas, rng)
        })
    };
    let fleet_of = |count: usize| Replicas {
        count: count.max(1),
        batch: batch.max(1),
        ..SINGLE
    };
    let results = replicas
        .iter()
        .map(|&count| {
            let fleet = fleet_of(count);
            let with_incident = Replicas {
                incident: true,
                ..fleet
            };
            let healthy = run(200, 1.0, 1.0, fleet);
            FleetResult {
                replicas: fleet.count,
                false_rollbacks: summarise(&healthy).rolled_back,
                promoted_after_hours: promotion_median_hours(&healthy),
                error_rate_x2: summarise(&run(201, 2.0, 1.0, fleet)),
                latency_x1_3: summarise(&run(202, 1.0, 1.3, fleet)),
                false_rollbacks_with_incident: summarise(&run(203, 1.0, 1.0, with_incident))
                    .rolled_back,
                error_rate_x2_with_incident: summarise(&run(204, 2.0, 1.0, with_incident)),
            }
        })
        .collect();
    // Both splits draw the same users (the same stream): only the routing differs.
    let users = |users| {
        let replicas = Replicas {
            users,
            ..fleet_of(1)
        };
        summarise(&run(205, 1.0, 1.0, replicas)).rolled_back
    };
    Ok(FleetReport {
        requests_per_hour: cfg.requests_per_hour,
        results,
        different_users: UsersResult {
            users: USERS,
            false_rollbacks_per_request: users(Users::Different),
            false_rollbacks_sticky: users(Users::DifferentSticky),
        },
    })
}

/// The nearest-rank `q`-quantile over `n` simulated rollouts of which only the sorted `ended`
/// values are known (the other rollouts never ended that way).
fn quantile<T: Copy>(ended: &[T], n: usize, q: f64) -> Option<T> {
    let rank = ((q * n as f64).ceil() as usize).max(1);
    ended.get(rank - 1).copied()
}

/// The median hours to the promotion of the simulated rollouts.
fn promotion_median_hours(ends: &[End]) -> Option<f64> {
    let mut hours: Vec<f64> = ends
        .iter()
        .filter(|e| e.phase == Some(Phase::Promoted))
        .map(|e| e.hours)
        .collect();
    hours.sort_by(f64::total_cmp);
    quantile(&hours, ends.len(), 0.5)
}

fn summarise(ends: &[End]) -> Detection {
    let n = ends.len().max(1) as f64;
    let back: Vec<&End> = ends
        .iter()
        .filter(|e| e.phase == Some(Phase::RolledBack))
        .collect();
    let promoted = ends
        .iter()
        .filter(|e| e.phase == Some(Phase::Promoted))
        .count();
    let mut hours: Vec<f64> = back.iter().map(|e| e.hours).collect();
    hours.sort_by(f64::total_cmp);
    let mut requests: Vec<u64> = back.iter().map(|e| e.candidate_requests).collect();
    requests.sort_unstable();
    Detection {
        rolled_back: back.len() as f64 / n,
        median_hours: quantile(&hours, ends.len(), 0.5),
        p90_hours: quantile(&hours, ends.len(), 0.9),
        median_candidate_requests: quantile(&requests, ends.len(), 0.5),
        p90_candidate_requests: quantile(&requests, ends.len(), 0.9),
        promoted: promoted as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Metric, MetricSpec, Split, Step};

    fn bundled() -> CanarySpec {
        let step = |weight_percent, min_requests, min_duration_secs| Step {
            weight_percent,
            min_requests,
            min_duration_secs,
        };
        CanarySpec {
            steps: vec![
                step(5.0, 2000, 3600),
                step(25.0, 5000, 7200),
                step(50.0, 10000, 86400),
            ],
            metrics: vec![
                MetricSpec {
                    metric: Metric::ErrorRate,
                    margin: 1.0,
                },
                MetricSpec {
                    metric: Metric::LatencyP95,
                    margin: 1.0,
                },
            ],
            alpha: 0.01,
            split: Split::PerRequest,
        }
    }

    #[test]
    fn healthy_steps_last_for_their_requests_or_their_duration() {
        // At 100 requests an hour: 2,000 candidate requests at 5 an hour take 400 h; 5,000 at
        // 25 an hour 200 h; 10,000 at 50 an hour 200 h (more than its day).
        assert_eq!(step_hours(&bundled(), 100.0), vec![400.0, 200.0, 200.0]);
        // At 100,000 an hour the durations rule: 1 h, 2 h, 24 h.
        assert_eq!(step_hours(&bundled(), 100_000.0), vec![1.0, 2.0, 24.0]);
    }

    #[test]
    fn a_plan_at_low_traffic_is_long_and_says_so() {
        let cfg = PlanConfig {
            requests_per_hour: 100.0,
            sims: 24,
            seed: 5,
            ..PlanConfig::default()
        };
        let p = plan(&bundled(), &cfg).unwrap();
        assert_eq!(p.promotion_hours, 800.0);
        assert!(p.longer_than_a_month());
        // Regressions are caught, long before promotion.
        for d in [&p.error_rate_x2, &p.latency_x1_3] {
            assert!(d.rolled_back >= 0.9, "{d:?}");
            let median = d.median_hours.expect("a median");
            assert!(median < p.promotion_hours, "{d:?}");
        }
        // The latency shift is caught with fewer candidate requests than the error doubling.
        assert!(
            p.latency_x1_3.median_candidate_requests < p.error_rate_x2.median_candidate_requests,
            "{p:?}"
        );
        // Deterministic for a seed.
        assert_eq!(plan(&bundled(), &cfg).unwrap(), p);
    }

    #[test]
    fn a_fleet_runs_one_test_however_many_replicas() {
        let cfg = PlanConfig {
            requests_per_hour: 100.0,
            sims: 16,
            seed: 9,
            ..PlanConfig::default()
        };
        let report = fleet(&bundled(), &cfg, &[1, 4], 10).unwrap();
        assert_eq!(report.results.len(), 2);
        for r in &report.results {
            // Healthy candidates are promoted (16 rollouts: a false rollback is unlikely).
            assert_eq!(r.false_rollbacks, 0.0, "{r:?}");
            // Regressions are caught, with about as many candidate requests on any fleet.
            assert!(r.error_rate_x2.rolled_back >= 0.9, "{r:?}");
            let n = r.error_rate_x2.median_candidate_requests.expect("median");
            assert!((500..4000).contains(&n), "{r:?}");
            // An incident on both arms neither rolls back healthy candidates nor wipes out the
            // evidence against a bad one.
            assert_eq!(r.false_rollbacks_with_incident, 0.0, "{r:?}");
            assert!(r.error_rate_x2_with_incident.rolled_back >= 0.9, "{r:?}");
        }
    }

    #[test]
    fn an_invalid_spec_has_no_plan() {
        let mut spec = bundled();
        spec.steps[2].weight_percent = 100.0;
        assert!(plan(&spec, &PlanConfig::default()).is_err());
    }
}

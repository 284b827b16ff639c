//! Summaries of simulated canaries: false-rollback rates and detection delays.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Kind, Outcome, Scenario};

/// The result of every method on every scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Simulated canaries per scenario.
    pub sims: usize,
    /// Seed of the random streams.
    pub seed: u64,
    /// Level of every method.
    pub alpha: f64,
    /// One entry per scenario and method.
    pub scenarios: Vec<ScenarioResult>,
}

/// A method for deciding to roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Method {
    /// The event-attribution e-process.
    #[serde(rename = "e_process")]
    EProcess,
    /// A pooled two-proportion z-test looked at every 1,000 requests.
    #[serde(rename = "naive_z_every_1000")]
    NaiveZ,
    /// A pooled two-proportion z-test looked at once, at a horizon sized for 80% power.
    #[serde(rename = "fixed_horizon_z")]
    FixedHorizon,
}

impl Method {
    /// When this method rolled the canary back, if it did.
    fn delay(self, outcome: &Outcome) -> Option<u64> {
        match self {
            Method::EProcess => outcome.e_process,
            Method::NaiveZ => outcome.naive_z,
            Method::FixedHorizon => outcome.fixed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::EProcess => "e-process",
            Method::NaiveZ => "z every 1000",
            Method::FixedHorizon => "fixed-horizon z",
        }
    }
}

/// How one method did on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioResult {
    /// Scenario name, e.g. `healthy_w5`.
    pub name: &'static str,
    /// The method.
    pub method: Method,
    /// What the scenario simulates.
    pub description: String,
    /// False rollbacks or detection delay.
    #[serde(flatten)]
    pub result: MethodResult,
    /// For the fixed-horizon test: the candidate requests it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_candidate_requests: Option<u64>,
}

/// What a method achieved on a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MethodResult {
    /// On a healthy canary.
    FalseRollback {
        /// Share of simulated canaries rolled back.
        false_rollback_rate: f64,
        /// How many were.
        false_rollbacks: usize,
    },
    /// On a regressed canary. Canaries never rolled back count as infinitely late, so a
    /// quantile is `None` when fewer than that share were rolled back.
    Detection {
        /// Median candidate requests served before the rollback.
        median_detection_candidate_requests: Option<u64>,
        /// 90th percentile of the same.
        p90_detection_candidate_requests: Option<u64>,
        /// Share of simulated canaries rolled back at all.
        detection_rate: f64,
    },
}

/// The three methods' results on one scenario.
pub(super) fn summarise(scenario: &Scenario, outcomes: &[Outcome]) -> Vec<ScenarioResult> {
    [Method::EProcess, Method::NaiveZ, Method::FixedHorizon]
        .into_iter()
        .map(|method| {
            let mut delays: Vec<u64> = outcomes.iter().filter_map(|o| method.delay(o)).collect();
            delays.sort_unstable();
            let n = outcomes.len();
            let rate = if n == 0 {
                0.0
            } else {
                delays.len() as f64 / n as f64
            };
            let result = match scenario.kind {
                Kind::Healthy => MethodResult::FalseRollback {
                    false_rollback_rate: rate,
                    false_rollbacks: delays.len(),
                },
                Kind::Regression => MethodResult::Detection {
                    median_detection_candidate_requests: censored_quantile(&delays, n, 0.5),
                    p90_detection_candidate_requests: censored_quantile(&delays, n, 0.9),
                    detection_rate: rate,
                },
            };
            ScenarioResult {
                name: scenario.name,
                method,
                description: scenario.description.clone(),
                result,
                required_candidate_requests: (method == Method::FixedHorizon)
                    .then_some(scenario.fixed_candidate_requests),
            }
        })
        .collect()
}

/// The nearest-rank p-quantile of `n` values of which only the sorted `finite` ones are known
/// (the others are infinite).
fn censored_quantile(finite: &[u64], n: usize, p: f64) -> Option<u64> {
    let rank = ((p * n as f64).ceil() as usize).max(1);
    finite.get(rank - 1).copied()
}

impl SimReport {
    /// A plain-text table of every result.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} simulated canaries per scenario, seed {}, alpha {}; delays in candidate requests",
            self.sims, self.seed, self.alpha
        );
        let _ = writeln!(
            out,
            "{:<26} {:<16} {:>15} {:>8} {:>8} {:>9} {:>10}",
            "scenario", "method", "false rollback", "median", "p90", "detected", "fixed n"
        );
        let show = |v: Option<u64>| v.map_or_else(|| "never".to_owned(), |v| v.to_string());
        for s in &self.scenarios {
            let (false_rollback, median, p90, detected) = match &s.result {
                MethodResult::FalseRollback {
                    false_rollback_rate,
                    ..
                } => (
                    format!("{:.2}%", false_rollback_rate * 100.0),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
                MethodResult::Detection {
                    median_detection_candidate_requests,
                    p90_detection_candidate_requests,
                    detection_rate,
                } => (
                    String::new(),
                    show(*median_detection_candidate_requests),
                    show(*p90_detection_candidate_requests),
                    format!("{:.1}%", detection_rate * 100.0),
                ),
            };
            let fixed = s
                .required_candidate_requests
                .map_or_else(String::new, |n| n.to_string());
            let _ = writeln!(
                out,
                "{:<26} {:<16} {:>15} {:>8} {:>8} {:>9} {:>10}",
                s.name,
                s.method.label(),
                false_rollback,
                median,
                p90,
                detected,
                fixed
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censored_quantiles_treat_misses_as_infinite() {
        assert_eq!(censored_quantile(&[10, 20, 30, 40], 4, 0.5), Some(20));
        assert_eq!(censored_quantile(&[10, 20, 30, 40], 4, 0.9), Some(40));
        // 10 canaries, 8 caught: the p90 (9th) was never caught.
        assert_eq!(censored_quantile(&[1, 2, 3, 4, 5, 6, 7, 8], 10, 0.9), None);
        assert_eq!(censored_quantile(&[], 0, 0.5), None);
    }

    #[test]
    fn serialises_in_the_documented_shape() {
        let report = SimReport {
            sims: 2,
            seed: 1,
            alpha: 0.01,
            scenarios: vec![
                ScenarioResult {
                    name: "healthy_w5",
                    method: Method::EProcess,
                    description: String::new(),
                    result: MethodResult::FalseRollback {
                        false_rollback_rate: 0.5,
                        false_rollbacks: 1,
                    },
                    required_candidate_requests: None,
                },
                ScenarioResult {
                    name: "error_rate_x2_w5",
                    method: Method::FixedHorizon,
                    description: String::new(),
                    result: MethodResult::Detection {
                        median_detection_candidate_requests: Some(1300),
                        p90_detection_candidate_requests: None,
                        detection_rate: 0.8,
                    },
                    required_candidate_requests: Some(1315),
                },
            ],
        };
        let v = serde_json::to_value(&report).unwrap();
        let s = &v["scenarios"];
        assert_eq!(s[0]["name"], "healthy_w5");
        assert_eq!(s[0]["method"], "e_process");
        assert_eq!(s[0]["false_rollback_rate"], 0.5);
        assert_eq!(s[1]["method"], "fixed_horizon_z");
        assert_eq!(s[1]["median_detection_candidate_requests"], 1300);
        assert!(s[1]["p90_detection_candidate_requests"].is_null());
        assert_eq!(s[1]["required_candidate_requests"], 1315);
        assert!(report.render_human().contains("never"));
    }
}

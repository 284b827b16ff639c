//! The canary spec embedded in the policy's `Canaries` kind: steps, metrics, alpha and split.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a canary does: the traffic steps it walks through and the checks that can stop it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct CanarySpec {
    /// Traffic steps, in order, each below 100% (a concurrent baseline is what the checks
    /// compare with); the candidate is promoted after the last one.
    pub steps: Vec<Step>,
    /// Metrics checked by an e-process each; defaults to the error rate only. Empty only with a
    /// sticky split, which cannot be checked.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricSpec>,
    /// False-rollback budget for the whole rollout, shared by all metrics (Bonferroni).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// How requests are assigned to the candidate.
    #[serde(default)]
    pub split: Split,
}

/// One traffic step: a candidate weight held until both minimums are met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Step {
    /// Share of traffic sent to the candidate, in percent, in (0, 100].
    pub weight_percent: f64,
    /// Candidate requests to observe during this step before moving on.
    pub min_requests: u64,
    /// Time to stay at this step before moving on, in seconds.
    pub min_duration_secs: u64,
}

/// One checked metric and how much worse the candidate may be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct MetricSpec {
    /// Which metric.
    pub metric: Metric,
    /// How much worse the candidate may be, as a factor >= 1. For `error_rate`, its error
    /// rate may be up to `margin` times the baseline's (1.1: 10% more errors). For a latency
    /// metric, that quantile of its latencies may be up to `margin` times the baseline's
    /// (1.1: p95 up to 10% slower). Only a regression beyond it rolls back.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

/// A checked metric. Every metric defines an *event*; the e-process tests who served the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Event: the request failed.
    ErrorRate,
    /// Event: latency above the baseline's median.
    LatencyP50,
    /// Event: latency above the baseline's 95th percentile.
    LatencyP95,
    /// Event: latency above the baseline's 99th percentile.
    LatencyP99,
    /// Event: time to first token above the baseline's 95th percentile.
    TtftP95,
}

/// Which measurement of a request a metric looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The error flag.
    Errors,
    /// Total latency.
    Latency,
    /// Time to first token.
    Ttft,
}

impl Metric {
    /// The snake_case name used in specs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP95 => "latency_p95",
            Metric::LatencyP99 => "latency_p99",
            Metric::TtftP95 => "ttft_p95",
        }
    }

    /// The measurement this metric reads.
    pub fn source(self) -> Source {
        match self {
            Metric::ErrorRate => Source::Errors,
            Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 => Source::Latency,
            Metric::TtftP95 => Source::Ttft,
        }
    }

    /// The baseline quantile whose exceedance is an event; `None` for the error rate.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Metric::ErrorRate => None,
            Metric::LatencyP50 => Some(0.50),
            Metric::LatencyP95 | Metric::TtftP95 => Some(0.95),
            Metric::LatencyP99 => Some(0.99),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How requests are assigned to the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Each request independently; the only split under which the e-process is exact.
    #[default]
    PerRequest,
    /// The same API key always lands on the same arm at a given weight. Cannot be checked:
    /// only with `metrics: []`.
    StickyKey,
    /// The same user always lands on the same arm at a given weight. Cannot be checked: only
    /// with `metrics: []`.
    StickyUser,
}

/// One thing wrong with a spec, with a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `steps_not_increasing`.
    pub code: &'static str,
    /// Where in the spec, e.g. `steps[1].weight_percent`.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

/// A spec that failed [`CanarySpec::validate`].
#[derive(Debug, Clone, PartialEq, Error)]
#[error("invalid canary spec: {}", summary(.problems))]
pub struct InvalidSpec {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

fn summary(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn default_metrics() -> Vec<MetricSpec> {
    vec![MetricSpec {
        metric: Metric::ErrorRate,
        margin: default_margin(),
    }]
}

fn default_alpha() -> f64 {
    0.01
}

fn default_margin() -> f64 {
    1.0
}

impl CanarySpec {
    /// Every problem of the spec; empty when it is valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.steps.is_empty() {
            problems.push(problem(
                "no_steps",
                "steps",
                "at least one step is required",
            ));
        }
        let mut previous: Option<f64> = None;
        for (i, step) in self.steps.iter().enumerate() {
            let w = step.weight_percent;
            if !(w > 0.0 && w <= 100.0) {
                problems.push(problem(
                    "step_weight_out_of_range",
                    &format!("steps[{i}].weight_percent"),
                    &format!("must be in (0, 100], got `{w}`"),
                ));
            } else if previous.is_some_and(|p| w <= p) {
                problems.push(problem(
                    "steps_not_increasing",
                    &format!("steps[{i}].weight_percent"),
                    &format!("must be larger than the previous step's, got `{w}`"),
                ));
            }
            if w == 100.0 {
                problems.push(problem(
                    "step_without_baseline",
                    &format!("steps[{i}].weight_percent"),
                    "a step at 100% leaves no baseline to compare with, so nothing would be \
                     checked during it; end with a step below 100% (promotion after it gives \
                     the candidate all traffic)",
                ));
            }
            if w > 0.0 && w <= 100.0 {
                previous = Some(w);
            }
        }
        let sticky = self.split != Split::PerRequest;
        if !sticky && !self.steps.is_empty() && self.steps.iter().all(|s| s.min_requests == 0) {
            problems.push(problem(
                "promotes_without_evidence",
                "steps",
                "no step waits for candidate requests, so the candidate could be promoted \
                 before it served any; give the steps a `min_requests`",
            ));
        }
        if sticky && !self.metrics.is_empty() {
            problems.push(problem(
                "sticky_split_checked",
                "split",
                "a sticky split sends every request of a key or user to one arm, so they are \
                 not independent evidence and the checks' false-rollback bound does not hold; \
                 use `split: per_request`, or `metrics: []` for a rollout by steps alone \
                 (rolled back only by an operator)",
            ));
        }
        problems.extend(
            validate_checks(&self.metrics, self.alpha)
                .into_iter()
                .filter(|p| !(sticky && p.code == "no_metrics")),
        );
        problems
    }

    /// The spec if it is valid, or every problem found.
    pub fn validated(self) -> Result<Self, InvalidSpec> {
        let problems = self.validate();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(InvalidSpec { problems })
        }
    }

    /// Stable hex hash of the spec (defaults filled in), used to key persisted rollout state.
    ///
    /// It is xxh3-64 over the spec's canonical JSON form (fields in declaration order, numbers
    /// in their shortest round-trip form), so two specs that parse to the same values share it.
    pub fn spec_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a spec always serialises to JSON");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&canonical))
    }
}

/// Problems of a metric list and alpha, shared by specs and offline analysis.
pub fn validate_checks(metrics: &[MetricSpec], alpha: f64) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !(alpha > 0.0 && alpha < 1.0) {
        problems.push(problem(
            "alpha_out_of_range",
            "alpha",
            &format!("must be in (0, 1), got `{alpha}`"),
        ));
    }
    if metrics.is_empty() {
        problems.push(problem(
            "no_metrics",
            "metrics",
            "at least one metric is required",
        ));
    }
    for (i, m) in metrics.iter().enumerate() {
        if !(m.margin >= 1.0 && m.margin.is_finite()) {
            problems.push(problem(
                "margin_below_one",
                &format!("metrics[{i}].margin"),
                &format!("must be a finite factor >= 1, got `{}`", m.margin),
            ));
        }
        if metrics[..i].iter().any(|other| other.metric == m.metric) {
            problems.push(problem(
                "duplicate_metric",
                &format!("metrics[{i}].metric"),
                &format!("`{}` is listed more than once", m.metric),
            ));
        }
    }
    problems
}

fn problem(code: &'static str, path: &str, message: &str) -> Problem {
    Problem {
        code,
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> CanarySpec {
        serde_json::from_str(json).expect("valid spec JSON")
    }

    fn codes(spec: &CanarySpec) -> Vec<&'static str> {
        spec.validate().iter().map(|p| p.code).collect()
    }

    #[test]
    fn defaults_fill_in_metrics_alpha_and_split() {
        let spec =
            parse(r#"{"steps":[{"weight_percent":5,"min_requests":100,"min_duration_secs":60}]}"#);
        assert_eq!(spec.metrics, default_metrics());
        assert_eq!(spec.alpha, 0.01);
        assert_eq!(spec.split, Split::PerRequest);
        assert!(spec.validate().is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<CanarySpec>(r#"{"steps":[],"alfa":0.1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `alfa`"), "{err}");
        let err = serde_json::from_str::<CanarySpec>(
            r#"{"steps":[],"metrics":[{"metric":"latency_p95","margn":1}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `margn`"), "{err}");
    }

    #[test]
    fn snake_case_names_round_trip() {
        let spec = parse(
            r#"{"steps":[{"weight_percent":1,"min_requests":0,"min_duration_secs":0}],
                "metrics":[{"metric":"ttft_p95","margin":1.2},{"metric":"latency_p99"}],
                "split":"sticky_user"}"#,
        );
        assert_eq!(spec.metrics[0].metric, Metric::TtftP95);
        assert_eq!(spec.metrics[1].margin, 1.0);
        assert_eq!(spec.split, Split::StickyUser);
        let back: CanarySpec =
            serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn validate_reports_each_problem_with_a_code() {
        let spec = parse(
            r#"{"steps":[{"weight_percent":5,"min_requests":0,"min_duration_secs":0},
                         {"weight_percent":5,"min_requests":0,"min_duration_secs":0},
                         {"weight_percent":150,"min_requests":1,"min_duration_secs":0}],
                "metrics":[{"metric":"error_rate","margin":0.5},{"metric":"error_rate"}],
                "alpha":1.0}"#,
        );
        assert_eq!(
            codes(&spec),
            vec![
                "steps_not_increasing",
                "step_weight_out_of_range",
                "alpha_out_of_range",
                "margin_below_one",
                "duplicate_metric",
            ]
        );
        assert_eq!(spec.validate()[0].path, "steps[1].weight_percent");
        let empty = parse(r#"{"steps":[],"metrics":[]}"#);
        assert_eq!(codes(&empty), vec!["no_steps", "no_metrics"]);
        assert!(empty
            .validated()
            .unwrap_err()
            .to_string()
            .contains("steps: at least one step"));
    }

    #[test]
    fn no_step_goes_unchecked() {
        // A 100% step has no baseline to compare with.
        let spec = parse(
            r#"{"steps":[{"weight_percent":50,"min_requests":100,"min_duration_secs":0},
                         {"weight_percent":100,"min_requests":100,"min_duration_secs":86400}]}"#,
        );
        assert_eq!(codes(&spec), vec!["step_without_baseline"]);
        assert_eq!(spec.validate()[0].path, "steps[1].weight_percent");
        // Steps that wait for no candidate request could promote on no evidence at all.
        let spec = parse(
            r#"{"steps":[{"weight_percent":5,"min_requests":0,"min_duration_secs":3600},
                         {"weight_percent":50,"min_requests":0,"min_duration_secs":3600}]}"#,
        );
        assert_eq!(codes(&spec), vec!["promotes_without_evidence"]);
    }

    #[test]
    fn a_sticky_split_is_valid_only_unchecked() {
        let step = r#"[{"weight_percent":5,"min_requests":0,"min_duration_secs":60}]"#;
        let checked = parse(&format!(r#"{{"steps":{step},"split":"sticky_user"}}"#));
        assert_eq!(codes(&checked), vec!["sticky_split_checked"]);
        assert_eq!(checked.validate()[0].path, "split");
        let unchecked = parse(&format!(
            r#"{{"steps":{step},"split":"sticky_key","metrics":[]}}"#
        ));
        assert!(
            unchecked.validate().is_empty(),
            "{:?}",
            unchecked.validate()
        );
        // Per request, checks are required.
        let none = parse(&format!(r#"{{"steps":{step},"metrics":[]}}"#));
        assert_eq!(
            codes(&none),
            vec!["promotes_without_evidence", "no_metrics"]
        );
    }

    #[test]
    fn spec_hash_is_stable_and_sensitive() {
        let a =
            parse(r#"{"steps":[{"weight_percent":5,"min_requests":100,"min_duration_secs":60}]}"#);
        let explicit = parse(
            r#"{"steps":[{"weight_percent":5.0,"min_requests":100,"min_duration_secs":60}],
                "metrics":[{"metric":"error_rate","margin":1}],"alpha":0.01,"split":"per_request"}"#,
        );
        assert_eq!(a.spec_hash(), explicit.spec_hash());
        // Pinned: persisted rollout state is keyed by it, so it must not change between builds.
        assert_eq!(a.spec_hash(), "00e96ab39ea1c4ad");
        let mut b = a.clone();
        b.steps[0].min_requests = 101;
        assert_ne!(a.spec_hash(), b.spec_hash());
    }
}

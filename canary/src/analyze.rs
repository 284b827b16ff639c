//! Offline analysis of recorded canary requests.
//!
//! Input: one JSON object per line, in completion order, such as
//! `{"w":0.05,"arm":"candidate","error":true,"latency_ms":812}` (`latency_ms` and `ttft_ms`
//! optional, other fields ignored, blank lines skipped). The requests are replayed through the
//! same [`Monitor`] the gateway runs, so the verdict is the one the gateway would have reached.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::monitor::{Monitor, Observation};
use crate::spec::{InvalidSpec, Metric, MetricSpec};
use crate::split::Arm;

/// Whether to roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// An e-process crossed its threshold at some point.
    Rollback,
    /// No evidence of a regression (yet).
    Continue,
}

/// The verdict on a recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzeReport {
    /// Rollback when any metric says so.
    pub decision: Decision,
    /// One entry per checked metric.
    pub metrics: Vec<MetricReport>,
    /// The overall false-rollback budget used.
    pub alpha: f64,
    /// Requests read.
    pub requests: u64,
    /// Of which served by the candidate.
    pub candidate_requests: u64,
}

/// The verdict on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricReport {
    /// Which metric.
    pub metric: Metric,
    /// log E after the last request.
    pub log_e: f64,
    /// The rollback threshold `ln(K/α)`.
    pub threshold: f64,
    /// Rollback when log E reached the threshold at any point.
    pub decision: Decision,
    /// Events that entered the e-process (those with `0 < w < 1`).
    pub events: u64,
    /// Of which served by the candidate.
    pub candidate_events: u64,
    /// Candidate events expected without a regression (sum of `w` over events).
    pub expected_candidate_events: f64,
    /// Tolerated relative risk.
    pub margin: f64,
    /// Line of the request that made log E cross, if it did.
    pub alarm_line: Option<usize>,
    /// log E when it crossed.
    pub log_e_at_alarm: Option<f64>,
    /// The baseline threshold after the last request, for latency metrics.
    pub baseline_threshold_ms: Option<f64>,
}

/// What went wrong reading a recording.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// A line is not a valid request record.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// No request at all.
    #[error("no requests: the input has no non-blank line")]
    Empty,
    /// Alpha or the metric list is invalid.
    #[error(transparent)]
    Checks(#[from] InvalidSpec),
}

/// How to analyse.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzeOptions {
    /// Overall false-rollback budget.
    pub alpha: f64,
    /// Metrics to check; `None` means the error rate, plus `latency_p95` when any request
    /// has a latency.
    pub metrics: Option<Vec<MetricSpec>>,
}

#[derive(Deserialize)]
struct Record {
    w: f64,
    arm: Arm,
    error: bool,
    latency_ms: Option<f64>,
    ttft_ms: Option<f64>,
}

/// Analyses a recording with the default metrics at level `alpha`.
pub fn analyze(text: &str, alpha: f64) -> Result<AnalyzeReport, AnalyzeError> {
    analyze_with(
        text,
        &AnalyzeOptions {
            alpha,
            metrics: None,
        },
    )
}

/// Analyses a recording with explicit options.
pub fn analyze_with(text: &str, options: &AnalyzeOptions) -> Result<AnalyzeReport, AnalyzeError> {
    let records = parse(text)?;
    if records.is_empty() {
        return Err(AnalyzeError::Empty);
    }
    let metrics = options.metrics.clone().unwrap_or_else(|| {
        let mut m = vec![Metric::ErrorRate];
        if records.iter().any(|(_, r)| r.latency_ms.is_some()) {
            m.push(Metric::LatencyP95);
        }
        m.into_iter()
            .map(|metric| MetricSpec {
                metric,
                margin: 1.0,
            })
            .collect()
    });
    let mut monitor = Monitor::new(&metrics, options.alpha)?;
    let mut alarm_lines = vec![None; metrics.len()];
    for (line, r) in &records {
        let obs = Observation {
            now_ms: 0,
            arm: r.arm,
            w: r.w,
            error: r.error,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
        };
        monitor.observe(&obs).map_err(|e| AnalyzeError::Line {
            line: *line,
            message: e.to_string(),
        })?;
        for (slot, m) in alarm_lines.iter_mut().zip(monitor.metrics()) {
            if slot.is_none() && m.alarm().is_some() {
                *slot = Some(*line);
            }
        }
    }
    let metric_reports: Vec<MetricReport> = monitor
        .metrics()
        .iter()
        .zip(alarm_lines)
        .map(|(m, alarm_line)| {
            let e = m.eprocess();
            MetricReport {
                metric: m.metric(),
                log_e: m.log_e(),
                threshold: monitor.log_threshold(),
                decision: decision(m.alarm().is_some()),
                events: e.events(),
                candidate_events: e.candidate_events(),
                expected_candidate_events: e.expected_candidate_events(),
                margin: m.margin(),
                alarm_line,
                log_e_at_alarm: m.alarm().map(|a| a.log_e),
                baseline_threshold_ms: monitor.baseline_threshold_ms(m.metric()),
            }
        })
        .collect();
    Ok(AnalyzeReport {
        decision: decision(monitor.alarm().is_some()),
        metrics: metric_reports,
        alpha: options.alpha,
        requests: records.len() as u64,
        candidate_requests: monitor.requests().candidate,
    })
}

fn decision(alarm: bool) -> Decision {
    if alarm {
        Decision::Rollback
    } else {
        Decision::Continue
    }
}

/// Non-blank lines parsed as records, with their 1-based line numbers.
fn parse(text: &str) -> Result<Vec<(usize, Record)>, AnalyzeError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Record>(l)
                .map(|r| (i + 1, r))
                .map_err(|e| AnalyzeError::Line {
                    line: i + 1,
                    message: json_message(&e),
                })
        })
        .collect()
}

/// serde_json's message with its position turned into a column (the line is ours).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(message) => format!("column {}: {message}", e.column()),
        None => text,
    }
}

impl AnalyzeReport {
    /// A short plain-text table of the verdict.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let verdict = match self.decision {
            Decision::Rollback => "ROLLBACK",
            Decision::Continue => "continue",
        };
        let _ = writeln!(
            out,
            "decision: {verdict} (alpha {}, {} requests, {} on the candidate)",
            self.alpha, self.requests, self.candidate_requests
        );
        let _ = writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>8} {:>18}  decision",
            "metric", "log E", "threshold", "events", "candidate (expect)"
        );
        for m in &self.metrics {
            let verdict = match (m.decision, m.alarm_line) {
                (Decision::Rollback, Some(line)) => format!("rollback (line {line})"),
                (Decision::Rollback, None) => "rollback".to_owned(),
                (Decision::Continue, _) => "continue".to_owned(),
            };
            let candidate = format!(
                "{} ({:.1})",
                m.candidate_events, m.expected_candidate_events
            );
            let _ = writeln!(
                out,
                "{:<12} {:>9.3} {:>9.3} {:>8} {:>18}  {verdict}",
                m.metric.name(),
                m.log_e,
                m.threshold,
                m.events,
                candidate
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_error(text: &str) -> (usize, String) {
        match analyze(text, 0.01) {
            Err(AnalyzeError::Line { line, message }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parse_errors_name_the_line() {
        let ok = r#"{"w":0.05,"arm":"baseline","error":false}"#;
        let (line, message) = line_error(&format!(
            "{ok}\n\n{ok}\n{{\"w\":0.05,\"arm\":\"canary\",\"error\":true}}\n"
        ));
        assert_eq!(line, 4);
        assert!(message.contains("unknown variant `canary`"), "{message}");
        assert!(message.starts_with("column "), "{message}");

        let (line, message) = line_error(&format!("{ok}\n{{\"w\":0.05,\"arm\":\"baseline\"}}"));
        assert_eq!(line, 2);
        assert!(message.contains("missing field `error`"), "{message}");

        let (line, message) = line_error(&format!("{ok}\n{ok}\nnot json"));
        assert_eq!(line, 3);
        assert!(message.contains("expected ident"), "{message}");
    }

    #[test]
    fn impossible_records_name_the_line() {
        let text = "{\"w\":0.05,\"arm\":\"baseline\",\"error\":false}\n\
                    {\"w\":0,\"arm\":\"candidate\",\"error\":false}";
        let (line, message) = line_error(text);
        assert_eq!(line, 2);
        assert!(message.contains("cannot have been routed"), "{message}");
        let (line, message) = line_error(r#"{"w":1.2,"arm":"baseline","error":false}"#);
        assert_eq!(line, 1);
        assert!(message.contains("probability"), "{message}");
        let (line, message) =
            line_error(r#"{"w":0.2,"arm":"baseline","error":false,"latency_ms":-4}"#);
        assert_eq!(line, 1);
        assert!(message.contains("latency_ms"), "{message}");
    }

    #[test]
    fn empty_input_and_bad_alpha_are_errors() {
        assert_eq!(analyze("\n  \n", 0.01), Err(AnalyzeError::Empty));
        let err = analyze(r#"{"w":0.05,"arm":"baseline","error":false}"#, 1.5).unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
    }

    /// 2000 requests at w = 0.05, one per line; errors as given by `error_at`.
    fn recording(error_at: impl Fn(usize, Arm) -> bool, latency: bool) -> String {
        let mut out = String::new();
        for i in 0..2000 {
            let arm = if i % 20 == 0 {
                Arm::Candidate
            } else {
                Arm::Baseline
            };
            let arm_name = if arm == Arm::Candidate {
                "candidate"
            } else {
                "baseline"
            };
            let error = error_at(i, arm);
            if latency {
                let ms = 100 + (i * 37) % 400;
                let _ = writeln!(
                    out,
                    r#"{{"w":0.05,"arm":"{arm_name}","error":{error},"latency_ms":{ms},"id":"r{i}"}}"#
                );
            } else {
                let _ = writeln!(out, r#"{{"w":0.05,"arm":"{arm_name}","error":{error}}}"#);
            }
        }
        out
    }

    #[test]
    fn healthy_recording_continues() {
        let text = recording(|i, _| i % 50 == 7, false);
        let report = analyze(&text, 0.01).unwrap();
        assert_eq!(report.decision, Decision::Continue);
        assert_eq!(report.metrics.len(), 1);
        let m = &report.metrics[0];
        assert_eq!((m.events, m.candidate_events), (40, 0));
        assert!((m.threshold - 100f64.ln()).abs() < 1e-12);
        assert_eq!((report.requests, report.candidate_requests), (2000, 100));
    }

    #[test]
    fn failing_candidate_rolls_back_and_serialises_as_documented() {
        let text = recording(|i, arm| arm == Arm::Candidate && i % 40 == 0, true);
        let report = analyze(&text, 0.01).unwrap();
        assert_eq!(report.decision, Decision::Rollback);
        let names: Vec<_> = report.metrics.iter().map(|m| m.metric).collect();
        assert_eq!(names, vec![Metric::ErrorRate, Metric::LatencyP95]);
        let errors = &report.metrics[0];
        assert_eq!(errors.decision, Decision::Rollback);
        // Candidate errors at lines 1, 41, 81, 121, 161: log E after four of them is 4.67, after
        // five 6.40 >= ln 200.
        assert_eq!(errors.alarm_line, Some(161));
        assert_eq!(report.metrics[1].decision, Decision::Continue);
        assert!(report.metrics[1].baseline_threshold_ms.is_some());

        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["decision"], "rollback");
        let first = &json["metrics"][0];
        assert_eq!(first["metric"], "error_rate");
        assert_eq!(first["decision"], "rollback");
        assert!(first["log_e"].is_f64() && first["threshold"].is_f64());
        assert_eq!(first["events"], 50);
        assert_eq!(first["candidate_events"], 50);

        let human = report.render_human();
        assert!(human.starts_with("decision: ROLLBACK"), "{human}");
        assert!(human.contains("rollback (line 161)"), "{human}");
    }

    #[test]
    fn explicit_metrics_override_the_default() {
        let text = recording(|_, _| false, true);
        let options = AnalyzeOptions {
            alpha: 0.05,
            metrics: Some(vec![MetricSpec {
                metric: Metric::LatencyP50,
                margin: 1.2,
            }]),
        };
        let report = analyze_with(&text, &options).unwrap();
        assert_eq!(report.metrics.len(), 1);
        assert_eq!(report.metrics[0].metric, Metric::LatencyP50);
        assert_eq!(report.metrics[0].margin, 1.2);
        assert!((report.metrics[0].threshold - 20f64.ln()).abs() < 1e-12);
    }
}

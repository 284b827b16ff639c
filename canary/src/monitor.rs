//! The per-canary monitor: one e-process per metric, fed with completed requests.
//!
//! Requests arrive in completion order. An error is an event of `error_rate`; a latency
//! (or time to first token) above the baseline threshold *at that moment* is an event of the
//! matching latency metric, where a candidate's latency is first divided by the metric's
//! margin (the slowdown tolerated). Requests of both arms are tested against the threshold; only
//! baseline requests update it, after being tested. Baseline requests recorded with `w = 0`
//! (before the canary starts) warm the thresholds up without touching any e-process.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::burst::BurstGuard;
use crate::eprocess::{log_threshold, EProcess};
use crate::spec::{validate_checks, InvalidSpec, Metric, MetricSpec, Source};
use crate::split::Arm;
use crate::threshold::{BaselineWindow, DEFAULT_CAPACITY};

/// One completed request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Completion time, in milliseconds of any fixed epoch.
    pub now_ms: u64,
    /// The arm that served it.
    pub arm: Arm,
    /// Candidate probability it was routed with.
    pub w: f64,
    /// Whether it failed.
    pub error: bool,
    /// Total latency, when known.
    pub latency_ms: Option<f64>,
    /// Time to first token, when known.
    pub ttft_ms: Option<f64>,
}

/// An observation that cannot have happened.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ObservationError {
    /// `w` is not a probability.
    #[error("`w` must be a probability in [0, 1], got `{0}`")]
    Share(f64),
    /// The arm could not have been chosen with that `w`.
    #[error("a {arm:?} request cannot have been routed with `w` = {w}")]
    Impossible {
        /// The arm reported.
        arm: Arm,
        /// The share reported.
        w: f64,
    },
    /// A duration is negative or not a number.
    #[error("`{field}` must be a finite duration >= 0, got `{value}`")]
    Duration {
        /// Which field.
        field: &'static str,
        /// The value reported.
        value: f64,
    },
}

/// Requests (or events) counted per arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Served by the baseline.
    pub baseline: u64,
    /// Served by the candidate.
    pub candidate: u64,
}

impl ArmCounts {
    fn add(&mut self, arm: Arm) {
        match arm {
            Arm::Baseline => self.baseline += 1,
            Arm::Candidate => self.candidate += 1,
        }
    }
}

/// The first time a metric's e-process crossed its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Which metric.
    pub metric: Metric,
    /// log E when it crossed.
    pub log_e: f64,
    /// The threshold it crossed, `ln(K/α)`.
    pub log_threshold: f64,
    /// Completion time of the request that made it cross.
    pub at_ms: u64,
}

/// The state of one checked metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricMonitor {
    metric: Metric,
    /// The spec's margin: for the error rate the tolerated relative risk (the e-process's
    /// `r0`); for a latency metric the tolerated slowdown, applied to candidate latencies.
    margin: f64,
    eprocess: EProcess,
    tested: ArmCounts,
    events: ArmCounts,
    /// Leaves out events of incidents that hit both arms (see [`crate::burst`]).
    #[serde(default)]
    burst: BurstGuard,
    alarm: Option<Alarm>,
}

impl MetricMonitor {
    /// Which metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The margin of its spec: the error rate's tolerated relative risk, or a latency
    /// metric's tolerated slowdown factor.
    pub fn margin(&self) -> f64 {
        self.margin
    }

    /// Its e-process.
    pub fn eprocess(&self) -> &EProcess {
        &self.eprocess
    }

    /// Current log E.
    pub fn log_e(&self) -> f64 {
        self.eprocess.log_e()
    }

    /// Requests tested for an event, per arm (for latency metrics: those with the measurement,
    /// after warm-up), whatever their `w`.
    pub fn tested(&self) -> ArmCounts {
        self.tested
    }

    /// Events per arm, whatever their `w`.
    pub fn events(&self) -> ArmCounts {
        self.events
    }

    /// Events left out of the e-process because they came in a burst over both arms.
    pub fn skipped_events(&self) -> u64 {
        self.burst.skipped()
    }

    /// The first crossing of the threshold, if any. It stays set: the test is one-shot.
    pub fn alarm(&self) -> Option<&Alarm> {
        self.alarm.as_ref()
    }
}

/// One e-process per configured metric, and the baseline thresholds they need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    log_threshold: f64,
    metrics: Vec<MetricMonitor>,
    latency: Option<BaselineWindow>,
    ttft: Option<BaselineWindow>,
    requests: ArmCounts,
}

impl Monitor {
    /// A monitor checking `metrics` with an overall false-alarm budget `alpha`.
    pub fn new(metrics: &[MetricSpec], alpha: f64) -> Result<Self, InvalidSpec> {
        // No metric is a valid monitor (of a sticky split's rollout): it never alarms.
        let problems: Vec<_> = validate_checks(metrics, alpha)
            .into_iter()
            .filter(|p| p.code != "no_metrics")
            .collect();
        if !problems.is_empty() {
            return Err(InvalidSpec { problems });
        }
        let uses = |source| metrics.iter().any(|m| m.metric.source() == source);
        let window = |source| uses(source).then(|| BaselineWindow::new(DEFAULT_CAPACITY));
        Ok(Monitor {
            log_threshold: log_threshold(alpha, metrics.len().max(1)),
            metrics: metrics
                .iter()
                .map(|m| MetricMonitor {
                    metric: m.metric,
                    margin: m.margin,
                    // A latency margin scales the candidate's latencies instead: "no slower
                    // than margin × the baseline at this quantile" is then exactly relative
                    // risk <= 1 for the events.
                    eprocess: EProcess::new(match m.metric.source() {
                        Source::Errors => m.margin,
                        Source::Latency | Source::Ttft => 1.0,
                    }),
                    tested: ArmCounts::default(),
                    events: ArmCounts::default(),
                    burst: BurstGuard::default(),
                    alarm: None,
                })
                .collect(),
            latency: window(Source::Latency),
            ttft: window(Source::Ttft),
            requests: ArmCounts::default(),
        })
    }

    /// Adds one completed request. Returns the alarm it raised, if it is the first one.
    pub fn observe(&mut self, obs: &Observation) -> Result<Option<Alarm>, ObservationError> {
        check(obs)?;
        let had_alarm = self.alarm().is_some();
        self.requests.add(obs.arm);
        let log_threshold = self.log_threshold;
        for m in &mut self.metrics {
            let slack = match obs.arm {
                Arm::Candidate => m.margin,
                Arm::Baseline => 1.0,
            };
            let event = match m.metric.source() {
                Source::Errors => Some(obs.error),
                Source::Latency => exceeds(self.latency.as_ref(), m.metric, obs.latency_ms, slack),
                Source::Ttft => exceeds(self.ttft.as_ref(), m.metric, obs.ttft_ms, slack),
            };
            let Some(event) = event else { continue };
            m.tested.add(obs.arm);
            let admitted = m.burst.admit(event, obs.arm == Arm::Baseline);
            if !event {
                continue;
            }
            m.events.add(obs.arm);
            if !admitted {
                continue;
            }
            m.eprocess.observe(obs.w, obs.arm == Arm::Candidate);
            if m.alarm.is_none() && m.eprocess.crossed(log_threshold) {
                m.alarm = Some(Alarm {
                    metric: m.metric,
                    log_e: m.eprocess.log_e(),
                    log_threshold,
                    at_ms: obs.now_ms,
                });
            }
        }
        if obs.arm == Arm::Baseline {
            if let (Some(window), Some(v)) = (self.latency.as_mut(), obs.latency_ms) {
                window.push(v);
            }
            if let (Some(window), Some(v)) = (self.ttft.as_mut(), obs.ttft_ms) {
                window.push(v);
            }
        }
        Ok(if had_alarm {
            None
        } else {
            self.alarm().copied()
        })
    }

    /// The first alarm of any metric (earliest in completion order; ties in spec order).
    pub fn alarm(&self) -> Option<&Alarm> {
        self.metrics
            .iter()
            .filter_map(MetricMonitor::alarm)
            .min_by_key(|a| a.at_ms)
    }

    /// The rollback threshold on log E, `ln(K/α)`.
    pub fn log_threshold(&self) -> f64 {
        self.log_threshold
    }

    /// Every checked metric, in spec order.
    pub fn metrics(&self) -> &[MetricMonitor] {
        &self.metrics
    }

    /// Requests seen, per arm.
    pub fn requests(&self) -> ArmCounts {
        self.requests
    }

    /// The current baseline threshold of a latency metric, in ms, once warmed up.
    pub fn baseline_threshold_ms(&self, metric: Metric) -> Option<f64> {
        let window = match metric.source() {
            Source::Errors => None,
            Source::Latency => self.latency.as_ref(),
            Source::Ttft => self.ttft.as_ref(),
        };
        window
            .zip(metric.quantile())
            .and_then(|(w, q)| w.quantile(q))
    }
}

/// Whether a measurement is an event of a latency metric (above `slack` × the baseline
/// threshold); `None` when it cannot be tested yet.
fn exceeds(
    window: Option<&BaselineWindow>,
    metric: Metric,
    value: Option<f64>,
    slack: f64,
) -> Option<bool> {
    let threshold = window?.quantile(metric.quantile()?)?;
    Some(value? > slack * threshold)
}

fn check(obs: &Observation) -> Result<(), ObservationError> {
    if !(0.0..=1.0).contains(&obs.w) {
        return Err(ObservationError::Share(obs.w));
    }
    let impossible = match obs.arm {
        Arm::Candidate => obs.w == 0.0,
        Arm::Baseline => obs.w == 1.0,
    };
    if impossible {
        return Err(ObservationError::Impossible {
            arm: obs.arm,
            w: obs.w,
        });
    }
    for (field, value) in [("latency_ms", obs.latency_ms), ("ttft_ms", obs.ttft_ms)] {
        if let Some(value) = value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(ObservationError::Duration { field, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metrics: &[Metric]) -> Vec<MetricSpec> {
        metrics
            .iter()
            .map(|&metric| MetricSpec {
                metric,
                margin: 1.0,
            })
            .collect()
    }

    fn obs(arm: Arm, w: f64, error: bool, latency_ms: Option<f64>) -> Observation {
        Observation {
            now_ms: 0,
            arm,
            w,
            error,
            latency_ms,
            ttft_ms: None,
        }
    }

    #[test]
    fn errors_feed_the_error_rate_e_process() {
        let mut m = Monitor::new(&spec(&[Metric::ErrorRate]), 0.01).unwrap();
        m.observe(&obs(Arm::Candidate, 0.05, true, None)).unwrap();
        m.observe(&obs(Arm::Baseline, 0.05, true, None)).unwrap();
        m.observe(&obs(Arm::Baseline, 0.05, false, None)).unwrap();
        let e = m.metrics()[0].eprocess();
        assert_eq!((e.events(), e.candidate_events()), (2, 1));
        assert_eq!(
            m.requests(),
            ArmCounts {
                baseline: 2,
                candidate: 1
            }
        );
        assert_eq!(
            m.metrics()[0].tested(),
            ArmCounts {
                baseline: 2,
                candidate: 1
            }
        );
    }

    #[test]
    fn latency_events_use_only_earlier_baseline_requests() {
        let mut m = Monitor::new(&spec(&[Metric::LatencyP95]), 0.01).unwrap();
        // Warm-up with w = 0: 200 baseline latencies 1..=200 ms; p95 = 190.
        for i in 1..=199 {
            m.observe(&obs(Arm::Baseline, 0.0, false, Some(f64::from(i))))
                .unwrap();
        }
        assert_eq!(m.baseline_threshold_ms(Metric::LatencyP95), None);
        m.observe(&obs(Arm::Baseline, 0.0, false, Some(200.0)))
            .unwrap();
        assert_eq!(m.baseline_threshold_ms(Metric::LatencyP95), Some(190.0));
        assert_eq!(m.metrics()[0].tested(), ArmCounts::default());
        // A slow candidate request is an event; it does not move the threshold.
        m.observe(&obs(Arm::Candidate, 0.05, false, Some(5000.0)))
            .unwrap();
        assert_eq!(m.baseline_threshold_ms(Metric::LatencyP95), Some(190.0));
        // A slow baseline request is tested against the threshold before it joins the window.
        m.observe(&obs(Arm::Baseline, 0.05, false, Some(191.0)))
            .unwrap();
        let mm = &m.metrics()[0];
        assert_eq!(
            mm.events(),
            ArmCounts {
                baseline: 1,
                candidate: 1
            }
        );
        assert_eq!(mm.eprocess().events(), 2);
        // A request without a latency is not tested.
        m.observe(&obs(Arm::Candidate, 0.05, true, None)).unwrap();
        assert_eq!(
            m.metrics()[0].tested(),
            ArmCounts {
                baseline: 1,
                candidate: 1
            }
        );
    }

    #[test]
    fn a_latency_margin_scales_the_threshold_for_candidate_requests_only() {
        let metrics = [MetricSpec {
            metric: Metric::LatencyP95,
            margin: 1.1,
        }];
        let mut m = Monitor::new(&metrics, 0.01).unwrap();
        for i in 1..=200 {
            m.observe(&obs(Arm::Baseline, 0.0, false, Some(f64::from(i))))
                .unwrap();
        }
        // p95 = 190 ms: a candidate request is an event above 1.1 × 190 = 209 ms.
        m.observe(&obs(Arm::Candidate, 0.05, false, Some(209.0)))
            .unwrap();
        assert_eq!(m.metrics()[0].events().candidate, 0);
        m.observe(&obs(Arm::Candidate, 0.05, false, Some(209.5)))
            .unwrap();
        assert_eq!(m.metrics()[0].events().candidate, 1);
        // A baseline request is an event above 190 ms itself.
        m.observe(&obs(Arm::Baseline, 0.05, false, Some(191.0)))
            .unwrap();
        assert_eq!(m.metrics()[0].events().baseline, 1);
        // The e-process tests relative risk 1 of those events; the margin is reported as given.
        assert_eq!(m.metrics()[0].eprocess().margin(), 1.0);
        assert_eq!(m.metrics()[0].margin(), 1.1);
    }

    #[test]
    fn alarm_is_raised_once_and_latched() {
        let mut m = Monitor::new(&spec(&[Metric::ErrorRate, Metric::LatencyP50]), 0.01).unwrap();
        assert!((m.log_threshold() - 200f64.ln()).abs() < 1e-12);
        let mut raised = Vec::new();
        for i in 0..20 {
            let o = Observation {
                now_ms: i,
                ..obs(Arm::Candidate, 0.05, true, None)
            };
            if let Some(a) = m.observe(&o).unwrap() {
                raised.push(a);
            }
        }
        assert_eq!(raised.len(), 1);
        let alarm = raised[0];
        assert_eq!(alarm.metric, Metric::ErrorRate);
        assert!(alarm.log_e >= alarm.log_threshold);
        // Baseline errors pull log E back down; the alarm stays.
        for _ in 0..500 {
            m.observe(&obs(Arm::Baseline, 0.05, true, None)).unwrap();
        }
        assert!(m.metrics()[0].log_e() < alarm.log_threshold);
        assert_eq!(m.alarm(), Some(&alarm));
    }

    #[test]
    fn impossible_observations_are_rejected() {
        let mut m = Monitor::new(&spec(&[Metric::ErrorRate]), 0.01).unwrap();
        let cases = [
            (
                obs(Arm::Candidate, 1.5, false, None),
                "`w` must be a probability",
            ),
            (
                obs(Arm::Candidate, f64::NAN, false, None),
                "`w` must be a probability",
            ),
            (
                obs(Arm::Candidate, 0.0, false, None),
                "Candidate request cannot",
            ),
            (
                obs(Arm::Baseline, 1.0, false, None),
                "Baseline request cannot",
            ),
            (
                obs(Arm::Baseline, 0.5, false, Some(-1.0)),
                "`latency_ms` must be",
            ),
        ];
        for (o, message) in cases {
            let err = m.observe(&o).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
        assert_eq!(m.requests(), ArmCounts::default());
    }

    #[test]
    fn invalid_checks_are_refused() {
        assert!(Monitor::new(&spec(&[Metric::ErrorRate]), 0.0).is_err());
        // Checking nothing (a sticky split's rollout) is valid and never alarms.
        let mut none = Monitor::new(&spec(&[]), 0.01).unwrap();
        for _ in 0..100 {
            assert_eq!(
                none.observe(&obs(Arm::Candidate, 0.05, true, None))
                    .unwrap(),
                None
            );
        }
        assert!(none.log_threshold().is_finite());
    }
}

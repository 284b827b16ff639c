//! The event-attribution e-process.
//!
//! Every request is routed to the candidate independently with probability `w`, recorded at
//! routing time. For each *event* (an error, a slow request) let `c = 1` when the candidate
//! served it. Without a regression `P(c = 1) = w` exactly, whatever the baseline does; under a
//! relative risk `r` it is `θ(w, r) = w·r / (w·r + 1 − w)`. The e-process is a uniform mixture
//! of likelihood ratios over a grid of relative risks, so it is a nonnegative supermartingale
//! under the null and `P(sup log E ≥ ln(1/α)) ≤ α` (Ville), however often it is looked at and
//! however `w` changes between events.
//!
//! The mixture weights favour relative risks between 1.5 and 3 (a doubling is the regression
//! the checks are sized for) over the extremes: 1.1 and 10 take 1/34 each, 1.75 to 2.5 take
//! 6/34 each. Any fixed weights summing to 1 keep the mixture a supermartingale; these cost
//! less evidence than uniform ones where detection is slow, and a large regression, caught
//! within a few hundred candidate requests anyway, is caught about as soon.
//!
//! Margin: with a tolerated relative risk `r0 > 1` the alternatives are the grid scaled by
//! `r0` (`r0·r_j`), so every alternative stays strictly above the null and no grid point is
//! wasted. The likelihood ratio against `θ(w, r0)` is then a supermartingale for every true
//! `r ≤ r0`, because its expected per-event factor grows with the true `θ`.

use serde::{Deserialize, Serialize};

/// Relative risks of the alternatives (times the margin), mixed with weights [`WEIGHTS`].
pub const GRID: [f64; 11] = [1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0];

/// Mixture weight of each grid point, in 34ths: most on 1.5–3, least on the extremes.
pub const WEIGHTS: [f64; 11] = [1.0, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0, 4.0, 2.0, 1.0, 1.0];

/// The sum of [`WEIGHTS`], by which each is divided.
const WEIGHT_TOTAL: f64 = 34.0;

const GRID_LEN: usize = GRID.len();

/// Probability that an event was served by the candidate, given candidate share `w` and
/// relative risk `r`.
pub fn theta(w: f64, r: f64) -> f64 {
    w * r / (w * r + 1.0 - w)
}

/// The rollback threshold on log E: `ln(K/α)` for `K` metrics checked at level `α` overall.
pub fn log_threshold(alpha: f64, metrics: usize) -> f64 {
    (metrics as f64 / alpha).ln()
}

/// Per-event log likelihood-ratio increments of every grid point at one candidate share.
#[derive(Debug, Clone, PartialEq)]
pub struct Increments {
    candidate: [f64; GRID_LEN],
    baseline: [f64; GRID_LEN],
}

impl Increments {
    /// Increments for share `w` and margin `r0`; `None` when `w` is not in (0, 1), where an
    /// event carries no information about who is worse.
    pub fn new(w: f64, margin: f64) -> Option<Self> {
        if !(w > 0.0 && w < 1.0) {
            return None;
        }
        // ln θ(w,r) = ln w + ln r − ln(1 + w(r−1)); ln(1−θ(w,r)) = ln(1−w) − ln(1 + w(r−1)).
        let null_norm = (w * (margin - 1.0)).ln_1p();
        let mut candidate = [0.0; GRID_LEN];
        let mut baseline = [0.0; GRID_LEN];
        for (j, r) in GRID.iter().enumerate() {
            let alt_norm = (w * (margin * r - 1.0)).ln_1p();
            candidate[j] = r.ln() - alt_norm + null_norm;
            baseline[j] = null_norm - alt_norm;
        }
        Some(Increments {
            candidate,
            baseline,
        })
    }
}

/// The running e-process of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EProcess {
    margin: f64,
    log_lr: [f64; GRID_LEN],
    events: u64,
    candidate_events: u64,
    expected_candidate_events: f64,
}

impl EProcess {
    /// A fresh e-process (E = 1) testing relative risk `<= margin`.
    pub fn new(margin: f64) -> Self {
        EProcess {
            margin,
            log_lr: [0.0; GRID_LEN],
            events: 0,
            candidate_events: 0,
            expected_candidate_events: 0.0,
        }
    }

    /// Adds one event routed with candidate share `w`; returns false (and changes nothing)
    /// when `w` is 0, 1 or not a probability, since such an event carries no information.
    pub fn observe(&mut self, w: f64, candidate: bool) -> bool {
        match Increments::new(w, self.margin) {
            Some(inc) => {
                self.apply(&inc, w, candidate);
                true
            }
            None => false,
        }
    }

    /// Adds one event with increments computed beforehand for its share `w` (and this margin).
    pub fn apply(&mut self, inc: &Increments, w: f64, candidate: bool) {
        let step = if candidate {
            &inc.candidate
        } else {
            &inc.baseline
        };
        for (l, s) in self.log_lr.iter_mut().zip(step) {
            *l += s;
        }
        self.events += 1;
        self.candidate_events += u64::from(candidate);
        self.expected_candidate_events += w;
    }

    /// `log E = logsumexp_j(ln π_j + L_j)` with `π_j = WEIGHTS[j] / 34`, computed stably.
    pub fn log_e(&self) -> f64 {
        let max = self.max_log_lr();
        let sum: f64 = self
            .log_lr
            .iter()
            .zip(WEIGHTS)
            .map(|(l, weight)| weight * (l - max).exp())
            .sum();
        max + (sum / WEIGHT_TOTAL).ln()
    }

    /// Whether `log E >= log_threshold`. Cheap when far below: `log E` never exceeds the
    /// largest grid term (the weights are below 1), so the sum is only computed when that
    /// term is over the threshold.
    pub fn crossed(&self, log_threshold: f64) -> bool {
        self.max_log_lr() >= log_threshold && self.log_e() >= log_threshold
    }

    fn max_log_lr(&self) -> f64 {
        self.log_lr
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// The tolerated relative risk r0.
    pub fn margin(&self) -> f64 {
        self.margin
    }

    /// Informative events seen (those with `0 < w < 1`).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Informative events served by the candidate.
    pub fn candidate_events(&self) -> u64 {
        self.candidate_events
    }

    /// Candidate events expected without a regression: the sum of `w` over events.
    pub fn expected_candidate_events(&self) -> f64 {
        self.expected_candidate_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below were worked out independently (direct formula with θ computed
    // from literal probabilities, plain sum of exponentials), not with this module.

    fn run(events: &[(f64, bool)], margin: f64) -> EProcess {
        let mut e = EProcess::new(margin);
        for &(w, c) in events {
            assert!(e.observe(w, c));
        }
        e
    }

    #[test]
    fn single_candidate_event_at_five_percent() {
        // L_j = ln(θ(0.05, r_j) / 0.05); log E = ln(Σ_j π_j exp(L_j)) = ln(Σ_j π_j θ_j / 0.05).
        let e = run(&[(0.05, true)], 1.0);
        assert!(
            (e.log_e() - 0.802_457_475_549_798_5).abs() < 1e-12,
            "{}",
            e.log_e()
        );
        // Grid point r = 2 alone: θ = 0.1/1.05, so L = ln(2/1.05).
        assert!((e.log_lr[5] - (2.0f64 / 1.05).ln()).abs() < 1e-12);
    }

    #[test]
    fn staged_shares_accumulate_per_event() {
        // Events at w = 0.05 (candidate), 0.05 (baseline), 0.25 (candidate).
        let e = run(&[(0.05, true), (0.05, false), (0.25, true)], 1.0);
        assert!(
            (e.log_e() - 1.320_117_726_433_530_6).abs() < 1e-12,
            "{}",
            e.log_e()
        );
        // Grid point r = 2: the candidate event adds ln(2/1.05); the baseline event adds
        // ln((0.95/1.05)/0.95) = ln(1/1.05); at w = 0.25, θ = 0.5/1.25 = 0.4 adds ln(0.4/0.25).
        let l2 = (2.0f64 / 1.05).ln() + (1.0f64 / 1.05).ln() + (0.4f64 / 0.25).ln();
        assert!((e.log_lr[5] - l2).abs() < 1e-12);
        assert!((l2 - 1.065_570_481_466_817).abs() < 1e-12);
        assert_eq!(e.events(), 3);
        assert_eq!(e.candidate_events(), 2);
        assert!((e.expected_candidate_events() - 0.35).abs() < 1e-12);
    }

    #[test]
    fn a_rollout_through_four_stages() {
        let mut events = vec![(0.01, true); 3];
        events.extend([(0.05, false); 10]);
        events.extend([(0.25, true), (0.5, true), (0.5, false)]);
        let e = run(&events, 1.0);
        assert!(
            (e.log_e() - 2.186_720_422_625_481_5).abs() < 1e-11,
            "{}",
            e.log_e()
        );
    }

    #[test]
    fn baseline_events_only_lower_the_evidence() {
        let e = run(&[(0.05, false); 40], 1.0);
        assert!(
            (e.log_e() - (-1.633_773_792_135_137_8)).abs() < 1e-12,
            "{}",
            e.log_e()
        );
    }

    #[test]
    fn margin_scales_the_grid() {
        // r0 = 1.5: alternatives 1.5·r_j against θ(w, 1.5).
        let e = run(&[(0.05, true), (0.05, false), (0.25, true)], 1.5);
        assert!(
            (e.log_e() - 1.131_470_902_023_954_6).abs() < 1e-12,
            "{}",
            e.log_e()
        );
    }

    #[test]
    fn uninformative_shares_are_skipped() {
        let mut e = EProcess::new(1.0);
        for w in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            assert!(!e.observe(w, true));
        }
        assert_eq!(e.events(), 0);
        assert_eq!(e.log_e(), 0.0);
    }

    #[test]
    fn log_e_is_stable_far_from_zero() {
        let e = run(&vec![(0.05, true); 2000], 1.0);
        // Dominated by r = 10: 2000 · ln(θ(0.05,10)/0.05) − ln 34 (its weight is 1/34).
        let top = 2000.0 * (0.5f64 / (0.5 + 0.95) / 0.05).ln() - 34f64.ln();
        assert!(e.log_e().is_finite());
        assert!((e.log_e() - top).abs() < 1e-6);
        assert!(e.crossed(log_threshold(0.01, 1)));
    }

    #[test]
    fn threshold_is_bonferroni() {
        assert!((log_threshold(0.01, 1) - 100f64.ln()).abs() < 1e-15);
        assert!((log_threshold(0.01, 3) - 300f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn theta_matches_its_definition() {
        assert_eq!(theta(0.05, 1.0), 0.05);
        assert!((theta(0.25, 2.0) - 0.4).abs() < 1e-15);
    }
}

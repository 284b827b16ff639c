//! Keeping evidence through incidents: events are left out of the e-process while the
//! baseline's own event rate jumps far above its usual level.
//!
//! During a provider incident both arms fail (or slow down) together. Every event then says
//! almost nothing about who is worse, yet each one served by the baseline lowers the
//! e-process a little, and thousands of them wipe out the evidence gathered before. So each
//! metric follows the event rate of the baseline's tested requests (the candidate's own rate
//! is what is being tested, so a bad candidate never looks like an incident): a fast average
//! over the last [`FAST`] of them and a slow one over [`SLOW`]. While the fast one is above
//! [`FACTOR`] times the slow one (and above [`MIN_BURST_RATE`]), events of both arms are
//! skipped, and the slow average holds still so that a long incident does not become the
//! usual level; after [`MAX_BURST`] baseline requests in a row it is taken as the new usual
//! level.
//!
//! Validity: whether an event is skipped is decided from earlier baseline requests only,
//! never from the arm of the event at hand, so given the past the arm of every event that
//! enters the e-process is still drawn with probability `w` under the null (optional
//! skipping): the e-process stays a supermartingale and `P(false rollback) ≤ α` still holds.

use serde::{Deserialize, Serialize};

/// Baseline requests the fast average spans.
pub const FAST: f64 = 100.0;
/// Baseline requests the slow average spans.
pub const SLOW: f64 = 20_000.0;
/// How many times its usual level the event rate must reach to count as a burst.
pub const FACTOR: f64 = 3.0;
/// The smallest recent event rate that counts as a burst: a few events in a row at a low
/// usual rate are not one.
pub const MIN_BURST_RATE: f64 = 0.05;
/// Baseline requests before bursts are looked for: the slow average must mean something.
pub const WARM_UP: u64 = 2_000;
/// Longest burst, in baseline requests: a rate that stays up is the new usual level.
pub const MAX_BURST: u64 = 50_000;

/// The event-rate averages of one metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstGuard {
    fast: f64,
    slow: f64,
    tested: u64,
    in_burst_for: u64,
    skipped: u64,
}

impl BurstGuard {
    /// Whether the next event is to be skipped: decided before looking at it.
    pub fn skipping(&self) -> bool {
        self.tested >= WARM_UP
            && self.in_burst_for < MAX_BURST
            && self.fast >= MIN_BURST_RATE
            && self.fast > FACTOR * self.slow
    }

    /// Adds one tested request (an event or not) of the baseline or not; returns whether it
    /// is to enter the e-process.
    pub fn admit(&mut self, event: bool, baseline: bool) -> bool {
        let skip = self.skipping();
        self.skipped += u64::from(event && skip);
        if !baseline {
            return event && !skip;
        }
        let x = f64::from(u8::from(event));
        if skip {
            self.in_burst_for += 1;
        } else {
            if self.in_burst_for >= MAX_BURST {
                // The burst lasted: its level is the usual one now.
                self.slow = self.fast;
            }
            self.in_burst_for = 0;
            // Until warmed up, a plain mean; then an exponential average.
            let span = (self.tested as f64 + 1.0).min(SLOW);
            self.slow += (x - self.slow) / span;
        }
        self.fast += (x - self.fast) / (self.tested as f64 + 1.0).min(FAST);
        self.tested += 1;
        event && !skip
    }

    /// Events skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `every`-th baseline request of `n` is an event; returns the events admitted.
    fn feed(g: &mut BurstGuard, n: u64, every: u64) -> u64 {
        (1..=n).filter(|i| g.admit(i % every == 0, true)).count() as u64
    }

    #[test]
    fn a_failing_candidate_is_no_incident() {
        let mut g = BurstGuard::default();
        feed(&mut g, 10_000, 100);
        // Half the traffic on a candidate failing every request, the baseline as usual.
        let mut admitted = 0;
        for i in 1..=10_000u64 {
            admitted += u64::from(g.admit(true, false));
            admitted += u64::from(g.admit(i % 100 == 0, true));
        }
        assert_eq!(admitted, 10_100);
        assert_eq!(g.skipped(), 0);
    }

    #[test]
    fn usual_traffic_is_never_skipped() {
        let mut g = BurstGuard::default();
        assert_eq!(feed(&mut g, 100_000, 100), 1_000);
        assert_eq!(g.skipped(), 0);
    }

    #[test]
    fn an_incident_is_skipped_and_traffic_after_it_counts_again() {
        let mut g = BurstGuard::default();
        feed(&mut g, 10_000, 100);
        // 30% errors on both arms for 5,000 requests: all but the first few are skipped.
        let admitted = feed(&mut g, 5_000, 3);
        assert!(
            admitted < 30,
            "{admitted} of 1,666 incident events admitted"
        );
        assert!(g.skipped() > 1_600);
        // Back to 1%: within a few hundred requests events count again.
        feed(&mut g, 1_000, 100);
        assert!(!g.skipping());
        assert_eq!(feed(&mut g, 10_000, 100), 100);
    }

    #[test]
    fn a_lasting_rise_becomes_the_usual_level() {
        let mut g = BurstGuard::default();
        feed(&mut g, 10_000, 100);
        feed(&mut g, MAX_BURST + 1_000, 5);
        assert!(!g.skipping());
        assert_eq!(feed(&mut g, 10_000, 5), 2_000);
    }
}

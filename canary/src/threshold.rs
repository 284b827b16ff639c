//! Baseline quantile thresholds for latency events.
//!
//! A latency event is a request slower than the baseline's q-quantile, computed only from
//! baseline requests that finished *before* it. The estimator is exact over a sliding window of
//! the most recent [`DEFAULT_CAPACITY`] baseline values: it follows drifts of the baseline
//! (time of day, load), costs a bounded amount of memory, and is serialisable as plain numbers.
//! The quantile is the nearest-rank one: the `⌈q·n⌉`-th smallest of the `n` values held.
//!
//! Which threshold is used does not affect validity (given the past, a request's arm is
//! independent of it under the null); a poor one only costs power. A warm-up minimum still
//! keeps events from counting until the threshold means something: [`warm_up`].

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Baseline values kept per measured quantity.
pub const DEFAULT_CAPACITY: usize = 2000;

/// Baseline values needed before a q-quantile threshold is used: enough that about ten of them
/// lie above it, and never fewer than 100 (p50: 100, p95: 200, p99: 1000).
pub fn warm_up(q: f64) -> usize {
    ((10.0 / (1.0 - q)).ceil() as usize).max(100)
}

/// Exact quantiles over the most recent baseline values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "WindowState", into = "WindowState")]
pub struct BaselineWindow {
    capacity: usize,
    /// Values in arrival order, oldest first.
    recent: VecDeque<f64>,
    /// The same values, sorted ascending.
    sorted: Vec<f64>,
}

/// What is persisted of a window: the values in arrival order.
#[derive(Serialize, Deserialize)]
struct WindowState {
    capacity: usize,
    recent: Vec<f64>,
}

impl From<WindowState> for BaselineWindow {
    fn from(state: WindowState) -> Self {
        let mut window = BaselineWindow::new(state.capacity);
        for v in state.recent {
            window.push(v);
        }
        window
    }
}

impl From<BaselineWindow> for WindowState {
    fn from(window: BaselineWindow) -> Self {
        WindowState {
            capacity: window.capacity,
            recent: window.recent.into(),
        }
    }
}

impl BaselineWindow {
    /// An empty window keeping at most `capacity` values (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        BaselineWindow {
            capacity,
            recent: VecDeque::with_capacity(capacity),
            sorted: Vec::with_capacity(capacity),
        }
    }

    /// Adds one baseline value, evicting the oldest when full. Non-finite values are ignored.
    pub fn push(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.recent.len() == self.capacity {
            if let Some(old) = self.recent.pop_front() {
                let at = self.sorted.partition_point(|v| *v < old);
                self.sorted.remove(at);
            }
        }
        self.recent.push_back(value);
        let at = self.sorted.partition_point(|v| *v <= value);
        self.sorted.insert(at, value);
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The nearest-rank q-quantile of the values held, once [`warm_up`]`(q)` values are there.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n < warm_up(q).min(self.capacity) {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.sorted[rank - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_quantile(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    #[test]
    fn warm_up_depends_on_the_quantile() {
        assert_eq!(warm_up(0.5), 100);
        assert_eq!(warm_up(0.95), 200);
        assert_eq!(warm_up(0.99), 1000);
    }

    #[test]
    fn no_threshold_before_warm_up() {
        let mut w = BaselineWindow::new(DEFAULT_CAPACITY);
        for i in 0..199 {
            w.push(f64::from(i));
        }
        assert_eq!(w.quantile(0.95), None);
        assert_eq!(w.quantile(0.5), Some(99.0));
        w.push(199.0);
        // 200 values 0..=199: the 190th smallest is 189.
        assert_eq!(w.quantile(0.95), Some(189.0));
    }

    #[test]
    fn old_values_leave_the_window() {
        let mut w = BaselineWindow::new(100);
        for _ in 0..100 {
            w.push(1000.0);
        }
        for _ in 0..100 {
            w.push(10.0);
        }
        assert_eq!(w.len(), 100);
        assert_eq!(w.quantile(0.99), Some(10.0));
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut w = BaselineWindow::new(10);
        w.push(f64::NAN);
        w.push(f64::INFINITY);
        assert!(w.is_empty());
    }

    #[test]
    fn serde_keeps_arrival_order() {
        let mut w = BaselineWindow::new(3);
        for v in [5.0, 1.0, 3.0, 2.0] {
            w.push(v);
        }
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, r#"{"capacity":3,"recent":[1.0,3.0,2.0]}"#);
        let mut back: BaselineWindow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        back.push(9.0);
        w.push(9.0);
        assert_eq!(back, w);
    }

    proptest! {
        #[test]
        fn matches_a_sort_of_the_last_values(
            values in prop::collection::vec(0.0f64..5000.0, 1..600),
            capacity in 100usize..300,
            q in prop::sample::select(vec![0.5, 0.95, 0.99]),
        ) {
            let mut w = BaselineWindow::new(capacity);
            for &v in &values {
                w.push(v);
            }
            let kept = &values[values.len().saturating_sub(capacity)..];
            let expected = (kept.len() >= warm_up(q).min(capacity)).then(|| naive_quantile(kept, q));
            prop_assert_eq!(w.quantile(q), expected);
        }
    }
}

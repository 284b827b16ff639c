//! A retry budget: extra upstream attempts (retries and failovers) may add at most a fraction
//! of the request rate, plus a small floor, so an outage never multiplies upstream traffic.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket: each request deposits `ratio` tokens, each extra attempt withdraws one;
/// `floor_per_sec` tokens trickle in regardless so that quiet periods can still fail over.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    capacity: f64,
    inner: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(ratio: f64, floor_per_sec: f64, capacity: f64) -> Self {
        RetryBudget {
            ratio,
            floor_per_sec,
            capacity,
            inner: Mutex::new((capacity, Instant::now())),
        }
    }

    fn refill(&self, inner: &mut (f64, Instant)) {
        let now = Instant::now();
        let secs = now.duration_since(inner.1).as_secs_f64();
        inner.0 = (inner.0 + secs * self.floor_per_sec).min(self.capacity);
        inner.1 = now;
    }

    /// Counts a request.
    pub fn deposit(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut inner);
        inner.0 = (inner.0 + self.ratio).min(self.capacity);
    }

    /// Takes one extra attempt from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut inner);
        if inner.0 >= 1.0 {
            inner.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens left.
    pub fn available(&self) -> f64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut inner);
        inner.0
    }
}

impl Default for RetryBudget {
    /// 20% of requests, a floor of 2 per second, at most 20 banked.
    fn default() -> Self {
        RetryBudget::new(0.2, 2.0, 20.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_extra_attempts_by_the_request_rate() {
        let b = RetryBudget::new(0.2, 0.0, 3.0);
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                granted += 1;
            }
        }
        // 3 banked + 20% of 100 requests.
        assert!(granted <= 23, "{granted}");
        assert!(granted >= 20, "{granted}");
    }
}

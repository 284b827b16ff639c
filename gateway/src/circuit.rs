//! A circuit breaker per provider region.
//!
//! Closed: requests flow; failures are counted in a sliding window of one-second buckets.
//! The circuit opens when the window holds at least `min_requests` with an error ratio of at
//! least `error_ratio`, or after `consecutive_failures` failures in a row, or when the provider
//! sends a `Retry-After` longer than the gateway waits in place. Open: no request until the
//! cool-down (the longer of `cooldown_secs` and `Retry-After`) has passed. Half-open: one
//! probe at a time; its success closes the circuit, its failure opens it again.

use llmgw_engine::input::CircuitState;
use llmgw_engine::model::CircuitSettings;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a half-open probe may stay unanswered before another is let through.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a request may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as the half-open probe.
    Probe,
    /// The circuit is open.
    Rejected,
}

#[derive(Debug)]
struct Inner {
    /// (second, successes, failures), oldest first.
    window: VecDeque<(u64, u32, u32)>,
    consecutive: u64,
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
    /// Cool-down asked for by the provider for the next opening.
    opened_times: u64,
}

/// The breaker of one provider region.
#[derive(Debug)]
pub struct Circuit {
    settings: CircuitSettings,
    state: AtomicU8,
    inner: Mutex<Inner>,
    epoch: Instant,
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

impl Circuit {
    /// A closed breaker with these settings.
    pub fn new(settings: CircuitSettings) -> Self {
        Circuit {
            settings,
            state: AtomicU8::new(CLOSED),
            inner: Mutex::new(Inner {
                window: VecDeque::new(),
                consecutive: 0,
                open_until: None,
                probe_started: None,
                opened_times: 0,
            }),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state as rules see it (an open circuit whose cool-down passed reads as half-open).
    pub fn state(&self) -> CircuitState {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => CircuitState::Closed,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => {
                let inner = self.lock();
                match inner.open_until {
                    Some(t) if Instant::now() < t => CircuitState::Open,
                    _ => CircuitState::HalfOpen,
                }
            }
        }
    }

    /// The state routing should see. A circuit whose cool-down has passed and whose probe slot
    /// is free reads as closed, so that the next decision puts it first and that request is
    /// the probe (the engine orders half-open deployments last, where a healthy alternative
    /// would keep them from ever being probed). While the probe is out it reads as half-open.
    pub fn routing_state(&self) -> CircuitState {
        if self.state.load(Ordering::Relaxed) == CLOSED {
            return CircuitState::Closed;
        }
        let inner = self.lock();
        let now = Instant::now();
        if self.state.load(Ordering::Relaxed) == OPEN && inner.open_until.is_some_and(|t| now < t) {
            return CircuitState::Open;
        }
        if inner
            .probe_started
            .is_some_and(|t| now.duration_since(t) < PROBE_TIMEOUT)
        {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        }
    }

    /// Times the circuit has opened.
    pub fn opened_times(&self) -> u64 {
        self.lock().opened_times
    }

    /// Asks to send a request.
    pub fn admit(&self) -> Admission {
        if self.state.load(Ordering::Relaxed) == CLOSED {
            return Admission::Allowed;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match self.state.load(Ordering::Relaxed) {
            CLOSED => Admission::Allowed,
            OPEN if inner.open_until.is_some_and(|t| now < t) => Admission::Rejected,
            _ => {
                if inner
                    .probe_started
                    .is_some_and(|t| now.duration_since(t) < PROBE_TIMEOUT)
                {
                    return Admission::Rejected;
                }
                inner.probe_started = Some(now);
                self.state.store(HALF_OPEN, Ordering::Relaxed);
                Admission::Probe
            }
        }
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn push(&self, inner: &mut Inner, ok: bool) {
        let now = self.second();
        let horizon = now.saturating_sub(self.settings.window_secs.max(1));
        while inner.window.front().is_some_and(|&(s, _, _)| s < horizon) {
            inner.window.pop_front();
        }
        match inner.window.back_mut() {
            Some((s, okc, errc)) if *s == now => {
                if ok {
                    *okc += 1
                } else {
                    *errc += 1
                }
            }
            _ => inner.window.push_back((now, u32::from(ok), u32::from(!ok))),
        }
    }

    /// Records a success.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.consecutive = 0;
        self.push(&mut inner, true);
        if self.state.load(Ordering::Relaxed) != CLOSED {
            inner.open_until = None;
            inner.probe_started = None;
            inner.window.clear();
            self.state.store(CLOSED, Ordering::Relaxed);
        }
    }

    /// Records a health failure; `retry_after` (when the provider sent one) sets the
    /// cool-down if it is longer than the configured one. Returns whether the circuit opened.
    pub fn record_failure(&self, retry_after: Option<Duration>) -> bool {
        let mut inner = self.lock();
        inner.consecutive += 1;
        self.push(&mut inner, false);
        let state = self.state.load(Ordering::Relaxed);
        let (total, errors) = inner
            .window
            .iter()
            .fold((0u64, 0u64), |(t, e), &(_, ok, err)| {
                (t + u64::from(ok + err), e + u64::from(err))
            });
        let ratio_trips = total >= self.settings.min_requests.max(1)
            && errors as f64 / total as f64 >= self.settings.error_ratio;
        let consecutive_trips = inner.consecutive >= self.settings.consecutive_failures.max(1);
        if state == CLOSED && !(ratio_trips || consecutive_trips) {
            return false;
        }
        self.open(&mut inner, retry_after);
        true
    }

    /// Opens the circuit for at least `cooldown` (a provider's long `Retry-After`).
    pub fn trip_for(&self, cooldown: Duration) {
        let mut inner = self.lock();
        self.open(&mut inner, Some(cooldown));
    }

    fn open(&self, inner: &mut Inner, retry_after: Option<Duration>) {
        let cooldown =
            Duration::from_secs(self.settings.cooldown_secs).max(retry_after.unwrap_or_default());
        let until = Instant::now() + cooldown;
        inner.open_until = Some(inner.open_until.map_or(until, |t| t.max(until)));
        inner.probe_started = None;
        inner.consecutive = 0;
        if self.state.swap(OPEN, Ordering::Relaxed) != OPEN {
            inner.opened_times += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CircuitSettings {
        CircuitSettings {
            window_secs: 10,
            min_requests: 4,
            error_ratio: 0.5,
            consecutive_failures: 3,
            cooldown_secs: 0,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes() {
        let c = Circuit::new(CircuitSettings {
            cooldown_secs: 60,
            ..settings()
        });
        assert!(!c.record_failure(None));
        assert!(!c.record_failure(None));
        assert!(c.record_failure(None));
        assert_eq!(c.admit(), Admission::Rejected);
        assert_eq!(c.state(), CircuitState::Open);
    }

    #[test]
    fn half_open_lets_one_probe_and_closes_on_success() {
        let c = Circuit::new(settings());
        for _ in 0..3 {
            c.record_failure(None);
        }
        assert_eq!(
            c.routing_state(),
            CircuitState::Closed,
            "the probe slot is free"
        );
        // Zero cool-down: the next admission is the probe, the one after waits for it.
        assert_eq!(c.admit(), Admission::Probe);
        assert_eq!(c.admit(), Admission::Rejected);
        assert_eq!(c.routing_state(), CircuitState::HalfOpen);
        c.record_success();
        assert_eq!(c.admit(), Admission::Allowed);
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[test]
    fn error_ratio_needs_the_minimum_count() {
        let c = Circuit::new(CircuitSettings {
            consecutive_failures: 100,
            ..settings()
        });
        c.record_success();
        assert!(!c.record_failure(None));
        c.record_success();
        assert!(c.record_failure(None), "2 of 4 failed");
    }

    #[test]
    fn retry_after_extends_the_cool_down() {
        let c = Circuit::new(settings());
        c.trip_for(Duration::from_secs(30));
        assert_eq!(c.admit(), Admission::Rejected);
    }
}

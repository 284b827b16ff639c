//! Circuit breakers at two levels: one per deployment (model × provider region) and one per
//! provider region, both with the provider's `circuit` settings.
//!
//! A deployment's breaker counts that deployment's own health failures: a 429 or 503 from one
//! model is that model's problem, and so is a `Retry-After` longer than the in-place wait. A
//! region's breaker opens only on region-wide evidence: connection-level failures (connect
//! refused or timed out, reset, TLS failure) of any of its deployments count for it (a stream
//! that breaks after its first token does not), and it trips when at least [`REGION_SPREAD`]
//! of its deployments have an open breaker at once and they are at least half of the region's
//! deployments that had traffic within the window. Any answer from the region (even an error
//! about one model) counts as a success for the region. Routing sees a deployment as open when
//! its own breaker or its region's is.
//!
//! Each breaker works the same way. Closed: requests flow; failures are counted in a sliding
//! window of one-second buckets. The circuit opens when the window holds at least
//! `min_requests` with an error ratio of at least `error_ratio`, or after
//! `consecutive_failures` failures in a row, or when the provider sends a `Retry-After` longer
//! than the gateway waits in place. Open: no request until the cool-down (the longer of
//! `cooldown_secs` and `Retry-After`) has passed. Half-open: one probe at a time; its success
//! closes the circuit, its failure opens it again.

use crate::upstream::UpstreamError;
use llmgw_engine::input::CircuitState;
use llmgw_engine::model::CircuitSettings;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Times the breaker has opened.
    opened_times: u64,
    /// When the last outcome was recorded.
    last_outcome: Option<Instant>,
}

/// One breaker (of a deployment or of a provider region).
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
                last_outcome: None,
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
        let admission = self.check(&inner, now);
        if admission == Admission::Probe {
            inner.probe_started = Some(now);
            self.state.store(HALF_OPEN, Ordering::Relaxed);
        }
        admission
    }

    /// Whether [`Circuit::admit`] would reject a request now (taking no probe slot).
    pub fn rejects(&self) -> bool {
        self.state.load(Ordering::Relaxed) != CLOSED
            && self.check(&self.lock(), Instant::now()) == Admission::Rejected
    }

    /// Frees the probe slot taken by an admission that was not used.
    pub fn release_probe(&self) {
        self.lock().probe_started = None;
    }

    fn check(&self, inner: &Inner, now: Instant) -> Admission {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => Admission::Allowed,
            OPEN if inner.open_until.is_some_and(|t| now < t) => Admission::Rejected,
            _ if inner
                .probe_started
                .is_some_and(|t| now.duration_since(t) < PROBE_TIMEOUT) =>
            {
                Admission::Rejected
            }
            _ => Admission::Probe,
        }
    }

    /// Whether the breaker is closed.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == CLOSED
    }

    /// Whether the breaker recorded an outcome within its window.
    fn had_traffic(&self) -> bool {
        let window = Duration::from_secs(self.settings.window_secs.max(1));
        self.lock()
            .last_outcome
            .is_some_and(|t| t.elapsed() < window)
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn push(&self, inner: &mut Inner, ok: bool) {
        inner.last_outcome = Some(Instant::now());
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

/// How many of a region's deployments must have an open breaker at once for the region's
/// breaker to trip (with at least half of the deployments that had traffic in the window).
pub const REGION_SPREAD: usize = 2;

/// How one call was admitted at each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The region's admission.
    pub region: Admission,
    /// The deployment's admission.
    pub deployment: Admission,
}

impl Ticket {
    /// A call admitted at both levels without being a probe (a stream already under way).
    pub const ALLOWED: Ticket = Ticket {
        region: Admission::Allowed,
        deployment: Admission::Allowed,
    };
    const REJECTED: Ticket = Ticket {
        region: Admission::Rejected,
        deployment: Admission::Rejected,
    };

    /// Whether the call may not be made.
    pub fn rejected(self) -> bool {
        self.region == Admission::Rejected || self.deployment == Admission::Rejected
    }

    /// Whether the call is a half-open probe at either level.
    pub fn probe(self) -> bool {
        self.region == Admission::Probe || self.deployment == Admission::Probe
    }
}

/// The breakers of a policy revision: one per provider region, one per deployment.
#[derive(Debug)]
pub struct Breakers {
    regions: Vec<Arc<Circuit>>,
    deployments: Vec<Arc<Circuit>>,
    /// The region (provider index) of each deployment.
    region_of: Vec<usize>,
    /// Deployments whose provider sends active health probes: their breakers close only on a
    /// probe's success, never on real traffic.
    probed: Vec<bool>,
}

/// How bad a state is: 0 closed, 1 half-open, 2 open (the value of the state gauges).
pub fn severity(s: CircuitState) -> i64 {
    match s {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

/// The worse of two states.
fn worse(a: CircuitState, b: CircuitState) -> CircuitState {
    if severity(b) > severity(a) {
        b
    } else {
        a
    }
}

impl Breakers {
    /// Breakers of regions by provider index and of deployments by deployment index;
    /// `region_of` gives each deployment's provider index.
    pub fn new(
        regions: Vec<Arc<Circuit>>,
        deployments: Vec<Arc<Circuit>>,
        region_of: Vec<usize>,
    ) -> Self {
        Breakers {
            regions,
            deployments,
            region_of,
            probed: Vec::new(),
        }
    }

    /// These breakers with active health probes for the deployments marked in `probed`.
    pub fn with_probes(mut self, probed: Vec<bool>) -> Self {
        self.probed = probed;
        self
    }

    /// Whether the breaker of deployment `index` is only closed by an active health probe and
    /// is not closed now (real traffic skips it).
    fn awaits_probe(&self, index: usize) -> bool {
        self.probed.get(index).copied().unwrap_or(false)
            && self.deployments.get(index).is_some_and(|d| !d.is_closed())
    }

    /// Whether deployment `index`'s own breaker is not closed.
    pub fn deployment_open(&self, index: usize) -> bool {
        self.deployments.get(index).is_some_and(|d| !d.is_closed())
    }

    /// Records the outcome of an active health probe of deployment `index`: a success closes
    /// its breaker; a failure counts like a failed half-open probe (the breaker stays open).
    pub fn record_probe(&self, index: usize, outcome: Result<(), &UpstreamError>) {
        match outcome {
            Ok(()) => self.record_success(index),
            Err(e) => self.record_failure(
                index,
                e,
                Ticket {
                    region: Admission::Allowed,
                    deployment: Admission::Probe,
                },
            ),
        }
    }

    /// The breaker of region (provider index) `provider`.
    pub fn region(&self, provider: usize) -> Option<&Arc<Circuit>> {
        self.regions.get(provider)
    }

    /// The breaker of deployment `index` (its own level only).
    pub fn deployment(&self, index: usize) -> Option<&Arc<Circuit>> {
        self.deployments.get(index)
    }

    fn pair(&self, index: usize) -> Option<(&Circuit, &Circuit)> {
        let d = self.deployments.get(index)?;
        let r = self.regions.get(*self.region_of.get(index)?)?;
        Some((r, d))
    }

    /// The state of deployment `index` as routing sees it: the worse of its breaker's and its
    /// region's (see [`Circuit::routing_state`]).
    pub fn routing_state(&self, index: usize) -> CircuitState {
        if self.awaits_probe(index) {
            return CircuitState::Open;
        }
        self.pair(index).map_or(CircuitState::Closed, |(r, d)| {
            worse(r.routing_state(), d.routing_state())
        })
    }

    /// The state of deployment `index` as rules and status pages see it: the worse of its
    /// breaker's and its region's.
    pub fn state(&self, index: usize) -> CircuitState {
        self.pair(index)
            .map_or(CircuitState::Closed, |(r, d)| worse(r.state(), d.state()))
    }

    /// Asks to call deployment `index`: both levels must let the call through; a probe slot
    /// taken at one level is given back when the other rejects.
    pub fn admit(&self, index: usize) -> Ticket {
        let Some((r, d)) = self.pair(index) else {
            return Ticket::REJECTED;
        };
        if self.awaits_probe(index) || r.rejects() || d.rejects() {
            return Ticket::REJECTED;
        }
        let region = r.admit();
        if region == Admission::Rejected {
            return Ticket::REJECTED;
        }
        let deployment = d.admit();
        if deployment == Admission::Rejected {
            if region == Admission::Probe {
                r.release_probe();
            }
            return Ticket::REJECTED;
        }
        Ticket { region, deployment }
    }

    /// Records a successful call of deployment `index`: both levels saw a healthy answer.
    pub fn record_success(&self, index: usize) {
        if let Some((r, d)) = self.pair(index) {
            d.record_success();
            r.record_success();
        }
    }

    /// Records a failed call of deployment `index` admitted with `ticket`. A health failure
    /// counts for the deployment; a failure about the request itself only ends a deployment
    /// probe, as a success. A connection-level failure (before any answer) counts for the
    /// region; any other shows the region reachable, a success for it.
    pub fn record_failure(&self, index: usize, e: &UpstreamError, ticket: Ticket) {
        let Some((r, d)) = self.pair(index) else {
            return;
        };
        // A stream that broke after part of the answer came had a working connection: the
        // break is the deployment's.
        if e.class.is_connection_failure() && !e.after_first_byte {
            r.record_failure(None);
        } else {
            r.record_success();
        }
        if e.class.is_health_failure() {
            if d.record_failure(e.retry_after) {
                self.check_spread(index, e.retry_after);
            }
        } else if ticket.deployment == Admission::Probe {
            d.record_success();
        }
    }

    /// Opens the breaker of deployment `index` for at least `cooldown` (a provider's long
    /// `Retry-After`); its region's too when that makes enough of its deployments open.
    pub fn trip_for(&self, index: usize, cooldown: Duration) {
        if let Some(d) = self.deployments.get(index) {
            d.trip_for(cooldown);
            self.check_spread(index, Some(cooldown));
        }
    }

    /// Trips the region of deployment `index` when at least [`REGION_SPREAD`] of its
    /// deployments have an open breaker and they are at least half of those with traffic.
    fn check_spread(&self, index: usize, retry_after: Option<Duration>) {
        let Some(&region) = self.region_of.get(index) else {
            return;
        };
        let (mut open, mut active) = (0usize, 0usize);
        for (d, _) in self
            .deployments
            .iter()
            .zip(&self.region_of)
            .filter(|(_, &p)| p == region)
        {
            if d.state() == CircuitState::Open {
                open += 1;
                active += 1;
            } else if d.had_traffic() {
                active += 1;
            }
        }
        if open >= REGION_SPREAD && open * 2 >= active {
            if let Some(r) = self.regions.get(region) {
                r.trip_for(retry_after.unwrap_or_default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ErrorClass;

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

    fn two_deployments_in_one_region() -> Breakers {
        let s = CircuitSettings {
            cooldown_secs: 60,
            ..settings()
        };
        let c = || Arc::new(Circuit::new(s));
        Breakers::new(vec![c()], vec![c(), c(), c()], vec![0, 0, 0])
    }

    fn fail(b: &Breakers, index: usize, class: ErrorClass, times: usize) {
        for _ in 0..times {
            let ticket = b.admit(index);
            b.record_failure(index, &UpstreamError::new(class, "test"), ticket);
        }
    }

    #[test]
    fn one_models_errors_open_only_its_deployment() {
        let b = two_deployments_in_one_region();
        b.record_success(1);
        fail(&b, 0, ErrorClass::RateLimited, 3);
        assert!(b.admit(0).rejected());
        assert_eq!(b.routing_state(0), CircuitState::Open);
        assert_eq!(b.admit(1), Ticket::ALLOWED);
        assert_eq!(b.routing_state(1), CircuitState::Closed);
        assert_eq!(b.region(0).expect("region").state(), CircuitState::Closed);
    }

    #[test]
    fn connection_failures_open_the_region_for_every_deployment() {
        let b = two_deployments_in_one_region();
        fail(&b, 0, ErrorClass::Connect, 2);
        fail(&b, 1, ErrorClass::Network, 1);
        assert_eq!(b.region(0).expect("region").state(), CircuitState::Open);
        assert!(
            b.admit(2).rejected(),
            "no evidence of its own, but its region is open"
        );
        assert_eq!(b.routing_state(2), CircuitState::Open);
    }

    #[test]
    fn several_open_deployments_open_the_region() {
        let b = two_deployments_in_one_region();
        fail(&b, 0, ErrorClass::Unavailable, 3);
        assert_eq!(b.region(0).expect("region").state(), CircuitState::Closed);
        b.trip_for(1, Duration::from_secs(30));
        assert_eq!(b.region(0).expect("region").state(), CircuitState::Open);
        assert!(b.admit(2).rejected());
    }

    #[test]
    fn a_region_probe_is_not_spent_on_an_open_deployment() {
        let s = settings();
        let region = Arc::new(Circuit::new(s));
        let b = Breakers::new(
            vec![region.clone()],
            vec![Arc::new(Circuit::new(CircuitSettings {
                cooldown_secs: 60,
                ..s
            }))],
            vec![0],
        );
        fail(&b, 0, ErrorClass::Connect, 3);
        // The region's zero cool-down has passed; the deployment's 60 s has not.
        assert!(b.admit(0).rejected());
        assert_eq!(
            region.admit(),
            Admission::Probe,
            "the region's slot is free"
        );
    }

    #[test]
    fn with_probes_only_a_probe_closes_a_deployment_breaker() {
        let c = || Arc::new(Circuit::new(settings()));
        let b = Breakers::new(vec![c()], vec![c()], vec![0]).with_probes(vec![true]);
        fail(&b, 0, ErrorClass::Unavailable, 3);
        // Zero cool-down: without probes this request would be the half-open probe.
        assert!(b.admit(0).rejected());
        assert_eq!(b.routing_state(0), CircuitState::Open);
        b.record_probe(0, Err(&UpstreamError::new(ErrorClass::Unavailable, "test")));
        assert!(b.deployment_open(0), "a failed probe keeps it open");
        b.record_probe(0, Ok(()));
        assert!(!b.deployment_open(0));
        assert_eq!(b.admit(0), Ticket::ALLOWED);
    }
}

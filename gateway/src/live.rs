//! Live statistics per deployment: latency and time-to-first-token quantiles, error rate and
//! requests in flight over a sliding window, recorded with atomics only.
//!
//! Each deployment keeps a ring of time slots; a slot holds a log-scaled latency histogram
//! and outcome counters. Recording touches one slot with relaxed atomic adds. Quantiles are
//! read from the slots still inside the window; a background refresh turns them into a
//! snapshot so that decisions read one pointer instead of summing histograms.
//!
//! Active health probes ([`crate::health`]) are kept apart from client traffic: a one-token
//! probe is much faster than a real answer, and probes run precisely when traffic is absent,
//! so mixed in they would make a slow deployment look fast to latency routing. Their samples
//! stand in only while the window holds no traffic at all ([`DeploymentLive::compute`]).

use crate::circuit::Breakers;
use arc_swap::ArcSwap;
use llmgw_engine::input::{DeploymentStats, LiveView};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Slots in the window.
const SLOTS: usize = 6;
/// Length of a slot.
const SLOT_MS: u64 = 5_000;
/// Histogram buckets; bucket `i` holds values up to `BASE_US * GROWTH^i` microseconds.
const BUCKETS: usize = 96;
const BASE_US: f64 = 100.0;
const GROWTH: f64 = 1.2;

/// Milliseconds since the first call (a monotonic clock for slot arithmetic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros() as f64;
    if us <= BASE_US {
        return 0;
    }
    (((us / BASE_US).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    BASE_US * GROWTH.powi(i as i32) / 1000.0
}

/// Latency and time-to-first-token histograms and outcome counters of one kind of call.
struct Samples {
    latency: [AtomicU32; BUCKETS],
    ttft: [AtomicU32; BUCKETS],
    ok: AtomicU32,
    errors: AtomicU32,
}

impl Samples {
    fn new() -> Self {
        Samples {
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            ttft: std::array::from_fn(|_| AtomicU32::new(0)),
            ok: AtomicU32::new(0),
            errors: AtomicU32::new(0),
        }
    }

    fn clear(&self) {
        self.latency
            .iter()
            .chain(self.ttft.iter())
            .for_each(|b| b.store(0, Relaxed));
        self.ok.store(0, Relaxed);
        self.errors.store(0, Relaxed);
    }

    fn record(&self, latency: Duration, ttft: Option<Duration>, ok: bool) {
        if ok {
            self.ok.fetch_add(1, Relaxed);
            self.latency[bucket_of(latency)].fetch_add(1, Relaxed);
            self.ttft[bucket_of(ttft.unwrap_or(latency))].fetch_add(1, Relaxed);
        } else {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Sums of [`Samples`] over the slots of the window.
struct Totals {
    latency: [u64; BUCKETS],
    ttft: [u64; BUCKETS],
    ok: u64,
    errors: u64,
}

impl Totals {
    fn new() -> Self {
        Totals {
            latency: [0; BUCKETS],
            ttft: [0; BUCKETS],
            ok: 0,
            errors: 0,
        }
    }

    fn add(&mut self, s: &Samples) {
        self.ok += u64::from(s.ok.load(Relaxed));
        self.errors += u64::from(s.errors.load(Relaxed));
        for i in 0..BUCKETS {
            self.latency[i] += u64::from(s.latency[i].load(Relaxed));
            self.ttft[i] += u64::from(s.ttft[i].load(Relaxed));
        }
    }

    fn calls(&self) -> u64 {
        self.ok + self.errors
    }
}

struct Slot {
    epoch: AtomicU64,
    /// Client traffic.
    traffic: Samples,
    /// Active health probes.
    probes: Samples,
}

impl Slot {
    fn new() -> Self {
        Slot {
            epoch: AtomicU64::new(u64::MAX),
            traffic: Samples::new(),
            probes: Samples::new(),
        }
    }

    fn clear(&self) {
        self.traffic.clear();
        self.probes.clear();
    }
}

/// The recorder of one deployment.
pub struct DeploymentLive {
    slots: [Slot; SLOTS],
    in_flight: AtomicU64,
}

impl Default for DeploymentLive {
    fn default() -> Self {
        DeploymentLive {
            slots: std::array::from_fn(|_| Slot::new()),
            in_flight: AtomicU64::new(0),
        }
    }
}

/// Decrements a deployment's in-flight count when dropped.
pub struct InFlight(Arc<DeploymentLive>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl DeploymentLive {
    fn slot(&self) -> &Slot {
        let epoch = now_ms() / SLOT_MS;
        let slot = &self.slots[(epoch % SLOTS as u64) as usize];
        let seen = slot.epoch.load(Relaxed);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            slot.clear();
        }
        slot
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Records a finished attempt: its latency, time to first token (streams) and outcome.
    pub fn record(&self, latency: Duration, ttft: Option<Duration>, ok: bool) {
        self.slot().traffic.record(latency, ttft, ok);
    }

    /// Records an active health probe: its latency (also its time to first token: a probe's
    /// answer is one token) and outcome, apart from client traffic.
    pub fn record_probe(&self, latency: Duration, ok: bool) {
        self.slot().probes.record(latency, None, ok);
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Stats over the window (without circuit state, which the caller adds): those of client
    /// traffic, or, when the window holds none, those of the health probes; `None` when it
    /// holds neither.
    pub fn compute(&self) -> Option<DeploymentStats> {
        let current = now_ms() / SLOT_MS;
        let mut traffic = Totals::new();
        let mut probes = Totals::new();
        for slot in &self.slots {
            let epoch = slot.epoch.load(Relaxed);
            if epoch == u64::MAX || epoch + (SLOTS as u64) <= current {
                continue;
            }
            traffic.add(&slot.traffic);
            probes.add(&slot.probes);
        }
        let t = if traffic.calls() > 0 { traffic } else { probes };
        if t.calls() == 0 {
            return None;
        }
        Some(DeploymentStats {
            p50_ms: quantile(&t.latency, 0.50),
            p95_ms: quantile(&t.latency, 0.95),
            p99_ms: quantile(&t.latency, 0.99),
            ttft_ms: quantile(&t.ttft, 0.50),
            error_rate: t.errors as f64 / t.calls() as f64,
            in_flight: self.in_flight(),
            ..DeploymentStats::default()
        })
    }
}

fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_ms(i));
        }
    }
    Some(bucket_upper_ms(BUCKETS - 1))
}

/// Live stats of every deployment of a policy revision, with a periodically refreshed snapshot.
pub struct LiveStats {
    deployments: Vec<Arc<DeploymentLive>>,
    /// Per deployment: what is left of its declared provider quota.
    quotas: Vec<Option<Arc<crate::quota::QuotaCell>>>,
    /// The breakers (deployment and region level).
    breakers: Arc<Breakers>,
    snapshot: ArcSwap<Vec<Option<DeploymentStats>>>,
}

impl LiveStats {
    /// Stats for deployments whose recorders are given in order, with their breakers and
    /// provider quotas.
    pub fn new(
        deployments: Vec<Arc<DeploymentLive>>,
        breakers: Arc<Breakers>,
        quotas: Vec<Option<Arc<crate::quota::QuotaCell>>>,
    ) -> Self {
        let n = deployments.len();
        LiveStats {
            deployments,
            quotas,
            breakers,
            snapshot: ArcSwap::from_pointee(vec![None; n]),
        }
    }

    /// The provider quota of deployment `index`, when it declares one.
    pub fn quota(&self, index: usize) -> Option<&Arc<crate::quota::QuotaCell>> {
        self.quotas.get(index).and_then(Option::as_ref)
    }

    /// The recorder of deployment `index`.
    pub fn deployment(&self, index: usize) -> Option<&Arc<DeploymentLive>> {
        self.deployments.get(index)
    }

    /// Recomputes the snapshot.
    pub fn refresh(&self) {
        let snap: Vec<Option<DeploymentStats>> =
            self.deployments.iter().map(|d| d.compute()).collect();
        self.snapshot.store(Arc::new(snap));
    }

    /// The stats of deployment `index` as of the last refresh, with live in-flight, circuit
    /// and provider quota.
    pub fn get(&self, index: usize) -> Option<DeploymentStats> {
        self.with_quota(index, self.get_without_quota(index))
    }

    /// `stats` with what is left of deployment `index`'s provider quota, when it declares one.
    fn with_quota(&self, index: usize, stats: Option<DeploymentStats>) -> Option<DeploymentStats> {
        let Some(quota) = self.quota(index) else {
            return stats;
        };
        let (requests, tokens) = quota.left();
        Some(DeploymentStats {
            quota_requests_left: requests,
            quota_tokens_left: tokens,
            ..stats.unwrap_or_default()
        })
    }

    fn get_without_quota(&self, index: usize) -> Option<DeploymentStats> {
        let circuit = self.breakers.routing_state(index);
        let in_flight = self.deployments.get(index).map_or(0, |d| d.in_flight());
        let base = self.snapshot.load().get(index).copied().flatten();
        match base {
            Some(s) => Some(DeploymentStats {
                circuit,
                in_flight,
                ..s
            }),
            None if in_flight > 0 || circuit != Default::default() => Some(DeploymentStats {
                circuit,
                in_flight,
                ..DeploymentStats::default()
            }),
            None => None,
        }
    }
}

impl LiveStats {
    /// The stats of deployment `index` computed now, with its provider quota left (for status
    /// pages, not the hot path).
    pub fn current(&self, index: usize) -> Option<DeploymentStats> {
        let circuit = self.breakers.state(index);
        let d = self.deployments.get(index)?;
        let in_flight = d.in_flight();
        let stats = match d.compute() {
            Some(s) => DeploymentStats { circuit, ..s },
            None => DeploymentStats {
                circuit,
                in_flight,
                ..DeploymentStats::default()
            },
        };
        self.with_quota(index, Some(stats))
    }
}

impl LiveView for LiveStats {
    fn stats(&self, index: usize, _name: &str) -> Option<DeploymentStats> {
        self.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_recorded_latencies() {
        let d = Arc::new(DeploymentLive::default());
        assert!(d.compute().is_none());
        for ms in 1..=100u64 {
            d.record(Duration::from_millis(ms), None, true);
        }
        d.record(Duration::from_millis(5), None, false);
        let s = d.compute().expect("stats");
        let p50 = s.p50_ms.expect("p50");
        let p99 = s.p99_ms.expect("p99");
        assert!((45.0..=60.0).contains(&p50), "p50 {p50}");
        assert!((95.0..=120.0).contains(&p99), "p99 {p99}");
        assert!((s.error_rate - 1.0 / 101.0).abs() < 1e-9);
        let g = d.start();
        assert_eq!(d.in_flight(), 1);
        drop(g);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn probes_stand_in_only_while_there_is_no_traffic() {
        let d = Arc::new(DeploymentLive::default());
        // Only probes (fast one-token answers, one failing): their figures stand in.
        for _ in 0..3 {
            d.record_probe(Duration::from_millis(20), true);
        }
        d.record_probe(Duration::ZERO, false);
        let s = d.compute().expect("stats from the probes");
        let p50 = s.p50_ms.expect("p50");
        assert!((15.0..=25.0).contains(&p50), "probe p50 {p50}");
        assert_eq!(s.ttft_ms, s.p50_ms, "a probe's answer is its first token");
        assert!((s.error_rate - 0.25).abs() < 1e-9);
        // Client traffic, slow: the probes neither pull its latency down nor its errors up.
        for _ in 0..2 {
            d.record(
                Duration::from_millis(2000),
                Some(Duration::from_millis(900)),
                true,
            );
        }
        for _ in 0..10 {
            d.record_probe(Duration::from_millis(20), true);
        }
        d.record_probe(Duration::ZERO, false);
        let s = d.compute().expect("stats");
        for q in [s.p50_ms, s.p95_ms, s.p99_ms] {
            let q = q.expect("quantile");
            assert!((1900.0..=2400.0).contains(&q), "traffic quantile {q}");
        }
        let ttft = s.ttft_ms.expect("ttft");
        assert!((850.0..=1100.0).contains(&ttft), "traffic ttft {ttft}");
        assert_eq!(s.error_rate, 0.0);
    }
}

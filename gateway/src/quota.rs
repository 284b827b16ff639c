//! Provider quotas: how much of each deployment's declared provider RPM and TPM is left.
//!
//! A deployment that declares a `quota` gets two GCRA cells ([`crate::store::rates`]) sized to
//! a minute of it: each upstream call takes one request and its estimated tokens when it is
//! sent, and the tokens are corrected from `usage` when it ends (given back when it failed).
//! The provider's own `x-ratelimit-remaining-requests` and `-tokens` answer headers, when it
//! sends them, count too: they see every client of the account (other replicas included), so
//! when they say less is left than the cell does, the cell is moved to agree. Routing reads
//! what is left ([`QuotaCell::left`], the live stats' `quota_*_left`) and tries a deployment
//! that cannot take a request after the others.

use crate::store::rates::adjust;
use http::HeaderMap;
use llmgw_engine::model::ProviderQuota;
use std::sync::Mutex;
use std::time::Instant;

/// Microseconds in a minute, the period of provider quotas.
const MINUTE_US: f64 = 60_000_000.0;

/// What is left of one deployment's provider quota.
#[derive(Debug)]
pub struct QuotaCell {
    /// Requests and tokens per minute, as declared.
    per_minute: [Option<f64>; 2],
    epoch: Instant,
    /// TATs of the request and the token cell, microseconds since `epoch`.
    tats: Mutex<[i64; 2]>,
}

const REQUESTS: usize = 0;
const TOKENS: usize = 1;

impl QuotaCell {
    /// A full cell for a declared quota.
    pub fn new(quota: ProviderQuota) -> QuotaCell {
        QuotaCell {
            per_minute: [quota.requests_per_minute, quota.tokens_per_minute],
            epoch: Instant::now(),
            tats: Mutex::new([0, 0]),
        }
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    fn with(&self, f: impl FnOnce(&mut [i64; 2], i64)) {
        let now = self.now_us();
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tats, now);
    }

    /// Microseconds one unit takes of cell `i`.
    fn interval(&self, i: usize) -> Option<f64> {
        self.per_minute[i].map(|q| MINUTE_US / q)
    }

    /// Counts a call being sent: one request and its estimated tokens.
    pub fn take(&self, tokens: u64) {
        self.with(|tats, now| {
            for (i, units) in [(REQUESTS, 1.0), (TOKENS, tokens as f64)] {
                if let Some(t) = self.interval(i) {
                    tats[i] = adjust(tats[i], (units * t).round() as i64, now);
                }
            }
        });
    }

    /// Corrects the tokens of a call: `delta` more (or, negative, fewer) than were taken.
    pub fn correct(&self, delta: i64) {
        let Some(t) = self.interval(TOKENS) else {
            return;
        };
        self.with(|tats, now| {
            tats[TOKENS] = adjust(tats[TOKENS], (delta as f64 * t).round() as i64, now)
        });
    }

    /// Reads the provider's `x-ratelimit-remaining-requests` and `-tokens`: when they say less
    /// is left than the cell does, the cell agrees.
    pub fn observe(&self, headers: &HeaderMap) {
        let remaining = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let seen = [
            remaining("x-ratelimit-remaining-requests"),
            remaining("x-ratelimit-remaining-tokens"),
        ];
        self.with(|tats, now| {
            for i in [REQUESTS, TOKENS] {
                let (Some(left), Some(t), Some(quota)) =
                    (seen[i], self.interval(i), self.per_minute[i])
                else {
                    continue;
                };
                let used = ((quota - left.clamp(0.0, quota)) * t).round() as i64;
                tats[i] = tats[i].max(now + used);
            }
        });
    }

    /// Requests and tokens left this minute (`None` for what the quota does not limit).
    pub fn left(&self) -> (Option<f64>, Option<f64>) {
        let now = self.now_us();
        let tats = *self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let left = |i: usize| {
            let t = self.interval(i)?;
            let quota = self.per_minute[i]?;
            let ahead = (tats[i] - now).max(0) as f64;
            Some((quota - ahead / t).max(0.0))
        };
        (left(REQUESTS), left(TOKENS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn calls_take_a_request_and_their_tokens_and_usage_corrects_them() {
        let q = QuotaCell::new(ProviderQuota {
            requests_per_minute: Some(100.0),
            tokens_per_minute: Some(10_000.0),
        });
        q.take(1_000);
        let (r, t) = q.left();
        assert!((r.unwrap() - 99.0).abs() < 0.01, "{r:?}");
        assert!((t.unwrap() - 9_000.0).abs() < 1.0, "{t:?}");
        q.correct(-600);
        assert!((q.left().1.unwrap() - 9_600.0).abs() < 1.0);
    }

    #[test]
    fn the_provider_saying_less_is_left_wins() {
        let q = QuotaCell::new(ProviderQuota {
            requests_per_minute: None,
            tokens_per_minute: Some(10_000.0),
        });
        q.take(100);
        q.observe(&headers(&[
            ("x-ratelimit-remaining-tokens", "2000"),
            ("x-ratelimit-remaining-requests", "5"),
        ]));
        let (r, t) = q.left();
        assert_eq!(r, None, "no request quota declared");
        assert!((t.unwrap() - 2_000.0).abs() < 1.0, "{t:?}");
        q.observe(&headers(&[("x-ratelimit-remaining-tokens", "9000")]));
        assert!(
            q.left().1.unwrap() < 2_001.0,
            "more left upstream does not undo our own count"
        );
    }
}

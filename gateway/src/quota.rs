//! Provider quotas: how much of each deployment's declared provider RPM and TPM is left.
//!
//! A deployment that declares a `quota` gets two GCRA cells ([`crate::store::rates`]) sized to
//! a minute of it: each upstream call takes one request and its estimated tokens before it is
//! sent ([`QuotaCell::take`]), and the tokens are corrected from `usage` when it ends (given
//! back when it failed). A call the cells cannot take is skipped when another attempt is left.
//!
//! On SQLite state (one replica) the cells are this process's. On Redis they are the fleet's:
//! the same cells as the rate limits (`<prefix>rate:~quota:<deployment>:requests|tokens`), so
//! every replica takes from one quota; each take brings the replica's own view up to the
//! fleet's count, and routing reads that view ([`QuotaCell::left`], the live stats'
//! `quota_*_left`) without a store trip. While Redis cannot be reached, a replica counts its
//! own calls in its view alone, as on SQLite: quotas only steer routing, so an outage never
//! refuses a request for them.
//!
//! The provider's own answer headers count too ([`Quota::observe`]): they see every client of
//! the account, other replicas included, so when they say less is left than the cell does, the
//! cell is moved to agree. OpenAI and compatible APIs send `x-ratelimit-remaining-requests` and
//! `-tokens`; Anthropic sends `anthropic-ratelimit-requests-remaining`, `-tokens-remaining`
//! (the tightest of its token limits), `-input-tokens-` and `-output-tokens-remaining` with
//! their `-limit` (the share used of each counts), and a `-reset` time per limit, when it is
//! full again (RFC 3339): as far ahead as the cell's own.

use crate::store::rates::{adjust, admit, Cell};
use crate::store::Store;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use llmgw_engine::model::ProviderQuota;
use std::sync::Mutex;
use std::time::Instant;

/// Microseconds in a minute, the period of provider quotas.
const MINUTE_US: f64 = 60_000_000.0;

const REQUESTS: usize = 0;
const TOKENS: usize = 1;

/// Headers that say how many requests (`[REQUESTS]`) or tokens (`[TOKENS]`) are left of the
/// provider's limit.
const REMAINING: [&[&str]; 2] = [
    &[
        "x-ratelimit-remaining-requests",
        "anthropic-ratelimit-requests-remaining",
    ],
    &[
        "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-tokens-remaining",
    ],
];

/// Anthropic's separate input and output token limits, `(remaining, limit)`: the share of one
/// that is used counts as used of the token cell.
const TOKEN_SHARES: [(&str, &str); 2] = [
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-limit",
    ),
    (
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-limit",
    ),
];

/// Headers with the time a limit is full again (RFC 3339), per cell.
const RESETS: [&[&str]; 2] = [
    &["anthropic-ratelimit-requests-reset"],
    &[
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ],
];

/// What is left of one deployment's provider quota.
#[derive(Debug)]
pub struct QuotaCell {
    /// Requests and tokens per minute, as declared.
    per_minute: [Option<f64>; 2],
    /// Names of the request and the token cell in the shared store.
    names: [String; 2],
    epoch: Instant,
    /// TATs of the request and the token cell, microseconds since `epoch`: this replica's view
    /// (on Redis, the fleet's as of this replica's last take).
    tats: Mutex<[i64; 2]>,
}

impl QuotaCell {
    /// A full cell for the quota a deployment declares.
    pub fn new(deployment: &str, quota: ProviderQuota) -> QuotaCell {
        QuotaCell {
            per_minute: [quota.requests_per_minute, quota.tokens_per_minute],
            names: [
                format!("~quota:{deployment}:requests"),
                format!("~quota:{deployment}:tokens"),
            ],
            epoch: Instant::now(),
            tats: Mutex::new([0, 0]),
        }
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    fn with<T>(&self, f: impl FnOnce(&mut [i64; 2], i64) -> T) -> T {
        let now = self.now_us();
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut tats, now)
    }

    /// Microseconds one unit takes of cell `i`.
    fn interval(&self, i: usize) -> Option<f64> {
        self.per_minute[i].map(|q| MINUTE_US / q)
    }

    /// The declared cells a call of `tokens` takes from, with their index.
    fn cells(&self, tokens: u64) -> Vec<(usize, Cell)> {
        [(REQUESTS, 1.0), (TOKENS, tokens as f64)]
            .into_iter()
            .filter_map(|(i, units)| {
                let t = self.interval(i)?;
                Some((
                    i,
                    Cell {
                        key: self.names[i].clone(),
                        increment_us: (units * t).round() as i64,
                        capacity_us: MINUTE_US as i64,
                    },
                ))
            })
            .collect()
    }

    /// Takes a call about to be sent: one request and its estimated tokens. Returns `false`,
    /// taking nothing, when the quota cannot take them, unless `anyway` (the last attempt
    /// left: the provider may still answer). On Redis the fleet's cells are asked, and this
    /// replica's view follows them; when Redis fails, the view alone counts.
    pub async fn take(&self, store: &Store, tokens: u64, anyway: bool) -> bool {
        let cells = self.cells(tokens);
        if store.rates_in_process() {
            return self.take_here(&cells, anyway);
        }
        let only: Vec<Cell> = cells.iter().map(|(_, c)| c.clone()).collect();
        let checked = match store.rate_check(&only).await {
            Ok(checked) => checked,
            Err(e) => {
                tracing::warn!(target: "llmgw::quota", error = %e, "cannot reach the shared provider quotas; counting this replica's calls alone");
                return self.take_here(&cells, anyway);
            }
        };
        let admitted = checked.refused.is_none();
        let forced = !admitted && anyway;
        if forced {
            let taken: Vec<(String, i64)> =
                only.into_iter().map(|c| (c.key, c.increment_us)).collect();
            store.rate_correct(&taken);
        }
        self.with(|tats, now| {
            for ((i, c), ahead) in cells.iter().zip(&checked.ahead_us) {
                tats[*i] = now + ahead + if forced { c.increment_us } else { 0 };
            }
        });
        admitted || anyway
    }

    /// [`QuotaCell::take`] on this replica's view alone.
    fn take_here(&self, cells: &[(usize, Cell)], anyway: bool) -> bool {
        let only: Vec<Cell> = cells.iter().map(|(_, c)| c.clone()).collect();
        self.with(|tats, now| {
            let mut mine: Vec<i64> = cells.iter().map(|(i, _)| tats[*i]).collect();
            let admitted = admit(&mut mine, &only, now).is_none();
            if admitted || anyway {
                for ((i, c), tat) in cells.iter().zip(mine) {
                    tats[*i] = if admitted {
                        tat
                    } else {
                        adjust(tat, c.increment_us, now)
                    };
                }
            }
            admitted || anyway
        })
    }

    /// Gives back what [`QuotaCell::take`] took for a call that was not made.
    pub fn give_back(&self, store: &Store, tokens: u64) {
        let cells = self.cells(tokens);
        self.with(|tats, now| {
            for (i, c) in &cells {
                tats[*i] = adjust(tats[*i], -c.increment_us, now);
            }
        });
        if !store.rates_in_process() {
            let deltas: Vec<(String, i64)> = cells
                .into_iter()
                .map(|(_, c)| (c.key, -c.increment_us))
                .collect();
            store.rate_correct(&deltas);
        }
    }

    /// Corrects the tokens of a call: `delta` more (or, negative, fewer) than were taken.
    pub fn correct(&self, store: &Store, delta: i64) {
        let Some(t) = self.interval(TOKENS) else {
            return;
        };
        let us = (delta as f64 * t).round() as i64;
        if us == 0 {
            return;
        }
        self.with(|tats, now| tats[TOKENS] = adjust(tats[TOKENS], us, now));
        if !store.rates_in_process() {
            store.rate_correct(&[(self.names[TOKENS].clone(), us)]);
        }
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

    /// How far ahead of now the provider's headers put each cell's TAT, at least, in
    /// microseconds (`None`: they say nothing of it). `wall` is the time of the answer, for the
    /// reset times.
    fn provider_ahead(&self, headers: &HeaderMap, wall: DateTime<Utc>) -> [Option<i64>; 2] {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
        };
        let mut out = [None, None];
        for (i, slot) in out.iter_mut().enumerate() {
            let (Some(t), Some(quota)) = (self.interval(i), self.per_minute[i]) else {
                continue;
            };
            // Shares of a minute used, by each header that says something.
            let mut used: Vec<f64> = REMAINING[i]
                .iter()
                .filter_map(|name| number(name))
                .map(|left| (quota - left.clamp(0.0, quota)) * t / MINUTE_US)
                .collect();
            if i == TOKENS {
                used.extend(TOKEN_SHARES.iter().filter_map(|(left, limit)| {
                    let (left, limit) = (number(left)?, number(limit)?);
                    (limit > 0.0).then(|| 1.0 - (left / limit).clamp(0.0, 1.0))
                }));
            }
            used.extend(RESETS[i].iter().filter_map(|name| {
                let at = headers.get(*name)?.to_str().ok()?;
                let at = DateTime::parse_from_rfc3339(at.trim()).ok()?;
                let ahead = at.with_timezone(&Utc) - wall;
                Some((ahead.num_microseconds()? as f64 / MINUTE_US).clamp(0.0, 1.0))
            }));
            *slot = used
                .into_iter()
                .reduce(f64::max)
                .map(|share| (share * MINUTE_US).round() as i64);
        }
        out
    }
}

/// A deployment's provider quota as an adapter sees it: the cell and the store it is shared in.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    /// The deployment's cells.
    pub cell: &'a QuotaCell,
    /// The state store (on Redis, the cells are the fleet's).
    pub store: &'a Store,
}

impl Quota<'_> {
    /// Reads the provider's rate limit headers: when they say less is left than the cell does,
    /// the cell agrees (on Redis the fleet's cell is moved on by the difference).
    pub fn observe(&self, headers: &HeaderMap) {
        let q = self.cell;
        let seen = q.provider_ahead(headers, Utc::now());
        if seen == [None, None] {
            return;
        }
        let raised = q.with(|tats, now| {
            let mut raised = Vec::new();
            for i in [REQUESTS, TOKENS] {
                let Some(ahead) = seen[i] else { continue };
                let by = now + ahead - tats[i].max(now);
                if by > 0 {
                    tats[i] = now + ahead;
                    raised.push((q.names[i].clone(), by));
                }
            }
            raised
        });
        if !raised.is_empty() && !self.store.rates_in_process() {
            // The other replicas' next takes must see it.
            self.store.rate_correct_now(&raised);
        }
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

    fn ahead_s(ahead: Option<i64>) -> f64 {
        ahead.expect("the headers say something") as f64 / 1e6
    }

    #[test]
    fn a_call_takes_a_request_and_its_tokens_only_when_they_fit() {
        let q = QuotaCell::new(
            "d",
            ProviderQuota {
                requests_per_minute: Some(100.0),
                tokens_per_minute: Some(10_000.0),
            },
        );
        assert!(q.take_here(&q.cells(1_000), false));
        let (r, t) = q.left();
        assert!((r.unwrap() - 99.0).abs() < 0.01, "{r:?}");
        assert!((t.unwrap() - 9_000.0).abs() < 1.0, "{t:?}");
        assert!(!q.take_here(&q.cells(9_500), false), "9,000 left");
        assert!((q.left().1.unwrap() - 9_000.0).abs() < 1.0, "nothing taken");
        assert!(
            q.take_here(&q.cells(9_500), true),
            "the last attempt goes anyway"
        );
        assert!(q.left().1.unwrap() < 1.0);
    }

    #[test]
    fn the_provider_saying_less_is_left_wins() {
        let q = QuotaCell::new(
            "d",
            ProviderQuota {
                requests_per_minute: None,
                tokens_per_minute: Some(10_000.0),
            },
        );
        let now = Utc::now();
        let seen = q.provider_ahead(
            &headers(&[
                ("x-ratelimit-remaining-tokens", "2000"),
                ("x-ratelimit-remaining-requests", "5"),
            ]),
            now,
        );
        assert_eq!(seen[REQUESTS], None, "no request quota declared");
        assert!(
            (ahead_s(seen[TOKENS]) - 48.0).abs() < 0.01,
            "8,000 of 10,000 used"
        );
    }

    #[test]
    fn anthropics_headers_count_the_tightest_of_its_limits() {
        let q = QuotaCell::new(
            "d",
            ProviderQuota {
                requests_per_minute: Some(50.0),
                tokens_per_minute: Some(100_000.0),
            },
        );
        let now = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let seen = q.provider_ahead(
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "40"),
                ("anthropic-ratelimit-tokens-remaining", "90000"),
                ("anthropic-ratelimit-input-tokens-limit", "80000"),
                ("anthropic-ratelimit-input-tokens-remaining", "60000"),
                ("anthropic-ratelimit-output-tokens-limit", "20000"),
                ("anthropic-ratelimit-output-tokens-remaining", "19000"),
                ("anthropic-ratelimit-tokens-reset", "2026-12-03T10:00:06Z"),
            ]),
            now,
        );
        assert!(
            (ahead_s(seen[REQUESTS]) - 12.0).abs() < 0.01,
            "10 of 50 used"
        );
        assert!(
            (ahead_s(seen[TOKENS]) - 15.0).abs() < 0.01,
            "a quarter of the input limit used is the tightest"
        );
        let later = q.provider_ahead(
            &headers(&[
                ("anthropic-ratelimit-tokens-remaining", "99000"),
                ("anthropic-ratelimit-tokens-reset", "2026-12-03T10:00:30Z"),
            ]),
            now,
        );
        assert!(
            (ahead_s(later[TOKENS]) - 30.0).abs() < 0.01,
            "full again in 30 s: half a minute used"
        );
        let past = q.provider_ahead(
            &headers(&[("anthropic-ratelimit-requests-reset", "2026-12-03T09:59:00Z")]),
            now,
        );
        assert_eq!(past[REQUESTS], Some(0));
        assert_eq!(
            q.provider_ahead(
                &headers(&[("anthropic-ratelimit-requests-reset", "soon")]),
                now
            ),
            [None, None]
        );
    }
}

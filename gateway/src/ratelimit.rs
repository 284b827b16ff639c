//! Rate limits on the state store: the GCRA check of a decision's rate charges before the
//! upstream call, the token correction from `usage` after it, and OpenAI's `x-ratelimit-*`
//! headers.
//!
//! Each charge of the decision ([`RateCharge`]: a rate limit's bucket for requests or tokens)
//! is one GCRA cell ([`crate::store::rates`]) named `<limit>:<measure>:<bucket>`. All the cells
//! of a request are checked in one store call, all or none: one Lua script in Redis, shared by
//! every replica; in process on SQLite state. Token charges reserve the request's estimate
//! (input, and the worst-case output over its attempt list); the settlement moves each token
//! cell by what `usage` says was used beyond or below it ([`Charged::settle`]). A replica that
//! dies between the two leaves the estimate counted, which the cell's own replenishment
//! absorbs: nothing is stuck.
//!
//! While the state store is unavailable, a request whose charges all say
//! `on_store_unavailable: allow` is served without counting; any `deny` gets the store's 503,
//! as budgets do.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::rates::{Cell, Checked};
use crate::store::Store;
use crate::upstream::Usage;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use llmgw_engine::decision::{Measure, RateCharge};
use llmgw_engine::model::{OnStoreUnavailable, TokenCount};
use llmgw_engine::Decision;
use std::time::Duration;

/// Microseconds one unit of a charge moves its cell: the emission interval.
fn interval_us(c: &RateCharge) -> f64 {
    c.period_ms as f64 * 1000.0 / c.limit
}

/// The name of a charge's cell, `<limit>:<measure>:<bucket>`, built in one allocation (it is
/// made per request and rate).
fn cell_key(c: &RateCharge) -> String {
    let measure = match c.measure {
        Measure::Requests => "requests",
        Measure::Tokens(TokenCount::Input) => "tokens-input",
        Measure::Tokens(TokenCount::Output) => "tokens-output",
        Measure::Tokens(TokenCount::Total) => "tokens",
    };
    let mut key = String::with_capacity(c.rule.len() + measure.len() + c.bucket.len() + 2);
    key.push_str(&c.rule);
    key.push(':');
    key.push_str(measure);
    key.push(':');
    key.push_str(&c.bucket);
    key
}

/// The GCRA cell of a charge.
fn cell(c: &RateCharge) -> Cell {
    let t = interval_us(c);
    Cell {
        key: cell_key(c),
        increment_us: (c.amount as f64 * t).round() as i64,
        capacity_us: (c.burst * t).ceil() as i64,
    }
}

/// Where one limit stands for a client, as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Standing {
    limit: u64,
    remaining: u64,
    reset: Duration,
}

/// The `x-ratelimit-*` headers of a response: the tightest request limit and the tightest
/// token limit that apply (the one with the least left).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHeaders {
    requests: Option<Standing>,
    tokens: Option<Standing>,
}

impl RateHeaders {
    /// Counts a limit's standing; the one with the least remaining is kept per measure.
    fn note(&mut self, c: &RateCharge, cell: &Cell, ahead_us: i64, refused: bool) {
        let t = interval_us(c);
        // Whole units left; the tolerance absorbs the rounding of the cell to microseconds
        // (7 a minute: 6 left after one, not 5.99999995).
        let remaining = if refused {
            0
        } else {
            ((cell.capacity_us - ahead_us).max(0) as f64 / t + 1e-6).floor() as u64
        };
        let s = Standing {
            limit: c.limit.round() as u64,
            remaining,
            reset: Duration::from_micros(ahead_us.max(0) as u64),
        };
        let slot = match c.measure {
            Measure::Requests => &mut self.requests,
            Measure::Tokens(_) => &mut self.tokens,
        };
        if slot.is_none_or(|old| s.remaining < old.remaining) {
            *slot = Some(s);
        }
    }

    /// Sets the headers on a response.
    pub fn apply(&self, h: &mut HeaderMap) {
        const REQUESTS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ];
        const TOKENS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ];
        for (names, standing) in [(REQUESTS, self.requests), (TOKENS, self.tokens)] {
            let Some(s) = standing else { continue };
            let [limit, remaining, reset] = names;
            h.insert(limit, HeaderValue::from(s.limit));
            h.insert(remaining, HeaderValue::from(s.remaining));
            if let Ok(v) = HeaderValue::try_from(reset_text(s.reset)) {
                h.insert(reset, v);
            }
        }
    }
}

/// A reset time as OpenAI writes it: `250ms`, `1.5s`, `6m0s`. Written digit by digit: it is
/// on every limited answer, and float formatting costs more than the rest of the check.
fn reset_text(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut digits = itoa::Buffer::new();
    let mut text = String::with_capacity(24);
    if ms < 1000 {
        text.push_str(digits.format(ms));
        text.push_str("ms");
        return text;
    }
    let (minutes, rest) = (ms / 60_000, ms % 60_000);
    if minutes > 0 {
        text.push_str(digits.format(minutes));
        text.push('m');
    }
    text.push_str(digits.format(rest / 1000));
    let mut fraction = rest % 1000;
    if fraction > 0 {
        text.push('.');
        let mut place = 100;
        while fraction > 0 {
            text.push(char::from(b'0' + (fraction / place) as u8));
            fraction %= place;
            place /= 10;
        }
    }
    text.push('s');
    text
}

/// The token cells a request holds, to correct from `usage` after the call.
#[derive(Debug, Default)]
pub struct Charged {
    store: Option<Store>,
    /// Per token cell: its name, what it counts, the tokens reserved and its interval.
    tokens: Vec<(String, TokenCount, u64, f64)>,
}

impl Charged {
    /// Moves each token cell by the tokens used beyond (or below) its reservation; the answer
    /// does not wait for the store ([`Store::rate_correct`]).
    pub fn settle(self, usage: Usage) {
        let Some(store) = self.store else { return };
        let deltas: Vec<(String, i64)> = self
            .tokens
            .into_iter()
            .filter_map(|(key, count, reserved, t)| {
                let used = match count {
                    TokenCount::Input => usage.input_tokens,
                    TokenCount::Output => usage.output_tokens,
                    TokenCount::Total => usage.input_tokens + usage.output_tokens,
                };
                let delta = ((used as f64 - reserved as f64) * t).round() as i64;
                (delta != 0).then_some((key, delta))
            })
            .collect();
        if !deltas.is_empty() {
            store.rate_correct(&deltas);
        }
    }
}

/// The share left of each rate limit a decision charges, in its bucket: the smaller share of
/// its rates (`(limit, bucket, share)`), for routing rules that read `ratelimit.*`. One store
/// read (none on SQLite state).
pub async fn shares(
    store: &Store,
    decision: &Decision,
) -> Result<Vec<(std::sync::Arc<str>, String, f64)>, crate::store::StoreError> {
    let cells: Vec<Cell> = decision.rate_charges.iter().map(cell).collect();
    let keys: Vec<String> = cells.iter().map(|c| c.key.clone()).collect();
    let ahead = store.rate_peek(&keys).await?;
    let mut out: Vec<(std::sync::Arc<str>, String, f64)> = Vec::new();
    for ((c, cell), ahead) in decision.rate_charges.iter().zip(&cells).zip(ahead) {
        let share = if cell.capacity_us > 0 {
            ((cell.capacity_us - ahead) as f64 / cell.capacity_us as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        match out
            .iter_mut()
            .find(|(r, b, _)| *r == c.rule && *b == c.bucket)
        {
            Some(entry) => entry.2 = entry.2.min(share),
            None => out.push((c.rule.clone(), c.bucket.clone(), share)),
        }
    }
    Ok(out)
}

/// Who a check is for, for its log line.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The key id.
    pub key_id: &'a str,
}

/// A request the rate limits refused: the error and the headers to send with it.
#[derive(Debug)]
pub struct Refusal {
    /// The 429 (or the state store's 503).
    pub error: ApiError,
    /// The `x-ratelimit-*` headers.
    pub headers: RateHeaders,
}

/// Checks the decision's rate charges (none: nothing to do). `fault` is the 503 of a state
/// store known to be unavailable (not asked then, unless the cells live in this process).
pub async fn check(
    store: &Store,
    decision: &Decision,
    fault: Option<&ApiError>,
    metrics: &Metrics,
    caller: Caller<'_>,
) -> Result<(Charged, RateHeaders), Box<Refusal>> {
    let charges = &decision.rate_charges;
    if charges.is_empty() {
        return Ok((Charged::default(), RateHeaders::default()));
    }
    let cells: Vec<Cell> = charges.iter().map(cell).collect();
    if let Some((c, _)) = charges
        .iter()
        .zip(&cells)
        .find(|(_, cell)| cell.increment_us > cell.capacity_us)
    {
        return Err(Box::new(Refusal {
            error: too_large(c),
            headers: RateHeaders::default(),
        }));
    }
    let checked = match fault.filter(|_| !store.rates_in_process()) {
        Some(refusal) => Err(refusal.clone()),
        None => store
            .rate_check(&cells)
            .await
            .map_err(|e| crate::store::health::failed("checking rate limits", &e)),
    };
    let Checked { refused, ahead_us } = match checked {
        Ok(c) => c,
        Err(refusal) => return unlimited(charges, refusal, metrics, caller),
    };
    let mut headers = RateHeaders::default();
    for (i, (c, cell)) in charges.iter().zip(&cells).enumerate() {
        let ahead = ahead_us.get(i).copied().unwrap_or(0);
        headers.note(c, cell, ahead, refused == Some(i));
    }
    if let Some(i) = refused {
        let (c, cell) = (&charges[i], &cells[i]);
        let ahead = ahead_us.get(i).copied().unwrap_or(0);
        let wait =
            Duration::from_micros((ahead + cell.increment_us - cell.capacity_us).max(0) as u64);
        metrics.rate_limited(&c.rule, c.measure.as_str());
        tracing::warn!(
            target: "llmgw::ratelimit",
            request_id = caller.request_id,
            limit = &*c.rule,
            measure = c.measure.as_str(),
            bucket = c.bucket.as_str(),
            tenant = caller.tenant,
            key_id = caller.key_id,
            retry_after_ms = wait.as_millis() as u64,
            "rate limit exceeded"
        );
        return Err(Box::new(Refusal {
            error: exceeded(c, wait),
            headers,
        }));
    }
    let tokens = charges
        .iter()
        .zip(cells)
        .filter_map(|(c, cell)| match c.measure {
            Measure::Tokens(count) => Some((cell.key, count, c.amount, interval_us(c))),
            Measure::Requests => None,
        })
        .collect();
    Ok((
        Charged {
            store: Some(store.clone()),
            tokens,
        },
        headers,
    ))
}

/// The request unlimited while the state store is unavailable, if every charge allows it;
/// otherwise `refusal`, the store's 503.
fn unlimited(
    charges: &[RateCharge],
    refusal: ApiError,
    metrics: &Metrics,
    caller: Caller<'_>,
) -> Result<(Charged, RateHeaders), Box<Refusal>> {
    if charges
        .iter()
        .any(|c| c.on_store_unavailable == OnStoreUnavailable::Deny)
    {
        return Err(Box::new(Refusal {
            error: refusal,
            headers: RateHeaders::default(),
        }));
    }
    metrics.unlimited_requests.inc();
    tracing::warn!(
        target: "llmgw::ratelimit",
        request_id = caller.request_id,
        tenant = caller.tenant,
        key_id = caller.key_id,
        "the state store is unavailable; serving without rate limits, as they allow"
    );
    Ok((Charged::default(), RateHeaders::default()))
}

fn per_text(period_ms: u64) -> &'static str {
    match period_ms {
        1_000 => "second",
        60_000 => "minute",
        3_600_000 => "hour",
        _ => "day",
    }
}

/// The 429 of a request over a limit.
fn exceeded(c: &RateCharge, wait: Duration) -> ApiError {
    ApiError::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        "requests",
        "rate_limit_exceeded",
        format!(
            "rate limit `{}` reached: {} {} per {} for `{}`; retry in {:.1} s",
            c.rule,
            c.limit,
            c.measure.as_str(),
            per_text(c.period_ms),
            c.bucket,
            wait.as_secs_f64()
        ),
    )
    .with_rule(&c.rule)
    .with_retry_after(Some(Duration::from_secs(
        wait.as_secs_f64().ceil().max(1.0) as u64,
    )))
}

/// The 429 of a request that needs more than a limit's burst: it can never be admitted.
fn too_large(c: &RateCharge) -> ApiError {
    ApiError::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        "tokens",
        "rate_limit_exceeded",
        format!(
            "request too large for rate limit `{}`: it needs {} {}, more than the {} the limit allows at once; lower max_tokens or the input",
            c.rule,
            c.amount,
            c.measure.as_str(),
            c.burst
        ),
    )
    .with_rule(&c.rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_engine::model::OnStoreUnavailable;

    fn charge(measure: Measure, amount: u64, limit: f64, burst: f64) -> RateCharge {
        RateCharge {
            rule: "r".into(),
            measure,
            bucket: "key:k".into(),
            amount,
            limit,
            period_ms: 60_000,
            burst,
            on_store_unavailable: OnStoreUnavailable::Deny,
        }
    }

    #[test]
    fn cells_are_named_per_limit_measure_and_bucket() {
        let c = charge(Measure::Tokens(TokenCount::Output), 10, 600.0, 600.0);
        let cell = cell(&c);
        assert_eq!(cell.key, "r:tokens-output:key:k");
        assert_eq!(cell.increment_us, 1_000_000, "600 a minute: 100 ms each");
        assert_eq!(cell.capacity_us, 60_000_000);
    }

    #[test]
    fn headers_report_the_tightest_limit_of_each_measure() {
        let mut h = RateHeaders::default();
        let a = charge(Measure::Requests, 1, 60.0, 10.0);
        let b = charge(Measure::Requests, 1, 600.0, 600.0);
        // a: 4 s ahead of 10 s capacity: 6 left; b: 0.1 s of 60 s: 599 left.
        h.note(&a, &cell(&a), 4_000_000, false);
        h.note(&b, &cell(&b), 100_000, false);
        // 7 a minute: a cell of 60 s whose one request moved it 8,571,429 µs.
        let c = charge(Measure::Tokens(TokenCount::Total), 1, 7.0, 7.0);
        h.note(&c, &cell(&c), cell(&c).increment_us, false);
        let mut map = HeaderMap::new();
        h.apply(&mut map);
        assert_eq!(map["x-ratelimit-limit-requests"], "60");
        assert_eq!(map["x-ratelimit-remaining-requests"], "6");
        assert_eq!(map["x-ratelimit-reset-requests"], "4s");
        assert_eq!(map["x-ratelimit-limit-tokens"], "7");
        assert_eq!(map["x-ratelimit-remaining-tokens"], "6");
    }

    #[test]
    fn resets_are_written_as_openai_does() {
        assert_eq!(reset_text(Duration::from_millis(250)), "250ms");
        assert_eq!(reset_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(reset_text(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset_text(Duration::from_millis(0)), "0ms");
        assert_eq!(reset_text(Duration::from_millis(1_005)), "1.005s");
        assert_eq!(reset_text(Duration::from_millis(61_050)), "1m1.05s");
        assert_eq!(reset_text(Duration::from_micros(2_999_999)), "2.999s");
    }
}

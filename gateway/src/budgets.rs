//! Budgets on the state store: spend counters per budget, tenant, principal and period;
//! the spend a decision reads; reservations before the upstream call and settlements after it;
//! alert thresholds; the spend ledger.
//!
//! A counter is named `b:<tenant>:<budget>:<scope>:<principal>:<bucket>`. Calendar periods are
//! UTC days, weeks starting Monday and months; a rolling window of W seconds is a sum of
//! [`ROLLING_BUCKETS`] buckets of ⌈W / 30⌉ seconds (spend leaves the window between W and W plus
//! one bucket after it was made). The tenant is part of every name, so the same user or project
//! id in two tenants never shares a budget.
//!
//! Decisions are synchronous, so the spend of every budget that could apply to the request's
//! principals is read in one store call before deciding ([`prefetch`]). The reservation then
//! holds the worst-case cost atomically against each strict budget's limit ([`reserve`]);
//! concurrent requests on any number of replicas never commit more than the limit. Holds are
//! leased: they expire on their own after the request's longest possible run, so a replica that
//! crashes with requests in flight strands nothing. The settlement releases the hold and adds
//! the real cost ([`Held::settle`]); a hold that is never settled (the client went away) is
//! released when it is dropped. A stream, which may run longer than any lease, renews its
//! holds while it runs ([`Held::keep_alive`]).

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{self, Hold, Lease, LedgerEntry, Store, StoreError};
use crate::upstream::Usage;
use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, Utc};
use llmgw_engine::decision::Decision;
use llmgw_engine::input::{Identity, RequestFacts, StateView};
use llmgw_engine::model::{OnExceed, Period, Scope};
use llmgw_engine::CompiledPolicy;
use std::sync::Arc;
use std::time::Duration;

/// Buckets a rolling window is divided into (plus the current, partial one).
pub const ROLLING_BUCKETS: u64 = 30;

/// Counters are kept this long after their period ends.
const MARGIN_SECS: u64 = 86_400;

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace(':', "%3A")
}

/// The counter of a budget for a principal of a tenant in one period bucket.
pub fn counter(tenant: &str, budget: &str, scope: Scope, principal: &str, bucket: &str) -> String {
    format!(
        "b:{}:{}:{}:{}:{bucket}",
        escape(tenant),
        escape(budget),
        scope.as_str(),
        escape(principal)
    )
}

/// Where a budget's period stands at some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodAt {
    /// The current bucket's name (`d2026-11-24`, `w2026-11-23`, `m2026-11`, `r120-1234`).
    pub bucket: String,
    /// Earlier buckets still in a rolling window, oldest first (empty for calendar periods).
    pub earlier: Vec<String>,
    /// Rolling windows: the bucket length in seconds and the current bucket's index.
    pub rolling: Option<(u64, i64)>,
    /// The end of the calendar period (for rolling windows: of the current bucket).
    pub ends_at: DateTime<Utc>,
    /// How long the current bucket's counter is worth keeping, seconds.
    pub ttl_secs: u64,
}

/// The period bucket of a budget at `now`.
pub fn period_at(period: Period, window_secs: Option<u64>, now: DateTime<Utc>) -> PeriodAt {
    let day = now.date_naive();
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let calendar = |bucket: String, ends_at: DateTime<Utc>| PeriodAt {
        bucket,
        earlier: Vec::new(),
        rolling: None,
        ends_at,
        ttl_secs: (ends_at - now).num_seconds().max(0) as u64 + MARGIN_SECS,
    };
    match period {
        Period::Daily => calendar(
            format!("d{}", day.format("%Y-%m-%d")),
            midnight(day + Days::days(1)),
        ),
        Period::Weekly => {
            let monday = day - Days::days(i64::from(day.weekday().num_days_from_monday()));
            calendar(
                format!("w{}", monday.format("%Y-%m-%d")),
                midnight(monday + Days::days(7)),
            )
        }
        Period::Monthly => {
            let first = day.with_day(1).unwrap_or(day);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            }
            .unwrap_or(first);
            calendar(format!("m{}", first.format("%Y-%m")), midnight(next))
        }
        Period::Rolling => {
            let window = window_secs.unwrap_or(3600).max(1);
            let size = window.div_ceil(ROLLING_BUCKETS).max(1);
            let buckets = window.div_ceil(size) as i64;
            let index = now.timestamp().div_euclid(size as i64);
            let name = |i: i64| format!("r{size}-{i}");
            PeriodAt {
                bucket: name(index),
                earlier: (index - buckets..index).map(name).collect(),
                rolling: Some((size, index)),
                ends_at: DateTime::from_timestamp((index + 1) * size as i64, 0).unwrap_or(now),
                ttl_secs: (buckets as u64 + 1) * size + MARGIN_SECS,
            }
        }
    }
}

/// A budget that may apply to a request, with its spend read before the decision.
#[derive(Debug, Clone)]
pub struct Window {
    /// The budget.
    pub budget: Arc<str>,
    /// Its scope.
    pub scope: Scope,
    /// The request's principal of that scope.
    pub principal: String,
    /// The period.
    pub period: Period,
    /// The limit, nano-dollars.
    pub limit: i64,
    /// Alert thresholds (fractions of the limit).
    pub alert_at: Vec<f64>,
    /// What exceeding it does.
    pub on_exceed: OnExceed,
    /// Whether reservations are atomic against the limit.
    pub strict: bool,
    /// The current bucket's counter.
    pub counter: String,
    /// Earlier counters of a rolling window, oldest first.
    pub earlier: Vec<String>,
    /// Where the period stands.
    pub at: PeriodAt,
    /// Settled spend of the current bucket, nano-dollars.
    pub spent: i64,
    /// Settled spend of each earlier bucket, nano-dollars.
    pub earlier_spent: Vec<i64>,
}

impl Window {
    /// Spend in the period, nano-dollars.
    pub fn total(&self) -> i64 {
        self.spent + self.earlier_spent.iter().sum::<i64>()
    }

    /// When spend frees up: the end of a calendar period, or for a rolling window the time
    /// the oldest bucket holding spend leaves it.
    pub fn resets_at(&self) -> DateTime<Utc> {
        match self.at.rolling {
            None => self.at.ends_at,
            Some((size, index)) => {
                let n = self.earlier.len() as i64 + 1;
                let oldest = self
                    .earlier_spent
                    .iter()
                    .position(|&s| s > 0)
                    .map_or(index, |i| index - n + 1 + i as i64);
                DateTime::from_timestamp((oldest + n) * size as i64, 0).unwrap_or(self.at.ends_at)
            }
        }
    }

    fn period_text(&self) -> String {
        match self.period {
            Period::Daily => "day".into(),
            Period::Weekly => "week".into(),
            Period::Monthly => "month".into(),
            Period::Rolling => {
                let (size, _) = self.at.rolling.unwrap_or((1, 0));
                format!("rolling {} s", size * (self.earlier.len() as u64))
            }
        }
    }

    /// The 429 a refused request gets: names the budget and when it resets.
    pub fn exceeded(&self, now: DateTime<Utc>) -> ApiError {
        let resets = self.resets_at();
        ApiError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "budget_exceeded",
            format!(
                "the request would exceed the budget `{}` ({} `{}`: {} USD per {}); it resets at {}",
                self.budget,
                self.scope.as_str(),
                self.principal,
                store::to_usd(self.limit),
                self.period_text(),
                resets.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        )
        .with_retry_after(Some(Duration::from_secs(
            (resets - now).num_seconds().max(1) as u64,
        )))
    }
}

/// The spend of the budgets that may apply to one request: what its decision reads.
#[derive(Debug, Clone, Default)]
pub struct Spend {
    /// The tenant.
    pub tenant: String,
    /// The time the periods were computed for.
    pub now: DateTime<Utc>,
    /// One per budget whose scope has a principal in the request.
    pub windows: Vec<Window>,
    overrides: Vec<(Arc<str>, i64)>,
    /// Shares left of rate limits, by limit and bucket, when routing reads them.
    rate_shares: Vec<(Arc<str>, String, f64)>,
}

impl Spend {
    /// The window of a budget.
    pub fn window(&self, budget: &str) -> Option<&Window> {
        self.windows.iter().find(|w| &*w.budget == budget)
    }

    /// The same spend, but counting `committed` nano-dollars for `budget` (spent and held, as
    /// a refused reservation saw it).
    pub fn with_committed(&self, budget: &Arc<str>, committed: i64) -> Spend {
        let mut s = self.clone();
        s.overrides.push((budget.clone(), committed));
        s
    }

    /// The same spend, with the shares left of rate limits (`(limit, bucket, share)`) that
    /// `ratelimit.*` reads.
    pub fn with_rate_shares(mut self, shares: Vec<(Arc<str>, String, f64)>) -> Spend {
        self.rate_shares = shares;
        self
    }
}

impl StateView for Spend {
    fn spent_usd(&self, budget: &str, scope: Scope, id: &str) -> f64 {
        if let Some((_, c)) = self.overrides.iter().rev().find(|(b, _)| &**b == budget) {
            return store::to_usd(*c);
        }
        self.windows
            .iter()
            .find(|w| &*w.budget == budget && w.scope == scope && w.principal == id)
            .map_or(0.0, |w| store::to_usd(w.total()))
    }

    fn canary_weight(&self, _canary: &str) -> Option<f64> {
        None
    }

    fn ratelimit_remaining(&self, rule: &str, bucket: &str) -> f64 {
        self.rate_shares
            .iter()
            .find(|(r, b, _)| &**r == rule && b == bucket)
            .map_or(1.0, |s| s.2)
    }
}

/// Reads the spend of the policy's budgets for the request's principals: one store call, none
/// when no budget may apply. With `request`, only the budgets that may apply to it at `now`
/// ([`CompiledPolicy::budget_may_apply`]: a budget whose condition is false for this request
/// costs no read); without, all of them.
pub async fn prefetch(
    store: &Store,
    policy: &CompiledPolicy,
    identity: &Identity,
    now: DateTime<Utc>,
    request: Option<&RequestFacts>,
) -> Result<Spend, StoreError> {
    let mut spend = Spend::unread(policy, identity, now, request);
    let names: Vec<String> = spend
        .windows
        .iter()
        .flat_map(|w| std::iter::once(&w.counter).chain(&w.earlier).cloned())
        .collect();
    if !names.is_empty() {
        let mut values = store.spent(&names).await?.into_iter();
        for w in &mut spend.windows {
            w.spent = values.next().unwrap_or(0);
            w.earlier_spent = (&mut values).take(w.earlier.len()).collect();
        }
    }
    Ok(spend)
}

impl Spend {
    /// The windows of the policy's budgets for the request's principals (those that may apply
    /// to `request` at `now`, or all), with nothing spent: what a decision reads when the store
    /// cannot be asked. Decisions on it must be made at `now` ([`Spend::now`]).
    pub fn unread(
        policy: &CompiledPolicy,
        identity: &Identity,
        now: DateTime<Utc>,
        request: Option<&RequestFacts>,
    ) -> Spend {
        let tenant = identity.tenant.id.clone();
        let mut windows = Vec::new();
        for (i, b) in policy.budgets().iter().enumerate() {
            let spec = &b.spec;
            let principal = &identity.of(spec.scope).id;
            if principal.is_empty()
                || request.is_some_and(|r| {
                    !policy.budget_may_apply(i, r, identity, now.timestamp_millis())
                })
            {
                continue;
            }
            let at = period_at(spec.period, spec.window_secs, now);
            let name = |bucket: &str| counter(&tenant, &b.name, spec.scope, principal, bucket);
            let w = Window {
                budget: b.name.clone(),
                scope: spec.scope,
                principal: principal.clone(),
                period: spec.period,
                limit: store::to_nanos(spec.limit_usd),
                alert_at: spec.alert_at.clone(),
                on_exceed: spec.on_exceed,
                strict: spec.strict,
                counter: name(&at.bucket),
                earlier: at.earlier.iter().map(|e| name(e)).collect(),
                spent: 0,
                earlier_spent: Vec::new(),
                at,
            };
            windows.push(w);
        }
        Spend {
            tenant,
            now,
            windows,
            overrides: Vec::new(),
            rate_shares: Vec::new(),
        }
    }
}

/// Holds taken for one request; settle them with [`Held::settle`]. Dropped unsettled, they are
/// released (nothing spent).
#[derive(Debug, Default)]
pub struct Held {
    store: Option<Store>,
    /// The lease the holds were taken under.
    lease_id: String,
    /// Its length.
    ttl: Duration,
    /// The task renewing the lease while a stream runs; stopped when the holds go.
    renewal: Option<Renewal>,
    /// `(counter, amount)` per hold.
    holds: Vec<(String, i64)>,
    /// Per hold: the window it belongs to.
    windows: Vec<Window>,
    /// The budgets a request is served without holds for while the state store is unavailable
    /// (each said `on_store_unavailable: allow`); empty for a budgeted request.
    unbudgeted: Vec<Arc<str>>,
}

/// A reservation that a strict budget refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The refusing budget's window.
    pub window: Window,
    /// Its spent plus held amount when it refused, nano-dollars.
    pub committed: i64,
}

/// Holds each of the decision's reservations (the worst case of its attempt list; not strict
/// for a downgrade budget the request was downgraded for) on its budget, all or none, for at
/// most `lease`.
pub async fn reserve(
    store: &Store,
    spend: &Spend,
    decision: &Decision,
    lease: Duration,
) -> Result<Result<Held, Refusal>, StoreError> {
    let mut holds = Vec::new();
    let mut windows = Vec::new();
    for r in &decision.reservations {
        let Some(w) = spend
            .windows
            .iter()
            .find(|w| w.budget == r.budget && w.principal == r.principal)
        else {
            continue;
        };
        holds.push(Hold {
            counter: w.counter.clone(),
            amount: store::to_nanos(r.amount_usd),
            limit: store::to_nanos(r.limit_usd),
            strict: r.strict,
            ttl_secs: w.at.ttl_secs,
            window: w.earlier.clone(),
        });
        windows.push(w.clone());
    }
    if holds.is_empty() {
        return Ok(Ok(Held::default()));
    }
    let lease = Lease::new(lease);
    match store
        .reserve(&holds, &lease, Utc::now().timestamp_millis())
        .await?
    {
        Ok(()) => Ok(Ok(Held {
            store: Some(store.clone()),
            lease_id: lease.id,
            ttl: lease.ttl,
            renewal: None,
            holds: holds.into_iter().map(|h| (h.counter, h.amount)).collect(),
            windows,
            unbudgeted: Vec::new(),
        })),
        Err(refused) => Ok(Err(Refusal {
            window: windows.swap_remove(refused.index),
            committed: refused.committed,
        })),
    }
}

/// Who and what a settlement is for.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    /// Who sent the request.
    pub identity: &'a Identity,
    /// The logical model that served (or was asked for, when none did).
    pub model: &'a str,
    /// Tokens.
    pub usage: Usage,
    /// The real cost in USD.
    pub cost_usd: f64,
}

impl Held {
    /// No holds, and no settlement against the store: the request is served unbudgeted under
    /// these budgets while the state store is unavailable.
    pub fn unbudgeted(budgets: Vec<Arc<str>>) -> Held {
        Held {
            store: None,
            lease_id: String::new(),
            ttl: Duration::ZERO,
            renewal: None,
            holds: Vec::new(),
            windows: Vec::new(),
            unbudgeted: budgets,
        }
    }

    /// The budgets the request is served unbudgeted under (empty when it holds normally).
    pub fn unbudgeted_under(&self) -> &[Arc<str>] {
        &self.unbudgeted
    }

    /// Nano-dollars held per budget.
    pub fn amount(&self) -> i64 {
        self.holds.iter().map(|h| h.1).max().unwrap_or(0)
    }

    /// Renews the holds every half lease until they are settled or dropped, so that a request
    /// running past its lease (a long stream) keeps them: the budget stays strict however long
    /// the answer takes. A replica that dies stops renewing, and the holds expire as usual.
    pub fn keep_alive(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        if self.holds.is_empty() || self.renewal.is_some() {
            return;
        }
        let counters: Vec<String> = self.holds.iter().map(|(c, _)| c.clone()).collect();
        let lease = Lease {
            id: self.lease_id.clone(),
            ttl: self.ttl,
        };
        let every = (self.ttl / 2).max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = store
                    .renew(&counters, &lease, Utc::now().timestamp_millis())
                    .await
                {
                    tracing::warn!(target: "llmgw::budget", error = %e, "cannot renew budget holds; they expire with their lease");
                }
            }
        });
        self.renewal = Some(Renewal(task.abort_handle()));
    }

    /// Releases the holds, adds the real cost to every budget, records the request in the
    /// spend ledger and raises the alerts whose thresholds the spend crossed.
    pub async fn settle(mut self, store: &Store, metrics: &Metrics, s: Settlement<'_>) {
        self.renewal = None;
        let holds = std::mem::take(&mut self.holds);
        let windows = std::mem::take(&mut self.windows);
        self.store = None;
        let actual = store::to_nanos(s.cost_usd.max(0.0));
        if s.cost_usd > 0.0 {
            metrics.add_spend(&s.identity.tenant.id, &s.identity.project.id, s.cost_usd);
        }
        if !self.unbudgeted.is_empty() {
            return;
        }
        let items: Vec<(String, i64)> = holds
            .into_iter()
            .map(|(counter, _)| (counter, actual))
            .collect();
        let entry = LedgerEntry {
            day: {
                let d = Utc::now().date_naive();
                format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
            },
            tenant: s.identity.tenant.id.clone(),
            project: s.identity.project.id.clone(),
            user: s.identity.user.id.clone(),
            key: s.identity.key.id.clone(),
            model: s.model.to_owned(),
            requests: 1,
            tokens_in: s.usage.input_tokens as i64,
            tokens_out: s.usage.output_tokens as i64,
            cost: actual,
        };
        // The ledger row is written in the background; only the budgets are waited for.
        store.record(&entry);
        let settled = if items.is_empty() {
            Ok(Vec::new())
        } else {
            store.settle(&self.lease_id, &items).await
        };
        match settled {
            Ok(after) => {
                for (w, spent) in windows.iter().zip(after) {
                    alerts(metrics, &s.identity.tenant.id, w, spent, actual);
                }
            }
            Err(e) => {
                tracing::error!(target: "llmgw::budget", error = %e, "cannot settle budget holds")
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        if self.holds.is_empty() {
            return;
        }
        let items: Vec<(String, i64)> = self.holds.drain(..).map(|(c, _)| (c, 0)).collect();
        let lease_id = std::mem::take(&mut self.lease_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.settle(&lease_id, &items).await {
                    tracing::error!(target: "llmgw::budget", error = %e, "cannot release budget holds");
                }
            });
        }
    }
}

/// A lease renewal task, stopped when dropped.
#[derive(Debug)]
struct Renewal(tokio::task::AbortHandle);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs and counts every alert threshold that this settlement's spend crossed. The store's
/// counters are updated atomically, so exactly one settlement crosses each threshold.
fn alerts(metrics: &Metrics, tenant: &str, w: &Window, spent_now: i64, actual: i64) {
    if w.alert_at.is_empty() || actual <= 0 {
        return;
    }
    let after = spent_now + w.earlier_spent.iter().sum::<i64>();
    let before = after - actual;
    for &t in &w.alert_at {
        let threshold = (t * w.limit as f64).ceil() as i64;
        if before < threshold && after >= threshold {
            tracing::warn!(
                target: "llmgw::budget",
                budget = &*w.budget,
                tenant,
                scope = w.scope.as_str(),
                principal = w.principal.as_str(),
                threshold = t,
                spent_usd = store::to_usd(after),
                limit_usd = store::to_usd(w.limit),
                "budget alert"
            );
            metrics.budget_alert(&w.budget, tenant, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn calendar_periods_are_utc_days_weeks_from_monday_and_months() {
        let now = at("2026-11-26T15:04:05Z"); // a Thursday
        let d = period_at(Period::Daily, None, now);
        assert_eq!(d.bucket, "d2026-11-26");
        assert_eq!(d.ends_at, at("2026-11-27T00:00:00Z"));
        let w = period_at(Period::Weekly, None, now);
        assert_eq!(w.bucket, "w2026-11-23");
        assert_eq!(w.ends_at, at("2026-11-30T00:00:00Z"));
        let m = period_at(Period::Monthly, None, at("2026-12-31T23:59:59Z"));
        assert_eq!(m.bucket, "m2026-12");
        assert_eq!(m.ends_at, at("2027-01-01T00:00:00Z"));
        assert!(m.earlier.is_empty() && m.ttl_secs > 86_400);
    }

    #[test]
    fn rolling_windows_are_sums_of_buckets() {
        let now = at("2026-11-26T15:04:05Z");
        let r = period_at(Period::Rolling, Some(3600), now);
        assert_eq!(r.earlier.len(), 30);
        let (size, index) = r.rolling.unwrap();
        assert_eq!(size, 120);
        assert_eq!(r.bucket, format!("r120-{index}"));
        assert_eq!(r.earlier[29], format!("r120-{}", index - 1));
        // A minute later: the same bucket; two minutes later, the next one.
        assert_eq!(
            period_at(Period::Rolling, Some(3600), now + Days::seconds(1)).bucket,
            r.bucket
        );
    }

    #[test]
    fn counters_keep_tenants_apart_and_escape_separators() {
        let a = counter("acme", "user-daily", Scope::User, "alice", "d2026-11-26");
        let b = counter("globex", "user-daily", Scope::User, "alice", "d2026-11-26");
        assert_ne!(a, b);
        assert_eq!(
            counter("a:b", "x", Scope::Key, "c", "d1"),
            "b:a%3Ab:x:key:c:d1"
        );
        assert_ne!(
            counter("a:b", "x", Scope::Key, "c", "d1"),
            counter("a", "b:x", Scope::Key, "c", "d1")
        );
    }
}

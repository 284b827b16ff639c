//! Phase 4: hold the worst-case cost against the budgets the decision names.
//!
//! The worst case is the request's estimated input plus its output (`max_tokens`, at most the
//! model's `max_output_tokens`; that maximum when the client set none) at the prices of the
//! most expensive model the attempt list may reach. Strict budgets hold it atomically against
//! their limit in the state store, so concurrent requests on every replica together never pass
//! it; a refused hold answers 429, naming the budget and when it resets. A hold refused by a
//! budget that downgrades on exceed decides again with the spend the store reported, which moves
//! the request to the downgrade model. A hold is leased for the longest the request can run
//! ([`lease`]), so it expires on its own if this replica dies before settling it. The request
//! sent upstream is never changed to fit the hold.
//!
//! While the state store is unavailable (the probe says so, or a store call fails), a request
//! whose budgets all say `on_store_unavailable: allow` is served without holds
//! ([`Held::unbudgeted`]); one under any `deny` budget, or under no budget at all (the store also
//! holds the keys and revocations), gets the state store's 503.

use crate::budgets::{self, Held, Spend};
use crate::error::ApiError;
use crate::phases::attempt::MAX_INPLACE_WAIT;
use crate::store::Store;
use llmgw_engine::decision::Decision;
use llmgw_engine::model::{OnExceed, OnStoreUnavailable};
use llmgw_engine::CompiledPolicy;
use std::time::Duration;

/// Added to a lease beyond the request's own timeouts: the settlement's trip to the store.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// How long a decision's holds must last: every attempt of its list running to its provider's
/// timeout (the whole answer, or the first token of a stream, whichever is longer), one retry
/// in place of the slowest after the longest wait, and [`LEASE_MARGIN`]. A stream that runs on
/// past its lease renews it ([`crate::budgets::Held::keep_alive`]).
pub fn lease(policy: &CompiledPolicy, decision: &Decision) -> Duration {
    let limits: Vec<Duration> = decision
        .attempts
        .iter()
        .filter_map(|a| policy.deployments().get(a.index))
        .filter_map(|d| policy.providers().get(d.provider))
        .map(|p| Duration::from_millis(p.timeouts.total_ms.max(p.timeouts.first_token_ms)))
        .collect();
    let slowest = limits.iter().max().copied().unwrap_or_default();
    limits.iter().sum::<Duration>() + slowest + MAX_INPLACE_WAIT + LEASE_MARGIN
}

/// The decision, served without holds, if every budget it reserves against says
/// `on_store_unavailable: allow`; otherwise `refusal`, the state store's 503.
pub fn unbudgeted(decision: Decision, refusal: ApiError) -> Result<(Decision, Held), ApiError> {
    let r = &decision.reservations;
    if r.is_empty()
        || r.iter()
            .any(|r| r.on_store_unavailable == OnStoreUnavailable::Deny)
    {
        return Err(refusal);
    }
    let budgets = r.iter().map(|r| r.budget.clone()).collect();
    Ok((decision, Held::unbudgeted(budgets)))
}

/// Reserves the decision's worst-case cost; returns the decision that holds (a new one after
/// a downgrade) and the holds to settle. `redecide` decides again on another view of spend.
/// With `fault` (the store is known to be unavailable), or when the store fails, the request
/// is served [`unbudgeted`] or refused.
pub async fn reserve(
    store: &Store,
    policy: &CompiledPolicy,
    spend: &Spend,
    mut decision: Decision,
    fault: Option<ApiError>,
    redecide: impl Fn(&Spend) -> Result<Decision, ApiError>,
) -> Result<(Decision, Held), ApiError> {
    if let Some(refusal) = fault {
        return unbudgeted(decision, refusal);
    }
    let mut view: Option<Spend> = None;
    loop {
        let current = view.as_ref().unwrap_or(spend);
        let lease = lease(policy, &decision);
        let refusal = match budgets::reserve(store, current, &decision, lease).await {
            Ok(Ok(held)) => return Ok((decision, held)),
            Ok(Err(refusal)) => refusal,
            Err(e) => {
                let refusal = crate::store::health::failed("during a reservation", &e);
                return unbudgeted(decision, refusal);
            }
        };
        let w = &refusal.window;
        if view.is_none() && w.on_exceed == OnExceed::Downgrade && decision.downgrade.is_none() {
            let next = current.with_committed(&w.budget, refusal.committed);
            decision = redecide(&next)?;
            view = Some(next);
            continue;
        }
        return Err(w.exceeded(spend.now));
    }
}

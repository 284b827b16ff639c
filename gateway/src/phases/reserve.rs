//! Phase 4: hold the worst-case cost against the budgets the decision names.
//!
//! The worst case is the request's estimated input plus `max_tokens` (or the engine's default
//! output) at the prices of the most expensive model the attempt list may reach. Strict budgets
//! hold it atomically against their limit in the state store, so concurrent requests on every
//! replica together never pass it; a refused hold answers 429, naming the budget and when it
//! resets. A hold refused by a budget that downgrades on exceed decides again with the spend the
//! store reported, which moves the request to the downgrade model. When the client set no
//! `max_tokens`, the upstream request is capped at the output the hold was sized for.

use crate::budgets::{self, Held, Spend};
use crate::error::ApiError;
use crate::store::Store;
use crate::wire::ClientRequest;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::Endpoint;
use llmgw_engine::model::OnExceed;
use serde_json::Value;

/// Reserves the decision's worst-case cost; returns the decision that holds (a new one after
/// a downgrade) and the holds to settle. `redecide` decides again on another view of spend.
pub async fn reserve(
    store: &Store,
    spend: &Spend,
    mut decision: Decision,
    redecide: impl Fn(&Spend) -> Result<Decision, ApiError>,
) -> Result<(Decision, Held), ApiError> {
    let mut view: Option<Spend> = None;
    loop {
        let current = view.as_ref().unwrap_or(spend);
        let refusal = match budgets::reserve(store, current, &decision).await {
            Ok(Ok(held)) => return Ok((decision, held)),
            Ok(Err(refusal)) => refusal,
            Err(e) => return Err(crate::store::health::failed("during a reservation", &e)),
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

/// Sets `max_tokens` to the output the hold was sized for when the client set none.
pub fn cap_output(request: &mut ClientRequest, held: &Held) {
    if held.amount() == 0
        || request.facts.max_tokens.is_some()
        || request.facts.endpoint != Endpoint::Chat
    {
        return;
    }
    if let Some(obj) = request.body.as_object_mut() {
        obj.insert(
            "max_tokens".into(),
            Value::from(llmgw_engine::decide::DEFAULT_OUTPUT_TOKENS),
        );
    }
}

//! Phase 4: hold the worst-case cost against the budgets the decision names.
//!
//! Spend has no durable store yet, so a reservation only carries its amounts through the
//! request: settle releases it and records the real cost.

use llmgw_engine::decision::{Decision, Reservation};

/// The reservations held for one request.
#[derive(Debug, Default)]
pub struct Held {
    /// What was reserved.
    pub reservations: Vec<Reservation>,
}

impl Held {
    /// Worst-case USD held.
    pub fn amount_usd(&self) -> f64 {
        self.reservations
            .iter()
            .map(|r| r.amount_usd)
            .fold(0.0, f64::max)
    }
}

/// Reserves the decision's worst-case cost.
pub fn reserve(decision: &Decision) -> Held {
    Held {
        reservations: decision.reservations.clone(),
    }
}

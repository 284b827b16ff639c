//! Phase 3: what the policy says. Builds the request context and asks the engine.

use crate::app::Runtime;
use crate::budgets::Spend;
use crate::canary_controller::{Canaries, DecisionState};
use crate::decision_log::{Capture, Captured};
use crate::error::ApiError;
use crate::wire::ClientRequest;
use llmgw_engine::decide::{DecideError, Unservable};
use llmgw_engine::decision::{BudgetAction, Decision};
use llmgw_engine::input::{Identity, RequestContext};

/// The decision for a request, or the error the client sees. It reads spend from `spend` and
/// canary weights from `canaries`. With `captured` (the decision log is on), also the input
/// the decision read, and the decision of a blocked request.
pub fn decide(
    rt: &Runtime,
    req: &ClientRequest,
    identity: Identity,
    spend: &Spend,
    canaries: &Canaries,
    mut captured: Option<&mut Captured>,
) -> Result<Decision, ApiError> {
    let ctx = RequestContext {
        request: req.facts.clone(),
        identity,
        // The time the spend was read at: the budgets whose spend was read are those that may
        // apply at that time.
        now_ms: spend.now.timestamp_millis(),
        random: rand::random::<f64>(),
        canary_random: rand::random::<f64>(),
    };
    let state = DecisionState {
        spend,
        canaries,
        policy: &rt.policy,
    };
    let decision = match captured.as_deref_mut() {
        None => rt.policy.decide(&ctx, &rt.live, &state),
        Some(out) => {
            let capture = Capture::new(&rt.live, &state);
            let decision = rt.policy.decide(&ctx, &capture, &capture);
            out.input = Some(capture.into_input(&ctx));
            decision
        }
    }
    .map_err(|e| map_error(&e, &req.facts.model))?;
    if decision.budget_action == BudgetAction::Block {
        if let Some(out) = captured {
            out.blocked = Some(decision.clone());
        }
        let budget = decision.budget.as_deref().unwrap_or("a budget");
        return Err(match spend.window(budget) {
            Some(w) => w.exceeded(spend.now),
            None => ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "budget_exceeded",
                format!("the request would exceed the budget `{budget}`"),
            ),
        });
    }
    Ok(decision)
}

/// The client error of a decision failure.
fn map_error(e: &DecideError, model: &str) -> ApiError {
    match e {
        DecideError::UnknownModel { .. } => ApiError::model_not_found(model),
        DecideError::NoDeployment {
            rule,
            reason:
                Unservable::ContextLength {
                    input_tokens,
                    largest_window,
                    ..
                },
            ..
        } => {
            // Blame the prompt when it alone is too long, else the output it asks room for.
            let param = if input_tokens > largest_window {
                "messages"
            } else {
                "max_tokens"
            };
            ApiError::bad_request("context_length_exceeded", e.to_string())
                .with_param(param)
                .with_rule(rule)
        }
        DecideError::NoDeployment { rule, .. } => {
            ApiError::unavailable("no_healthy_upstream", e.to_string()).with_rule(rule)
        }
        #[allow(unreachable_patterns)]
        _ => ApiError::internal(format!("the policy could not decide: {e}")),
    }
}

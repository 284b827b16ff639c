//! The decision trace behind `llmgw-policy explain`: every step the engine took, in order.

use crate::expr::{CompiledExpr, EvalError};
use cel::context::VariableResolver;
use serde::Serialize;

/// One step of a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A budget applies to the request.
    Budget {
        /// The budget.
        budget: String,
        /// The principal whose spend counts.
        principal: String,
        /// Spent this period.
        spent_usd: f64,
        /// The limit.
        limit_usd: f64,
        /// Worst-case cost of the request on the requested model.
        request_usd: f64,
    },
    /// A rate limit counts the request.
    RateLimit {
        /// The rate limit.
        limit: String,
        /// The bucket it counts the request in.
        bucket: String,
        /// The share of it still available.
        remaining: f64,
    },
    /// A downgrade rule was considered.
    Downgrade {
        /// The rule.
        rule: String,
        /// From.
        from: String,
        /// To.
        to: String,
        /// Whether it applied.
        fired: bool,
    },
    /// A budget refused the request.
    Blocked {
        /// The budget.
        budget: String,
    },
    /// A routing rule's condition was evaluated.
    Rule {
        /// The rule.
        rule: String,
        /// Where it is written.
        location: String,
        /// Whether it matched.
        matched: bool,
    },
    /// A candidate model was dropped.
    CandidateDropped {
        /// The model.
        model: String,
        /// Why.
        reason: String,
    },
    /// A deployment was left out of the attempts.
    DeploymentSkipped {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },
    /// A condition failed to evaluate and was taken as `taken_as`.
    EvalError {
        /// Where the condition is written.
        location: String,
        /// The condition.
        expression: String,
        /// What went wrong.
        message: String,
        /// The value it was taken as.
        taken_as: bool,
    },
    /// A canary split the request.
    Canary {
        /// The canary.
        canary: String,
        /// Its weight in percent.
        weight_percent: f64,
        /// The arm drawn.
        arm: String,
    },
}

/// Steps recorded while deciding; off on the request path, where recording costs nothing.
/// Conditions that failed to evaluate are kept either way: the decision reports them.
#[derive(Debug, Default)]
pub struct Trace {
    steps: Option<Vec<Step>>,
    errors: Vec<EvalError>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Trace::default()
    }

    /// A trace that records every step.
    pub fn on() -> Self {
        Trace {
            steps: Some(Vec::new()),
            errors: Vec::new(),
        }
    }

    /// Records a step, built only when the trace is on.
    pub fn push(&mut self, step: impl FnOnce() -> Step) {
        if let Some(steps) = &mut self.steps {
            steps.push(step());
        }
    }

    /// Evaluates a condition. One that fails to evaluate (a missing map key, say) counts as
    /// `fallback`, and the failure is recorded so that the gateway can log and count it.
    pub(crate) fn holds(
        &mut self,
        expr: &CompiledExpr,
        vars: &dyn VariableResolver,
        fallback: bool,
    ) -> bool {
        match expr.eval(vars) {
            Ok(value) => value,
            Err(e) => {
                self.push(|| Step::EvalError {
                    location: e.location.to_string(),
                    expression: e.expression.to_string(),
                    message: e.message.clone(),
                    taken_as: fallback,
                });
                self.errors.push(e);
                fallback
            }
        }
    }

    /// Evaluates a string-valued expression; `None` when it fails, which is recorded as a
    /// condition's failure is.
    pub(crate) fn value(
        &mut self,
        expr: &CompiledExpr,
        vars: &dyn VariableResolver,
    ) -> Option<String> {
        match expr.eval_string(vars) {
            Ok(value) => Some(value),
            Err(e) => {
                self.push(|| Step::EvalError {
                    location: e.location.to_string(),
                    expression: e.expression.to_string(),
                    message: e.message.clone(),
                    taken_as: true,
                });
                self.errors.push(e);
                None
            }
        }
    }

    /// The conditions that failed to evaluate, taken out.
    pub fn take_errors(&mut self) -> Vec<EvalError> {
        std::mem::take(&mut self.errors)
    }

    /// The recorded steps.
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or_default()
    }
}

//! The decision trace behind `llmgw-policy explain`: every step the engine took, in order.

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
#[derive(Debug, Default)]
pub struct Trace {
    steps: Option<Vec<Step>>,
}

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Self {
        Trace { steps: None }
    }

    /// A trace that records every step.
    pub fn on() -> Self {
        Trace {
            steps: Some(Vec::new()),
        }
    }

    /// Records a step, built only when the trace is on.
    pub fn push(&mut self, step: impl FnOnce() -> Step) {
        if let Some(steps) = &mut self.steps {
            steps.push(step());
        }
    }

    /// The recorded steps.
    pub fn steps(&self) -> &[Step] {
        self.steps.as_deref().unwrap_or_default()
    }
}

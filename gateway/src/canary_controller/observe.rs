//! What the record phase hands the controller: one [`Observation`] per finished request that a
//! canary split, built from the decision and the attempts' trace.
//!
//! The arm's deployment is the decision's first attempt: the candidate on the candidate arm,
//! the deployment the model would have used anyway on the baseline arm. For it:
//!
//! - `error`: a call to it failed for a reason that is not the request's own (a 5xx, a 429,
//!   a timeout, a broken connection, a protocol error, refused credentials, an unknown model),
//!   or the stream it started broke after the first token (resumed elsewhere or truncated).
//!   A 4xx about the request (`bad_request`, `content_filter`, `context_length`) would have
//!   failed on either arm and is not an error.
//! - `latency_ms` (total, as the client saw it) and `ttft_ms` (streams): only for a request the
//!   arm's deployment answered completely without error; a failure's latency says nothing.
//!
//! A request whose arm's deployment was never called (its circuit opened between the decision
//! and the attempt, or the retry budget was spent) is not observed: nothing was learnt about
//! that arm.

use crate::phases::record::RequestRecord;
use llmgw_canary::{Arm, Observation};
use llmgw_engine::decision::{self, Decision};
use std::time::Duration;

/// The outcomes of a call that are the request's fault, not the deployment's.
const REQUEST_FAULTS: [&str; 3] = ["bad_request", "content_filter", "context_length"];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The observation of a finished request that a canary split, completed at `now_ms`; `None`
/// when no canary applied or the arm's deployment was never called.
pub fn observation(d: &Decision, r: &RequestRecord<'_>, now_ms: u64) -> Option<Observation> {
    let canary = d.canary.as_ref()?;
    let deployment = &d.attempts.first()?.deployment;
    let trace = r.trace?;
    let mut called = false;
    let mut failed = false;
    let mut first_ok_here = None;
    for call in &trace.calls {
        let here = call.deployment == *deployment;
        if call.outcome == "ok" && first_ok_here.is_none() {
            first_ok_here = Some(here);
        }
        if !here || !call.called() {
            continue;
        }
        called = true;
        failed |= call.broke || (call.outcome != "ok" && !REQUEST_FAULTS.contains(&call.outcome));
    }
    if !called {
        return None;
    }
    let served_here = first_ok_here == Some(true);
    let broke = served_here && (trace.resumed > 0 || r.outcome == "truncated");
    let error = failed || broke;
    let clean = !error && served_here && r.status == 200 && r.outcome == "ok";
    Some(Observation {
        now_ms,
        arm: match canary.arm {
            decision::Arm::Baseline => Arm::Baseline,
            decision::Arm::Candidate => Arm::Candidate,
        },
        w: canary.weight,
        error,
        latency_ms: clean.then(|| ms(r.latency)),
        ttft_ms: r.ttft.filter(|_| clean).map(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::attempt::{CallLog, Trace};
    use crate::upstream::Usage;
    use llmgw_engine::decision::{Arm as DArm, Attempt, BudgetAction, CanaryAssignment};
    use llmgw_engine::model::Strategy;

    fn attempt(deployment: &str) -> Attempt {
        Attempt {
            index: 0,
            deployment: deployment.into(),
            model: "m".into(),
            provider: "p".into(),
            region: "r".into(),
            upstream_model: "u".into(),
        }
    }

    fn decision(arm: DArm, weight: f64) -> Decision {
        let first = if arm == DArm::Candidate {
            "cand"
        } else {
            "base"
        };
        Decision {
            revision: "r1".into(),
            rule: "default".into(),
            strategy: Strategy::Priority,
            requested_model: "m".into(),
            model: "m".into(),
            attempts: vec![attempt(first), attempt("other")],
            budget_action: BudgetAction::Allow,
            budget: None,
            reservations: Vec::new(),
            rate_charges: Vec::new(),
            downgrade: None,
            canary: Some(CanaryAssignment {
                canary: "c".into(),
                arm,
                weight,
            }),
            estimated_cost_usd: 0.0,
            cache_ttl_secs: 0,
            cache_semantic_threshold: None,
            eval_errors: Vec::new(),
        }
    }

    fn call(deployment: &str, outcome: &'static str) -> CallLog {
        CallLog {
            deployment: deployment.into(),
            outcome,
            ms: 5,
            broke: false,
            resume: None,
        }
    }

    fn record<'a>(
        d: &'a Decision,
        trace: &'a Trace,
        status: u16,
        outcome: &'a str,
    ) -> RequestRecord<'a> {
        RequestRecord {
            request_id: "x",
            status,
            endpoint: "chat",
            door: "openai",
            stream: false,
            requested_model: "m",
            served: None,
            decision: Some(d),
            rule: &d.rule,
            policy_revision: &d.revision,
            identity: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: Duration::from_millis(40),
            ttft: Some(Duration::from_millis(10)),
            trace: Some(trace),
            outcome,
            error: None,
            handles: None,
            timeline: None,
        }
    }

    #[test]
    fn a_clean_answer_has_latency_and_no_error() {
        let d = decision(DArm::Candidate, 0.25);
        let trace = Trace {
            calls: vec![call("cand", "ok")],
            ..Trace::default()
        };
        let o = observation(&d, &record(&d, &trace, 200, "ok"), 7).unwrap();
        assert_eq!(o.arm, Arm::Candidate);
        assert_eq!((o.now_ms, o.w, o.error), (7, 0.25, false));
        assert_eq!(o.latency_ms, Some(40.0));
        assert_eq!(o.ttft_ms, Some(10.0));
    }

    #[test]
    fn a_failed_call_on_the_arm_is_an_error_even_when_failover_saved_the_request() {
        let d = decision(DArm::Candidate, 0.25);
        let trace = Trace {
            calls: vec![call("cand", "server"), call("other", "ok")],
            failovers: 1,
            ..Trace::default()
        };
        let o = observation(&d, &record(&d, &trace, 200, "ok"), 7).unwrap();
        assert!(o.error);
        assert_eq!((o.latency_ms, o.ttft_ms), (None, None));
    }

    #[test]
    fn request_faults_are_not_errors_and_uncalled_arms_are_not_observed() {
        let d = decision(DArm::Baseline, 0.25);
        let trace = Trace {
            calls: vec![call("base", "content_filter")],
            ..Trace::default()
        };
        let o = observation(&d, &record(&d, &trace, 400, "error"), 7).unwrap();
        assert!(!o.error);
        assert_eq!(o.latency_ms, None);
        let skipped = Trace {
            calls: vec![call("base", "skipped_open_circuit"), call("other", "ok")],
            ..Trace::default()
        };
        assert_eq!(observation(&d, &record(&d, &skipped, 200, "ok"), 7), None);
    }

    #[test]
    fn a_stream_broken_on_the_arm_is_an_error() {
        let d = decision(DArm::Candidate, 0.5);
        let trace = Trace {
            calls: vec![call("cand", "ok"), call("other", "ok")],
            resumed: 1,
            ..Trace::default()
        };
        assert!(
            observation(&d, &record(&d, &trace, 200, "ok"), 7)
                .unwrap()
                .error
        );
        let truncated = Trace {
            calls: vec![call("cand", "ok")],
            ..Trace::default()
        };
        let o = observation(&d, &record(&d, &truncated, 200, "truncated"), 7).unwrap();
        assert!(o.error);
    }

    #[test]
    fn no_canary_no_observation() {
        let mut d = decision(DArm::Candidate, 0.5);
        d.canary = None;
        let trace = Trace::default();
        assert_eq!(observation(&d, &record(&d, &trace, 200, "ok"), 7), None);
    }
}

//! `GET /admin/decisions/{id}/trace`: one logged decision, replayed with its trace on (the
//! steps `llmgw-policy explain` prints: budgets, downgrades, each rule's condition with its
//! file:line, dropped candidates, skipped deployments, the canary draw).
//!
//! The record is found in the decision log ([`crate::decision_query`]) and decided again
//! from the input it logged, by the policy serving now. When that policy is the revision
//! that decided (`same_revision`), the trace is the decision's own; after a reload it shows
//! what the serving revision would decide, and says so. The trace names every rule the
//! engine evaluated, with its condition and where it is written (which may name other
//! tenants), so the route takes the gateway's admin token only.

use crate::admin::require_admin_token;
use crate::app::App;
use crate::body::GatewayBody;
use crate::decision_query::{read_page, Query};
use crate::error::ApiError;
use crate::keys::Authority;
use crate::routes::json;
use http::{Response, StatusCode};
use llmgw_engine::record::DecisionRecord;
use llmgw_engine::trace::Trace;
use serde_json::json;

/// The decision id of `/admin/decisions/{id}/trace`, if `path` is that route.
pub fn trace_id(path: &str) -> Option<&str> {
    path.strip_prefix("/admin/decisions/")?
        .strip_suffix("/trace")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Answers `GET /admin/decisions/{id}/trace`: 404 when the log holds no such decision.
pub async fn handle(
    app: &App,
    parts: &http::request::Parts,
    id: &str,
) -> Result<Response<GatewayBody>, ApiError> {
    require_admin_token(app, &parts.headers, "a decision's trace").await?;
    let mut query = Query::parse(None, &Authority::Global)?;
    query.id = Some(id.to_owned());
    query.limit = 1;
    let page = read_page(app, query).await?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "decision_not_found",
            format!("the decision log holds no decision `{id}`"),
        )
    };
    let logged = page.records.into_iter().next().ok_or_else(not_found)?;
    let record: DecisionRecord = serde_json::from_value(logged.clone()).map_err(|e| {
        ApiError::internal(format!("the decision `{id}` is not a readable record: {e}"))
    })?;
    let rt = app.runtime.load();
    let policy = &rt.policy;
    let input = &record.input;
    let mut trace = Trace::on();
    let decision = policy.decide_traced(&input.context(), input, input, &mut trace);
    Ok(json(
        StatusCode::OK,
        &json!({
            "id": id,
            "record": logged,
            "revision": record.revision,
            "replayed_revision": policy.revision(),
            "same_revision": record.revision == policy.revision(),
            "steps": trace.steps(),
            "decision": decision.as_ref().ok(),
            "error": decision.as_ref().err().map(ToString::to_string),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_route_names_one_decision() {
        assert_eq!(trace_id("/admin/decisions/req-1/trace"), Some("req-1"));
        assert_eq!(trace_id("/admin/decisions//trace"), None);
        assert_eq!(trace_id("/admin/decisions/a/b/trace"), None);
        assert_eq!(trace_id("/admin/decisions"), None);
        assert_eq!(trace_id("/admin/decisions/req-1"), None);
    }
}

//! `GET /admin/policy/diff?from=REV&to=REV`: what changed in the decision table between two
//! revisions the gateway applied — the routing rules, models, deployments, providers,
//! budgets, rate limits, downgrades, canaries and cache settings added, removed or changed
//! ([`llmgw_engine::changes`]).
//!
//! Both revisions are compiled policies the gateway holds: the one serving and the applied
//! ones of the policy history (`/admin/status`'s `policy.history`, the last
//! [`crate::reload::HISTORY`] revisions tried). A revision is named by its id or a prefix of
//! at least [`MIN_PREFIX`] characters. `to` defaults to the revision serving, `from` to the
//! revision applied before `to`. A revision that did not compile has no decision table: 409
//! `revision_not_compiled`. The answer names every rule's condition and every tenant a rule
//! names, so the route takes the gateway's admin token only, as the Policy page shows
//! commits and diagnostics to it only.

use crate::admin::require_admin_token;
use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::policy_source::RevisionInfo;
use crate::reload::{revision_json, ReloadResult};
use crate::routes::json;
use http::{Response, StatusCode};
use llmgw_engine::changes::{changes, ChangeKind};
use llmgw_engine::CompiledPolicy;
use serde_json::{json, Value};
use std::sync::Arc;

/// The route.
pub const PATH: &str = "/admin/policy/diff";

/// The shortest revision prefix accepted, as git's short ids.
pub const MIN_PREFIX: usize = 7;

/// A revision the diff can name: one of the history, or the one serving.
struct Known {
    revision: RevisionInfo,
    result: &'static str,
    at: Option<chrono::DateTime<chrono::Utc>>,
    policy: Option<Arc<CompiledPolicy>>,
}

impl Known {
    fn to_json(&self) -> Value {
        let mut v = revision_json(&self.revision);
        v["result"] = json!(self.result);
        v["attempted_at"] = json!(self.at);
        v
    }
}

/// The revisions the gateway knows, newest first: the history, then the serving revision
/// when the history does not hold it (a last known good one served since start-up).
fn known(app: &App) -> (Vec<Known>, String) {
    let rt = app.runtime.load();
    let serving = rt.policy.revision().to_owned();
    let mut all: Vec<Known> = app
        .policy_status
        .history()
        .into_iter()
        .map(|a| Known {
            revision: a.revision,
            result: a.result.as_str(),
            at: Some(a.at),
            policy: a.policy,
        })
        .collect();
    if !all
        .iter()
        .any(|k| k.revision.id == serving && k.policy.is_some())
    {
        all.push(Known {
            revision: app
                .policy_status
                .applied()
                .filter(|r| r.id == serving)
                .unwrap_or_else(|| RevisionInfo::content(serving.clone(), &rt.location)),
            result: ReloadResult::Applied.as_str(),
            at: None,
            policy: Some(rt.policy.clone()),
        });
    }
    (all, serving)
}

/// The index in `known` of the revision `want` names (by id, or by a unique prefix), as
/// parameter `param`: its newest compiled entry.
fn resolve(known: &[Known], param: &str, want: &str) -> Result<usize, ApiError> {
    let matches: Vec<usize> = (0..known.len())
        .filter(|&i| {
            let id = &known[i].revision.id;
            id == want || (want.len() >= MIN_PREFIX && id.starts_with(want))
        })
        .collect();
    let Some(&first) = matches.first() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "revision_not_found",
            format!(
                "`{param}`: no revision `{want}` among the serving one and the last {} tried",
                crate::reload::HISTORY
            ),
        )
        .with_param(param));
    };
    let id = &known[first].revision.id;
    if matches.iter().any(|&i| &known[i].revision.id != id) {
        return Err(ApiError::invalid_field(
            param,
            format!("`{param}`: `{want}` is the prefix of more than one revision"),
        ));
    }
    matches
        .iter()
        .copied()
        .find(|&i| known[i].policy.is_some())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "revision_not_compiled",
                format!("`{param}`: revision `{id}` did not compile, so it has no decision table"),
            )
            .with_param(param)
        })
}

/// Answers `GET /admin/policy/diff[?from=REV][&to=REV]` (the admin token only).
pub async fn handle(
    app: &App,
    parts: &http::request::Parts,
) -> Result<Response<GatewayBody>, ApiError> {
    require_admin_token(app, &parts.headers, "`/admin/policy/diff`").await?;
    let (mut from, mut to) = (None, None);
    for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match &*name {
            "from" => from = Some(value.into_owned()),
            "to" => to = Some(value.into_owned()),
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    format!("unknown parameter `{other}`; the parameters are from and to"),
                ))
            }
        }
    }
    let (known, serving) = known(app);
    let to = resolve(&known, "to", to.as_deref().unwrap_or(&serving))?;
    let from = match from {
        Some(want) => resolve(&known, "from", &want)?,
        None => (to + 1..known.len())
            .find(|&i| known[i].policy.is_some() && known[i].revision.id != known[to].revision.id)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "revision_not_found",
                    format!(
                        "`from`: no revision applied before `{}` is in the history",
                        known[to].revision.id
                    ),
                )
                .with_param("from")
            })?,
    };
    let (Some(old), Some(new)) = (&known[from].policy, &known[to].policy) else {
        return Err(ApiError::internal("a resolved revision has no policy"));
    };
    let list = changes(old, new);
    let count = |kind: ChangeKind| list.iter().filter(|c| c.change == kind).count();
    Ok(json(
        StatusCode::OK,
        &json!({
            "from": known[from].to_json(),
            "to": known[to].to_json(),
            "summary": {
                "added": count(ChangeKind::Added),
                "removed": count(ChangeKind::Removed),
                "changed": count(ChangeKind::Changed),
            },
            "changes": list,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_source::PolicyLocation;

    fn known(id: &str, policy: Option<&Arc<CompiledPolicy>>) -> Known {
        Known {
            revision: RevisionInfo::content(id.to_owned(), &PolicyLocation::Embedded),
            result: if policy.is_some() {
                "applied"
            } else {
                "failed"
            },
            at: None,
            policy: policy.cloned(),
        }
    }

    #[test]
    fn a_revision_is_named_by_its_id_or_a_unique_prefix() {
        let (compiled, _) = crate::policy_source::compile(
            &crate::policy_source::embedded_policy_files(),
            "bundled",
        )
        .expect("the bundled policies compile");
        let p = Some(Arc::new(compiled));
        let p = p.as_ref();
        let list = [
            known("aaaa1111bbbb", p),
            known("aaaa2222cccc", None),
            known("dddd3333eeee", p),
            known("aaaa1111bbbb", p),
        ];
        assert_eq!(resolve(&list, "to", "aaaa1111bbbb").ok(), Some(0));
        assert_eq!(resolve(&list, "to", "dddd333").ok(), Some(2));
        let short = resolve(&list, "to", "dddd").expect_err("too short a prefix");
        assert_eq!(short.status, StatusCode::NOT_FOUND);
        assert_eq!(
            resolve(&list, "from", "aaaa111").ok(),
            Some(0),
            "one revision, tried twice"
        );
        let two = resolve(
            &[known("aaaa1111b", p), known("aaaa1111c", p)],
            "from",
            "aaaa111",
        )
        .expect_err("two revisions");
        assert_eq!(two.status, StatusCode::BAD_REQUEST);
        assert_eq!(two.param.as_deref(), Some("from"));
        let failed = resolve(&list, "from", "aaaa2222cccc").expect_err("did not compile");
        assert_eq!(failed.status, StatusCode::CONFLICT);
        assert_eq!(failed.code.as_deref(), Some("revision_not_compiled"));
    }
}

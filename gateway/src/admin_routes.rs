//! The admin listener (`llmgw serve --admin-listen`, `127.0.0.1:9090` unless told): the
//! operator API, on its own port apart from the API clients use.
//!
//! | route | who may call it |
//! |---|---|
//! | `GET /healthz`, `GET /readyz` | anyone (also on the API listener) |
//! | `GET /metrics` | the admin token |
//! | `GET /admin/status` | the admin token (everything); a tenant admin key (its own tenant: [`tenant_status`]) |
//! | `GET /admin/decisions` | the admin token (every tenant, or `tenant=`); a tenant admin key (its own tenant) — see [`crate::decision_query`] |
//! | `/admin/keys…`, `/admin/spend`, `/admin/tenants/…` | the admin token; a tenant admin key for its own tenant — see [`crate::admin`] |
//! | `/admin/canaries…` | the admin token |
//! | `POST /hooks/git` | a git host's signed push notification (`--webhook-secret`) — see [`crate::webhook`] |
//! | `GET /admin/decisions/{id}/trace`, `GET /admin/history`, `GET /admin/policy/diff` | the admin token — see [`crate::decision_trace`], [`crate::dashboard::history`], [`crate::dashboard::policy_diff`] |
//! | `GET /ui` (and `/ui/app.js`, `/ui/app.css`) | anyone: the dashboard's static files, which hold no data ([`crate::dashboard`]) |
//!
//! Without a credential (or with an unknown one) the answer is 401; a gateway key that is
//! not an admin key gets 403, and so does a tenant admin key on a route of the admin token.

use crate::admin::{self, authority, store_error};
use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::keys::{self, Authority};
use crate::routes::{error, healthz, json, method_not_allowed, ready};
use crate::store;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use llmgw_engine::input::{DeploymentStats, Identity, Principal};
use llmgw_engine::CompiledPolicy;
use serde_json::{json, Value};
use std::sync::Arc;

/// Whether a path belongs to the operator API (served on the admin listener only).
pub fn is_operator_path(path: &str) -> bool {
    path == "/metrics" || path == "/admin" || path.starts_with("/admin/")
}

/// Answers one request on the admin listener.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let answer = match (&parts.method, path) {
        (&Method::GET, "/healthz") => return healthz(),
        (&Method::GET, "/readyz") => return ready(&app),
        (&Method::GET, "/metrics") => metrics(&app, &parts.headers).await,
        (&Method::GET, "/admin/status") => status(&app, &parts.headers).await,
        (&Method::GET, "/admin/decisions") => crate::decision_query::handle(&app, &parts).await,
        (&Method::POST, crate::webhook::PATH) => {
            return crate::webhook::handle(&app, parts, body).await
        }
        (&Method::GET, "/admin/history") => crate::dashboard::history::handle(&app, &parts).await,
        (&Method::GET, crate::dashboard::policy_diff::PATH) => {
            crate::dashboard::policy_diff::handle(&app, &parts).await
        }
        (&Method::GET, p) if crate::decision_trace::trace_id(p).is_some() => {
            let id = crate::decision_trace::trace_id(p).unwrap_or_default();
            crate::decision_trace::handle(&app, &parts, id).await
        }
        (&Method::GET, p) if crate::dashboard::is_ui_path(p) => {
            return crate::dashboard::serve(p)
                .unwrap_or_else(|| error(&ApiError::route_not_found(&parts.method, p)))
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/metrics"
            | "/admin/status"
            | "/admin/decisions"
            | "/admin/history"
            | crate::dashboard::policy_diff::PATH
            | crate::webhook::PATH,
        ) => Err(method_not_allowed(&parts.method, path)),
        (_, p)
            if crate::dashboard::is_ui_path(p) || crate::decision_trace::trace_id(p).is_some() =>
        {
            Err(method_not_allowed(&parts.method, path))
        }
        (_, p) if admin::is_admin_path(p) => return admin::handle(&app, parts, body).await,
        (_, p) if crate::canary_controller::is_admin_path(p) => {
            return crate::canary_controller::admin(&app, parts).await
        }
        _ => Err(ApiError::route_not_found(&parts.method, path)),
    };
    answer.unwrap_or_else(|e| error(&e))
}

/// `GET /metrics`, for the admin token (Prometheus: `authorization: { credentials: … }`).
async fn metrics(app: &App, headers: &http::HeaderMap) -> Result<Response<GatewayBody>, ApiError> {
    admin::require_admin_token(app, headers, "`/metrics`").await?;
    let mut resp = Response::new(GatewayBody::full(app.metrics.render()));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}

/// `GET /admin/status`: the whole gateway for the admin token, one tenant for its admin key.
async fn status(app: &App, headers: &http::HeaderMap) -> Result<Response<GatewayBody>, ApiError> {
    let body = match authority(app, headers).await? {
        Authority::Global => global_status(app),
        Authority::Tenant(tenant) => tenant_status(app, &tenant).await?,
    };
    Ok(json(StatusCode::OK, &body))
}

/// Everything: the policy (with its source and diagnostics), the breakers (each region's with
/// its deployments' under it), every deployment's live stats and the canaries.
fn global_status(app: &App) -> Value {
    let rt = app.runtime.load();
    let policy = &rt.policy;
    let breaker = |c: &crate::circuit::Circuit| json!({ "state": c.state().as_str(), "opened_times": c.opened_times() });
    let circuits: Vec<Value> = policy
        .providers()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let mut region = breaker(rt.breakers.region(i)?);
            let deployments: Vec<Value> = policy
                .deployments()
                .iter()
                .enumerate()
                .filter(|(_, d)| d.provider == i)
                .filter_map(|(j, d)| {
                    let mut v = breaker(rt.breakers.deployment(j)?);
                    v["deployment"] = json!(&*d.name);
                    v["model"] = json!(&*d.model_name);
                    Some(v)
                })
                .collect();
            region["provider"] = json!(p.name);
            region["region"] = json!(p.region);
            region["type"] = json!(p.kind);
            region["deployments"] = json!(deployments);
            Some(region)
        })
        .collect();
    let deployments: Vec<Value> = policy
        .deployments()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let s = rt.live.current(i);
            json!({
                "deployment": &*d.name,
                "model": &*d.model_name,
                "provider": &*d.provider_name,
                "region": &*d.region,
                "quota": d.quota,
                "live": s.as_ref().map(|s| live_json(policy, i, s)),
            })
        })
        .collect();
    json!({
        "policy": app.policy_status.to_json(&rt),
        "draining": app.is_draining(),
        "state_store": match app.store_health.fault() {
            Some(reason) => json!({ "available": false, "reason": reason }),
            None => json!({ "available": true }),
        },
        "retry_budget_available": app.retry_budget.available(),
        "circuits": circuits,
        "deployments": deployments,
        "canaries": app.canaries.status_json(),
    })
}

/// The live stats of deployment `index` of `policy` as `/admin/status` and `/admin/history`
/// show them. A deployment that declares a provider quota also has what is left of it this
/// minute and its headroom: the share left of the tighter of its RPM and TPM, what a
/// candidate filter reads as `m.quota_headroom`.
pub fn live_json(policy: &CompiledPolicy, index: usize, s: &DeploymentStats) -> Value {
    let quota = policy.deployments().get(index).and_then(|d| d.quota);
    json!({
        "p50_ms": s.p50_ms,
        "p95_ms": s.p95_ms,
        "p99_ms": s.p99_ms,
        "ttft_ms": s.ttft_ms,
        "error_rate": s.error_rate,
        "in_flight": s.in_flight,
        "circuit": s.circuit.as_str(),
        "quota_requests_left": s.quota_requests_left,
        "quota_tokens_left": s.quota_tokens_left,
        "quota_headroom": quota.map(|_| policy.quota_headroom(index, s)),
    })
}

/// What a tenant admin may see: its tenant's keys (counted by status), the tenant-scope
/// budgets that concern it with their spend this period, its spend this month, the policy
/// revision and whether the gateway takes traffic. Nothing names another tenant, a
/// provider, a deployment, a file path or a store address: a budget with a `when` condition
/// (which may name tenants) is shown only once it has counted spend of this tenant.
pub async fn tenant_status(app: &App, tenant: &str) -> Result<Value, ApiError> {
    let rt = app.runtime.load();
    let store = app.keys.store();
    let now_ms = keys::now_ms();
    let mut counts = json!({ "active": 0, "expired": 0, "revoked": 0 });
    for k in store.keys(Some(tenant)).await.map_err(store_error)? {
        let slot = &mut counts[keys::status(&k, now_ms)];
        *slot = json!(slot.as_u64().unwrap_or(0) + 1);
    }
    let identity = Identity {
        tenant: Arc::new(Principal {
            id: tenant.to_owned(),
            labels: Default::default(),
        }),
        ..Identity::default()
    };
    let spend = crate::budgets::prefetch(store, &rt.policy, &identity, chrono::Utc::now(), None)
        .await
        .map_err(store_error)?;
    let unconditional = |name: &str| {
        rt.policy
            .budgets()
            .iter()
            .any(|b| &*b.name == name && b.spec.when.is_none())
    };
    let budgets: Vec<Value> = spend
        .windows
        .iter()
        .filter(|w| w.total() > 0 || unconditional(&w.budget))
        .map(|w| {
            json!({
                "budget": &*w.budget,
                "period": w.period,
                "limit_usd": store::to_usd(w.limit),
                "spent_usd": store::to_usd(w.total()),
                "on_exceed": w.on_exceed,
                "alert_at": rt.policy.budgets().iter().find(|b| b.name == w.budget).map(|b| &b.spec.alert_at),
                "resets_at": w.resets_at().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
        })
        .collect();
    let since = admin::month_start();
    let rows = store
        .ledger(Some(tenant), &since)
        .await
        .map_err(store_error)?;
    Ok(json!({
        "tenant": tenant,
        "policy": { "revision": rt.policy.revision() },
        "draining": app.is_draining(),
        "state_store": { "available": app.store_health.fault().is_none() },
        "keys": counts,
        "budgets": budgets,
        "spend": {
            "since": since,
            "requests": rows.iter().map(|r| r.requests).sum::<i64>(),
            "total_usd": store::to_usd(rows.iter().map(|r| r.cost).sum()),
        },
    }))
}

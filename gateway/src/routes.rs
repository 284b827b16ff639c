//! Routing of HTTP requests to handlers, and the small handlers: models, health, metrics, admin.

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::phases::authenticate::authenticate;
use crate::proxy;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use llmgw_engine::input::Endpoint;
use serde_json::{json, Value};
use std::sync::Arc;

/// Answers one request.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => {
            proxy::handle(app, parts, body, Endpoint::Chat).await
        }
        (&Method::POST, "/v1/embeddings") => {
            proxy::handle(app, parts, body, Endpoint::Embeddings).await
        }
        (&Method::GET, "/v1/models") => with_key(&app, &parts.headers, || models(&app)).await,
        (&Method::GET, "/healthz") => json(StatusCode::OK, &json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => ready(&app),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(GatewayBody::full(app.metrics.render()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/admin/status") => with_key(&app, &parts.headers, || status(&app)).await,
        (
            _,
            "/v1/chat/completions"
            | "/v1/embeddings"
            | "/v1/models"
            | "/healthz"
            | "/readyz"
            | "/metrics"
            | "/admin/status",
        ) => error(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("`{}` is not allowed on `{path}`", parts.method),
        )),
        (_, p) if crate::admin::is_admin_path(p) => crate::admin::handle(&app, parts, body).await,
        (_, p) if crate::canary_controller::is_admin_path(p) => {
            crate::canary_controller::admin(&app, parts).await
        }
        _ => error(&ApiError::route_not_found(&parts.method, path)),
    }
}

async fn with_key(
    app: &App,
    headers: &http::HeaderMap,
    f: impl FnOnce() -> Response<GatewayBody>,
) -> Response<GatewayBody> {
    match authenticate(headers, &app.keys, app.store_health.fault().as_deref()).await {
        Ok(_) => f(),
        Err(e) => error(&e),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An OpenAI-shaped error response.
pub fn error(err: &ApiError) -> Response<GatewayBody> {
    let mut resp = json(err.status, &err.body());
    if err.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn models(app: &App) -> Response<GatewayBody> {
    let rt = app.runtime.load();
    let data: Vec<Value> = rt
        .policy
        .models()
        .iter()
        .map(|m| json!({ "id": &*m.name, "object": "model", "created": 0, "owned_by": "llmgw" }))
        .collect();
    json(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

fn ready(app: &App) -> Response<GatewayBody> {
    if app.is_draining() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "draining" }),
        )
    } else if let Some(reason) = app.store_health.fault() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "status": "state_unavailable",
                "reason": format!("the state store is unavailable: {reason}"),
            }),
        )
    } else {
        let rt = app.runtime.load();
        json(
            StatusCode::OK,
            &json!({ "status": "ready", "policy_revision": rt.policy.revision() }),
        )
    }
}

fn status(app: &App) -> Response<GatewayBody> {
    let rt = app.runtime.load();
    let policy = &rt.policy;
    let circuits: Vec<Value> = policy
        .providers()
        .iter()
        .zip(&rt.circuits)
        .map(|(p, c)| {
            json!({
                "provider": p.name,
                "region": p.region,
                "type": p.kind,
                "state": c.state().as_str(),
                "opened_times": c.opened_times(),
            })
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
                "live": s.map(|s| json!({
                    "p50_ms": s.p50_ms,
                    "p95_ms": s.p95_ms,
                    "p99_ms": s.p99_ms,
                    "ttft_ms": s.ttft_ms,
                    "error_rate": s.error_rate,
                    "in_flight": s.in_flight,
                    "circuit": s.circuit.as_str(),
                })),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
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
        }),
    )
}

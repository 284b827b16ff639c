//! Routing of API requests to handlers, and the small handlers: models, health. The operator
//! API (`/metrics`, `/admin/…`) is on the admin listener ([`crate::admin_routes`]).

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::front::{messages, responses, Door};
use crate::phases::authenticate::authenticate;
use crate::proxy;
use crate::request_body::read;
use crate::wire;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use llmgw_engine::input::Endpoint;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Answers one request.
pub async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<GatewayBody> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => {
            proxy::handle(app, parts, body, Endpoint::Chat, Door::OpenAi).await
        }
        (&Method::POST, "/v1/embeddings") => {
            proxy::handle(app, parts, body, Endpoint::Embeddings, Door::OpenAi).await
        }
        (&Method::POST, "/v1/messages") => {
            proxy::handle(app, parts, body, Endpoint::Chat, Door::Messages).await
        }
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens(&app, parts, body).await,
        (&Method::POST, "/v1/responses") => {
            proxy::handle(app, parts, body, Endpoint::Chat, Door::Responses).await
        }
        (method @ (&Method::GET | &Method::DELETE), p)
            if p.strip_prefix("/v1/responses/").is_some_and(is_response_id) =>
        {
            let id = &p["/v1/responses/".len()..];
            stored_response(&app, method, &parts.headers, id).await
        }
        (&Method::GET, "/v1/models") => with_key(&app, &parts.headers, || models(&app)).await,
        (&Method::GET, "/healthz") => healthz(),
        (&Method::GET, "/readyz") => ready(&app),
        (_, "/v1/responses") => error(&method_not_allowed(&parts.method, path)),
        (_, "/v1/messages" | "/v1/messages/count_tokens") => {
            error_in(Door::Messages, &method_not_allowed(&parts.method, path))
        }
        (_, "/v1/chat/completions" | "/v1/embeddings" | "/v1/models" | "/healthz" | "/readyz") => {
            error(&method_not_allowed(&parts.method, path))
        }
        (_, p) if crate::admin_routes::is_operator_path(p) => error(&ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            "the operator API (`/metrics`, `/admin/…`) is served on the admin listener \
             (`llmgw serve --admin-listen`), not on this one",
        )),
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

/// 405 for a method a route does not take.
pub fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("`{method}` is not allowed on `{path}`"),
    )
}

/// `/healthz`: the process answers.
pub fn healthz() -> Response<GatewayBody> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
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
    error_in(Door::OpenAi, err)
}

/// An error response in the shape of `door`.
pub fn error_in(door: Door, err: &ApiError) -> Response<GatewayBody> {
    let mut resp = json(err.status, &door.error_body(err));
    if err.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// `POST /v1/messages/count_tokens`: the gateway's estimate of a Messages request's input
/// tokens (the estimate its budgets and routing read), without calling any upstream.
async fn count_tokens(
    app: &App,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let fault = app.store_health.fault();
    let counted = async {
        let key = authenticate(&parts.headers, &app.keys, fault.as_deref()).await?;
        let limits = &app.limits;
        let bytes = read(
            &parts.headers,
            body,
            limits.max_body_bytes,
            limits.body_read_timeout,
        )
        .await?;
        let chat = messages::to_chat(&wire::parse_json(&bytes)?, true)?;
        let request = wire::parse_value(Endpoint::Chat, chat, BTreeMap::new())?;
        let model = request.facts.model.as_str();
        crate::phases::authenticate::check_model(&key, model)?;
        let rt = app.runtime.load();
        if !rt.policy.models().iter().any(|m| &*m.name == model) {
            return Err(ApiError::model_not_found(model));
        }
        Ok(request)
    };
    match counted.await {
        Ok(request) => json(
            StatusCode::OK,
            &json!({ "input_tokens": request.facts.input_tokens }),
        ),
        Err(e) => error_in(Door::Messages, &e),
    }
}

/// Whether `id` may name a response (`resp_` and a request id).
fn is_response_id(id: &str) -> bool {
    id.strip_prefix("resp_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// `GET` (or `DELETE`) `/v1/responses/{id}`: a response stored by the tenant the key (or its
/// tenant token) acts for, or forgetting it.
async fn stored_response(
    app: &App,
    method: &Method,
    headers: &http::HeaderMap,
    id: &str,
) -> Response<GatewayBody> {
    let probed = app.store_health.fault();
    let fault = probed
        .as_deref()
        .map(|r| crate::store::health::unavailable(&r));
    let answered = async {
        let key = authenticate(headers, &app.keys, probed.as_deref()).await?;
        let token = crate::tenant_token::resolve(app, headers, &key, fault.as_ref()).await?;
        let mut acting = crate::phases::identify::key_only(&key);
        if let Some(t) = &token {
            t.apply(&mut acting);
        }
        let tenant = acting.tenant.id.as_str();
        if *method == Method::DELETE {
            responses::delete(app, tenant, id).await
        } else {
            responses::get(app, tenant, id).await
        }
    };
    match answered.await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

fn models(app: &App) -> Response<GatewayBody> {
    let rt = app.runtime.load();
    let data: Vec<Value> = rt
        .policy
        .models()
        .iter()
        .map(|m| {
            json!({
                "id": &*m.name,
                "object": "model",
                "created": 0,
                "owned_by": "llmgw",
                // An extension object: OpenAI clients parse the list as usual.
                "llmgw": {
                    "class": &*m.class,
                    "quality": m.quality,
                    "context_window": m.context_window,
                    "max_output_tokens": m.max_output_tokens,
                    "capabilities": m.capabilities,
                    "price_per_mtok": {
                        "input": m.price.input_per_mtok,
                        "output": m.price.output_per_mtok,
                    },
                },
            })
        })
        .collect();
    json(StatusCode::OK, &json!({ "object": "list", "data": data }))
}

/// `/readyz`: whether this gateway takes traffic (not draining, state store reachable).
pub fn ready(app: &App) -> Response<GatewayBody> {
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

//! The admin API: gateway keys and spend, per tenant.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/keys[?tenant=T]` | the keys (never a secret nor a hash) |
//! | `POST /admin/keys` | create: `{tenant, project, user, assert_users, labels, models, expires, signing, signing_public_key, admin, tenant_tokens}`; the answer holds the secret (and a generated private `signing_key`), once |
//! | `GET /admin/keys/{id}` | one key |
//! | `POST /admin/keys/{id}/rotate` | a new secret (and signing keypair, or `{signing_public_key}`); `{grace: "24h"}` keeps the old ones valid that long |
//! | `POST /admin/keys/{id}/revoke` | revoke at once |
//! | `GET /admin/spend[?tenant=T&since=YYYY-MM-DD]` | ledger rows and totals |
//! | `GET /admin/tenants/{t}` | a tenant's labels (`tenant.labels` in rules) |
//! | `PUT /admin/tenants/{t}` | set them: `{labels: {plan: "trial"}}` (admin token only) |
//!
//! These routes are served on the admin listener ([`crate::admin_routes`]). Every route needs
//! `Authorization: Bearer <token>`: the gateway's admin token (`--admin-token`, compared in
//! constant time) acts for every tenant; a tenant admin key (`llmgw keys create --admin`) acts
//! for its own tenant only, and another tenant's keys are reported as missing to it. No
//! credential, or an unknown one, is 401; a gateway key that is not an admin key is 403.

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::keys::{self, Authority, KeyError, KeySpec, Lookup};
use crate::routes::{error, json, method_not_allowed};
use crate::store::{self, LedgerEntry};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest admin request body.
const MAX_BODY: usize = 64 << 10;

/// The gateway's admin token, kept as its SHA-256.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// The token to accept.
    pub fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

/// Whether a path is served here.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin/keys"
        || path.starts_with("/admin/keys/")
        || path == "/admin/spend"
        || path.starts_with("/admin/tenants/")
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    crate::phases::authenticate::bearer(headers).ok()
}

/// 403 with `message`.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "forbidden",
        message,
    )
}

/// 503 for a failed state store (the cause is logged, not answered).
pub fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(target: "llmgw::admin", error = %e, "state store failed");
    ApiError::unavailable("state_unavailable", "the state store is unavailable")
}

/// Who is calling: the admin token, or a tenant admin key (401 without a credential or with an
/// unknown one, 403 for a gateway key that is not an admin key).
pub async fn authority(app: &App, headers: &http::HeaderMap) -> Result<Authority, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::unauthorized(
            "the admin API needs `Authorization: Bearer <admin token>`",
        ));
    };
    if app.admin_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok(Authority::Global);
    }
    match app.keys.lookup(token).await.map_err(store_error)? {
        Lookup::Valid(k) if k.record.admin => Ok(Authority::Tenant(k.record.tenant.clone())),
        Lookup::Valid(_) => Err(forbidden(
            "this gateway key is not an admin key; the admin API needs an admin token",
        )),
        _ if app.admin_token.is_none() => Err(ApiError::unauthorized(
            "not a valid admin key, and this gateway has no admin token (`--admin-token`)",
        )),
        _ => Err(ApiError::unauthorized("the admin token is not valid")),
    }
}

/// Admits the gateway's admin token only: as [`authority`], and 403 for a tenant admin key.
/// `what` names the route for the refusal.
pub async fn require_admin_token(
    app: &App,
    headers: &http::HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    match authority(app, headers).await? {
        Authority::Global => Ok(()),
        Authority::Tenant(_) => Err(forbidden(format!(
            "{what} needs the gateway's admin token; a tenant admin key may not use it"
        ))),
    }
}

/// The answer to a failed key operation.
pub fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "key_not_found",
            format!("no key `{id}`"),
        ),
        KeyError::Invalid(m) => ApiError::bad_request("invalid_value", m),
        KeyError::Forbidden(m) => forbidden(m),
        KeyError::Store(e) => store_error(e),
        #[allow(unreachable_patterns)]
        other => ApiError::internal(other.to_string()),
    }
}

fn query(uri: &http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

async fn read_json(
    app: &App,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Value, ApiError> {
    let bytes =
        crate::request_body::read(headers, body, MAX_BODY, app.limits.body_read_timeout).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })
}

/// The first day of the current UTC month, `YYYY-MM-DD`.
pub fn month_start() -> String {
    chrono::Utc::now().format("%Y-%m-01").to_string()
}

/// Checks a `YYYY-MM-DD` date.
pub fn check_day(day: &str) -> Result<(), KeyError> {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|_| ())
        .map_err(|_| KeyError::Invalid(format!("`{day}` is not a date like 2026-11-01")))
}

/// A ledger row as JSON (cost in USD).
pub fn ledger_row(e: &LedgerEntry) -> Value {
    json!({
        "day": e.day,
        "tenant": e.tenant,
        "project": e.project,
        "user": e.user,
        "key": e.key,
        "model": e.model,
        "requests": e.requests,
        "tokens_in": e.tokens_in,
        "tokens_out": e.tokens_out,
        "cost_usd": store::to_usd(e.cost),
    })
}

/// Answers an admin request.
pub async fn handle(
    app: &App,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    match handle_inner(app, parts, body).await {
        Ok((status, value)) => json(status, &value),
        Err(e) => error(&e),
    }
}

async fn handle_inner(
    app: &App,
    parts: http::request::Parts,
    body: Incoming,
) -> Result<(StatusCode, Value), ApiError> {
    let who = authority(app, &parts.headers).await?;
    let store = app.keys.store();
    let now = keys::now_ms();
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = &parts.method;
    match (method, segments.as_slice()) {
        (&Method::GET, ["admin", "keys"]) => {
            let tenant = query(&parts.uri, "tenant");
            let list = keys::list(store, &who, tenant.as_deref())
                .await
                .map_err(key_error)?;
            let data: Vec<Value> = list.iter().map(|k| keys::view(k, now)).collect();
            Ok((StatusCode::OK, json!({ "object": "list", "data": data })))
        }
        (&Method::POST, ["admin", "keys"]) => {
            let spec = KeySpec::from_json(&read_json(app, &parts.headers, body).await?)
                .map_err(key_error)?;
            let (issued, record) = keys::create(store, &who, spec).await.map_err(key_error)?;
            tracing::info!(target: "llmgw::admin", key_id = record.id.as_str(), tenant = record.tenant.as_str(), "key created");
            Ok((StatusCode::CREATED, issued.answer(&record, now)))
        }
        (&Method::GET, ["admin", "keys", id]) => {
            let record = keys::show(store, &who, id).await.map_err(key_error)?;
            Ok((StatusCode::OK, keys::view(&record, now)))
        }
        (&Method::POST, ["admin", "keys", id, "rotate"]) => {
            let body = read_json(app, &parts.headers, body).await?;
            let grace = match body.get("grace").and_then(Value::as_str) {
                Some(g) => keys::parse_duration(g).map_err(key_error)?,
                None => std::time::Duration::ZERO,
            };
            let signing_public_key = match body.get("signing_public_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(k)) => Some(k.as_str()),
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        "signing_public_key",
                        "`signing_public_key` must be a string",
                    ))
                }
            };
            let (issued, record) = keys::rotate(store, &who, id, grace, signing_public_key)
                .await
                .map_err(key_error)?;
            app.keys.forget(id);
            tracing::info!(target: "llmgw::admin", key_id = *id, grace_secs = grace.as_secs(), "key rotated");
            Ok((StatusCode::OK, issued.answer(&record, now)))
        }
        (&Method::POST, ["admin", "keys", id, "revoke"]) => {
            let record = keys::revoke(store, &who, id).await.map_err(key_error)?;
            app.keys.forget(id);
            tracing::info!(target: "llmgw::admin", key_id = *id, "key revoked");
            Ok((StatusCode::OK, keys::view(&record, keys::now_ms())))
        }
        (&Method::GET, ["admin", "spend"]) => {
            let tenant = who
                .tenant_filter(query(&parts.uri, "tenant").as_deref())
                .map_err(key_error)?;
            let since = query(&parts.uri, "since").unwrap_or_else(month_start);
            check_day(&since).map_err(key_error)?;
            let rows = store
                .ledger(tenant.as_deref(), &since)
                .await
                .map_err(store_error)?;
            let total: i64 = rows.iter().map(|r| r.cost).sum();
            let data: Vec<Value> = rows.iter().map(ledger_row).collect();
            Ok((
                StatusCode::OK,
                json!({
                    "object": "list",
                    "since": since,
                    "tenant": tenant,
                    "data": data,
                    "total_usd": store::to_usd(total),
                }),
            ))
        }
        (&Method::GET, ["admin", "tenants", tenant]) => Ok((
            StatusCode::OK,
            keys::show_tenant(store, &who, tenant)
                .await
                .map_err(key_error)?,
        )),
        (&Method::PUT, ["admin", "tenants", tenant]) => {
            let body = read_json(app, &parts.headers, body).await?;
            let labels = match body.get("labels") {
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k.clone(), s.clone())),
                        _ => Err(ApiError::invalid_field(
                            "labels",
                            "label values must be strings",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(ApiError::invalid_field(
                        "labels",
                        "`labels` must be an object",
                    ))
                }
            };
            let record = keys::set_tenant_labels(store, &who, tenant, labels)
                .await
                .map_err(key_error)?;
            tracing::info!(target: "llmgw::admin", tenant = *tenant, "tenant labels set");
            Ok((StatusCode::OK, record))
        }
        (_, ["admin", "keys"] | ["admin", "keys", _] | ["admin", "spend"])
        | (_, ["admin", "tenants", _])
        | (_, ["admin", "keys", _, "rotate" | "revoke"]) => Err(method_not_allowed(method, path)),
        _ => Err(ApiError::route_not_found(method, path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_matches_only_itself() {
        let t = AdminToken::new("adm-secret");
        assert!(t.matches("adm-secret"));
        assert!(!t.matches("adm-secreT"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "AdminToken(..)");
    }
}

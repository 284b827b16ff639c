//! The canary admin API.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/canaries` | every canary of the live policy, as in `/admin/status` |
//! | `POST /admin/canaries/{name}/pause` | hold the current step (statistics keep running; an alarm still rolls back) |
//! | `POST /admin/canaries/{name}/resume` | continue the held step |
//! | `POST /admin/canaries/{name}/rollback` | send all traffic back to the baseline, for this spec for good |
//!
//! A canary moves every tenant's traffic, so these routes take the gateway's admin token
//! (`--admin-token`, compared in constant time) and no tenant admin key.

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::routes::{error, json};
use http::{Method, Response, StatusCode};
use llmgw_canary::Command;
use serde_json::json;

use super::CommandFailure;

/// Whether a path is served here.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin/canaries" || path.starts_with("/admin/canaries/")
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn authorize(app: &App, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = app.admin_token.as_ref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "forbidden",
            "canary commands need the gateway's admin token, and none is set (`--admin-token`)",
        ));
    };
    match bearer(headers) {
        Some(presented) if token.matches(presented) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("the admin token is not valid")),
        None => Err(ApiError::unauthorized(
            "the canary admin API needs `Authorization: Bearer <admin token>`",
        )),
    }
}

fn command_error(e: &CommandFailure) -> ApiError {
    match e {
        CommandFailure::Unknown(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "canary_not_found",
            e.to_string(),
        ),
        CommandFailure::NotApplicable { .. } | CommandFailure::StateError(_) => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "canary_command_not_applicable",
            e.to_string(),
        ),
        CommandFailure::NotRunning => {
            ApiError::unavailable("canary_controller_stopped", e.to_string())
        }
    }
}

/// Answers a canary admin request.
pub async fn handle(app: &App, parts: http::request::Parts) -> Response<GatewayBody> {
    if let Err(e) = authorize(app, &parts.headers) {
        return error(&e);
    }
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = &parts.method;
    let command = match (method, segments.as_slice()) {
        (&Method::GET, ["admin", "canaries"]) => {
            return json(
                StatusCode::OK,
                &json!({ "object": "list", "data": app.canaries.status_json() }),
            );
        }
        (&Method::POST, ["admin", "canaries", name, action]) => match *action {
            "pause" => Some((*name, Command::Pause)),
            "resume" => Some((*name, Command::Resume)),
            "rollback" => Some((*name, Command::Rollback)),
            _ => None,
        },
        (_, ["admin", "canaries"])
        | (_, ["admin", "canaries", _, "pause" | "resume" | "rollback"]) => {
            return error(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                format!("`{method}` is not allowed on `{path}`"),
            ));
        }
        _ => None,
    };
    let Some((name, command)) = command else {
        return error(&ApiError::route_not_found(method, path));
    };
    match app.canaries.command(name, command).await {
        Ok(status) => {
            tracing::info!(target: "llmgw::admin", canary = name, command = ?command, "canary command applied");
            json(StatusCode::OK, &status)
        }
        Err(e) => error(&command_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_paths_are_recognised() {
        assert!(is_admin_path("/admin/canaries"));
        assert!(is_admin_path("/admin/canaries/gpt-4o-2026-11/pause"));
        assert!(!is_admin_path("/admin/canary"));
        assert!(!is_admin_path("/admin/keys"));
    }
}

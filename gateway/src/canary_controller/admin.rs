//! The canary admin API.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/canaries` | every canary of the live policy, as in `/admin/status` |
//! | `POST /admin/canaries/{name}/pause` | hold the current step (statistics keep running; an alarm still rolls back) |
//! | `POST /admin/canaries/{name}/resume` | continue the held step |
//! | `POST /admin/canaries/{name}/rollback` | send all traffic back to the baseline, for this spec for good |
//!
//! A canary moves every tenant's traffic, so these routes, on the admin listener, take the
//! gateway's admin token (`--admin-token`, compared in constant time) and no tenant admin key
//! (403), nor any other gateway key (403).

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::routes::{error, json, method_not_allowed};
use http::{Method, Response, StatusCode};
use llmgw_canary::Command;
use serde_json::json;

use super::CommandFailure;

/// Whether a path is served here.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin/canaries" || path.starts_with("/admin/canaries/")
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
        CommandFailure::Store(_) => {
            ApiError::unavailable("canary_state_unavailable", e.to_string())
        }
    }
}

/// The canary and command of `/admin/canaries/{name}/{action}`. Canary names may hold `/`:
/// the action is the last segment.
fn parse_command(path: &str) -> Option<(&str, Command)> {
    let (name, action) = path.strip_prefix("/admin/canaries/")?.rsplit_once('/')?;
    let command = match action {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "rollback" => Command::Rollback,
        _ => return None,
    };
    (!name.is_empty()).then_some((name, command))
}

/// Answers a canary admin request.
pub async fn handle(app: &App, parts: http::request::Parts) -> Response<GatewayBody> {
    if let Err(e) =
        crate::admin::require_admin_token(app, &parts.headers, "commanding canaries").await
    {
        return error(&e);
    }
    let path = parts.uri.path();
    let method = &parts.method;
    if path == "/admin/canaries" {
        if method != Method::GET {
            return error(&method_not_allowed(method, path));
        }
        return json(
            StatusCode::OK,
            &json!({ "object": "list", "data": app.canaries.status_json() }),
        );
    }
    let command = parse_command(path);
    if command.is_some() && method != Method::POST {
        return error(&method_not_allowed(method, path));
    }
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

    #[test]
    fn the_action_is_the_last_segment() {
        assert_eq!(
            parse_command("/admin/canaries/team/gpt-4o/rollback"),
            Some(("team/gpt-4o", Command::Rollback))
        );
        assert_eq!(
            parse_command("/admin/canaries/c/pause"),
            Some(("c", Command::Pause))
        );
        assert_eq!(parse_command("/admin/canaries/c/promote"), None);
        assert_eq!(parse_command("/admin/canaries//resume"), None);
        assert_eq!(parse_command("/admin/canaries/c"), None);
    }
}

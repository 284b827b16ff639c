//! `POST /hooks/git` on the admin listener: a push notification from a git host makes the
//! gateway fetch its policy repository at once instead of at the next poll (polling stays as
//! the safety net).
//!
//! The request must prove it knows the secret (`--webhook-secret`): GitHub's
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` or GitLab's `X-Gitlab-Token:
//! <secret>`, both compared in constant time. Without `--webhook-secret` the route does not
//! exist; a missing or wrong signature gets 401. The body itself is not interpreted: any
//! authentic notification triggers one fetch of the branch followed.

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::providers::secret::Secret;
use crate::routes::{error, json};
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The route.
pub const PATH: &str = "/hooks/git";
/// The largest notification read (GitHub caps payloads at 25 MB; a push is far smaller).
const MAX_BODY: usize = 1 << 20;
/// How long the body may take to arrive.
const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Why a notification is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Neither header is present.
    #[error("missing X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab)")]
    Missing,
    /// A header is present but does not match the secret.
    #[error("the webhook signature does not match --webhook-secret")]
    Mismatch,
}

/// Checks a notification's signature (GitHub) or token (GitLab) against `secret`.
pub fn verify(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    if let Some(sig) = headers.get("x-hub-signature-256") {
        let expected = sig
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("sha256="))
            .and_then(|h| hex::decode(h).ok())
            .ok_or(Refusal::Mismatch)?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|_| Refusal::Mismatch)?;
        mac.update(body);
        return mac.verify_slice(&expected).map_err(|_| Refusal::Mismatch);
    }
    if let Some(token) = headers.get("x-gitlab-token") {
        let same: bool = token.as_bytes().ct_eq(secret.expose().as_bytes()).into();
        return if same { Ok(()) } else { Err(Refusal::Mismatch) };
    }
    Err(Refusal::Missing)
}

/// Answers `POST /hooks/git`: 202 and a fetch of the policy repository for an authentic
/// notification, 401 otherwise, 404 when webhooks are off.
pub async fn handle(
    app: &App,
    parts: http::request::Parts,
    body: Incoming,
) -> http::Response<GatewayBody> {
    let Some(secret) = &app.webhook_secret else {
        return error(&ApiError::route_not_found(&parts.method, PATH));
    };
    let body = match crate::request_body::read(&parts.headers, body, MAX_BODY, BODY_DEADLINE).await
    {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    if let Err(refusal) = verify(secret, &parts.headers, &body) {
        tracing::warn!(target: "llmgw::policy", reason = %refusal, "webhook refused");
        return error(&ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_signature",
            refusal.to_string(),
        ));
    }
    let event = ["x-github-event", "x-gitlab-event"]
        .iter()
        .find_map(|h| parts.headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("unknown")
        .to_owned();
    tracing::info!(target: "llmgw::policy", event = event.as_str(), "webhook: fetching the policy repository");
    app.policy_fetch.notify_one();
    json(
        StatusCode::ACCEPTED,
        &json!({ "fetch": "scheduled", "event": event }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        std::fs::write(&path, "It's a Secret to Everybody").expect("write");
        crate::providers::secret::resolve(&format!("file:{}", path.display())).expect("secret")
    }

    #[test]
    fn checks_github_signatures_and_gitlab_tokens() {
        let s = secret();
        let body = b"Hello, World!";
        let mut h = HeaderMap::new();
        assert_eq!(verify(&s, &h, body), Err(Refusal::Missing));
        // GitHub's documented test vector for this secret and payload.
        h.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .expect("header"),
        );
        assert_eq!(verify(&s, &h, body), Ok(()));
        assert_eq!(verify(&s, &h, b"Hello, World?"), Err(Refusal::Mismatch));
        h.insert("x-hub-signature-256", "sha256=zz".parse().expect("header"));
        assert_eq!(verify(&s, &h, body), Err(Refusal::Mismatch));

        let mut g = HeaderMap::new();
        g.insert(
            "x-gitlab-token",
            "It's a Secret to Everybody".parse().expect("header"),
        );
        assert_eq!(verify(&s, &g, body), Ok(()));
        g.insert("x-gitlab-token", "guess".parse().expect("header"));
        assert_eq!(verify(&s, &g, body), Err(Refusal::Mismatch));
    }
}

//! Phase 2: on whose behalf. The key (its id and labels), its tenant and project, and the user.
//! A key charges only the principals it owns: a key bound to a user acts for that user (a
//! request may name it in `user`, or no user); any other key acts for the end user its request
//! names in the `user` field only when the key may assert that user
//! ([`crate::keys::may_assert`]), and for no user when the field is absent. Naming any other
//! user is refused (403), so no key can spend, or dodge, another principal's budget. The
//! `user` field is the only place the gateway takes the end user from. A key acts only within
//! its tenant: every budget, spend counter and ledger row of the request is the tenant's.

use crate::error::ApiError;
use crate::keys::{may_assert, AuthKey};
use llmgw_engine::input::{Identity, Principal};
use std::sync::Arc;

/// The identity of a request made with `key` for end user `user` (the request's `user` field;
/// empty is the same as absent), or 403 when the key may not act for that user.
pub fn identify(key: &AuthKey, user: Option<&str>) -> Result<Identity, ApiError> {
    let named = user.filter(|u| !u.is_empty());
    if let Some(n) = named.filter(|n| !may_assert(&key.record, n)) {
        return Err(not_allowed(key, n));
    }
    let user = match &key.user {
        Some(bound) => bound.clone(),
        None => Arc::new(Principal {
            id: named.unwrap_or_default().to_owned(),
            labels: Default::default(),
        }),
    };
    Ok(Identity {
        user,
        ..key_only(key)
    })
}

/// The key's principals and no user: what a request refused here is logged with.
pub fn key_only(key: &AuthKey) -> Identity {
    Identity {
        key: key.key.clone(),
        user: Arc::default(),
        project: key.project.clone(),
        tenant: key.tenant.clone(),
    }
}

/// The 403 of a `user` the key may not act for, saying why.
fn not_allowed(key: &AuthKey, named: &str) -> ApiError {
    let id = &key.record.id;
    let why = match &key.record.user {
        Some(bound) => format!("the key `{id}` is bound to the user `{bound}` and acts for no other"),
        None if key.record.assert_users.is_empty() => format!(
            "the key `{id}` may not assert end users (create one with `--assert-users`, or bind it to a user with `--user`)"
        ),
        None => format!(
            "the key `{id}` may assert only the users {}",
            key.record
                .assert_users
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let shown: String = named.chars().take(64).collect();
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        "permission_error",
        "user_not_allowed",
        format!("the `user` field names `{shown}`, but {why}"),
    )
    .with_param("user")
}

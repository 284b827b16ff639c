//! Phase 2: on whose behalf. The key (its id and labels), its tenant and project, and the user:
//! the key's own user when it is bound to one, else the end user named by the request's `user`
//! field. A key acts only within its tenant: every budget, spend counter and ledger row of the
//! request is the tenant's.

use crate::keys::AuthKey;
use llmgw_engine::input::{Identity, Principal};
use std::sync::Arc;

/// The identity of a request made with `key`, for end user `user`.
pub fn identify(key: &AuthKey, user: Option<&str>) -> Identity {
    let user = match (&key.user, user) {
        (Some(bound), _) => bound.clone(),
        (None, u) => Arc::new(Principal {
            id: u.unwrap_or_default().to_owned(),
            labels: Default::default(),
        }),
    };
    Identity {
        key: key.key.clone(),
        user,
        project: key.project.clone(),
        tenant: key.tenant.clone(),
    }
}

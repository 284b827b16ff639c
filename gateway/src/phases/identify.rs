//! Phase 2: on whose behalf. The key's principal, the end user named by the request's `user`,
//! and the project and tenant of the key (`default` until keys carry them).

use crate::keys::KeyRecord;
use llmgw_engine::input::{Identity, Principal};
use std::sync::{Arc, OnceLock};

/// The project and tenant of keys that name none.
pub const DEFAULT_SCOPE: &str = "default";

fn default_principal() -> Arc<Principal> {
    static P: OnceLock<Arc<Principal>> = OnceLock::new();
    P.get_or_init(|| {
        Arc::new(Principal {
            id: DEFAULT_SCOPE.to_owned(),
            labels: Default::default(),
        })
    })
    .clone()
}

/// The identity of a request made with `key`, for end user `user`.
pub fn identify(key: &KeyRecord, user: Option<&str>) -> Identity {
    Identity {
        key: Arc::new(Principal {
            id: key.id.clone(),
            labels: Default::default(),
        }),
        user: Arc::new(Principal {
            id: user.unwrap_or_default().to_owned(),
            labels: Default::default(),
        }),
        project: default_principal(),
        tenant: default_principal(),
    }
}

//! Phase 1: who holds the key. `Authorization: Bearer <gateway key>`, checked by its hash.

use crate::error::ApiError;
use crate::keys::{KeyRecord, KeyStore};
use http::HeaderMap;
use std::sync::Arc;

/// The key presented with the request, or 401.
pub fn authenticate(headers: &HeaderMap, keys: &KeyStore) -> Result<Arc<KeyRecord>, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <key>` header",
        ));
    };
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the `Authorization` header must be `Bearer <key>`")
        })?;
    keys.verify(secret)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_registered_keys() {
        let mut keys = KeyStore::default();
        keys.insert_secret("dev", "llmgw_secret");
        let mut h = HeaderMap::new();
        assert_eq!(authenticate(&h, &keys).unwrap_err().status, 401);
        h.insert(
            "authorization",
            "Bearer llmgw_wrong".parse().expect("header"),
        );
        assert!(authenticate(&h, &keys).is_err());
        h.insert(
            "authorization",
            "Bearer llmgw_secret".parse().expect("header"),
        );
        assert_eq!(authenticate(&h, &keys).expect("valid").id, "dev");
    }
}

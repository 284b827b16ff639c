//! Phase 1: who holds the key. `Authorization: Bearer <gateway key>`, checked by its hash
//! against the keys of the state store (through [`KeyCache`]). Signed keys are checked again
//! once the body is read ([`verify_signature`]). While the state store is unavailable, a key
//! this replica verified recently is accepted from memory ([`KeyCache::lookup_verified`]).

use crate::error::ApiError;
use crate::keys::{AuthKey, KeyCache, Lookup};
use crate::store::health::{failed, unavailable};
use http::HeaderMap;
use std::sync::Arc;

/// The bearer secret of a request, or 401.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <key>` (or `x-api-key: <key>`) header",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the `Authorization` header must be `Bearer <key>`"))
}

/// The gateway key a request presents: its bearer secret, or (as Anthropic's clients send it)
/// its `x-api-key` header when it has no `Authorization` header; 401 when it has neither.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return bearer(headers);
    }
    match headers.get("x-api-key").map(|v| v.to_str().map(str::trim)) {
        Some(Ok(key)) if !key.is_empty() => Ok(key),
        Some(_) => Err(ApiError::unauthorized(
            "the `x-api-key` header is empty or not text",
        )),
        None => bearer(headers),
    }
}

/// The key presented with the request, or 401 (403 for an admin key, which serves the admin
/// API only). With `fault` (why the state store is unavailable), or when the store fails, only
/// keys verified recently are known; any other key gets the state store's 503.
pub async fn authenticate(
    headers: &HeaderMap,
    keys: &KeyCache,
    fault: Option<&str>,
) -> Result<Arc<AuthKey>, ApiError> {
    let secret = presented_key(headers)?;
    let looked = match fault {
        Some(reason) => Err(unavailable(&reason)),
        None => keys
            .lookup(secret)
            .await
            .map_err(|e| failed("during key lookup", &e)),
    };
    let lookup = match looked {
        Ok(l) => Ok(l),
        Err(refusal) => keys.lookup_verified(secret).ok_or(refusal),
    };
    match lookup {
        Ok(Lookup::Valid(k)) if k.record.admin => Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "permission_error",
            "admin_key",
            "an admin key serves the admin API only; use a gateway key",
        )),
        Ok(Lookup::Valid(k)) => Ok(k),
        Ok(Lookup::Refused("revoked")) => {
            Err(ApiError::unauthorized("the API key has been revoked"))
        }
        Ok(Lookup::Refused("expired")) => Err(ApiError::unauthorized("the API key has expired")),
        Ok(Lookup::Refused(_)) => Err(ApiError::unauthorized(
            "the API key was rotated and its grace period has ended",
        )),
        Ok(Lookup::Unknown) => Err(ApiError::unauthorized("the API key is not valid")),
        Err(refusal) => Err(refusal),
    }
}

/// Checks the request signature of a key that requires one (`x-llmgw-signature`), with the
/// key's stored Ed25519 public keys ([`crate::signing`]).
pub async fn verify_signature(
    headers: &HeaderMap,
    key: &AuthKey,
    body: &[u8],
    keys: &KeyCache,
) -> Result<(), ApiError> {
    if !key.record.signing {
        return Ok(());
    }
    match crate::signing::verify(
        keys.store(),
        &key.record.id,
        headers,
        &key.record.signing_keys,
        body,
        crate::keys::now_ms(),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(failed("during the replay check", &e)),
    }
}

/// The model a key may not use, as a 403 naming it.
pub fn check_model(key: &AuthKey, model: &str) -> Result<(), ApiError> {
    let allowed = &key.record.allowed_models;
    if allowed.is_empty() || allowed.iter().any(|m| m == model) {
        Ok(())
    } else {
        Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
            format!("this key may not use the model `{model}`"),
        )
        .with_param("model"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_presented_as_a_bearer_token_or_as_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h).unwrap_err().status, 401);
        h.insert("x-api-key", "k1".parse().expect("header"));
        assert_eq!(presented_key(&h).expect("x-api-key"), "k1");
        h.insert("authorization", "Bearer k2".parse().expect("header"));
        assert_eq!(presented_key(&h).expect("bearer first"), "k2");
        h.insert("authorization", "Basic k2".parse().expect("header"));
        assert!(
            presented_key(&h).is_err(),
            "a malformed Authorization is not skipped"
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", " ".parse().expect("header"));
        assert!(presented_key(&h).is_err());
        // The operator API reads bearer tokens only.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().expect("header"));
        assert!(bearer(&h).is_err());
    }
    use crate::keys::{create, revoke, Authority, KeySpec};
    use crate::store::Store;

    #[tokio::test]
    async fn accepts_only_stored_valid_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        let spec = KeySpec {
            tenant: "acme".into(),
            models: vec!["gpt-4o".into()],
            ..KeySpec::default()
        };
        let (issued, record) = create(&store, &Authority::Global, spec).await.expect("key");
        let secret = issued.secret;
        let keys = KeyCache::new(store.clone());
        let mut h = HeaderMap::new();
        assert_eq!(authenticate(&h, &keys, None).await.unwrap_err().status, 401);
        h.insert(
            "authorization",
            "Bearer llmgw_wrong".parse().expect("header"),
        );
        assert!(authenticate(&h, &keys, None).await.is_err());
        h.insert(
            "authorization",
            format!("Bearer {secret}").parse().expect("header"),
        );
        let k = authenticate(&h, &keys, None).await.expect("valid");
        assert_eq!(k.record.id, record.id);
        assert_eq!(k.tenant.id, "acme");
        assert!(check_model(&k, "gpt-4o").is_ok());
        let e = check_model(&k, "claude-opus").unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.message.contains("`claude-opus`"));
        revoke(&store, &Authority::Global, &record.id)
            .await
            .expect("revoke");
        keys.forget(&record.id);
        let e = authenticate(&h, &keys, None).await.unwrap_err();
        assert!(e.message.contains("revoked"), "{}", e.message);
    }

    #[tokio::test]
    async fn while_the_store_is_unavailable_only_recently_verified_keys_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        let spec = || KeySpec {
            tenant: "acme".into(),
            ..KeySpec::default()
        };
        let seen = create(&store, &Authority::Global, spec())
            .await
            .expect("key")
            .0
            .secret;
        let unseen = create(&store, &Authority::Global, spec())
            .await
            .expect("key")
            .0
            .secret;
        let keys = KeyCache::new(store.clone());
        let with = |secret: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                format!("Bearer {secret}").parse().expect("header"),
            );
            h
        };
        let down = Some("it did not answer");
        let e = authenticate(&with(&seen), &keys, down).await.unwrap_err();
        assert_eq!(e.status, 503, "nothing verified yet: {}", e.message);
        authenticate(&with(&seen), &keys, None)
            .await
            .expect("the store verifies it");
        authenticate(&with(&seen), &keys, down)
            .await
            .expect("verified recently, accepted during the outage");
        let e = authenticate(&with(&unseen), &keys, down).await.unwrap_err();
        assert_eq!(e.status, 503);
        assert!(
            e.message.contains("state store is unavailable"),
            "{}",
            e.message
        );
    }
}

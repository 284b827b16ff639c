//! Request signing, opt-in per key: `x-llmgw-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
//! over `t + "." + body`, keyed with the key's secret.
//!
//! The gateway stores only hashes of secrets; it verifies with the secret presented in the
//! `Authorization` header of the same request. A signature is accepted once (a replay cache in
//! the state store, shared by replicas) and only within [`SKEW`] of the gateway's clock, so a
//! captured request can neither be altered nor sent again.

use crate::error::ApiError;
use crate::store::{Store, StoreError};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use std::time::Duration;

/// The header carrying the signature.
pub const HEADER: &str = "x-llmgw-signature";

/// How far a signature's time may be from the gateway's clock.
pub const SKEW: Duration = Duration::from_secs(300);

/// Which check a signed request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature header.
    #[error("this key requires signed requests: the `x-llmgw-signature` header is missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("the `x-llmgw-signature` header is malformed: expected `t=<unix seconds>,v1=<hex HMAC-SHA256>`")]
    Malformed,
    /// The signature's time is outside the skew window.
    #[error(
        "the request signature is stale: its time is more than {0} s from the gateway's clock"
    )]
    Stale(u64),
    /// The HMAC does not match.
    #[error("the request signature does not match the body")]
    BadSignature,
    /// This signature was seen before.
    #[error("the request signature was already used (replayed request)")]
    Replayed,
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> ApiError {
        let code = match e {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Stale(_) => "signature_stale",
            SignatureError::BadSignature => "signature_invalid",
            SignatureError::Replayed => "signature_replayed",
        };
        ApiError::new(
            http::StatusCode::UNAUTHORIZED,
            "authentication_error",
            code,
            e.to_string(),
        )
    }
}

/// The signature header value for `body` at `t`, as a client computes it.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses `t=…,v1=…` (in any order, spaces allowed).
fn parse(value: &str) -> Result<(i64, Vec<u8>), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => v1 = Some(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    match (t, v1) {
        (Some(t), Some(v1)) if v1.len() == 32 => Ok((t, v1)),
        _ => Err(SignatureError::Malformed),
    }
}

/// Checks everything but the replay cache; returns the signature's time and MAC.
pub fn check(
    headers: &HeaderMap,
    secret: &str,
    body: &[u8],
    now_secs: i64,
) -> Result<(i64, Vec<u8>), SignatureError> {
    let value = headers
        .get(HEADER)
        .ok_or(SignatureError::Missing)?
        .to_str()
        .map_err(|_| SignatureError::Malformed)?;
    let (t, mac_bytes) = parse(value)?;
    if t.abs_diff(now_secs) > SKEW.as_secs() {
        return Err(SignatureError::Stale(SKEW.as_secs()));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&mac_bytes)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok((t, mac_bytes))
}

/// Verifies a signed request of key `key_id`, recording its signature in the replay cache.
pub async fn verify(
    store: &Store,
    key_id: &str,
    headers: &HeaderMap,
    secret: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<Result<(), SignatureError>, StoreError> {
    let (t, mac) = match check(headers, secret, body, now_ms.div_euclid(1000)) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    // Past t + skew the signature is stale anyway, so the cache need not remember it longer.
    let expires_ms = (t + SKEW.as_secs() as i64 + 1) * 1000;
    let id = format!("{key_id}:{}", hex::encode(mac));
    if store.first_use(&id, expires_ms, now_ms).await? {
        Ok(Ok(()))
    } else {
        Ok(Err(SignatureError::Replayed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, v.parse().expect("header"));
        h
    }

    #[test]
    fn every_check_names_itself() {
        let body = br#"{"model":"m"}"#;
        let good = sign("llmgw_s", 1_000, body);
        assert!(check(&headers(&good), "llmgw_s", body, 1_100).is_ok());
        assert_eq!(
            check(&HeaderMap::new(), "llmgw_s", body, 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            check(&headers("v1=zz,t=1"), "llmgw_s", body, 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(&headers(&good), "llmgw_s", body, 1_301),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            check(&headers(&good), "llmgw_s", b"{}", 1_000),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers(&good), "llmgw_other", body, 1_000),
            Err(SignatureError::BadSignature)
        );
    }

    #[tokio::test]
    async fn a_signature_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        let body = b"{}";
        let h = headers(&sign("llmgw_s", 1_000, body));
        let verify = || verify(&store, "k1", &h, "llmgw_s", body, 1_000_000);
        assert_eq!(verify().await.unwrap(), Ok(()));
        assert_eq!(verify().await.unwrap(), Err(SignatureError::Replayed));
    }
}

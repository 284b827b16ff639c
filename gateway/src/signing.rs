//! Request signing, opt-in per key, with Ed25519:
//! `x-llmgw-signature: t=<unix seconds>,ed25519=<base64 signature>`, the signature made with
//! the key's private signing key over the bytes of `t` (decimal, as sent), a `.`, and the
//! request body exactly as sent.
//!
//! The gateway stores only the key's public signing keys ([`crate::store::SigningKey`]): the
//! private key is printed once when the gateway generates it (`llmgw keys create --signing`),
//! or never leaves the client (`--signing-public-key`). Whoever reads a signed request (its
//! bearer secret, signature and body) therefore cannot sign another body. A signature is
//! accepted once (a replay cache in the state store, shared by replicas) and only within
//! [`SKEW`] of the gateway's clock. The HMAC form of earlier versions (`v1=`, keyed with the
//! bearer secret, which anyone holding one request has) is refused with a message saying so.
//!
//! Keys are written in base64 (standard alphabet, padded): a public key as its 32 bytes, a
//! private key as its 32-byte seed. PEM files (`openssl genpkey -algorithm ed25519`, and
//! `openssl pkey -pubout` for the public key) are accepted too.

use crate::error::ApiError;
use crate::store::{SigningKey as StoredKey, Store, StoreError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use http::HeaderMap;
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
    /// The header is not `t=<unix seconds>,ed25519=<base64>`.
    #[error("the `x-llmgw-signature` header is malformed: expected `t=<unix seconds>,ed25519=<base64 Ed25519 signature>`")]
    Malformed,
    /// The header carries the HMAC signature of earlier versions.
    #[error("`v1=` (HMAC) request signatures are no longer accepted: request signing moved to Ed25519; sign `t.body` with the key's signing key and send `t=<unix seconds>,ed25519=<base64 signature>`")]
    Legacy,
    /// The key requires signatures but has no public key to check them with (a key made
    /// before signing moved to Ed25519).
    #[error(
        "this key requires signed requests but has no Ed25519 signing key; rotate it to issue one"
    )]
    NoKey,
    /// The signature's time is outside the skew window.
    #[error(
        "the request signature is stale: its time is more than {0} s from the gateway's clock"
    )]
    Stale(u64),
    /// No valid public key of the key verifies the signature.
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
            SignatureError::Legacy => "signature_unsupported",
            SignatureError::NoKey => "signature_key_missing",
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

/// Why a signing key given by a user cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyFormatError(String);

/// A fresh keypair: the private key (base64 seed, to show once) and the public key (base64).
pub fn generate() -> (String, String) {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    (
        B64.encode(key.to_bytes()),
        B64.encode(key.verifying_key().to_bytes()),
    )
}

/// Reads a public key: base64 of its 32 bytes, or a PEM `PUBLIC KEY`. Returns it as base64.
pub fn parse_public_key(text: &str) -> Result<String, KeyFormatError> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN") {
        VerifyingKey::from_public_key_pem(text).map_err(|e| {
            KeyFormatError(format!(
                "the signing public key is not an Ed25519 PEM public key: {e}"
            ))
        })?
    } else {
        let bytes = decode_32(text).ok_or_else(|| {
            KeyFormatError(
                "the signing public key must be base64 of 32 bytes, or a PEM `PUBLIC KEY`".into(),
            )
        })?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| {
            KeyFormatError("the signing public key is not a valid Ed25519 point".into())
        })?
    };
    Ok(B64.encode(key.to_bytes()))
}

/// Reads a private key: base64 of its 32-byte seed, or a PEM `PRIVATE KEY` (PKCS#8).
pub fn parse_private_key(text: &str) -> Result<SigningKey, KeyFormatError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(text).map_err(|e| {
            KeyFormatError(format!(
                "the signing key is not an Ed25519 PEM private key: {e}"
            ))
        });
    }
    decode_32(text)
        .map(|seed| SigningKey::from_bytes(&seed))
        .ok_or_else(|| {
            KeyFormatError(
                "the signing key must be base64 of its 32-byte seed, or a PEM `PRIVATE KEY`".into(),
            )
        })
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

/// The message a signature covers: `t`, a `.`, and the body.
fn message(t: i64, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{t}.").into_bytes();
    m.extend_from_slice(body);
    m
}

/// The signature header value for `body` at `t`, as a client computes it.
pub fn sign(key: &SigningKey, t: i64, body: &[u8]) -> String {
    let signature = key.sign(&message(t, body));
    format!("t={t},ed25519={}", B64.encode(signature.to_bytes()))
}

/// Parses `t=…,ed25519=…` (in any order, spaces allowed).
fn parse(value: &str) -> Result<(i64, Signature), SignatureError> {
    let mut t = None;
    let mut signature = None;
    let mut legacy = false;
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("ed25519", v)) => {
                let bytes: [u8; 64] = B64
                    .decode(v)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(SignatureError::Malformed)?;
                signature = Some(Signature::from_bytes(&bytes));
            }
            Some(("v1", _)) => legacy = true,
            _ => {}
        }
    }
    match (t, signature) {
        (Some(t), Some(s)) => Ok((t, s)),
        _ if legacy => Err(SignatureError::Legacy),
        _ => Err(SignatureError::Malformed),
    }
}

/// Checks everything but the replay cache against the public keys valid at `now_ms`; returns
/// the signature's time and bytes.
pub fn check(
    headers: &HeaderMap,
    keys: &[StoredKey],
    body: &[u8],
    now_ms: i64,
) -> Result<(i64, [u8; 64]), SignatureError> {
    let value = headers
        .get(HEADER)
        .ok_or(SignatureError::Missing)?
        .to_str()
        .map_err(|_| SignatureError::Malformed)?;
    let (t, signature) = parse(value)?;
    if keys.is_empty() {
        return Err(SignatureError::NoKey);
    }
    if t.abs_diff(now_ms.div_euclid(1000)) > SKEW.as_secs() {
        return Err(SignatureError::Stale(SKEW.as_secs()));
    }
    let msg = message(t, body);
    // `verify_strict` refuses malleable encodings, so one signed request has one signature
    // and the replay cache catches every copy.
    let verified = keys
        .iter()
        .filter(|k| k.not_after.is_none_or(|end| end > now_ms))
        .filter_map(|k| decode_32(&k.public_key))
        .filter_map(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .any(|k| k.verify_strict(&msg, &signature).is_ok());
    if verified {
        Ok((t, signature.to_bytes()))
    } else {
        Err(SignatureError::BadSignature)
    }
}

/// Verifies a signed request of key `key_id`, recording its signature in the replay cache.
pub async fn verify(
    store: &Store,
    key_id: &str,
    headers: &HeaderMap,
    keys: &[StoredKey],
    body: &[u8],
    now_ms: i64,
) -> Result<Result<(), SignatureError>, StoreError> {
    let (t, signature) = match check(headers, keys, body, now_ms) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    // Past t + skew the signature is stale anyway, so the cache need not remember it longer.
    let expires_ms = (t + SKEW.as_secs() as i64 + 1) * 1000;
    let id = format!("{key_id}:{}", hex::encode(signature));
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

    fn pair() -> (SigningKey, StoredKey) {
        let (private, public) = generate();
        let key = parse_private_key(&private).expect("private key");
        assert_eq!(
            B64.encode(key.verifying_key().to_bytes()),
            public,
            "the printed private key belongs to the stored public key"
        );
        (
            key,
            StoredKey {
                public_key: public,
                not_after: None,
            },
        )
    }

    #[test]
    fn every_check_names_itself() {
        let (key, public) = pair();
        let (other, _) = pair();
        let keys = [public];
        let body = br#"{"model":"m"}"#;
        let good = sign(&key, 1_000, body);
        assert!(check(&headers(&good), &keys, body, 1_100_000).is_ok());
        assert_eq!(
            check(&HeaderMap::new(), &keys, body, 1_000_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            check(&headers("ed25519=zz,t=1"), &keys, body, 1_000_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            check(&headers("t=1000,v1=abcd"), &keys, body, 1_000_000),
            Err(SignatureError::Legacy)
        );
        assert_eq!(
            check(&headers(&good), &[], body, 1_000_000),
            Err(SignatureError::NoKey)
        );
        assert_eq!(
            check(&headers(&good), &keys, body, 1_301_000),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            check(&headers(&good), &keys, b"{}", 1_000_000),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers(&sign(&other, 1_000, body)), &keys, body, 1_000_000),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_rotated_out_public_key_verifies_until_its_grace_ends() {
        let (old, mut old_public) = pair();
        let (new, new_public) = pair();
        old_public.not_after = Some(2_000_000);
        let keys = [new_public, old_public];
        let body = b"{}";
        let by_old = headers(&sign(&old, 1_999, body));
        assert!(check(&by_old, &keys, body, 1_999_999).is_ok());
        assert_eq!(
            check(&by_old, &keys, body, 2_000_000),
            Err(SignatureError::BadSignature)
        );
        let by_new = headers(&sign(&new, 2_000, body));
        assert!(check(&by_new, &keys, body, 2_000_000).is_ok());
    }

    #[test]
    fn keys_are_read_from_base64_or_pem() {
        let (private, public) = generate();
        assert_eq!(
            parse_public_key(&format!(" {public}\n")),
            Ok(public.clone())
        );
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_private_key("not base64!").is_err());
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let from_pem = parse_private_key(pem).expect("PKCS#8 PEM");
        let public_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert_eq!(
            parse_public_key(public_pem),
            Ok(B64.encode(from_pem.verifying_key().to_bytes()))
        );
        assert!(parse_private_key(&private).is_ok());
    }

    #[tokio::test]
    async fn a_signature_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        let (key, public) = pair();
        let keys = [public];
        let body = b"{}";
        let h = headers(&sign(&key, 1_000, body));
        let verify = || verify(&store, "k1", &h, &keys, body, 1_000_000);
        assert_eq!(verify().await.unwrap(), Ok(()));
        assert_eq!(verify().await.unwrap(), Err(SignatureError::Replayed));
    }
}

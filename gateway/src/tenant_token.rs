//! Tenant tokens: a platform that fronts the gateway with its own services names, per request,
//! the tenant, project and user it acts for, sealed so that only the gateway can read or change
//! them. The token rides in the `x-llmgw-tenant-token` header of a request made with a gateway
//! key created with `--accept-tenant-tokens`; the request is then routed, budgeted and billed
//! exactly as if a key of that tenant had made it.
//!
//! Format (`v1`): `v1.<kid>.<base64url(nonce || ciphertext)>`, unpadded base64url, at most
//! [`MAX_TOKEN_BYTES`]. The ciphertext is AES-256-GCM-SIV (RFC 8452) with a random 12-byte
//! nonce and the 16-byte tag at its end, under the 32-byte key named by `kid`; the associated
//! data is the token's clear prefix `v1.<kid>`, so the key id cannot be swapped. The plaintext
//! is the JSON object [`Claims`]: `tenant`, optional `project` and `user`, `exp` (Unix seconds)
//! and `jti` (a unique id). A token is accepted once, until [`SKEW`] past its expiry, and its
//! expiry may be at most [`MAX_LIFETIME`] ahead. The replay cache is the state store's, shared
//! by replicas, as for request signing ([`crate::signing`]).
//!
//! Keys come from secret references (`env:NAME`, `file:PATH`): `--tenant-token-key
//! KID=REF[,until=RFC3339]` on `llmgw serve` (repeatable), and `llmgw tenant-token mint --key
//! KID=REF` to mint. A key with `until` is retired then: tokens naming it are refused after.

use crate::app::App;
use crate::error::ApiError;
use crate::keys::{self, AuthKey};
use crate::providers::secret::{self, SecretError};
use crate::store::{Store, StoreError};
use aes_gcm_siv::aead::rand_core::RngCore;
use aes_gcm_siv::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use http::{HeaderMap, StatusCode};
use llmgw_engine::input::{Identity, Principal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The header carrying the token.
pub const HEADER: &str = "x-llmgw-tenant-token";

/// The format version, the token's first field.
pub const VERSION: &str = "v1";

/// The longest token accepted; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// How far past its expiry a token is still accepted (clock skew between platform and gateway).
pub const SKEW: Duration = Duration::from_secs(30);

/// How far ahead a token's expiry may be: it bounds what the replay cache holds.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// A key's length in bytes.
const KEY_BYTES: usize = 32;
/// The nonce's length in bytes.
const NONCE_BYTES: usize = 12;
/// The tag's length in bytes.
const TAG_BYTES: usize = 16;
/// The longest key id.
const MAX_KID: usize = 32;

/// The claims inside a token's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The tenant the request acts for.
    pub tenant: String,
    /// Its project (none: no project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Its user (none: the request's `user` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// A unique id: a token is accepted once.
    pub jti: String,
}

impl Claims {
    /// Checks the names (as for keys) and the id.
    fn validate(&self) -> Result<(), TokenError> {
        let name = |what: &str, v: &str| {
            keys::check_name(what, v).map_err(|e| TokenError::Malformed(e.to_string()))
        };
        name("tenant", &self.tenant)?;
        if let Some(p) = &self.project {
            name("project", p)?;
        }
        if let Some(u) = &self.user {
            name("user", u)?;
        }
        let id_ok = (16..=64).contains(&self.jti.len())
            && self
                .jti
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if id_ok {
            Ok(())
        } else {
            Err(TokenError::Malformed(
                "`jti` must be 16 to 64 letters, digits, `_` or `-`".into(),
            ))
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The gateway has no token keys.
    #[error(
        "this gateway accepts no `x-llmgw-tenant-token`: it was started without --tenant-token-key"
    )]
    NotConfigured,
    /// The presenting key may not carry tokens.
    #[error("this key may not present an `x-llmgw-tenant-token` header: only keys created with --accept-tenant-tokens may")]
    NotAllowed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the `x-llmgw-tenant-token` header is too large: a tenant token is at most {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a `v1` token, or its claims are invalid.
    #[error("the tenant token is malformed: {0}")]
    Malformed(String),
    /// Its key id is not configured.
    #[error("the tenant token names the key id `{0}`, which this gateway does not know")]
    UnknownKey(String),
    /// Its key was retired.
    #[error("the tenant token's key `{0}` was retired at {1}")]
    Retired(String, String),
    /// Decryption failed.
    #[error("the tenant token failed authentication: it was altered, or sealed with another key")]
    BadSeal,
    /// Past its expiry (and the skew).
    #[error("the tenant token has expired")]
    Expired,
    /// Its expiry is too far ahead.
    #[error("the tenant token's lifetime is too long: its expiry may be at most {} s ahead", MAX_LIFETIME.as_secs())]
    TooLong,
    /// Seen before.
    #[error("the tenant token was already used (replayed token)")]
    Replayed,
}

impl TokenError {
    /// The status, OpenAI error type and code a client sees.
    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        let auth = |code| (StatusCode::UNAUTHORIZED, "authentication_error", code);
        match self {
            TokenError::NotConfigured => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "tenant_tokens_not_configured",
            ),
            TokenError::NotAllowed => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "tenant_token_not_allowed",
            ),
            TokenError::TooLarge => auth("tenant_token_too_large"),
            TokenError::Malformed(_) => auth("tenant_token_malformed"),
            TokenError::UnknownKey(_) => auth("tenant_token_unknown_key"),
            TokenError::Retired(..) => auth("tenant_token_key_retired"),
            TokenError::BadSeal => auth("tenant_token_invalid"),
            TokenError::Expired => auth("tenant_token_expired"),
            TokenError::TooLong => auth("tenant_token_lifetime"),
            TokenError::Replayed => auth("tenant_token_replayed"),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        let (status, kind, code) = e.kind();
        ApiError::new(status, kind, code, e.to_string()).with_param(HEADER)
    }
}

/// A key given on the command line that cannot be used; never shows a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    /// Not `KID=REF[,until=TIME]`.
    #[error("write KID=env:NAME or KID=file:PATH, optionally followed by ,until=<RFC 3339 time>")]
    Syntax,
    /// The key id has characters or a length it may not.
    #[error("the key id `{0}` must be 1 to 32 letters, digits, `_` or `-`")]
    BadKid(String),
    /// The reference cannot be resolved.
    #[error("key `{0}`: {1}")]
    Secret(String, String),
    /// The value is not 32 bytes of hex or base64.
    #[error("key `{0}` must decode to exactly 32 bytes (64 hex digits, or base64)")]
    BadLength(String),
    /// `until` is not an RFC 3339 time.
    #[error("key `{0}`: `until` must be an RFC 3339 time such as 2026-12-31T00:00:00Z")]
    BadUntil(String),
    /// Two keys have the same id.
    #[error("the key id `{0}` is given twice")]
    Duplicate(String),
}

/// One sealing key.
pub struct TokenKey {
    kid: String,
    cipher: Aes256GcmSiv,
    /// When it retires (Unix seconds): tokens naming it are refused from then on.
    until: Option<i64>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Base64 of either alphabet, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [alphabet::STANDARD, alphabet::URL_SAFE]
        .iter()
        .find_map(|a| GeneralPurpose::new(a, config).decode(text).ok())
}

/// A key's bytes: 64 hex digits, or base64 of 32 bytes.
fn decode_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    let bytes = if text.len() == 2 * KEY_BYTES && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        decode_base64(text)?
    };
    bytes.try_into().ok()
}

impl TokenKey {
    /// A key from its id and 32 bytes.
    pub fn new(
        kid: &str,
        key: &[u8; KEY_BYTES],
        until: Option<i64>,
    ) -> Result<TokenKey, KeyConfigError> {
        if !valid_kid(kid) {
            return Err(KeyConfigError::BadKid(kid.to_owned()));
        }
        Ok(TokenKey {
            kid: kid.to_owned(),
            cipher: Aes256GcmSiv::new(key.into()),
            until,
        })
    }

    /// Parses `KID=env:NAME` or `KID=file:PATH`, optionally followed by `,until=<RFC 3339>`,
    /// and resolves the reference.
    pub fn parse(arg: &str) -> Result<TokenKey, KeyConfigError> {
        let (kid, rest) = arg.split_once('=').ok_or(KeyConfigError::Syntax)?;
        if !valid_kid(kid) {
            return Err(KeyConfigError::BadKid(kid.chars().take(MAX_KID).collect()));
        }
        let (reference, until) = match rest.rfind(",until=") {
            Some(i) => (&rest[..i], Some(&rest[i + ",until=".len()..])),
            None => (rest, None),
        };
        let until = until
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t.trim())
                    .map(|t| t.timestamp())
                    .map_err(|_| KeyConfigError::BadUntil(kid.to_owned()))
            })
            .transpose()?;
        let value = secret::resolve(reference).map_err(|e| {
            let why = match e {
                SecretError::MissingEnv(name) => {
                    format!("the environment variable `{name}` is not set")
                }
                SecretError::MissingFile(path) => format!("cannot read the file `{path}`"),
                other => other.to_string(),
            };
            KeyConfigError::Secret(kid.to_owned(), why)
        })?;
        let bytes =
            decode_key(value.expose()).ok_or_else(|| KeyConfigError::BadLength(kid.to_owned()))?;
        TokenKey::new(kid, &bytes, until)
    }

    /// Whether it is retired at `now_secs`.
    fn retired(&self, now_secs: i64) -> bool {
        self.until.is_some_and(|t| t <= now_secs)
    }

    /// Seals claims into a token, with a fresh random nonce.
    pub fn seal(&self, claims: &Claims) -> String {
        let prefix = format!("{VERSION}.{}", self.kid);
        let nonce = Aes256GcmSiv::generate_nonce(&mut OsRng);
        let plaintext = serde_json::to_vec(claims).expect("claims serialize");
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: prefix.as_bytes(),
                },
            )
            .expect("a token's claims are far below the AEAD's limits");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(body))
    }

    /// Mints a token for `tenant` (and `project`, `user`) valid for `ttl` from `now_secs`.
    pub fn mint(
        &self,
        tenant: &str,
        project: Option<&str>,
        user: Option<&str>,
        ttl: Duration,
        now_secs: i64,
    ) -> Result<String, TokenError> {
        if self.retired(now_secs) {
            return Err(TokenError::Retired(self.kid.clone(), rfc3339(self.until)));
        }
        if ttl > MAX_LIFETIME {
            return Err(TokenError::TooLong);
        }
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let claims = Claims {
            tenant: tenant.to_owned(),
            project: project.map(str::to_owned),
            user: user.map(str::to_owned),
            exp: now_secs.saturating_add(ttl.as_secs() as i64),
            jti: URL_SAFE_NO_PAD.encode(id),
        };
        claims.validate()?;
        Ok(self.seal(&claims))
    }
}

fn rfc3339(secs: Option<i64>) -> String {
    secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The keys a gateway opens tokens with (`--tenant-token-key`); none by default.
#[derive(Debug, Default)]
pub struct TenantTokens {
    keys: Vec<TokenKey>,
}

impl TenantTokens {
    /// Parses every `--tenant-token-key` value.
    pub fn from_args(args: &[String]) -> Result<TenantTokens, KeyConfigError> {
        let mut keys: Vec<TokenKey> = Vec::new();
        for arg in args {
            let key = TokenKey::parse(arg)?;
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(KeyConfigError::Duplicate(key.kid));
            }
            keys.push(key);
        }
        Ok(TenantTokens { keys })
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Opens a token at `now_secs`: every check but the replay cache.
    pub fn open(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let malformed = |why: &str| TokenError::Malformed(why.to_owned());
        let mut parts = token.split('.');
        let (Some(version), Some(kid), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected `v1.<key id>.<base64url>`"));
        };
        if version != VERSION {
            return Err(malformed("its version must be `v1`"));
        }
        if !valid_kid(kid) {
            return Err(malformed(
                "its key id must be 1 to 32 letters, digits, `_` or `-`",
            ));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| malformed("its body is not unpadded base64url"))?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(malformed("its body is too short"));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
        if key.retired(now_secs) {
            return Err(TokenError::Retired(kid.to_owned(), rfc3339(key.until)));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let prefix = &token[..version.len() + 1 + kid.len()];
        let plaintext = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: prefix.as_bytes(),
                },
            )
            .map_err(|_| TokenError::BadSeal)?;
        let claims: Claims = serde_json::from_slice(&plaintext)
            .map_err(|e| TokenError::Malformed(format!("its claims are not valid: {e}")))?;
        claims.validate()?;
        let skew = SKEW.as_secs() as i64;
        if claims.exp.saturating_add(skew) < now_secs {
            return Err(TokenError::Expired);
        }
        if claims.exp > now_secs.saturating_add(MAX_LIFETIME.as_secs() as i64 + skew) {
            return Err(TokenError::TooLong);
        }
        Ok(claims)
    }
}

/// Records an opened token's id in the replay cache of `store` (shared by replicas, as for
/// request signing); a token whose id is already there is refused.
pub async fn remember(
    store: &Store,
    token: &str,
    claims: &Claims,
    now_ms: i64,
) -> Result<Result<(), TokenError>, StoreError> {
    // Past exp + skew the token is expired anyway, so the cache need not remember it longer.
    let expires_ms = (claims.exp + SKEW.as_secs() as i64 + 1) * 1000;
    let kid = token.split('.').nth(1).unwrap_or_default();
    let id = format!("tenant-token:{kid}:{}", claims.jti);
    if store.first_use(&id, expires_ms, now_ms).await? {
        Ok(Ok(()))
    } else {
        Ok(Err(TokenError::Replayed))
    }
}

/// On whose behalf a tenant token makes its request.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    tenant: Arc<Principal>,
    project: Arc<Principal>,
    user: Option<Arc<Principal>>,
}

impl TokenIdentity {
    /// Puts the token's tenant, project and user in place of the presenting key's; the key
    /// (`key.id`, `key.labels`) stays the presenting key. Without a user in the token, the
    /// user stays the request's `user` field (a key that accepts tokens is never bound to one).
    pub fn apply(&self, identity: &mut Identity) {
        identity.tenant = self.tenant.clone();
        identity.project = self.project.clone();
        if let Some(u) = &self.user {
            identity.user = u.clone();
        }
    }
}

fn principal(id: &str) -> Arc<Principal> {
    Arc::new(Principal {
        id: id.to_owned(),
        labels: Default::default(),
    })
}

/// The identity named by a request's tenant token, checked and recorded as used; `None` when
/// the request carries none. While the state store is unavailable (`fault`), a token cannot be
/// checked against the replay cache and the request gets the store's 503.
pub async fn resolve(
    app: &App,
    headers: &HeaderMap,
    key: &AuthKey,
    fault: Option<&ApiError>,
) -> Result<Option<TokenIdentity>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if !app.tenant_tokens.enabled() {
        return Err(TokenError::NotConfigured.into());
    }
    if !key.record.tenant_tokens {
        return Err(TokenError::NotAllowed.into());
    }
    // Bounded before it is read as text, too.
    if value.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge.into());
    }
    let token = match (value.to_str(), values.next()) {
        (Ok(t), None) => t.trim(),
        _ => {
            return Err(TokenError::Malformed("expected one header of visible ASCII".into()).into())
        }
    };
    // The checks that need no store first, so that a bad token is named even during an outage.
    let now_ms = keys::now_ms();
    let claims = app.tenant_tokens.open(token, now_ms.div_euclid(1000))?;
    if let Some(refusal) = fault {
        return Err(refusal.clone());
    }
    let failed = |doing, e: &StoreError| crate::store::health::failed(doing, e);
    remember(&app.state, token, &claims, now_ms)
        .await
        .map_err(|e| failed("during the tenant token replay check", &e))??;
    let labels = keys::tenant_labels(&app.state, &claims.tenant)
        .await
        .map_err(|e| failed("reading tenant labels", &e))?;
    Ok(Some(TokenIdentity {
        tenant: Arc::new(Principal {
            id: claims.tenant,
            labels,
        }),
        project: principal(claims.project.as_deref().unwrap_or("")),
        user: claims.user.as_deref().map(principal),
    }))
}

/// `llmgw tenant-token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a token and print it.
    Mint(MintArgs),
}

/// Options of `llmgw tenant-token mint`.
#[derive(Debug, clap::Args)]
pub struct MintArgs {
    /// The sealing key: `KID=env:NAME` or `KID=file:PATH` (32 bytes, hex or base64).
    #[arg(long, value_name = "KID=REF")]
    pub key: String,
    /// The tenant the token acts for.
    #[arg(long)]
    pub tenant: String,
    /// Its project.
    #[arg(long)]
    pub project: Option<String>,
    /// Its user.
    #[arg(long)]
    pub user: Option<String>,
    /// How long it is valid (`90s`, `5m`; at most 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub ttl: String,
}

/// Runs a `tenant-token` subcommand; returns what to print, or a one-line error.
pub fn run(cmd: TokenCommand) -> Result<String, String> {
    let TokenCommand::Mint(args) = cmd;
    let key = TokenKey::parse(&args.key).map_err(|e| format!("--key: {e}"))?;
    let ttl = keys::parse_duration(&args.ttl).map_err(|e| format!("--ttl: {e}"))?;
    let token = key
        .mint(
            &args.tenant,
            args.project.as_deref(),
            args.user.as_deref(),
            ttl,
            keys::now_ms().div_euclid(1000),
        )
        .map_err(|e| match e {
            TokenError::TooLong => format!("--ttl: at most {} s", MAX_LIFETIME.as_secs()),
            TokenError::Malformed(why) => why,
            other => other.to_string(),
        })?;
    Ok(format!("{token}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key(kid: &str, byte: u8, until: Option<i64>) -> TokenKey {
        TokenKey::new(kid, &[byte; KEY_BYTES], until).expect("key")
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            tenant: "acme".into(),
            project: Some("search".into()),
            user: Some("alice".into()),
            exp,
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        }
    }

    fn tokens(keys: Vec<TokenKey>) -> TenantTokens {
        TenantTokens { keys }
    }

    #[test]
    fn a_sealed_token_opens_with_its_key_only() {
        let k1 = key("k1", 1, None);
        let t = k1.seal(&claims(NOW + 60));
        assert!(t.starts_with("v1.k1.") && t.len() < MAX_TOKEN_BYTES, "{t}");
        let all = tokens(vec![key("k1", 1, None), key("k2", 2, None)]);
        assert_eq!(all.open(&t, NOW), Ok(claims(NOW + 60)));
        // Two tokens of the same claims differ: the nonce is random.
        assert_ne!(k1.seal(&claims(NOW + 60)), t);
        // The same id with another key, or the token relabelled to the other key id: the
        // key id is authenticated as associated data.
        let other = tokens(vec![key("k1", 9, None)]);
        assert_eq!(other.open(&t, NOW), Err(TokenError::BadSeal));
        let relabelled = t.replacen("v1.k1.", "v1.k2.", 1);
        let both = tokens(vec![key("k1", 2, None), key("k2", 2, None)]);
        assert!(both
            .open(&key("k1", 2, None).seal(&claims(NOW)), NOW)
            .is_ok());
        let sealed_k1 = key("k1", 2, None)
            .seal(&claims(NOW))
            .replacen("v1.k1.", "v1.k2.", 1);
        assert_eq!(both.open(&sealed_k1, NOW), Err(TokenError::BadSeal));
        assert_eq!(
            tokens(vec![key("k3", 1, None)]).open(&relabelled, NOW),
            Err(TokenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn every_byte_of_the_body_is_authenticated() {
        let k = tokens(vec![key("k1", 1, None)]);
        let t = key("k1", 1, None).seal(&claims(NOW));
        let (prefix, body) = t.rsplit_once('.').expect("three parts");
        let bytes = URL_SAFE_NO_PAD.decode(body).expect("base64");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let tampered = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&b));
            assert_eq!(k.open(&tampered, NOW), Err(TokenError::BadSeal), "byte {i}");
        }
    }

    #[test]
    fn time_checks_allow_a_small_skew_and_bound_the_lifetime() {
        let k = tokens(vec![key("k1", 1, None)]);
        let seal = |exp| key("k1", 1, None).seal(&claims(exp));
        assert!(k.open(&seal(NOW - 30), NOW).is_ok(), "within the skew");
        assert_eq!(k.open(&seal(NOW - 31), NOW), Err(TokenError::Expired));
        assert!(k.open(&seal(NOW + 3600), NOW).is_ok());
        assert_eq!(k.open(&seal(NOW + 3700), NOW), Err(TokenError::TooLong));
    }

    #[test]
    fn a_retired_key_opens_tokens_until_its_time_only() {
        let k = tokens(vec![key("old", 1, Some(NOW + 10))]);
        let t = key("old", 1, None).seal(&claims(NOW + 60));
        assert!(k.open(&t, NOW + 9).is_ok());
        let e = k.open(&t, NOW + 10).unwrap_err();
        assert!(
            matches!(e, TokenError::Retired(ref kid, _) if kid == "old"),
            "{e}"
        );
        assert!(
            e.to_string().contains("retired at 2027-01-15T08:00:10Z"),
            "{e}"
        );
        assert!(key("old", 1, Some(NOW))
            .mint("acme", None, None, Duration::from_secs(60), NOW)
            .is_err());
    }

    #[test]
    fn malformed_tokens_are_named_before_any_key_is_tried() {
        let k = tokens(vec![key("k1", 1, None)]);
        let big = format!("v1.k1.{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(k.open(&big, NOW), Err(TokenError::TooLarge));
        for bad in [
            "",
            "v1.k1",
            "v1.k1.AAAA.x",
            "v2.k1.AAAA",
            "v1.k!.AAAA",
            "v1.k1.A+A/",
            "v1.k1.AAAA",
        ] {
            assert!(
                matches!(k.open(bad, NOW), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        // Valid seal, invalid claims.
        let mut c = claims(NOW);
        c.tenant = "a b".into();
        let e = k.open(&key("k1", 1, None).seal(&c), NOW).unwrap_err();
        assert!(e.to_string().contains("tenant `a b`"), "{e}");
        c = claims(NOW);
        c.jti = "short".into();
        assert!(matches!(
            k.open(&key("k1", 1, None).seal(&c), NOW),
            Err(TokenError::Malformed(_))
        ));
        let unknown_field = serde_json::json!({"tenant":"acme","exp":NOW,"jti":"AAAAAAAAAAAAAAAAAAAAAA","projcet":"x"});
        assert!(serde_json::from_value::<Claims>(unknown_field).is_err());
    }

    #[test]
    fn minted_tokens_carry_the_claims_and_a_fresh_id() {
        let k = key("k1", 1, None);
        let open = tokens(vec![key("k1", 1, None)]);
        let a = k
            .mint("acme", Some("p"), None, Duration::from_secs(300), NOW)
            .expect("mint");
        let b = k
            .mint("acme", Some("p"), None, Duration::from_secs(300), NOW)
            .expect("mint");
        let (ca, cb) = (
            open.open(&a, NOW).expect("a"),
            open.open(&b, NOW).expect("b"),
        );
        assert_eq!(
            (ca.tenant.as_str(), ca.project.as_deref(), ca.user),
            ("acme", Some("p"), None)
        );
        assert_eq!(ca.exp, NOW + 300);
        assert_ne!(ca.jti, cb.jti);
        assert_eq!(
            k.mint("acme", None, None, Duration::from_secs(3601), NOW),
            Err(TokenError::TooLong)
        );
        assert!(k
            .mint("a b", None, None, Duration::from_secs(60), NOW)
            .is_err());
    }

    #[test]
    fn keys_parse_from_references_in_hex_or_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            format!("file:{}", p.display())
        };
        let hex_ref = write("hex", &format!("{}\n", "ab".repeat(32)));
        let b64_ref = write(
            "b64",
            &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        );
        let url_ref = write("url", &URL_SAFE_NO_PAD.encode([0xfbu8; 32]));
        let short_ref = write("short", &"ab".repeat(16));
        for r in [&hex_ref, &b64_ref, &url_ref] {
            assert!(TokenKey::parse(&format!("k1={r}")).is_ok(), "{r}");
        }
        let k =
            TokenKey::parse(&format!("k1={hex_ref},until=2026-12-31T00:00:00Z")).expect("until");
        assert_eq!(k.until, Some(1_798_675_200));
        assert_eq!(
            TokenKey::parse(&format!("k1={short_ref}")).unwrap_err(),
            KeyConfigError::BadLength("k1".into())
        );
        assert_eq!(
            TokenKey::parse(&format!("k1={hex_ref},until=soon")).unwrap_err(),
            KeyConfigError::BadUntil("k1".into())
        );
        assert_eq!(
            TokenKey::parse("no-equals").unwrap_err(),
            KeyConfigError::Syntax
        );
        assert!(matches!(
            TokenKey::parse("k.1=env:X").unwrap_err(),
            KeyConfigError::BadKid(_)
        ));
        let e = TokenKey::parse("k1=env:LLMGW_TEST_SURELY_UNSET").unwrap_err();
        assert!(
            e.to_string()
                .contains("`LLMGW_TEST_SURELY_UNSET` is not set"),
            "{e}"
        );
        let e = TokenKey::parse("k1=0123456789abcdef")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("0123456789abcdef"),
            "a pasted key is never echoed: {e}"
        );
        let twice = [format!("k1={hex_ref}"), format!("k1={b64_ref}")];
        assert_eq!(
            TenantTokens::from_args(&twice).unwrap_err(),
            KeyConfigError::Duplicate("k1".into())
        );
    }

    #[tokio::test]
    async fn a_token_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        let k = tokens(vec![key("k1", 1, None)]);
        let now_ms = keys::now_ms();
        let t = key("k1", 1, None)
            .mint("acme", None, None, Duration::from_secs(60), now_ms / 1000)
            .expect("mint");
        let claims = k.open(&t, now_ms / 1000).expect("opens");
        let remember = || remember(&store, &t, &claims, now_ms);
        assert_eq!(remember().await.unwrap(), Ok(()));
        assert_eq!(remember().await.unwrap(), Err(TokenError::Replayed));
    }
}

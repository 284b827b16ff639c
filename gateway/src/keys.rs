//! Gateway keys: issuing, rotating and revoking them, and looking them up per request.
//!
//! A key is a non-secret id, a tenant (and optionally a project and user), labels, allowed
//! models, an expiry, and one or two secrets. Only the SHA-256 of a secret is ever stored
//! ([`crate::store::KeyRecord`]); the secret itself is shown once, when it is issued. A rotation
//! adds a new secret and keeps the old one valid until its grace window ends.
//!
//! A key charges only the principals it owns. A key bound to a user (`--user`) acts for that
//! user alone; any other key acts for no user unless it may assert end users
//! (`--assert-users`: names, glob patterns, or `*` for all), and then only for those (see
//! [`may_assert`]). A signing key ([`crate::signing`]) also holds Ed25519 public keys; its
//! private signing key is shown once when the gateway generates it, and never stored.
//!
//! Requests look keys up through [`KeyCache`], which keeps each lookup for at most
//! [`CACHE_TTL`], so that a revocation written by any replica or by `llmgw keys revoke` takes
//! effect everywhere within that time. While the state store is unavailable, keys this replica
//! verified in the store within [`OUTAGE_TTL`] are still accepted ([`KeyCache::lookup_verified`]);
//! a revocation made during the outage cannot be seen until the store is back.

use crate::store::{KeyRecord, SecretHash, SigningKey, Store, StoreError};
use llmgw_engine::input::Principal;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The prefix of every secret the gateway issues.
pub const KEY_PREFIX: &str = "llmgw_";

/// Characters of a secret kept in the record to recognise it (`llmgw_` and six more).
const SHOWN_PREFIX: usize = 12;

/// How long a key lookup is reused before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// How long a key verified in the store stays usable while the store is unavailable.
pub const OUTAGE_TTL: Duration = Duration::from_secs(600);

/// Lookups kept at most; the cache is emptied of stale entries (or wholly) past this.
const CACHE_CAPACITY: usize = 10_000;

/// The id of the key registered by `--dev-key`.
pub const DEV_KEY_ID: &str = "dev";
/// The tenant of the key registered by `--dev-key`.
pub const DEV_TENANT: &str = "dev";
/// The id of the key generated on the first start.
pub const LOCAL_KEY_ID: &str = "local";
/// The tenant of the key generated on the first start.
pub const DEFAULT_TENANT: &str = "default";

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No key with this id (in the caller's tenant).
    #[error("no key `{0}`")]
    NotFound(String),
    /// A field of the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret: the prefix and 43 base-62 characters (about 256 bits).
pub fn generate_key() -> String {
    format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 43)
    )
}

/// A fresh key id: `key_` and 16 lower-case base-36 characters.
pub fn new_key_id() -> String {
    let raw = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let id: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("key_{id}")
}

/// Parses a duration such as `90s`, `15m`, `24h`, `30d` or `2w` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, KeyError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| KeyError::Invalid(format!("`{text}` is not a duration like 30d or 24h")))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(KeyError::Invalid(format!(
                "`{text}`: the unit must be s, m, h, d or w"
            )))
        }
    };
    n.checked_mul(secs)
        .filter(|s| *s <= MAX_DURATION_SECS)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            KeyError::Invalid(format!(
                "`{text}` is too long: a key duration is at most 100 years (36500d)"
            ))
        })
}

/// The longest expiry or grace period a key may be given: 100 years.
const MAX_DURATION_SECS: u64 = 36_500 * 86_400;

/// A duration in milliseconds, saturating instead of wrapping.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Checks a tenant, project or user id: 1 to 128 characters of letters, digits, `.`, `_`, `-`
/// and `@`.
pub fn check_name(what: &str, name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "{what} `{name}` must be 1 to 128 letters, digits, `.`, `_`, `-` or `@`"
        )))
    }
}

/// Whether a key may act for the end user `user` named by a request: its own bound user, or
/// one its `assert_users` patterns match.
pub fn may_assert(record: &KeyRecord, user: &str) -> bool {
    match &record.user {
        Some(bound) => bound == user,
        None => record
            .assert_users
            .iter()
            .any(|p| wildmatch::WildMatch::new(p).matches(user)),
    }
}

/// Splits `svc-*, bob` into patterns.
pub fn parse_patterns(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a pattern of end users: `*`, or 1 to 128 of the characters of a user id and the
/// wildcards `*` and `?`.
fn check_pattern(pattern: &str) -> Result<(), KeyError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 128
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '*' | '?'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "user pattern `{pattern}` must be 1 to 128 letters, digits, `.`, `_`, `-`, `@` or the wildcards `*` and `?`"
        )))
    }
}

/// Parses `k=v` labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, KeyError> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(KeyError::Invalid(format!(
                "label `{item}` must be written key=value"
            ))),
        })
        .collect()
}

/// What a new key is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpec {
    /// Its tenant.
    pub tenant: String,
    /// Its project.
    pub project: Option<String>,
    /// Its user: requests then act for this user, and may name no other in their `user` field.
    pub user: Option<String>,
    /// End users a key without a user may name in the `user` field (names, glob patterns, `*`).
    pub assert_users: Vec<String>,
    /// Labels rules can read.
    pub labels: BTreeMap<String, String>,
    /// Models it may use; empty means all.
    pub models: Vec<String>,
    /// Lifetime from now.
    pub expires_in: Option<Duration>,
    /// Requests must be signed: with a keypair the gateway generates, or with the key of
    /// `signing_public_key`.
    pub signing: bool,
    /// A client-held Ed25519 public key (base64 or PEM) to verify signatures with; implies
    /// `signing`.
    pub signing_public_key: Option<String>,
    /// A tenant admin key.
    pub admin: bool,
    /// May present tenant tokens (`crate::tenant_token`); only the gateway's admin creates such.
    pub tenant_tokens: bool,
}

impl KeySpec {
    /// Reads a spec from the admin API's JSON body.
    pub fn from_json(v: &Value) -> Result<KeySpec, KeyError> {
        let text = |f: &str| -> Result<Option<String>, KeyError> {
            match v.get(f) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(KeyError::Invalid(format!("`{f}` must be a string"))),
            }
        };
        let flag = |f: &str| -> Result<bool, KeyError> {
            match v.get(f) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(KeyError::Invalid(format!("`{f}` must be a boolean"))),
            }
        };
        let labels = match v.get("labels") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(KeyError::Invalid("label values must be strings".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(KeyError::Invalid("`labels` must be an object".into())),
        };
        let models = match v.get("models") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|m| {
                    m.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| KeyError::Invalid("`models` must hold strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(KeyError::Invalid("`models` must be an array".into())),
        };
        let assert_users = match v.get("assert_users") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => parse_patterns(s),
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| KeyError::Invalid("`assert_users` must hold strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(KeyError::Invalid(
                    "`assert_users` must be an array of user names or patterns".into(),
                ))
            }
        };
        Ok(KeySpec {
            tenant: text("tenant")?.unwrap_or_default(),
            project: text("project")?,
            user: text("user")?,
            assert_users,
            labels,
            models,
            expires_in: text("expires")?.map(|e| parse_duration(&e)).transpose()?,
            signing: flag("signing")?,
            signing_public_key: text("signing_public_key")?,
            admin: flag("admin")?,
            tenant_tokens: flag("tenant_tokens")?,
        })
    }

    /// The spec as the admin API's JSON body.
    pub fn to_json(&self) -> Value {
        json!({
            "tenant": self.tenant,
            "project": self.project,
            "user": self.user,
            "assert_users": self.assert_users,
            "labels": self.labels,
            "models": self.models,
            "expires": self.expires_in.map(|d| format!("{}s", d.as_secs())),
            "signing": self.signing,
            "signing_public_key": self.signing_public_key,
            "admin": self.admin,
            "tenant_tokens": self.tenant_tokens,
        })
    }

    /// Checks the spec.
    pub fn validate(&self) -> Result<(), KeyError> {
        check_name("tenant", &self.tenant)?;
        if let Some(p) = &self.project {
            check_name("project", p)?;
        }
        if let Some(u) = &self.user {
            check_name("user", u)?;
            if !self.assert_users.is_empty() {
                return Err(KeyError::Invalid(format!(
                    "a key bound to the user `{u}` acts for that user only; it cannot also assert users"
                )));
            }
        }
        for p in &self.assert_users {
            check_pattern(p)?;
        }
        if let Some(k) = &self.signing_public_key {
            crate::signing::parse_public_key(k).map_err(|e| KeyError::Invalid(e.to_string()))?;
        }
        if self.tenant_tokens && (self.user.is_some() || self.admin) {
            return Err(KeyError::Invalid(
                "a key that accepts tenant tokens can be neither bound to a user (the token names \
                 the user) nor an admin key"
                    .into(),
            ));
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(KeyError::Invalid("a model name is empty".into()));
        }
        Ok(())
    }

    /// A new key record, and its secret (and private signing key) to show once.
    pub fn issue(&self, now_ms: i64) -> Result<(Issued, KeyRecord), KeyError> {
        self.validate()?;
        let secret = generate_key();
        let (signing_key, signing_keys) = if self.signing || self.signing_public_key.is_some() {
            let (private, public) = new_signing_key(self.signing_public_key.as_deref())?;
            (private, vec![public])
        } else {
            (None, Vec::new())
        };
        let record = KeyRecord {
            id: new_key_id(),
            prefix: secret[..SHOWN_PREFIX].to_owned(),
            tenant: self.tenant.clone(),
            project: self.project.clone(),
            user: self.user.clone(),
            assert_users: self.assert_users.clone(),
            labels: self.labels.clone(),
            allowed_models: self.models.clone(),
            expires_at: self.expires_in.map(|d| now_ms.saturating_add(millis(d))),
            created_at: now_ms,
            revoked_at: None,
            signing: !signing_keys.is_empty(),
            signing_keys,
            admin: self.admin,
            tenant_tokens: self.tenant_tokens,
            secrets: vec![SecretHash {
                sha256: hash_secret(&secret),
                not_after: None,
            }],
        };
        Ok((
            Issued {
                secret,
                signing_key,
            },
            record,
        ))
    }
}

/// A signing public key to store: the one given (a client-held key), or that of a keypair
/// generated now, whose private key is returned to be shown once.
fn new_signing_key(given: Option<&str>) -> Result<(Option<String>, SigningKey), KeyError> {
    let (private, public) = match given {
        Some(k) => (
            None,
            crate::signing::parse_public_key(k).map_err(|e| KeyError::Invalid(e.to_string()))?,
        ),
        None => {
            let (private, public) = crate::signing::generate();
            (Some(private), public)
        }
    };
    Ok((
        private,
        SigningKey {
            public_key: public,
            not_after: None,
        },
    ))
}

/// What issuing or rotating a key shows once: its secret and, when the gateway generated a
/// signing keypair, the private signing key. Neither is stored.
pub struct Issued {
    /// The bearer secret.
    pub secret: String,
    /// The private Ed25519 signing key (base64 of its seed).
    pub signing_key: Option<String>,
}

impl Issued {
    /// The answer of `keys create`, `keys rotate` and the admin API: the key, its secret and
    /// its private signing key, if any.
    pub fn answer(&self, record: &KeyRecord, now_ms: i64) -> Value {
        let mut v = json!({ "key": view(record, now_ms), "secret": self.secret });
        if let Some(k) = &self.signing_key {
            v["signing_key"] = Value::String(k.clone());
        }
        v
    }
}

/// Whether a key may be used now, and why not.
pub fn status(record: &KeyRecord, now_ms: i64) -> &'static str {
    if record.revoked_at.is_some_and(|t| t <= now_ms) {
        "revoked"
    } else if record.expires_at.is_some_and(|t| t <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// A key as `keys list`, `keys show` and the admin API show it: never a secret, nor a hash.
pub fn view(record: &KeyRecord, now_ms: i64) -> Value {
    let grace: Option<i64> = record
        .secrets
        .iter()
        .filter_map(|s| s.not_after)
        .filter(|&t| t > now_ms)
        .max();
    json!({
        "id": record.id,
        "prefix": record.prefix,
        "tenant": record.tenant,
        "project": record.project,
        "user": record.user,
        "assert_users": record.assert_users,
        "labels": record.labels,
        "models": record.allowed_models,
        "signing": record.signing,
        "signing_public_key": record
            .signing_keys
            .iter()
            .find(|k| k.not_after.is_none())
            .map(|k| &k.public_key),
        "admin": record.admin,
        "tenant_tokens": record.tenant_tokens,
        "status": status(record, now_ms),
        "created_at": rfc3339(record.created_at),
        "expires_at": record.expires_at.map(rfc3339),
        "revoked_at": record.revoked_at.map(rfc3339),
        "previous_secret_valid_until": grace.map(rfc3339),
    })
}

/// Which keys a caller may manage: every tenant's, or one tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The gateway's admin: every tenant.
    Global,
    /// A tenant admin: its own tenant only.
    Tenant(String),
}

impl Authority {
    /// The tenant a listing is restricted to: the caller's own, or the one asked for.
    pub fn tenant_filter(&self, asked: Option<&str>) -> Result<Option<String>, KeyError> {
        match (self, asked) {
            (Authority::Global, a) => Ok(a.map(str::to_owned)),
            (Authority::Tenant(t), None) => Ok(Some(t.clone())),
            (Authority::Tenant(t), Some(a)) if a == t => Ok(Some(t.clone())),
            (Authority::Tenant(_), Some(a)) => Err(KeyError::Forbidden(format!(
                "this admin key may not act for the tenant `{a}`"
            ))),
        }
    }

    fn sees(&self, record: &KeyRecord) -> bool {
        match self {
            Authority::Global => true,
            Authority::Tenant(t) => *t == record.tenant,
        }
    }
}

/// Creates a key; a tenant admin creates keys of its own tenant only.
pub async fn create(
    store: &Store,
    who: &Authority,
    mut spec: KeySpec,
) -> Result<(Issued, KeyRecord), KeyError> {
    match who {
        Authority::Tenant(t) if spec.tenant.is_empty() => spec.tenant = t.clone(),
        Authority::Tenant(t) if *t != spec.tenant => {
            return Err(KeyError::Forbidden(format!(
                "this admin key may not create keys of the tenant `{}`",
                spec.tenant
            )))
        }
        _ => {}
    }
    if spec.tenant_tokens && *who != Authority::Global {
        return Err(KeyError::Forbidden(
            "only the gateway's admin token may create keys that accept tenant tokens".into(),
        ));
    }
    let (issued, record) = spec.issue(now_ms())?;
    store.put_key(&record).await?;
    Ok((issued, record))
}

/// The keys the caller may see, of one tenant or all.
pub async fn list(
    store: &Store,
    who: &Authority,
    tenant: Option<&str>,
) -> Result<Vec<KeyRecord>, KeyError> {
    let tenant = who.tenant_filter(tenant)?;
    Ok(store.keys(tenant.as_deref()).await?)
}

/// One key; a key of another tenant is reported as missing to a tenant admin.
pub async fn show(store: &Store, who: &Authority, id: &str) -> Result<KeyRecord, KeyError> {
    match store.key(id).await? {
        Some(r) if who.sees(&r) => Ok(r),
        _ => Err(KeyError::NotFound(id.to_owned())),
    }
}

/// Issues a new secret and, for a signing key, a new signing keypair (or registers
/// `signing_public_key`, which makes any key a signing key); the secrets and public signing
/// keys valid now stay valid for `grace` more.
pub async fn rotate(
    store: &Store,
    who: &Authority,
    id: &str,
    grace: Duration,
    signing_public_key: Option<&str>,
) -> Result<(Issued, KeyRecord), KeyError> {
    let mut record = show(store, who, id).await?;
    let now = now_ms();
    if status(&record, now) == "revoked" {
        return Err(KeyError::Invalid(format!(
            "the key `{id}` is revoked; create a new one"
        )));
    }
    let secret = generate_key();
    let mut secrets = vec![SecretHash {
        sha256: hash_secret(&secret),
        not_after: None,
    }];
    secrets.extend(in_grace(&record.secrets, |s| &mut s.not_after, now, grace));
    let mut signing_key = None;
    if record.signing || signing_public_key.is_some() {
        let (private, public) = new_signing_key(signing_public_key)?;
        signing_key = private;
        let mut keys = vec![public];
        keys.extend(in_grace(
            &record.signing_keys,
            |k| &mut k.not_after,
            now,
            grace,
        ));
        record.signing_keys = keys;
        record.signing = true;
    }
    record.secrets = secrets;
    record.prefix = secret[..SHOWN_PREFIX].to_owned();
    store.put_key(&record).await?;
    Ok((
        Issued {
            secret,
            signing_key,
        },
        record,
    ))
}

/// The entries valid at `now`, each ending within `grace` (none when `grace` is zero): what a
/// rotation keeps of a key's secrets and public signing keys.
fn in_grace<T: Clone>(
    items: &[T],
    not_after: fn(&mut T) -> &mut Option<i64>,
    now: i64,
    grace: Duration,
) -> Vec<T> {
    if grace.is_zero() {
        return Vec::new();
    }
    let until = now.saturating_add(millis(grace));
    items
        .iter()
        .cloned()
        .filter_map(|mut item| {
            let end = not_after(&mut item);
            match *end {
                Some(t) if t <= now => None,
                t => {
                    *end = Some(t.map_or(until, |t| t.min(until)));
                    Some(item)
                }
            }
        })
        .collect()
}

/// Revokes a key at once.
pub async fn revoke(store: &Store, who: &Authority, id: &str) -> Result<KeyRecord, KeyError> {
    let mut record = show(store, who, id).await?;
    if record.revoked_at.is_none() {
        record.revoked_at = Some(now_ms());
        store.put_key(&record).await?;
    }
    Ok(record)
}

/// A key that authenticated a request, with the principals its requests act as.
#[derive(Debug)]
pub struct AuthKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The key as a principal (`key.id`, `key.labels`).
    pub key: Arc<Principal>,
    /// Its project (`project.id` empty when none).
    pub project: Arc<Principal>,
    /// Its tenant.
    pub tenant: Arc<Principal>,
    /// Its user, when the key is bound to one.
    pub user: Option<Arc<Principal>>,
}

impl AuthKey {
    fn new(record: KeyRecord, tenant_labels: BTreeMap<String, String>) -> AuthKey {
        let principal = |id: &str| {
            Arc::new(Principal {
                id: id.to_owned(),
                labels: BTreeMap::new(),
            })
        };
        AuthKey {
            key: Arc::new(Principal {
                id: record.id.clone(),
                labels: record.labels.clone(),
            }),
            project: principal(record.project.as_deref().unwrap_or("")),
            tenant: Arc::new(Principal {
                id: record.tenant.clone(),
                labels: tenant_labels,
            }),
            user: record.user.as_deref().map(principal),
            record,
        }
    }
}

/// The outcome of looking a secret up.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The secret authenticates this key now.
    Valid(Arc<AuthKey>),
    /// The key exists but cannot be used: `revoked`, `expired` or `rotated` (its grace ended).
    Refused(&'static str),
    /// No key has this secret.
    Unknown,
}

struct Cached {
    at: Instant,
    key: Option<Arc<AuthKey>>,
}

/// Key lookups by secret, each reused for at most [`CACHE_TTL`].
pub struct KeyCache {
    store: Store,
    ttl: Duration,
    entries: Mutex<HashMap<String, Cached>>,
    /// Keys the store last found valid, by secret hash, for [`OUTAGE_TTL`].
    verified: moka::sync::Cache<String, Arc<AuthKey>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("ttl", &self.ttl).finish()
    }
}

impl KeyCache {
    /// A cache over `store`.
    pub fn new(store: Store) -> KeyCache {
        KeyCache {
            store,
            ttl: CACHE_TTL,
            entries: Mutex::new(HashMap::new()),
            verified: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY as u64)
                .time_to_live(OUTAGE_TTL)
                .build(),
        }
    }

    /// The store behind it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Looks a presented secret up.
    pub async fn lookup(&self, secret: &str) -> Result<Lookup, StoreError> {
        let hash = hash_secret(secret);
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .get(&hash)
                .filter(|c| c.at.elapsed() < self.ttl)
                .map(|c| c.key.clone())
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let key = match self.store.key_by_hash(&hash).await? {
                    Some(r) => {
                        let labels = tenant_labels(&self.store, &r.tenant).await?;
                        Some(Arc::new(AuthKey::new(r, labels)))
                    }
                    None => None,
                };
                match &key {
                    Some(k) if k.record.accepts(&hash, now_ms()) => {
                        self.verified.insert(hash.clone(), k.clone())
                    }
                    _ => self.verified.invalidate(&hash),
                }
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if entries.len() >= CACHE_CAPACITY {
                    let ttl = self.ttl;
                    entries.retain(|_, c| c.at.elapsed() < ttl);
                    if entries.len() >= CACHE_CAPACITY {
                        entries.clear();
                    }
                }
                entries.insert(
                    hash.clone(),
                    Cached {
                        at: Instant::now(),
                        key: key.clone(),
                    },
                );
                key
            }
        };
        Ok(key.map_or(Lookup::Unknown, |k| judge(k, &hash)))
    }

    /// Looks a presented secret up among the keys the store found valid within
    /// [`OUTAGE_TTL`], without asking the store: for use only while it is unavailable. `None`
    /// when this replica has not verified the secret recently. Expiry is still enforced.
    pub fn lookup_verified(&self, secret: &str) -> Option<Lookup> {
        let hash = hash_secret(secret);
        self.verified.get(&hash).map(|k| judge(k, &hash))
    }

    /// Forgets every cached lookup of a key (after this replica changed it).
    pub fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, c| c.key.as_ref().is_none_or(|k| k.record.id != id));
        drop(entries);
        for (hash, k) in &self.verified {
            if k.record.id == id {
                self.verified.invalidate(&*hash);
            }
        }
    }
}

/// Whether a key found by the hash of a presented secret accepts it now.
fn judge(key: Arc<AuthKey>, hash: &str) -> Lookup {
    let now = now_ms();
    if key.record.accepts(hash, now) {
        return Lookup::Valid(key);
    }
    Lookup::Refused(match status(&key.record, now) {
        "active" => "rotated",
        other => other,
    })
}

/// The state-store namespace of tenant records (`{"labels": {…}}` by tenant id).
const TENANT_NS: &str = "tenant";

/// A tenant's labels (`tenant.labels` in rules); empty for a tenant without a record.
pub async fn tenant_labels(
    store: &Store,
    tenant: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let Some(text) = store.get(TENANT_NS, tenant).await? else {
        return Ok(BTreeMap::new());
    };
    let v: Value = serde_json::from_str(&text)?;
    Ok(serde_json::from_value(v["labels"].clone()).unwrap_or_default())
}

/// Sets a tenant's labels (only the gateway's admin may: a tenant must not change its own
/// plan). Replicas see them within [`CACHE_TTL`] of their next key lookup.
pub async fn set_tenant_labels(
    store: &Store,
    who: &Authority,
    tenant: &str,
    labels: BTreeMap<String, String>,
) -> Result<Value, KeyError> {
    check_name("tenant", tenant)?;
    if *who != Authority::Global {
        return Err(KeyError::Forbidden(
            "only the gateway's admin token may set tenant labels".into(),
        ));
    }
    let record = json!({ "tenant": tenant, "labels": labels });
    store
        .put(TENANT_NS, tenant, &json!({ "labels": labels }).to_string())
        .await?;
    Ok(record)
}

/// A tenant's record as the admin API shows it.
pub async fn show_tenant(store: &Store, who: &Authority, tenant: &str) -> Result<Value, KeyError> {
    check_name("tenant", tenant)?;
    who.tenant_filter(Some(tenant))?;
    let labels = tenant_labels(store, tenant).await?;
    Ok(json!({ "tenant": tenant, "labels": labels }))
}

/// How start-up obtained its keys, for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetup {
    /// The key given with `--dev-key` or `LLMGW_DEV_KEY` (tenant `dev`).
    DevKey,
    /// A key generated now; the secret is shown once and never again.
    Generated(String),
    /// Keys already in the store.
    Stored(usize),
}

/// End users a key registered by start-up may assert: every one (it is the operator's own).
const OPERATOR_ASSERTS: &str = "*";

/// A key of `tenant` with full access and one secret, as start-up registers them: it may use
/// every model and assert every end user.
fn full_access(id: &str, prefix: String, tenant: &str, sha256: String, now: i64) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        prefix,
        tenant: tenant.to_owned(),
        project: None,
        user: None,
        assert_users: vec![OPERATOR_ASSERTS.to_owned()],
        labels: BTreeMap::new(),
        allowed_models: Vec::new(),
        expires_at: None,
        created_at: now,
        revoked_at: None,
        signing: false,
        signing_keys: Vec::new(),
        admin: false,
        tenant_tokens: false,
        secrets: vec![SecretHash {
            sha256,
            not_after: None,
        }],
    }
}

/// Registers the dev key, or on a store without keys generates one.
pub async fn setup(store: &Store, dev_key: Option<&str>) -> Result<KeySetup, KeyError> {
    let now = now_ms();
    if let Some(secret) = dev_key {
        let hash = hash_secret(secret);
        let existing = store.key(DEV_KEY_ID).await?;
        // A record of an earlier version (without `assert_users`) is registered again.
        let same = existing.as_ref().is_some_and(|r| {
            r.secrets.iter().any(|s| s.sha256 == hash) && r.assert_users == [OPERATOR_ASSERTS]
        });
        if !same {
            let prefix = secret
                .chars()
                .take(SHOWN_PREFIX.min(secret.len() / 2))
                .collect();
            let record = full_access(DEV_KEY_ID, prefix, DEV_TENANT, hash, now);
            store.put_key(&record).await?;
        }
        return Ok(KeySetup::DevKey);
    }
    let existing = store.keys(None).await?;
    if !existing.is_empty() {
        return Ok(KeySetup::Stored(existing.len()));
    }
    let secret = generate_key();
    let prefix = secret[..SHOWN_PREFIX].to_owned();
    let record = full_access(
        LOCAL_KEY_ID,
        prefix,
        DEFAULT_TENANT,
        hash_secret(&secret),
        now,
    );
    store.put_key(&record).await?;
    Ok(KeySetup::Generated(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_str().expect("utf-8"))
            .await
            .expect("store");
        (dir, store)
    }

    #[test]
    fn parses_durations_and_labels() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(
            parse_duration("36500d").unwrap(),
            Duration::from_secs(MAX_DURATION_SECS)
        );
        let e = parse_duration("9999999999999d").unwrap_err().to_string();
        assert!(e.contains("`9999999999999d` is too long"), "{e}");
        let labels = parse_labels(&["tier=developer".into(), "team=a=b".into()]).unwrap();
        assert_eq!(labels["team"], "a=b");
        assert!(parse_labels(&["nolabel".into()]).is_err());
    }

    #[tokio::test]
    async fn generated_key_is_stored_only_hashed_and_reused() {
        let (dir, store) = store().await;
        let KeySetup::Generated(secret) = setup(&store, None).await.unwrap() else {
            panic!("expected a generated key")
        };
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() >= 40);
        assert_eq!(setup(&store, None).await.unwrap(), KeySetup::Stored(1));
        let cache = KeyCache::new(store.clone());
        let Lookup::Valid(k) = cache.lookup(&secret).await.unwrap() else {
            panic!("the generated key authenticates")
        };
        assert_eq!(k.tenant.id, DEFAULT_TENANT);
        assert!(matches!(
            cache.lookup("llmgw_wrong").await.unwrap(),
            Lookup::Unknown
        ));
        drop(store);
        let bytes = std::fs::read(dir.path().join("state.sqlite")).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret));
    }

    #[tokio::test]
    async fn rotation_keeps_the_old_secret_for_the_grace_only() {
        let (_dir, store) = store().await;
        let spec = KeySpec {
            tenant: "acme".into(),
            ..KeySpec::default()
        };
        let (old, record) = create(&store, &Authority::Global, spec).await.unwrap();
        let (new, rotated) = rotate(
            &store,
            &Authority::Global,
            &record.id,
            Duration::from_secs(3600),
            None,
        )
        .await
        .unwrap();
        let (old, new) = (old.secret, new.secret);
        let now = now_ms();
        assert!(rotated.accepts(&hash_secret(&old), now));
        assert!(rotated.accepts(&hash_secret(&new), now));
        assert!(!rotated.accepts(&hash_secret(&old), now + 3_601_000));
        let (_, again) = rotate(&store, &Authority::Global, &record.id, Duration::ZERO, None)
            .await
            .unwrap();
        assert_eq!(again.secrets.len(), 1, "no grace: only the newest secret");
    }

    #[tokio::test]
    async fn tenant_admins_see_only_their_tenant() {
        let (_dir, store) = store().await;
        let acme = Authority::Tenant("acme".into());
        let spec = |t: &str| KeySpec {
            tenant: t.into(),
            ..KeySpec::default()
        };
        let (_, a) = create(&store, &acme, spec("")).await.unwrap();
        assert_eq!(a.tenant, "acme");
        assert!(matches!(
            create(&store, &acme, spec("globex")).await,
            Err(KeyError::Forbidden(_))
        ));
        let (_, g) = create(&store, &Authority::Global, spec("globex"))
            .await
            .unwrap();
        assert!(matches!(
            show(&store, &acme, &g.id).await,
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            revoke(&store, &acme, &g.id).await,
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            list(&store, &acme, Some("globex")).await,
            Err(KeyError::Forbidden(_))
        ));
        let mine = list(&store, &acme, None).await.unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(
            list(&store, &Authority::Global, None).await.unwrap().len(),
            2
        );
    }

    #[test]
    fn a_key_asserts_only_its_own_user_or_the_users_it_may() {
        // A record stored before `assert_users` existed asserts no user.
        let old: KeyRecord = serde_json::from_value(json!({
            "id": "key_old", "prefix": "llmgw_abcdef", "tenant": "acme", "created_at": 1,
            "secrets": [{ "sha256": "00" }],
        }))
        .unwrap();
        assert!(old.assert_users.is_empty() && old.signing_keys.is_empty());
        assert!(!may_assert(&old, "alice"));
        let stored = serde_json::to_value(&old).unwrap();
        assert!(stored.get("assert_users").is_none());
        let svc = KeyRecord {
            assert_users: parse_patterns("svc-*, bob"),
            ..old.clone()
        };
        assert!(may_assert(&svc, "svc-batch") && may_assert(&svc, "bob"));
        assert!(!may_assert(&svc, "alice") && !may_assert(&svc, "bobby"));
        let any = KeyRecord {
            assert_users: vec!["*".into()],
            ..old.clone()
        };
        assert!(may_assert(&any, "anyone at all"));
        let bound = KeyRecord {
            user: Some("alice".into()),
            assert_users: vec!["*".into()],
            ..old
        };
        assert!(may_assert(&bound, "alice") && !may_assert(&bound, "bob"));
        let both = KeySpec {
            tenant: "acme".into(),
            user: Some("alice".into()),
            assert_users: vec!["bob".into()],
            ..KeySpec::default()
        };
        assert!(matches!(both.validate(), Err(KeyError::Invalid(_))));
        let bad = KeySpec {
            tenant: "acme".into(),
            assert_users: vec!["a b".into()],
            ..KeySpec::default()
        };
        assert!(matches!(bad.validate(), Err(KeyError::Invalid(_))));
        let from_json = KeySpec::from_json(&json!({ "tenant": "acme", "assert_users": ["svc-*"] }));
        assert_eq!(from_json.unwrap().assert_users, vec!["svc-*"]);
    }

    #[tokio::test]
    async fn rotation_issues_a_signing_keypair_and_keeps_the_old_public_key_for_the_grace() {
        let (_dir, store) = store().await;
        let spec = KeySpec {
            tenant: "acme".into(),
            signing: true,
            ..KeySpec::default()
        };
        let (issued, record) = create(&store, &Authority::Global, spec).await.unwrap();
        let private = issued
            .signing_key
            .expect("a generated signing key is shown");
        assert_eq!(record.signing_keys.len(), 1);
        let stored = serde_json::to_string(&store.key(&record.id).await.unwrap()).unwrap();
        assert!(!stored.contains(&private), "only the public key is stored");
        let (rotated, after) = rotate(
            &store,
            &Authority::Global,
            &record.id,
            Duration::from_secs(60),
            None,
        )
        .await
        .unwrap();
        assert!(rotated.signing_key.is_some_and(|k| k != private));
        assert_eq!(after.signing_keys.len(), 2);
        assert_eq!(after.signing_keys[0].not_after, None);
        assert_eq!(
            after.signing_keys[1].public_key,
            record.signing_keys[0].public_key
        );
        assert!(after.signing_keys[1].not_after.is_some());
        let (_, client_held) = crate::signing::generate();
        let (none, again) = rotate(
            &store,
            &Authority::Global,
            &record.id,
            Duration::ZERO,
            Some(&client_held),
        )
        .await
        .unwrap();
        assert_eq!(
            none.signing_key, None,
            "a client-held key has nothing to show"
        );
        assert_eq!(again.signing_keys.len(), 1);
        assert_eq!(again.signing_keys[0].public_key, client_held);
    }
}

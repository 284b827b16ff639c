//! Durable state: gateway keys, budget spend, canary state, replay protection, metadata.
//!
//! One interface, two backends: SQLite (embedded, the default under `--state DIR`) and Redis
//! (`--state redis://…`, shared by several replicas). Operations that must be atomic are:
//! a reservation against several budgets at once (a transaction in SQLite, a Lua script in
//! Redis), and a replay-cache insertion. Money is counted in integer nano-dollars so that
//! concurrent additions never drift.

pub mod health;
pub mod rates;
mod redis_store;
// A signal handler and `mmap`: the crate's only `unsafe` code.
#[allow(unsafe_code)]
mod shm_guard;
mod sqlite;

pub use health::StoreHealth;
pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

/// Most ledger rows waiting to be written; rows past it are dropped (and counted).
const LEDGER_QUEUE_MAX: usize = 65_536;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Dollars to nano-dollars, rounded up so a reservation never under-counts.
pub fn to_nanos(usd: f64) -> i64 {
    (usd * NANOS_PER_USD).ceil() as i64
}

/// Nano-dollars to dollars.
pub fn to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value could not be decoded.
    #[error("stored value is malformed: {0}")]
    Decode(#[from] serde_json::Error),
    /// The store could not be opened.
    #[error("{0}")]
    Open(String),
}

/// One hash of a key's secret, valid until `not_after` (milliseconds) when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash {
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// End of its grace window after a rotation.
    #[serde(default)]
    pub not_after: Option<i64>,
}

/// A public key that verifies a key's request signatures (see `crate::signing`), valid until
/// `not_after` (milliseconds) when set. Only public keys are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// The Ed25519 public key, base64 of its 32 bytes.
    pub public_key: String,
    /// End of its grace window after a rotation.
    #[serde(default)]
    pub not_after: Option<i64>,
}

/// A gateway key as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Non-secret id, shown in logs, budgets and `keys list`.
    pub id: String,
    /// The first characters of the secret, to recognise a key.
    pub prefix: String,
    /// The tenant the key acts for.
    pub tenant: String,
    /// Its project, if any.
    #[serde(default)]
    pub project: Option<String>,
    /// Its user, if any.
    #[serde(default)]
    pub user: Option<String>,
    /// The end users a key without a user may name in a request's `user` field: names and
    /// glob patterns (`*`, `?`); `*` alone is every user. Empty (the default, also of records
    /// stored before this field existed): none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assert_users: Vec<String>,
    /// Labels rules can read (`key.labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Logical models it may use; empty means all.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Expiry, milliseconds since the epoch.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Creation time, milliseconds.
    pub created_at: i64,
    /// Revocation time, milliseconds.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Requests must carry `x-llmgw-signature`.
    #[serde(default)]
    pub signing: bool,
    /// The public keys that verify its signatures: the current one, and during a rotation the
    /// previous one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKey>,
    /// A tenant admin key: accepted by the admin API for its own tenant only, refused on the
    /// model endpoints.
    #[serde(default)]
    pub admin: bool,
    /// May present `x-llmgw-tenant-token` to act for the tenant the token names.
    #[serde(default)]
    pub tenant_tokens: bool,
    /// Hashes of its secrets: the current one, and during a rotation the previous one.
    pub secrets: Vec<SecretHash>,
}

impl KeyRecord {
    /// Whether the secret with this hash authenticates the key at `now_ms`.
    pub fn accepts(&self, sha256: &str, now_ms: i64) -> bool {
        self.revoked_at.is_none_or(|t| t > now_ms)
            && self.expires_at.is_none_or(|t| t > now_ms)
            && self
                .secrets
                .iter()
                .any(|s| s.sha256 == sha256 && s.not_after.is_none_or(|t| t > now_ms))
    }
}

/// One budget's share of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The counter: budget, principal and period (see `crate::budgets`).
    pub counter: String,
    /// Nano-dollars to hold.
    pub amount: i64,
    /// The limit in nano-dollars.
    pub limit: i64,
    /// Refuse when spent + held + amount would pass the limit.
    pub strict: bool,
    /// Seconds after which the counter may be dropped (the period's end plus a margin).
    pub ttl_secs: u64,
    /// Other counters whose spent and held amounts count against the limit too (the earlier
    /// buckets of a rolling window); read (and rid of expired holds), never added to.
    pub window: Vec<String>,
}

/// A reservation's lease: its holds are released by id at settlement, or expire on their own
/// when the replica that took them never settles (it crashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Names the reservation's holds, unique per request.
    pub id: String,
    /// How long the holds last unless settled first.
    pub ttl: std::time::Duration,
}

impl Lease {
    /// A lease with a fresh random id.
    pub fn new(ttl: std::time::Duration) -> Lease {
        Lease {
            id: format!("{:032x}", rand::random::<u128>()),
            ttl,
        }
    }

    /// The lease length in milliseconds, at least one.
    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// A reservation refused by a strict budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Index of the refusing hold.
    pub index: usize,
    /// Spent plus held on that counter, nano-dollars.
    pub committed: i64,
}

/// Settled spend for the ledger behind `llmgw spend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Tenant.
    pub tenant: String,
    /// Project (empty when none).
    pub project: String,
    /// User (empty when none).
    pub user: String,
    /// Key id.
    pub key: String,
    /// Logical model that served.
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub tokens_in: i64,
    /// Output tokens.
    pub tokens_out: i64,
    /// Cost, nano-dollars.
    pub cost: i64,
}

/// The state store, SQLite or Redis.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// Shared Redis.
    Redis(RedisStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Redis(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens `redis://…` as Redis with the key namespace `llmgw:`, anything else as a
    /// directory holding `state.sqlite`.
    pub async fn open(location: &str) -> Result<Store, StoreError> {
        if location.starts_with("redis://") || location.starts_with("rediss://") {
            Ok(Store::Redis(RedisStore::connect(location, "llmgw:").await?))
        } else {
            let dir = std::path::Path::new(location);
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
            Ok(Store::Sqlite(SqliteStore::open(&dir.join("state.sqlite"))?))
        }
    }

    /// Whether the store can serve: Redis answers a ping; the SQLite file the gateway has open
    /// is still the one at its path, and answers a query. For the health probe.
    pub async fn check(&self) -> Result<(), StoreError> {
        dispatch!(self.check())
    }

    /// Inserts or replaces a key.
    pub async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        dispatch!(self.put_key(key))
    }

    /// The key one of whose secrets has this hash.
    pub async fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self.key_by_hash(sha256))
    }

    /// A key by id.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self.key(id))
    }

    /// Every key, or those of one tenant.
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        dispatch!(self.keys(tenant))
    }

    /// Holds amounts on several budget counters at once, all or none, under `lease`. Expired
    /// holds stop counting against the limits. `now_ms` (milliseconds since the epoch) is the
    /// gateway's clock, used by SQLite; Redis uses its own clock, so replicas whose clocks
    /// disagree still agree on when a hold expires.
    pub async fn reserve(
        &self,
        holds: &[Hold],
        lease: &Lease,
        now_ms: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        dispatch!(self.reserve(holds, lease, now_ms))
    }

    /// Releases the holds of lease `lease_id` on each counter and adds what was really spent:
    /// `(counter, actual)`; returns each counter's spent amount after its settlement. A hold
    /// that already expired releases nothing (never another hold's amount); its spend is still
    /// added.
    pub async fn settle(
        &self,
        lease_id: &str,
        items: &[(String, i64)],
    ) -> Result<Vec<i64>, StoreError> {
        dispatch!(self.settle(lease_id, items))
    }

    /// Extends the holds of `lease` on `counters` to expire `lease.ttl` from now, for a
    /// request that runs on past its first lease (a long stream). A hold that already expired
    /// is not revived: its amount may have been granted to another request since.
    pub async fn renew(
        &self,
        counters: &[String],
        lease: &Lease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.renew(counters, lease, now_ms))
    }

    /// The GCRA check of rate limit cells, all or none ([`rates`]): atomic in Redis (one
    /// script), in this process's memory on SQLite state (one replica).
    pub async fn rate_check(&self, cells: &[rates::Cell]) -> Result<rates::Checked, StoreError> {
        dispatch!(self.rate_check(cells))
    }

    /// How far each rate limit cell's TAT is ahead of now, in microseconds (0: full).
    pub async fn rate_peek(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        dispatch!(self.rate_peek(keys))
    }

    /// Corrects rate limit cells after the fact: `(cell, microseconds)`, positive for units
    /// used beyond the reservation, negative for units given back. Returns at once: in
    /// process the cells are corrected now; on Redis the corrections ride on the next check
    /// this replica sends (one script, no round trip of their own), or go alone within a
    /// second when no check comes.
    pub fn rate_correct(&self, deltas: &[(String, i64)]) {
        match self {
            Store::Sqlite(s) => s.rate_correct(deltas),
            Store::Redis(s) => s.rate_correct(deltas),
        }
    }

    /// [`Store::rate_correct`], sent at once on Redis (in the background) instead of riding on
    /// the next check: for what other replicas should see before this one checks again.
    pub fn rate_correct_now(&self, deltas: &[(String, i64)]) {
        match self {
            Store::Sqlite(s) => s.rate_correct(deltas),
            Store::Redis(s) => s.rate_correct_now(deltas),
        }
    }

    /// Whether rate limit cells live in this process (SQLite state), where they need no store
    /// round trip and never fail.
    pub fn rates_in_process(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// Spent (settled) nano-dollars on counters.
    pub async fn spent(&self, counters: &[String]) -> Result<Vec<i64>, StoreError> {
        dispatch!(self.spent(counters))
    }

    /// Adds a settled request to the ledger, in the background: returns at once. The ledger is
    /// a cost report (budgets are settled separately), so a row that finds the writer too far
    /// behind is dropped and counted ([`Store::ledger_dropped`]) rather than making the answer
    /// wait. [`Store::flush`] waits for the rows queued so far.
    pub fn record(&self, entry: &LedgerEntry) {
        match self {
            Store::Sqlite(s) => s.record(entry),
            Store::Redis(s) => s.record(entry),
        }
    }

    /// Ledger rows dropped because the writer was too far behind.
    pub fn ledger_dropped(&self) -> prometheus_client::metrics::counter::Counter {
        match self {
            Store::Sqlite(s) => s.ledger_dropped(),
            Store::Redis(s) => s.ledger_dropped(),
        }
    }

    /// Waits (at most `limit`) until the ledger rows recorded so far are written; false when
    /// the limit passed first. For shutdown.
    pub async fn flush(&self, limit: std::time::Duration) -> bool {
        dispatch!(self.flush(limit))
    }

    /// Ledger rows of a tenant (or all) from a day on, including the rows this process has
    /// recorded so far (it waits a little for them to be written).
    pub async fn ledger(
        &self,
        tenant: Option<&str>,
        since_day: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        self.flush(std::time::Duration::from_secs(5)).await;
        dispatch!(self.ledger(tenant, since_day))
    }

    /// A value of a namespace (`canary`, `policy`, …).
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self.get(ns, key))
    }

    /// Sets a value of a namespace.
    pub async fn put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        dispatch!(self.put(ns, key, value))
    }

    /// Sets a value of a namespace that lasts until `expires_ms` (milliseconds since the
    /// epoch; `now_ms` is the gateway's clock, used by SQLite to purge expired values, while
    /// Redis expires them itself).
    pub async fn put_expiring(
        &self,
        ns: &str,
        key: &str,
        value: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.put_expiring(ns, key, value, expires_ms, now_ms))
    }

    /// A value set by [`Store::put_expiring`], unless it expired by `now_ms`.
    pub async fn get_expiring(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self.get_expiring(ns, key, now_ms))
    }

    /// Removes a value set by [`Store::put_expiring`]; false when there was none.
    pub async fn delete_expiring(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        dispatch!(self.delete_expiring(ns, key))
    }

    /// A versioned value of a namespace and its version (0 and `None` when absent). Versioned
    /// values are apart from [`Store::get`]'s: they change only by [`Store::put_if_version`].
    pub async fn get_versioned(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<(u64, Option<String>), StoreError> {
        dispatch!(self.get_versioned(ns, key))
    }

    /// The version of a versioned value (0 when absent): a cheap look for another writer's
    /// change.
    pub async fn version(&self, ns: &str, key: &str) -> Result<u64, StoreError> {
        dispatch!(self.version(ns, key))
    }

    /// Compare-and-set: writes `value` when the stored version is still `expected` (0: the
    /// value must not exist yet) and returns the new version, or `None` when another writer
    /// changed it first (read it again and redo the update on it).
    pub async fn put_if_version(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: &str,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(self.put_if_version(ns, key, expected, value))
    }

    /// Records a signature until `expires_ms`; false when it was already seen (a replay).
    pub async fn first_use(
        &self,
        signature: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.first_use(signature, expires_ms, now_ms))
    }
}

#[cfg(test)]
mod tests;

//! The Redis backend: shared by replicas; reservations are Lua scripts, so atomic.

use super::{Hold, KeyRecord, Lease, LedgerEntry, Refused, StoreError};
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Purges expired holds, checks every hold, then applies all of them; returns `{refusing
/// index, committed}` or `{-1, 0}`. A counter is a hash (`spent`; `leased`, the sum of its
/// live holds; `h:<lease id>`, each hold's amount) and a sorted set of its lease ids scored
/// by expiry in milliseconds of the Redis clock (`TIME`), so every replica sees holds expire
/// at the same moment. ARGV[1] is the number of holds, ARGV[2] the lease id, ARGV[3] the lease
/// in milliseconds, then five values per hold: amount, limit, strict (0/1), ttl and the number
/// of window counters. KEYS are, per counter, its hash and its sorted set: per hold, its
/// counter followed by its window counters (read only but for the purge).
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local function purge(key, leases)
          local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
          for _, id in ipairs(expired) do
            local amount = tonumber(redis.call('HGET', key, 'h:' .. id) or '0')
            redis.call('HDEL', key, 'h:' .. id)
            redis.call('HINCRBY', key, 'leased', -amount)
          end
          if #expired > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
        end
        local function committed(key, leases)
          purge(key, leases)
          return tonumber(redis.call('HGET', key, 'spent') or '0')
            + tonumber(redis.call('HGET', key, 'leased') or '0')
        end
        local holds = tonumber(ARGV[1])
        local id = ARGV[2]
        local expires = now + tonumber(ARGV[3])
        local k = 1
        for i = 1, holds do
          local b = 3 + (i - 1) * 5
          local nwin = tonumber(ARGV[b + 5])
          local total = committed(KEYS[k], KEYS[k + 1])
          for j = 1, nwin do total = total + committed(KEYS[k + 2 * j], KEYS[k + 2 * j + 1]) end
          if ARGV[b + 3] == '1' and total + tonumber(ARGV[b + 1]) > tonumber(ARGV[b + 2]) then
            return {i - 1, total}
          end
          k = k + 2 * (1 + nwin)
        end
        k = 1
        for i = 1, holds do
          local b = 3 + (i - 1) * 5
          redis.call('HINCRBY', KEYS[k], 'leased', ARGV[b + 1])
          redis.call('HINCRBY', KEYS[k], 'h:' .. id, ARGV[b + 1])
          redis.call('ZADD', KEYS[k + 1], expires, id)
          local ttl = tonumber(ARGV[b + 4])
          for _, key in ipairs({KEYS[k], KEYS[k + 1]}) do
            if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
          end
          k = k + 2 * (1 + tonumber(ARGV[b + 5]))
        end
        return {-1, 0}
        ",
    )
});

/// Releases a lease's hold on a counter, if it is still there (an expired hold was purged and
/// releases nothing), and adds the actual spend; returns the counter's spent amount after it.
/// KEYS: the counter's hash and sorted set; ARGV: lease id, actual.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
          local amount = tonumber(redis.call('HGET', KEYS[1], 'h:' .. ARGV[1]) or '0')
          redis.call('HINCRBY', KEYS[1], 'leased', -amount)
        end
        redis.call('HDEL', KEYS[1], 'h:' .. ARGV[1])
        return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
        ",
    )
});

/// Extends a live lease on a counter to expire ARGV[2] milliseconds from now (Redis clock); an
/// expired one is left to the next purge. KEYS: the counter's sorted set; ARGV: lease id, ttl.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
        if expiry and tonumber(expiry) > now then
          redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
        end
        return 0
        ",
    )
});

/// Compare-and-set of a versioned value, a hash of `version` and `value`: ARGV[1] is the
/// version expected (0: absent), ARGV[2] the new value; returns the new version or -1.
static PUT_IF_VERSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
        if v ~= tonumber(ARGV[1]) then return -1 end
        redis.call('HSET', KEYS[1], 'version', v + 1, 'value', ARGV[2])
        return v + 1
        ",
    )
});

/// The corrections of [`super::rates::adjust`] waiting to be sent, then the GCRA check of
/// [`super::rates::admit`], on the Redis clock. ARGV[1] is the number m of corrections: KEYS[1..m]
/// are their cells and ARGV[2..m+1] their deltas in microseconds. The other KEYS are the cells
/// to check (each a string holding its TAT in microseconds), with two more ARGV per cell:
/// increment and capacity. Every cell is checked before any is updated; an updated cell
/// expires when it is full again. Returns the refusing cell's index (-1: none) and then, per
/// checked cell, how far its TAT is ahead of now. With no cell to check, it only corrects.
static RATE_CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local function store(key, tat)
          if tat > now then
            redis.call('SET', key, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
          else
            redis.call('DEL', key)
          end
        end
        local m = tonumber(ARGV[1])
        for i = 1, m do
          local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
          local delta = tonumber(ARGV[i + 1])
          if delta >= 0 then tat = math.max(tat, now) + delta else tat = math.max(tat + delta, now) end
          store(KEYS[i], tat)
        end
        local tats = {}
        local refused = -1
        local n = #KEYS - m
        for i = 1, n do
          local tat = math.max(tonumber(redis.call('GET', KEYS[m + i]) or '0'), now)
          tats[i] = tat
          if refused < 0 and tat + tonumber(ARGV[m + 2 * i]) - now > tonumber(ARGV[m + 2 * i + 1]) then
            refused = i - 1
          end
        end
        local out = {refused}
        for i = 1, n do
          if refused < 0 then
            tats[i] = tats[i] + tonumber(ARGV[m + 2 * i])
            store(KEYS[m + i], tats[i])
          end
          out[i + 1] = tats[i] - now
        end
        return out
        ",
    )
});

/// How long a correction waits for a check to carry it before it is sent alone.
const CORRECTION_DELAY: Duration = Duration::from_secs(1);

/// How far each cell's TAT is ahead of the Redis clock, in microseconds (0 for a full cell).
static RATE_PEEK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local out = {}
        for i = 1, #KEYS do
          out[i] = math.max(tonumber(redis.call('GET', KEYS[i]) or '0') - now, 0)
        end
        return out
        ",
    )
});

/// Longest wait for a connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Longest wait for Redis to answer a command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);

/// The Redis store; cheap to clone (the connection manager reconnects by itself).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    ledger: Arc<Ledger>,
    /// Rate limit corrections waiting for the next check to carry them (full cell names).
    corrections: Arc<std::sync::Mutex<Vec<(String, i64)>>>,
}

/// Ledger rows on their way to Redis: how many, who waits for none to be left, and the count
/// of rows dropped because too many were on their way.
#[derive(Default)]
struct Ledger {
    in_flight: AtomicUsize,
    idle: Notify,
    dropped: Counter,
}

/// Counts a row on its way; the last one to finish wakes the flush.
struct InFlight(Arc<Ledger>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Days since the epoch of a `YYYY-MM-DD` day, for the ledger index.
fn day_number(day: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| {
            d.signed_duration_since(chrono::NaiveDate::default())
                .num_days()
        })
        .unwrap_or(0)
}

impl RedisStore {
    /// Connects; every key this store writes starts with `prefix`. Connecting and every
    /// command are bounded, so an unreachable Redis fails a request within about a second
    /// instead of holding it; the connection is re-established by itself on later commands.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            ledger: Arc::default(),
            corrections: Arc::default(),
        };
        // Corrections ride on the next check; without one for a while, they go alone.
        let flusher = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CORRECTION_DELAY);
            loop {
                tick.tick().await;
                if let Err(e) = flusher.rate_flush().await {
                    tracing::warn!(target: "llmgw::ratelimit", error = %e, "cannot send rate limit corrections");
                }
            }
        });
        Ok(store)
    }

    fn take_corrections(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.corrections.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs [`RATE_CHECK`]: the waiting corrections, then the cells.
    async fn rate_script(&self, cells: &[super::rates::Cell]) -> Result<Vec<i64>, StoreError> {
        let corrections = self.take_corrections();
        let mut inv = RATE_CHECK.prepare_invoke();
        inv.arg(corrections.len());
        for (key, delta) in &corrections {
            inv.key(key).arg(*delta);
        }
        for c in cells {
            inv.key(self.rate_key(&c.key))
                .arg(c.increment_us)
                .arg(c.capacity_us);
        }
        let mut conn = self.conn.clone();
        match inv.invoke_async(&mut conn).await {
            Ok(out) => Ok(out),
            Err(e) => {
                // Kept for the next try: a correction is never lost to one failed call.
                self.corrections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(corrections);
                Err(e.into())
            }
        }
    }

    /// Sends the waiting corrections, if any.
    async fn rate_flush(&self) -> Result<(), StoreError> {
        if self
            .corrections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        self.rate_script(&[]).await.map(drop)
    }

    pub(super) async fn check(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// The connection, for a component that keeps data of its own in this Redis (the
    /// response cache) under [`RedisStore::prefix`].
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn k(&self, parts: &[&str]) -> String {
        format!("{}{}", self.prefix, parts.join(":"))
    }

    pub(super) async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let old: Option<String> = c.get(self.k(&["key", &key.id])).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(old) = old {
            let old: KeyRecord = serde_json::from_str(&old)?;
            for s in &old.secrets {
                pipe.del(self.k(&["keyhash", &s.sha256]));
            }
        }
        pipe.set(self.k(&["key", &key.id]), serde_json::to_string(key)?);
        for s in &key.secrets {
            pipe.set(self.k(&["keyhash", &s.sha256]), &key.id);
        }
        pipe.sadd(self.k(&["keys"]), &key.id);
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    pub(super) async fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut c = self.conn.clone();
        let id: Option<String> = c.get(self.k(&["keyhash", sha256])).await?;
        match id {
            Some(id) => self.key(&id).await,
            None => Ok(None),
        }
    }

    pub(super) async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut c = self.conn.clone();
        let record: Option<String> = c.get(self.k(&["key", id])).await?;
        Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    pub(super) async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = c.smembers(self.k(&["keys"])).await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(k) = self.key(&id).await? {
                if tenant.is_none_or(|t| t == k.tenant) {
                    out.push(k);
                }
            }
        }
        out.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        Ok(out)
    }

    /// The counter's hash and its sorted set of leases.
    fn counter_keys(&self, counter: &str) -> [String; 2] {
        [self.k(&["ctr", counter]), self.k(&["leases", counter])]
    }

    pub(super) async fn reserve(
        &self,
        holds: &[Hold],
        lease: &Lease,
        _now_ms: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        if holds.is_empty() {
            return Ok(Ok(()));
        }
        let mut inv = RESERVE.prepare_invoke();
        inv.arg(holds.len()).arg(&lease.id).arg(lease.ttl_ms());
        for h in holds {
            for c in std::iter::once(&h.counter).chain(&h.window) {
                for key in self.counter_keys(c) {
                    inv.key(key);
                }
            }
            inv.arg(h.amount)
                .arg(h.limit)
                .arg(if h.strict { "1" } else { "0" })
                .arg(h.ttl_secs.max(1))
                .arg(h.window.len());
        }
        let mut c = self.conn.clone();
        let (index, committed): (i64, i64) = inv.invoke_async(&mut c).await?;
        Ok(if index < 0 {
            Ok(())
        } else {
            Err(Refused {
                index: index as usize,
                committed,
            })
        })
    }

    pub(super) async fn settle(
        &self,
        lease_id: &str,
        items: &[(String, i64)],
    ) -> Result<Vec<i64>, StoreError> {
        let mut c = self.conn.clone();
        let mut spent = Vec::with_capacity(items.len());
        for (counter, actual) in items {
            let [hash, leases] = self.counter_keys(counter);
            spent.push(
                SETTLE
                    .key(hash)
                    .key(leases)
                    .arg(lease_id)
                    .arg(*actual)
                    .invoke_async(&mut c)
                    .await?,
            );
        }
        Ok(spent)
    }

    pub(super) async fn renew(
        &self,
        counters: &[String],
        lease: &Lease,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        for counter in counters {
            let [_, leases] = self.counter_keys(counter);
            let _: i64 = RENEW
                .key(leases)
                .arg(&lease.id)
                .arg(lease.ttl_ms())
                .invoke_async(&mut c)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn rate_check(
        &self,
        cells: &[super::rates::Cell],
    ) -> Result<super::rates::Checked, StoreError> {
        let out = self.rate_script(cells).await?;
        let (refused, ahead) = out.split_first().unwrap_or((&-1, &[]));
        Ok(super::rates::Checked {
            refused: usize::try_from(*refused).ok(),
            ahead_us: ahead.to_vec(),
        })
    }

    pub(super) async fn rate_peek(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        let mut inv = RATE_PEEK.prepare_invoke();
        for key in keys {
            inv.key(self.rate_key(key));
        }
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    pub(super) fn rate_correct(&self, deltas: &[(String, i64)]) {
        let mut waiting = self.corrections.lock().unwrap_or_else(|e| e.into_inner());
        waiting.extend(deltas.iter().map(|(k, d)| (self.rate_key(k), *d)));
    }

    pub(super) fn rate_correct_now(&self, deltas: &[(String, i64)]) {
        self.rate_correct(deltas);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.rate_flush().await {
                tracing::warn!(target: "llmgw::ratelimit", error = %e, "cannot send rate limit corrections; they go with the next check");
            }
        });
    }

    /// The Redis key of a rate limit cell.
    fn rate_key(&self, cell: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 5 + cell.len());
        key.push_str(&self.prefix);
        key.push_str("rate:");
        key.push_str(cell);
        key
    }

    pub(super) async fn spent(&self, counters: &[String]) -> Result<Vec<i64>, StoreError> {
        if counters.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in counters {
            pipe.hget(self.k(&["ctr", name]), "spent");
        }
        let mut c = self.conn.clone();
        let values: Vec<Option<i64>> = pipe.query_async(&mut c).await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// Sends a row to the ledger in the background (one pipelined transaction) and returns at
    /// once. A row that finds too many on their way is dropped and counted.
    pub(super) fn record(&self, e: &LedgerEntry) {
        if self.ledger.in_flight.fetch_add(1, Ordering::AcqRel) >= super::LEDGER_QUEUE_MAX {
            drop(InFlight(self.ledger.clone()));
            self.ledger.dropped.inc();
            return;
        }
        let guard = InFlight(self.ledger.clone());
        let row = self.k(&[
            "ledger", &e.day, &e.tenant, &e.project, &e.user, &e.key, &e.model,
        ]);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &row,
                &[
                    ("day", e.day.as_str()),
                    ("tenant", &e.tenant),
                    ("project", &e.project),
                    ("user", &e.user),
                    ("key", &e.key),
                    ("model", &e.model),
                ],
            )
            .hincr(&row, "requests", e.requests)
            .hincr(&row, "tokens_in", e.tokens_in)
            .hincr(&row, "tokens_out", e.tokens_out)
            .hincr(&row, "cost", e.cost)
            .zadd(self.k(&["ledger-index"]), &row, day_number(&e.day));
        let mut c = self.conn.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.ledger.dropped.inc();
            return;
        };
        rt.spawn(async move {
            let _guard = guard;
            let sent: Result<(), redis::RedisError> = pipe.query_async(&mut c).await;
            if let Err(e) = sent {
                tracing::error!(target: "llmgw::budget", error = %e, "cannot record spend in the ledger");
            }
        });
    }

    /// Ledger rows dropped because too many were on their way.
    pub(super) fn ledger_dropped(&self) -> Counter {
        self.ledger.dropped.clone()
    }

    /// Waits (at most `limit`) until every row sent to the ledger is written; false on timeout.
    pub(super) async fn flush(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let idle = self.ledger.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.ledger.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await
        .is_ok()
    }

    pub(super) async fn ledger(
        &self,
        tenant: Option<&str>,
        since_day: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut c = self.conn.clone();
        let rows: Vec<String> = c
            .zrangebyscore(self.k(&["ledger-index"]), day_number(since_day), "+inf")
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let h: HashMap<String, String> = c.hgetall(&row).await?;
            let s = |f: &str| h.get(f).cloned().unwrap_or_default();
            let n = |f: &str| h.get(f).and_then(|v| v.parse().ok()).unwrap_or(0);
            let entry = LedgerEntry {
                day: s("day"),
                tenant: s("tenant"),
                project: s("project"),
                user: s("user"),
                key: s("key"),
                model: s("model"),
                requests: n("requests"),
                tokens_in: n("tokens_in"),
                tokens_out: n("tokens_out"),
                cost: n("cost"),
            };
            if tenant.is_none_or(|t| t == entry.tenant) && entry.day.as_str() >= since_day {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| {
            (&a.day, &a.tenant, &a.project, &a.user, &a.key, &a.model)
                .cmp(&(&b.day, &b.tenant, &b.project, &b.user, &b.key, &b.model))
        });
        Ok(out)
    }

    pub(super) async fn get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        Ok(c.get(self.k(&["kv", ns, key])).await?)
    }

    pub(super) async fn put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: () = c.set(self.k(&["kv", ns, key]), value).await?;
        Ok(())
    }

    pub(super) async fn put_expiring(
        &self,
        ns: &str,
        key: &str,
        value: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let ttl = (expires_ms - now_ms).max(1) as u64;
        let _: () = redis::cmd("SET")
            .arg(self.k(&["exp", ns, key]))
            .arg(value)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    pub(super) async fn get_expiring(
        &self,
        ns: &str,
        key: &str,
        _now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        Ok(c.get(self.k(&["exp", ns, key])).await?)
    }

    pub(super) async fn delete_expiring(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let n: u64 = c.del(self.k(&["exp", ns, key])).await?;
        Ok(n > 0)
    }

    pub(super) async fn get_versioned(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<(u64, Option<String>), StoreError> {
        let mut c = self.conn.clone();
        let (version, value): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.k(&["vkv", ns, key]))
            .arg("version")
            .arg("value")
            .query_async(&mut c)
            .await?;
        Ok((version.unwrap_or(0), value))
    }

    pub(super) async fn version(&self, ns: &str, key: &str) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let version: Option<u64> = c.hget(self.k(&["vkv", ns, key]), "version").await?;
        Ok(version.unwrap_or(0))
    }

    pub(super) async fn put_if_version(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: &str,
    ) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn.clone();
        let version: i64 = PUT_IF_VERSION
            .key(self.k(&["vkv", ns, key]))
            .arg(expected)
            .arg(value)
            .invoke_async(&mut c)
            .await?;
        Ok(u64::try_from(version).ok())
    }

    pub(super) async fn first_use(
        &self,
        signature: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let ttl = (expires_ms - now_ms).max(1) as u64;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.k(&["replay", signature]))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }
}

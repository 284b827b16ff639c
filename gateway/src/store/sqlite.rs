//! The SQLite backend: one file, WAL, migrations by `user_version`.

use super::shm_guard;
use super::{Hold, KeyRecord, Lease, LedgerEntry, Refused, StoreError, LEDGER_QUEUE_MAX};
use prometheus_client::metrics::counter::Counter;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Schema migrations, in order; `user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, record TEXT NOT NULL);
     CREATE TABLE key_hashes (sha256 TEXT PRIMARY KEY, key_id TEXT NOT NULL);
     CREATE TABLE counters (name TEXT PRIMARY KEY, spent INTEGER NOT NULL DEFAULT 0,
         held INTEGER NOT NULL DEFAULT 0, expires_at INTEGER NOT NULL);
     CREATE TABLE ledger (day TEXT NOT NULL, tenant TEXT NOT NULL, project TEXT NOT NULL,
         user TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL,
         requests INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
         cost INTEGER NOT NULL, PRIMARY KEY (day, tenant, project, user, key, model));
     CREATE TABLE kv (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
         PRIMARY KEY (ns, key));
     CREATE TABLE replay (signature TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);",
    // Holds become leases, one row each, expiring on their own (milliseconds); the aggregate
    // `held` of the previous release goes, and with it what crashed processes had stranded.
    "CREATE TABLE holds (counter TEXT NOT NULL, id TEXT NOT NULL, amount INTEGER NOT NULL,
         expires_at INTEGER NOT NULL, PRIMARY KEY (counter, id));
     CREATE INDEX holds_expiry ON holds (expires_at);
     ALTER TABLE counters DROP COLUMN held;",
    // Every reservation purges expired counters: by index, not by a scan of every counter.
    "CREATE INDEX counters_expiry ON counters (expires_at);",
    // Values kept for a while (stored responses), dropped once expired (milliseconds).
    "CREATE TABLE expiring (ns TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
         expires_at INTEGER NOT NULL, PRIMARY KEY (ns, key));
     CREATE INDEX expiring_expiry ON expiring (expires_at);",
    // Values changed only by compare-and-set (canary rollouts), apart from `kv`.
    "CREATE TABLE vkv (ns TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
         value TEXT NOT NULL, PRIMARY KEY (ns, key));",
];

/// The SQLite store; cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Arc<Mutex<Db>>,
    ledger: Arc<Ledger>,
    /// Operations waiting for the next group commit ([`write_batches`]).
    batch: mpsc::Sender<Job>,
    /// Rate limit cells: in memory, since one replica alone uses this store.
    rates: Arc<super::rates::LocalRates>,
}

/// An operation for the group-commit writer: it runs inside the batch's transaction and returns
/// what to do once the batch is committed (`None`) or failed (why).
type Job = Box<dyn FnOnce(&Connection) -> Box<dyn FnOnce(Option<&str>) + Send> + Send>;

/// The most operations one commit takes.
const MAX_BATCH: usize = 256;

/// Runs queued operations, each in a savepoint of one shared transaction, and commits them
/// together: a request waits for the commit of the batch it joined, never for one of its own,
/// and a busy gateway pays one transaction (and one trip to the writer thread) for many
/// requests. Operations queued while a batch commits form the next one. Each runs after those
/// queued before it and sees what they wrote, so strict budgets stay strict; other processes
/// on the same file are kept out by the transaction's write lock as before. Ends when every
/// sender is gone.
fn write_batches(db: &Mutex<Db>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let batch: Vec<Job> = std::iter::once(first)
            .chain(queue.try_iter().take(MAX_BATCH - 1))
            .collect();
        let mut done = Vec::with_capacity(batch.len());
        let committed = db.lock().unwrap_or_else(|e| e.into_inner()).run(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for job in batch {
                done.push(job(&tx));
            }
            tx.commit()?;
            Ok(())
        });
        let failure = committed.err().map(|e| {
            tracing::error!(target: "llmgw::state", error = %e, "a state store commit failed");
            e.to_string()
        });
        for d in done {
            d(failure.as_deref());
        }
    }
}

/// Runs `f` in a savepoint, so that an operation that fails leaves nothing behind while the
/// others of its batch commit.
fn in_savepoint<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    c.prepare_cached("SAVEPOINT op")?.execute([])?;
    let result = f(c);
    if result.is_err() {
        c.prepare_cached("ROLLBACK TO op")?.execute([])?;
    }
    c.prepare_cached("RELEASE op")?.execute([])?;
    result
}

/// The open connection, with what it takes to open it again.
#[derive(Debug)]
struct Db {
    conn: Connection,
    path: PathBuf,
    files: Files,
}

impl Db {
    /// Opens (creating and migrating) the database file at `path`.
    fn open(path: &Path) -> Result<Db, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The database is small (keys, counters, the ledger's daily rows): a 512 KiB page cache
        // holds its hot pages, where SQLite's default reserves up to 2 MiB.
        conn.pragma_update(None, "cache_size", -512)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of the budget path stays prepared (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(64);
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Db {
            conn,
            path: path.to_owned(),
            files: Files::at(path),
        })
    }

    /// Runs `f` on the connection. When the shared-memory file turned out truncated during it
    /// ([`shm_guard`]), the call fails, whatever it returned, and the connection is reopened,
    /// so that the next call maps the file afresh.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (out, faulted) = shm_guard::guarded(|| f(&mut self.conn));
        if !faulted {
            return out;
        }
        let shm = format!("{}-shm", self.path.display());
        tracing::error!(target: "llmgw::state", file = %shm, "the SQLite shared-memory file was truncated while in use; reopening the database");
        let (reopened, _) = shm_guard::guarded(|| {
            // The old connection closes first: connections of one process share its mapping.
            drop(std::mem::replace(
                &mut self.conn,
                Connection::open_in_memory()?,
            ));
            Db::open(&self.path)
        });
        let now = match reopened {
            Ok(db) => {
                *self = db;
                "the database was reopened"
            }
            Err(_) => "reopening the database failed and is retried at the next call",
        };
        Err(StoreError::Open(format!(
            "{shm} was truncated while the gateway was using it; {now}"
        )))
    }
}

/// The database file and its WAL companions as they were when the store opened them: while
/// the store serves, each path must still name the same file, or what it writes goes to a
/// file nobody will open again.
#[derive(Debug)]
struct Files {
    /// Path, and device and inode at open (`None` when it did not exist then).
    files: Vec<(PathBuf, Option<(u64, u64)>)>,
}

impl Files {
    /// Device and inode of the database, `-wal` and `-shm` files at `path`.
    fn at(path: &Path) -> Files {
        let files = ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let p = PathBuf::from(p);
                let id = identity(&p).ok();
                (p, id)
            })
            .collect();
        Files { files }
    }

    /// An error naming the first file that was deleted or replaced since open.
    fn check(&self) -> Result<(), StoreError> {
        for (path, at_open) in &self.files {
            let Some(at_open) = at_open else { continue };
            let gone = match identity(path) {
                Ok(now) if now == *at_open => continue,
                Ok(_) => "replaced by another file",
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "deleted",
                Err(e) => {
                    return Err(StoreError::Open(format!(
                        "cannot stat {}: {e}",
                        path.display()
                    )))
                }
            };
            return Err(StoreError::Open(format!(
                "{} was {gone} while the gateway was serving; restore it, or restart the gateway to start from the file now there",
                path.display()
            )));
        }
        Ok(())
    }
}

/// Device and inode of a file.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Ledger rows waiting for the next commit, and the count of rows dropped because the queue
/// was full.
#[derive(Debug, Default)]
struct Ledger {
    queue: Mutex<LedgerQueue>,
    /// Signalled whenever a writer stops (the queue was left empty, or the writer failed).
    idle: Condvar,
    dropped: Counter,
}

#[derive(Debug, Default)]
struct LedgerQueue {
    waiting: Vec<LedgerEntry>,
    /// Whether a writer is draining the queue.
    writing: bool,
}

/// The right to drain the ledger queue (and whether the queue was left empty). A writer that
/// never ran (the runtime shut down) or panicked hands the rows left in the queue to the next
/// writer (the next row, or the flush at shutdown).
struct LedgerWriter(Arc<Ledger>, bool);

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        if !self.1 {
            let mut q = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.writing = false;
            self.0.idle.notify_all();
        }
    }
}

const LEDGER_UPSERT: &str = "INSERT INTO ledger VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT DO UPDATE SET requests = requests + ?7,
         tokens_in = tokens_in + ?8, tokens_out = tokens_out + ?9, cost = cost + ?10";

/// How long the ledger writer lets rows gather before each commit: no answer waits for it,
/// and under load it turns hundreds of commits into one.
const LEDGER_GATHER: Duration = Duration::from_millis(20);

/// Writes queued ledger rows, one transaction per batch, until the queue is empty; rows that
/// arrive while a batch gathers or commits go into the next one.
fn write_ledger(db: &Mutex<Db>, mut writer: LedgerWriter) {
    loop {
        std::thread::sleep(LEDGER_GATHER);
        let batch = {
            let mut q = writer.0.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.waiting.is_empty() {
                // Under the same lock as the check, so a row queued after it starts a writer.
                q.writing = false;
                writer.1 = true;
                writer.0.idle.notify_all();
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
        if db
            .run(|c| insert_ledger(c, merged(batch.iter()).iter()))
            .is_err()
        {
            // One row's failure must not lose the others: each on its own.
            for e in &batch {
                if let Err(err) = db.run(|c| insert_ledger(c, std::iter::once(e))) {
                    tracing::error!(target: "llmgw::budget", error = %err, "cannot record spend in the ledger");
                }
            }
        }
    }
}

/// The rows of a batch with the same day, tenant, project, user, key and model added up: the
/// upsert adds them to the stored row all the same, in one statement.
fn merged<'a>(entries: impl Iterator<Item = &'a LedgerEntry>) -> Vec<LedgerEntry> {
    let mut out: Vec<LedgerEntry> = Vec::new();
    for e in entries {
        let same = out.iter_mut().find(|o| {
            o.day == e.day
                && o.tenant == e.tenant
                && o.project == e.project
                && o.user == e.user
                && o.key == e.key
                && o.model == e.model
        });
        match same {
            Some(o) => {
                o.requests += e.requests;
                o.tokens_in += e.tokens_in;
                o.tokens_out += e.tokens_out;
                o.cost += e.cost;
            }
            None => out.push(e.clone()),
        }
    }
    out
}

fn insert_ledger<'a>(
    c: &mut Connection,
    entries: impl Iterator<Item = &'a LedgerEntry>,
) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(LEDGER_UPSERT)?;
        for e in entries {
            stmt.execute(params![
                e.day,
                e.tenant,
                e.project,
                e.user,
                e.key,
                e.model,
                e.requests,
                e.tokens_in,
                e.tokens_out,
                e.cost
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SqliteStore {
    /// Opens (creating and migrating) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Arc::new(Mutex::new(Db::open(path)?));
        let (batch, queue) = mpsc::channel();
        let writer = db.clone();
        std::thread::Builder::new()
            .name("llmgw-state-writer".into())
            .spawn(move || write_batches(&writer, &queue))
            .map_err(|e| StoreError::Open(format!("cannot start the state writer: {e}")))?;
        Ok(SqliteStore {
            db,
            ledger: Arc::default(),
            batch,
            rates: Arc::default(),
        })
    }

    pub(super) async fn rate_check(
        &self,
        cells: &[super::rates::Cell],
    ) -> Result<super::rates::Checked, StoreError> {
        Ok(self.rates.check(cells))
    }

    pub(super) async fn rate_peek(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        Ok(self.rates.peek(keys))
    }

    pub(super) fn rate_correct(&self, deltas: &[(String, i64)]) {
        self.rates.adjust(deltas);
    }

    pub(super) async fn check(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
            db.run(|c| {
                c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })?;
                Ok(())
            })?;
            db.files.check()
        })
        .await
        .map_err(|e| StoreError::Open(format!("state task failed: {e}")))?
    }

    /// Runs `f` in the next group commit ([`write_batches`]) and returns its result once that
    /// commit is done.
    async fn batched<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |c: &Connection| {
            let result = in_savepoint(c, f);
            Box::new(move |failure: Option<&str>| {
                let _ = tx.send(match failure {
                    None => result,
                    Some(why) => Err(StoreError::Open(format!("the commit failed: {why}"))),
                });
            })
        });
        self.batch
            .send(job)
            .map_err(|_| StoreError::Open("the state writer has stopped".into()))?;
        rx.await.map_err(|_| {
            StoreError::Open("the state writer stopped before committing; see the log".into())
        })?
    }

    /// Runs `f` on the connection off the async runtime.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.lock().unwrap_or_else(|e| e.into_inner()).run(f))
            .await
            .map_err(|e| StoreError::Open(format!("state task failed: {e}")))?
    }

    pub(super) async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR REPLACE INTO keys (id, tenant, record) VALUES (?1, ?2, ?3)",
                params![key.id, key.tenant, serde_json::to_string(&key)?],
            )?;
            tx.execute("DELETE FROM key_hashes WHERE key_id = ?1", params![key.id])?;
            for s in &key.secrets {
                tx.execute(
                    "INSERT OR REPLACE INTO key_hashes (sha256, key_id) VALUES (?1, ?2)",
                    params![s.sha256, key.id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn key_by_hash(&self, sha256: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sha256 = sha256.to_owned();
        self.with(move |c| {
            let record: Option<String> = c
                .query_row(
                    "SELECT k.record FROM key_hashes h JOIN keys k ON k.id = h.key_id WHERE h.sha256 = ?1",
                    params![sha256],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
        })
        .await
    }

    pub(super) async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            let record: Option<String> = c
                .query_row("SELECT record FROM keys WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(record.map(|r| serde_json::from_str(&r)).transpose()?)
        })
        .await
    }

    pub(super) async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT record FROM keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, id",
            )?;
            let rows = stmt.query_map(params![tenant], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn reserve(
        &self,
        holds: &[Hold],
        lease: &Lease,
        now_ms: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        let holds = holds.to_vec();
        let (id, expires_at) = (lease.id.clone(), now_ms.saturating_add(lease.ttl_ms()));
        self.batched(move |c| {
            let now = now_ms.div_euclid(1000);
            c.prepare_cached("DELETE FROM holds WHERE expires_at <= ?1")?
                .execute(params![now_ms])?;
            let mut committed_on = c.prepare_cached(
                "SELECT coalesce((SELECT spent FROM counters
                     WHERE name = ?1 AND expires_at >= ?2), 0)
                 + coalesce((SELECT sum(amount) FROM holds WHERE counter = ?1), 0)",
            )?;
            for (index, h) in holds.iter().enumerate() {
                let mut committed = 0i64;
                for name in std::iter::once(&h.counter).chain(&h.window) {
                    committed +=
                        committed_on.query_row(params![name, now], |r| r.get::<_, i64>(0))?;
                }
                if h.strict && committed + h.amount > h.limit {
                    return Ok(Err(Refused { index, committed }));
                }
            }
            let mut counter = c.prepare_cached(
                "INSERT INTO counters (name, expires_at) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET expires_at = max(expires_at, ?2)",
            )?;
            let mut hold = c.prepare_cached(
                "INSERT INTO holds (counter, id, amount, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET amount = amount + ?3",
            )?;
            for h in &holds {
                counter.execute(params![h.counter, now + h.ttl_secs as i64])?;
                hold.execute(params![h.counter, id, h.amount, expires_at])?;
            }
            c.prepare_cached("DELETE FROM counters WHERE expires_at < ?1")?
                .execute(params![now])?;
            Ok(Ok(()))
        })
        .await
    }

    pub(super) async fn settle(
        &self,
        lease_id: &str,
        items: &[(String, i64)],
    ) -> Result<Vec<i64>, StoreError> {
        let (id, items) = (lease_id.to_owned(), items.to_vec());
        self.batched(move |c| {
            let mut release =
                c.prepare_cached("DELETE FROM holds WHERE counter = ?1 AND id = ?2")?;
            let mut spend = c.prepare_cached(
                "UPDATE counters SET spent = spent + ?2 WHERE name = ?1 RETURNING spent",
            )?;
            let mut spent = Vec::with_capacity(items.len());
            for (counter, actual) in &items {
                release.execute(params![counter, id])?;
                spent.push(
                    spend
                        .query_row(params![counter, actual], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0),
                );
            }
            Ok(spent)
        })
        .await
    }

    pub(super) async fn renew(
        &self,
        counters: &[String],
        lease: &Lease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (counters, id, until) = (
            counters.to_vec(),
            lease.id.clone(),
            now_ms.saturating_add(lease.ttl_ms()),
        );
        self.batched(move |c| {
            let mut renew = c.prepare_cached(
                "UPDATE holds SET expires_at = ?3
                 WHERE counter = ?1 AND id = ?2 AND expires_at > ?4",
            )?;
            for counter in &counters {
                renew.execute(params![counter, id, until, now_ms])?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn spent(&self, counters: &[String]) -> Result<Vec<i64>, StoreError> {
        let counters = counters.to_vec();
        self.batched(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT spent FROM counters WHERE name = ?1 AND expires_at >= ?2",
            )?;
            let now = now_secs();
            counters
                .iter()
                .map(|name| {
                    Ok(stmt
                        .query_row(params![name, now], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0))
                })
                .collect()
        })
        .await
    }

    /// Queues a row for the ledger and returns at once: a writer on the blocking pool commits
    /// it in the background, together with the rows of concurrent requests (see
    /// [`write_ledger`]). A row that finds the queue full is dropped and counted.
    pub(super) fn record(&self, e: &LedgerEntry) {
        let start = {
            let mut q = self.ledger.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.waiting.len() >= LEDGER_QUEUE_MAX {
                drop(q);
                self.ledger.dropped.inc();
                return;
            }
            q.waiting.push(e.clone());
            !std::mem::replace(&mut q.writing, true)
        };
        if start {
            self.start_writer();
        }
    }

    fn start_writer(&self) {
        let db = self.db.clone();
        let writer = LedgerWriter(self.ledger.clone(), false);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || write_ledger(&db, writer))),
            // No runtime: the row is written now.
            Err(_) => write_ledger(&db, writer),
        }
    }

    /// Ledger rows dropped because the queue was full.
    pub(super) fn ledger_dropped(&self) -> Counter {
        self.ledger.dropped.clone()
    }

    /// Waits (at most `limit`) until every queued ledger row is committed; false on timeout.
    pub(super) async fn flush(&self, limit: Duration) -> bool {
        let (db, ledger) = (self.db.clone(), self.ledger.clone());
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + limit;
            let mut q = ledger.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if !q.writing {
                    if q.waiting.is_empty() {
                        return true;
                    }
                    // Rows left by a writer that never ran: written here.
                    q.writing = true;
                    drop(q);
                    write_ledger(&db, LedgerWriter(ledger.clone(), false));
                    q = ledger.queue.lock().unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                q = ledger
                    .idle
                    .wait_timeout(q, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        })
        .await
        .unwrap_or(false)
    }

    pub(super) async fn ledger(
        &self,
        tenant: Option<&str>,
        since_day: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        let since = since_day.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT day, tenant, project, user, key, model, requests, tokens_in, tokens_out, cost
                 FROM ledger WHERE day >= ?1 AND (?2 IS NULL OR tenant = ?2)
                 ORDER BY day, tenant, project, user, key, model",
            )?;
            let rows = stmt.query_map(params![since, tenant], |r| {
                Ok(LedgerEntry {
                    day: r.get(0)?,
                    tenant: r.get(1)?,
                    project: r.get(2)?,
                    user: r.get(3)?,
                    key: r.get(4)?,
                    model: r.get(5)?,
                    requests: r.get(6)?,
                    tokens_in: r.get(7)?,
                    tokens_out: r.get(8)?,
                    cost: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub(super) async fn get(&self, ns: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT value FROM kv WHERE ns = ?1 AND key = ?2",
                params![ns, key],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub(super) async fn put(&self, ns: &str, key: &str, value: &str) -> Result<(), StoreError> {
        let (ns, key, value) = (ns.to_owned(), key.to_owned(), value.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, value],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn put_expiring(
        &self,
        ns: &str,
        key: &str,
        value: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (ns, key, value) = (ns.to_owned(), key.to_owned(), value.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM expiring WHERE expires_at < ?1",
                params![now_ms],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO expiring (ns, key, value, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![ns, key, value, expires_ms],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn get_expiring(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT value FROM expiring WHERE ns = ?1 AND key = ?2 AND expires_at >= ?3",
                params![ns, key, now_ms],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub(super) async fn delete_expiring(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM expiring WHERE ns = ?1 AND key = ?2",
                params![ns, key],
            )? > 0)
        })
        .await
    }

    pub(super) async fn get_versioned(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<(u64, Option<String>), StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.with(move |c| {
            let row: Option<(i64, String)> = c
                .query_row(
                    "SELECT version, value FROM vkv WHERE ns = ?1 AND key = ?2",
                    params![ns, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(row.map_or((0, None), |(v, value)| (v.unsigned_abs(), Some(value))))
        })
        .await
    }

    pub(super) async fn version(&self, ns: &str, key: &str) -> Result<u64, StoreError> {
        Ok(self.get_versioned(ns, key).await?.0)
    }

    pub(super) async fn put_if_version(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: &str,
    ) -> Result<Option<u64>, StoreError> {
        let (ns, key, value) = (ns.to_owned(), key.to_owned(), value.to_owned());
        self.batched(move |c| {
            let changed = if expected == 0 {
                c.execute(
                    "INSERT INTO vkv (ns, key, version, value) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT DO NOTHING",
                    params![ns, key, value],
                )?
            } else {
                c.execute(
                    "UPDATE vkv SET version = version + 1, value = ?3
                     WHERE ns = ?1 AND key = ?2 AND version = ?4",
                    params![ns, key, value, i64::try_from(expected).unwrap_or(i64::MAX)],
                )?
            };
            Ok((changed == 1).then_some(expected + 1))
        })
        .await
    }

    pub(super) async fn first_use(
        &self,
        signature: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let signature = signature.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("DELETE FROM replay WHERE expires_at < ?1", params![now_ms])?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO replay (signature, expires_at) VALUES (?1, ?2)",
                params![signature, expires_ms],
            )?;
            tx.commit()?;
            Ok(inserted == 1)
        })
        .await
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    /// An operation that fails in a batch leaves nothing behind; the others of its batch
    /// commit.
    #[tokio::test]
    async fn a_failed_operation_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.sqlite")).unwrap();
        let put = |key: &'static str, fail: bool| {
            let store = store.clone();
            async move {
                store
                    .batched(move |c| {
                        c.execute(
                            "INSERT INTO kv (ns, key, value) VALUES ('t', ?1, 'v')",
                            params![key],
                        )?;
                        if fail {
                            return Err(StoreError::Open("refused".into()));
                        }
                        Ok(())
                    })
                    .await
            }
        };
        let (a, b, c) = tokio::join!(put("a", false), put("b", true), put("c", false));
        assert!(a.is_ok() && b.is_err() && c.is_ok());
        for (key, kept) in [("a", true), ("b", false), ("c", true)] {
            assert_eq!(store.get("t", key).await.unwrap().is_some(), kept, "{key}");
        }
    }
}

//! The same behaviour, checked on both backends: SQLite always, Redis when
//! `LLMGW_TEST_REDIS_URL` is set (the Redis tests are `#[ignore]`d otherwise, so a plain
//! `cargo test` lists them as ignored rather than passing them silently).

use super::*;

fn key(id: &str, tenant: &str, hash: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        prefix: "llmgw_ab".into(),
        tenant: tenant.into(),
        project: None,
        user: None,
        assert_users: Vec::new(),
        labels: BTreeMap::new(),
        allowed_models: Vec::new(),
        expires_at: None,
        created_at: 1,
        revoked_at: None,
        signing: false,
        signing_keys: Vec::new(),
        admin: false,
        tenant_tokens: false,
        secrets: vec![SecretHash {
            sha256: hash.into(),
            not_after: None,
        }],
    }
}

fn hold(counter: &str, amount: i64, limit: i64) -> Hold {
    Hold {
        counter: counter.into(),
        amount,
        limit,
        strict: true,
        ttl_secs: 3600,
        window: Vec::new(),
    }
}

/// A lease long enough for any test.
fn lease() -> Lease {
    Lease::new(std::time::Duration::from_secs(3600))
}

/// The gateway's clock, milliseconds.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reserves under a fresh long lease.
async fn reserve(store: &Store, holds: &[Hold]) -> Result<Lease, Refused> {
    let lease = lease();
    store
        .reserve(holds, &lease, now_ms())
        .await
        .unwrap()
        .map(|()| lease)
}

async fn keys_rotate_and_revoke(store: &Store) {
    store.put_key(&key("k1", "acme", "h-old")).await.unwrap();
    store
        .put_key(&key("k2", "globex", "h-other"))
        .await
        .unwrap();
    let k = store
        .key_by_hash("h-old")
        .await
        .unwrap()
        .expect("found by hash");
    assert!(k.accepts("h-old", 10));
    // Rotation: a new secret, the old one valid until t = 100.
    let mut rotated = k.clone();
    rotated.secrets = vec![
        SecretHash {
            sha256: "h-new".into(),
            not_after: None,
        },
        SecretHash {
            sha256: "h-old".into(),
            not_after: Some(100),
        },
    ];
    store.put_key(&rotated).await.unwrap();
    let by_old = store.key_by_hash("h-old").await.unwrap().unwrap();
    assert!(by_old.accepts("h-old", 99) && !by_old.accepts("h-old", 100));
    assert!(store
        .key_by_hash("h-new")
        .await
        .unwrap()
        .unwrap()
        .accepts("h-new", 1_000));
    // Revocation.
    let mut revoked = rotated.clone();
    revoked.revoked_at = Some(500);
    store.put_key(&revoked).await.unwrap();
    assert!(!store
        .key_by_hash("h-new")
        .await
        .unwrap()
        .unwrap()
        .accepts("h-new", 500));
    // Dropping a hash from the record removes its lookup.
    let mut pruned = revoked.clone();
    pruned.secrets.truncate(1);
    store.put_key(&pruned).await.unwrap();
    assert!(store.key_by_hash("h-old").await.unwrap().is_none());
    let acme: Vec<String> = store
        .keys(Some("acme"))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(acme, vec!["k1"]);
    assert_eq!(store.keys(None).await.unwrap().len(), 2);
}

async fn strict_reservations_never_pass_the_limit(store: &Store, counter: &str) {
    // 64 concurrent holds of 7 against a limit of 100: exactly 14 fit.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        let counter = counter.to_owned();
        tasks.push(tokio::spawn(async move {
            reserve(&store, &[hold(&counter, 7, 100)]).await.ok()
        }));
    }
    let mut granted = Vec::new();
    for t in tasks {
        granted.extend(t.await.unwrap());
    }
    assert_eq!(granted.len(), 14);
    // Settling releases holds and counts what was spent.
    for lease in &granted {
        store
            .settle(&lease.id, &[(counter.to_owned(), 5)])
            .await
            .unwrap();
    }
    assert_eq!(store.spent(&[counter.to_owned()]).await.unwrap(), vec![70]);
    // 70 spent: 30 left; a hold on two counters is all or nothing.
    let other = format!("{counter}-other");
    let refused = reserve(store, &[hold(&other, 31, 1_000), hold(counter, 31, 100)])
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        Refused {
            index: 1,
            committed: 70
        }
    );
    assert_eq!(
        store.spent(std::slice::from_ref(&other)).await.unwrap(),
        vec![0]
    );
    assert!(
        reserve(store, &[hold(&other, 31, 1_000), hold(counter, 30, 100)])
            .await
            .is_ok()
    );
    let lenient = Hold {
        strict: false,
        ..hold(counter, 1_000, 100)
    };
    assert!(reserve(store, &[lenient]).await.is_ok());
}

async fn windows_count_earlier_buckets(store: &Store, prefix: &str) {
    let (b1, b2) = (format!("{prefix}-r1"), format!("{prefix}-r2"));
    let first = reserve(store, &[hold(&b1, 60, 100)]).await.unwrap();
    let spent = store.settle(&first.id, &[(b1.clone(), 55)]).await.unwrap();
    assert_eq!(spent, vec![55]);
    // The next bucket's hold counts the earlier bucket's 55 against the limit of 100.
    let windowed = |amount| Hold {
        window: vec![b1.clone()],
        ..hold(&b2, amount, 100)
    };
    let refused = reserve(store, &[windowed(46)]).await.unwrap_err();
    assert_eq!(refused.committed, 55);
    reserve(store, &[windowed(45)]).await.unwrap();
    assert_eq!(
        store.spent(&[b1.clone(), b2.clone()]).await.unwrap(),
        vec![55, 0]
    );
}

/// The time a store test passes to the store: fixed and moved by the test (SQLite, whose clock
/// is the caller's), or the real one (Redis, which reads its own).
struct Clock(Option<std::sync::atomic::AtomicI64>);

impl Clock {
    fn now(&self) -> i64 {
        self.0
            .as_ref()
            .map_or_else(now_ms, |t| t.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Moves a fixed clock on; the real one moves by itself.
    fn pass(&self, d: std::time::Duration) {
        if let Some(t) = &self.0 {
            t.fetch_add(d.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Reserves `amount` against a limit of 100 on `counter` under `lease`, at the clock's time.
async fn take(
    store: &Store,
    counter: &str,
    clock: &Clock,
    amount: i64,
    lease: &Lease,
) -> Result<(), Refused> {
    store
        .reserve(&[hold(counter, amount, 100)], lease, clock.now())
        .await
        .unwrap()
}

/// A hold expires with its lease, so a reservation never settled (its process died) stops
/// counting; its settlement coming late still adds the spend and releases nothing, neither
/// below zero nor another lease's hold, however many times it comes.
async fn leases_expire_and_late_settlements_stay_exact(store: &Store, counter: &str, clock: Clock) {
    let short = Lease::new(std::time::Duration::from_millis(300));
    take(store, counter, &clock, 80, &short).await.unwrap();
    let other = lease();
    let refused = take(store, counter, &clock, 30, &other).await.unwrap_err();
    assert_eq!(refused.committed, 80);
    clock.pass(short.ttl);
    let start = std::time::Instant::now();
    loop {
        match take(store, counter, &clock, 30, &other).await {
            Ok(()) => break,
            Err(r) => assert_eq!(r.committed, 80),
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "the expired hold still counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The expired lease settles late: its spend counts, the other lease's 30 stays held.
    let spent = store.settle(&short.id, &[(counter.to_owned(), 10)]).await;
    assert_eq!(spent.unwrap(), vec![10]);
    assert_eq!(
        take(store, counter, &clock, 61, &lease())
            .await
            .unwrap_err()
            .committed,
        40
    );
    let again = store.settle(&short.id, &[(counter.to_owned(), 0)]).await;
    assert_eq!(again.unwrap(), vec![10]);
    assert_eq!(
        take(store, counter, &clock, 61, &lease())
            .await
            .unwrap_err()
            .committed,
        40
    );
    // The live lease settles and frees its hold.
    let spent = store.settle(&other.id, &[(counter.to_owned(), 30)]).await;
    assert_eq!(spent.unwrap(), vec![40]);
    take(store, counter, &clock, 60, &lease()).await.unwrap();
}

/// A renewed hold outlives its first lease; renewing one that already expired revives nothing.
async fn renewed_leases_outlive_their_first_term(store: &Store, counter: &str, clock: Clock) {
    let short = Lease::new(std::time::Duration::from_millis(300));
    take(store, counter, &clock, 80, &short).await.unwrap();
    let longer = Lease {
        id: short.id.clone(),
        ttl: std::time::Duration::from_secs(60),
    };
    store
        .renew(&[counter.to_owned()], &longer, clock.now())
        .await
        .unwrap();
    clock.pass(short.ttl * 2);
    if clock.0.is_none() {
        // Redis reads its own clock: the first term must really pass.
        tokio::time::sleep(short.ttl * 2).await;
    }
    assert_eq!(
        take(store, counter, &clock, 30, &lease())
            .await
            .unwrap_err()
            .committed,
        80
    );
    store
        .settle(&short.id, &[(counter.to_owned(), 0)])
        .await
        .unwrap();

    let lapsed = Lease::new(std::time::Duration::from_millis(300));
    take(store, counter, &clock, 80, &lapsed).await.unwrap();
    clock.pass(lapsed.ttl * 2);
    if clock.0.is_none() {
        tokio::time::sleep(lapsed.ttl * 2).await;
    }
    let late = Lease {
        id: lapsed.id.clone(),
        ttl: std::time::Duration::from_secs(60),
    };
    store
        .renew(&[counter.to_owned()], &late, clock.now())
        .await
        .unwrap();
    take(store, counter, &clock, 90, &lease()).await.unwrap();
}

async fn ledger_kv_and_replays(store: &Store) {
    let entry = |day: &str, tenant: &str, cost| LedgerEntry {
        day: day.into(),
        tenant: tenant.into(),
        project: "p".into(),
        user: String::new(),
        key: "k1".into(),
        model: "gpt-4o".into(),
        requests: 1,
        tokens_in: 10,
        tokens_out: 5,
        cost,
    };
    store.record(&entry("2026-11-01", "acme", 100));
    store.record(&entry("2026-11-02", "acme", 50));
    store.record(&entry("2026-11-02", "acme", 25));
    store.record(&entry("2026-11-02", "globex", 7));
    assert!(store.flush(std::time::Duration::from_secs(10)).await);
    let rows = store.ledger(Some("acme"), "2026-11-02").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].requests, rows[0].cost, rows[0].tokens_in),
        (2, 75, 20)
    );
    assert_eq!(store.ledger(None, "2026-11-01").await.unwrap().len(), 3);

    assert_eq!(store.get("canary", "c1").await.unwrap(), None);
    store.put("canary", "c1", "{\"step\":2}").await.unwrap();
    assert_eq!(
        store.get("canary", "c1").await.unwrap().as_deref(),
        Some("{\"step\":2}")
    );

    // Versioned values: compare-and-set, apart from plain ones.
    assert_eq!(
        store.get_versioned("canary", "c1").await.unwrap(),
        (0, None)
    );
    assert_eq!(
        store.put_if_version("canary", "c1", 1, "a").await.unwrap(),
        None
    );
    assert_eq!(
        store.put_if_version("canary", "c1", 0, "a").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.put_if_version("canary", "c1", 0, "b").await.unwrap(),
        None
    );
    assert_eq!(
        store.put_if_version("canary", "c1", 1, "b").await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.put_if_version("canary", "c1", 1, "c").await.unwrap(),
        None
    );
    assert_eq!(store.version("canary", "c1").await.unwrap(), 2);
    assert_eq!(
        store.get_versioned("canary", "c1").await.unwrap(),
        (2, Some("b".to_owned()))
    );
    assert_eq!(
        store.get("canary", "c1").await.unwrap().as_deref(),
        Some("{\"step\":2}")
    );

    assert!(store.first_use("sig-1", 10_000, 1_000).await.unwrap());
    assert!(!store.first_use("sig-1", 10_000, 2_000).await.unwrap());
}

/// Values kept for a while are read back until deleted.
async fn expiring_values(store: &Store) {
    let now = now_ms();
    let later = now + 60_000;
    assert_eq!(store.get_expiring("resp", "t/a", now).await.unwrap(), None);
    store
        .put_expiring("resp", "t/a", "{\"v\":1}", later, now)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_expiring("resp", "t/a", now)
            .await
            .unwrap()
            .as_deref(),
        Some("{\"v\":1}")
    );
    assert!(store.delete_expiring("resp", "t/a").await.unwrap());
    assert!(!store.delete_expiring("resp", "t/a").await.unwrap());
    assert_eq!(store.get_expiring("resp", "t/a", now).await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_expiring_values_expire_by_the_gateway_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    expiring_values(&store).await;
    store
        .put_expiring("resp", "old", "1", 2_000, 1_000)
        .await
        .unwrap();
    assert!(store
        .get_expiring("resp", "old", 1_500)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.get_expiring("resp", "old", 2_001).await.unwrap(),
        None
    );
    // A later write purges what expired.
    store
        .put_expiring("resp", "new", "2", 9_000, 3_000)
        .await
        .unwrap();
    assert!(!store.delete_expiring("resp", "old").await.unwrap());
}

/// GCRA cells on the store: all or none, the refusing cell named, corrections applied before
/// the next check.
/// Intervals are an hour long, so the milliseconds the test takes do not matter.
async fn rate_cells_admit_all_or_none(store: &Store, prefix: &str) {
    const HOUR: i64 = 3_600_000_000;
    let cell = |name: &str, capacity_hours: i64| rates::Cell {
        key: format!("{prefix}:{name}"),
        increment_us: HOUR,
        capacity_us: capacity_hours * HOUR,
    };
    let near = |ahead: i64, hours: i64| (ahead - hours * HOUR).abs() < 60_000_000;
    let (a, b) = (cell("a", 3), cell("b", 1));
    let first = store.rate_check(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(first.refused, None);
    assert!(
        near(first.ahead_us[0], 1) && near(first.ahead_us[1], 1),
        "{first:?}"
    );
    let peeked = store
        .rate_peek(&[a.key.clone(), format!("{prefix}:never")])
        .await
        .unwrap();
    assert!(near(peeked[0], 1) && peeked[1] == 0, "{peeked:?}");
    let second = store.rate_check(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(second.refused, Some(1), "b holds one at a time");
    assert!(near(second.ahead_us[0], 1), "a took nothing: {second:?}");
    store.rate_correct(&[(b.key.clone(), -HOUR)]);
    let third = store.rate_check(&[a.clone(), b.clone()]).await.unwrap();
    assert_eq!(third.refused, None, "b's hour was given back");
    assert!(near(third.ahead_us[0], 2), "{third:?}");
    store.rate_correct(&[(a.key.clone(), HOUR)]);
    let fourth = store.rate_check(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(fourth.refused, Some(0), "a's debt fills it");
}

#[tokio::test]
async fn sqlite_store_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    keys_rotate_and_revoke(&store).await;
    strict_reservations_never_pass_the_limit(&store, "b:key:k1:2026-11-24").await;
    windows_count_earlier_buckets(&store, "b:rolling").await;
    let clock = Clock(Some(now_ms().into()));
    leases_expire_and_late_settlements_stay_exact(&store, "b:lease", clock).await;
    let clock = Clock(Some(now_ms().into()));
    renewed_leases_outlive_their_first_term(&store, "b:renew", clock).await;
    ledger_kv_and_replays(&store).await;
    rate_cells_admit_all_or_none(&store, "rl").await;
    // A reopened store keeps everything (migrations are not re-run).
    drop(store);
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    assert!(store.key("k1").await.unwrap().is_some());
    assert_eq!(
        store.spent(&["b:key:k1:2026-11-24".into()]).await.unwrap(),
        vec![70]
    );
}

/// A state file of the previous release (aggregate holds on the counters) opens: its spend is
/// kept, and what its processes held and never settled no longer counts.
#[tokio::test]
async fn sqlite_state_of_the_previous_release_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
        c.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO counters (name, spent, held, expires_at)
                 VALUES ('b:old', 20, 75, 9999999999);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    assert_eq!(store.spent(&["b:old".into()]).await.unwrap(), vec![20]);
    let refused = reserve(&store, &[hold("b:old", 81, 100)])
        .await
        .unwrap_err();
    assert_eq!(refused.committed, 20);
    reserve(&store, &[hold("b:old", 80, 100)]).await.unwrap();
}

/// Rows recorded concurrently share commits; every one is counted exactly once, and a flush
/// waits for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ledger_counts_concurrent_rows_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let tasks: Vec<_> = (0..200i64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let entry = LedgerEntry {
                    day: "2026-11-24".into(),
                    tenant: if i % 4 == 0 { "globex" } else { "acme" }.into(),
                    project: String::new(),
                    user: String::new(),
                    key: "k1".into(),
                    model: "gpt-4o".into(),
                    requests: 1,
                    tokens_in: i,
                    tokens_out: 1,
                    cost: 10,
                };
                store.record(&entry);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(store.flush(std::time::Duration::from_secs(10)).await);
    let rows = store.ledger(None, "2026-11-24").await.unwrap();
    let totals: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.tenant.as_str(),
                r.requests,
                r.tokens_in,
                r.tokens_out,
                r.cost,
            )
        })
        .collect();
    let tokens = |keep: fn(i64) -> bool| (0..200).filter(|i| keep(*i)).sum::<i64>();
    assert_eq!(
        totals,
        [
            ("acme", 150, tokens(|i| i % 4 != 0), 150, 1500),
            ("globex", 50, tokens(|i| i % 4 == 0), 50, 500),
        ]
    );
}

fn redis_url() -> String {
    std::env::var("LLMGW_TEST_REDIS_URL")
        .expect("LLMGW_TEST_REDIS_URL must name the test Redis (e.g. redis://127.0.0.1:6379/)")
}

async fn redis_store() -> Store {
    let prefix = format!("llmgw-test-{}:", rand::random::<u64>());
    Store::Redis(RedisStore::connect(&redis_url(), &prefix).await.unwrap())
}

#[tokio::test]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn redis_store_behaves() {
    let store = redis_store().await;
    keys_rotate_and_revoke(&store).await;
    strict_reservations_never_pass_the_limit(&store, "b:key:k1:2026-11-24").await;
    windows_count_earlier_buckets(&store, "b:rolling").await;
    leases_expire_and_late_settlements_stay_exact(&store, "b:lease", Clock(None)).await;
    renewed_leases_outlive_their_first_term(&store, "b:renew", Clock(None)).await;
    ledger_kv_and_replays(&store).await;
    expiring_values(&store).await;
    rate_cells_admit_all_or_none(&store, "rl").await;
}

//! State store faults are refusals: a prompt 503 naming the state store, `/readyz` failing,
//! and recovery by itself; never a crash, a hang, or writes silently lost.
//!
//! The Redis test starts a Redis of its own (`redis-server` on `PATH`) and is ignored unless
//! run with `--include-ignored`, like the other Redis tests.

mod common;
mod state_support;

use common::*;
use state_support::*;
use std::path::Path;
use std::time::Duration;

/// A client-side bound far above the gateway's own (about one second) and below the ~9.5 s a
/// request used to hang while Redis was down: a request that takes longer is hanging on the
/// store.
const PATIENCE: Duration = Duration::from_secs(5);

/// A chat request with the test key that must be answered within [`PATIENCE`].
async fn chat_now(gw: &Gateway) -> Answer {
    chat_with(gw, "m").await
}

/// Whether an answer is the state store's 503 with its `Retry-After`.
fn is_store_refusal(a: &Answer) -> bool {
    a.status == 503
        && a.body.contains("the state store is unavailable")
        && a.headers.contains_key("retry-after")
}

async fn ready_status(gw: &Gateway) -> (u16, String) {
    let a = send("GET", &gw.url("/readyz"), None, &[]).await;
    (a.status, a.body)
}

/// A policy with one model `m` on the mock, and these budgets.
fn policy(dir: &Path, base_url: &str, budgets: &str) {
    budget_policy(dir, base_url, &[("m", "chat", "m+ok")], budgets);
}

#[tokio::test]
#[ignore = "starts its own redis-server; run with --include-ignored"]
async fn redis_outage_is_a_prompt_503_and_recovers_by_itself() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut redis = OwnRedis::ready(data.path()).await;
    let upstream = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    policy(dir.path(), &upstream.base_url(), "");
    let gw = redis.gateway(dir.path());
    assert_eq!(chat_now(&gw).await.status, 200);

    redis.kill();
    until(Duration::from_secs(5), "/readyz fails", || async {
        let (status, body) = ready_status(&gw).await;
        status == 503 && body.contains("the state store is unavailable")
    })
    .await;
    let refused = chat_now(&gw).await;
    assert!(
        is_store_refusal(&refused),
        "{} {}",
        refused.status,
        refused.body
    );

    let port = redis.port;
    let _redis = OwnRedis::start(data.path(), port);
    until(Duration::from_secs(10), "/readyz recovers", || async {
        ready_status(&gw).await.0 == 200
    })
    .await;
    let served = chat_now(&gw).await;
    assert_eq!(served.status, 200, "{}", served.body);
}

#[tokio::test]
#[ignore = "starts its own redis-server; run with --include-ignored"]
async fn a_request_during_an_unnoticed_redis_outage_is_answered_promptly() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut redis = OwnRedis::ready(data.path()).await;
    let upstream = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A budget, so that every request reads and holds spend in the store.
    policy(
        dir.path(),
        &upstream.base_url(),
        "  - name: cap\n    scope: key\n    period: daily\n    limit_usd: 100\n    on_exceed: block\n",
    );
    let gw = redis.gateway(dir.path());
    assert_eq!(chat_now(&gw).await.status, 200);
    redis.kill();
    // Straight after the outage, before the probe has seen it: the requests themselves meet
    // it, the first on the broken connection, the next ones while it reconnects.
    for _ in 0..3 {
        let refused = chat_now(&gw).await;
        assert!(
            is_store_refusal(&refused),
            "{} {}",
            refused.status,
            refused.body
        );
    }
}

/// A chat request for `model` that must be answered within [`PATIENCE`].
async fn chat_with(gw: &Gateway, model: &str) -> Answer {
    tokio::time::timeout(
        PATIENCE,
        post(&gw.url("/v1/chat/completions"), &chat(model, false, 5)),
    )
    .await
    .expect("the gateway answers while the state store is down instead of hanging")
}

#[tokio::test]
#[ignore = "starts its own redis-server; run with --include-ignored"]
async fn a_budget_that_allows_it_serves_during_a_redis_outage_and_a_default_one_refuses() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut redis = OwnRedis::ready(data.path()).await;
    let upstream = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    budget_policy(
        dir.path(),
        &upstream.base_url(),
        &[
            ("open", "open", "open+ok"),
            ("closed", "closed", "closed+ok"),
        ],
        concat!(
            "  - name: open-cap\n    scope: key\n    when: 'request.model == \"open\"'\n",
            "    period: daily\n    limit_usd: 100\n    on_exceed: block\n",
            "    on_store_unavailable: allow\n",
            "  - name: closed-cap\n    scope: key\n    when: 'request.model == \"closed\"'\n",
            "    period: daily\n    limit_usd: 100\n    on_exceed: block\n",
        ),
    );
    let gw = redis.gateway(dir.path());
    // The key is verified in the store once.
    let first = chat_with(&gw, "closed").await;
    assert_eq!(first.status, 200, "{}", first.body);

    redis.kill();
    // Before or after the probe notices, the allowing budget serves.
    let early = chat_with(&gw, "open").await;
    assert_eq!(early.status, 200, "{}", early.body);
    until(Duration::from_secs(5), "/readyz fails", || async {
        ready_status(&gw).await.0 == 503
    })
    .await;
    let open = chat_with(&gw, "open").await;
    assert_eq!(open.status, 200, "{}", open.body);
    let closed = chat_with(&gw, "closed").await;
    assert!(
        is_store_refusal(&closed),
        "{} {}",
        closed.status,
        closed.body
    );
    assert!(closed.body.contains("state_unavailable"), "{}", closed.body);
    let metrics = gw.metrics().await;
    let served = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llmgw_unbudgeted_requests_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(served, Some(2), "{metrics}");
    until(Duration::from_secs(5), "the logs name it", || async {
        let marked = gw.request_logs().iter().any(|l| {
            l["unbudgeted"] == true && l["requested_model"] == "open" && l["status"] == 200
        });
        marked && gw.logs().contains("open-cap")
    })
    .await;

    let port = redis.port;
    let _redis = OwnRedis::start(data.path(), port);
    until(Duration::from_secs(10), "/readyz recovers", || async {
        ready_status(&gw).await.0 == 200
    })
    .await;
    for model in ["open", "closed"] {
        let served = chat_with(&gw, model).await;
        assert_eq!(served.status, 200, "{model}: {}", served.body);
    }
}

#[tokio::test]
#[ignore = "starts its own redis-server; run with --include-ignored"]
async fn rate_limits_follow_the_budgets_during_a_redis_outage() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut redis = OwnRedis::ready(data.path()).await;
    let upstream = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    budget_policy(
        dir.path(),
        &upstream.base_url(),
        &[
            ("open", "open", "open+ok"),
            ("closed", "closed", "closed+ok"),
        ],
        concat!(
            "  - name: any-cap\n    scope: key\n    period: daily\n    limit_usd: 100\n",
            "    on_exceed: block\n    on_store_unavailable: allow\n",
        ),
    );
    std::fs::write(
        dir.path().join("ratelimits.yaml"),
        concat!(
            "apiVersion: llmgw.dev/v1\nkind: RateLimits\nlimits:\n",
            "  - name: open-rate\n    scope: key\n    when: 'request.model == \"open\"'\n",
            "    requests: {limit: 100, per: second}\n    on_store_unavailable: allow\n",
            "  - name: closed-rate\n    scope: key\n    when: 'request.model == \"closed\"'\n",
            "    requests: {limit: 100, per: second}\n",
        ),
    )
    .expect("write rate limits");
    let gw = redis.gateway(dir.path());
    let first = chat_with(&gw, "closed").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-ratelimit-limit-requests"), "100");

    redis.kill();
    until(Duration::from_secs(5), "/readyz fails", || async {
        ready_status(&gw).await.0 == 503
    })
    .await;
    let open = chat_with(&gw, "open").await;
    assert_eq!(open.status, 200, "{}", open.body);
    let closed = chat_with(&gw, "closed").await;
    assert!(
        is_store_refusal(&closed),
        "{} {}",
        closed.status,
        closed.body
    );
    let metrics = gw.metrics().await;
    let unlimited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("llmgw_ratelimit_unlimited_requests_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(unlimited, Some(1), "{metrics}");
}

/// A gateway with the dev key on a SQLite state store of its own, with model `m` under
/// `budgets`, that has answered one request.
struct OnSqlite {
    gw: Gateway,
    state: tempfile::TempDir,
    _policies: tempfile::TempDir,
    _upstream: llmgw_mock_provider::MockHandle,
}

async fn on_sqlite(budgets: &str) -> OnSqlite {
    let upstream = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &upstream.base_url(), budgets);
    let state = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_on(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        Some(state.path().to_str().expect("utf-8")),
    );
    assert_eq!(chat_now(&gw).await.status, 200);
    OnSqlite {
        gw,
        state,
        _policies: policies,
        _upstream: upstream,
    }
}

#[tokio::test]
async fn deleted_sqlite_files_fail_readiness_and_refuse_requests() {
    let OnSqlite {
        mut gw,
        state,
        _policies,
        _upstream,
    } = on_sqlite("").await;
    assert_eq!(ready_status(&gw).await.0, 200);

    let db = state.path().join("state.sqlite");
    let aside = state.path().join("moved-away.sqlite");
    std::fs::rename(&db, &aside).expect("move the database away");
    until(Duration::from_secs(5), "/readyz fails", || async {
        let (status, body) = ready_status(&gw).await;
        status == 503 && body.contains("state.sqlite was deleted")
    })
    .await;
    let refused = chat_now(&gw).await;
    assert!(
        is_store_refusal(&refused),
        "{} {}",
        refused.status,
        refused.body
    );
    assert!(refused.body.contains("state.sqlite"), "{}", refused.body);
    let status = gw.admin_get("/admin/status").await.json();
    assert_eq!(status["state_store"]["available"], false, "{status}");
    let reason = status["state_store"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("state.sqlite was deleted"), "{reason}");

    // The operator puts the file back: the gateway serves again by itself.
    std::fs::rename(&aside, &db).expect("restore the database");
    until(Duration::from_secs(5), "/readyz recovers", || async {
        ready_status(&gw).await.0 == 200
    })
    .await;
    assert_eq!(chat_now(&gw).await.status, 200);
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the gateway is still running"
    );
}

#[tokio::test]
async fn a_truncated_shared_memory_file_is_a_refusal_not_a_crash() {
    // Under a budget, every request reserves in the database.
    let OnSqlite {
        mut gw,
        state,
        _policies,
        _upstream,
    } = on_sqlite(
        "  - name: cap\n    scope: key\n    period: daily\n    limit_usd: 100\n    on_exceed: block\n",
    )
    .await;

    // What a clean-up job or a careless `: > file` does to the WAL index SQLite has mapped.
    let shm = state.path().join("state.sqlite-shm");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shm)
        .expect("open the -shm file")
        .set_len(0)
        .expect("truncate it");
    // The next reservation meets the truncated mapping (or the store's probe does first): it
    // is refused, the gateway reopens the database, serves again and says what happened.
    let next = chat_now(&gw).await;
    assert!(
        next.status == 200 || is_store_refusal(&next),
        "{} {}",
        next.status,
        next.body
    );
    until(
        Duration::from_secs(5),
        "the gateway serves again",
        || async { chat_now(&gw).await.status == 200 && ready_status(&gw).await.0 == 200 },
    )
    .await;
    let log = std::fs::read_to_string(&gw.log).expect("read the log");
    assert!(
        log.contains("shared-memory file was truncated"),
        "the truncation is not reported:\n{log}"
    );
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the gateway is still running"
    );
}

//! A replica killed (SIGKILL) with requests in flight strands no budget: their holds are
//! leased and expire on their own, on Redis shared by two replicas and on SQLite reopened by a
//! restarted replica.
//!
//! The Redis test needs a Redis: set `LLMGW_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`)
//! and run with `--include-ignored`. It writes under a prefix of its own.

mod common;
mod state_support;

use common::*;
use state_support::*;
use std::path::Path;
use std::time::Duration;

/// The daily cap of the dev key, USD.
const CAP: f64 = 0.01;
/// Output tokens of every request: each holds `mock_cost(MAX_TOKENS)`, so two in flight hold
/// 80% of the cap and a third does not fit beside them.
const MAX_TOKENS: u64 = 2000;
/// The upstream of the requests in flight: it never answers.
const HANGING: &str = "s+hang";
/// A streamed answer of [`MAX_TOKENS`] tokens 10 ms apart: it runs about 20 s, twice [`LEASE`].
const DRIPPING: &str = "d+drip-10";

/// The lease of a hold in these tests: the mock policy's timeouts (3 s for a whole answer,
/// one attempt), one retry in place after at most 2 s, and a 2 s margin. Kept short by the
/// policy's short request timeout; the limit below leaves room for a slow machine.
const LEASE: Duration = Duration::from_secs(3 + 3 + 2 + 2);
const LEASE_PASSED: Duration = Duration::from_secs(25);

fn policy(dir: &Path, base_url: &str) {
    budget_policy(
        dir,
        base_url,
        &[
            ("chat-slow", "slow", HANGING),
            ("chat-fast", "fast", "f+ok"),
            ("chat-drip", "drip", DRIPPING),
        ],
        &format!(
            "  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: {CAP}\n    on_exceed: block\n"
        ),
    );
    let providers = read(&dir.join("providers.yaml"));
    assert!(
        providers.contains("total_ms: 3000"),
        "the test's lease assumes a 3 s request timeout: {providers}"
    );
}

fn replica(policies: &Path, state: &str, extra: &[&str]) -> Gateway {
    let mut args = vec!["--policies", policies.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    Gateway::start_on(
        &args,
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        Some(state),
    )
}

/// Sends two requests that hang upstream through `gw` and returns once both hold their
/// budget (the mock saw them, so their reservations were made).
async fn two_in_flight(gw: &Gateway, mock: &llmgw_mock_provider::MockHandle) {
    let before = mock.stats.attempts(HANGING);
    for _ in 0..2 {
        let url = gw.url("/v1/chat/completions");
        let body = chat_for("chat-slow", Some(MAX_TOKENS), None);
        tokio::spawn(async move { post(&url, &body).await });
    }
    until(
        Duration::from_secs(10),
        "two requests in flight",
        || async { mock.stats.attempts(HANGING) >= before + 2 },
    )
    .await;
}

/// Right after the kill, `gw` refuses a request the stranded holds leave no room for; once
/// the lease has passed, it serves it.
async fn refused_then_served_within_the_lease(gw: &Gateway) {
    let body = chat_for("chat-fast", Some(MAX_TOKENS), None);
    let url = gw.url("/v1/chat/completions");
    let refused = post(&url, &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("`key-cap`"), "{}", refused.body);
    until(
        LEASE_PASSED,
        "the budget usable again once the lease has passed",
        || async {
            let a = post(&url, &body).await;
            assert!(matches!(a.status, 200 | 429), "{}: {}", a.status, a.body);
            a.status == 200
        },
    )
    .await;
    // The expired holds are gone for good: what was really spent is what counts. The two
    // holds were taken a moment apart, so they may expire a moment apart: the second request
    // fits once the later one has gone too.
    until(
        Duration::from_secs(5),
        "a second request fits once both holds expired",
        || async {
            let a = post(&url, &body).await;
            assert!(matches!(a.status, 200 | 429), "{}: {}", a.status, a.body);
            a.status == 200
        },
    )
    .await;
    let third = post(&url, &body).await;
    assert_eq!(third.status, 429, "{}", third.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_replica_killed_mid_request_strands_no_budget_on_redis() {
    assert!(LEASE < LEASE_PASSED);
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url());
    let mut doomed = replica(policies.path(), &url, &["--state-prefix", &prefix]);
    let survivor = replica(policies.path(), &url, &["--state-prefix", &prefix]);
    two_in_flight(&doomed, &mock).await;
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().expect("reaped");
    refused_then_served_within_the_lease(&survivor).await;
    drop(survivor);
    cleanup_redis(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_request_strands_no_budget_on_sqlite() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_str().expect("utf-8").to_owned();
    let mut doomed = replica(policies.path(), &state, &[]);
    two_in_flight(&doomed, &mock).await;
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().expect("reaped");
    let restarted = replica(policies.path(), &state, &[]);
    refused_then_served_within_the_lease(&restarted).await;
}

/// Lease ids and expiries (milliseconds) of the holds in a SQLite state directory.
fn holds(state: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open(state.join("state.sqlite")).expect("open the state");
    let mut stmt = db
        .prepare("SELECT id, expires_at FROM holds ORDER BY id")
        .expect("query holds");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("read holds")
        .collect::<Result<_, _>>()
        .expect("holds")
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A stream that runs on past its lease keeps its hold: the gateway renews it while it
/// streams, so the budget stays strict however long the answer takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_running_past_its_lease_keeps_its_hold() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url());
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = replica(policies.path(), dir.path().to_str().expect("utf-8"), &[]);
    let before = mock.stats.attempts(DRIPPING);
    for _ in 0..2 {
        let url = gw.url("/v1/chat/completions");
        let mut body: serde_json::Value =
            serde_json::from_str(&chat_for("chat-drip", Some(MAX_TOKENS), None)).expect("json");
        body["stream"] = true.into();
        tokio::spawn(async move { post(&url, &body.to_string()).await });
    }
    until(Duration::from_secs(10), "two streams in flight", || async {
        mock.stats.attempts(DRIPPING) >= before + 2
    })
    .await;
    let first = holds(dir.path());
    assert_eq!(first.len(), 2, "{first:?}");
    until(LEASE_PASSED, "both holds renewed", || async {
        let now = holds(dir.path());
        now.len() == 2 && now.iter().zip(&first).all(|(n, f)| n.1 > f.1)
    })
    .await;
    // Past the first term of both leases, the streams still hold their budget.
    let first_end = first.iter().map(|h| h.1).max().unwrap_or_default();
    until(LEASE_PASSED, "the first lease term over", || async {
        unix_ms() > first_end
    })
    .await;
    let third = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("chat-fast", Some(MAX_TOKENS), None),
    )
    .await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.body.contains("`key-cap`"), "{}", third.body);
}

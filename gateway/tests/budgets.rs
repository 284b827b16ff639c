//! Budgets enforced by the real `llmgw` binary on its state store: strict caps under
//! concurrency, spend that survives a restart, holds released when a call fails, alerts, the
//! spend report, and the bundled downgrade scenario (a developer key past 80% of its daily
//! budget moves from GPT-4o to Qwen 2.5).

mod common;
mod state_support;

use common::*;
use llmgw_engine::model::{Period, Scope};
use llmgw_gateway::budgets::{counter, period_at};
use llmgw_gateway::store::{to_nanos, Hold, Lease, Store};
use state_support::*;
use std::path::Path;
use std::time::Duration;

/// `key-cap`: a strict daily cap per key of `limit` USD with an alert at half of it.
fn key_cap(limit: f64) -> String {
    format!(
        "  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: {limit}\n    alert_at: [0.5]\n    on_exceed: block\n"
    )
}

fn start(policies: &Path, state: &str) -> Gateway {
    Gateway::start_on(
        &["--policies", policies.to_str().expect("utf-8")],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        Some(state),
    )
}

/// Spend from `llmgw spend --json` for a state store, once it reaches `expected` (ledger rows
/// are written in the background) or the wait ends.
pub fn total_spend(state: &[&str], expected: f64) -> f64 {
    let out = spend_once_written(&[&["spend", "--json"], state].concat(), |o| {
        total_is(o, expected)
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["total_usd"].as_f64().expect("total")
}

/// Sends `n` concurrent requests spread over `gateways`; returns (ok, refused by a budget).
pub async fn burst(gateways: &[&Gateway], n: usize, body: &str) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = gateways[i % gateways.len()].url("/v1/chat/completions");
        let body = body.to_owned();
        tasks.push(tokio::spawn(async move { post(&url, &body).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let a = t.await.expect("task");
        match a.status {
            200 => ok += 1,
            429 => {
                let e = a.json();
                assert_eq!(e["error"]["code"], "budget_exceeded", "{}", a.body);
                assert!(
                    e["error"]["message"]
                        .as_str()
                        .expect("message")
                        .contains("`key-cap`"),
                    "{}",
                    a.body
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_never_pass_a_strict_cap() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let cap = 0.01;
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        &key_cap(cap),
    );
    let location = state.path().to_str().expect("utf-8");
    let gw = start(policies.path(), location);
    let body = chat_for("chat-a", Some(100), None);
    let (ok, refused) = burst(&[&gw], 64, &body).await;
    let per_request = mock_cost(100);
    let fit = (cap / per_request).floor() as usize;
    assert_eq!(ok + refused, 64);
    assert!(ok <= fit && ok > 0, "{ok} served, {fit} fit");
    let spent = total_spend(&["--state", location], ok as f64 * per_request);
    assert!(spent <= cap + 1e-12, "spent {spent} > cap {cap}");
    assert!((spent - ok as f64 * per_request).abs() < 1e-9, "{spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_period_spend_and_the_refusal_names_the_reset() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    // Room for three requests of 100 output tokens.
    let cap = mock_cost(100) * 3.5;
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        &key_cap(cap),
    );
    let location = state.path().to_str().expect("utf-8");
    let body = chat_for("chat-a", Some(100), None);
    {
        let gw = start(policies.path(), location);
        for _ in 0..3 {
            let a = post(&gw.url("/v1/chat/completions"), &body).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    let gw = start(policies.path(), location);
    let refused = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let e = refused.json();
    assert_eq!(e["error"]["type"], "insufficient_quota");
    let message = e["error"]["message"].as_str().expect("message");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT00:00:00Z")
        .to_string();
    assert!(message.contains("`key-cap`"), "{message}");
    assert!(message.contains(&tomorrow), "{message}");
    let retry: u64 = refused.header("retry-after").parse().expect("retry-after");
    assert!((1..=86_400).contains(&retry));
    // A cheaper request still fits in what is left.
    let small = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("chat-a", Some(10), None),
    )
    .await;
    assert_eq!(small.status, 200, "{}", small.body);
    let report = spend_once_written(&["spend", "--state", location], |o| {
        o.stdout.contains("chat-a")
    });
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(report.stdout.contains("tenant dev:"), "{}", report.stdout);
    assert!(report.stdout.contains("chat-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_releases_its_hold() {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    // Room for one hold of 100 output tokens at a time.
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("broken", "x", "x+503"), ("chat-a", "a", "a+ok")],
        &key_cap(mock_cost(100) * 1.5),
    );
    let location = state.path().to_str().expect("utf-8");
    let gw = start(policies.path(), location);
    let failed = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("broken", Some(100), None),
    )
    .await;
    assert_eq!(failed.status, 503, "{}", failed.body);
    // Had the failed call kept its hold, this one would not fit.
    let ok = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("chat-a", Some(100), None),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let after = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("chat-a", Some(100), None),
    )
    .await;
    assert_eq!(after.status, 429, "{}", after.body);
    let spent = total_spend(&["--state", location], mock_cost(100));
    assert!((spent - mock_cost(100)).abs() < 1e-9, "{spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_an_alert_threshold_logs_once_and_counts_spend_by_tenant() {
    // Half of the cap is crossed by the third request of 100 output tokens.
    let setup = OneModel::new(&key_cap(mock_cost(100) * 5.0)).await;
    let gw = start(setup.policies.path(), setup.state());
    for _ in 0..4 {
        let a = post(
            &gw.url("/v1/chat/completions"),
            &chat_for("chat-a", Some(100), None),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    until(Duration::from_secs(5), "the alert line", || async {
        gw.logs().contains("budget alert")
    })
    .await;
    let alerts: Vec<serde_json::Value> = gw
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "budget alert")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["budget"], "key-cap");
    assert_eq!(alerts[0]["tenant"], "dev");
    assert_eq!(alerts[0]["threshold"], 0.5);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"llmgw_budget_alerts_total{budget="key-cap",tenant="dev",threshold="0.5"} 1"#
        ),
        "{metrics}"
    );
    let spend_line = metrics
        .lines()
        .find(|l| l.starts_with(r#"llmgw_spend_usd_total{tenant="dev",project=""}"#))
        .expect("spend metric");
    let spent: f64 = spend_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!((spent - 4.0 * mock_cost(100)).abs() < 1e-9, "{spend_line}");
}

/// Adds `usd` of settled spend to a budget's counter of today, as earlier requests would have.
async fn seed_spend(location: &str, tenant: &str, budget: &str, key_id: &str, usd: f64) {
    let store = Store::open(location).await.expect("store");
    let at = period_at(Period::Daily, None, chrono::Utc::now());
    let name = counter(tenant, budget, Scope::Key, key_id, &at.bucket);
    let amount = to_nanos(usd);
    let lease = Lease::new(Duration::from_secs(60));
    let now_ms = chrono::Utc::now().timestamp_millis();
    store
        .reserve(
            &[Hold {
                counter: name.clone(),
                amount,
                limit: i64::MAX,
                strict: false,
                ttl_secs: at.ttl_secs,
                window: Vec::new(),
            }],
            &lease,
            now_ms,
        )
        .await
        .expect("reserve")
        .expect("held");
    store
        .settle(&lease.id, &[(name, amount)])
        .await
        .expect("settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_key_past_80_percent_moves_from_gpt_4o_to_qwen_on_the_bundled_policy() {
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8").to_owned();
    let s = ["--state", location.as_str()];
    let near = create_key(&s, &["--tenant", "acme", "--label", "tier=developer"]);
    let fresh = create_key(&s, &["--tenant", "acme", "--label", "tier=developer"]);
    seed_spend(&location, "acme", "developer-key-daily", &near.id, 8.4).await;
    // The same key id in another tenant has its own budget.
    seed_spend(&location, "globex", "developer-key-daily", &fresh.id, 9.9).await;
    // The bundled policies (no --policies).
    let gw = Gateway::start_on(&[], &[], false, Some(&location));
    let body = chat_for("gpt-4o", Some(500), None);
    let moved = chat_as(&gw, &near.bearer(), &body).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.header("x-llmgw-downgraded-from"), "gpt-4o");
    assert_eq!(moved.header("x-llmgw-model"), "qwen-2.5");
    assert_eq!(moved.header("x-llmgw-rule"), "honour-downgrade");
    assert_eq!(moved.json()["model"], "qwen-2.5");
    let kept = chat_as(&gw, &fresh.bearer(), &body).await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.header("x-llmgw-downgraded-from"), "");
    assert_eq!(kept.header("x-llmgw-model"), "gpt-4o");
    until(Duration::from_secs(5), "the downgrade log line", || async {
        gw.logs().contains(r#""message":"downgrade""#)
    })
    .await;
    let line = gw
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "downgrade")
        .expect("downgrade line");
    assert_eq!(line["from"], "gpt-4o");
    assert_eq!(line["to"], "qwen-2.5");
    assert_eq!(line["rule"], "gpt-4o-to-qwen-near-budget");
    assert_eq!(line["key_id"], near.id.as_str());
    assert_eq!(line["tenant"], "acme");
    let request_line = gw
        .request_logs()
        .into_iter()
        .find(|l| l["key_id"] == near.id.as_str())
        .expect("request line");
    assert_eq!(request_line["downgraded_from"], "gpt-4o");
    assert_eq!(request_line["model"], "qwen-2.5");
}

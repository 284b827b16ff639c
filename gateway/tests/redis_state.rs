//! Several `llmgw` replicas on one Redis: one budget enforced together, revocations seen by
//! both within a second, spend kept across restarts, and no secret ever written to Redis.
//!
//! These tests need a Redis: set `LLMGW_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`) and
//! run with `--include-ignored`. Each test writes under a prefix of its own.

mod common;
mod state_support;

use common::*;
use state_support::*;

fn key_cap(limit: f64) -> String {
    format!(
        "  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: {limit}\n    on_exceed: block\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn two_replicas_on_one_redis_enforce_one_budget_together() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let cap = 0.01;
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        &key_cap(cap),
    );
    let one = replica(policies.path(), &url, &prefix);
    let two = replica(policies.path(), &url, &prefix);
    let body = chat_for("chat-a", Some(100), None);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let target = if i % 2 == 0 { &one } else { &two };
        let u = target.url("/v1/chat/completions");
        let b = body.clone();
        tasks.push(tokio::spawn(async move { post(&u, &b).await }));
    }
    let mut ok = 0;
    for t in tasks {
        let a = t.await.expect("task");
        match a.status {
            200 => ok += 1,
            429 => assert!(a.body.contains("`key-cap`"), "{}", a.body),
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    let fit = (cap / mock_cost(100)).floor() as usize;
    assert!(ok > 0 && ok <= fit, "{ok} served, {fit} fit");
    let out = spend_once_written(
        &[
            "spend",
            "--state",
            &url,
            "--state-prefix",
            &prefix,
            "--json",
        ],
        |o| total_is(o, ok as f64 * mock_cost(100)),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spent = out.json()["total_usd"].as_f64().expect("total");
    assert!(spent <= cap + 1e-12, "spent {spent} > cap {cap}");
    assert!((spent - ok as f64 * mock_cost(100)).abs() < 1e-9);
    // A replica started later sees the same spend: the cap is still reached.
    drop(one);
    let three = replica(policies.path(), &url, &prefix);
    let refused = post(&three.url("/v1/chat/completions"), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    drop(two);
    drop(three);
    let stored = redis_dump(&url, &prefix).await;
    assert!(!stored.contains(KEY), "the dev key is stored in plain text");
    cleanup_redis(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_revoked_key_fails_within_a_second_on_both_replicas_and_redis_holds_no_secret() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let s = ["--state", url.as_str(), "--state-prefix", prefix.as_str()];
    let key = create_key(&s, &["--tenant", "acme", "--signing"]);
    let rotated = llmgw(
        &[
            &["keys", "rotate", &key.id, "--grace", "1h", "--json"],
            &s[..],
        ]
        .concat(),
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let new = rotated.json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let stored = redis_dump(&url, &prefix).await;
    assert!(stored.contains(&key.id));
    assert!(!stored.contains(&key.secret) && !stored.contains(&new));
    identity_revocation(&s, &url).await;
    cleanup_redis(&url, &prefix).await;
}

/// The revocation scenario of `identity.rs`, on Redis.
async fn identity_revocation(state: &[&str], location: &str) {
    let key = create_key(state, &["--tenant", "acme"]);
    let prefix_args: Vec<&str> = state
        .iter()
        .position(|a| *a == "--state-prefix")
        .map(|i| state[i..i + 2].to_vec())
        .unwrap_or_default();
    let one = Gateway::start_on(&prefix_args, &[], false, Some(location));
    let two = Gateway::start_on(&prefix_args, &[], false, Some(location));
    for gw in [&one, &two] {
        let a = send(
            "GET",
            &gw.url("/v1/models"),
            None,
            &[("authorization", &key.bearer())],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let revoked = llmgw(&[&["keys", "revoke", &key.id], state].concat());
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let after = std::time::Instant::now();
    for gw in [&one, &two] {
        let u = gw.url("/v1/models");
        until(
            std::time::Duration::from_secs(1),
            "revocation on a replica",
            || async {
                let a = send("GET", &u, None, &[("authorization", &key.bearer())]).await;
                a.status == 401 && a.body.contains("revoked")
            },
        )
        .await;
    }
    assert!(after.elapsed() < std::time::Duration::from_secs(1));
}

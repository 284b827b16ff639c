//! Gateway keys in the state store, as a user manages them with `llmgw keys` and as clients
//! present them to the real `llmgw` binary: labels and project reaching the policy, allowed
//! models, expiry, rotation with a grace window, revocation seen by every replica, and no
//! secret ever stored in plain text. Request signing and the end users a key may act for are
//! tried in `boundary_principals.rs`.

mod common;
mod state_support;

use common::*;
use state_support::*;
use std::time::{Duration, Instant};

/// A policy on the mock with models `chat-a` and `chat-b` (different classes) and a rule that
/// reads the key's labels, project and tenant.
async fn labelled_policy(dir: &std::path::Path, base_url: &str) {
    budget_policy(
        dir,
        base_url,
        &[("chat-a", "a", "a+ok"), ("chat-b", "b", "b+ok")],
        "",
    );
    std::fs::write(
        dir.join("routing.yaml"),
        r#"apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: search-team
    when: '"team" in key.labels && key.labels["team"] == "search" && project.id == "relevance" && tenant.id == "acme"'
  - name: everyone-else
"#,
    )
    .expect("routing");
}

fn state_args(dir: &std::path::Path) -> Vec<String> {
    vec!["--state".into(), dir.display().to_string()]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cli_creates_lists_shows_and_never_prints_a_secret_again() {
    let state = tempfile::tempdir().expect("tempdir");
    let s = state_args(state.path());
    let created = llmgw(
        &[
            &["keys", "create"],
            strs(&s).as_slice(),
            &[
                "--tenant",
                "acme",
                "--project",
                "relevance",
                "--user",
                "alice",
                "--label",
                "team=search",
                "--model",
                "chat-a",
                "--expires",
                "30d",
            ],
        ]
        .concat(),
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let secret = created
        .stdout
        .lines()
        .find(|l| l.starts_with("llmgw_"))
        .expect("the secret is printed")
        .to_owned();
    assert!(secret.len() >= 40, "high entropy: {secret}");
    assert!(created.stdout.contains("shown this once"));
    let id = created
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(|l| l.trim().to_owned())
        .expect("id line");
    let list = llmgw(&[&["keys", "list"], strs(&s).as_slice()].concat());
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains(&id) && list.stdout.contains("acme"));
    assert!(list.stdout.contains("team=search"));
    let show = llmgw(&[&["keys", "show", &id, "--json"], strs(&s).as_slice()].concat());
    assert_eq!(show.code, 0, "{}", show.stderr);
    let v = show.json();
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["project"], "relevance");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["models"][0], "chat-a");
    assert_eq!(v["status"], "active");
    assert!(v["expires_at"].is_string());
    let other = llmgw(
        &[
            &["keys", "list", "--tenant", "globex", "--json"],
            strs(&s).as_slice(),
        ]
        .concat(),
    );
    assert_eq!(other.json().as_array().expect("list").len(), 0);
    for out in [&list, &show, &other] {
        assert!(!out.stdout.contains(&secret) && !out.stderr.contains(&secret));
    }
    let missing = llmgw(&[&["keys", "show", "key_nope"], strs(&s).as_slice()].concat());
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no key `key_nope`"),
        "{}",
        missing.stderr
    );
    let bad = llmgw(
        &[
            &["keys", "create", "--tenant", "acme", "--label", "oops"],
            strs(&s).as_slice(),
        ]
        .concat(),
    );
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("key=value"), "{}", bad.stderr);
    assert!(!sqlite_bytes(state.path()).contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_labels_project_and_tenant_reach_the_policy_and_models_are_enforced() {
    let mock = mock().await;
    let state = tempfile::tempdir().expect("tempdir");
    let policies = tempfile::tempdir().expect("tempdir");
    labelled_policy(policies.path(), &mock.base_url()).await;
    let s = state_args(state.path());
    let search = create_key(
        &strs(&s),
        &[
            "--tenant",
            "acme",
            "--project",
            "relevance",
            "--label",
            "team=search",
            "--model",
            "chat-a",
        ],
    );
    let plain = create_key(&strs(&s), &["--tenant", "globex"]);
    let gw = Gateway::start_on(
        &["--policies", policies.path().to_str().expect("utf-8")],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(state.path().to_str().expect("utf-8")),
    );
    let a = chat_as(&gw, &search.bearer(), &chat_for("chat-a", Some(3), None)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-rule"), "search-team");
    let b = chat_as(&gw, &plain.bearer(), &chat_for("chat-a", Some(3), None)).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.header("x-llmgw-rule"), "everyone-else");
    // Allowed models: 403 naming the model.
    let denied = chat_as(&gw, &search.bearer(), &chat_for("chat-b", Some(3), None)).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let err = denied.json();
    assert_eq!(err["error"]["code"], "model_not_allowed");
    assert_eq!(err["error"]["type"], "permission_error");
    assert!(err["error"]["message"]
        .as_str()
        .expect("message")
        .contains("`chat-b`"));
    // The request log names tenant, project and key id; never the secret.
    until(Duration::from_secs(5), "request log lines", || async {
        gw.request_logs().len() >= 3
    })
    .await;
    let logs = gw.request_logs();
    let line = logs
        .iter()
        .find(|l| l["key_id"] == search.id.as_str() && l["status"] == 200)
        .expect("log line of the search key");
    assert_eq!(line["tenant"], "acme");
    assert_eq!(line["project"], "relevance");
    assert_eq!(line["model"], "chat-a");
    assert_eq!(line["provider"], "mock-a");
    assert!(line["cost_usd"].as_f64().expect("cost") > 0.0);
    assert!(!line["policy_revision"].as_str().unwrap_or("").is_empty());
    assert!(!gw.logs().contains(&search.secret) && !gw.logs().contains(&plain.secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_secret_works_inside_its_grace_window_and_fails_after_it() {
    let state = tempfile::tempdir().expect("tempdir");
    let s = state_args(state.path());
    let key = create_key(&strs(&s), &["--tenant", "acme"]);
    let gw = Gateway::start_on(&[], &[], false, Some(state.path().to_str().expect("utf-8")));
    let models = |auth: String| {
        let url = gw.url("/v1/models");
        async move { send("GET", &url, None, &[("authorization", &auth)]).await }
    };
    assert_eq!(models(key.bearer()).await.status, 200);
    let rotated = llmgw(
        &[
            &["keys", "rotate", &key.id, "--grace", "3s", "--json"],
            strs(&s).as_slice(),
        ]
        .concat(),
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let rotated_at = Instant::now();
    let new = rotated.json()["secret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(new, key.secret);
    let new_bearer = format!("Bearer {new}");
    assert_eq!(models(new_bearer.clone()).await.status, 200);
    // Inside the grace window the old secret still works…
    assert_eq!(models(key.bearer()).await.status, 200);
    // …and after it, it fails, while the new one keeps working.
    until(Duration::from_secs(10), "the old secret is refused", || {
        let f = models(key.bearer());
        async move { f.await.status == 401 }
    })
    .await;
    assert!(
        rotated_at.elapsed() >= Duration::from_millis(2_500),
        "refused before its grace ended: {:?}",
        rotated_at.elapsed()
    );
    let refused = models(key.bearer()).await;
    assert!(
        refused.body.contains("grace period has ended"),
        "{}",
        refused.body
    );
    assert_eq!(models(new_bearer).await.status, 200);
    assert!(!sqlite_bytes(state.path()).contains(&new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let s = state_args(state.path());
    let key = create_key(&strs(&s), &["--tenant", "acme", "--expires", "2s"]);
    let gw = Gateway::start_on(&[], &[], false, Some(state.path().to_str().expect("utf-8")));
    let url = gw.url("/v1/models");
    until(Duration::from_secs(10), "the key expires", || async {
        let a = send("GET", &url, None, &[("authorization", &key.bearer())]).await;
        a.status == 401 && a.body.contains("expired")
    })
    .await;
}

/// Two gateways on one state store: a revocation is refused by both within a second.
pub async fn revocation_reaches_both_replicas(state: &[&str], location: &str) {
    let key = create_key(state, &["--tenant", "acme"]);
    let mut args = vec![];
    if let Some(i) = state.iter().position(|a| *a == "--state-prefix") {
        args.extend_from_slice(&state[i..i + 2]);
    }
    let one = Gateway::start_on(&args, &[], false, Some(location));
    let two = Gateway::start_on(&args, &[], false, Some(location));
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
    assert!(revoked.stdout.contains("revoked"));
    let after = Instant::now();
    for gw in [&one, &two] {
        let url = gw.url("/v1/models");
        until(
            Duration::from_secs(1),
            "revocation on a replica",
            || async {
                let a = send("GET", &url, None, &[("authorization", &key.bearer())]).await;
                a.status == 401 && a.body.contains("revoked")
            },
        )
        .await;
    }
    assert!(
        after.elapsed() < Duration::from_secs(1),
        "{:?}",
        after.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_fails_within_a_second_on_two_replicas_sharing_sqlite() {
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8").to_owned();
    revocation_reaches_both_replicas(&["--state", &location], &location).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_key_and_the_generated_key_live_in_the_store_hashed() {
    let state = tempfile::tempdir().expect("tempdir");
    let location = state.path().to_str().expect("utf-8").to_owned();
    let first = Gateway::start_on(&[], &[], false, Some(&location));
    let line = first
        .banner
        .iter()
        .find(|l| l.starts_with("gateway key (shown once"))
        .expect("generated key line");
    let generated = line.rsplit(' ').next().expect("key").to_owned();
    drop(first);
    let again = Gateway::start_on(&[], &[], false, Some(&location));
    assert!(
        again
            .banner
            .iter()
            .any(|l| l.starts_with("gateway keys: 1 stored")),
        "{:?}",
        again.banner
    );
    let ok = send(
        "GET",
        &again.url("/v1/models"),
        None,
        &[("authorization", &format!("Bearer {generated}"))],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    drop(again);
    let dev = Gateway::start_on(&[], &[], true, Some(&location));
    let ok = get(&dev.url("/v1/models")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    drop(dev);
    let listed = llmgw(&["keys", "list", "--state", &location, "--json"]);
    let tenants: Vec<String> = listed
        .json()
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            format!(
                "{}/{}",
                k["id"].as_str().unwrap_or(""),
                k["tenant"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(tenants, vec!["local/default", "dev/dev"]);
    let bytes = sqlite_bytes(state.path());
    assert!(!bytes.contains(&generated) && !bytes.contains(KEY));
}

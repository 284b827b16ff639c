//! Tenant tokens through the real `llmgw` binary: a platform key created with
//! `--accept-tenant-tokens` presents `x-llmgw-tenant-token`, and the request is routed, budgeted,
//! logged and billed as the token's tenant, project and user. Every failed check is refused with
//! its own code; keys rotate with a grace (`until=`); bad keys stop start-up in one line.
//!
//! Tokens are minted with `llmgw tenant-token mint`, and also sealed here from the documented
//! format alone (AES-256-GCM-SIV, `v1.<kid>.<base64url(nonce || ciphertext)>`, associated data
//! `v1.<kid>`), as a platform in another language would.

mod common;
mod state_support;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use state_support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ADMIN: &str = "adm-token-for-tenant-tokens-51c7";
const HEADER: &str = "x-llmgw-tenant-token";

/// The current key (hex), the previous one in its grace (base64, until 2099) and one whose
/// grace has ended (until 2020).
const K2: [u8; 32] = [0x22; 32];
const K1: [u8; 32] = [0x11; 32];
const K0: [u8; 32] = [0x00; 32];

fn key_env() -> Vec<(&'static str, String)> {
    vec![
        ("TT_K2", hex::encode(K2)),
        ("TT_K1", STANDARD.encode(K1)),
        ("TT_K0", URL_SAFE_NO_PAD.encode(K0)),
    ]
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Seals claims as the README describes, with key `key` under the id `kid`.
fn seal(kid: &str, key: &[u8; 32], claims: &Value) -> String {
    let prefix = format!("v1.{kid}");
    let nonce: [u8; 12] = rand::random();
    let sealed = Aes256GcmSiv::new(key.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: claims.to_string().as_bytes(),
                aad: prefix.as_bytes(),
            },
        )
        .expect("seal");
    format!(
        "{prefix}.{}",
        URL_SAFE_NO_PAD.encode([nonce.as_slice(), &sealed].concat())
    )
}

/// Claims for `tenant` expiring `exp_in` seconds from now, with a fresh id.
fn claims(tenant: &str, exp_in: i64) -> Value {
    json!({
        "tenant": tenant,
        "exp": now_secs() + exp_in,
        "jti": format!("{:032x}", rand::random::<u128>()),
    })
}

/// Runs `llmgw ARGS` with the token keys in its environment.
fn llmgw_with_keys(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_llmgw"))
        .args(args)
        .envs(key_env())
        .output()
        .expect("llmgw runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `llmgw tenant-token mint --key k2=env:TT_K2 EXTRA…`: the token.
fn mint(extra: &[&str]) -> String {
    let out =
        llmgw_with_keys(&[&["tenant-token", "mint", "--key", "k2=env:TT_K2"], extra].concat());
    assert_eq!(out.code, 0, "mint failed: {}", out.stderr);
    let token = out.stdout.trim().to_owned();
    assert!(token.starts_with("v1.k2."), "{token}");
    token
}

struct World {
    gw: Gateway,
    setup: OneModel,
    /// Tenant `platform`, accepts tenant tokens.
    platform: NewKey,
    /// Tenant `platform`, does not.
    plain: NewKey,
}

/// A gateway with token keys k2, k1 (in its grace) and k0 (retired); the tenant `initech`
/// labelled `plan=trial`, which routes to rule `trial-tenant` and has a daily tenant budget of
/// 1.5 requests of 100 tokens.
async fn world() -> World {
    let setup = OneModel::new(&format!(
        "  - name: trial-daily\n    scope: tenant\n    when: {TRIAL_TENANT}\n    period: daily\n    limit_usd: {}\n    on_exceed: block\n",
        mock_cost(100) * 1.5
    ))
    .await;
    trial_routing(setup.policies.path());
    let location = setup.state().to_owned();
    let s = ["--state", location.as_str()];
    let labelled = llmgw(&["tenants", "label", "initech", "plan=trial", s[0], s[1]]);
    assert_eq!(labelled.code, 0, "{}", labelled.stderr);
    // It may also pass its own end users through, for tokens that name none.
    let platform = create_key(
        &s,
        &[
            "--tenant",
            "platform",
            "--accept-tenant-tokens",
            "--assert-users",
            "*",
        ],
    );
    let plain = create_key(&s, &["--tenant", "platform"]);
    let env: Vec<(&str, String)> = [("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET.to_owned())]
        .into_iter()
        .chain(key_env())
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start_on(
        &[
            "--policies",
            setup.policies(),
            "--admin-token",
            ADMIN,
            "--tenant-token-key",
            "k2=env:TT_K2",
            "--tenant-token-key",
            "k1=env:TT_K1,until=2099-01-01T00:00:00Z",
            "--tenant-token-key",
            "k0=env:TT_K0,until=2020-01-01T00:00:00Z",
        ],
        &env,
        false,
        Some(&location),
    );
    World {
        gw,
        setup,
        platform,
        plain,
    }
}

/// A chat request with `key` and, when given, a tenant token.
async fn chat_with(gw: &Gateway, key: &NewKey, token: Option<&str>, body: &str) -> Answer {
    let auth = key.bearer();
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(t) = token {
        headers.push((HEADER, t));
    }
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(body),
        &headers,
    )
    .await
}

/// The request log line of `x-request-id` `id`.
fn log_line(gw: &Gateway, id: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some(l) = gw
            .request_logs()
            .into_iter()
            .find(|l| l["request_id"] == id)
        {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no request log line for {id}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_acts_for_its_tenant_in_routing_budgets_logs_and_the_ledger() {
    let w = world().await;
    let body = chat_for("chat-a", Some(100), None);
    // The token's tenant, with its labels from the store, its project and its user.
    let token = mint(&[
        "--tenant",
        "initech",
        "--project",
        "web",
        "--user",
        "bob",
        "--ttl",
        "5m",
    ]);
    let a = chat_with(&w.gw, &w.platform, Some(&token), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-llmgw-rule"), "trial-tenant");
    let line = log_line(&w.gw, a.header("x-request-id"));
    assert_eq!(
        (&line["tenant"], &line["project"], &line["user"]),
        (&json!("initech"), &json!("web"), &json!("bob")),
        "{line}"
    );
    assert_eq!(
        line["key_id"],
        w.platform.id.as_str(),
        "the presenting key stays the key"
    );
    // A token without a user: the request's `user` field. The tenant's budget is spent.
    let token = mint(&["--tenant", "initech"]);
    let carol = chat_for("chat-a", Some(100), Some("carol"));
    let refused = chat_with(&w.gw, &w.platform, Some(&token), &carol).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("`trial-daily`"), "{}", refused.body);
    let line = log_line(&w.gw, refused.header("x-request-id"));
    assert_eq!(
        (&line["tenant"], &line["user"]),
        (&json!("initech"), &json!("carol"))
    );
    assert_eq!(
        line["project"], "",
        "no project in the token: none, not the key's"
    );
    // The platform's own tenant is neither labelled nor budgeted.
    let own = chat_with(&w.gw, &w.platform, None, &body).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.header("x-llmgw-rule"), "everyone-else");
    assert_eq!(
        log_line(&w.gw, own.header("x-request-id"))["tenant"],
        "platform"
    );
    // The ledger bills the token's tenant, project and user, through the presenting key.
    let location = w.setup.state();
    let spend = spend_once_written(
        &[
            "spend", "--state", location, "--tenant", "initech", "--json",
        ],
        |o| total_is(o, mock_cost(100)),
    );
    assert!(total_is(&spend, mock_cost(100)), "{}", spend.stdout);
    let rows = spend.json()["data"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            &rows[0]["tenant"],
            &rows[0]["project"],
            &rows[0]["user"],
            &rows[0]["key"]
        ),
        (
            &json!("initech"),
            &json!("web"),
            &json!("bob"),
            &json!(w.platform.id)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_check_is_refused_with_its_own_code_and_message() {
    let w = world().await;
    let body = chat_for("chat-a", Some(5), None);
    let good = || mint(&["--tenant", "acme"]);
    let tampered = {
        let t = good();
        let at = t.len() - 20;
        let flipped = if &t[at..=at] == "A" { "B" } else { "A" };
        format!("{}{flipped}{}", &t[..at], &t[at + 1..])
    };
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "tampered",
            tampered,
            401,
            "tenant_token_invalid",
            "failed authentication",
        ),
        (
            "another key under a known id",
            seal("k2", &[0x33; 32], &claims("acme", 60)),
            401,
            "tenant_token_invalid",
            "sealed with another key",
        ),
        (
            "unknown key id",
            seal("k9", &K2, &claims("acme", 60)),
            401,
            "tenant_token_unknown_key",
            "key id `k9`",
        ),
        (
            "expired",
            seal("k2", &K2, &claims("acme", -120)),
            401,
            "tenant_token_expired",
            "has expired",
        ),
        (
            "lifetime too long",
            seal("k2", &K2, &claims("acme", 7200)),
            401,
            "tenant_token_lifetime",
            "at most 3600 s ahead",
        ),
        (
            "oversized",
            format!("v1.k2.{}", "A".repeat(2000)),
            401,
            "tenant_token_too_large",
            "at most 1024 bytes",
        ),
        (
            "malformed",
            "v2.k2.AAAAAAAA".into(),
            401,
            "tenant_token_malformed",
            "version must be `v1`",
        ),
        (
            "key whose grace has ended",
            seal("k0", &K0, &claims("acme", 60)),
            401,
            "tenant_token_key_retired",
            "`k0` was retired at 2020-01-01T00:00:00Z",
        ),
    ];
    for (what, token, status, code, message) in &cases {
        let a = chat_with(&w.gw, &w.platform, Some(token), &body).await;
        assert_eq!(a.status, *status, "{what}: {}", a.body);
        let e = &a.json()["error"];
        assert_eq!(e["code"], *code, "{what}: {e}");
        assert_eq!(e["param"], HEADER, "{what}: {e}");
        assert!(
            e["message"].as_str().expect("message").contains(message),
            "{what}: {e}"
        );
        assert_eq!(a.header("www-authenticate"), "Bearer", "{what}");
    }
    // The previous key works during its grace; a token sealed here in the documented format
    // (with a project and user) opens like a minted one.
    let mut c = claims("acme", 60);
    c["project"] = "p1".into();
    c["user"] = "u1".into();
    let in_grace = chat_with(&w.gw, &w.platform, Some(&seal("k1", &K1, &c)), &body).await;
    assert_eq!(in_grace.status, 200, "{}", in_grace.body);
    let line = log_line(&w.gw, in_grace.header("x-request-id"));
    assert_eq!(
        (&line["tenant"], &line["project"], &line["user"]),
        (&json!("acme"), &json!("p1"), &json!("u1"))
    );
    // A token is accepted once.
    let once = good();
    let first = chat_with(&w.gw, &w.platform, Some(&once), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = chat_with(&w.gw, &w.platform, Some(&once), &body).await;
    assert_eq!(again.status, 401, "{}", again.body);
    assert_eq!(again.json()["error"]["code"], "tenant_token_replayed");
    assert!(again.body.contains("already used"), "{}", again.body);
    // A key not created to accept tokens may not present one: 403 naming the header.
    let other = chat_with(&w.gw, &w.plain, Some(&good()), &body).await;
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(other.json()["error"]["code"], "tenant_token_not_allowed");
    assert!(
        other.body.contains("`x-llmgw-tenant-token`"),
        "{}",
        other.body
    );
    // None of the refused requests was billed to anyone.
    let refused =
        w.gw.wait_request_logs(cases.len() + 4)
            .into_iter()
            .filter(|l| l["status"] != 200)
            .collect::<Vec<_>>();
    assert_eq!(refused.len(), cases.len() + 2);
    assert!(
        refused
            .iter()
            .all(|l| l["tenant"].as_str().unwrap_or("").is_empty() && l["cost_usd"] == 0.0),
        "{refused:?}"
    );
}

/// `POST /admin/keys` with `token`.
async fn post_key(gw: &Gateway, token: &str, body: Value) -> Answer {
    send(
        "POST",
        &gw.admin_url("/admin/keys"),
        Some(&body.to_string()),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_admin_creates_keys_that_accept_tenant_tokens() {
    let w = world().await;
    let made = post_key(
        &w.gw,
        ADMIN,
        json!({"tenant": "platform", "tenant_tokens": true}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(made.json()["key"]["tenant_tokens"], true);
    // A tenant admin may not: such a key acts for any tenant a token names.
    let location = w.setup.state();
    let tenant_admin = create_key(&["--state", location], &["--tenant", "platform", "--admin"]);
    let body = json!({"tenant": "platform", "tenant_tokens": true});
    let refused = post_key(&w.gw, &tenant_admin.secret, body).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("accept tenant tokens"),
        "{}",
        refused.body
    );
    // Nor may such a key be bound to a user: the token names the user.
    let bound = llmgw(&[
        "keys",
        "create",
        "--state",
        location,
        "--tenant",
        "platform",
        "--user",
        "u",
        "--accept-tenant-tokens",
    ]);
    assert_eq!(bound.code, 2, "{}", bound.stdout);
    assert!(bound.stderr.contains("bound to a user"), "{}", bound.stderr);
    let shown = llmgw(&["keys", "show", &w.platform.id, "--state", location]);
    assert!(
        shown.stdout.contains("tenant tokens") && shown.stdout.contains("true"),
        "{}",
        shown.stdout
    );
}

/// Runs `llmgw serve ARGS` with the token keys in its environment and returns its exit code
/// and standard error, failing when it has not exited within 10 s.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmgw"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state"))
        .args(args)
        .envs(key_env())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("llmgw starts");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("llmgw serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), read(&err))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_stop_start_up_and_minting_in_one_line() {
    let short = hex::encode([1u8; 16]);
    for (arg, env, expected) in [
        (
            "k1=env:TT_SHORT",
            vec![("TT_SHORT", short.as_str())],
            "--tenant-token-key: key `k1` must decode to exactly 32 bytes",
        ),
        (
            "k1=env:TT_SURELY_UNSET",
            vec![],
            "--tenant-token-key: key `k1`: the environment variable `TT_SURELY_UNSET` is not set",
        ),
        (
            "k1=env:TT_K2,until=tomorrow",
            vec![],
            "--tenant-token-key: key `k1`: `until` must be an RFC 3339 time",
        ),
        ("k1", vec![], "--tenant-token-key: write KID=env:NAME"),
    ] {
        let (code, stderr) = serve_fails(&["--tenant-token-key", arg], &env);
        assert_eq!(code, 2, "{arg}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{arg}: {stderr}");
        assert!(stderr.contains(expected), "{arg}: {stderr}");
        assert!(!stderr.contains(&short), "the key is never printed");
    }
    let too_long = llmgw_with_keys(&[
        "tenant-token",
        "mint",
        "--key",
        "k2=env:TT_K2",
        "--tenant",
        "acme",
        "--ttl",
        "2h",
    ]);
    assert_eq!(too_long.code, 2);
    assert_eq!(too_long.stderr.trim(), "llmgw: --ttl: at most 3600 s");
    let bad_tenant = llmgw_with_keys(&[
        "tenant-token",
        "mint",
        "--key",
        "k2=env:TT_K2",
        "--tenant",
        "a b",
    ]);
    assert_eq!(bad_tenant.code, 2);
    assert!(
        bad_tenant.stderr.contains("tenant `a b`"),
        "{}",
        bad_tenant.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_token_keys_names_its_configuration() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| primary_and_backup(d, &mock.base_url(), "ok"));
    let token = seal("k2", &K2, &claims("acme", 60));
    let a = send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(&chat("primary", false, 5)),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            (HEADER, &token),
        ],
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["code"], "tenant_tokens_not_configured");
    assert!(a.body.contains("--tenant-token-key"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn replicas_on_one_redis_share_the_replay_cache() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        "",
    );
    let target = ["--state", url.as_str(), "--state-prefix", prefix.as_str()];
    let platform = create_key(&target, &["--tenant", "platform", "--accept-tenant-tokens"]);
    let env: Vec<(&str, String)> = [("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET.to_owned())]
        .into_iter()
        .chain(key_env())
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let replica = || {
        Gateway::start_on(
            &[
                "--policies",
                policies.path().to_str().expect("utf-8"),
                "--state-prefix",
                &prefix,
                "--tenant-token-key",
                "k2=env:TT_K2",
            ],
            &env,
            false,
            Some(&url),
        )
    };
    let (one, two) = (replica(), replica());
    let body = chat_for("chat-a", Some(5), None);
    let token = mint(&["--tenant", "acme"]);
    let first = chat_with(&one, &platform, Some(&token), &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let elsewhere = chat_with(&two, &platform, Some(&token), &body).await;
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.body);
    assert_eq!(elsewhere.json()["error"]["code"], "tenant_token_replayed");
    drop((one, two));
    cleanup_redis(&url, &prefix).await;
}

//! Helpers of the identity, tenancy and budget tests: the `llmgw keys` and `llmgw spend`
//! commands as a user runs them, policies with budgets for the mock provider, and polling.
#![allow(dead_code)]

use crate::common::*;
use redis::AsyncCommands;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Stdout as JSON (commands run with `--json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `llmgw ARGS`.
pub fn llmgw(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_llmgw"))
        .args(args)
        .env_remove("LLMGW_ADMIN_TOKEN")
        .env_remove("LLMGW_ADMIN_URL")
        .env_remove("LLMGW_STATE")
        .output()
        .expect("llmgw runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `llmgw ARGS` (a spend report) again every 25 ms until `written` holds of its output,
/// at most 10 s; returns the last output. The gateway writes ledger rows in the background,
/// so a report read from the store right after the answers may not show them yet.
pub fn spend_once_written(args: &[&str], written: impl Fn(&Output) -> bool) -> Output {
    let start = Instant::now();
    loop {
        let out = llmgw(args);
        if written(&out) || start.elapsed() > Duration::from_secs(10) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a `spend --json` output's total is `usd` (to a nano-dollar).
pub fn total_is(out: &Output, usd: f64) -> bool {
    serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["total_usd"].as_f64())
        .is_some_and(|t| (t - usd).abs() < 1e-9)
}

/// A key as `keys create --json` printed it.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Its id.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// Its private signing key, when `--signing` had one generated.
    pub signing_key: Option<String>,
}

impl NewKey {
    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// `llmgw keys create --state STATE --json EXTRA…`.
pub fn create_key(state: &[&str], extra: &[&str]) -> NewKey {
    let mut args = vec!["keys", "create", "--json"];
    args.extend_from_slice(state);
    args.extend_from_slice(extra);
    let out = llmgw(&args);
    assert_eq!(out.code, 0, "keys create failed: {}", out.stderr);
    let v = out.json();
    NewKey {
        id: v["key"]["id"].as_str().expect("id").to_owned(),
        secret: v["secret"].as_str().expect("secret").to_owned(),
        signing_key: v["signing_key"].as_str().map(str::to_owned),
    }
}

/// POSTs a chat request with this authorization.
pub async fn chat_as(gw: &Gateway, auth: &str, body: &str) -> Answer {
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(body),
        &[("authorization", auth)],
    )
    .await
}

/// A chat body for `model` with `max_tokens` and an end user.
pub fn chat_for(model: &str, max_tokens: Option<u64>, user: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": "Say something." }],
    });
    if let Some(m) = max_tokens {
        v["max_tokens"] = m.into();
    }
    if let Some(u) = user {
        v["user"] = u.into();
    }
    v.to_string()
}

/// Worst-case and real cost of [`chat_for`] with `max_tokens` on the mock's prices
/// (1 and 2 USD per million input and output tokens; "Say something." is 4 input tokens and
/// the mock answers exactly `max_tokens` tokens).
pub fn mock_cost(max_tokens: u64) -> f64 {
    (4.0 + 2.0 * max_tokens as f64) / 1e6
}

/// A policy on the mock with one model per `(name, class, upstream)` (each in its own class
/// unless they share one) and these budgets (YAML list items).
pub fn budget_policy(dir: &Path, base_url: &str, models: &[(&str, &str, &str)], budgets: &str) {
    let list: Vec<TestModel<'_>> = models
        .iter()
        .map(|&(name, _, upstream)| TestModel {
            name,
            quality: 0.8,
            context: 100_000,
            prefill: false,
            provider: "mock-a",
            upstream,
        })
        .collect();
    mock_policy(dir, base_url, &list);
    let mut m = std::fs::read_to_string(dir.join("models.yaml")).expect("models");
    for &(name, class, _) in models {
        m = m.replacen(
            &format!("  - name: {name}\n    class: chat\n"),
            &format!("  - name: {name}\n    class: {class}\n"),
            1,
        );
    }
    std::fs::write(dir.join("models.yaml"), m).expect("write models");
    if !budgets.trim().is_empty() {
        std::fs::write(
            dir.join("budgets.yaml"),
            format!("apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n{budgets}"),
        )
        .expect("write budgets");
    }
}

/// Polls `check` every 25 ms until it holds; panics with `what` after `limit`. Returns the time
/// it took.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not observed within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every byte of the SQLite files of a state directory, as text.
pub fn sqlite_bytes(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.push_str(&String::from_utf8_lossy(&b));
        }
    }
    all
}

/// A gateway on the Redis at `url`, its keys under `prefix`, serving the policies in
/// `policies` with the test upstream key.
pub fn replica(policies: &Path, url: &str, prefix: &str) -> Gateway {
    replica_with(policies, url, prefix, &[])
}

/// [`replica`] with extra arguments.
pub fn replica_with(policies: &Path, url: &str, prefix: &str, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--policies",
        policies.to_str().expect("utf-8"),
        "--state-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    Gateway::start_on(
        &args,
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        Some(url),
    )
}

/// The Redis URL of the Redis tests; panics with a clear message when it is not set.
pub fn redis_url() -> String {
    std::env::var("LLMGW_TEST_REDIS_URL").expect(
        "LLMGW_TEST_REDIS_URL must name the test Redis (e.g. redis://127.0.0.1:6379/); \
         the Redis tests are ignored unless it is set and --include-ignored is given",
    )
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("llmgw-e2e-{:016x}:", rand::random::<u64>())
}

/// Deletes everything a Redis test wrote under `prefix`.
pub async fn cleanup_redis(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let keys: Vec<String> = c.keys(format!("{prefix}*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = c.del(keys).await.expect("del");
    }
}

/// Every key under `prefix` and every value it holds, as text.
pub async fn redis_dump(url: &str, prefix: &str) -> String {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let keys: Vec<String> = c.keys(format!("{prefix}*")).await.expect("keys");
    assert!(!keys.is_empty(), "nothing under {prefix}");
    let mut out = String::new();
    for k in keys {
        out.push_str(&k);
        out.push('\n');
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .expect("type");
        let text = match kind.as_str() {
            "string" => c.get::<_, String>(&k).await.unwrap_or_default(),
            "hash" => format!(
                "{:?}",
                c.hgetall::<_, Vec<(String, String)>>(&k)
                    .await
                    .unwrap_or_default()
            ),
            "set" => format!(
                "{:?}",
                c.smembers::<_, Vec<String>>(&k).await.unwrap_or_default()
            ),
            "zset" => format!(
                "{:?}",
                c.zrange::<_, Vec<String>>(&k, 0, -1)
                    .await
                    .unwrap_or_default()
            ),
            other => format!("<{other}>"),
        };
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// A mock upstream and, beside an empty state directory, a policy directory with one model
/// `chat-a` on the mock (upstream `a+ok`) under `budgets` (YAML list items).
pub struct OneModel {
    /// The upstream.
    pub mock: llmgw_mock_provider::MockHandle,
    /// The policy directory.
    pub policies: tempfile::TempDir,
    /// The state directory.
    pub state: tempfile::TempDir,
}

impl OneModel {
    /// Starts the mock and writes the policy.
    pub async fn new(budgets: &str) -> OneModel {
        let mock = mock().await;
        let policies = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        budget_policy(
            policies.path(),
            &mock.base_url(),
            &[("chat-a", "a", "a+ok")],
            budgets,
        );
        OneModel {
            mock,
            policies,
            state,
        }
    }

    /// The policy directory, as a command-line argument.
    pub fn policies(&self) -> &str {
        self.policies.path().to_str().expect("utf-8")
    }

    /// The state directory, as a command-line argument.
    pub fn state(&self) -> &str {
        self.state.path().to_str().expect("utf-8")
    }
}

/// The CEL condition of tenants labelled `plan=trial`, quoted for YAML.
pub const TRIAL_TENANT: &str = r#"'"plan" in tenant.labels && tenant.labels["plan"] == "trial"'"#;

/// Replaces the routing of `policies` with rule `trial-tenant` (tenants labelled `plan=trial`)
/// followed by `everyone-else`.
pub fn trial_routing(policies: &Path) {
    std::fs::write(
        policies.join("routing.yaml"),
        format!(
            "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: trial-tenant\n    when: {TRIAL_TENANT}\n  - name: everyone-else\n"
        ),
    )
    .expect("routing");
}

/// A Redis on a free port, persisting every write to `dir` so that a restart keeps its data
/// (the gateway's key among them).
pub struct OwnRedis {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl OwnRedis {
    /// Starts one on `port`, its data in `dir` (it may not answer yet).
    pub fn start(dir: &Path, port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", dir.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH starts");
        OwnRedis { child, port }
    }

    /// Starts one on a free port and waits until it answers.
    pub async fn ready(dir: &Path) -> OwnRedis {
        let redis = OwnRedis::start(dir, free_port());
        until(Duration::from_secs(10), "redis-server answers", || {
            redis.answers()
        })
        .await;
        redis
    }

    /// A gateway on this Redis serving the policies in `policies`.
    pub fn gateway(&self, policies: &Path) -> Gateway {
        Gateway::start_on(
            &["--policies", policies.to_str().expect("utf-8")],
            &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
            true,
            Some(&self.url()),
        )
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether it answers a ping.
    pub async fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        match client.get_multiplexed_async_connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Stops it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

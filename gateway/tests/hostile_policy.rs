//! A hostile policy file never takes a gateway down: a `Cache` document nested 5,000 or
//! 1,000,000 levels deep is a rejected revision with a located `yaml/too-deep` diagnostic,
//! whether it arrives in a watched directory, as a commit on the followed branch, or as the
//! branch head when the gateway starts; the last good revision keeps serving.

mod common;
mod state_support;

use common::*;
use serde_json::Value;
use state_support::until;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROVIDERS: &str = "\
apiVersion: llmgw.dev/v1
kind: Providers
providers:
  - name: sim
    type: simulated
    simulated: { ttft_ms: 1, tokens_per_second: 10000, jitter: 0, error_rate: 0, rate_limit_rate: 0, output_tokens: 2 }
";

const MODELS: &str = "\
apiVersion: llmgw.dev/v1
kind: Models
models:
  - name: fast
    class: chat
    quality: 0.5
    context_window: 8000
    capabilities: [chat]
    price: { input_per_mtok: 1, output_per_mtok: 2 }
    deployments:
      - provider: sim
        upstream_model: fast-1
";

/// A `Cache` document whose rules are `levels` block sequences nested on one line.
fn nested_blocks(levels: usize) -> String {
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Cache\nrules:\n  {}x\n",
        "- ".repeat(levels)
    )
}

/// The same depth written as flow sequences.
fn nested_flows(levels: usize) -> String {
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Cache\nrules: {}{}\n",
        "[".repeat(levels),
        "]".repeat(levels)
    )
}

fn write_good(dir: &Path) {
    std::fs::write(dir.join("providers.yaml"), PROVIDERS).expect("write");
    std::fs::write(dir.join("models.yaml"), MODELS).expect("write");
}

/// Commits everything in `dir` and returns the commit id.
fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

async fn status(gw: &Gateway) -> Value {
    gw.admin_get("/admin/status").await.json()["policy"].clone()
}

/// The revision that serves a chat request, checked to succeed.
async fn serving(gw: &Gateway) -> String {
    let answer = post(&gw.url("/v1/chat/completions"), &chat("fast", false, 4)).await;
    assert_eq!(answer.status, 200, "{:?}", answer);
    answer.header("x-llmgw-policy-rev").to_owned()
}

/// Which attempted revision to wait for: a commit, or any revision but the one attempted
/// before (a directory's revision is a hash of its files).
enum Attempted<'a> {
    Is(&'a str),
    IsNot(&'a str),
}

/// Waits until the revision is reported as attempted and failed, then checks its diagnostic:
/// `yaml/too-deep` in `attack.yaml` at line `line`, and the process still running.
async fn assert_rejected(gw: &mut Gateway, revision: Attempted<'_>, line: u64) -> Value {
    until(
        Duration::from_secs(30),
        "the hostile revision is rejected",
        || async {
            let st = status(gw).await;
            let attempted = &st["attempted_revision"];
            attempted["result"] == "failed"
                && match revision {
                    Attempted::Is(id) => attempted["id"] == id,
                    Attempted::IsNot(id) => attempted["id"] != id,
                }
                && attempted["diagnostics"][0]["code"] == "yaml/too-deep"
        },
    )
    .await;
    let st = status(gw).await;
    let d = &st["attempted_revision"]["diagnostics"][0];
    assert_eq!(d["file"], "attack.yaml", "{st}");
    assert_eq!(d["line"], line, "{st}");
    assert!(d["column"].as_u64().is_some_and(|c| c > 1), "{st}");
    assert_eq!(st["serving_last_known_good"], true, "{st}");
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the gateway is still running"
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_file_in_a_watched_directory_is_rejected_and_the_last_good_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_good(dir.path());
    let policies = dir.path().to_str().expect("utf-8");
    let mut gw = Gateway::start(&["--policies", policies, "--poll-interval", "200ms"]);
    let good = serving(&gw).await;
    let mut previous = String::new();
    for (attack, line) in [
        (nested_blocks(5_000), 4),
        (nested_blocks(1_000_000), 4),
        (nested_flows(1_000_000), 3),
    ] {
        std::fs::write(dir.path().join("attack.yaml"), attack).expect("write");
        let st = assert_rejected(&mut gw, Attempted::IsNot(&previous), line).await;
        previous = st["attempted_revision"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        assert_eq!(st["applied_revision"]["id"], good.as_str(), "{st}");
        assert_eq!(serving(&gw).await, good);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_commit_is_rejected_and_survives_a_restart_as_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("policies");
    std::fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    write_good(&repo);
    let good = commit(&repo, "Good policies");
    let url = format!("file://{}", repo.display());
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8");
    let args = ["--repo", url.as_str(), "--poll-interval", "200ms"];

    let mut gw = Gateway::start_on(&args, &[], true, Some(state));
    assert_eq!(serving(&gw).await, good);
    std::fs::write(repo.join("attack.yaml"), nested_blocks(5_000)).expect("write");
    let shallow = commit(&repo, "A cache of 5,000 levels");
    assert_rejected(&mut gw, Attempted::Is(&shallow), 4).await;
    assert_eq!(serving(&gw).await, good);
    std::fs::write(repo.join("attack.yaml"), nested_blocks(1_000_000)).expect("write");
    let deep = commit(&repo, "A cache of 1,000,000 levels");
    assert_rejected(&mut gw, Attempted::Is(&deep), 4).await;
    assert_eq!(serving(&gw).await, good);
    gw.terminate();
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    drop(gw);

    // Restarted with the hostile commit as the head: the last good revision serves.
    let mut gw = Gateway::start_on(&args, &[], true, Some(state));
    let st = assert_rejected(&mut gw, Attempted::Is(&deep), 4).await;
    assert_eq!(st["applied_revision"]["id"], good.as_str(), "{st}");
    assert_eq!(serving(&gw).await, good);
    drop(gw);

    // With no good revision on record, start-up fails with the diagnostic and exit code 2.
    let fresh = dir.path().join("fresh-state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmgw"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--dev-key",
            KEY,
            "--state",
        ])
        .arg(&fresh)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llmgw starts");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("llmgw kept running on a hostile head without a good revision");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&deep), "{stderr}");
    assert!(stderr.contains("attack.yaml:4:"), "{stderr}");
    assert!(stderr.contains("yaml/too-deep"), "{stderr}");
}

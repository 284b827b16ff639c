//! GitOps end to end: the real `llmgw` binary serving a real git repository made with the
//! `git` command line in a temporary directory, under load on 127.0.0.1, while commits land.

mod common;

use bytes::Bytes;
use common::{admin_addr_in, git, post, send, Answer, ADMIN_TOKEN, KEY};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llmgw_engine::record::DecisionRecord;
use llmgw_engine::source::PolicyFile;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// --- a policy repository -------------------------------------------------------------------

const PROVIDERS: &str = "\
apiVersion: llmgw.dev/v1
kind: Providers
providers:
  - name: sim-a
    type: simulated
    region: local-a
    simulated: { ttft_ms: 1, tokens_per_second: 100000, jitter: 0, error_rate: 0, rate_limit_rate: 0, output_tokens: 4 }
  - name: sim-b
    type: simulated
    region: local-b
    simulated: { ttft_ms: 1, tokens_per_second: 100000, jitter: 0, error_rate: 0, rate_limit_rate: 0, output_tokens: 4 }
";

const MODELS: &str = "\
apiVersion: llmgw.dev/v1
kind: Models
models:
  - name: fast
    class: chat
    quality: 0.6
    context_window: 32000
    capabilities: [chat]
    price: { input_per_mtok: 1, output_per_mtok: 2 }
    deployments:
      - provider: sim-a
        upstream_model: fast-1
  - name: smart
    class: chat
    quality: 0.9
    context_window: 32000
    capabilities: [chat]
    price: { input_per_mtok: 3, output_per_mtok: 15 }
    deployments:
      - provider: sim-b
        upstream_model: smart-1
";

/// No rule: every request is served by the model it asks for (`default`).
const ROUTING_DEFAULT: &str = "\
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: batch-to-fast
    when: '\"workload\" in request.metadata && request.metadata[\"workload\"] == \"batch\"'
    candidates: [fast]
";

/// Requests for `fast` go to `smart`.
const ROUTING_SMART: &str = "\
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: batch-to-fast
    when: '\"workload\" in request.metadata && request.metadata[\"workload\"] == \"batch\"'
    candidates: [fast]
  - name: upgrade-fast
    when: 'request.model == \"fast\"'
    candidates: [smart]
";

/// A typo in a field name: `cel/unknown-field` at budgets.yaml line 7.
const BROKEN_BUDGETS: &str = "\
apiVersion: llmgw.dev/v1
kind: Budgets
budgets:
  - name: per-key
    scope: key
    period: daily
    when: 'request.modle == \"fast\"'
    limit_usd: 100
    on_exceed: block
";

/// Writes `files`, commits them all and returns the commit id.
fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        std::fs::write(dir.join(path), text).expect("write policy");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A repository on `main` with one good commit; returns its id.
fn init_repo(dir: &Path) -> String {
    git(dir, &["init", "-q", "-b", "main"]);
    commit(
        dir,
        &[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", MODELS),
            ("routing.yaml", ROUTING_DEFAULT),
        ],
        "Two simulated models",
    )
}

fn revert(dir: &Path, id: &str) -> String {
    git(dir, &["revert", "--no-edit", id]);
    git(dir, &["rev-parse", "HEAD"])
}

// --- the gateway ---------------------------------------------------------------------------

/// A running `llmgw serve` with a state directory that outlives it.
struct Gw {
    child: Child,
    addr: String,
    admin_addr: String,
    log: PathBuf,
    banner: Vec<String>,
}

impl Gw {
    fn start(args: &[&str], state: &Path, log: &Path) -> Result<Gw, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmgw"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--dev-key", KEY])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN_TOKEN,
            ])
            .arg("--state")
            .arg(state)
            .args(args)
            .env_remove("LLMGW_DEV_KEY")
            .env("LLMGW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("llmgw starts");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut banner = Vec::new();
        let mut addr = None;
        let mut admin_addr = None;
        for _ in 0..4 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(a) = line.trim().strip_prefix("llmgw listening on http://") {
                addr = Some(a.to_owned());
            }
            if let Some(a) = admin_addr_in(line.trim()) {
                admin_addr = Some(a);
            }
            banner.push(line.trim_end().to_owned());
            if line.starts_with("policy revision") {
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        match (addr, admin_addr) {
            (Some(addr), Some(admin_addr)) => Ok(Gw {
                child,
                addr,
                admin_addr,
                log: log.to_owned(),
                banner,
            }),
            _ => {
                let status = child.wait().expect("exit status");
                let err = std::fs::read_to_string(log).unwrap_or_default();
                Err(format!("exit {status}: {err}"))
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` on the admin listener with the admin token.
    async fn admin_get(&self, path: &str) -> Answer {
        let url = format!("http://{}{path}", self.admin_addr);
        send(
            "GET",
            &url,
            None,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await
    }

    async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.body
    }

    fn logs(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "llmgw exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("llmgw did not stop within 20 s");
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(gw: &Gw) -> Value {
    gw.admin_get("/admin/status").await.json()["policy"].clone()
}

fn chat(model: &str) -> String {
    serde_json::json!({
        "model": model,
        "max_tokens": 4,
        "messages": [{ "role": "user", "content": "Say something." }],
    })
    .to_string()
}

/// Waits until `f` holds, at most `limit`; returns the time it took.
async fn until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

// --- load ----------------------------------------------------------------------------------

/// One response seen by the load.
#[derive(Debug, Clone)]
struct Seen {
    sent: Instant,
    done: Instant,
    status: u16,
    revision: String,
    model: String,
    rule: String,
}

/// Paced load: `workers` connections, each sending one request every `every`, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(url: String, workers: usize, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(workers)
            .build_http();
        let body = Bytes::from(chat("fast"));
        let tasks = (0..workers)
            .map(|_| {
                let (stop, seen, client, url, body) = (
                    stop.clone(),
                    seen.clone(),
                    client.clone(),
                    url.clone(),
                    body.clone(),
                );
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let req = http::Request::post(&url)
                            .header("authorization", format!("Bearer {KEY}"))
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .expect("request");
                        let sent = Instant::now();
                        let answer =
                            tokio::time::timeout(Duration::from_secs(10), client.request(req))
                                .await;
                        let s = match answer {
                            Ok(Ok(resp)) => {
                                let h = |n: &str| {
                                    resp.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_owned()
                                };
                                let (revision, model, rule) = (
                                    h("x-llmgw-policy-rev"),
                                    h("x-llmgw-model"),
                                    h("x-llmgw-rule"),
                                );
                                let status = resp.status().as_u16();
                                let body_ok = resp.into_body().collect().await.is_ok();
                                Seen {
                                    sent,
                                    done: Instant::now(),
                                    status: if body_ok { status } else { 0 },
                                    revision,
                                    model,
                                    rule,
                                }
                            }
                            _ => Seen {
                                sent,
                                done: Instant::now(),
                                status: 0,
                                revision: String::new(),
                                model: String::new(),
                                rule: String::new(),
                            },
                        };
                        seen.lock().expect("lock").push(s);
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            tasks,
            started: Instant::now(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until a response sent after `since` carries `revision`; the time that took.
    async fn live(&self, revision: &str, since: Instant, limit: Duration) -> Option<Duration> {
        until(limit, || async {
            self.seen()
                .iter()
                .any(|s| s.sent >= since && s.revision == revision)
        })
        .await?;
        self.seen()
            .iter()
            .filter(|s| s.sent >= since && s.revision == revision)
            .map(|s| s.done.duration_since(since))
            .min()
    }

    async fn finish(self) -> (Vec<Seen>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let elapsed = self.started.elapsed();
        let seen = self.seen.lock().expect("lock").clone();
        (seen, elapsed)
    }
}

fn load_policy(repo: &Path, rev: &str) -> llmgw_engine::CompiledPolicy {
    let repo = llmgw_git::PolicyRepo::open(repo.to_str().expect("utf-8"), &std::env::temp_dir())
        .expect("open repo");
    let commit = repo.resolve(rev).expect("resolve");
    let files: Vec<PolicyFile> = repo
        .files_at(&commit.id, llmgw_engine::source::is_policy_file)
        .expect("files")
        .into_iter()
        .map(|(path, bytes)| PolicyFile { path, bytes })
        .collect();
    llmgw_engine::load::load_files(&files, Some(&commit.id))
        .policy
        .expect("the revision compiles")
}

fn read_records(path: &Path) -> Vec<DecisionRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a record ({e}): {l}")))
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

// --- tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_land_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("policies");
    std::fs::create_dir(&repo).expect("mkdir");
    let c1 = init_repo(&repo);
    let decisions = dir.path().join("decisions.jsonl");
    let gw = Gw::start(
        &[
            "--repo",
            repo.to_str().expect("utf-8"),
            "--branch",
            "main",
            "--poll-interval",
            "500ms",
            "--decision-log",
            decisions.to_str().expect("utf-8"),
        ],
        &dir.path().join("state"),
        &dir.path().join("stderr.log"),
    )
    .expect("starts");
    assert!(gw.banner.iter().any(|l| l.contains(&c1)), "{:?}", gw.banner);

    // About 320 requests a second: 16 connections, one request each every 50 ms.
    let load = Load::start(
        gw.url("/v1/chat/completions"),
        16,
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(load
        .seen()
        .iter()
        .all(|s| s.revision == c1 && s.model == "fast"));

    // A good commit that changes routing is live within 2 s.
    let t2 = Instant::now();
    let c2 = commit(
        &repo,
        &[("routing.yaml", ROUTING_SMART)],
        "Upgrade fast to smart",
    );
    let took = load
        .live(&c2, t2, Duration::from_secs(5))
        .await
        .expect("the routing change goes live");
    assert!(took <= Duration::from_secs(2), "live after {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = status(&gw).await;
    assert_eq!(st["applied_revision"]["id"], c2.as_str());
    assert_eq!(st["applied_revision"]["summary"], "Upgrade fast to smart");
    assert!(st["applied_revision"]["author"]
        .as_str()
        .is_some_and(|a| a.contains("Policy Author")));
    assert!(st["applied_revision"]["time"].is_string());

    // A broken commit never goes live; status shows why.
    let t3 = Instant::now();
    let c3 = commit(
        &repo,
        &[("budgets.yaml", BROKEN_BUDGETS)],
        "Add a budget (typo)",
    );
    let failed = until(Duration::from_secs(3), || async {
        status(&gw).await["attempted_revision"]["id"] == c3.as_str()
    })
    .await;
    assert!(failed.is_some(), "the broken commit was attempted");
    let st = status(&gw).await;
    assert_eq!(st["applied_revision"]["id"], c2.as_str());
    assert_eq!(st["attempted_revision"]["result"], "failed");
    assert_eq!(st["serving_last_known_good"], true);
    let diags = st["attempted_revision"]["diagnostics"]
        .as_array()
        .expect("diagnostics");
    let d = diags
        .iter()
        .find(|d| d["severity"] == "error")
        .expect("an error");
    assert_eq!(d["file"], "budgets.yaml", "{d}");
    assert_eq!(d["line"], 7, "{d}");
    assert!(d["column"].is_u64(), "{d}");
    assert!(
        d["code"].as_str().is_some_and(|c| c.starts_with("cel/")),
        "{d}"
    );
    assert!(st["reloads"]["failed"].as_u64() >= Some(1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_broken: Vec<Seen> = load.seen().into_iter().filter(|s| s.sent >= t3).collect();
    assert!(!after_broken.is_empty());
    assert!(
        after_broken
            .iter()
            .all(|s| s.revision == c2 && s.model == "smart"),
        "the previous revision kept serving"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains(&format!("llmgw_policy_info{{revision=\"{c2}\"}} 1")));
    assert!(!metrics.contains(&format!("revision=\"{c3}\"")));
    assert!(metric(&metrics, "llmgw_policy_reloads_total{result=\"failed\"}") >= 1.0);
    assert!(metric(&metrics, "llmgw_policy_reloads_total{result=\"unchanged\"}") >= 1.0);

    // Reverting the broken commit: a new commit, live, routing as in c2.
    let t4 = Instant::now();
    let c4 = revert(&repo, &c3);
    load.live(&c4, t4, Duration::from_secs(5))
        .await
        .expect("the revert of the broken commit goes live");

    // Reverting the routing change restores the earlier routing.
    let t5 = Instant::now();
    let c5 = revert(&repo, &c2);
    let took = load
        .live(&c5, t5, Duration::from_secs(5))
        .await
        .expect("the revert goes live");
    assert!(took <= Duration::from_secs(2), "revert live after {took:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(&gw).await;
    assert_eq!(st["applied_revision"]["id"], c5.as_str());
    assert_eq!(st["serving_last_known_good"], false);

    // At least 10 s of load in all.
    let remaining = Duration::from_millis(10_500).saturating_sub(load.started.elapsed());
    tokio::time::sleep(remaining).await;
    let (seen, elapsed) = load.finish().await;

    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        failed.first()
    );
    let rate = seen.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "gitops load: {} requests in {:.1} s = {rate:.0} req/s, none failed",
        seen.len(),
        elapsed.as_secs_f64()
    );
    assert!(elapsed >= Duration::from_secs(10));
    assert!(rate >= 200.0, "{rate:.0} req/s");
    // Each response names the revision that decided it, and routing followed the revisions.
    for s in &seen {
        let expected = if s.revision == c2 || s.revision == c4 {
            ("smart", "upgrade-fast")
        } else if s.revision == c1 || s.revision == c5 {
            ("fast", "default")
        } else {
            panic!("unexpected revision {s:?}");
        };
        assert_eq!((s.model.as_str(), s.rule.as_str()), expected, "{s:?}");
    }
    let late: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.sent >= t5 + Duration::from_secs(2))
        .collect();
    assert!(!late.is_empty() && late.iter().all(|s| s.revision == c5));

    // One reload log line per revision tried.
    let logs = gw.logs();
    let reloads: Vec<&Value> = logs
        .iter()
        .filter(|l| l["target"] == "llmgw::policy" && l["result"].is_string())
        .collect();
    for (id, result) in [
        (&c2, "applied"),
        (&c3, "failed"),
        (&c4, "applied"),
        (&c5, "applied"),
    ] {
        let n = reloads
            .iter()
            .filter(|l| l["revision"] == id.as_str())
            .count();
        assert_eq!(n, 1, "one log line for {id}");
        assert!(reloads
            .iter()
            .any(|l| l["revision"] == id.as_str() && l["result"] == result));
    }
    let failure = reloads
        .iter()
        .find(|l| l["result"] == "failed")
        .expect("failure logged");
    assert!(failure["diagnostics"]
        .as_str()
        .is_some_and(|d| d.contains("budgets.yaml")));

    // Every response has its decision-log line, written by shutdown.
    gw.stop();
    let records = read_records(&decisions);
    assert_eq!(
        records.len(),
        seen.len(),
        "one decision-log line per request"
    );
    let revisions: std::collections::HashSet<&str> =
        records.iter().map(|r| r.revision.as_str()).collect();
    for id in [&c1, &c2, &c4, &c5] {
        assert!(revisions.contains(id.as_str()), "records of {id}");
    }
    // Replayed through the revision that decided it, every record decides the same.
    let policies: Vec<(String, llmgw_engine::CompiledPolicy)> = [&c1, &c2, &c4, &c5]
        .iter()
        .map(|id| ((*id).clone(), load_policy(&repo, id)))
        .collect();
    for r in &records {
        let policy = &policies
            .iter()
            .find(|(id, _)| *id == r.revision)
            .expect("a known revision")
            .1;
        let d = policy
            .decide(&r.input.context(), &r.input, &r.input)
            .expect("decides");
        assert_eq!(&*d.rule, r.rule);
        assert_eq!(d.primary().map(|a| a.model.to_string()), r.served_model);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_broken_head_serves_the_last_known_good_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("policies");
    std::fs::create_dir(&repo).expect("mkdir");
    let c1 = init_repo(&repo);
    let url = format!("file://{}", repo.display());
    let state = dir.path().join("state");
    let args = ["--repo", url.as_str(), "--poll-interval", "500ms"];
    let log = dir.path().join("first.log");
    let gw = Gw::start(&args, &state, &log).expect("starts");
    let answer = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-llmgw-policy-rev"), c1);
    gw.stop();

    // The branch head breaks while the gateway is down.
    let c2 = commit(
        &repo,
        &[("budgets.yaml", BROKEN_BUDGETS)],
        "Add a budget (typo)",
    );
    let log = dir.path().join("second.log");
    let gw = Gw::start(&args, &state, &log).expect("starts on the last known good revision");
    assert!(
        gw.banner.iter().any(|l| l.contains("last known good")),
        "{:?}",
        gw.banner
    );
    let answer = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-llmgw-policy-rev"), c1);
    let st = status(&gw).await;
    assert_eq!(st["serving_last_known_good"], true);
    assert_eq!(st["applied_revision"]["id"], c1.as_str());
    assert_eq!(st["applied_revision"]["summary"], "Two simulated models");
    assert_eq!(st["attempted_revision"]["id"], c2.as_str());
    assert_eq!(st["attempted_revision"]["result"], "failed");
    let d = &st["attempted_revision"]["diagnostics"][0];
    assert_eq!(d["file"], "budgets.yaml", "{st}");
    assert_eq!(d["line"], 7, "{st}");
    assert!(gw.logs().iter().any(|l| l["result"] == "failed"
        && l["revision"] == c2.as_str()
        && l["serving"] == c1.as_str()));

    // A fixed head goes live as usual.
    let t = Instant::now();
    let fixed = BROKEN_BUDGETS.replace("request.modle", "request.model");
    let c3 = commit(&repo, &[("budgets.yaml", &fixed)], "Fix the budget");
    let live = until(Duration::from_secs(5), || async {
        post(&gw.url("/v1/chat/completions"), &chat("fast"))
            .await
            .header("x-llmgw-policy-rev")
            == c3
    })
    .await;
    assert!(live.is_some(), "the fix goes live");
    assert!(t.elapsed() <= Duration::from_secs(3));
    assert_eq!(status(&gw).await["serving_last_known_good"], false);
    gw.stop();

    // With no good revision on record, the gateway refuses to start and says why.
    let c4 = commit(&repo, &[("budgets.yaml", BROKEN_BUDGETS)], "Break it again");
    let fresh = dir.path().join("fresh-state");
    let err = match Gw::start(&args, &fresh, &dir.path().join("third.log")) {
        Ok(_) => panic!("started without a good revision"),
        Err(e) => e,
    };
    assert!(!err.starts_with("exit exit status: 0"), "{err}");
    assert!(err.contains(&c4), "{err}");
    assert!(err.contains("budgets.yaml:7"), "{err}");
    assert!(err.contains("no last known good revision"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_replays_through_policy_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("policies");
    std::fs::create_dir(&repo).expect("mkdir");
    let c1 = init_repo(&repo);
    let decisions = dir.path().join("decisions.jsonl");
    let gw = Gw::start(
        &[
            "--repo",
            repo.to_str().expect("utf-8"),
            "--poll-interval",
            "200ms",
            "--decision-log",
            decisions.to_str().expect("utf-8"),
        ],
        &dir.path().join("state"),
        &dir.path().join("stderr.log"),
    )
    .expect("starts");
    // 30 requests for `fast`, 10 for `smart`, 5 batch requests for `smart` (routed to fast).
    let batch = serde_json::json!({
        "model": "smart",
        "max_tokens": 4,
        "metadata": { "workload": "batch" },
        "messages": [{ "role": "user", "content": "Summarize." }],
    })
    .to_string();
    let mut sent = 0;
    for (body, n) in [(chat("fast"), 30), (chat("smart"), 10), (batch, 5)] {
        for _ in 0..n {
            let a = post(&gw.url("/v1/chat/completions"), &body).await;
            assert_eq!(a.status, 200, "{}", a.body);
            assert_eq!(a.header("x-llmgw-policy-rev"), c1);
            sent += 1;
        }
    }
    gw.stop();
    let records = read_records(&decisions);
    assert_eq!(records.len(), sent);
    assert!(records.iter().all(|r| r.status == 200 && r.tokens_out > 0));
    let r = records
        .iter()
        .find(|r| r.rule == "batch-to-fast")
        .expect("a batch record");
    assert_eq!(r.requested_model, "smart");
    assert_eq!(r.served_model.as_deref(), Some("fast"));
    assert_eq!(r.input.request.metadata["workload"], "batch");
    assert!(r.input.random.is_some() && r.input.now.is_some());
    assert!(!r.input.identity.key.id.is_empty());
    let line = std::fs::read_to_string(&decisions).expect("log");
    assert!(!line.contains(KEY), "no key secret in the decision log");

    // What the routing change of `c2` does to that traffic.
    let c2 = commit(
        &repo,
        &[("routing.yaml", ROUTING_SMART)],
        "Upgrade fast to smart",
    );
    let base = load_policy(&repo, &c1);
    let head = load_policy(&repo, &c2);
    let report = llmgw_engine::diff::diff(&base, &head, &records);
    assert_eq!(report.requests, 45);
    assert_eq!(report.changed, 30, "{report:?}");
    assert_eq!(report.by_rule.get("default → upgrade-fast"), Some(&30));
    assert_eq!(report.by_model.get("fast → smart"), Some(&30));
    assert_eq!(report.by_model.len(), 1);
    // Recorded tokens at each revision's prices: fast $1/$2, smart $3/$15 per Mtok.
    let price = |m: &str, r: &DecisionRecord| {
        let (i, o) = if m == "fast" { (1.0, 2.0) } else { (3.0, 15.0) };
        (r.tokens_in as f64 * i + r.tokens_out as f64 * o) / 1e6
    };
    let mut delta = 0.0;
    for r in records
        .iter()
        .filter(|r| r.rule == "default" && r.requested_model == "fast")
    {
        delta += price("smart", r) - price("fast", r);
    }
    assert!(delta > 0.0);
    assert!(
        (report.cost_delta_usd - delta).abs() < 1e-12,
        "{} vs {delta}",
        report.cost_delta_usd
    );
    // Replayed through the same revision, nothing changes.
    assert_eq!(llmgw_engine::diff::diff(&base, &base, &records).changed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_rotates_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    for (p, t) in [
        ("providers.yaml", PROVIDERS),
        ("models.yaml", MODELS),
        ("routing.yaml", ROUTING_DEFAULT),
    ] {
        std::fs::write(policies.join(p), t).expect("write");
    }
    let decisions = dir.path().join("log").join("decisions.jsonl");
    let gw = Gw::start(
        &[
            "--policies",
            policies.to_str().expect("utf-8"),
            "--decision-log",
            decisions.to_str().expect("utf-8"),
            "--decision-log-max-bytes",
            "6000",
            "--decision-log-keep",
            "2",
        ],
        &dir.path().join("state"),
        &dir.path().join("stderr.log"),
    )
    .expect("starts");
    for _ in 0..80 {
        let a = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
        assert_eq!(a.status, 200);
    }
    let metrics = gw.metrics().await;
    gw.stop();
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", decisions.display()));
    let mut lines = 0;
    for path in [decisions.clone(), rotated(1), rotated(2)] {
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|_| panic!("{} exists", path.display()))
            .len();
        assert!(size <= 6000, "{} has {size} bytes", path.display());
        lines += read_records(&path).len();
    }
    assert!(!rotated(3).exists(), "two rotated files are kept");
    assert!(
        lines > 0 && lines < 80,
        "older lines went with the oldest file"
    );
    assert!(
        metric(&metrics, "llmgw_decision_log_rotations_total") >= 3.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "llmgw_decision_log_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_directory_reloads_on_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    for (p, t) in [
        ("providers.yaml", PROVIDERS),
        ("models.yaml", MODELS),
        ("routing.yaml", ROUTING_DEFAULT),
    ] {
        std::fs::write(policies.join(p), t).expect("write");
    }
    let gw = Gw::start(
        &[
            "--policies",
            policies.to_str().expect("utf-8"),
            "--poll-interval",
            "30s",
        ],
        &dir.path().join("state"),
        &dir.path().join("stderr.log"),
    )
    .expect("starts");
    let first = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
    assert_eq!(first.header("x-llmgw-model"), "fast");
    let rev1 = first.header("x-llmgw-policy-rev").to_owned();
    assert!(rev1.starts_with("dir-"));

    // A change under `.git/` is not a policy change.
    std::fs::create_dir(policies.join(".git")).expect("mkdir");
    std::fs::write(policies.join(".git").join("routing.yaml"), "not: [policy").expect("write");

    std::fs::write(policies.join("routing.yaml"), ROUTING_SMART).expect("write");
    let live = until(Duration::from_secs(3), || async {
        post(&gw.url("/v1/chat/completions"), &chat("fast"))
            .await
            .header("x-llmgw-model")
            == "smart"
    })
    .await;
    assert!(
        live.is_some(),
        "the saved change goes live (the poll is 30 s away)"
    );
    std::fs::write(policies.join("routing.yaml"), "kind: [").expect("write");
    let failed = until(Duration::from_secs(3), || async {
        status(&gw).await["attempted_revision"]["result"] == "failed"
    })
    .await;
    assert!(failed.is_some());
    let a = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
    assert_eq!((a.status, a.header("x-llmgw-model")), (200, "smart"));
    gw.stop();

    // The broken directory on restart: the recorded last good revision serves.
    let gw = Gw::start(
        &["--policies", policies.to_str().expect("utf-8")],
        &dir.path().join("state"),
        &dir.path().join("again.log"),
    )
    .expect("starts on the last known good revision");
    let a = post(&gw.url("/v1/chat/completions"), &chat("fast")).await;
    assert_eq!((a.status, a.header("x-llmgw-model")), (200, "smart"));
    assert_eq!(status(&gw).await["serving_last_known_good"], true);
    gw.stop();
}

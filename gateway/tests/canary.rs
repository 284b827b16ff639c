//! Canaries run by the real `llmgw` binary against the fault-injecting mock provider: a
//! candidate failing five times as often as its baseline is rolled back and gets no traffic
//! afterwards; one 40% slower is rolled back on `latency_p95`; a healthy one is promoted
//! through every step; a restart resumes at the same step; operators pause, resume and roll
//! back; a rolled-back spec stays rolled back until the spec changes, and a changed spec
//! starts over. Three replicas on one Redis run one rollout together: a bad candidate is
//! rolled back by the fleet and stays so through restarts, a healthy one is promoted once.
//!
//! The baseline and the candidate are two `openai_compatible` providers (`mock-base`,
//! `mock-cand`) pointing at one mock, each deployment with its own upstream model name, whose
//! fault sets that arm's behaviour: `base+err-4` and `cand+err-20` fail that share of their
//! attempts, `base+lat-40-25` answers after 40 ms ± 25%, `cand+ok` at once. The mock spreads
//! failures and latencies deterministically over each model's attempts, and counts the
//! attempts per model at `GET /_stats`: that is how the tests see which upstream each request
//! reached, independently of what the gateway reports. Tests wait for conditions by polling
//! `/admin/status`, each within a time limit, and read `/_stats` once every request they
//! count has been answered.

mod common;
mod state_support;

use common::*;
use llmgw_mock_provider::MockHandle;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "adm-canary-token";

/// The upstream models (mock faults) of the two arms.
#[derive(Clone, Copy)]
struct Arms {
    base: &'static str,
    cand: &'static str,
}

/// Both arms answering at once, without errors.
const HEALTHY: Arms = Arms {
    base: "base+ok",
    cand: "cand+ok",
};

/// Writes a policy: model `chat` on `mock-base`, its canary `chat-v2` on `mock-cand`, both at
/// the mock `mock` with the upstream models of `arms`, and the canary's `rollout` (YAML,
/// indented for the `rollout:` key). Circuits never open: the test is about the statistics,
/// not about failover. Timeouts are far above any latency the tests ask for.
fn write_policy(dir: &Path, mock: &MockHandle, arms: Arms, rollout: &str) {
    let base_url = mock.base_url();
    let provider = |name: &str| {
        format!(
            "  - name: {name}\n    type: openai_compatible\n    region: {name}\n    base_url: {base_url}\n    timeouts: {{ connect_ms: 1000, first_token_ms: 10000, idle_ms: 10000, total_ms: 20000 }}\n    circuit: {{ window_secs: 10, min_requests: 1000000, error_ratio: 1.0, consecutive_failures: 1000000, cooldown_secs: 1 }}\n"
        )
    };
    let files = [
        (
            "providers.yaml",
            format!(
                "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n{}{}",
                provider("mock-base"),
                provider("mock-cand")
            ),
        ),
        (
            "models.yaml",
            format!(
                "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: chat\n    class: chat\n    quality: 0.9\n    context_window: 32000\n    capabilities: [chat]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: mock-base\n        upstream_model: \"{}\"\n      - name: chat-v2@mock-cand\n        provider: mock-cand\n        upstream_model: \"{}\"\n        canary_only: true\n",
                arms.base, arms.cand
            ),
        ),
        (
            "routing.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: requested-model\n    strategy: priority\n".to_owned(),
        ),
        (
            "canaries.yaml",
            format!(
                "apiVersion: llmgw.dev/v1\nkind: Canaries\ncanaries:\n  - name: chat-v2\n    model: chat\n    baseline: chat@mock-base\n    candidate: chat-v2@mock-cand\n    rollout:\n{rollout}"
            ),
        ),
    ];
    for (name, text) in files {
        // Write then rename, so a watching gateway never reads half a file.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, dir.join(name)).expect("rename policy");
    }
}

/// One step: weight, minimum candidate requests, minimum seconds.
fn step(weight: u32, min_requests: u64, min_secs: u64) -> String {
    format!(
        "        - weight_percent: {weight}\n          min_requests: {min_requests}\n          min_duration_secs: {min_secs}\n"
    )
}

fn rollout(steps: &[String], metrics: &[&str]) -> String {
    let mut out = String::from("      steps:\n");
    for s in steps {
        out.push_str(s);
    }
    out.push_str("      metrics:\n");
    for m in metrics {
        out.push_str(&format!("        - metric: {m}\n          margin: 1.0\n"));
    }
    out.push_str("      alpha: 0.01\n");
    out
}

fn start(policies: &Path, state: Option<&str>) -> Gateway {
    Gateway::start_on(
        &[
            "--policies",
            policies.to_str().expect("utf-8"),
            "--poll-interval",
            "100ms",
            "--admin-token",
            ADMIN,
        ],
        &[],
        true,
        state,
    )
}

/// The `chat-v2` entry of `/admin/status`.
async fn canary(gw: &Gateway) -> Value {
    let status = gw.admin_get("/admin/status").await;
    assert_eq!(status.status, 200, "{}", status.body);
    let v = status.json();
    v["canaries"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["canary"] == "chat-v2"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls the canary's status until `done` holds; fails after `limit`.
async fn wait_for(
    gw: &Gateway,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let c = canary(gw).await;
        if done(&c) {
            return c;
        }
        if started.elapsed() > limit {
            let logs = gw.logs();
            let tail: Vec<&str> = logs.lines().rev().take(20).collect();
            panic!("no {what} within {limit:?}; canary status: {c:#}\nlast log lines: {tail:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a client saw of one answer.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    arm: String,
    w: f64,
    provider: String,
}

fn seen(a: &Answer) -> Seen {
    // `x-llmgw-canary: chat-v2; arm=candidate; w=0.5`
    let header = a.header("x-llmgw-canary").to_owned();
    let field = |key: &str| {
        header
            .split("; ")
            .find_map(|p| p.strip_prefix(key))
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        header.is_empty() || header.starts_with("chat-v2; arm="),
        "{header}"
    );
    Seen {
        status: a.status,
        arm: field("arm="),
        w: field("w=").parse().unwrap_or(f64::NAN),
        provider: a.header("x-llmgw-provider").to_owned(),
    }
}

fn body() -> String {
    chat("chat", false, 1)
}

/// Clients sending requests in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
}

impl Load {
    fn start(gw: &Gateway, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let url = gw.url("/v1/chat/completions");
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        out.push(seen(&post(&url, &body()).await));
                    }
                    out
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the clients; returns once every request sent has been answered.
    async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.expect("load worker"));
        }
        all
    }
}

/// `n` requests, `concurrency` at a time.
async fn requests(gw: &Gateway, n: usize, concurrency: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|_| {
                let url = gw.url("/v1/chat/completions");
                tokio::spawn(async move { seen(&post(&url, &body()).await) })
            })
            .collect();
        for t in tasks {
            out.push(t.await.expect("request"));
        }
    }
    out
}

fn state(c: &Value) -> &str {
    c["state"].as_str().unwrap_or("")
}

/// The transitions logged as structured `canary_transition` events.
fn transition_events(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "canary_transition")
        .collect()
}

async fn metrics(gw: &Gateway) -> String {
    gw.metrics().await
}

async fn admin(gw: &Gateway, action: &str, token: &str) -> Answer {
    send(
        "POST",
        &gw.admin_url(&format!("/admin/canaries/chat-v2/{action}")),
        None,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// The mock's attempt count for the upstream model `model`, from its `GET /_stats`.
async fn attempts(mock: &MockHandle, model: &str) -> u64 {
    let stats = send("GET", &format!("http://{}/_stats", mock.addr), None, &[]).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    stats.json()["attempts"][model].as_u64().unwrap_or(0)
}

/// The canary's status once the controller has counted every request of `answered` that a
/// canary split (outcomes reach it asynchronously), on top of `earlier` requests.
async fn settled(gw: &Gateway, earlier: u64, answered: &[Seen]) -> Value {
    let split = earlier + answered.iter().filter(|s| !s.arm.is_empty()).count() as u64;
    wait_for(gw, "every outcome counted", Duration::from_secs(10), |c| {
        let n = |arm: &str| c["requests"][arm].as_u64().unwrap_or(0);
        n("baseline") + n("candidate") >= split
    })
    .await
}

/// After a rollback, the candidate gets nothing: every new request goes to the baseline with
/// w = 0, the candidate's upstream model sees no further attempt at the mock, and the
/// candidate's request count stops. `before` is the status with every earlier outcome
/// counted, and no request is in flight.
async fn assert_no_candidate_traffic(gw: &Gateway, mock: &MockHandle, arms: Arms, before: &Value) {
    let baseline_before = before["requests"]["baseline"].as_u64().expect("count");
    let cand_attempts = attempts(mock, arms.cand).await;
    let base_attempts = attempts(mock, arms.base).await;
    let after_rollback = requests(gw, 100, 10).await;
    for s in &after_rollback {
        // A baseline failing twice in a row answers 502: still the baseline's answer.
        assert!(s.status == 200 || s.status == 502, "{s:?}");
        assert_eq!((s.arm.as_str(), s.w), ("baseline", 0.0), "{s:?}");
        if s.status == 200 {
            assert_eq!(s.provider, "mock-base", "{s:?}");
        }
    }
    assert_eq!(
        attempts(mock, arms.cand).await,
        cand_attempts,
        "no attempt reached the candidate's upstream after the rollback"
    );
    assert!(
        attempts(mock, arms.base).await >= base_attempts + 100,
        "the baseline's upstream answered every request"
    );
    let c = wait_for(
        gw,
        "the 100 baseline requests counted",
        Duration::from_secs(10),
        |c| c["requests"]["baseline"].as_u64() >= Some(baseline_before + 100),
    )
    .await;
    assert_eq!(
        c["requests"]["candidate"], before["requests"]["candidate"],
        "{c:#}"
    );
    assert_eq!(c["weight_percent"], 0.0);
}

// A candidate failing 5× as often as its baseline, at a 50% split: the mock fails 4% of the
// baseline's attempts and 20% of the candidate's (`err-4`, `err-20`: every 25th and every
// 5th attempt of each model). The gateway retries a 500 once on the same deployment, 100 ms
// later; under this load dozens of other attempts of that model pass in between, so the retry
// fails or passes like any attempt, and the controller counts a request as an error of its
// arm from its first failed call: per request the rates stay 4% and 20% (measured: 3.5–3.8%
// and 20.2–20.6% over 5,000 requests). At w = 0.5 each error is the candidate's with
// probability 0.2 / (0.2 + 0.04) = 0.83 instead of 0.5; the e-process gains about 0.24 per
// error event and needs about ln(100) + ln(11) = 7, so about 30 errors: a few hundred
// requests at 12% errors, a second or two over 12 clients. A smaller weight would need more
// events (each says less), and lower error rates more requests per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_with_five_times_the_error_rate_is_rolled_back_and_gets_no_more_traffic() {
    const WORKERS: usize = 12;
    let mock = mock().await;
    let arms = Arms {
        base: "base+err-4",
        cand: "cand+err-20",
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(50, 1_000_000, 3600)], &["error_rate"]);
    write_policy(dir.path(), &mock, arms, &spec);
    let gw = start(dir.path(), None);
    let c = canary(&gw).await;
    assert_eq!(
        (state(&c), c["step"].as_u64()),
        ("progressing", Some(0)),
        "{c:#}"
    );
    assert_eq!(c["weight_percent"], 50.0);

    let load = Load::start(&gw, WORKERS);
    let c = wait_for(&gw, "rollback", Duration::from_secs(60), |c| {
        state(c) == "rolled_back"
    })
    .await;
    let cand_at_rollback = attempts(&mock, arms.cand).await;
    let sent = load.stop().await;
    // Only requests already in flight when the weight went to 0 may still reach the
    // candidate: one per client, each with at most one retry.
    let cand_after = attempts(&mock, arms.cand).await;
    assert!(
        cand_after <= cand_at_rollback + 2 * WORKERS as u64,
        "{cand_at_rollback} candidate attempts at the rollback, {cand_after} once the load stopped"
    );
    assert!(sent.iter().any(|s| s.arm == "candidate" && s.w == 0.5));
    // Both upstreams took part (a failed attempt and its retry are two attempts).
    let base_attempts = attempts(&mock, arms.base).await;
    assert!(
        base_attempts >= 100 && cand_after >= 100,
        "{base_attempts} baseline and {cand_after} candidate attempts"
    );
    assert_eq!(c["alarm"]["metric"], "error_rate", "{c:#}");
    // log E crossed the threshold (outcomes of requests already in flight may move it since).
    let alarm = &c["alarm"];
    assert!(
        alarm["log_e"].as_f64() >= alarm["log_threshold"].as_f64(),
        "{c:#}"
    );
    assert_eq!(alarm["log_threshold"], c["metrics"][0]["threshold"]);
    let m = &c["metrics"][0];
    // More of the errors were the candidate's, though it served half the requests.
    assert!(
        m["events"]["candidate"].as_u64() > m["events"]["baseline"].as_u64(),
        "{c:#}"
    );
    let last = c["transitions"].as_array().and_then(|t| t.last()).cloned();
    assert_eq!(
        last.as_ref().map(|t| &t["reason"]["kind"]),
        Some(&Value::from("alarm"))
    );

    assert_no_candidate_traffic(&gw, &mock, arms, &settled(&gw, 0, &sent).await).await;

    let text = metrics(&gw).await;
    assert!(
        text.contains("llmgw_canary_weight{canary=\"chat-v2\"} 0.0"),
        "{text}"
    );
    assert!(text.contains("llmgw_canary_state{canary=\"chat-v2\",state=\"rolled_back\"} 1"));
    assert!(text.contains("llmgw_canary_log_e{canary=\"chat-v2\",metric=\"error_rate\"}"));
    assert!(text.contains(
        "llmgw_canary_transitions_total{canary=\"chat-v2\",to=\"rolled_back\",reason=\"alarm\"} 1"
    ));
    let events = transition_events(&gw);
    let rollback = events
        .iter()
        .find(|e| e["to"] == "rolled_back")
        .unwrap_or_else(|| panic!("no rollback event: {events:#?}"));
    assert_eq!(rollback["reason"], "alarm");
    assert_eq!(rollback["metric"], "error_rate");
    assert_eq!(rollback["level"], "WARN");
}

// A candidate 40% slower at every quantile: the mock answers the baseline after 40 ms ± 25%
// and the candidate after 56 ms ± 25% (`lat-40-25`, `lat-56-25`: uniform in 30–50 ms against
// 42–70 ms, each attempt's draw fixed by its number, so p95 49 ms against 69 ms). A latency
// event is a request slower than the baseline's p95, so about 5% of baseline requests but 75%
// of candidate ones are events: at w = 0.5 each event is the candidate's with probability
// 0.94, and a dozen events cross ln(2/0.01) (two metrics checked). Latencies of tens of
// milliseconds keep the gateway's own overhead, the local connection and timer granularity
// small beside the difference. The p95 threshold needs 200 baseline requests first: some 400
// requests in all, at 50 ms each over 12 clients, a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_forty_percent_slower_at_p95_is_rolled_back() {
    let mock = mock().await;
    let arms = Arms {
        base: "base+lat-40-25",
        cand: "cand+lat-56-25",
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(50, 1_000_000, 3600)], &["error_rate", "latency_p95"]);
    write_policy(dir.path(), &mock, arms, &spec);
    let gw = start(dir.path(), None);
    let load = Load::start(&gw, 12);
    let c = wait_for(&gw, "rollback", Duration::from_secs(90), |c| {
        state(c) == "rolled_back"
    })
    .await;
    let sent = load.stop().await;
    assert!(sent.iter().all(|s| s.status == 200), "no errors");
    assert_eq!(c["alarm"]["metric"], "latency_p95", "{c:#}");
    let p95 = &c["metrics"][1];
    assert_eq!(p95["metric"], "latency_p95");
    let threshold = p95["baseline_threshold_ms"].as_f64().expect("threshold");
    // The baseline's p95 as the client sees it: the mock's 49 ms plus the gateway's overhead.
    assert!((45.0..100.0).contains(&threshold), "{c:#}");
    assert!(
        p95["events"]["candidate"].as_u64() > p95["events"]["baseline"].as_u64(),
        "{c:#}"
    );
    assert_eq!(c["metrics"][0]["log_e"], 0.0, "no errors, no error events");
    assert_no_candidate_traffic(&gw, &mock, arms, &settled(&gw, 0, &sent).await).await;
}

// A healthy candidate (both arms answer at once, with no error) walks 10% → 50% → 90% and is
// promoted. With no error at all the error-rate e-process never moves, so the test cannot
// roll back by chance; each step needs 5 candidate requests and 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_is_promoted_through_every_step() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(
        &[step(10, 5, 1), step(50, 5, 1), step(90, 5, 1)],
        &["error_rate"],
    );
    write_policy(dir.path(), &mock, HEALTHY, &spec);
    let gw = start(dir.path(), None);
    let load = Load::start(&gw, 4);
    let c = wait_for(&gw, "promotion", Duration::from_secs(60), |c| {
        state(c) == "promoted"
    })
    .await;
    let sent = load.stop().await;
    let steps: Vec<(Value, Value, Value)> = c["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| {
            (
                t["to"]["state"].clone(),
                t["to"]["step"].clone(),
                t["reason"]["kind"].clone(),
            )
        })
        .collect();
    let expected: Vec<(Value, Value, Value)> = [
        ("progressing", Some(0), "started"),
        ("progressing", Some(1), "step_completed"),
        ("progressing", Some(2), "step_completed"),
        ("promoted", None, "step_completed"),
    ]
    .iter()
    .map(|(s, n, r)| {
        (
            Value::from(*s),
            n.map_or(Value::Null, Value::from),
            Value::from(*r),
        )
    })
    .collect();
    assert_eq!(steps, expected, "{c:#}");
    // Every request was split with one of the steps' weights, and each reached its arm's
    // upstream exactly once.
    for s in &sent {
        assert_eq!(s.status, 200, "{s:?}");
        assert!([0.1, 0.5, 0.9, 1.0].contains(&s.w), "{s:?}");
    }
    let on = |arm: &str| sent.iter().filter(|s| s.arm == arm).count() as u64;
    assert_eq!(attempts(&mock, HEALTHY.base).await, on("baseline"));
    let cand_before = attempts(&mock, HEALTHY.cand).await;
    assert_eq!(cand_before, on("candidate"));
    // Promoted: the candidate takes everything.
    assert_eq!(c["weight_percent"], 100.0);
    for s in requests(&gw, 20, 5).await {
        assert_eq!((s.arm.as_str(), s.w), ("candidate", 1.0), "{s:?}");
        assert_eq!(s.provider, "mock-cand", "{s:?}");
    }
    assert_eq!(attempts(&mock, HEALTHY.cand).await, cand_before + 20);
    assert_eq!(attempts(&mock, HEALTHY.base).await, on("baseline"));
    let text = metrics(&gw).await;
    assert!(text.contains("llmgw_canary_state{canary=\"chat-v2\",state=\"promoted\"} 1"));
    assert!(text.contains("llmgw_canary_weight{canary=\"chat-v2\"} 100.0"));
    let events = transition_events(&gw);
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(events[3]["to"], "promoted");
}

// Step 0 (20%) completes after 10 candidate requests and 1 s; step 1 (50%) then holds for an
// hour. The gateway is killed (no shutdown: the step was saved when it was entered) and
// restarted on the same state: it resumes at step 1 before any request arrives. The mock
// outlives both gateways, so its counters show where the restarted one sends traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_resumes_at_the_same_step() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state_path = state_dir.path().to_str().expect("utf-8").to_owned();
    let spec = rollout(
        &[step(20, 10, 1), step(50, 1_000_000, 3600)],
        &["error_rate"],
    );
    write_policy(dir.path(), &mock, HEALTHY, &spec);
    let gw = start(dir.path(), Some(&state_path));
    let load = Load::start(&gw, 4);
    let before = wait_for(&gw, "step 1", Duration::from_secs(60), |c| c["step"] == 1).await;
    load.stop().await;
    drop(gw); // SIGKILL

    let gw = start(dir.path(), Some(&state_path));
    let c = canary(&gw).await;
    assert_eq!(
        (state(&c), c["step"].as_u64()),
        ("progressing", Some(1)),
        "{c:#}"
    );
    assert_eq!(c["weight_percent"], 50.0);
    assert_eq!(c["spec_hash"], before["spec_hash"]);
    // The step's clock was not reset.
    let elapsed = c["step_progress"]["elapsed_secs"]
        .as_f64()
        .expect("elapsed");
    let elapsed_before = before["step_progress"]["elapsed_secs"]
        .as_f64()
        .expect("elapsed");
    assert!(elapsed >= elapsed_before, "{c:#}");
    // Requests counted up to the step change were saved with it.
    assert!(c["requests"]["candidate"].as_u64() >= Some(10), "{c:#}");
    let earlier = ["baseline", "candidate"]
        .iter()
        .filter_map(|arm| c["requests"][arm].as_u64())
        .sum();
    let (base_before, cand_before) = (
        attempts(&mock, HEALTHY.base).await,
        attempts(&mock, HEALTHY.cand).await,
    );
    let sent = requests(&gw, 20, 5).await;
    for s in &sent {
        assert_eq!(s.w, 0.5, "{s:?}");
    }
    // Each arm's upstream got the requests split to it.
    let on = |arm: &str| sent.iter().filter(|s| s.arm == arm).count() as u64;
    assert_eq!(
        attempts(&mock, HEALTHY.base).await,
        base_before + on("baseline")
    );
    assert_eq!(
        attempts(&mock, HEALTHY.cand).await,
        cand_before + on("candidate")
    );
    assert!(
        transition_events(&gw).is_empty(),
        "resuming is not a transition"
    );

    // A graceful stop saves the outcomes counted since the last save.
    let counted = settled(&gw, earlier, &sent).await;
    let mut gw = gw;
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "llmgw stops on SIGTERM"
    );
    drop(gw);
    let gw = start(dir.path(), Some(&state_path));
    let c = canary(&gw).await;
    assert_eq!(c["step"], 1, "{c:#}");
    assert_eq!(c["requests"], counted["requests"], "{c:#}");
}

// Operators pause, resume and roll back with the admin token. A rolled-back spec stays rolled
// back across reloads and restarts; a changed spec (another key in the store) starts over at
// step 0, and going back to the rolled-back spec finds it rolled back still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_and_roll_back_and_a_rolled_back_spec_stays_so_until_it_changes() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state_path = state_dir.path().to_str().expect("utf-8").to_owned();
    let spec_a = rollout(&[step(20, 1_000_000, 3600)], &["error_rate"]);
    let spec_b = rollout(&[step(20, 999_999, 3600)], &["error_rate"]);
    write_policy(dir.path(), &mock, HEALTHY, &spec_a);
    let gw = start(dir.path(), Some(&state_path));
    let a = canary(&gw).await;
    let hash_a = a["spec_hash"].clone();
    assert_eq!(state(&a), "progressing");

    // Only the admin token commands canaries.
    assert_eq!(admin(&gw, "pause", KEY).await.status, 403);
    let missing = send(
        "POST",
        &gw.admin_url("/admin/canaries/nope/pause"),
        None,
        &[("authorization", &format!("Bearer {ADMIN}"))],
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let paused = admin(&gw, "pause", ADMIN).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["state"], "paused");
    assert_eq!(
        paused.json()["weight_percent"],
        20.0,
        "a pause holds the weight"
    );
    let again = admin(&gw, "pause", ADMIN).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.body.contains("it is paused at step 0"),
        "{}",
        again.body
    );
    let resumed = admin(&gw, "resume", ADMIN).await;
    assert_eq!(resumed.json()["state"], "progressing", "{}", resumed.body);

    let rolled = admin(&gw, "rollback", ADMIN).await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    assert_eq!(rolled.json()["state"], "rolled_back");
    assert_no_candidate_traffic(&gw, &mock, HEALTHY, &rolled.json()).await;
    let listed = send(
        "GET",
        &gw.admin_url("/admin/canaries"),
        None,
        &[("authorization", &format!("Bearer {ADMIN}"))],
    )
    .await;
    assert_eq!(
        listed.json()["data"][0]["state"],
        "rolled_back",
        "{}",
        listed.body
    );

    // A changed spec is a new rollout.
    write_policy(dir.path(), &mock, HEALTHY, &spec_b);
    let b = wait_for(&gw, "the changed spec", Duration::from_secs(30), |c| {
        !c.is_null() && c["spec_hash"] != hash_a
    })
    .await;
    assert_eq!(
        (state(&b), b["step"].as_u64()),
        ("progressing", Some(0)),
        "{b:#}"
    );
    assert_eq!(b["weight_percent"], 20.0);
    // Back to the rolled-back spec: still rolled back.
    write_policy(dir.path(), &mock, HEALTHY, &spec_a);
    let a = wait_for(&gw, "the first spec again", Duration::from_secs(30), |c| {
        c["spec_hash"] == hash_a
    })
    .await;
    assert_eq!(state(&a), "rolled_back", "{a:#}");
    for s in requests(&gw, 10, 5).await {
        assert_eq!((s.arm.as_str(), s.w), ("baseline", 0.0), "{s:?}");
    }
    drop(gw);

    // And after a restart.
    let gw = start(dir.path(), Some(&state_path));
    let a = canary(&gw).await;
    assert_eq!(
        (state(&a), &a["spec_hash"]),
        ("rolled_back", &hash_a),
        "{a:#}"
    );
    assert_eq!(a["weight_percent"], 0.0);
}

/// Requests that enter by the Anthropic Messages and OpenAI Responses doors are split between
/// the arms like chat completions, served by the arm they are told of, and counted by the
/// canary's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_entering_by_the_messages_and_responses_doors_are_split_and_observed() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(50, 1_000_000, 3600)], &["error_rate"]);
    write_policy(dir.path(), &mock, HEALTHY, &spec);
    let gw = start(dir.path(), None);
    let mut answered = Vec::new();
    for i in 0..40 {
        let (path, body) = if i % 2 == 0 {
            (
                "/v1/messages",
                serde_json::json!({ "model": "chat", "max_tokens": 1,
                    "messages": [{ "role": "user", "content": "Say something." }] }),
            )
        } else {
            (
                "/v1/responses",
                serde_json::json!({ "model": "chat", "max_output_tokens": 1, "store": false,
                    "input": "Say something." }),
            )
        };
        let a = post(&gw.url(path), &body.to_string()).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let s = seen(&a);
        let serving = if s.arm == "candidate" {
            "mock-cand"
        } else {
            "mock-base"
        };
        assert_eq!(s.provider, serving, "{path}: {s:?}");
        assert_eq!(s.w, 0.5, "{path}: {s:?}");
        answered.push(s);
    }
    let candidate = answered.iter().filter(|s| s.arm == "candidate").count() as u64;
    assert!(
        candidate > 0 && candidate < 40,
        "{candidate} of 40 on the candidate"
    );
    let c = settled(&gw, 0, &answered).await;
    assert_eq!(
        c["requests"]["candidate"].as_u64(),
        Some(candidate),
        "{c:#}"
    );
    assert_eq!(
        c["requests"]["baseline"].as_u64(),
        Some(40 - candidate),
        "{c:#}"
    );
}

/// A replica on the Redis at `url`, keys under `prefix`.
fn replica(policies: &Path, url: &str, prefix: &str) -> Gateway {
    Gateway::start_on(
        &[
            "--policies",
            policies.to_str().expect("utf-8"),
            "--poll-interval",
            "100ms",
            "--admin-token",
            ADMIN,
            "--state-prefix",
            prefix,
        ],
        &[],
        true,
        Some(url),
    )
}

/// Load spread over every replica of `fleet`.
fn fleet_load(fleet: &[Gateway], workers_each: usize) -> Vec<Load> {
    fleet
        .iter()
        .map(|gw| Load::start(gw, workers_each))
        .collect()
}

async fn stop_all(loads: Vec<Load>) -> Vec<Seen> {
    let mut all = Vec::new();
    for l in loads {
        all.extend(l.stop().await);
    }
    all
}

/// Waits until every replica's status satisfies `done`; returns their statuses.
async fn wait_fleet(
    fleet: &[Gateway],
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool + Copy,
) -> Vec<Value> {
    let mut out = Vec::new();
    for gw in fleet {
        out.push(wait_for(gw, what, limit, done).await);
    }
    out
}

/// Transitions to `to` logged across the fleet (each is logged by the replica that made it).
fn logged_transitions(fleet: &[Gateway], to: &str) -> usize {
    fleet
        .iter()
        .map(|gw| {
            transition_events(gw)
                .iter()
                .filter(|e| e["to"] == to)
                .count()
        })
        .sum()
}

// Three replicas on one Redis, the candidate failing 5× as often as the baseline (see the
// single-gateway test above), 50% split, clients on every replica. The replicas add their
// outcomes to one stored rollout, so one e-process tests the fleet's traffic: the rollback is
// made once, by one replica, and every replica follows it within a second. Afterwards no
// replica sends the candidate anything, and the stored record counts every replica's split
// requests. Restarted, all three find the canary rolled back before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn three_replicas_on_one_redis_roll_a_bad_candidate_back_together_for_good() {
    let url = state_support::redis_url();
    let prefix = state_support::fresh_prefix();
    let mock = mock().await;
    let arms = Arms {
        base: "base+err-4",
        cand: "cand+err-20",
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(50, 1_000_000, 3600)], &["error_rate"]);
    write_policy(dir.path(), &mock, arms, &spec);
    let fleet: Vec<Gateway> = (0..3).map(|_| replica(dir.path(), &url, &prefix)).collect();
    for gw in &fleet {
        let c = canary(gw).await;
        assert_eq!(
            (state(&c), c["weight_percent"].as_f64()),
            ("progressing", Some(50.0)),
            "{c:#}"
        );
    }
    assert_eq!(logged_transitions(&fleet, "progressing"), 1, "started once");

    let loads = fleet_load(&fleet, 4);
    wait_for(&fleet[0], "rollback", Duration::from_secs(60), |c| {
        state(c) == "rolled_back"
    })
    .await;
    // The others follow within a second (they look at the record every 200 ms).
    wait_fleet(
        &fleet,
        "the rollback on every replica",
        Duration::from_secs(1),
        |c| state(c) == "rolled_back" && c["weight_percent"] == 0.0,
    )
    .await;
    let sent = stop_all(loads).await;
    assert!(sent.iter().any(|s| s.arm == "candidate" && s.w == 0.5));
    assert_eq!(
        logged_transitions(&fleet, "rolled_back"),
        1,
        "rolled back once"
    );

    // One test over all the traffic: each replica's record counts every split request.
    let split = sent.iter().filter(|s| !s.arm.is_empty()).count() as u64;
    let counted = wait_fleet(
        &fleet,
        "every outcome counted",
        Duration::from_secs(10),
        |c| {
            let n = |arm: &str| c["requests"][arm].as_u64().unwrap_or(0);
            n("baseline") + n("candidate") >= split
        },
    )
    .await;
    let c = &counted[0];
    assert_eq!(c["alarm"]["metric"], "error_rate", "{c:#}");
    let m = &c["metrics"][0];
    assert!(
        m["events"]["candidate"].as_u64() > m["events"]["baseline"].as_u64(),
        "{c:#}"
    );

    // No replica sends the candidate anything now, nor after a restart of all three.
    let cand_attempts = attempts(&mock, arms.cand).await;
    let check = |fleet: &[Gateway]| {
        let urls: Vec<String> = fleet
            .iter()
            .map(|gw| gw.url("/v1/chat/completions"))
            .collect();
        async move {
            let mut answers = Vec::new();
            for u in &urls {
                for _ in 0..30 {
                    answers.push(seen(&post(u, &body()).await));
                }
            }
            for s in &answers {
                assert_eq!((s.arm.as_str(), s.w), ("baseline", 0.0), "{s:?}");
            }
        }
    };
    check(&fleet).await;
    assert_eq!(attempts(&mock, arms.cand).await, cand_attempts);
    let mut fleet = fleet;
    for gw in &mut fleet {
        gw.terminate();
        assert!(
            gw.wait_exit(Duration::from_secs(20)).is_some(),
            "llmgw stops on SIGTERM"
        );
    }
    drop(fleet);
    let fleet: Vec<Gateway> = (0..3).map(|_| replica(dir.path(), &url, &prefix)).collect();
    for gw in &fleet {
        let c = canary(gw).await;
        assert_eq!(
            (state(&c), c["weight_percent"].as_f64()),
            ("rolled_back", Some(0.0)),
            "{c:#}"
        );
    }
    check(&fleet).await;
    assert_eq!(attempts(&mock, arms.cand).await, cand_attempts);
    assert_eq!(logged_transitions(&fleet, "rolled_back"), 0);
    drop(fleet);
    state_support::cleanup_redis(&url, &prefix).await;
}

// Three replicas on one Redis, a healthy candidate, steps of 10% and 50% with 30 candidate
// requests each (counted fleet-wide). Each transition is made once, by one replica, and all
// three end promoted, sending the candidate everything; a restarted replica is promoted still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn three_replicas_on_one_redis_promote_a_healthy_candidate_once() {
    let url = state_support::redis_url();
    let prefix = state_support::fresh_prefix();
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(10, 30, 0), step(50, 30, 0)], &["error_rate"]);
    write_policy(dir.path(), &mock, HEALTHY, &spec);
    let mut fleet: Vec<Gateway> = (0..3).map(|_| replica(dir.path(), &url, &prefix)).collect();
    let loads = fleet_load(&fleet, 2);
    wait_fleet(
        &fleet,
        "promotion on every replica",
        Duration::from_secs(60),
        |c| state(c) == "promoted",
    )
    .await;
    let sent = stop_all(loads).await;
    for s in &sent {
        assert_eq!(s.status, 200, "{s:?}");
        assert!([0.1, 0.5, 1.0].contains(&s.w), "{s:?}");
    }
    assert_eq!(
        logged_transitions(&fleet, "progressing"),
        2,
        "started and stepped once"
    );
    assert_eq!(logged_transitions(&fleet, "promoted"), 1, "promoted once");
    let cand_before = attempts(&mock, HEALTHY.cand).await;
    for gw in &fleet {
        for s in requests(gw, 10, 5).await {
            assert_eq!((s.arm.as_str(), s.w), ("candidate", 1.0), "{s:?}");
        }
    }
    assert_eq!(attempts(&mock, HEALTHY.cand).await, cand_before + 30);
    let mut restarted = fleet.remove(0);
    restarted.terminate();
    assert!(restarted.wait_exit(Duration::from_secs(20)).is_some());
    drop(restarted);
    fleet.push(replica(dir.path(), &url, &prefix));
    let c = canary(&fleet[2]).await;
    assert_eq!(
        (state(&c), c["weight_percent"].as_f64()),
        ("promoted", Some(100.0)),
        "{c:#}"
    );
    assert!(
        transition_events(&fleet[2]).is_empty(),
        "resuming is not a transition"
    );
    drop(fleet);
    state_support::cleanup_redis(&url, &prefix).await;
}

// A rollout saved by a release before versioned records (a plain value under the same key) is
// adopted as it was: a canary rolled back then stays rolled back after the upgrade, and is not
// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_rollout_saved_before_versioned_records_is_adopted_not_restarted() {
    let url = state_support::redis_url();
    let prefix = state_support::fresh_prefix();
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = rollout(&[step(50, 1_000_000, 3600)], &["error_rate"]);
    write_policy(dir.path(), &mock, HEALTHY, &spec);
    let gw = replica(dir.path(), &url, &prefix);
    let rolled = admin(&gw, "rollback", ADMIN).await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    wait_for(&gw, "rollback", Duration::from_secs(10), |c| {
        state(c) == "rolled_back"
    })
    .await;
    drop(gw);
    // What an older release kept: the same record as a plain value.
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}vkv:canary:*"))
        .query_async(&mut c)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let value: String = redis::cmd("HGET")
        .arg(&keys[0])
        .arg("value")
        .query_async(&mut c)
        .await
        .expect("value");
    let legacy = keys[0].replacen(&format!("{prefix}vkv:"), &format!("{prefix}kv:"), 1);
    let () = redis::cmd("SET")
        .arg(&legacy)
        .arg(&value)
        .query_async(&mut c)
        .await
        .expect("set");
    let () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .expect("del");
    let gw = replica(dir.path(), &url, &prefix);
    let c = canary(&gw).await;
    assert_eq!(
        (state(&c), c["weight_percent"].as_f64()),
        ("rolled_back", Some(0.0)),
        "{c:#}"
    );
    drop(gw);
    state_support::cleanup_redis(&url, &prefix).await;
}

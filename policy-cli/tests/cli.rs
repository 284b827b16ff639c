//! `llmgw-policy test`, `explain` and `canary` as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("llmgw-policy runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn test_command_passes_the_bundled_cases_and_ends_with_the_count() {
    let out = run(&["test", POLICIES]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let last = stdout(&out).lines().last().unwrap_or_default().to_owned();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
}

#[test]
fn a_failing_case_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(POLICIES).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    write(
        dir.path(),
        "wrong.yaml",
        "apiVersion: llmgw.dev/v1\nkind: PolicyTests\ntests:\n  - name: batch goes to gpt-4o\n    request: {model: gpt-4o, input_tokens: 100, metadata: {workload: batch}}\n    expect: {model: gpt-4o, rule: batch-cost}\n",
    );
    let out = run(&["test", dir.path().to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL batch goes to gpt-4o (wrong.yaml:4:11)"),
        "{text}"
    );
    assert!(
        text.contains("- expected: gpt-4o") && text.contains("+ actual:   deepseek-v3"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("0 passed, 1 failed"), "{text}");
}

#[test]
fn explain_shows_rules_dropped_candidates_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let req = write(
        dir.path(),
        "req.json",
        r#"{"request":{"model":"gpt-4o","input_tokens":2000,"max_tokens":500,"metadata":{"workload":"batch"}}}"#,
    );
    let out = run(&["explain", POLICIES, "--request", &req, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["rule"], "batch-cost");
    assert_eq!(v["decision"]["attempts"][0]["model"], "deepseek-v3");
    let steps = v["steps"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["step"] == "rule" && s["rule"] == "realtime-chat" && s["matched"] == false));
    assert!(steps
        .iter()
        .any(|s| s["step"] == "candidate_dropped" && s["model"] == "qwen-2.5"));
    let human = stdout(&run(&["explain", POLICIES, "--request", &req]));
    assert!(
        human.contains("rule `batch-cost` (routing.yaml:"),
        "{human}"
    );
    assert!(human.contains("1. deepseek-v3@"), "{human}");
}

#[test]
fn explain_with_a_bad_request_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let req = write(dir.path(), "req.json", r#"{"request":{"modell":"gpt-4o"}}"#);
    let out = run(&["explain", POLICIES, "--request", &req]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("modell"));
}

/// Error events at w = 5% where `candidate` of `total` errors, spread evenly, came from the
/// candidate.
fn events(candidate: usize, total: usize) -> String {
    (0..total)
        .map(|i| {
            let arm = if i * candidate % total < candidate {
                "candidate"
            } else {
                "baseline"
            };
            format!("{{\"w\":0.05,\"arm\":\"{arm}\",\"error\":true}}\n")
        })
        .collect()
}

#[test]
fn canary_analyze_rolls_back_an_erroring_candidate_and_keeps_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    // 30 of 220 errors from a 5% candidate (11 expected): the reference file's clear case.
    let bad = write(dir.path(), "bad.jsonl", &events(30, 220));
    let out = run(&["canary", "analyze", &bad, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "rollback");
    let m = &v["metrics"][0];
    assert_eq!(m["metric"], "error_rate");
    assert!((m["threshold"].as_f64().unwrap() - 100f64.ln()).abs() < 1e-9);
    assert!(m["log_e"].as_f64().unwrap() > m["threshold"].as_f64().unwrap());

    // 11 of 220: exactly what a healthy 5% candidate produces.
    let fine = write(dir.path(), "fine.jsonl", &events(11, 220));
    let out = run(&["canary", "analyze", &fine, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "continue");
}

#[test]
fn canary_analyze_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"w\":0.05,\"arm\":\"candidate\",\"error\":true}\n{\"w\":2}\n",
    );
    let out = run(&["canary", "analyze", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn canary_plan_says_how_long_the_bundled_rollout_takes_at_low_traffic() {
    let out = run(&[
        "canary",
        "plan",
        POLICIES,
        "--rate",
        "100/h",
        "--base-error",
        "1%",
        "--sims",
        "8",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let plans: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let p = &plans[0];
    assert_eq!(p["canary"], "gpt-4o-2026-11");
    // 2,000 candidate requests at 5 an hour, 5,000 at 25, 10,000 at 50: 400 h + 200 h + 200 h.
    assert_eq!(p["promotion_hours"], 800.0);
    assert_eq!(p["longer_than_a_month"], true);
    for regression in ["error_rate_x2", "latency_x1_3"] {
        let d = &p[regression];
        assert!(d["median_hours"].as_f64() < Some(800.0), "{p:#}");
        assert!(d["rolled_back"].as_f64() > Some(0.8), "{p:#}");
    }
    let human = run(&["canary", "plan", POLICIES, "--rate", "100/h", "--sims", "8"]);
    let text = stdout(&human);
    assert!(text.contains("promoted after 33.3 days"), "{text}");
    assert!(
        text.contains("warning: the rollout takes longer than a month"),
        "{text}"
    );
    // A rate without a number is a usage error naming it.
    let bad = run(&["canary", "plan", POLICIES, "--rate", "fast"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`fast`"));
}

#[test]
fn canary_simulate_runs_the_bundled_rollout_on_fleets_of_one_to_eight_replicas() {
    let out = run(&[
        "canary", "simulate", "--policy", POLICIES, "--sims", "4", "--format", "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let fleets: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(fleets[0]["canary"], "gpt-4o-2026-11");
    let results = fleets[0]["results"].as_array().expect("results");
    let sizes: Vec<u64> = results
        .iter()
        .filter_map(|r| r["replicas"].as_u64())
        .collect();
    assert_eq!(sizes, vec![1, 2, 4, 8]);
    for r in results {
        assert!(r["false_rollbacks"].as_f64().is_some(), "{r:#}");
        assert!(
            r["error_rate_x2"]["median_candidate_requests"].as_u64() > Some(0),
            "{r:#}"
        );
    }
}

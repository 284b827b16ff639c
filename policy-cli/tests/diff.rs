//! `llmgw-policy diff` on a real git repository: one routing rule and one price change.

use std::path::Path;
use std::process::Command;

mod common;
use common::{git, policy_repo};

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` must occur once in {}",
        path.display()
    );
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// A decision-log line for a chat request.
fn record(
    id: &str,
    model: &str,
    workload: Option<&str>,
    tokens_in: u64,
    tokens_out: u64,
) -> String {
    let metadata =
        workload.map_or_else(|| "{}".to_owned(), |w| format!("{{\"workload\":\"{w}\"}}"));
    format!(
        r#"{{"id":"{id}","time":"2026-11-20T10:00:00Z","revision":"x","rule":"r","requested_model":"{model}","budget_action":"route","input":{{"request":{{"model":"{model}","input_tokens":{tokens_in},"max_tokens":{tokens_out},"metadata":{metadata}}}}},"tokens_in":{tokens_in},"tokens_out":{tokens_out},"cost_usd":0,"status":200}}"#
    )
}

#[test]
fn diff_counts_changed_decisions_and_the_cost_delta_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("policies");
    policy_repo(Path::new(POLICIES), &repo);
    // One routing rule: batch jobs need quality 0.9 (Claude Sonnet instead of DeepSeek V3).
    edit(
        &repo.join("routing.yaml"),
        "filter: 'm.quality >= 0.8'",
        "filter: 'm.quality >= 0.9'",
    );
    // One price: GPT-4o input drops from $2.50 to $2.00 per million tokens.
    edit(
        &repo.join("models.yaml"),
        "input_per_mtok: 2.50",
        "input_per_mtok: 2.00",
    );
    git(
        &repo,
        &[
            "commit",
            "-q",
            "-am",
            "batch needs quality 0.9; new GPT-4o price",
        ],
    );

    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(record(
            &format!("batch-{i}"),
            "gpt-4o",
            Some("batch"),
            10_000,
            1_000,
        ));
    }
    for i in 0..3 {
        lines.push(record(&format!("chat-{i}"), "gpt-4o", None, 2_000, 500));
    }
    for i in 0..2 {
        lines.push(record(
            &format!("rt-{i}"),
            "claude-sonnet",
            Some("realtime"),
            800,
            200,
        ));
    }
    let traffic = dir.path().join("traffic.jsonl");
    std::fs::write(&traffic, lines.join("\n") + "\n").unwrap();

    let out = Command::new(BIN)
        .args(["diff", "main~1", "main", "--repo"])
        .arg(&repo)
        .arg("--traffic")
        .arg(&traffic)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requests"], 9);
    assert_eq!(v["changed"], 4);
    assert_eq!(
        v["by_rule"],
        serde_json::json!({"batch-cost → batch-cost": 4})
    );
    assert_eq!(
        v["by_model"],
        serde_json::json!({"deepseek-v3 → claude-sonnet": 4})
    );
    // Batch: DeepSeek V3 (10k × 0.28 + 1k × 0.42) → Claude Sonnet (10k × 3 + 1k × 15), per 1M.
    let batch = 4.0 * ((10_000.0 * 3.0 + 1_000.0 * 15.0) - (10_000.0 * 0.28 + 1_000.0 * 0.42));
    // Chat on GPT-4o: the same decision, 2k input tokens $0.50 per 1M cheaper.
    let chat = 3.0 * (2_000.0 * (2.00 - 2.50));
    let expected = (batch + chat) / 1_000_000.0;
    let delta = v["cost_delta_usd"].as_f64().unwrap();
    assert!((delta - expected).abs() < 1e-12, "{delta} != {expected}");

    let md = Command::new(BIN)
        .args(["diff", "main~1", "main", "--repo"])
        .arg(&repo)
        .arg("--traffic")
        .arg(&traffic)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("**4 of 9 recorded requests (44.4%) change decision.**"),
        "{md}"
    );
    assert!(md.contains("| deepseek-v3 → claude-sonnet | 4 |"), "{md}");
    assert!(md.contains("+$0.1641"), "{md}");
}

#[test]
fn diff_refuses_a_head_that_does_not_lint() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("policies");
    policy_repo(Path::new(POLICIES), &repo);
    edit(
        &repo.join("routing.yaml"),
        "filter: 'm.quality >= 0.8'",
        "filter: 'm.qualty >= 0.8'",
    );
    git(&repo, &["commit", "-q", "-am", "typo"]);
    let traffic = dir.path().join("traffic.jsonl");
    std::fs::write(&traffic, "").unwrap();
    let out = Command::new(BIN)
        .args(["diff", "main~1", "main", "--repo"])
        .arg(&repo)
        .arg("--traffic")
        .arg(&traffic)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cel/unknown-field") && text.contains("routing.yaml"),
        "{text}"
    );
}

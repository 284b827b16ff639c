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
    record_of(id, model, workload, tokens_in, tokens_out, None, None)
}

/// A decision-log line for a chat request of a tenant and project.
fn record_of(
    id: &str,
    model: &str,
    workload: Option<&str>,
    tokens_in: u64,
    tokens_out: u64,
    tenant: Option<&str>,
    project: Option<&str>,
) -> String {
    let metadata =
        workload.map_or_else(|| "{}".to_owned(), |w| format!("{{\"workload\":\"{w}\"}}"));
    let mut identity = serde_json::Map::new();
    for (kind, id) in [("tenant", tenant), ("project", project)] {
        if let Some(id) = id {
            identity.insert(kind.into(), serde_json::json!({ "id": id }));
        }
    }
    let identity = serde_json::Value::Object(identity);
    format!(
        r#"{{"id":"{id}","time":"2026-11-20T10:00:00Z","revision":"x","rule":"r","requested_model":"{model}","budget_action":"route","input":{{"request":{{"model":"{model}","input_tokens":{tokens_in},"max_tokens":{tokens_out},"metadata":{metadata}}},"identity":{identity}}},"tokens_in":{tokens_in},"tokens_out":{tokens_out},"cost_usd":0,"status":200}}"#
    )
}

/// The bundled policies with a second commit on `main`: batch jobs need quality 0.9 (Claude
/// Sonnet instead of DeepSeek V3) and GPT-4o input drops from $2.50 to $2.00 a million tokens.
fn repo_with_change(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("policies");
    policy_repo(Path::new(POLICIES), &repo);
    edit(
        &repo.join("routing.yaml"),
        "filter: 'm.quality >= 0.8'",
        "filter: 'm.quality >= 0.9'",
    );
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
    repo
}

fn diff_json(repo: &Path, traffic: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["diff", "main~1", "main", "--repo"])
        .arg(repo)
        .arg("--traffic")
        .arg(traffic)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn close(v: &serde_json::Value, want: f64) {
    let got = v.as_f64().unwrap_or(f64::NAN);
    assert!((got - want).abs() < 1e-12, "{got} != {want}");
}

#[test]
fn diff_breaks_requests_and_cost_down_by_tenant_project_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_change(dir.path());
    let mut lines = Vec::new();
    for i in 0..4 {
        let id = format!("batch-{i}");
        lines.push(record_of(
            &id,
            "gpt-4o",
            Some("batch"),
            10_000,
            1_000,
            Some("acme"),
            Some("etl"),
        ));
    }
    for i in 0..3 {
        let id = format!("chat-{i}");
        lines.push(record_of(
            &id,
            "gpt-4o",
            None,
            2_000,
            500,
            Some("acme"),
            Some("chat-app"),
        ));
    }
    for i in 0..2 {
        let id = format!("rt-{i}");
        lines.push(record_of(
            &id,
            "claude-sonnet",
            Some("realtime"),
            800,
            200,
            Some("globex"),
            None,
        ));
    }
    let traffic = dir.path().join("traffic.jsonl");
    std::fs::write(&traffic, lines.join("\n") + "\n").unwrap();
    let v = diff_json(&repo, &traffic);

    let m = 1_000_000.0;
    let deepseek = 4.0 * (10_000.0 * 0.28 + 1_000.0 * 0.42) / m;
    let sonnet_batch = 4.0 * (10_000.0 * 3.0 + 1_000.0 * 15.0) / m;
    let sonnet_rt = 2.0 * (800.0 * 3.0 + 200.0 * 15.0) / m;
    let gpt_base = 3.0 * (2_000.0 * 2.50 + 500.0 * 10.0) / m;
    let gpt_head = 3.0 * (2_000.0 * 2.00 + 500.0 * 10.0) / m;

    let acme = &v["by_tenant"]["acme"];
    assert_eq!(
        (acme["requests"].as_u64(), acme["changed"].as_u64()),
        (Some(7), Some(4))
    );
    close(&acme["base_cost_usd"], deepseek + gpt_base);
    close(&acme["head_cost_usd"], sonnet_batch + gpt_head);
    close(
        &acme["cost_delta_usd"],
        sonnet_batch + gpt_head - deepseek - gpt_base,
    );
    let globex = &v["by_tenant"]["globex"];
    assert_eq!(
        (globex["requests"].as_u64(), globex["changed"].as_u64()),
        (Some(2), Some(0))
    );
    close(&globex["cost_delta_usd"], 0.0);
    assert_eq!(v["by_tenant"].as_object().unwrap().len(), 2);

    let projects = v["by_project"].as_object().unwrap();
    let keys: Vec<&str> = projects.keys().map(String::as_str).collect();
    assert_eq!(keys, ["(none)", "chat-app", "etl"]);
    assert_eq!(projects["etl"]["changed"], 4);
    assert_eq!(projects["chat-app"]["changed"], 0);
    close(&projects["chat-app"]["cost_delta_usd"], gpt_head - gpt_base);
    assert_eq!(projects["(none)"]["requests"], 2);

    let models = v["cost_by_model"].as_object().unwrap();
    let keys: Vec<&str> = models.keys().map(String::as_str).collect();
    assert_eq!(keys, ["claude-sonnet", "deepseek-v3", "gpt-4o"]);
    let row = |name: &str| &models[name];
    assert_eq!(
        (
            row("deepseek-v3")["base_requests"].as_u64(),
            row("deepseek-v3")["head_requests"].as_u64()
        ),
        (Some(4), Some(0))
    );
    close(&row("deepseek-v3")["base_cost_usd"], deepseek);
    close(&row("deepseek-v3")["cost_delta_usd"], -deepseek);
    assert_eq!(
        (
            row("claude-sonnet")["base_requests"].as_u64(),
            row("claude-sonnet")["head_requests"].as_u64()
        ),
        (Some(2), Some(6))
    );
    close(
        &row("claude-sonnet")["head_cost_usd"],
        sonnet_rt + sonnet_batch,
    );
    close(&row("claude-sonnet")["cost_delta_usd"], sonnet_batch);
    assert_eq!(
        (
            row("gpt-4o")["base_requests"].as_u64(),
            row("gpt-4o")["head_requests"].as_u64()
        ),
        (Some(3), Some(3))
    );
    close(&row("gpt-4o")["cost_delta_usd"], gpt_head - gpt_base);

    let md = Command::new(BIN)
        .args(["diff", "main~1", "main", "--repo"])
        .arg(&repo)
        .arg("--traffic")
        .arg(&traffic)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("| served model | requests before | requests after | cost before | cost after | delta |"),
        "{md}"
    );
    // Largest change first: Claude Sonnet takes the batch jobs.
    let table = md.split("| served model |").nth(1).unwrap();
    let first_row = table.lines().nth(2).unwrap();
    assert_eq!(
        first_row,
        format!(
            "| claude-sonnet | 2 | 6 | ${sonnet_rt:.4} | ${:.4} | +${sonnet_batch:.4} |",
            sonnet_rt + sonnet_batch
        )
    );
    assert!(
        md.contains(&format!(
            "| deepseek-v3 | 4 | 0 | ${deepseek:.4} | $0.0000 | −${deepseek:.4} |"
        )),
        "{md}"
    );
    assert!(
        md.contains("| by tenant | requests | changed | cost before | cost after | delta |"),
        "{md}"
    );
    assert!(md.contains("| acme | 7 | 4 |"), "{md}");
    assert!(md.contains("| globex | 2 | 0 | "), "{md}");
    assert!(md.contains("| etl | 4 | 4 |"), "{md}");
    assert!(md.contains("| (none) | 2 | 0 |"), "{md}");
}

#[test]
fn diff_counts_changed_decisions_and_the_cost_delta_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_change(dir.path());

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

//! `llmgw-policy traffic anonymise`: a decision log turned into a sample a policy repository can
//! keep, which `diff` still replays to the same verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{git, policy_repo};

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn anonymise(log: &Path, key: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["traffic", "anonymise"])
        .arg(log)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .output()
        .expect("llmgw-policy runs")
}

fn lines(o: &Output) -> Vec<serde_json::Value> {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A decision-log line of a user in a tenant and project, with labels and metadata.
fn record(i: usize) -> String {
    let user = format!("user-{}", i % 7);
    let tenant = if i.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    serde_json::json!({
        "id": format!("request-{i}"),
        "time": "2026-11-20T10:00:00Z",
        "revision": "abc",
        "rule": "realtime-chat",
        "requested_model": "gpt-4o",
        "budget_action": "route",
        "input": {
            "request": {
                "model": "gpt-4o",
                "input_tokens": 100 + i,
                "metadata": {"team": "search", "customer_email": format!("{user}@example.com"), "region": "eu"}
            },
            "identity": {
                "key": {"id": format!("gk-{}", i % 3), "labels": {"tier": "developer", "owner": "alice@example.com"}},
                "user": {"id": user},
                "project": {"id": "secret-project"},
                "tenant": {"id": tenant, "labels": {"plan": "trial"}}
            }
        },
        "tokens_in": 100 + i,
        "tokens_out": 10,
        "cost_usd": 0.001,
        "status": 200
    })
    .to_string()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    log: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn fixture(n: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("decisions.jsonl");
    let text: Vec<String> = (0..n).map(record).collect();
    std::fs::write(&log, text.join("\n") + "\n").unwrap();
    let key = tmp.path().join("traffic.key");
    std::fs::write(&key, "a secret of thirty-two bytes!!!!").unwrap();
    Fixture {
        _tmp: tmp,
        log,
        key,
    }
}

#[test]
fn ids_become_stable_tokens_and_only_allowed_values_stay() {
    let f = fixture(40);
    let out = anonymise(
        &f.log,
        &f.key,
        &["--allow-meta", "team,region", "--allow-label", "tier"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept 40 of 40 records"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for secret in [
        "request-",
        "user-3",
        "gk-1",
        "secret-project",
        "acme",
        "globex",
        "example.com",
        "customer_email",
        "owner",
        "plan",
    ] {
        assert!(!text.contains(secret), "`{secret}` survived:\n{text}");
    }
    let records = lines(&out);
    assert_eq!(records.len(), 40);
    let token = |r: &serde_json::Value, kind: &str| {
        r["input"]["identity"][kind]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The same user always maps to the same token, different users to different ones.
    let mut users: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        users.entry(i % 7).or_default().insert(token(r, "user"));
        let id = r["id"].as_str().unwrap();
        assert!(id.starts_with("req-") && id.len() == 4 + 16, "{id}");
        assert!(token(r, "tenant").starts_with("tenant-"));
        assert_eq!(
            r["input"]["request"]["metadata"],
            serde_json::json!({"team": "search", "region": "eu"})
        );
        assert_eq!(
            r["input"]["identity"]["key"]["labels"],
            serde_json::json!({"tier": "developer"})
        );
        assert_eq!(
            r["input"]["identity"]["tenant"].get("labels"),
            Some(&serde_json::json!({}))
        );
        assert_eq!(r["tokens_in"], 100 + i);
        assert_eq!(r["requested_model"], "gpt-4o");
    }
    assert!(users.values().all(|t| t.len() == 1), "{users:?}");
    let distinct: BTreeSet<&String> = users.values().flatten().collect();
    assert_eq!(distinct.len(), 7);
    let tenants: BTreeSet<String> = records.iter().map(|r| token(r, "tenant")).collect();
    assert_eq!(tenants.len(), 2);

    // The same key gives the same file; another key gives other tokens.
    let again = anonymise(
        &f.log,
        &f.key,
        &["--allow-meta", "team,region", "--allow-label", "tier"],
    );
    assert_eq!(again.stdout, out.stdout);
    let other_key = f.key.with_file_name("other.key");
    std::fs::write(&other_key, "another secret, also long enough").unwrap();
    let other = lines(&anonymise(&f.log, &other_key, &[]));
    assert_ne!(token(&other[0], "user"), token(&records[0], "user"));
}

#[test]
fn the_sample_keeps_its_rate_of_requests_the_same_ones_every_run() {
    let f = fixture(2_000);
    let all = lines(&anonymise(&f.log, &f.key, &[]));
    let out = anonymise(&f.log, &f.key, &["--sample", "0.25"]);
    let sample = lines(&out);
    assert!(
        (400..=600).contains(&sample.len()),
        "{} of 2000 kept",
        sample.len()
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("kept {} of 2000 records", sample.len())));
    let all: BTreeSet<String> = all.iter().map(ToString::to_string).collect();
    assert!(sample.iter().all(|r| all.contains(&r.to_string())));
    assert_eq!(
        anonymise(&f.log, &f.key, &["--sample", "0.25"]).stdout,
        out.stdout
    );
}

#[test]
fn ids_the_rules_name_can_be_kept() {
    let f = fixture(4);
    let records = lines(&anonymise(&f.log, &f.key, &["--keep-ids", "tenant"]));
    assert_eq!(records[0]["input"]["identity"]["tenant"]["id"], "acme");
    assert!(records[0]["input"]["identity"]["user"]["id"]
        .as_str()
        .unwrap()
        .starts_with("user-"));
    assert_ne!(records[0]["input"]["identity"]["user"]["id"], "user-0");
}

#[test]
fn a_short_key_a_bad_rate_or_a_bad_line_is_refused_with_where() {
    let f = fixture(3);
    let short = f.key.with_file_name("short.key");
    std::fs::write(&short, "hunter2").unwrap();
    let out = anonymise(&f.log, &short, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("short.key") && err.contains("at least 16"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let out = anonymise(&f.log, &f.key, &["--sample", "0"]);
    assert_eq!(out.status.code(), Some(2));

    let mut text = std::fs::read_to_string(&f.log).unwrap();
    text.push_str("{\"id\": 1}\n");
    std::fs::write(&f.log, text).unwrap();
    let out = anonymise(&f.log, &f.key, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decisions.jsonl line 4"), "{err}");
}

#[test]
fn anonymised_traffic_gives_the_same_diff_as_the_original() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("policies");
    policy_repo(&Path::new(ROOT).join("policies"), &repo);
    let routing = repo.join("routing.yaml");
    let text = std::fs::read_to_string(&routing).unwrap();
    std::fs::write(
        &routing,
        text.replace("filter: 'm.quality >= 0.8'", "filter: 'm.quality >= 0.9'"),
    )
    .unwrap();
    git(&repo, &["commit", "-q", "-am", "batch needs quality 0.9"]);
    let original = Path::new(ROOT).join("examples/traffic/sample.jsonl");
    let key = tmp.path().join("traffic.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let out = anonymise(&original, &key, &["--allow-meta", "workload"]);
    assert_eq!(out.status.code(), Some(0));
    let anonymised = tmp.path().join("sample.jsonl");
    std::fs::write(&anonymised, &out.stdout).unwrap();

    let diff = |traffic: &Path| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["diff", "main~1", "main", "--format", "json", "--repo"])
            .arg(&repo)
            .arg("--traffic")
            .arg(traffic)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, b) = (diff(&original), diff(&anonymised));
    assert!(a["changed"].as_u64().unwrap() > 0);
    for field in [
        "requests",
        "changed",
        "by_rule",
        "by_model",
        "cost_by_model",
        "base_cost_usd",
        "head_cost_usd",
    ] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(b["by_tenant"].as_object().unwrap().len(), 1);
    assert!(!b["by_tenant"].as_object().unwrap().contains_key("acme"));
}

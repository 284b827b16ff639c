//! No file can abort `llmgw-policy lint`: nesting of any depth, in any YAML form or inside a
//! CEL condition, is a located diagnostic and exit code 1.
//!
//! The files are generated at run time (the largest is a few megabytes).

use serde_json::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

const LEVELS: usize = 1_000_000;

/// Lints a copy of the bundled policies plus `attack.yaml`; returns the exit code and the
/// diagnostics of `attack.yaml`.
fn lint_with(attack: &str) -> (Option<i32>, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(POLICIES).expect("policies") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
    }
    std::fs::write(dir.path().join("attack.yaml"), attack).expect("write");
    let out = Command::new(BIN)
        .args(["lint", "--format", "json"])
        .arg(dir.path())
        .output()
        .expect("llmgw-policy runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "lint printed no JSON ({e}); exit {:?}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mine = all
        .into_iter()
        .filter(|d| d["file"] == "attack.yaml")
        .collect();
    (out.status.code(), mine)
}

/// Asserts one diagnostic `code` at `line`:`column` and exit code 1.
fn assert_rejected(attack: &str, code: &str, line: u64, column: u64) {
    let (exit, diags) = lint_with(attack);
    assert_eq!(exit, Some(1), "{diags:?}");
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d["code"], code, "{d}");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(line), Some(column)),
        "{d}"
    );
}

fn cache(body: &str) -> String {
    format!("apiVersion: llmgw.dev/v1\nkind: Cache\n{body}")
}

#[test]
fn a_million_nested_block_sequences_are_a_diagnostic() {
    let attack = cache(&format!("rules:\n  {}x\n", "- ".repeat(LEVELS)));
    // The 128th `- ` of line 4 opens level 129 (the `rules` mapping is level 1).
    assert_rejected(&attack, "yaml/too-deep", 4, 3 + 2 * 127);
}

#[test]
fn a_million_nested_flow_sequences_are_a_diagnostic() {
    let attack = cache(&format!(
        "rules: {}{}\n",
        "[".repeat(LEVELS),
        "]".repeat(LEVELS)
    ));
    let (exit, diags) = lint_with(&attack);
    assert_eq!(exit, Some(1), "{diags:?}");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0]["code"], "yaml/too-deep", "{diags:?}");
    assert_eq!(diags[0]["line"], 3, "{diags:?}");
}

#[test]
fn a_million_nested_flow_mappings_are_a_diagnostic() {
    let attack = cache(&format!(
        "rules: {}x{}\n",
        "{a: ".repeat(LEVELS),
        "}".repeat(LEVELS)
    ));
    let (exit, diags) = lint_with(&attack);
    assert_eq!(exit, Some(1), "{diags:?}");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0]["code"], "yaml/too-deep", "{diags:?}");
    assert_eq!(diags[0]["line"], 3, "{diags:?}");
}

#[test]
fn deeply_indented_block_mappings_are_a_diagnostic() {
    // Indentation grows with depth, so the file grows with its square: 3,000 levels is 4.5 MB.
    let levels = 3_000;
    let mut body = String::from("rules:\n");
    for i in 1..=levels {
        body.push_str(&" ".repeat(i));
        body.push_str("a:\n");
    }
    // `rules` is level 1; the mapping that opens level 129 starts on the 128th `a:` line.
    assert_rejected(&cache(&body), "yaml/too-deep", 3 + 128, 129);
}

#[test]
fn nesting_hidden_from_the_cel_pre_scan_is_a_diagnostic() {
    // To a scan that knows only ordinary strings, `r"\"` opens a string that never ends, so
    // the brackets after it look like text; CEL reads a raw string and 240 nested lists.
    let when = format!(r#"r"\" || {}{} == []"#, "[".repeat(240), "]".repeat(240));
    let attack = format!(
        "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: hidden\n    when: '{when}'\n"
    );
    let (exit, diags) = lint_with(&attack);
    assert_eq!(exit, Some(1), "{diags:?}");
    assert!(
        diags
            .iter()
            .any(|d| d["code"] == "cel/too-complex" && d["line"] == 5 && d["column"] == 12),
        "{diags:?}"
    );
}

//! Deep or long CEL conditions cannot abort `llmgw-policy lint` or `test`: each runs in a child
//! process, since a stack overflow aborts the process, which no test could catch in its own.
//! (Compiling such conditions in the library is tested in the engine's `lint_regressions`.)

use std::process::Command;

const PROVIDERS: &str = "\
apiVersion: llmgw.dev/v1
kind: Providers
providers:
  - name: sim
    type: simulated
";

const MODELS: &str = "\
apiVersion: llmgw.dev/v1
kind: Models
models:
  - name: big
    class: frontier
    quality: 0.9
    context_window: 128000
    price: {input_per_mtok: 2.5, output_per_mtok: 10}
    deployments:
      - provider: sim
        upstream_model: big-1
  - name: small
    class: fast
    quality: 0.7
    context_window: 64000
    price: {input_per_mtok: 0.2, output_per_mtok: 0.6}
    deployments:
      - provider: sim
        upstream_model: small-1
";

/// A repository of [`PROVIDERS`] and [`MODELS`] with a routing rule whose `when` is `when`, its
/// first rule, and a policy test that goes through it.
fn repo_with_when(when: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let routing = format!(
        "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: deep\n    when: '{when}'\n    \
         candidates: [small]\n"
    );
    let tests =
        "apiVersion: llmgw.dev/v1\nkind: PolicyTests\ntests:\n  - name: a request for big\n    \
                 request: {model: big}\n    expect: {model: small}\n";
    for (path, text) in [
        ("providers.yaml", PROVIDERS),
        ("models.yaml", MODELS),
        ("routing.yaml", &routing),
        ("tests.yaml", tests),
    ] {
        std::fs::write(dir.path().join(path), text).expect("write");
    }
    dir
}

/// Runs `llmgw-policy <command>` on such a repository in a child process: a stack overflow
/// aborts the process, which no test could catch in its own.
fn policy_with_when(command: &str, when: &str) -> std::process::Output {
    let dir = repo_with_when(when);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmgw-policy"));
    cmd.arg(command).arg(dir.path());
    if command == "lint" {
        cmd.args(["--format", "json"]);
    }
    cmd.output().expect("run llmgw-policy")
}

/// The codes `lint` reports for a `when`, after checking that it finished.
fn lint_codes(when: &str) -> Vec<String> {
    let out = policy_with_when("lint", when);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "lint died ({:?}) on a `when` of {} characters: {}",
        out.status,
        when.len(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let found: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("lint --format json prints JSON");
    found
        .iter()
        .map(|d| d["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn chain(terms: usize) -> String {
    vec!["1"; terms].join(" + ") + " > 0"
}

fn parenthesised(depth: usize) -> String {
    format!("{}true{}", "(".repeat(depth), ")".repeat(depth))
}

#[test]
fn conditions_up_to_the_limits_lint_clean() {
    // 24 levels of brackets, a syntax tree 32 deep (31 chained additions), 4,096 characters.
    assert_eq!(lint_codes(&parenthesised(24)), Vec::<String>::new());
    assert_eq!(lint_codes(&chain(31)), Vec::<String>::new());
    let long = format!(
        "request.model in [{}]",
        (0..455)
            .map(|i| format!("\"m{i:03}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(long.chars().count() <= 4096, "{}", long.len());
    assert_eq!(lint_codes(&long), Vec::<String>::new());
}

/// The checker recursed once per syntax-tree level with no limit: a `when` of 20,000 chained
/// additions overflowed the stack and aborted lint, in release builds too.
#[test]
fn a_long_chain_of_additions_is_too_complex_and_does_not_crash_lint() {
    for terms in [32, 300, 1_000, 20_000] {
        assert_eq!(
            lint_codes(&chain(terms)),
            ["cel/too-complex"],
            "{terms} terms"
        );
    }
}

/// In debug builds the CEL parser needs about 150 KiB of stack per parenthesis: 60 levels
/// aborted lint on an 8 MiB stack, 12 on a 2 MiB thread.
#[test]
fn deeply_parenthesised_conditions_are_too_complex_and_do_not_crash_lint() {
    for depth in [25, 60, 90, 200, 5_000] {
        assert_eq!(
            lint_codes(&parenthesised(depth)),
            ["cel/too-complex"],
            "{depth} levels"
        );
    }
    // Unbalanced brackets count too.
    assert_eq!(lint_codes(&"(".repeat(100)), ["cel/too-complex"]);
    assert_eq!(lint_codes(&"[".repeat(100)), ["cel/too-complex"]);
}

#[test]
/// Evaluation recurses like compilation: in debug builds 255 chained additions, which linted
/// clean, overflowed the main thread in `llmgw-policy test`. The depth limit bounds both.
fn a_condition_that_lints_clean_evaluates_without_crashing() {
    let when = chain(31);
    assert_eq!(lint_codes(&when), Vec::<String>::new());
    let out = policy_with_when("test", &when);
    assert_eq!(
        out.status.code(),
        Some(0),
        "llmgw-policy test died ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    );
}

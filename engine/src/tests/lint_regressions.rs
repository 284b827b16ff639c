//! Regression tests for defects of the engine found with the lint corpus and the property
//! tests, each with the neighbouring behaviour that was already right.
//!
//! A defect still open is a test marked `#[ignore]` with the reason; run those with
//! `cargo test -p llmgw-engine --lib tests::lint_regressions -- --ignored`, and drop the `#[ignore]`
//! once the defect is fixed.

use crate::celenv::Site;
use crate::diag::Diagnostic;
use crate::expr::CompiledExpr;
use crate::load::{load_files, LoadOutcome};
use crate::policy::Location;
use crate::source::policy_files;

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
      - name: big-2@sim
        provider: sim
        upstream_model: big-2
        canary_only: true
  - name: small
    class: fast
    quality: 0.7
    context_window: 64000
    price: {input_per_mtok: 0.2, output_per_mtok: 0.6}
    deployments:
      - provider: sim
        upstream_model: small-1
      - name: small-2@sim
        provider: sim
        upstream_model: small-2
        canary_only: true
";

/// Providers and models, plus `files` (which may replace them).
fn repo(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = vec![
        ("providers.yaml".into(), PROVIDERS.into()),
        ("models.yaml".into(), MODELS.into()),
    ];
    for (path, text) in files {
        all.retain(|(p, _)| p != path);
        all.push(((*path).to_owned(), text.as_bytes().to_vec()));
    }
    all
}

fn lint(files: &[(&str, &str)]) -> LoadOutcome {
    load_files(&policy_files(repo(files)), None)
}

fn errors(outcome: &LoadOutcome) -> Vec<&Diagnostic> {
    outcome
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect()
}

fn show(diags: &[&Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}\n")).collect()
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` is not in the text"))
        + 1
}

fn compile_errors(text: &str) -> Vec<(&'static str, usize)> {
    match CompiledExpr::compile(text, Site::When, Location::default()) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.into_iter().map(|e| (e.code, e.offset)).collect(),
    }
}

// --- columns of CEL errors ----------------------------------------------------------------------

#[test]
fn check_error_offsets_point_at_the_offending_node() {
    assert_eq!(
        compile_errors(r#"reqest.model == "x""#),
        [("cel/unknown-variable", 0)]
    );
    assert_eq!(
        compile_errors(r#"request.model == "x" && reqest.model == "y""#),
        [("cel/unknown-variable", 24)]
    );
}

/// cel 0.15 reports parse errors with 1-based columns; they were read as 0-based, which put
/// every cel/syntax column one too far right.
#[test]
fn syntax_error_offsets_point_at_the_offending_token() {
    assert_eq!(compile_errors(")"), [("cel/syntax", 0)]);
    assert_eq!(compile_errors("a b"), [("cel/syntax", 2)]);
    assert_eq!(
        compile_errors(r#"request.model == "x" )"#),
        [("cel/syntax", 21)]
    );
}

/// Checker offsets come from cel's source info, which counts bytes; they were used as
/// character offsets, so after non-ASCII text a column was too far right.
#[test]
fn check_error_offsets_count_characters_not_bytes() {
    // `reqest` starts at character 16 (byte 22).
    assert_eq!(
        compile_errors(r#""日本語" == "x" && reqest.model == "y""#),
        [("cel/unknown-variable", 16)]
    );
}

// --- macros -----------------------------------------------------------------------------------

/// cel expands `all` and `exists` into a loop over the internal `@not_strictly_false`, which
/// the checker used to reject as an unknown function.
#[test]
fn the_all_and_exists_macros_compile() {
    for text in [
        r#"request.metadata.exists(k, k == "workload")"#,
        r#"[1, 2, 3].all(x, x < request.max_tokens)"#,
        r#"key.labels.all(k, k.startsWith("team-"))"#,
    ] {
        assert_eq!(compile_errors(text), [], "{text}");
    }
}

#[test]
fn the_other_comprehension_macros_compile() {
    for text in [
        r#"request.metadata.exists_one(k, k == "workload")"#,
        r#"size([1, 2, 3].filter(x, x < request.max_tokens)) > 1"#,
        r#"size([1, 2].map(x, x * 2)) == 2"#,
        r#"has(request.model)"#,
    ] {
        assert_eq!(compile_errors(text), [], "{text}");
    }
}

// --- secrets ----------------------------------------------------------------------------------

/// Schema errors quote the offending value: an API key in `api_key` was redacted by
/// secret/literal but printed whole by schema/pattern, into CI logs.
#[test]
fn no_diagnostic_repeats_a_secret() {
    for secret in [
        "sk-proj-4fJ9qL2mX8vR1tY6wE3uI0oP5aS7dG2h",
        "7Hq2Zx9Lm4Pw8Rt3Nv6Bk1Yc5Jd0Fs2Gh8Ka",
    ] {
        let providers =
            format!("{PROVIDERS}  - name: openai\n    type: openai\n    api_key: {secret}\n");
        let outcome = lint(&[("providers.yaml", &providers)]);
        let codes: Vec<&str> = outcome.diagnostics.iter().map(|d| d.code).collect();
        assert!(codes.contains(&"secret/literal"), "{codes:?}");
        for d in &outcome.diagnostics {
            let text = format!("{} {}", d.message, d.help.as_deref().unwrap_or_default());
            assert!(
                !text.contains(secret),
                "{} repeats the secret: {text}",
                d.code
            );
            // Not even a long part of it.
            assert!(
                !text.contains(&secret[..16]),
                "{} repeats the secret: {text}",
                d.code
            );
        }
    }
}

/// A reviewed false positive is silenced by a marker naming the rule, on its own line only.
#[test]
fn a_marker_silences_one_line_of_secret_literal() {
    let token = "9f8e7d6c5b4a39281706f5e4d3c2b1a0Zq8Xw7Vu6T";
    let silenced = format!(
        "{PROVIDERS}  - name: openai\n    type: openai\n    api_key: env:OPENAI_API_KEY\n    # build id {token} # llmgw-lint: allow secret/literal\n"
    );
    assert_eq!(show(&errors(&lint(&[("providers.yaml", &silenced)]))), "");
    let other_line = format!(
        "{PROVIDERS}  - name: openai\n    type: openai\n    # llmgw-lint: allow secret/literal\n    # build id {token}\n    api_key: env:OPENAI_API_KEY\n"
    );
    let outcome = lint(&[("providers.yaml", &other_line)]);
    let codes: Vec<&str> = errors(&outcome).iter().map(|d| d.code).collect();
    assert_eq!(codes, ["secret/literal"]);
}

// --- shadowed rules ---------------------------------------------------------------------------

/// A rule whose `when` failed to compile was treated as unconditional, so every later rule was
/// reported as rule/shadowed.
#[test]
fn a_condition_that_does_not_compile_shadows_no_rule() {
    let routing = "\
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: typo
    when: 'reqest.model == \"big\"'
    candidates: [small]
  - name: small-only
    when: 'request.model == \"small\"'
    candidates: [small]
";
    let outcome = lint(&[("routing.yaml", routing)]);
    let errs = errors(&outcome);
    let codes: Vec<&str> = errs.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["cel/unknown-variable"], "\n{}", show(&errs));
}

#[test]
fn an_unconditional_rule_shadows_the_rules_below() {
    let routing = "\
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: everything
    candidates: [small]
  - name: small-only
    when: 'request.model == \"small\"'
    candidates: [small]
";
    let outcome = lint(&[("routing.yaml", routing)]);
    let errs = errors(&outcome);
    let codes: Vec<&str> = errs.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["rule/shadowed"], "\n{}", show(&errs));
}

// --- locations --------------------------------------------------------------------------------

/// JSON pointers were built without escaping `/` as `~1`: a weight for a model name with a
/// slash was reported at 1:1.
#[test]
fn a_weight_for_a_model_with_a_slash_is_located() {
    let routing = "\
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: split
    when: 'request.model == \"small\"'
    candidates: [big, small]
    strategy: weighted
    weights:
      big: 1
      small: 1
      acme/small: 1
";
    let outcome = lint(&[("routing.yaml", routing)]);
    let errs = errors(&outcome);
    assert_eq!(errs.len(), 1, "\n{}", show(&errs));
    assert_eq!(errs[0].code, "rule/weight-not-candidate");
    let loc = errs[0].location.as_ref().expect("a location");
    assert_eq!(
        loc.line,
        line_of(routing, "acme/small"),
        "\n{}",
        show(&errs)
    );
}

/// `8000.0` or `1e3` passed the schema's `integer` but failed serde's u64, which was reported
/// as schema/invalid at the document's first line instead of the field.
#[test]
fn an_integer_written_as_a_float_is_accepted_or_located() {
    for value in ["8000.0", "1e3", "99999999999999999999"] {
        let models = format!(
            "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: tiny\n    class: fast\n    \
             quality: 0.5\n    context_window: {value}\n    \
             price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}\n    \
             deployments: [{{provider: sim, upstream_model: tiny-1}}]\n"
        );
        let outcome = lint(&[("team/models.yaml", &models)]);
        let errs = errors(&outcome);
        for d in &errs {
            let loc = d.location.as_ref().map(|l| (&*l.file, l.line));
            assert_eq!(
                loc,
                Some(("team/models.yaml", 7)),
                "`context_window: {value}`:\n{}",
                show(&errs)
            );
        }
    }
}

// --- canaries ---------------------------------------------------------------------------------

/// Canary names key persisted rollout state and the x-llmgw-canary header, but a repeated name
/// was not reported.
#[test]
fn canary_names_are_unique() {
    let canaries = "\
apiVersion: llmgw.dev/v1
kind: Canaries
canaries:
  - name: next
    model: big
    baseline: big@sim
    candidate: big-2@sim
    rollout:
      steps: [{weight_percent: 5, min_requests: 100, min_duration_secs: 60}]
  - name: next
    model: small
    baseline: small@sim
    candidate: small-2@sim
    rollout:
      steps: [{weight_percent: 5, min_requests: 100, min_duration_secs: 60}]
";
    let outcome = lint(&[("canaries.yaml", canaries)]);
    let errs = errors(&outcome);
    assert_eq!(errs.len(), 1, "\n{}", show(&errs));
    let loc = errs[0].location.as_ref().expect("a location");
    assert_eq!(loc.line, 10, "\n{}", show(&errs));
}

// --- deep expressions (lint and test on them, in a child process: policy-cli/tests/deep_conditions.rs)

fn chain(terms: usize) -> String {
    vec!["1"; terms].join(" + ") + " > 0"
}

fn parenthesised(depth: usize) -> String {
    format!("{}true{}", "(".repeat(depth), ")".repeat(depth))
}

#[test]
fn compiling_conditions_at_the_limits_fits_a_small_stack() {
    // Test threads have 2 MiB of stack, like the gateway's worker threads.
    for text in [chain(31), parenthesised(24), "!".repeat(4000) + "true"] {
        let errs = compile_errors(&text);
        assert!(
            errs.iter().all(|(code, _)| *code == "cel/too-complex"),
            "{errs:?}"
        );
    }
}

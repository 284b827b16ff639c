//! The bundled policy repository lints clean and passes its own tests, scenario by scenario.

use llmgw_engine::{load_files, testing};

mod common;

#[test]
fn bundled_policies_lint_clean_and_pass_every_case() {
    let outcome = load_files(&common::bundled_files(), None);
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let policy = outcome.policy.as_ref().expect("compiles");
    let results = testing::run(policy, &outcome.tests);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    for scenario in [
        "latency",
        "batch",
        "capabilities",
        "failover",
        "budgets",
        "downgrades",
        "canary",
        "cache",
    ] {
        let file = format!("tests/{scenario}.yaml");
        let cases = results.iter().filter(|r| *r.location.file == *file).count();
        assert!(cases >= 1, "no policy test covers {scenario}");
    }
}

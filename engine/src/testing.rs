//! Policy unit tests: run each case of a repository's `PolicyTests` through `decide`.

use crate::decision::Decision;
use crate::load::TestCase;
use crate::policy::{CompiledPolicy, Location};
use serde::Serialize;

/// One field that differs from the expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// The field (`model`, `rule`, …).
    pub field: &'static str,
    /// What the test expects.
    pub expected: String,
    /// What the decision says.
    pub actual: String,
    /// What the decision says as an expectation writes it (a string, a number or a list of
    /// deployments): what `llmgw-policy test --update` writes.
    #[serde(skip)]
    pub actual_value: serde_json::Value,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Where it is written.
    pub location: Location,
    /// Its position in its file's `tests` list.
    pub index: usize,
    /// The fields that differ; empty when it passed.
    pub mismatches: Vec<Mismatch>,
    /// A decision error, when the engine could not decide.
    pub error: Option<String>,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.error.is_none()
    }
}

/// Runs every case.
pub fn run(policy: &CompiledPolicy, cases: &[TestCase]) -> Vec<CaseResult> {
    cases.iter().map(|case| run_one(policy, case)).collect()
}

fn run_one(policy: &CompiledPolicy, case: &TestCase) -> CaseResult {
    let input = &case.test.input;
    let mut result = CaseResult {
        name: case.test.name.clone(),
        location: case.location.clone(),
        index: case.index,
        mismatches: Vec::new(),
        error: None,
    };
    match policy.decide(&input.context(), input, input) {
        Ok(decision) => result.mismatches = compare(&case.test.expect, &decision),
        Err(e) => {
            if case.test.expect.action.as_deref() == Some("error") {
                return result;
            }
            result.error = Some(e.to_string());
        }
    }
    result
}

/// The fields of a decision that differ from an expectation.
pub fn compare(expect: &crate::model::Expectation, d: &Decision) -> Vec<Mismatch> {
    let primary = d.primary();
    let actual_model = primary.map_or_else(|| d.model.to_string(), |a| a.model.to_string());
    let shown = |o: Option<String>| o.unwrap_or_else(|| "(none)".to_owned());
    let checks: [(&'static str, &Option<String>, String); 8] = [
        (
            "action",
            &expect.action,
            d.budget_action.as_str().to_owned(),
        ),
        ("model", &expect.model, actual_model),
        (
            "provider",
            &expect.provider,
            shown(primary.map(|a| a.provider.to_string())),
        ),
        (
            "deployment",
            &expect.deployment,
            shown(primary.map(|a| a.deployment.to_string())),
        ),
        ("rule", &expect.rule, d.rule.to_string()),
        (
            "downgraded_from",
            &expect.downgraded_from,
            shown(d.downgrade.as_ref().map(|g| g.from.to_string())),
        ),
        (
            "budget",
            &expect.budget,
            shown(d.budget.as_ref().map(|b| b.to_string())),
        ),
        (
            "canary_arm",
            &expect.canary_arm,
            shown(d.canary.as_ref().map(|c| c.arm.as_str().to_owned())),
        ),
    ];
    let mut out: Vec<Mismatch> = checks
        .into_iter()
        .filter_map(|(field, want, got)| match want {
            Some(w) if *w != got => Some(Mismatch {
                field,
                expected: w.clone(),
                actual_value: got.clone().into(),
                actual: got,
            }),
            _ => None,
        })
        .collect();
    if let Some(want) = expect.cache_ttl_secs.filter(|w| *w != d.cache_ttl_secs) {
        out.push(Mismatch {
            field: "cache_ttl_secs",
            expected: want.to_string(),
            actual: d.cache_ttl_secs.to_string(),
            actual_value: d.cache_ttl_secs.into(),
        });
    }
    if let Some(want) = &expect.rate_limits {
        let mut got: Vec<String> = Vec::new();
        for c in &d.rate_charges {
            if !got.iter().any(|g| **g == *c.rule) {
                got.push(c.rule.to_string());
            }
        }
        if *want != got {
            out.push(Mismatch {
                field: "rate_limits",
                expected: want.join(", "),
                actual: got.join(", "),
                actual_value: got.into(),
            });
        }
    }
    if let Some(want) = &expect.attempts {
        let got: Vec<String> = d
            .attempts
            .iter()
            .map(|a| a.deployment.to_string())
            .collect();
        if *want != got {
            out.push(Mismatch {
                field: "attempts",
                expected: want.join(", "),
                actual: got.join(", "),
                actual_value: got.into(),
            });
        }
    }
    out
}

//! `llmgw-policy test`: run the repository's policy tests, pick cases by name, report them for
//! a person, a program or a CI system, and rewrite the expectations of failing cases.

use crate::junit;
use llmgw_engine::load::LoadOutcome;
use llmgw_engine::source::PolicyFile;
use llmgw_engine::testing::{self, CaseResult};
use llmgw_engine::update::{update_expectations, Fix};
use std::collections::BTreeMap;
use std::path::Path;

/// Formats of `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    /// A line a case, a diff for failures, and the count.
    Human,
    /// One JSON object: counts and every case with its mismatches.
    Json,
    /// JUnit XML for a CI system's test report.
    Junit,
}

/// Which cases run: all, or those whose name matches one of the patterns. A pattern with `*`
/// or `?` is a glob on the whole name; any other is a substring of it.
pub struct Filter(Vec<String>);

impl Filter {
    /// A filter of patterns; none selects every case.
    pub fn new(patterns: Vec<String>) -> Self {
        Filter(patterns)
    }

    /// Whether a case of this name runs.
    pub fn selects(&self, name: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| {
                if p.contains(['*', '?']) {
                    wildmatch::WildMatch::new(p).matches(name)
                } else {
                    name.contains(p.as_str())
                }
            })
    }
}

/// Runs the selected cases of a compiled repository.
pub fn run(outcome: &LoadOutcome, filter: &Filter) -> Vec<CaseResult> {
    let Some(policy) = &outcome.policy else {
        return Vec::new();
    };
    let cases: Vec<_> = outcome
        .tests
        .iter()
        .filter(|c| filter.selects(&c.test.name))
        .cloned()
        .collect();
    testing::run(policy, &cases)
}

/// A file `--update` rewrote, or could not.
pub struct Updated {
    /// The file, relative to the repository.
    pub file: String,
    /// How many cases it rewrote.
    pub cases: usize,
    /// Why it could not, if it could not.
    pub error: Option<String>,
}

/// Rewrites, file by file, the expectations of the cases that failed on a mismatch (a case
/// whose decision failed has nothing to write). Nothing is written to a file whose rewrite
/// fails.
pub fn update(dir: &Path, files: &[PolicyFile], results: &[CaseResult]) -> Vec<Updated> {
    let mut by_file: BTreeMap<&str, Vec<Fix<'_>>> = BTreeMap::new();
    for r in results {
        if r.error.is_none() && !r.mismatches.is_empty() {
            by_file
                .entry(&r.location.file)
                .or_default()
                .push((r.index, &r.mismatches));
        }
    }
    by_file
        .into_iter()
        .map(|(file, fixes)| {
            let error = rewrite(dir, files, file, &fixes).err();
            Updated {
                file: file.to_owned(),
                cases: fixes.len(),
                error,
            }
        })
        .collect()
}

fn rewrite(dir: &Path, files: &[PolicyFile], file: &str, fixes: &[Fix<'_>]) -> Result<(), String> {
    let source = files
        .iter()
        .find(|f| f.path == file)
        .ok_or_else(|| "not among the files read".to_owned())?;
    let text = std::str::from_utf8(&source.bytes).map_err(|e| e.to_string())?;
    let new = update_expectations(text, fixes).map_err(|e| e.to_string())?;
    let path = dir.join(file);
    std::fs::write(&path, new).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The report of a run in a format.
pub fn report(results: &[CaseResult], skipped: usize, format: TestFormat) -> String {
    let failed = results.iter().filter(|r| !r.passed()).count();
    match format {
        TestFormat::Junit => junit::report(results),
        TestFormat::Json => {
            let out = serde_json::json!({
                "passed": results.len() - failed,
                "failed": failed,
                "filtered_out": skipped,
                "cases": results.iter().map(|r| serde_json::json!({
                    "name": r.name,
                    "file": r.location.file,
                    "line": r.location.line,
                    "column": r.location.column,
                    "passed": r.passed(),
                    "mismatches": r.mismatches,
                    "error": r.error,
                })).collect::<Vec<_>>(),
            });
            serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
        }
        TestFormat::Human => {
            let mut out = String::new();
            for r in results {
                if r.passed() {
                    out.push_str(&format!("ok   {} ({})\n", r.name, r.location));
                    continue;
                }
                out.push_str(&format!("FAIL {} ({})\n", r.name, r.location));
                if let Some(e) = &r.error {
                    out.push_str(&format!("     error: {e}\n"));
                }
                for m in &r.mismatches {
                    out.push_str(&format!(
                        "     {}:\n       - expected: {}\n       + actual:   {}\n",
                        m.field, m.expected, m.actual
                    ));
                }
            }
            let filtered = if skipped > 0 {
                format!(", {skipped} filtered out")
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{} passed, {failed} failed{filtered}\n",
                results.len() - failed
            ));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn a_plain_pattern_is_a_substring_and_a_glob_matches_the_whole_name() {
        let f = Filter::new(vec!["batch".into()]);
        assert!(f.selects("long batch document"));
        assert!(!f.selects("realtime chat"));
        let g = Filter::new(vec!["batch*".into(), "*chat".into()]);
        assert!(g.selects("batch jobs"));
        assert!(g.selects("realtime chat"));
        assert!(!g.selects("long batch document"));
        assert!(Filter::new(Vec::new()).selects("anything"));
    }
}

//! Policy test results as JUnit XML, the report format CI systems (GitHub Actions reporters,
//! GitLab, Jenkins) show per case: one `testsuite` per test file, one `testcase` per case, a
//! `failure` with the file:line of the case and what differed.

use llmgw_engine::testing::CaseResult;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The report of a run.
pub fn report(results: &[CaseResult]) -> String {
    let mut by_file: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        by_file.entry(&r.location.file).or_default().push(r);
    }
    let failed = |cases: &[&CaseResult]| cases.iter().filter(|r| !r.passed()).count();
    let all: Vec<&CaseResult> = results.iter().collect();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"llmgw-policy test\" tests=\"{}\" failures=\"{}\" errors=\"0\">",
        all.len(),
        failed(&all)
    );
    for (file, cases) in &by_file {
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">",
            escape(file),
            cases.len(),
            failed(cases)
        );
        for r in cases {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\"",
                escape(&r.name),
                escape(file),
                escape(file),
                r.location.line
            );
            if r.passed() {
                out.push_str("/>\n");
                continue;
            }
            let (kind, message) = match &r.error {
                Some(e) => ("error", format!("no decision: {e}")),
                None => (
                    "mismatch",
                    r.mismatches
                        .iter()
                        .map(|m| format!("{}: expected {}, got {}", m.field, m.expected, m.actual))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            };
            let _ = write!(
                out,
                ">\n      <failure type=\"{kind}\" message=\"{}\">{}: {}</failure>\n    </testcase>\n",
                escape(&message),
                r.location,
                escape(&message)
            );
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// Text escaped for an XML attribute or element; characters XML 1.0 cannot hold at all
/// (most control characters) become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c if c < ' ' || matches!(c, '\u{FFFE}' | '\u{FFFF}') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_and_control_characters_cannot_break_the_document() {
        assert_eq!(
            escape("a<b>&\"c'\n\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{FFFD}"
        );
    }
}

//! Diagnostics for machines: the JSON shape `llmgw-policy lint --format json` prints and the
//! gateway's admin API returns. Reports for people are the CLI's.

use crate::diag::Diagnostic;
use serde::Serialize;

/// A diagnostic as lint's JSON output writes it.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    /// File path, or null.
    pub file: Option<&'a str>,
    /// Line, 1-based.
    pub line: Option<usize>,
    /// Column, 1-based.
    pub column: Option<usize>,
    /// `error` or `warning`.
    pub severity: &'static str,
    /// Stable code.
    pub code: &'static str,
    /// What is wrong.
    pub message: &'a str,
    /// How to fix it.
    pub help: Option<&'a str>,
}

/// The JSON form of a diagnostic.
pub fn json(d: &Diagnostic) -> JsonDiagnostic<'_> {
    JsonDiagnostic {
        file: d.location.as_ref().map(|l| &*l.file),
        line: d.location.as_ref().map(|l| l.line),
        column: d.location.as_ref().map(|l| l.column),
        severity: d.severity.as_str(),
        code: d.code,
        message: &d.message,
        help: d.help.as_deref(),
    }
}

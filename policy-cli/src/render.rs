//! Lint's reports: human (miette, with source and caret), JSON (the engine's shape), and GitHub
//! workflow commands.

use llmgw_engine::diag::{Diagnostic, Severity};
use llmgw_engine::render::{json, JsonDiagnostic};
use llmgw_engine::source::PolicyFile;
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};

/// The longest source line a human report quotes; a longer one (a minified or generated file,
/// a hostile one nested a million levels deep) is named by its position only.
const MAX_QUOTED_LINE: usize = 400;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    Human,
    /// A JSON array.
    Json,
    /// GitHub Actions workflow commands.
    Github,
}

/// Renders diagnostics in a format.
pub fn diagnostics(diags: &[Diagnostic], files: &[PolicyFile], format: Format) -> String {
    match format {
        Format::Json => {
            let items: Vec<JsonDiagnostic> = diags.iter().map(json).collect();
            serde_json::to_string_pretty(&items).unwrap_or_default() + "\n"
        }
        Format::Github => diags.iter().map(github).collect(),
        Format::Human => diags.iter().map(|d| human(d, files)).collect(),
    }
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A GitHub workflow command (`::error file=…,line=…,col=…::message`).
fn github(d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut props = vec![format!("title={}", escape_property(d.code))];
    if let Some(l) = &d.location {
        props.insert(
            0,
            format!(
                "file={},line={},col={}",
                escape_property(&l.file),
                l.line,
                l.column
            ),
        );
    }
    let mut message = format!("[{}] {}", d.code, d.message);
    if let Some(help) = &d.help {
        message.push_str(&format!(" (help: {help})"));
    }
    format!("::{level} {}::{}\n", props.join(","), escape_data(&message))
}

/// Byte offset of a 1-based line and character column in `text`.
fn offset(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col: usize = l
                .chars()
                .take(column.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return (start + col).min(text.len());
        }
        start += l.len();
    }
    text.len()
}

/// A human report: the source line with a caret, a label and a help line (miette).
fn human(d: &Diagnostic, files: &[PolicyFile]) -> String {
    let mut diag = MietteDiagnostic::new(d.message.clone()).with_code(d.code);
    diag = match d.severity {
        Severity::Error => diag.with_severity(miette::Severity::Error),
        Severity::Warning => diag.with_severity(miette::Severity::Warning),
    };
    if let Some(help) = &d.help {
        diag = diag.with_help(help.clone());
    }
    let source = d.location.as_ref().and_then(|l| {
        let file = files.iter().find(|f| *f.path == *l.file)?;
        let text = String::from_utf8_lossy(&file.bytes).into_owned();
        let quoted = text
            .lines()
            .nth(l.line.saturating_sub(1))
            .unwrap_or_default();
        (quoted.len() <= MAX_QUOTED_LINE).then_some((l, text))
    });
    let report = match source {
        Some((l, text)) => {
            let at = offset(&text, l.line, l.column);
            let len = d.len.min(text.len() - at).max(usize::from(at < text.len()));
            diag = diag.with_label(LabeledSpan::at(at..at + len, d.code));
            miette::Report::new(diag).with_source_code(NamedSource::new(&*l.file, text))
        }
        None => miette::Report::new(diag),
    };
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
    if handler.render_report(&mut out, report.as_ref()).is_err() {
        out = format!("{d}\n");
    }
    if let Some(l) = &d.location {
        out.push_str(&format!("  at {l}\n"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::{human, MAX_QUOTED_LINE};
    use llmgw_engine::diag::{at, Diagnostic};
    use llmgw_engine::source::PolicyFile;

    fn report(line: &str) -> String {
        let file = PolicyFile {
            path: "deep.yaml".into(),
            bytes: format!("kind: Cache\nrules: {line}\n").into_bytes(),
        };
        let d = Diagnostic::error(
            "yaml/too-deep",
            "too deep",
            Some(at(&"deep.yaml".into(), 2, 8)),
        );
        human(&d, &[file])
    }

    #[test]
    fn quotes_ordinary_lines_and_names_only_the_position_of_huge_ones() {
        assert!(report("[[x]]").contains("rules: [[x]]"));
        let huge = "[".repeat(1_000_000);
        let out = report(&huge);
        assert!(out.len() < 2 * MAX_QUOTED_LINE, "{} bytes", out.len());
        assert!(out.contains("at deep.yaml:2:8"), "{out}");
        assert!(out.contains("too deep"), "{out}");
    }
}

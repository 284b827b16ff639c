//! `llmgw-policy test --update`: rewrite the expectations of failing cases in a test file.
//!
//! Only the source text of the values that change is edited, at the positions the parser
//! reports, so comments, key order, quoting and indentation stay as they were written: the
//! result reads like a hand edit and reviews like one.

use crate::testing::Mismatch;
use crate::yaml::{self, Node, Value};
use std::ops::Range;

/// Why a file could not be rewritten; names the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct UpdateError {
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl UpdateError {
    fn at(node: &Node, message: impl Into<String>) -> Self {
        UpdateError {
            line: node.line,
            column: node.column,
            message: message.into(),
        }
    }
}

/// The expectations to rewrite in one file: a case's index in the file's `tests` list and the
/// fields it got wrong.
pub type Fix<'a> = (usize, &'a [Mismatch]);

/// One replacement, in bytes of the file's text.
struct Edit {
    range: Range<usize>,
    text: String,
}

/// The file's text with every mismatched expectation set to the actual value.
pub fn update_expectations(text: &str, fixes: &[Fix<'_>]) -> Result<String, UpdateError> {
    let root = yaml::parse(text).map_err(|e| UpdateError {
        line: e.line,
        column: e.column,
        message: e.message,
    })?;
    let source = Source::new(text);
    let mut edits = Vec::new();
    for (index, mismatches) in fixes {
        for m in mismatches.iter() {
            let pointer = format!("/tests/{index}/expect/{}", m.field);
            let node = root
                .pointer(&pointer)
                .ok_or_else(|| UpdateError::at(&root, format!("no `{pointer}` to rewrite")))?;
            source.edits(node, &m.actual_value, &mut edits)?;
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.range.start));
    let mut out = text.to_owned();
    let mut limit = text.len();
    for edit in edits {
        // Two edits of one span would mean the same field listed twice: keep the later one.
        if edit.range.end > limit {
            continue;
        }
        limit = edit.range.start;
        out.replace_range(edit.range, &edit.text);
    }
    verify(&out, fixes)?;
    Ok(out)
}

/// Checks the rewritten text says what was meant, so a rewrite never leaves a file broken or
/// subtly different.
fn verify(text: &str, fixes: &[Fix<'_>]) -> Result<(), UpdateError> {
    let root = yaml::parse(text).map_err(|e| UpdateError {
        line: e.line,
        column: e.column,
        message: format!("the rewritten file does not parse: {}", e.message),
    })?;
    for (index, mismatches) in fixes {
        for m in mismatches.iter() {
            let pointer = format!("/tests/{index}/expect/{}", m.field);
            let got = root.pointer(&pointer).map(Node::to_json);
            if got.as_ref() != Some(&m.actual_value) {
                return Err(UpdateError::at(
                    &root,
                    format!(
                        "rewriting `{pointer}` gave {} instead of {}",
                        got.unwrap_or_default(),
                        m.actual_value
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// How a scalar was written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
}

/// The file's text with character positions mapped to bytes.
struct Source<'t> {
    text: &'t str,
    /// Byte offset of each character, and of the end.
    bytes: Vec<usize>,
}

impl<'t> Source<'t> {
    fn new(text: &'t str) -> Self {
        let bytes = text
            .char_indices()
            .map(|(b, _)| b)
            .chain([text.len()])
            .collect();
        Source { text, bytes }
    }

    fn byte_range(&self, node: &Node) -> Range<usize> {
        let at = |c: usize| self.bytes.get(c).copied().unwrap_or(self.text.len());
        at(node.span.start)..at(node.span.end)
    }

    /// A scalar's own text: the parser's span of a quoted scalar can run on over a comment
    /// after it, so it ends at the closing quote here.
    fn scalar_range(&self, node: &Node) -> Range<usize> {
        let range = self.byte_range(node);
        let text = &self.text[range.clone()];
        let closing = match text.as_bytes().first() {
            Some(b'\'') => closing_quote(text, b'\'', None),
            Some(b'"') => closing_quote(text, b'"', Some(b'\\')),
            _ => None,
        };
        closing.map_or(range.clone(), |end| range.start..range.start + end)
    }

    /// Replaces `range` with `text`; when a comment follows on the line, the spaces before it
    /// grow or shrink (to one at least) so the comment stays in its column.
    fn keeping_comment_column(&self, range: Range<usize>, text: String) -> Edit {
        let after = &self.text[range.end..];
        let spaces = after.len() - after.trim_start_matches(' ').len();
        if spaces == 0 || !after[spaces..].starts_with('#') {
            return Edit { range, text };
        }
        let old = self.text[range.clone()].chars().count();
        let padding = (old + spaces).saturating_sub(text.chars().count()).max(1);
        Edit {
            range: range.start..range.end + spaces,
            text: format!("{text}{}", " ".repeat(padding)),
        }
    }

    /// A flow sequence's text from `[` to `]`; `None` for a block sequence. The parser's span
    /// can run on over a comment after the `]`, so the end is found after the last item: only
    /// spaces, commas and comments stand between it and the `]`.
    fn flow_range(&self, node: &Node, items: &[Node]) -> Option<Range<usize>> {
        let range = self.byte_range(node);
        if !self.text[range.clone()].starts_with('[') {
            return None;
        }
        let mut at = items
            .last()
            .map_or(range.start + 1, |last| self.scalar_range(last).end);
        let bytes = self.text.as_bytes();
        while at < range.end {
            match bytes[at] {
                b']' => return Some(range.start..at + 1),
                b'#' => at += self.text[at..].find('\n').unwrap_or(range.end - at),
                _ => at += 1,
            }
        }
        Some(range)
    }

    fn style(&self, node: &Node) -> Result<Style, UpdateError> {
        // A block scalar's span holds its content only: its indicator is the word before it.
        let range = self.byte_range(node);
        let before = self.text[..range.start].trim_end();
        let word = before
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or_default();
        if word.starts_with(['|', '>']) {
            return Err(UpdateError::at(
                node,
                "a block scalar (`|` or `>`) is not rewritten; edit it by hand",
            ));
        }
        match self.text[range].chars().next() {
            Some('\'') => Ok(Style::Single),
            Some('"') => Ok(Style::Double),
            Some('*') => Err(UpdateError::at(
                node,
                "an alias is not rewritten; edit its anchor by hand",
            )),
            _ => Ok(Style::Plain),
        }
    }

    /// The edits that make `node` hold `value`.
    fn edits(
        &self,
        node: &Node,
        value: &serde_json::Value,
        out: &mut Vec<Edit>,
    ) -> Result<(), UpdateError> {
        match (&node.value, value) {
            (Value::Seq(items), serde_json::Value::Array(want)) => {
                if let Some(range) = self.flow_range(node, items) {
                    let rendered: Vec<String> = want
                        .iter()
                        .map(|v| render(v, Style::Plain))
                        .collect::<Result<_, _>>()
                        .map_err(|m| UpdateError::at(node, m))?;
                    out.push(Edit {
                        range,
                        text: format!("[{}]", rendered.join(", ")),
                    });
                    Ok(())
                } else {
                    self.block_sequence(node, items, want, out)
                }
            }
            (Value::Seq(_) | Value::Map(_), _) => Err(UpdateError::at(
                node,
                format!("expected a scalar here to write {value} into"),
            )),
            (_, serde_json::Value::Array(_)) => Err(UpdateError::at(
                node,
                format!("expected a list here to write {value} into"),
            )),
            _ => {
                let style = self.style(node)?;
                let text = render(value, style).map_err(|m| UpdateError::at(node, m))?;
                out.push(self.keeping_comment_column(self.scalar_range(node), text));
                Ok(())
            }
        }
    }

    /// A block sequence (`- item` a line): items rewritten in place, surplus lines removed,
    /// missing ones added after the last with its indentation.
    fn block_sequence(
        &self,
        node: &Node,
        items: &[Node],
        want: &[serde_json::Value],
        out: &mut Vec<Edit>,
    ) -> Result<(), UpdateError> {
        let Some(last) = items.last() else {
            return Err(UpdateError::at(node, "an empty block sequence"));
        };
        if want.is_empty() {
            return Err(UpdateError::at(
                node,
                "the new list is empty: write `[]` for this block list by hand",
            ));
        }
        let mut lines = Vec::with_capacity(items.len());
        for item in items {
            if matches!(item.value, Value::Seq(_) | Value::Map(_)) {
                return Err(UpdateError::at(item, "expected a scalar list item"));
            }
            let line = self.line_of(item);
            if lines.last() == Some(&line) {
                return Err(UpdateError::at(item, "expected one list item a line"));
            }
            lines.push(line);
        }
        for (item, value) in items.iter().zip(want) {
            self.edits(item, value, out)?;
        }
        for line in lines.iter().skip(want.len()) {
            out.push(Edit {
                range: line.clone(),
                text: String::new(),
            });
        }
        if want.len() > items.len() {
            let line = self.line_of(last);
            let indent = &self.text[line.start..self.byte_range(last).start];
            let mut added = String::new();
            if !self.text[..line.end].ends_with('\n') {
                added.push('\n');
            }
            for value in &want[items.len()..] {
                let style = self.style(last)?;
                let item = render(value, style).map_err(|m| UpdateError::at(last, m))?;
                added.push_str(&format!("{indent}{item}\n"));
            }
            out.push(Edit {
                range: line.end..line.end,
                text: added,
            });
        }
        Ok(())
    }

    /// The bytes of the whole line a node starts on, its newline included.
    fn line_of(&self, node: &Node) -> Range<usize> {
        let at = self.byte_range(node).start;
        let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[at..]
            .find('\n')
            .map_or(self.text.len(), |i| at + i + 1);
        start..end
    }
}

/// The end (exclusive, in bytes) of a quoted scalar starting at the start of `text`: a single
/// quote doubled, or any character after `escape`, does not close it.
fn closing_quote(text: &str, quote: u8, escape: Option<u8>) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = Some(b) == escape;
        let doubled = b == quote && escape.is_none() && bytes.get(i + 1) == Some(&quote);
        if escaped || doubled {
            i += 2;
        } else if b == quote {
            return Some(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

/// A value as a YAML scalar in a style, falling back to double quotes where plain text would
/// read as something else.
fn render(value: &serde_json::Value, style: Style) -> Result<String, String> {
    match value {
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::String(s) => Ok(match style {
            Style::Plain if plain_safe(s) => s.clone(),
            Style::Single => format!("'{}'", s.replace('\'', "''")),
            _ => serde_json::Value::String(s.clone()).to_string(),
        }),
        other => Err(format!("cannot write {other} as an expected value")),
    }
}

/// Whether a string can be written unquoted, in block and flow context alike, and read back
/// as the same string.
fn plain_safe(s: &str) -> bool {
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || c == '(');
    first_ok
        && !s.ends_with(' ')
        && s.chars().all(|c| {
            c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '/' | '(' | ')' | ' ')
        })
        && yaml::parse(&format!("v: {s}\n"))
            .ok()
            .and_then(|n| n.pointer("/v").map(Node::to_json))
            == Some(serde_json::Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(field: &'static str, actual: serde_json::Value) -> Mismatch {
        Mismatch {
            field,
            expected: String::new(),
            actual: String::new(),
            actual_value: actual,
        }
    }

    const FILE: &str = "\
# Header comment.
tests:
  - name: one
    expect:
      model: gpt-4o        # the flagship
      rule: 'batch-cost'   # it''s quoted
      provider: \"a \\\" b\"   # escaped
      cache_ttl_secs: 300
      attempts:
        - a@x              # first
        - b@y
        - c@z
  - name: two
    expect: {model: gpt-4o, rule: \"realtime\", attempts: [a@x, b@y]}
";

    #[test]
    fn scalars_keep_their_quoting_and_the_comments_around_them() {
        let fixes = [
            mismatch("model", "deepseek-v3".into()),
            mismatch("rule", "cheap".into()),
            mismatch("cache_ttl_secs", 60.into()),
            mismatch("provider", "it's".into()),
        ];
        let out = update_expectations(FILE, &[(0, &fixes)]).unwrap();
        assert_eq!(
            out,
            FILE.replace("gpt-4o        # the", "deepseek-v3   # the")
                .replace("'batch-cost'   #", "'cheap'        #")
                .replace("\"a \\\" b\"   #", "\"it's\"     #")
                .replace("300", "60")
        );
        assert!(
            out.contains("      rule: 'cheap'        # it''s quoted\n"),
            "{out}"
        );
        assert!(
            out.contains("      provider: \"it's\"     # escaped\n"),
            "{out}"
        );
    }

    #[test]
    fn block_lists_shrink_and_grow_line_by_line() {
        let shorter = [mismatch("attempts", serde_json::json!(["q@x", "b@y"]))];
        let out = update_expectations(FILE, &[(0, &shorter)]).unwrap();
        assert_eq!(
            out,
            FILE.replace("- a@x              # first", "- q@x              # first")
                .replace("        - c@z\n", "")
        );
        let longer = [mismatch(
            "attempts",
            serde_json::json!(["a@x", "b@y", "c@z", "d@w"]),
        )];
        let out = update_expectations(FILE, &[(0, &longer)]).unwrap();
        assert_eq!(out, FILE.replace("- c@z\n", "- c@z\n        - d@w\n"));
    }

    #[test]
    fn flow_values_are_rewritten_inside_the_braces() {
        let fixes = [
            mismatch("model", "(none)".into()),
            mismatch("rule", "needs: quoting".into()),
            mismatch("attempts", serde_json::json!(["c@z"])),
        ];
        let out = update_expectations(FILE, &[(1, &fixes)]).unwrap();
        assert!(out
            .ends_with("    expect: {model: (none), rule: \"needs: quoting\", attempts: [c@z]}\n"));
        assert!(out.starts_with("# Header comment.\n"));
        let commented = "tests:\n  - expect:\n      attempts: [a, 'b']  # see [x]\n";
        let fixes = [mismatch("attempts", serde_json::json!(["c"]))];
        let out = update_expectations(commented, &[(0, &fixes)]).unwrap();
        assert_eq!(out, "tests:\n  - expect:\n      attempts: [c]  # see [x]\n");
    }

    #[test]
    fn a_string_that_reads_as_another_type_is_quoted() {
        let fixes = [mismatch("model", "true".into())];
        let out = update_expectations(FILE, &[(0, &fixes)]).unwrap();
        assert!(
            out.contains("      model: \"true\"        # the flagship\n"),
            "{out}"
        );
    }

    #[test]
    fn a_missing_field_or_block_scalar_is_an_error_naming_the_place() {
        let fixes = [mismatch("budget", "p".into())];
        let err = update_expectations(FILE, &[(0, &fixes)]).unwrap_err();
        assert!(err.message.contains("/tests/0/expect/budget"), "{err}");
        let emptied = [mismatch("attempts", serde_json::json!([]))];
        let err = update_expectations(FILE, &[(0, &emptied)]).unwrap_err();
        assert!(err.message.contains("write `[]`"), "{err}");
        let block = "tests:\n  - name: x\n    expect:\n      model: |\n        gpt\n";
        let fixes = [mismatch("model", "m".into())];
        let err = update_expectations(block, &[(0, &fixes)]).unwrap_err();
        assert_eq!((err.line, err.column), (5, 9), "{err}");
    }
}

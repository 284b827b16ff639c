//! YAML with positions: one parse into a tree whose every node knows its line and column.
//!
//! The tree is built from saphyr's event stream, so it sees what a typed deserialiser hides:
//! duplicate keys are rejected, several documents in one file are rejected, and alias expansion
//! is bounded so a small file cannot grow into a huge one. The tree converts to JSON for schema
//! validation and typed loading; a JSON pointer leads back to the node and its position.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver};
use std::collections::HashMap;

/// The largest number of nodes a file may expand to (aliases included).
const MAX_NODES: usize = 200_000;
/// The deepest nesting accepted.
const MAX_DEPTH: usize = 128;

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in the order written; keys are strings.
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts (1-based line and column) and how long its text is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// Length in characters of a scalar's source text (0 for collections).
    pub len: usize,
    /// Where its source text starts and ends, in characters from the start of the document: a
    /// scalar's token (quotes included; a block scalar's content), a flow collection from its
    /// opening to its closing bracket. A quoted scalar's or a flow collection's may run on over
    /// a comment after it; a block collection ends where the parser closes it.
    pub span: std::ops::Range<usize>,
}

/// A YAML syntax problem.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    /// Stable code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
}

impl Node {
    /// The child at a JSON pointer (`/rules/0/when`), if any.
    pub fn pointer(&self, pointer: &str) -> Option<&Node> {
        let mut node = self;
        for raw in pointer.split('/').skip(1) {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            node = match &node.value {
                Value::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(seg.as_str()))
                    .map(|(_, v)| v)?,
                Value::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The key node of the entry at a JSON pointer (for "unexpected property" errors).
    pub fn key_at(&self, parent: &str, key: &str) -> Option<&Node> {
        match &self.pointer(parent)?.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// A string scalar's text.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            // `8000.0` and `1e3` are integers to a schema; they are integers to serde too.
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => J::from(*f as i64),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parses one YAML document with positions.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    // The parser's own `load` recurses once per nesting level; pulling events one at a time
    // keeps the stack flat and stops at the first problem, so nesting is bounded before
    // anything deeper than `MAX_DEPTH` is read.
    for event in Parser::new_from_str(text) {
        match event {
            Ok((event, span)) => builder.on_event(event, span),
            Err(err) => {
                let mark = err.marker();
                let (line, column) = (mark.line().max(1), mark.col() + 1);
                // The scanner's own limit on flow nesting (`[[[…`), met before ours.
                if err.info() == "recursion limit exceeded" {
                    builder.too_deep(line, column);
                } else {
                    builder.fail("yaml/syntax", err.info().to_owned(), line, column);
                }
            }
        }
        if builder.error.is_some() {
            break;
        }
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    match builder.documents.len() {
        0 => Err(YamlError {
            code: "yaml/empty",
            message: "the file holds no YAML document".into(),
            line: 1,
            column: 1,
        }),
        1 => Ok(builder.documents.remove(0)),
        _ => {
            let second = &builder.documents[1];
            Err(YamlError {
                code: "yaml/multiple-documents",
                message: "a policy file holds one document; split this one into several files"
                    .into(),
                line: second.line,
                column: second.column,
            })
        }
    }
}

enum Frame {
    Seq(Node, Vec<Node>, usize),
    Map(Node, Vec<(Node, Node)>, Option<Node>, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    documents: Vec<Node>,
    nodes: usize,
    error: Option<YamlError>,
}

fn start(span: &Span) -> (usize, usize) {
    (span.start.line().max(1), span.start.col() + 1)
}

fn range(span: &Span) -> std::ops::Range<usize> {
    span.start.index()..span.end.index()
}

fn count(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// How many collections deep a node goes (0 for a scalar), measured without recursion.
fn nesting(node: &Node) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(node, 0)];
    while let Some((node, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match &node.value {
            Value::Seq(items) => stack.extend(items.iter().map(|n| (n, depth + 1))),
            Value::Map(entries) => stack.extend(entries.iter().map(|(_, v)| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

impl Builder {
    fn fail(&mut self, code: &'static str, message: String, line: usize, column: usize) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                code,
                message,
                line,
                column,
            });
        }
    }

    fn too_deep(&mut self, line: usize, column: usize) {
        self.fail(
            "yaml/too-deep",
            format!("nesting deeper than {MAX_DEPTH} levels"),
            line,
            column,
        );
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        self.nodes += count(&node);
        if self.nodes > MAX_NODES {
            let (line, column) = (node.line, node.column);
            self.fail(
                "yaml/too-large",
                format!("the document expands to more than {MAX_NODES} nodes"),
                line,
                column,
            );
            return;
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, pending, _)) => match pending.take() {
                None => {
                    let key_text = match &node.value {
                        Value::Str(s) => Some(s.clone()),
                        Value::Int(i) => Some(i.to_string()),
                        Value::Float(f) => Some(f.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        Value::Null => Some("null".to_owned()),
                        _ => None,
                    };
                    let Some(key_text) = key_text else {
                        let (line, column) = (node.line, node.column);
                        self.fail(
                            "yaml/complex-key",
                            "mapping keys must be plain scalars".into(),
                            line,
                            column,
                        );
                        return;
                    };
                    if let Some((first, _)) = entries
                        .iter()
                        .find(|(k, _)| k.as_str() == Some(key_text.as_str()))
                    {
                        let message = format!(
                            "duplicate key `{key_text}` (first written at line {})",
                            first.line
                        );
                        let (line, column) = (node.line, node.column);
                        self.fail("yaml/duplicate-key", message, line, column);
                        return;
                    }
                    *pending = Some(Node {
                        value: Value::Str(key_text),
                        ..node
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        if self.error.is_some() {
            return;
        }
        let (line, column) = start(&span);
        let depth_ok = self.stack.len() < MAX_DEPTH;
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let len = span.len();
                let value = scalar(&text, style, tag.as_deref().map(|t| t.suffix.as_str()));
                self.push_value(
                    Node {
                        value,
                        line,
                        column,
                        len,
                        span: range(&span),
                    },
                    anchor,
                );
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if !depth_ok => {
                self.too_deep(line, column);
            }
            Event::SequenceStart(anchor, _) => {
                let node = Node {
                    value: Value::Null,
                    line,
                    column,
                    len: 0,
                    span: range(&span),
                };
                self.stack.push(Frame::Seq(node, Vec::new(), anchor));
            }
            Event::MappingStart(anchor, _) => {
                let node = Node {
                    value: Value::Null,
                    line,
                    column,
                    len: 0,
                    span: range(&span),
                };
                self.stack.push(Frame::Map(node, Vec::new(), None, anchor));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(node, items, anchor)) = self.stack.pop() {
                    let end = items.last().map_or(node.span.end, |n| n.span.end);
                    self.push_value(
                        Node {
                            value: Value::Seq(items),
                            span: node.span.start..span.end.index().max(end),
                            ..node
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(node, entries, _, anchor)) = self.stack.pop() {
                    let end = entries.last().map_or(node.span.end, |(_, v)| v.span.end);
                    self.push_value(
                        Node {
                            value: Value::Map(entries),
                            span: node.span.start..span.end.index().max(end),
                            ..node
                        },
                        anchor,
                    );
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                // An alias nests what it names where it stands: a chain of them would
                // otherwise build a tree deeper than any written one.
                Some(node) if self.stack.len() + nesting(&node) > MAX_DEPTH => {
                    self.too_deep(line, column);
                }
                Some(node) => self.push_value(
                    Node {
                        line,
                        column,
                        span: range(&span),
                        ..node
                    },
                    0,
                ),
                None => self.fail(
                    "yaml/unknown-alias",
                    "alias to an unknown anchor".into(),
                    line,
                    column,
                ),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }
}

/// Resolves a scalar by the YAML 1.2 core schema; quoted scalars are always strings.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Value {
    if style != ScalarStyle::Plain || tag == Some("str") {
        return Value::Str(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let node = parse("a: 1\nb:\n  - x\n  - 'y'\n").unwrap();
        let x = node.pointer("/b/0").unwrap();
        assert_eq!((x.line, x.column), (3, 5));
        assert_eq!(node.pointer("/b/1").unwrap().value, Value::Str("y".into()));
        assert_eq!(node.pointer("/a").unwrap().value, Value::Int(1));
    }

    #[test]
    fn spans_cover_the_source_text_quotes_and_brackets_included() {
        let text = "a: 'x y'\nb: [p, \"q\"]\nc: é plain  # d\n";
        let node = parse(text).unwrap();
        let chars: Vec<char> = text.chars().collect();
        let source = |pointer: &str| -> String {
            let n = node.pointer(pointer).unwrap();
            chars[n.span.clone()].iter().collect()
        };
        assert_eq!(source("/a"), "'x y'");
        assert_eq!(source("/b"), "[p, \"q\"]");
        assert_eq!(source("/b/1"), "\"q\"");
        assert_eq!(source("/c"), "é plain");
    }

    #[test]
    fn duplicate_keys_are_rejected_at_the_second() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.code, "yaml/duplicate-key");
        assert_eq!((err.line, err.column), (3, 1));
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let node = parse("a: '1'\nb: 1.5\nc: true\nd: ~\n").unwrap();
        assert_eq!(
            node.to_json(),
            serde_json::json!({"a":"1","b":1.5,"c":true,"d":null})
        );
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            text.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert_eq!(parse(&text).unwrap_err().code, "yaml/too-large");
    }

    fn deep(text: &str) -> (usize, usize) {
        let err = parse(text).unwrap_err();
        assert_eq!(err.code, "yaml/too-deep", "{err:?}");
        (err.line, err.column)
    }

    #[test]
    fn nesting_is_bounded_in_every_form_before_the_parser_recurses() {
        let n = 100_000;
        let block = format!("a:\n  {}x\n", "- ".repeat(n));
        assert_eq!(deep(&block), (2, 3 + 2 * 127));
        let flow = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(deep(&flow).0, 1);
        let maps = format!("a: {}x{}\n", "{a: ".repeat(n), "}".repeat(n));
        assert_eq!(deep(&maps), (1, 4 + 4 * 127));
        let indented: String = (0..1_000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        assert_eq!(deep(&indented), (129, 129));
        let at_the_limit = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&at_the_limit).is_ok());
    }

    #[test]
    fn an_alias_cannot_nest_deeper_than_the_limit() {
        let anchored = format!("{}x{}", "[".repeat(100), "]".repeat(100));
        let text = format!(
            "a: &a {anchored}\nb: {}*a{}\n",
            "[".repeat(50),
            "]".repeat(50)
        );
        assert_eq!(deep(&text), (2, 54));
        let shallow = format!("a: &a {anchored}\nb: [[*a]]\n");
        assert!(parse(&shallow).is_ok());
    }

    #[test]
    fn two_documents_are_rejected() {
        assert_eq!(
            parse("a: 1\n---\nb: 2\n").unwrap_err().code,
            "yaml/multiple-documents"
        );
    }
}

//! Finds provider secrets written into a policy repository instead of referenced.
//!
//! Lint reads the raw text of every policy file, comments included, line by line: a secret in
//! a comment, after `env:`/`file:`, or as the password of a URL is as exposed as one in a value.
//! A reviewed false positive is silenced on its own line with the comment
//! `# llmgw-lint: allow secret/literal`.

use regex::Regex;
use std::sync::LazyLock;

static PREFIXED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(sk-(ant-|proj-)?[A-Za-z0-9_\-]{16,})",
        r"|(AIza[0-9A-Za-z_\-]{30,})",
        r"|(AKIA[0-9A-Z]{16})",
        r"|(gh[pousr]_[A-Za-z0-9]{30,})",
        r"|(xox[abposr]-[A-Za-z0-9\-]{10,})",
        r"|(hf_[A-Za-z0-9]{30,})",
        r"|(gsk_[A-Za-z0-9]{30,})",
    ))
    .expect("the secret patterns are valid")
});

/// The password of a URL's userinfo: `scheme://user:password@host`.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:([^/\s@]+)@")
        .expect("the URL pattern is valid")
});

/// The comment that silences `secret/literal` on its line, for a reviewed false positive.
pub const ALLOW_MARKER: &str = "llmgw-lint: allow secret/literal";

/// A secret found in a file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Line, 1-based.
    pub line: usize,
    /// Column in characters, 1-based.
    pub column: usize,
    /// Length of the secret in bytes.
    pub len: usize,
    /// What it looks like, for the message.
    pub what: &'static str,
}

/// Every secret in `text`, in order; lines carrying [`ALLOW_MARKER`] in a comment are skipped.
pub fn scan(text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line
            .find('#')
            .is_some_and(|hash| line[hash..].contains(ALLOW_MARKER))
        {
            continue;
        }
        let mut found: Vec<(usize, usize, &'static str)> = Vec::new();
        for m in PREFIXED.find_iter(line) {
            found.push((m.start(), m.len(), "an API key"));
        }
        for c in URL_PASSWORD.captures_iter(line) {
            if let Some(m) = c.get(1) {
                found.push((m.start(), m.len(), "a password in a URL"));
            }
        }
        for (start, token) in tokens(line) {
            let overlaps =
                |&(s, l, _): &(usize, usize, &str)| s < start + token.len() && start < s + l;
            if high_entropy(token) && !found.iter().any(overlaps) {
                found.push((start, token.len(), "a long high-entropy token"));
            }
        }
        found.sort_unstable();
        out.extend(found.into_iter().map(|(start, len, what)| Finding {
            line: index + 1,
            column: line[..start].chars().count() + 1,
            len,
            what,
        }));
    }
    out
}

/// The words of a line with their byte offsets; a reference (`env:NAME`, `file:PATH`) is
/// reduced to what it refers to, and an environment variable's name is no secret. A path is
/// read segment by segment: a secret pasted into a path is one segment, while a long path of
/// ordinary names (a temporary directory, a dated file) is not a token.
fn tokens(line: &str) -> impl Iterator<Item = (usize, &str)> {
    let separator =
        |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '[' | ']' | '{' | '}');
    line.split(separator)
        .scan(0usize, move |offset, word| {
            let start = line[*offset..].find(word).map_or(*offset, |i| *offset + i);
            *offset = start + word.len();
            Some((start, word))
        })
        .flat_map(|(start, word)| {
            if let Some(rest) = word.strip_prefix("env:") {
                let env_name = rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                return if env_name {
                    vec![]
                } else {
                    vec![(start + "env:".len(), rest)]
                };
            }
            if let Some(path) = word.strip_prefix("file:") {
                let base = start + "file:".len();
                return path
                    .split('/')
                    .scan(0usize, |offset, segment| {
                        let at = *offset;
                        *offset += segment.len() + 1;
                        Some((base + at, segment))
                    })
                    .collect();
            }
            vec![(start, word)]
        })
}

/// What kind of secret a string looks like, if it looks like one.
pub fn looks_like_secret(text: &str) -> Option<&'static str> {
    scan(text).first().map(|f| f.what)
}

/// A long token of key-like characters mixing letters and digits with high Shannon entropy.
fn high_entropy(token: &str) -> bool {
    if token.len() < 32 || token.contains("://") {
        return false;
    }
    let keyish = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'/' | b'=' | b'.'));
    let digits = token.bytes().filter(u8::is_ascii_digit).count();
    let letters = token.bytes().filter(u8::is_ascii_alphabetic).count();
    if !keyish || digits < 4 || letters < 4 {
        return false;
    }
    let mut counts = [0usize; 256];
    for b in token.bytes() {
        counts[b as usize] += 1;
    }
    let n = token.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy >= if token.len() >= 40 { 3.6 } else { 4.0 }
}

/// A redacted form of a secret, safe to print: its first four characters.
pub fn redact(text: &str) -> String {
    let head: String = text.chars().take(4).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::{looks_like_secret, scan};

    #[test]
    fn finds_keys_and_spares_names() {
        assert!(looks_like_secret("sk-proj-abcdefghijklmnopqrstuvwx1234").is_some());
        assert!(looks_like_secret("AIzaSyA1234567890abcdefghijklmnopqrstu").is_some());
        assert!(looks_like_secret("9f8e7d6c5b4a39281706f5e4d3c2b1a0Zq8Xw7Vu6T").is_some());
        assert!(looks_like_secret("env:OPENAI_API_KEY").is_none());
        assert!(looks_like_secret("gpt-4o-2026-11@openai-us-east").is_none());
        assert!(looks_like_secret("request.metadata[\"workload\"] == \"batch\"").is_none());
        assert!(looks_like_secret("https://generativelanguage.googleapis.com/v1beta").is_none());
    }

    #[test]
    fn scans_references_urls_and_comments() {
        let text = "\
api_key: env:sk-proj-abcdefghijklmnopqrstuvwx1234
other: env:OPENAI_API_KEY_2026
base_url: https://svc:Zq8Xw7Vu6T9f8e7d6c5b4a39281706f5e4@llm.internal/v1
# old key: 9f8e7d6c5b4a39281706f5e4d3c2b1a0Zq8Xw7Vu6T
id: 9f8e7d6c5b4a39281706f5e4d3c2b1a0Zq8Xw7Vu6T # llmgw-lint: allow secret/literal
url: https://generativelanguage.googleapis.com/v1beta
key: file:/tmp/.tmp9a35d4/vertex-service-account.json
pasted: file:/run/secrets/9f8e7d6c5b4a39281706f5e4d3c2b1a0Zq8Xw7Vu6T
";
        let found: Vec<(usize, usize, &str)> = scan(text)
            .iter()
            .map(|f| (f.line, f.column, f.what))
            .collect();
        assert_eq!(
            found,
            [
                (1, 14, "an API key"),
                (3, 23, "a password in a URL"),
                (4, 12, "a long high-entropy token"),
                (8, 27, "a long high-entropy token"),
            ]
        );
    }
}

//! Finds provider secrets written into a policy repository instead of referenced.

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

/// What kind of secret a string looks like, if it looks like one.
pub fn looks_like_secret(text: &str) -> Option<&'static str> {
    if text.starts_with("env:") || text.starts_with("file:") {
        return None;
    }
    if PREFIXED.is_match(text) {
        return Some("an API key");
    }
    for token in text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',') {
        if high_entropy(token) {
            return Some("a long high-entropy token");
        }
    }
    None
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
    use super::looks_like_secret;

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
}

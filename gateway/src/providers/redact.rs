//! Removes an upstream key from text a provider sent back. Providers quote the key they
//! received in error messages (whole or in part); nothing a provider says may carry it on to a
//! client, a log line, a metric, the decision log or the state store.

use aho_corasick::AhoCorasick;
use std::borrow::Cow;
use std::sync::Arc;

/// Shortest fragment of a key that is removed: every run of this many characters of the key,
/// and every longer run, wherever it appears.
pub const MIN_FRAGMENT: usize = 8;

/// What replaces a key or a fragment of it.
pub const REDACTED: &str = "[redacted]";

/// Removes one key, and every fragment of it of [`MIN_FRAGMENT`] or more bytes, from text.
///
/// Built once per resolved key: an Aho-Corasick automaton over every [`MIN_FRAGMENT`]-byte
/// window of the key (the whole key when it is shorter) finds, in one pass, every place where
/// a window occurs; overlapping or touching occurrences are merged, so a longer fragment (which
/// is a chain of overlapping windows) is removed as one piece. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    windows: Option<Arc<AhoCorasick>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.windows.is_some() {
            "Redactor([key])"
        } else {
            "Redactor(none)"
        })
    }
}

impl Redactor {
    /// A redactor of `key`; one that changes nothing when `key` is empty.
    pub fn for_key(key: &str) -> Self {
        Redactor::for_keys([key])
    }

    /// A redactor of several secrets (a provider whose requests carry more than one: an
    /// access key id and a session token); one that changes nothing when all are empty.
    pub fn for_keys<'k>(keys: impl IntoIterator<Item = &'k str>) -> Self {
        let mut windows: Vec<&[u8]> = Vec::new();
        for key in keys
            .into_iter()
            .map(str::as_bytes)
            .filter(|k| !k.is_empty())
        {
            windows.extend(key.windows(MIN_FRAGMENT.min(key.len())));
        }
        if windows.is_empty() {
            return Redactor::default();
        }
        let windows = AhoCorasick::new(windows).ok().map(Arc::new);
        Redactor { windows }
    }

    /// `text` with every occurrence of the key and of its fragments replaced by [`REDACTED`];
    /// borrowed when there is none.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(windows) = &self.windows else {
            return Cow::Borrowed(text);
        };
        // Windows of keys of different lengths may differ in length: sort before merging.
        let mut found: Vec<(usize, usize)> = windows
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        found.sort_unstable();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (start, end) in found {
            match spans.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => spans.push((start, end)),
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (mut start, mut end) in spans {
            // A window of a non-ASCII key may begin or end inside a character.
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let start = start.max(at);
            out.push_str(&text[at..start]);
            if end > start {
                out.push_str(REDACTED);
            }
            at = at.max(end);
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// Scrubs a string in place.
    pub fn scrub_in_place(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.scrub(text) {
            *text = clean;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

    #[test]
    fn removes_the_key_and_every_fragment_of_eight_or_more() {
        let r = Redactor::for_key(KEY);
        let text = format!("Incorrect API key provided: Bearer {KEY}.");
        assert_eq!(
            r.scrub(&text),
            "Incorrect API key provided: Bearer [redacted]."
        );
        for len in MIN_FRAGMENT..=KEY.len() {
            for start in 0..=KEY.len() - len {
                let fragment = &KEY[start..start + len];
                let text = format!("key {fragment}!");
                assert_eq!(r.scrub(&text), "key [redacted]!", "fragment {fragment}");
            }
        }
        // Two fragments apart, and a quoted prefix and suffix around an ellipsis.
        let text = format!(
            "{}…{} and {}",
            &KEY[..10],
            &KEY[KEY.len() - 9..],
            &KEY[3..20]
        );
        assert_eq!(r.scrub(&text), "[redacted]…[redacted] and [redacted]");
    }

    #[test]
    fn removes_every_key_of_several() {
        let token = "entra-0123456789-token";
        let r = Redactor::for_keys([KEY, "short", token]);
        let text = format!("{} and {} and short!", &KEY[5..30], &token[3..15]);
        assert_eq!(r.scrub(&text), "[redacted] and [redacted] and [redacted]!");
        assert!(matches!(
            Redactor::for_keys(["", ""]).scrub("x"),
            Cow::Borrowed("x")
        ));
    }

    #[test]
    fn leaves_other_text_and_short_fragments_alone() {
        let r = Redactor::for_key(KEY);
        let text = format!("sk-proj… {} rate limited", &KEY[..7]);
        assert!(matches!(r.scrub(&text), Cow::Borrowed(_)));
        assert!(matches!(Redactor::default().scrub(KEY), Cow::Borrowed(KEY)));
        let short = Redactor::for_key("abc12");
        assert_eq!(short.scrub("key abc12 and abc1"), "key [redacted] and abc1");
    }

    #[test]
    fn keeps_utf8_valid_around_non_ascii_keys() {
        let key = "ключсекретзначение";
        let r = Redactor::for_key(key);
        let text = format!("é {} é", &key[2..20]);
        let clean = r.scrub(&text);
        assert!(!clean.contains(&key[4..14]));
        assert!(clean.starts_with("é ") && clean.ends_with(" é"), "{clean}");
    }
}

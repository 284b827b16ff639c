//! The guard of near-duplicate hits: the facts of a prompt that a similarity score blurs, and
//! that two prompts must share exactly for one to be served the other's answer.
//!
//! A vector, lexical or learned, scores "Translate this email into French" and "…into German"
//! as almost the same text, because almost all of it is. The words that decide the answer are
//! few, and a few kinds of them are cheap to find:
//!
//! - **numbers**, digits or number words (`three` and `3` are the same fact, `1,000` and
//!   `1000` too);
//! - **negation**: `not`, `no`, `never`, `without`, `n't`, … (counted: one negation more or less
//!   flips the question);
//! - **named languages and formats**: `French`, `german`, `JSON`, `csv`, … in any case;
//! - **names**: capitalised words that do not start a sentence (`Paris`, `Acme`, `Option B`),
//!   and words in capitals (`YES`, `NO`, `URGENT`);
//! - **options and polarity**: `yes`/`no`/`true`/`false`, and the words that pick one end of a
//!   scale (`more`/`less`, `highest`/`lowest`, `before`/`after`, `ascending`/`descending`, …);
//! - **quoted strings** (`"…"`, `“…”`, `'…'`) and **code** (`` `…` `` spans, ```` ``` ````
//!   blocks), compared verbatim.
//!
//! Two prompts whose facts differ never match, whatever their similarity. A paraphrase keeps
//! its facts (it asks the same thing about the same things); a near miss usually changes one.
//! A fact the guard cannot see (a lowercase place name at the start of a sentence, a changed
//! verb) is left to the similarity threshold, which is why that stays high.

use std::collections::BTreeSet;

/// The facts of a prompt; two prompts may match only when theirs are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Facts(BTreeSet<String>);

/// Words that negate.
const NEGATIONS: [&str; 12] = [
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot",
    "nowhere", "non",
];

/// Answer options and words that pick one end of a scale.
const POLARITY: [&str; 40] = [
    "yes",
    "true",
    "false",
    "more",
    "less",
    "fewer",
    "most",
    "least",
    "highest",
    "lowest",
    "largest",
    "smallest",
    "biggest",
    "longest",
    "shortest",
    "oldest",
    "newest",
    "latest",
    "earliest",
    "before",
    "after",
    "above",
    "below",
    "over",
    "under",
    "increase",
    "decrease",
    "ascending",
    "descending",
    "minimum",
    "maximum",
    "min",
    "max",
    "positive",
    "negative",
    "agree",
    "disagree",
    "accept",
    "reject",
    "last",
];

/// Languages (natural and programming) and output formats, in lowercase.
const NAMED: [&str; 64] = [
    "english",
    "french",
    "german",
    "spanish",
    "italian",
    "portuguese",
    "dutch",
    "swedish",
    "norwegian",
    "danish",
    "finnish",
    "polish",
    "czech",
    "greek",
    "turkish",
    "russian",
    "ukrainian",
    "arabic",
    "hebrew",
    "hindi",
    "bengali",
    "urdu",
    "chinese",
    "mandarin",
    "cantonese",
    "japanese",
    "korean",
    "vietnamese",
    "thai",
    "indonesian",
    "malay",
    "swahili",
    "latin",
    "romanian",
    "hungarian",
    "persian",
    "python",
    "rust",
    "java",
    "javascript",
    "typescript",
    "go",
    "golang",
    "ruby",
    "php",
    "kotlin",
    "swift",
    "scala",
    "haskell",
    "sql",
    "bash",
    "c++",
    "c#",
    "json",
    "yaml",
    "xml",
    "csv",
    "html",
    "markdown",
    "toml",
    "latex",
    "celsius",
    "fahrenheit",
    "kelvin",
];

/// Number words and the digits they stand for.
const NUMBER_WORDS: [(&str, u32); 32] = [
    ("zero", 0),
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("eleven", 11),
    ("twelve", 12),
    ("thirteen", 13),
    ("fourteen", 14),
    ("fifteen", 15),
    ("sixteen", 16),
    ("seventeen", 17),
    ("eighteen", 18),
    ("nineteen", 19),
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
    ("hundred", 100),
    ("thousand", 1000),
    ("million", 1_000_000),
    ("dozen", 12),
];

/// Ordinal words and their numbers.
const ORDINALS: [(&str, u32); 10] = [
    ("first", 1),
    ("second", 2),
    ("third", 3),
    ("fourth", 4),
    ("fifth", 5),
    ("sixth", 6),
    ("seventh", 7),
    ("eighth", 8),
    ("ninth", 9),
    ("tenth", 10),
];

impl Facts {
    /// The facts of a prompt, as the client wrote it (case matters for names).
    pub fn of(text: &str) -> Facts {
        let mut facts = Facts::default();
        let rest = facts.take_code_and_quotes(text);
        facts.words(&rest);
        facts
    }

    /// Bytes held (approximately).
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|f| f.len() + 32).sum()
    }

    /// The facts, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    fn add(&mut self, kind: &str, value: &str) {
        self.0.insert(format!("{kind}:{value}"));
    }

    /// Records code blocks, code spans and quoted strings verbatim (whitespace collapsed) and
    /// returns the text with each replaced by a sentence break.
    fn take_code_and_quotes(&mut self, text: &str) -> String {
        let mut rest = String::with_capacity(text.len());
        let mut s = text;
        while let Some((start, open)) = next_opener(s) {
            rest.push_str(&s[..start]);
            let body = &s[start + open.len()..];
            let close = match open {
                "\u{201c}" => "\u{201d}",
                "\u{2018}" => "\u{2019}",
                o => o,
            };
            let found = if open == "'" {
                closing_single_quote(body)
            } else {
                body.find(close)
            };
            match found {
                Some(end) => {
                    let kind = if open.starts_with('`') {
                        "code"
                    } else {
                        "quote"
                    };
                    let inner: Vec<&str> = body[..end].split_whitespace().collect();
                    self.add(kind, &inner.join(" "));
                    rest.push_str(" . ");
                    s = &body[end + close.len()..];
                }
                None => {
                    rest.push(' ');
                    s = body;
                }
            }
        }
        rest.push_str(s);
        rest
    }

    /// Numbers, negations, names, languages, formats and polarity words of plain text.
    fn words(&mut self, text: &str) {
        let mut negations = 0;
        let mut sentence_start = true;
        for raw in text.split_whitespace() {
            let ends_sentence = raw.ends_with(['.', '!', '?', ':', ';']);
            let word = raw.trim_matches(|c: char| {
                !(c.is_alphanumeric() || matches!(c, '+' | '#' | '\'' | '\u{2019}'))
            });
            let word = word.trim_matches(['\'', '\u{2019}']);
            if !word.is_empty() {
                negations += self.word(word, sentence_start);
            }
            sentence_start = ends_sentence || (word.is_empty() && raw.ends_with(['-', '*']));
        }
        if negations > 0 {
            self.add("not", &negations.to_string());
        }
    }

    /// Records the facts of one word; returns its negations (0 or 1).
    fn word(&mut self, word: &str, sentence_start: bool) -> u32 {
        let lower = word.to_lowercase();
        if word.chars().any(|c| c.is_ascii_digit()) {
            self.add("num", &number(word));
            return 0;
        }
        if NEGATIONS.contains(&lower.as_str())
            || lower.ends_with("n't")
            || lower.ends_with("n\u{2019}t")
        {
            return 1;
        }
        if let Some((_, n)) = NUMBER_WORDS.iter().find(|(w, _)| *w == lower) {
            self.add("num", &n.to_string());
            return 0;
        }
        if let Some((_, n)) = ORDINALS.iter().find(|(w, _)| *w == lower) {
            self.add("nth", &n.to_string());
            return 0;
        }
        if NAMED.contains(&lower.as_str()) {
            self.add("name", &lower);
            return 0;
        }
        if POLARITY.contains(&lower.as_str()) {
            self.add("pick", &lower);
            return 0;
        }
        let letters = word.chars().filter(|c| c.is_alphabetic()).count();
        let capitals = word.chars().filter(|c| c.is_uppercase()).count();
        let shouting = letters >= 2 && capitals == letters;
        let named = !sentence_start
            && word.chars().next().is_some_and(char::is_uppercase)
            && word != "I"
            && !word.starts_with("I'");
        if shouting || named {
            self.add("name", &lower);
        }
        0
    }
}

/// The next code fence, code span or quote opening in `s`: its byte offset and the opener.
fn next_opener(s: &str) -> Option<(usize, &'static str)> {
    let mut prev: Option<char> = None;
    for (i, c) in s.char_indices() {
        let opener = match c {
            '`' if s[i..].starts_with("```") => Some("```"),
            '`' => Some("`"),
            '"' => Some("\""),
            '\u{201c}' => Some("\u{201c}"),
            '\u{2018}' => Some("\u{2018}"),
            // An apostrophe inside a word ("don't") opens nothing.
            '\'' if prev.is_none_or(|p| !p.is_alphanumeric()) => Some("'"),
            _ => None,
        };
        if let Some(o) = opener {
            return Some((i, o));
        }
        prev = Some(c);
    }
    None
}

/// The closing `'` of a single-quoted string: one not followed by a letter or digit.
fn closing_single_quote(body: &str) -> Option<usize> {
    body.char_indices()
        .filter(|(_, c)| *c == '\'')
        .map(|(i, _)| i)
        .find(|&i| {
            body[i + 1..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric())
                && i > 0
        })
}

/// A number in one spelling: thousands separators dropped, a trailing `.0` too.
fn number(word: &str) -> String {
    let mut out: String = word.chars().filter(|c| *c != ',' && *c != '_').collect();
    if let Some(stripped) = out.strip_suffix(".0") {
        out = stripped.to_owned();
    }
    out.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        Facts::of(a) == Facts::of(b)
    }

    #[test]
    fn what_embeddings_blur_makes_the_facts_differ() {
        let email = "Hi team, the invoice for March is attached; please pay by Friday.";
        assert!(!same(
            &format!("Translate this email into French: {email}"),
            &format!("Translate this email into German: {email}"),
        ));
        assert!(!same(
            "Reply YES if this is a complaint: the parcel arrived broken.",
            "Reply NO if this is a complaint: the parcel arrived broken.",
        ));
        for (a, b) in [
            ("List 5 ideas for a party.", "List 6 ideas for a party."),
            ("Is this review positive?", "Is this review negative?"),
            ("Summarise it.", "Do not summarise it."),
            ("Why is the sky blue?", "Why isn't the sky blue?"),
            (
                "What is the capital of France?",
                "What is the capital of Spain?",
            ),
            (
                "Rename the variable `foo` to bar.",
                "Rename the variable `baz` to bar.",
            ),
            (
                "Does it contain the phrase \"free trial\"?",
                "Does it contain the phrase \"free plan\"?",
            ),
            ("Answer in json.", "Answer in yaml."),
            ("Sort the list ascending.", "Sort the list descending."),
            ("Pick option A or option B.", "Pick option A or option C."),
        ] {
            assert!(!same(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn a_paraphrase_keeps_its_facts() {
        for (a, b) in [
            (
                "Translate this email into French.",
                "Please translate the following email to french.",
            ),
            (
                "Give me three reasons to learn Rust.",
                "List 3 reasons to learn rust",
            ),
            ("Don't use jargon.", "Do not use any jargon!"),
            (
                "How far is Paris from Lyon?",
                "What is the distance between Paris and Lyon?",
            ),
            (
                "summarise this: the server is down",
                "Summarise this:  the server is down.",
            ),
            ("It costs 1,000 dollars.", "it costs 1000 dollars"),
        ] {
            assert!(
                same(a, b),
                "{a} / {b}: {:?} {:?}",
                Facts::of(a),
                Facts::of(b)
            );
        }
    }

    #[test]
    fn quotes_and_code_are_kept_verbatim_and_apostrophes_open_nothing() {
        let f = Facts::of("Explain ```let x =   1;``` and 'the  quote' - it's `y`.");
        let list: Vec<&str> = f.iter().collect();
        assert!(list.contains(&"code:let x = 1;"), "{list:?}");
        assert!(list.contains(&"quote:the quote"), "{list:?}");
        assert!(list.contains(&"code:y"), "{list:?}");
        assert_eq!(Facts::of("it's the user's"), Facts::default());
        // An unclosed quote does not swallow the rest.
        assert!(Facts::of("say \"hi to Bob").iter().any(|f| f == "name:bob"));
    }
}

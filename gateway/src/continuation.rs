//! Continuing a broken stream on a model that does not accept an assistant prefill: the
//! re-contextualised request ([`reask_body`]) and the alignment of its answer with the text
//! the client already has ([`Aligner`]).
//!
//! The model is re-asked with the client's messages, the partial answer as an assistant
//! message and a user message ([`INSTRUCTION`]) asking it to go on from exactly where the text
//! stops. Models told so mostly do, but some begin by restating the last sentence or the whole
//! answer. The aligner drops such a restated prefix (compared without whitespace, so a
//! restatement laid out differently still lines up) and passes on only what extends the text;
//! a continuation that restates part of the text and then departs from it cannot be stitched
//! and is refused ([`Misaligned`]).

use serde_json::Value;

/// The user message appended after the partial answer when a model is re-asked to continue.
pub const INSTRUCTION: &str = "Your previous reply was cut off before it was finished; it is \
the assistant message just above, exactly as far as it got. Continue it from precisely where \
it stops. Write only the missing remainder: do not repeat any of the text already written, do \
not start over, and add no introduction, summary or comment about the continuation. If it stops \
in the middle of a word or sentence, finish that word or sentence first; begin with a space or \
line break if one belongs before the next word. Keep the same language, format and style.";

/// A restatement that does not start the text must hold at least this many of its words to
/// count as one, and a continuation that restates this many words and then departs from the
/// text is refused; fewer matching words are taken as a coincidence of a direct continuation.
pub const MIN_RESTATED_WORDS: usize = 3;

/// The body of the re-asked request: `body` (OpenAI-shaped) with the partial answer appended
/// as an assistant message and [`INSTRUCTION`] as a user message after it.
pub fn reask_body(body: &Value, partial: &str) -> Value {
    let mut body = body.clone();
    if let Some(obj) = body.as_object_mut() {
        let messages = obj
            .entry("messages")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(list) = messages.as_array_mut() {
            list.push(serde_json::json!({ "role": "assistant", "content": partial }));
            list.push(serde_json::json!({ "role": "user", "content": INSTRUCTION }));
        }
    }
    body
}

/// A continuation that restated part of the text already sent and then departed from it: it
/// cannot be stitched to what the client has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the continuation restated {words} word(s) of the partial answer and then departed from it"
)]
pub struct Misaligned {
    /// Words of the sent text the continuation restated before departing.
    pub words: usize,
}

/// A suffix of the sent text (starting at a word) that the continuation may be restating.
#[derive(Debug, Clone)]
struct Candidate {
    /// Where it starts, in non-whitespace characters of the sent text.
    start: usize,
    /// Non-whitespace characters of the continuation that matched it so far.
    matched: usize,
    /// Whether the continuation departed from it.
    dead: bool,
}

/// Aligns a re-asked continuation with the text already sent: buffers its start while it may
/// still be restating that text, then drops the restated part and passes the rest through.
#[derive(Debug)]
pub struct Aligner {
    /// The sent text's non-whitespace characters.
    sent: Vec<char>,
    /// Where each word of the sent text ends, in non-whitespace characters.
    word_ends: Vec<usize>,
    /// Whether the sent text ends with whitespace.
    sent_ends_blank: bool,
    candidates: Vec<Candidate>,
    /// The continuation's text held back while undecided.
    held: String,
    /// Decided: the text passes through.
    decided: bool,
    /// After a dropped restatement, whitespace that would double the sent text's own is dropped.
    trim_leading: bool,
}

impl Aligner {
    /// An aligner for a continuation of `sent`.
    pub fn new(sent: &str) -> Aligner {
        let mut chars = Vec::new();
        let mut word_starts = Vec::new();
        let mut word_ends = Vec::new();
        for word in sent.split_whitespace() {
            word_starts.push(chars.len());
            chars.extend(word.chars());
            word_ends.push(chars.len());
        }
        let words = word_starts.len();
        let candidates = word_starts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || words - i >= MIN_RESTATED_WORDS)
            .map(|(_, &start)| Candidate {
                start,
                matched: 0,
                dead: false,
            })
            .collect();
        Aligner {
            sent: chars,
            word_ends,
            sent_ends_blank: sent.ends_with(char::is_whitespace),
            candidates,
            held: String::new(),
            decided: words == 0,
            trim_leading: false,
        }
    }

    /// Feeds the next piece of the continuation; returns the text to send now (possibly empty).
    pub fn push(&mut self, text: &str) -> Result<String, Misaligned> {
        if self.decided {
            return Ok(self.pass(text));
        }
        for c in text.chars().filter(|c| !c.is_whitespace()) {
            for cand in self.candidates.iter_mut().filter(|c| !c.dead) {
                match self.sent.get(cand.start + cand.matched) {
                    Some(&want) if want == c => cand.matched += 1,
                    Some(_) => cand.dead = true,
                    // Complete: the continuation is past the end of this restatement.
                    None => {}
                }
            }
        }
        self.held.push_str(text);
        let undecided = self
            .candidates
            .iter()
            .any(|c| !c.dead && c.start + c.matched < self.sent.len());
        if undecided {
            return Ok(String::new());
        }
        self.decide()
    }

    /// The continuation ended: decides on what is held and returns the text to send.
    pub fn finish(&mut self) -> Result<String, Misaligned> {
        if self.decided {
            return Ok(String::new());
        }
        self.decide()
    }

    /// Decides on the held text: a complete restatement (the longest) is dropped; a departure
    /// after [`MIN_RESTATED_WORDS`] restated words is refused; anything else is a direct
    /// continuation and passes whole.
    fn decide(&mut self) -> Result<String, Misaligned> {
        let len = self.sent.len();
        let complete = self
            .candidates
            .iter()
            .filter(|c| !c.dead && c.start + c.matched == len)
            .map(|c| c.start)
            .min();
        let held = std::mem::take(&mut self.held);
        self.decided = true;
        let Some(start) = complete else {
            let words = self
                .candidates
                .iter()
                .map(|c| {
                    let end = c.start + c.matched;
                    self.word_ends
                        .iter()
                        .filter(|&&e| e > c.start && e <= end)
                        .count()
                })
                .max()
                .unwrap_or(0);
            if words >= MIN_RESTATED_WORDS {
                return Err(Misaligned { words });
            }
            return Ok(held);
        };
        // Skip the restated characters of the held text.
        let mut skip = len - start;
        let mut cut = held.len();
        for (i, c) in held.char_indices() {
            if skip == 0 {
                cut = i;
                break;
            }
            if !c.is_whitespace() {
                skip -= 1;
            }
        }
        self.trim_leading = self.sent_ends_blank;
        Ok(self.pass(&held[cut..]))
    }

    /// Text after the decision, without whitespace that would double the sent text's own.
    fn pass(&mut self, text: &str) -> String {
        if !self.trim_leading {
            return text.to_owned();
        }
        let rest = text.trim_start();
        if !rest.is_empty() {
            self.trim_leading = false;
        }
        rest.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and finishes; the text sent, or the refusal.
    fn align(sent: &str, pieces: &[&str]) -> Result<String, Misaligned> {
        let mut a = Aligner::new(sent);
        let mut out = String::new();
        for p in pieces {
            out.push_str(&a.push(p)?);
        }
        out.push_str(&a.finish()?);
        Ok(out)
    }

    #[test]
    fn a_direct_continuation_passes_whole_and_at_once() {
        let mut a = Aligner::new("t0 t1 t2 ");
        // "t" could still start a restatement of "t0…"; "t3" cannot.
        assert_eq!(a.push("t").as_deref(), Ok(""));
        assert_eq!(a.push("3 ").as_deref(), Ok("t3 "));
        assert_eq!(a.push("t4 ").as_deref(), Ok("t4 "));
        assert_eq!(
            align("The quick brown", &[" fox", " jumps."]).as_deref(),
            Ok(" fox jumps.")
        );
    }

    #[test]
    fn a_restated_answer_is_dropped_whatever_its_whitespace() {
        let sent = "t0 t1 t2 ";
        assert_eq!(
            align(sent, &["t0\n", "t1\n", "t2\n", "t3 ", "t4 "]).as_deref(),
            Ok("t3 t4 ")
        );
        assert_eq!(align(sent, &["t0  t1 t2 t3 t4 "]).as_deref(), Ok("t3 t4 "));
        // Text cut in the middle of a word: the restatement completes the word.
        assert_eq!(
            align("The quick bro", &["The quick ", "brown fox"]).as_deref(),
            Ok("wn fox")
        );
    }

    #[test]
    fn a_restated_tail_of_three_words_or_more_is_dropped() {
        let sent = "One two. Three four five six";
        assert_eq!(
            align(sent, &["four five six seven"]).as_deref(),
            Ok(" seven")
        );
        assert_eq!(
            align("t0 t1 t2 t3 t4 ", &["t2\nt3\nt4\n", "t5 "]).as_deref(),
            Ok("t5 ")
        );
        // Two words are too few to tell from a coincidence: they pass.
        assert_eq!(align(sent, &["five six"]).as_deref(), Ok("five six"));
    }

    #[test]
    fn a_continuation_that_restates_and_departs_is_refused() {
        assert_eq!(
            align("t0 t1 t2 t3 t4 ", &["t0 t1 t2 t3 x4 t5 "]),
            Err(Misaligned { words: 4 })
        );
        let mut a = Aligner::new("t0 t1 t2 t3 t4 ");
        assert_eq!(a.push("t0 t1 t2 ").as_deref(), Ok(""));
        assert_eq!(a.push("u3"), Err(Misaligned { words: 3 }));
        // A continuation that ends while restating, past the threshold, is refused too.
        assert_eq!(
            align("t0 t1 t2 t3 t4 ", &["t0 t1 t2 t3"]),
            Err(Misaligned { words: 4 })
        );
    }

    #[test]
    fn held_text_is_bounded_by_the_sent_text() {
        let mut a = Aligner::new("a b c");
        assert_eq!(a.push("a b c d e f").as_deref(), Ok(" d e f"));
        assert_eq!(a.push(" g").as_deref(), Ok(" g"));
        let mut empty = Aligner::new("");
        assert_eq!(empty.push("x").as_deref(), Ok("x"));
        assert_eq!(align("t0 ", &[]).as_deref(), Ok(""));
    }

    #[test]
    fn the_reasked_body_carries_the_partial_answer_and_the_instruction() {
        let body = serde_json::json!({
            "model": "m", "max_tokens": 5,
            "messages": [{ "role": "user", "content": "hi" }],
        });
        let asked = reask_body(&body, "t0 t1 ");
        let messages = asked["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0], body["messages"][0]);
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[1]["content"], "t0 t1 ");
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"], INSTRUCTION);
        assert_eq!(asked["max_tokens"], 5);
    }
}

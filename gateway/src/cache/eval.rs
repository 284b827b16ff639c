//! `llmgw cache-eval`: precision and recall of near-duplicate hits on a labelled set of prompt
//! pairs (`examples/cache-eval/pairs.jsonl`), at several thresholds, with and without the
//! [`facts`](super::facts) guard.
//!
//! A pair is two final user turns of the same conversation, labelled `paraphrase` (the answer
//! of one may be served for the other) or `near_miss` (it may not). A pair is a hit when
//! near-duplicate matching would serve the first one's answer for the second: the guard allows
//! it and the similarity is at or above the threshold. Precision is the share of hits that are
//! paraphrases; recall the share of paraphrases that hit.

use super::similar::Prompt;
use crate::keys_cmd::CmdError;
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Options of `llmgw cache-eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The labelled pairs: JSON lines `{"a": …, "b": …, "label": "paraphrase"|"near_miss",
    /// "kind": …}`.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "examples/cache-eval/pairs.jsonl"
    )]
    pub pairs: PathBuf,
    /// Thresholds to evaluate, comma-separated.
    #[arg(
        long,
        value_name = "T,…",
        value_delimiter = ',',
        default_value = "0.8,0.85,0.9,0.93,0.95,0.97"
    )]
    pub thresholds: Vec<f64>,
}

/// One labelled pair.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    a: String,
    b: String,
    label: Label,
    kind: String,
}

/// Whether a pair may share an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Label {
    /// The same question: a hit is right.
    Paraphrase,
    /// A question with another answer: a hit is wrong.
    NearMiss,
}

/// A pair as matching sees it.
struct Scored {
    label: Label,
    kind: String,
    similarity: f32,
    guarded: bool,
}

/// The counts of one threshold and guard setting.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Score {
    /// Paraphrases that hit.
    pub true_hits: usize,
    /// Paraphrases.
    pub paraphrases: usize,
    /// Near misses that hit.
    pub wrong_hits: usize,
    /// Near misses.
    pub near_misses: usize,
    /// Wrong hits by kind of near miss.
    pub wrong_by_kind: BTreeMap<String, usize>,
}

impl Score {
    /// Hits that were paraphrases (1 when nothing hit).
    pub fn precision(&self) -> f64 {
        let hits = self.true_hits + self.wrong_hits;
        if hits == 0 {
            1.0
        } else {
            self.true_hits as f64 / hits as f64
        }
    }

    /// Paraphrases that hit.
    pub fn recall(&self) -> f64 {
        if self.paraphrases == 0 {
            0.0
        } else {
            self.true_hits as f64 / self.paraphrases as f64
        }
    }
}

/// Reads and scores the pairs of `text` (`path` names it in errors).
fn score_pairs(path: &str, text: &str) -> Result<Vec<Scored>, CmdError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(line)
            .map_err(|e| CmdError::Usage(format!("{path}:{}: not a labelled pair: {e}", i + 1)))?;
        let (a, b) = (Prompt::of(&pair.a), Prompt::of(&pair.b));
        out.push(Scored {
            label: pair.label,
            kind: pair.kind,
            similarity: a.vector.cosine(&b.vector.dense()),
            guarded: a.facts == b.facts,
        });
    }
    if out.is_empty() {
        return Err(CmdError::Usage(format!("{path}: no pairs")));
    }
    Ok(out)
}

/// The counts at `threshold`, with or without the guard.
fn score(pairs: &[Scored], threshold: f64, guard: bool) -> Score {
    let mut s = Score::default();
    for p in pairs {
        let hit = f64::from(p.similarity) >= threshold - 1e-6 && (p.guarded || !guard);
        match p.label {
            Label::Paraphrase => {
                s.paraphrases += 1;
                s.true_hits += usize::from(hit);
            }
            Label::NearMiss => {
                s.near_misses += 1;
                if hit {
                    s.wrong_hits += 1;
                    *s.wrong_by_kind.entry(p.kind.clone()).or_default() += 1;
                }
            }
        }
    }
    s
}

/// Runs `llmgw cache-eval`: a Markdown table of precision and recall per threshold.
pub fn run(args: EvalArgs) -> Result<String, CmdError> {
    let path = args.pairs.display().to_string();
    let text = std::fs::read_to_string(&args.pairs)
        .map_err(|e| CmdError::Usage(format!("cannot read {path}: {e}")))?;
    if let Some(t) = args.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(CmdError::Usage(format!(
            "--thresholds: {t} is not in [0, 1]"
        )));
    }
    let pairs = score_pairs(&path, &text)?;
    Ok(table(&path, &pairs, &args.thresholds))
}

fn table(path: &str, pairs: &[Scored], thresholds: &[f64]) -> String {
    let first = score(pairs, 0.0, true);
    let mut out = format!(
        "{path}: {} paraphrases, {} near misses; matcher: lexical (character n-grams)\n\n",
        first.paraphrases, first.near_misses
    );
    out.push_str("| threshold | guard | precision | recall | wrong hits | wrong hits by kind |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for &t in thresholds {
        for guard in [true, false] {
            let s = score(pairs, t, guard);
            let kinds: Vec<String> = s
                .wrong_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "| {t} | {} | {:.3} | {:.3} ({}/{}) | {}/{} | {} |",
                if guard { "facts" } else { "none" },
                s.precision(),
                s.recall(),
                s.true_hits,
                s.paraphrases,
                s.wrong_hits,
                s.near_misses,
                kinds.join(", "),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_and_recall_count_hits_by_label() {
        let text = r#"{"a":"Translate this email into French: the invoice for March is attached, please confirm the payment date.","b":"Translate this email into German: the invoice for March is attached, please confirm the payment date.","label":"near_miss","kind":"language"}
{"a":"Summarise this ticket: the app crashes","b":"summarise this ticket: the app crashes!","label":"paraphrase","kind":"retyped"}
{"a":"Write a poem about the sea","b":"Tell me how tall Everest is","label":"paraphrase","kind":"reworded"}
"#;
        let pairs = score_pairs("t", text).expect("pairs");
        let guarded = score(&pairs, 0.9, true);
        assert_eq!((guarded.true_hits, guarded.paraphrases), (1, 2));
        assert_eq!((guarded.wrong_hits, guarded.near_misses), (0, 1));
        assert_eq!(guarded.precision(), 1.0);
        assert_eq!(guarded.recall(), 0.5);
        let open = score(&pairs, 0.9, false);
        assert_eq!(open.wrong_hits, 1);
        assert_eq!(open.wrong_by_kind.get("language"), Some(&1));
        assert_eq!(open.precision(), 0.5);
    }

    #[test]
    fn a_bad_line_is_named() {
        let Err(e) = score_pairs("set.jsonl", "{\"a\":\"x\"}\n") else {
            panic!("accepted");
        };
        assert!(
            e.to_string()
                .starts_with("set.jsonl:1: not a labelled pair"),
            "{e}"
        );
    }

    #[test]
    fn the_bundled_set_meets_the_bundled_thresholds() {
        let text = include_str!("../../../examples/cache-eval/pairs.jsonl");
        let pairs = score_pairs("pairs.jsonl", text).expect("pairs");
        assert!(pairs.len() >= 300);
        for threshold in BUNDLED_THRESHOLDS {
            let s = score(&pairs, threshold, true);
            assert!(
                s.precision() >= 0.99,
                "{threshold}: precision {} ({:?})",
                s.precision(),
                s.wrong_by_kind
            );
        }
    }

    /// The `semantic_threshold`s of policies/cache.yaml.
    const BUNDLED_THRESHOLDS: [f64; 2] = [0.9, 0.95];
}

//! The near-duplicate thresholds of each policy revision.
//!
//! The compiled policy gives a model's cache TTL but not its `semantic_threshold`, so the
//! gateway reads the `kind: Cache` documents of a revision itself when it compiles that
//! revision, and keeps the thresholds by revision id. A revision id names its content (a
//! commit, or a content hash for a directory), so what is kept for it never goes stale; the
//! few most recent revisions are kept, enough for requests still finishing on an older one.

use llmgw_engine::model::CacheDoc;
use llmgw_engine::source::PolicyFile;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// Revisions kept.
const KEPT: usize = 8;

/// Thresholds by logical model.
type Thresholds = HashMap<String, f64>;

/// The thresholds of the revisions kept, oldest first.
type Kept = Vec<(String, Arc<Thresholds>)>;

static BY_REVISION: LazyLock<RwLock<Kept>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Reads the thresholds of a revision that compiled from `files`.
pub fn remember(files: &[PolicyFile], revision: &str) {
    let thresholds = Arc::new(read(files));
    let mut kept = BY_REVISION.write().unwrap_or_else(|e| e.into_inner());
    kept.retain(|(r, _)| r != revision);
    kept.push((revision.to_owned(), thresholds));
    if kept.len() > KEPT {
        kept.remove(0);
    }
}

/// The near-duplicate threshold of `model` in `revision`, when its cache rule sets one.
pub fn threshold(revision: &str, model: &str) -> Option<f64> {
    let kept = BY_REVISION.read().unwrap_or_else(|e| e.into_inner());
    let (_, t) = kept.iter().rev().find(|(r, _)| r == revision)?;
    t.get(model).copied()
}

/// The `semantic_threshold` of every cache rule of the files (already validated by the
/// compile that preceded).
fn read(files: &[PolicyFile]) -> Thresholds {
    let mut out = HashMap::new();
    for file in files {
        let Ok(text) = std::str::from_utf8(&file.bytes) else {
            continue;
        };
        // Cheap test first: most files are of other kinds.
        if !text.contains("Cache") {
            continue;
        }
        let Ok(root) = llmgw_engine::yaml::parse(text) else {
            continue;
        };
        let json = root.to_json();
        if json.get("kind").and_then(|k| k.as_str()) != Some("Cache") {
            continue;
        }
        let Ok(doc) = serde_json::from_value::<CacheDoc>(json) else {
            continue;
        };
        for rule in doc.rules {
            if let Some(t) = rule.semantic_threshold {
                out.insert(rule.model, t.clamp(0.0, 1.0));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> PolicyFile {
        PolicyFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn thresholds_are_read_per_revision() {
        let cache = "apiVersion: llmgw.dev/v1\nkind: Cache\ndefault_ttl_secs: 60\nrules:\n  \
                     - model: a\n    ttl_secs: 10\n    semantic_threshold: 0.9\n  \
                     - model: b\n    ttl_secs: 10\n";
        remember(
            &[file("cache.yaml", cache), file("m.yaml", "kind: Models\n")],
            "rules-test-1",
        );
        assert_eq!(threshold("rules-test-1", "a"), Some(0.9));
        assert_eq!(threshold("rules-test-1", "b"), None);
        assert_eq!(threshold("rules-test-2", "a"), None);
        remember(&[], "rules-test-2");
        assert_eq!(threshold("rules-test-2", "a"), None);
        assert_eq!(threshold("rules-test-1", "a"), Some(0.9));
    }
}

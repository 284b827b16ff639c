//! Near-duplicate matching: a deterministic text vector and a bounded index of recent prompts.
//!
//! The vector is lexical, not semantic: term frequencies of the character 3-, 4- and 5-grams of
//! the normalised prompt, hashed with a random sign into [`DIMS`] dimensions (the signed
//! hashing keeps collisions from inflating the similarity of unrelated texts) and scaled to
//! unit length, so the cosine of two vectors is their dot product. It catches prompts that
//! differ in case, spacing, punctuation or a few words; it cannot tell that two differently
//! worded prompts mean the same thing, and it will call two prompts alike that differ only in
//! a word that changes the answer ("capital of France" / "capital of Spain") if the threshold
//! is set low. No model, no network.
//!
//! The index keeps, per bucket (tenant, model, every parameter and every message but the final
//! user turn), the [`BUCKET_CAP`] most recent final turns stored, each with its
//! [`Facts`]; a lookup compares against those with the same facts only.

use super::facts::Facts;
use super::key::{self, Digest};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Dimensions of the hashed vector.
pub const DIMS: usize = 1024;
/// Prompts compared per bucket: the most recently stored.
pub const BUCKET_CAP: usize = 32;
/// Character n-gram lengths.
const NGRAMS: std::ops::RangeInclusive<usize> = 3..=5;

/// A unit-length sparse vector: sorted dimensions and their weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Vector {
    dims: Box<[u16]>,
    weights: Box<[f32]>,
}

impl Vector {
    /// The vector of a normalised prompt.
    pub fn of(text: &str) -> Vector {
        let chars: Vec<char> = text.chars().collect();
        let mut dense = vec![0f32; DIMS];
        let mut add = |gram: &[char]| {
            let h = hash(gram);
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            dense[(h % DIMS as u64) as usize] += sign;
        };
        if chars.len() < *NGRAMS.start() {
            add(&chars);
        }
        for n in NGRAMS {
            chars.windows(n).for_each(&mut add);
        }
        let norm = dense.iter().map(|w| w * w).sum::<f32>().sqrt();
        let (dims, weights): (Vec<u16>, Vec<f32>) = dense
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .map(|(i, w)| (i as u16, w / norm))
            .unzip();
        Vector {
            dims: dims.into(),
            weights: weights.into(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.dims.len() * (2 + 4) + std::mem::size_of::<Self>()
    }

    /// The vector as `DIMS` weights, to compare many vectors against.
    pub fn dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; DIMS];
        for (d, w) in self.dims.iter().zip(self.weights.iter()) {
            out[*d as usize] = *w;
        }
        out
    }

    /// Cosine similarity with a vector given by [`Vector::dense`] (a dimension past its end,
    /// of a vector read back from a shared cache, counts as 0).
    pub fn cosine(&self, dense: &[f32]) -> f32 {
        self.dims
            .iter()
            .zip(self.weights.iter())
            .map(|(d, w)| w * dense.get(usize::from(*d)).copied().unwrap_or(0.0))
            .sum()
    }
}

/// FNV-1a over the characters, then a finaliser that spreads the bits (deterministic across
/// runs and machines, unlike the standard library's hasher).
fn hash(gram: &[char]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in gram {
        for b in (*c as u32).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A final user turn as near-duplicate matching sees it: its vector and its facts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prompt {
    /// The lexical vector of the normalised text.
    pub vector: Vector,
    /// What must be equal for a hit ([`Facts`]).
    pub facts: Facts,
}

impl Prompt {
    /// The prompt of a final user turn, as the client wrote it.
    pub fn of(text: &str) -> Prompt {
        Prompt {
            vector: Vector::of(&key::normalise(text)),
            facts: Facts::of(text),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.vector.bytes() + self.facts.bytes()
    }
}

/// A prompt of the index: the cache key of its answer and the prompt.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The cache key of the answer.
    pub key: Digest,
    /// Which storing of that key (a key stored again is a new entry).
    pub id: u64,
    /// The prompt.
    pub prompt: Arc<Prompt>,
}

/// Recent prompts per bucket. Every slot belongs to a live cache entry or to one that has just
/// gone (its removal takes the slot out); lookups check the cache, so a slot found stale is
/// only skipped.
#[derive(Debug, Default)]
pub struct Index {
    buckets: Mutex<HashMap<Digest, VecDeque<Slot>>>,
}

impl Index {
    /// Adds a prompt to its bucket, forgetting the oldest beyond [`BUCKET_CAP`].
    pub fn add(&self, bucket: Digest, slot: Slot) {
        let mut buckets = self.lock();
        let list = buckets.entry(bucket).or_default();
        list.retain(|s| s.key != slot.key);
        list.push_front(slot);
        list.truncate(BUCKET_CAP);
    }

    /// Takes out the slot of one storing of `key`.
    pub fn remove(&self, bucket: &Digest, key: &Digest, id: u64) {
        let mut buckets = self.lock();
        if let Some(list) = buckets.get_mut(bucket) {
            list.retain(|s| !(s.key == *key && s.id == id));
            if list.is_empty() {
                buckets.remove(bucket);
            }
        }
    }

    /// The prompts of a bucket, most recent first.
    pub fn slots(&self, bucket: &Digest) -> Vec<Slot> {
        self.lock()
            .get(bucket)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Buckets held.
    pub fn buckets(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, VecDeque<Slot>>> {
        // A panic while holding the lock leaves a consistent map: every operation is a
        // single call on it.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(a: &str, b: &str) -> f32 {
        Vector::of(a).cosine(&Vector::of(b).dense())
    }

    #[test]
    fn the_vector_is_deterministic_and_unit_length() {
        let v = Vector::of("user: summarise this ticket\n");
        assert_eq!(v, Vector::of("user: summarise this ticket\n"));
        assert!((v.cosine(&v.dense()) - 1.0).abs() < 1e-5);
        assert!((Vector::of("ab").cosine(&Vector::of("ab").dense()) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn near_duplicates_are_close_and_different_prompts_are_not() {
        let ticket = "user: summarise the following support ticket in two sentences. the \
                      customer cannot log in after resetting their password; the dashboard \
                      answers 403 since monday and clearing cookies did not help.\n";
        let typo = "user: summarise the following support ticket in two sentences. the \
                    customer cannot log in after resetting their password; the dashboard \
                    answers 403 since monday and clearing the cookies did not help!\n";
        let other = "user: write a short poem about the sea at night, with rhymes.\n";
        let near = sim(ticket, typo);
        let far = sim(ticket, other);
        assert!(near > 0.95, "near-duplicate: {near}");
        assert!(far < 0.5, "different prompt: {far}");
        // Lexical, not semantic: one changed word in a short prompt moves it a lot.
        let france = sim(
            "user: what is the capital of france?\n",
            "user: what is the capital of spain?\n",
        );
        assert!(france < 0.9, "{france}");
    }

    #[test]
    fn the_index_keeps_the_most_recent_prompts_of_a_bucket() {
        let index = Index::default();
        let v = Arc::new(Prompt::of("x"));
        let bucket = [1u8; 32];
        for i in 0..(BUCKET_CAP as u8 + 5) {
            let slot = Slot {
                key: [i; 32],
                id: u64::from(i),
                prompt: v.clone(),
            };
            index.add(bucket, slot);
        }
        let slots = index.slots(&bucket);
        assert_eq!(slots.len(), BUCKET_CAP);
        assert_eq!(slots[0].key, [BUCKET_CAP as u8 + 4; 32]);
        index.remove(&bucket, &[BUCKET_CAP as u8 + 4; 32], 0);
        assert_eq!(index.slots(&bucket).len(), BUCKET_CAP, "another storing");
        index.remove(
            &bucket,
            &[BUCKET_CAP as u8 + 4; 32],
            u64::from(BUCKET_CAP as u8 + 4),
        );
        assert_eq!(index.slots(&bucket).len(), BUCKET_CAP - 1);
        for s in index.slots(&bucket) {
            index.remove(&bucket, &s.key, s.id);
        }
        assert_eq!(index.buckets(), 0);
    }
}

//! Split arithmetic: which arm serves a request, given the candidate's weight.
//!
//! The random number is an input, so the choice is a pure function the gateway, tests and
//! replays share. A per-request split draws `u` fresh for every request; a sticky split derives
//! it from a stable hash of a key, so the same key stays on the same arm while the weight holds
//! and, as the weight grows, only ever moves from the baseline to the candidate.

use serde::{Deserialize, Serialize};

use crate::spec::Split;

/// The two arms of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The version currently serving.
    Baseline,
    /// The new version being rolled out.
    Candidate,
}

/// The arm chosen for one request and the candidate probability to record with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Which arm serves the request.
    pub arm: Arm,
    /// Probability the request had of going to the candidate: `w` in the e-process.
    pub w: f64,
}

/// Candidate probability for a weight in percent, clamped to [0, 1] (0 for NaN).
pub fn candidate_probability(weight_percent: f64) -> f64 {
    if weight_percent.is_nan() {
        0.0
    } else {
        (weight_percent / 100.0).clamp(0.0, 1.0)
    }
}

/// The arm for a uniform number `u` in [0, 1): the candidate when `u < weight/100`.
pub fn pick(weight_percent: f64, u: f64) -> Arm {
    if u < candidate_probability(weight_percent) {
        Arm::Candidate
    } else {
        Arm::Baseline
    }
}

/// A stable number in [0, 1) for a key: xxh3-64 of the key seeded with `salt` (use a
/// per-canary value so different canaries pick independent sets of keys), top 53 bits.
pub fn sticky_unit(key: &str, salt: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), salt);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Routes one request: per request with `u`, or sticky on `key` when the split is sticky and a
/// key is known (without one, a sticky split falls back to `u`).
pub fn route(split: Split, weight_percent: f64, u: f64, key: Option<&str>, salt: u64) -> Route {
    let unit = match (split, key) {
        (Split::StickyKey | Split::StickyUser, Some(key)) => sticky_unit(key, salt),
        _ => u,
    };
    Route {
        arm: pick(weight_percent, unit),
        w: candidate_probability(weight_percent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_compares_u_with_the_weight() {
        assert_eq!(pick(5.0, 0.049), Arm::Candidate);
        assert_eq!(pick(5.0, 0.05), Arm::Baseline);
        assert_eq!(pick(0.0, 0.0), Arm::Baseline);
        assert_eq!(pick(100.0, 0.999_999), Arm::Candidate);
        assert_eq!(pick(f64::NAN, 0.0), Arm::Baseline);
        assert_eq!(candidate_probability(250.0), 1.0);
    }

    #[test]
    fn sticky_keys_are_stable_and_roughly_uniform() {
        let a = sticky_unit("user-42", 7);
        assert_eq!(a, sticky_unit("user-42", 7));
        assert_ne!(a, sticky_unit("user-42", 8));
        let n = 20_000;
        let hits = (0..n)
            .filter(|i| sticky_unit(&format!("user-{i}"), 1) < 0.05)
            .count();
        // 5% of 20,000 = 1,000 with a standard deviation of about 31.
        assert!((900..1100).contains(&hits), "{hits}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&sticky_unit(&i.to_string(), 3))));
    }

    #[test]
    fn sticky_keys_only_move_towards_the_candidate_as_weight_grows() {
        for i in 0..1000 {
            let key = format!("k{i}");
            let at_5 = route(Split::StickyKey, 5.0, 0.99, Some(&key), 11).arm;
            let at_25 = route(Split::StickyKey, 25.0, 0.99, Some(&key), 11).arm;
            assert!(at_5 == Arm::Baseline || at_25 == Arm::Candidate);
        }
    }

    #[test]
    fn route_records_w_and_falls_back_without_a_key() {
        let r = route(Split::StickyUser, 25.0, 0.1, None, 0);
        assert_eq!(
            r,
            Route {
                arm: Arm::Candidate,
                w: 0.25
            }
        );
        let r = route(Split::PerRequest, 25.0, 0.3, Some("ignored"), 0);
        assert_eq!(r.arm, Arm::Baseline);
    }
}

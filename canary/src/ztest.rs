//! The classical pooled two-proportion z-test and its fixed-horizon sample size.
//!
//! Valid only when looked at once, at a horizon fixed in advance; the simulation uses it to show
//! what repeated looks cost and what a fixed horizon needs. Normal tails come from statrs,
//! checked against reference values in the tests.

use statrs::distribution::{ContinuousCDF, Normal};

/// Result of a pooled two-proportion z-test of arm A against arm B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZTest {
    /// `(p̂_A − p̂_B) / √(p̂(1−p̂)(1/n_A + 1/n_B))` with the pooled proportion `p̂`.
    pub z: f64,
    /// One-sided p-value for "A is larger".
    pub p_larger: f64,
    /// Two-sided p-value.
    pub p_two_sided: f64,
}

/// Pooled z-test of `events_a` of `n_a` against `events_b` of `n_b`; `None` when either arm is
/// empty or the pooled proportion is 0 or 1 (no variance to test against).
pub fn pooled_two_proportion(events_a: u64, n_a: u64, events_b: u64, n_b: u64) -> Option<ZTest> {
    if n_a == 0 || n_b == 0 {
        return None;
    }
    let (na, nb) = (n_a as f64, n_b as f64);
    let pooled = (events_a + events_b) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se <= 0.0 || !se.is_finite() {
        return None;
    }
    let z = (events_a as f64 / na - events_b as f64 / nb) / se;
    let n = Normal::standard();
    Some(ZTest {
        z,
        p_larger: n.sf(z),
        p_two_sided: (2.0 * n.sf(z.abs())).min(1.0),
    })
}

/// The z value a one-sided test at level `alpha` must exceed.
pub fn one_sided_critical(alpha: f64) -> f64 {
    Normal::standard().inverse_cdf(1.0 - alpha)
}

/// Candidate requests a one-sided pooled z-test needs to detect a candidate rate `p_candidate`
/// against a baseline rate `p_base` with the given power, when a share `w` of traffic goes to
/// the candidate (so the baseline has `(1−w)/w` times as many requests). Standard formula for
/// unequal allocation: `n = [z_α·√(p̄q̄(1+1/k)) + z_β·√(p₁q₁ + p₀q₀/k)]² / (p₁−p₀)²`.
pub fn fixed_horizon_candidate_requests(
    p_base: f64,
    p_candidate: f64,
    w: f64,
    alpha: f64,
    power: f64,
) -> u64 {
    let k = (1.0 - w) / w;
    let pooled = (p_candidate + k * p_base) / (1.0 + k);
    let z_alpha = one_sided_critical(alpha);
    let z_beta = Normal::standard().inverse_cdf(power);
    let spread = z_alpha * (pooled * (1.0 - pooled) * (1.0 + 1.0 / k)).sqrt()
        + z_beta * (p_candidate * (1.0 - p_candidate) + p_base * (1.0 - p_base) / k).sqrt();
    (spread * spread / (p_candidate - p_base).powi(2)).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    // Values from shared/reference/statistics.json, "two_proportion_z" (scipy/statsmodels).
    #[test]
    fn matches_reference_two_proportion_z() {
        let t = pooled_two_proportion(18, 2000, 190, 38000).unwrap();
        assert!(close(t.z, 2.424193217, 1e-9), "{}", t.z);
        assert!(close(t.p_larger, 0.007671220069, 1e-8), "{}", t.p_larger);
        assert!(
            close(t.p_two_sided, 0.01534244014, 1e-8),
            "{}",
            t.p_two_sided
        );

        let t = pooled_two_proportion(30, 2000, 190, 38000).unwrap();
        assert!(close(t.z, 5.893768347, 1e-9), "{}", t.z);
        assert!(close(t.p_larger, 1.887431388e-09, 1e-7), "{}", t.p_larger);
    }

    #[test]
    fn degenerate_samples_have_no_test() {
        assert_eq!(pooled_two_proportion(0, 100, 0, 100), None);
        assert_eq!(pooled_two_proportion(0, 0, 3, 100), None);
        assert_eq!(pooled_two_proportion(5, 5, 9, 9), None);
    }

    #[test]
    fn critical_values() {
        assert!(close(one_sided_critical(0.01), 2.326347874, 1e-9));
        assert!(close(one_sided_critical(0.05), 1.644853627, 1e-9));
    }

    #[test]
    fn sample_size_for_an_error_rate_doubling() {
        // Worked by hand: w = 0.05 (k = 19), p0 = 0.01, p1 = 0.02, pooled 0.0105:
        // [2.3263·√(0.0105·0.9895·20/19) + 0.8416·√(0.0196 + 0.0099/19)]² / 0.01² ≈ 1315.
        let n = fixed_horizon_candidate_requests(0.01, 0.02, 0.05, 0.01, 0.8);
        assert!((1310..=1320).contains(&n), "{n}");
        // Equal allocation (k = 1) has a smaller baseline to compare with, so the candidate needs
        // more: [2.3263·√(0.015·0.985·2) + 0.8416·√(0.0196 + 0.0099)]² / 0.01² ≈ 2965.
        let equal = fixed_horizon_candidate_requests(0.01, 0.02, 0.5, 0.01, 0.8);
        assert!((2960..=2970).contains(&equal), "{equal}");
    }
}

//! Phase 6: the real cost, from the upstream `usage` and the served model's prices.

use crate::upstream::Usage;
use llmgw_engine::CompiledPolicy;

/// Tokens and cost of one attempt that produced output.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Index of the logical model.
    pub model: usize,
    /// Tokens.
    pub usage: Usage,
    /// Whether `usage` was estimated (a stream cut before the provider reported it).
    pub estimated: bool,
}

/// The bill of a request: one charge per attempt that produced output.
#[derive(Debug, Clone, Default)]
pub struct Bill {
    /// The charges.
    pub charges: Vec<Charge>,
}

impl Bill {
    /// Total tokens.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        self.charges.iter().for_each(|c| u.add(c.usage));
        u
    }

    /// Total cost in USD.
    pub fn cost_usd(&self, policy: &CompiledPolicy) -> f64 {
        self.charges
            .iter()
            .filter_map(|c| {
                policy
                    .models()
                    .get(c.model)
                    .map(|m| m.price.cost(c.usage.input_tokens, c.usage.output_tokens))
            })
            .sum()
    }
}

/// Formats a cost for the `x-llmgw-cost-usd` header.
pub fn format_cost(usd: f64) -> String {
    let s = format!("{usd:.8}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::format_cost;

    #[test]
    fn formats_costs() {
        assert_eq!(format_cost(0.0), "0");
        assert_eq!(format_cost(0.000123), "0.000123");
        assert_eq!(format_cost(1.5), "1.5");
    }
}

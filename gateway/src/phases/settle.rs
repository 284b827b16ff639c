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

    /// The usage of the answer the client received: the prompt once (as the first attempt
    /// counted it) and the completion tokens of every attempt. A resumed attempt writes only
    /// the rest of the answer; the partial answer it was given is input the gateway paid for
    /// ([`Bill::usage`]), not output the client got twice.
    pub fn delivered(&self) -> Usage {
        Usage {
            input_tokens: self.charges.first().map_or(0, |c| c.usage.input_tokens),
            output_tokens: self.charges.iter().map(|c| c.usage.output_tokens).sum(),
        }
    }

    /// Total cost in USD (`0.0`, never `-0.0`, when nothing was charged).
    pub fn cost_usd(&self, policy: &CompiledPolicy) -> f64 {
        self.charges
            .iter()
            .filter_map(|c| {
                policy
                    .models()
                    .get(c.model)
                    .map(|m| m.price.cost(c.usage.input_tokens, c.usage.output_tokens))
            })
            // Not `sum()`: the sum of no `f64` is `-0.0`.
            .fold(0.0, |total, cost| total + cost)
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
    use super::{format_cost, Bill, Charge};
    use crate::upstream::Usage;

    #[test]
    fn a_resumed_answer_is_delivered_once_and_billed_twice() {
        let charge = |input_tokens, output_tokens| Charge {
            model: 0,
            usage: Usage {
                input_tokens,
                output_tokens,
            },
            estimated: false,
        };
        let bill = Bill {
            charges: vec![charge(4, 3), charge(6, 5)],
        };
        assert_eq!(
            bill.delivered(),
            Usage {
                input_tokens: 4,
                output_tokens: 8
            }
        );
        assert_eq!(
            bill.usage(),
            Usage {
                input_tokens: 10,
                output_tokens: 8
            }
        );
        assert_eq!(Bill::default().delivered(), Usage::default());
    }

    #[test]
    fn formats_costs() {
        assert_eq!(format_cost(0.0), "0");
        assert_eq!(format_cost(0.000123), "0.000123");
        assert_eq!(format_cost(1.5), "1.5");
    }
}

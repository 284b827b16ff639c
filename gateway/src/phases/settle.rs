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
    /// The output tokens the client received of it: `usage.output_tokens`, less the share of
    /// a re-asked continuation's text that restated what the client already had.
    pub delivered_output: u64,
}

impl Charge {
    /// A charge whose whole output reached the client.
    pub fn new(model: usize, usage: Usage, estimated: bool) -> Charge {
        Charge {
            model,
            usage,
            estimated,
            delivered_output: usage.output_tokens,
        }
    }

    /// The charge with only `sent` of the `received` characters of its output passed to the
    /// client: the delivered output tokens are that share of the output, rounded.
    pub fn delivering(mut self, sent: usize, received: usize) -> Charge {
        if received > 0 && sent < received {
            let (sent, received) = (sent as u64, received as u64);
            self.delivered_output = (self.usage.output_tokens * sent + received / 2) / received;
        }
        self
    }
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
    /// counted it) and the completion tokens of every attempt that reached the client. A
    /// resumed attempt writes only the rest of the answer; the partial answer it was given is
    /// input the gateway paid for ([`Bill::usage`]), not output the client got twice, and so
    /// is a restatement of it that a re-asked model wrote and the gateway dropped.
    pub fn delivered(&self) -> Usage {
        Usage {
            input_tokens: self.charges.first().map_or(0, |c| c.usage.input_tokens),
            output_tokens: self.charges.iter().map(|c| c.delivered_output).sum(),
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
        let charge = |input_tokens, output_tokens| {
            let usage = Usage {
                input_tokens,
                output_tokens,
            };
            Charge::new(0, usage, false)
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
    fn a_dropped_restatement_is_billed_but_not_delivered() {
        let usage = |input_tokens, output_tokens| Usage {
            input_tokens,
            output_tokens,
        };
        // 3 tokens before the break; the re-asked model wrote 8, of which the first 3 (9 of
        // its 24 characters) restated them.
        let bill = Bill {
            charges: vec![
                Charge::new(0, usage(4, 3), false),
                Charge::new(0, usage(20, 8), false).delivering(15, 24),
            ],
        };
        assert_eq!(bill.delivered(), usage(4, 8));
        assert_eq!(bill.usage(), usage(24, 11));
        // Nothing received, or all of it sent: the whole output.
        assert_eq!(
            Charge::new(0, usage(1, 5), true)
                .delivering(0, 0)
                .delivered_output,
            5
        );
        assert_eq!(
            Charge::new(0, usage(1, 5), true)
                .delivering(7, 7)
                .delivered_output,
            5
        );
    }

    #[test]
    fn formats_costs() {
        assert_eq!(format_cost(0.0), "0");
        assert_eq!(format_cost(0.000123), "0.000123");
        assert_eq!(format_cost(1.5), "1.5");
    }
}

//! What a policy change does to real traffic: replay recorded requests through two revisions.

use crate::decision::Decision;
use crate::policy::CompiledPolicy;
use crate::record::DecisionRecord;
use serde::Serialize;
use std::collections::BTreeMap;

/// The outcome of one request under one revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `route`, `downgrade`, `block` or `error`.
    pub action: String,
    /// Rule that decided (or the error).
    pub rule: String,
    /// Model serving first.
    pub model: Option<String>,
    /// Deployment serving first.
    pub deployment: Option<String>,
    /// Recorded tokens at this revision's prices for that model, USD.
    pub cost_usd: f64,
}

/// A request whose decision changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The recorded request's id.
    pub id: String,
    /// The model asked for.
    pub requested_model: String,
    /// Under the base revision.
    pub base: Outcome,
    /// Under the head revision.
    pub head: Outcome,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Base revision.
    pub base_revision: String,
    /// Head revision.
    pub head_revision: String,
    /// Requests replayed.
    pub requests: usize,
    /// Requests whose action, model or deployment changes.
    pub changed: usize,
    /// Changed requests by `base rule → head rule`.
    pub by_rule: BTreeMap<String, usize>,
    /// Changed requests by `base model → head model`.
    pub by_model: BTreeMap<String, usize>,
    /// Recorded tokens at base prices, USD.
    pub base_cost_usd: f64,
    /// Recorded tokens at head prices, USD.
    pub head_cost_usd: f64,
    /// head − base, USD.
    pub cost_delta_usd: f64,
    /// A few changed requests.
    pub examples: Vec<Change>,
}

/// How many changed requests a report shows.
const EXAMPLES: usize = 5;

fn outcome(policy: &CompiledPolicy, record: &DecisionRecord) -> Outcome {
    let input = &record.input;
    let (tokens_in, tokens_out) = if record.tokens_in + record.tokens_out > 0 {
        (record.tokens_in, record.tokens_out)
    } else {
        (
            input.request.input_tokens,
            input.request.max_tokens.unwrap_or(0),
        )
    };
    match policy.decide(&input.context(), input, input) {
        Ok(d) => {
            let cost = served_cost(policy, &d, tokens_in, tokens_out);
            let first = d.primary();
            Outcome {
                action: d.budget_action.as_str().to_owned(),
                rule: d.rule.to_string(),
                model: first.map(|a| a.model.to_string()),
                deployment: first.map(|a| a.deployment.to_string()),
                cost_usd: cost,
            }
        }
        Err(e) => Outcome {
            action: "error".to_owned(),
            rule: e.to_string(),
            model: None,
            deployment: None,
            cost_usd: 0.0,
        },
    }
}

fn served_cost(policy: &CompiledPolicy, d: &Decision, tokens_in: u64, tokens_out: u64) -> f64 {
    d.primary()
        .and_then(|a| policy.model(&a.model))
        .map_or(0.0, |m| m.price.cost(tokens_in, tokens_out))
}

/// Replays every record through both revisions.
pub fn diff(
    base: &CompiledPolicy,
    head: &CompiledPolicy,
    records: &[DecisionRecord],
) -> DiffReport {
    let mut report = DiffReport {
        base_revision: base.revision().to_owned(),
        head_revision: head.revision().to_owned(),
        requests: records.len(),
        changed: 0,
        by_rule: BTreeMap::new(),
        by_model: BTreeMap::new(),
        base_cost_usd: 0.0,
        head_cost_usd: 0.0,
        cost_delta_usd: 0.0,
        examples: Vec::new(),
    };
    for record in records {
        let b = outcome(base, record);
        let h = outcome(head, record);
        report.base_cost_usd += b.cost_usd;
        report.head_cost_usd += h.cost_usd;
        let changed = b.action != h.action || b.model != h.model || b.deployment != h.deployment;
        if !changed {
            continue;
        }
        report.changed += 1;
        let shown =
            |m: &Option<String>, action: &str| m.clone().unwrap_or_else(|| format!("({action})"));
        *report
            .by_rule
            .entry(format!("{} → {}", b.rule, h.rule))
            .or_default() += 1;
        *report
            .by_model
            .entry(format!(
                "{} → {}",
                shown(&b.model, &b.action),
                shown(&h.model, &h.action)
            ))
            .or_default() += 1;
        if report.examples.len() < EXAMPLES {
            report.examples.push(Change {
                id: record.id.clone(),
                requested_model: record.requested_model.clone(),
                base: b,
                head: h,
            });
        }
    }
    report.cost_delta_usd = report.head_cost_usd - report.base_cost_usd;
    report
}

fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

impl DiffReport {
    /// The report as Markdown, ready to post as a pull-request comment.
    pub fn markdown(&self) -> String {
        let pct = |n: usize| {
            if self.requests == 0 {
                0.0
            } else {
                100.0 * n as f64 / self.requests as f64
            }
        };
        let mut out = format!(
            "### llmgw policy diff `{}` → `{}`\n\n**{} of {} recorded requests ({:.1}%) change decision.** Estimated cost of the same traffic: ${:.4} → ${:.4} (**{}${:.4}**, {:+.1}%).\n",
            short(&self.base_revision),
            short(&self.head_revision),
            self.changed,
            self.requests,
            pct(self.changed),
            self.base_cost_usd,
            self.head_cost_usd,
            if self.cost_delta_usd < 0.0 { "−" } else { "+" },
            self.cost_delta_usd.abs(),
            if self.base_cost_usd > 0.0 {
                100.0 * self.cost_delta_usd / self.base_cost_usd
            } else {
                0.0
            }
        );
        if self.changed == 0 {
            out.push_str("\nNo recorded request is decided differently.\n");
            return out;
        }
        for (title, map) in [("rule", &self.by_rule), ("served model", &self.by_model)] {
            out.push_str(&format!("\n| by {title} | requests |\n|---|---:|\n"));
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (k, v) in rows {
                out.push_str(&format!("| {k} | {v} |\n"));
            }
        }
        out.push_str("\n<details><summary>Examples</summary>\n\n| request | model asked | base | head |\n|---|---|---|---|\n");
        for c in &self.examples {
            let show = |o: &Outcome| {
                format!(
                    "{} via `{}` ({})",
                    o.deployment.as_deref().unwrap_or("—"),
                    o.rule,
                    o.action
                )
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                c.id,
                c.requested_model,
                show(&c.base),
                show(&c.head)
            ));
        }
        out.push_str("\n</details>\n");
        out
    }
}

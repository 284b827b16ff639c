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

/// Requests and cost of one slice of the traffic (a tenant, a project).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupSummary {
    /// Requests replayed.
    pub requests: usize,
    /// Requests whose action, model or deployment changes.
    pub changed: usize,
    /// Recorded tokens at base prices, USD.
    pub base_cost_usd: f64,
    /// Recorded tokens at head prices, USD.
    pub head_cost_usd: f64,
    /// head − base, USD.
    pub cost_delta_usd: f64,
}

/// One served model's share of the traffic under each revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelCost {
    /// Requests it serves first under the base revision.
    pub base_requests: usize,
    /// Requests it serves first under the head revision.
    pub head_requests: usize,
    /// What they cost at base prices, USD.
    pub base_cost_usd: f64,
    /// What they cost at head prices, USD.
    pub head_cost_usd: f64,
    /// head − base, USD.
    pub cost_delta_usd: f64,
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
    /// Requests and cost by tenant id (`(none)` for requests without one).
    pub by_tenant: BTreeMap<String, GroupSummary>,
    /// Requests and cost by project id (`(none)` for requests without one).
    pub by_project: BTreeMap<String, GroupSummary>,
    /// Requests and cost by served model (`(block)`, `(error)` for requests none serves).
    pub cost_by_model: BTreeMap<String, ModelCost>,
    /// A few changed requests.
    pub examples: Vec<Change>,
}

/// The key of a principal id in a breakdown.
const NONE: &str = "(none)";
/// How many rows a breakdown table shows.
const ROWS: usize = 10;

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
        by_tenant: BTreeMap::new(),
        by_project: BTreeMap::new(),
        cost_by_model: BTreeMap::new(),
        examples: Vec::new(),
    };
    let shown =
        |m: &Option<String>, action: &str| m.clone().unwrap_or_else(|| format!("({action})"));
    for record in records {
        let b = outcome(base, record);
        let h = outcome(head, record);
        report.base_cost_usd += b.cost_usd;
        report.head_cost_usd += h.cost_usd;
        let changed = b.action != h.action || b.model != h.model || b.deployment != h.deployment;
        let identity = &record.input.identity;
        for (map, id) in [
            (&mut report.by_tenant, &identity.tenant.id),
            (&mut report.by_project, &identity.project.id),
        ] {
            let key = if id.is_empty() { NONE } else { id.as_str() };
            let group = map.entry(key.to_owned()).or_default();
            group.requests += 1;
            group.changed += usize::from(changed);
            group.base_cost_usd += b.cost_usd;
            group.head_cost_usd += h.cost_usd;
            group.cost_delta_usd = group.head_cost_usd - group.base_cost_usd;
        }
        let base_model = report
            .cost_by_model
            .entry(shown(&b.model, &b.action))
            .or_default();
        base_model.base_requests += 1;
        base_model.base_cost_usd += b.cost_usd;
        let head_model = report
            .cost_by_model
            .entry(shown(&h.model, &h.action))
            .or_default();
        head_model.head_requests += 1;
        head_model.head_cost_usd += h.cost_usd;
        if !changed {
            continue;
        }
        report.changed += 1;
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
    for m in report.cost_by_model.values_mut() {
        m.cost_delta_usd = m.head_cost_usd - m.base_cost_usd;
    }
    report
}

/// A signed amount of dollars: `+$0.0123`, `−$0.0045`.
fn signed_usd(usd: f64) -> String {
    let sign = if usd < 0.0 { "−" } else { "+" };
    format!("{sign}${:.4}", usd.abs())
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
            "### llmgw policy diff `{}` → `{}`\n\n**{} of {} recorded requests ({:.1}%) change decision.** Estimated cost of the same traffic: ${:.4} → ${:.4} (**{}**, {:+.1}%).\n",
            short(&self.base_revision),
            short(&self.head_revision),
            self.changed,
            self.requests,
            pct(self.changed),
            self.base_cost_usd,
            self.head_cost_usd,
            signed_usd(self.cost_delta_usd),
            if self.base_cost_usd > 0.0 {
                100.0 * self.cost_delta_usd / self.base_cost_usd
            } else {
                0.0
            }
        );
        if self.changed == 0 {
            out.push_str("\nNo recorded request is decided differently.\n");
        }
        for (title, map) in [("rule", &self.by_rule), ("served model", &self.by_model)] {
            if map.is_empty() {
                continue;
            }
            out.push_str(&format!("\n| by {title} | requests |\n|---|---:|\n"));
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (k, v) in rows {
                out.push_str(&format!("| {k} | {v} |\n"));
            }
        }
        out.push_str(&self.model_costs_markdown());
        for (title, groups) in [("tenant", &self.by_tenant), ("project", &self.by_project)] {
            out.push_str(&groups_markdown(title, groups));
        }
        if self.changed == 0 {
            return out;
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

    /// The per-model cost table: requests and cost each served model takes before and after.
    fn model_costs_markdown(&self) -> String {
        let mut out = String::from(
            "\n| served model | requests before | requests after | cost before | cost after | delta |\n|---|---:|---:|---:|---:|---:|\n",
        );
        let mut rows: Vec<_> = self.cost_by_model.iter().collect();
        rows.sort_by(|a, b| {
            b.1.cost_delta_usd
                .abs()
                .total_cmp(&a.1.cost_delta_usd.abs())
                .then(a.0.cmp(b.0))
        });
        for (model, m) in rows {
            out.push_str(&format!(
                "| {model} | {} | {} | ${:.4} | ${:.4} | {} |\n",
                m.base_requests,
                m.head_requests,
                m.base_cost_usd,
                m.head_cost_usd,
                signed_usd(m.cost_delta_usd)
            ));
        }
        out
    }
}

/// A breakdown table by tenant or project, the groups with most changes first; none when no
/// request carries that id.
fn groups_markdown(title: &str, groups: &BTreeMap<String, GroupSummary>) -> String {
    if groups.keys().all(|k| k == NONE) {
        return String::new();
    }
    let mut out = format!(
        "\n| by {title} | requests | changed | cost before | cost after | delta |\n|---|---:|---:|---:|---:|---:|\n"
    );
    let mut rows: Vec<_> = groups.iter().collect();
    rows.sort_by(|a, b| {
        b.1.changed
            .cmp(&a.1.changed)
            .then(
                b.1.cost_delta_usd
                    .abs()
                    .total_cmp(&a.1.cost_delta_usd.abs()),
            )
            .then(a.0.cmp(b.0))
    });
    for (name, g) in rows.iter().take(ROWS) {
        out.push_str(&format!(
            "| {name} | {} | {} | ${:.4} | ${:.4} | {} |\n",
            g.requests,
            g.changed,
            g.base_cost_usd,
            g.head_cost_usd,
            signed_usd(g.cost_delta_usd)
        ));
    }
    if rows.len() > ROWS {
        out.push_str(&format!("\n…and {} more.\n", rows.len() - ROWS));
    }
    out
}

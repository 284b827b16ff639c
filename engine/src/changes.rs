//! What changed in the decision table between two compiled revisions: which routing rules,
//! models, deployments, providers, budgets, rate limits, downgrades, canaries and cache
//! settings were added, removed or changed, field by field.
//!
//! Where [`crate::diff`] replays traffic to show what a change does, this compares the two
//! policies themselves. Entries are matched by kind and name; a field is compared by value,
//! so moving a declaration to another line changes nothing, while moving a routing rule or a
//! downgrade (whose order decides) changes its `after` field.

use crate::policy::{CompiledPolicy, Location};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// A kind of entry of the decision table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A routing rule.
    Rule,
    /// A logical model.
    Model,
    /// A deployment of a model on a provider.
    Deployment,
    /// A provider region.
    Provider,
    /// A budget.
    Budget,
    /// A rate limit.
    RateLimit,
    /// A downgrade rule.
    Downgrade,
    /// A canary.
    Canary,
    /// The response cache settings of one logical model.
    Cache,
}

/// How an entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the newer revision.
    Added,
    /// Only in the older revision.
    Removed,
    /// In both, with some field different.
    Changed,
}

/// One field whose value differs; `null` on the side where the entry or field is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field, as the policy file names it (`after` for a rule's place in the order).
    pub field: String,
    /// Its value in the older revision.
    pub from: Value,
    /// Its value in the newer revision.
    pub to: Value,
}

/// One entry added, removed or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryChange {
    /// What it is.
    pub kind: EntryKind,
    /// Its name (a deployment's `model@provider` name, a cache entry's model).
    pub name: String,
    /// Added, removed or changed.
    pub change: ChangeKind,
    /// Where it is declared: in the newer revision, or the older one for a removal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The fields that differ (for an addition or a removal, all of them).
    pub fields: Vec<FieldChange>,
}

/// One entry of a revision's decision table.
struct Entry {
    kind: EntryKind,
    name: String,
    location: Option<Location>,
    fields: Map<String, Value>,
}

/// The entries that differ between `from` (the older revision) and `to`: by kind, in the
/// order of [`EntryKind`], then additions and changes as `to` declares them, then removals
/// as `from` declared them. Empty when the decision tables are the same.
pub fn changes(from: &CompiledPolicy, to: &CompiledPolicy) -> Vec<EntryChange> {
    let before = table(from);
    let after = table(to);
    let find = |entries: &[Entry], e: &Entry| {
        entries
            .iter()
            .position(|x| x.kind == e.kind && x.name == e.name)
    };
    let mut out: Vec<EntryChange> = Vec::new();
    for e in &after {
        let change = match find(&before, e) {
            None => entry_change(e, ChangeKind::Added, &Map::new(), &e.fields),
            Some(i) => {
                let c = entry_change(e, ChangeKind::Changed, &before[i].fields, &e.fields);
                if c.fields.is_empty() {
                    continue;
                }
                c
            }
        };
        out.push(change);
    }
    for e in &before {
        if find(&after, e).is_none() {
            out.push(entry_change(e, ChangeKind::Removed, &e.fields, &Map::new()));
        }
    }
    // Stable: within a kind, the order above.
    out.sort_by_key(|c| c.kind);
    out
}

fn entry_change(
    e: &Entry,
    change: ChangeKind,
    from: &Map<String, Value>,
    to: &Map<String, Value>,
) -> EntryChange {
    let mut names: Vec<&String> = from.keys().chain(to.keys()).collect();
    names.sort();
    names.dedup();
    let fields = names
        .into_iter()
        .filter_map(|field| {
            let (a, b) = (
                from.get(field).unwrap_or(&Value::Null),
                to.get(field).unwrap_or(&Value::Null),
            );
            (a != b || change != ChangeKind::Changed).then(|| FieldChange {
                field: field.clone(),
                from: a.clone(),
                to: b.clone(),
            })
        })
        .collect();
    EntryChange {
        kind: e.kind,
        name: e.name.clone(),
        change,
        location: e.location.clone(),
        fields,
    }
}

/// A serializable value's fields as an object, without `name` (the entry's key) and without
/// absent (`null`) ones.
fn fields_of(value: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(mut map)) => {
            map.remove("name");
            map.retain(|_, v| !v.is_null());
            map
        }
        _ => Map::new(),
    }
}

/// An object literal's fields without absent (`null`) ones.
fn object(value: Value) -> Map<String, Value> {
    fields_of(&value)
}

/// Every entry of a policy's decision table.
fn table(p: &CompiledPolicy) -> Vec<Entry> {
    let model = |i: usize| &*p.models[i].name;
    let models = |ix: &[usize]| ix.iter().map(|&i| model(i)).collect::<Vec<_>>();
    let deployment = |i: usize| &*p.deployments[i].name;
    let source = |e: &Option<crate::expr::CompiledExpr>| e.as_ref().map(|e| e.source.clone());
    let mut out = Vec::new();
    let mut push = |kind, name: &str, location: Option<&Location>, fields| {
        out.push(Entry {
            kind,
            name: name.to_owned(),
            location: location.cloned(),
            fields,
        })
    };
    for (i, r) in p.rules.iter().enumerate() {
        let fields = object(json!({
            "after": i.checked_sub(1).map(|j| &*p.rules[j].name),
            "when": source(&r.when),
            "candidates": r.candidates.as_deref().map(models),
            "filter": source(&r.filter),
            "strategy": r.strategy,
            "latency_metric": r.latency_metric,
            "latency_slo_ms": r.latency_slo_ms,
            "weights": (!r.weights.is_empty()).then_some(&r.weights),
            "failover": r.failover,
        }));
        push(EntryKind::Rule, &r.name, Some(&r.location), fields);
    }
    for m in &p.models {
        let fields = object(json!({
            "class": &*m.class,
            "quality": m.quality,
            "context_window": m.context_window,
            "max_output_tokens": m.max_output_tokens,
            "capabilities": m.capabilities,
            "price": m.price,
            "deployments": models_deployments(p, &m.deployments),
        }));
        push(EntryKind::Model, &m.name, Some(&m.location), fields);
    }
    for d in &p.deployments {
        let fields = object(json!({
            "model": &*d.model_name,
            "provider": &*d.provider_name,
            "region": &*d.region,
            "upstream_model": &*d.upstream_model,
            "canary_only": d.canary_only,
            "quota": d.quota,
        }));
        push(EntryKind::Deployment, &d.name, None, fields);
    }
    for provider in &p.providers {
        push(
            EntryKind::Provider,
            &provider.name,
            None,
            fields_of(provider),
        );
    }
    for b in &p.budgets {
        push(
            EntryKind::Budget,
            &b.name,
            Some(&b.location),
            fields_of(&b.spec),
        );
    }
    for r in &p.rate_limits {
        push(
            EntryKind::RateLimit,
            &r.name,
            Some(&r.location),
            fields_of(&r.spec),
        );
    }
    for (i, d) in p.downgrades.iter().enumerate() {
        let fields = object(json!({
            "after": i.checked_sub(1).map(|j| &*p.downgrades[j].name),
            "when": source(&d.when),
            "from": models(&d.from),
            "to": model(d.to),
        }));
        push(EntryKind::Downgrade, &d.name, Some(&d.location), fields);
    }
    for c in &p.canaries {
        let mut fields = fields_of(&c.spec);
        fields.extend(object(json!({
            "model": model(c.model),
            "baseline": deployment(c.baseline),
            "candidate": deployment(c.candidate),
        })));
        push(EntryKind::Canary, &c.name, Some(&c.location), fields);
    }
    for m in &p.models {
        let ttl = p.cache_ttl_secs(&m.name);
        let semantic = p.cache_semantic_threshold(&m.name);
        if ttl > 0 || semantic.is_some() {
            let fields = object(json!({ "ttl_secs": ttl, "semantic_threshold": semantic }));
            push(EntryKind::Cache, &m.name, None, fields);
        }
    }
    out
}

/// The names of a model's routable deployments, in preference order.
fn models_deployments<'p>(p: &'p CompiledPolicy, ix: &[usize]) -> Vec<&'p str> {
    ix.iter().map(|&i| &*p.deployments[i].name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::policy_files;

    const PROVIDERS: &str = "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - {name: p1, type: simulated}\n  - {name: p2, type: simulated}\n";

    fn models(price: f64, quota: &str) -> String {
        format!(
            "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: big\n    class: c\n    quality: 0.9\n    context_window: 8000\n    price: {{input_per_mtok: {price}, output_per_mtok: 2}}\n    deployments:\n      - provider: p1\n        upstream_model: big{quota}\n  - name: small\n    class: c\n    quality: 0.5\n    context_window: 8000\n    price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}\n    deployments:\n      - provider: p2\n        upstream_model: small\n"
        )
    }

    fn policy(files: &[(&str, &str)]) -> CompiledPolicy {
        let files: Vec<_> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
            .collect();
        let outcome = crate::load_files(&policy_files(files), None);
        assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
        outcome.policy.expect("compiles")
    }

    fn routing(rules: &str) -> String {
        format!("apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n{rules}")
    }

    const BATCH: &str = "  - name: batch\n    when: 'request.metadata[\"workload\"] == \"batch\"'\n    candidates: [small]\n";
    const REALTIME: &str = "  - name: realtime\n    when: 'request.metadata[\"workload\"] == \"realtime\"'\n    candidates: [big]\n    strategy: latency\n";

    fn find<'c>(changes: &'c [EntryChange], kind: EntryKind, name: &str) -> &'c EntryChange {
        changes
            .iter()
            .find(|c| c.kind == kind && c.name == name)
            .unwrap_or_else(|| panic!("no {kind:?} `{name}` in {changes:#?}"))
    }

    #[test]
    fn a_revision_against_itself_changes_nothing() {
        let files = [
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            ("routing.yaml", &routing(BATCH)),
        ];
        assert_eq!(changes(&policy(&files), &policy(&files)), vec![]);
    }

    #[test]
    fn rules_added_removed_and_changed_with_their_fields() {
        let old = policy(&[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            ("routing.yaml", &routing(&format!("{BATCH}{REALTIME}"))),
        ]);
        let new_batch = BATCH.replace("[small]", "[small, big]");
        let new = policy(&[
            ("providers.yaml", PROVIDERS),
            (
                "models.yaml",
                &models(1.5, "\n        quota: {requests_per_minute: 60}"),
            ),
            // A comment line moves the rule down: its place in the file is not a change.
            (
                "routing.yaml",
                &routing(&format!("# batch first\n{new_batch}")),
            ),
        ]);
        let c = changes(&old, &new);
        let batch = find(&c, EntryKind::Rule, "batch");
        assert_eq!(batch.change, ChangeKind::Changed);
        assert_eq!(
            batch.fields,
            vec![FieldChange {
                field: "candidates".into(),
                from: json!(["small"]),
                to: json!(["small", "big"]),
            }]
        );
        assert_eq!(batch.location.as_ref().map(|l| l.line), Some(5));
        let realtime = find(&c, EntryKind::Rule, "realtime");
        assert_eq!(realtime.change, ChangeKind::Removed);
        assert!(realtime
            .fields
            .iter()
            .any(|f| f.field == "strategy" && f.from == "latency" && f.to.is_null()));
        let big = find(&c, EntryKind::Model, "big");
        assert_eq!(big.fields.len(), 1, "{big:#?}");
        assert_eq!(big.fields[0].field, "price");
        let deployment = find(&c, EntryKind::Deployment, "big@p1");
        assert_eq!(deployment.fields[0].field, "quota");
        assert_eq!(deployment.fields[0].to["requests_per_minute"], 60.0);
        assert!(
            c.iter().all(|x| x.name != "small"),
            "small did not change: {c:#?}"
        );
        let kinds: Vec<EntryKind> = c.iter().map(|x| x.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted, "grouped by kind");
    }

    #[test]
    fn moving_a_rule_changes_its_place_in_the_order() {
        let old = policy(&[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            ("routing.yaml", &routing(&format!("{BATCH}{REALTIME}"))),
        ]);
        let new = policy(&[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            ("routing.yaml", &routing(&format!("{REALTIME}{BATCH}"))),
        ]);
        let c = changes(&old, &new);
        assert_eq!(c.len(), 2, "{c:#?}");
        let batch = find(&c, EntryKind::Rule, "batch");
        assert_eq!(batch.fields[0].field, "after");
        assert_eq!(
            (&batch.fields[0].from, &batch.fields[0].to),
            (&Value::Null, &json!("realtime"))
        );
    }

    #[test]
    fn budgets_and_cache_settings_are_compared_as_written() {
        const BUDGETS: &str = "apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: monthly\n    scope: tenant\n    period: monthly\n    limit_usd: 10\n    on_exceed: block\n";
        const CACHE: &str = "apiVersion: llmgw.dev/v1\nkind: Cache\ndefault_ttl_secs: 0\nrules:\n  - model: small\n    ttl_secs: 60\n";
        let old = policy(&[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            ("budgets.yaml", BUDGETS),
        ]);
        let new = policy(&[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models(1.0, "")),
            (
                "budgets.yaml",
                &BUDGETS.replace("limit_usd: 10", "limit_usd: 20"),
            ),
            ("cache.yaml", CACHE),
        ]);
        let c = changes(&old, &new);
        let budget = find(&c, EntryKind::Budget, "monthly");
        assert_eq!(
            budget.fields,
            vec![FieldChange {
                field: "limit_usd".into(),
                from: json!(10.0),
                to: json!(20.0),
            }]
        );
        let cache = find(&c, EntryKind::Cache, "small");
        assert_eq!(cache.change, ChangeKind::Added);
        assert_eq!(cache.fields[0].to, json!(60));
        assert_eq!(c.len(), 2, "{c:#?}");
    }
}

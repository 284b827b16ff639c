//! Semantic checks beyond the schemas: references, shadowed rules, cycles, weights.

use crate::diag::Diagnostic;
use crate::load::Parsed;
use crate::model::{self, ProviderType, Strategy};
use crate::policy::{BudgetRule, DowngradeRuleInfo, ModelInfo, RateLimitRule, Rule};
use crate::{index, source};

/// A name as one JSON pointer segment (`/` and `~` escaped).
pub(crate) fn segment(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// A help line listing the names that exist.
pub(crate) fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    if names.is_empty() {
        return "none is declared".to_owned();
    }
    format!(
        "known: {}",
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The lowest `semantic_threshold` at which `llmgw cache-eval` served no wrong answer on its
/// labelled near-miss set (README, "Response cache").
pub(crate) const TESTED_SEMANTIC_FLOOR: f64 = 0.85;

/// A cache rule whose near-duplicate threshold is below the tested floor.
pub(crate) fn cache_threshold(diags: &mut Vec<Diagnostic>, threshold: f64, doc: &Parsed, i: usize) {
    if threshold < TESTED_SEMANTIC_FLOOR {
        diags.push(
            Diagnostic::warning(
                "cache/low-threshold",
                format!(
                    "semantic_threshold {threshold} is below {TESTED_SEMANTIC_FLOOR}, the lowest \
                     threshold measured to serve no wrong near-duplicate answer"
                ),
                Some(doc.loc(&format!("/rules/{i}/semantic_threshold"))),
            )
            .with_help("measure it with `llmgw cache-eval`, or raise it to 0.85 or more"),
        );
    }
}

/// Provider settings that cannot work.
pub(crate) fn provider(diags: &mut Vec<Diagnostic>, p: &model::Provider, doc: &Parsed, i: usize) {
    let base = format!("/providers/{i}");
    let azure_token = p.azure.as_ref().and_then(|a| a.entra_token.as_ref());
    match p.kind {
        ProviderType::Simulated => {}
        ProviderType::AzureOpenai if azure_token.is_some() => {}
        // Signed with the `bedrock` settings' keys, never an `api_key`.
        ProviderType::Bedrock => {}
        // A Vertex provider authenticates with its service account (the schema requires it).
        ProviderType::Vertex => {}
        _ if p.api_key.is_none() => diags.push(Diagnostic::warning(
            "provider/no-key",
            format!(
                "provider `{}` has no `api_key` reference; upstream calls will be unauthenticated",
                p.name
            ),
            Some(doc.loc(&base)),
        )),
        _ => {}
    }
    for (field, present, kind) in [
        ("azure", p.azure.is_some(), ProviderType::AzureOpenai),
        ("bedrock", p.bedrock.is_some(), ProviderType::Bedrock),
        ("vertex", p.vertex.is_some(), ProviderType::Vertex),
    ] {
        if present && p.kind != kind {
            diags.push(
                Diagnostic::warning(
                    "provider/unused-settings",
                    format!(
                        "provider `{}` of type `{}` has `{field}` settings, which only a \
                         provider of type `{}` reads",
                        p.name,
                        type_name(p.kind),
                        type_name(kind)
                    ),
                    Some(doc.loc(&format!("{base}/{field}"))),
                )
                .with_help("remove them, or change the provider's `type`"),
            );
        }
    }
    if p.kind == ProviderType::AzureOpenai && p.api_key.is_some() && azure_token.is_some() {
        diags.push(
            Diagnostic::warning(
                "provider/unused-settings",
                format!(
                    "provider `{}` names both `api_key` and `azure.entra_token`; the Entra ID \
                     token is sent and the key is not",
                    p.name
                ),
                Some(doc.loc(&format!("{base}/api_key"))),
            )
            .with_help("keep one of the two"),
        );
    }
    let unsent_key = match p.kind {
        ProviderType::Bedrock => Some((
            "bedrock",
            "names an `api_key`, which is never sent; requests are signed with \
             `bedrock.access_key_id` and `bedrock.secret_access_key`",
        )),
        ProviderType::Vertex => Some((
            "vertex",
            "has an `api_key`; Vertex AI is called with access tokens of \
             `vertex.service_account` and the key is not sent",
        )),
        _ => None,
    };
    if let (Some((kind, why)), Some(_)) = (unsent_key, &p.api_key) {
        diags.push(
            Diagnostic::warning(
                "provider/unused-settings",
                format!("provider `{}` of type `{kind}` {why}", p.name),
                Some(doc.loc(&format!("{base}/api_key"))),
            )
            .with_help("remove `api_key`"),
        );
    }
    if let Some(probe) = p.health_probe {
        if probe.timeout_ms > probe.interval_secs.saturating_mul(1000) {
            diags.push(
                Diagnostic::warning(
                    "provider/probe-timeout",
                    format!(
                        "provider `{}`: a health probe may take {} ms, longer than its {} s \
                         interval; probes then come less often than the interval says",
                        p.name, probe.timeout_ms, probe.interval_secs
                    ),
                    Some(doc.loc(&format!("{base}/health_probe/timeout_ms"))),
                )
                .with_help("set `timeout_ms` below `interval_secs` (in milliseconds)"),
            );
        }
    }
}

/// The policy spelling of a provider type.
fn type_name(kind: ProviderType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Prices of a model.
pub(crate) fn model(diags: &mut Vec<Diagnostic>, m: &model::Model, doc: &Parsed, i: usize) {
    // Output tokens cost nothing only on a model that produces none (embeddings).
    let chats = m.capabilities.contains(&model::Capability::Chat);
    for (field, value, zero_ok) in [
        ("input_per_mtok", m.price.input_per_mtok, false),
        ("output_per_mtok", m.price.output_per_mtok, !chats),
    ] {
        if value < 0.0 || (value == 0.0 && !zero_ok) {
            diags.push(
                Diagnostic::error(
                    "model/price-not-positive",
                    format!("model `{}`: `{field}` must be above 0, got {value}", m.name),
                    Some(doc.loc(&format!("/models/{i}/price/{field}"))),
                )
                .with_help(
                    "cost attribution and budgets rely on prices; write the provider's list price",
                ),
            );
        }
    }
}

/// Chat models without `max_output_tokens` when a strict budget exists: a request without
/// `max_tokens` then reserves only the default output, so the budget is no longer a hard cap.
pub(crate) fn max_output(
    diags: &mut Vec<Diagnostic>,
    models: &[ModelInfo],
    budgets: &[BudgetRule],
) {
    let Some(strict) = budgets.iter().find(|b| b.spec.strict) else {
        return;
    };
    for m in models
        .iter()
        .filter(|m| m.has(model::Capability::Chat) && m.max_output_tokens.is_none())
    {
        diags.push(
            Diagnostic::warning(
                "model/no-max-output",
                format!(
                    "model `{}` declares no `max_output_tokens`: a request without `max_tokens` \
                     reserves {} output tokens against the strict budget `{}`, and may cost more",
                    m.name,
                    crate::decide::DEFAULT_OUTPUT_TOKENS,
                    strict.name
                ),
                Some(m.location.clone()),
            )
            .with_help("write the provider's maximum output tokens for this model"),
        );
    }
}

/// Weights of a weighted rule, aligned with its candidates.
pub(crate) fn weights(
    diags: &mut Vec<Diagnostic>,
    rule: &model::RoutingRule,
    doc: &Parsed,
    base: &str,
) -> Vec<f64> {
    let loc = |p: &str| Some(doc.loc(&format!("{base}{p}")));
    match (rule.strategy, &rule.weights, &rule.candidates) {
        (Strategy::Weighted, None, _) => {
            diags.push(Diagnostic::error(
                "rule/missing-weights",
                format!("rule `{}` is weighted but has no `weights`", rule.name),
                loc("/strategy"),
            ));
            Vec::new()
        }
        (Strategy::Weighted, Some(_), None) => {
            diags.push(Diagnostic::error(
                "rule/missing-candidates",
                format!("rule `{}` is weighted but lists no `candidates`", rule.name),
                loc("/strategy"),
            ));
            Vec::new()
        }
        (Strategy::Weighted, Some(w), Some(c)) => {
            for name in w.keys() {
                if !c.contains(name) {
                    diags.push(Diagnostic::error(
                        "rule/weight-not-candidate",
                        format!(
                            "rule `{}` weighs `{name}`, which is not one of its candidates",
                            rule.name
                        ),
                        loc(&format!("/weights/{}", segment(name))),
                    ));
                }
            }
            c.iter().map(|n| w.get(n).copied().unwrap_or(0.0)).collect()
        }
        (_, Some(_), _) => {
            diags.push(Diagnostic::warning(
                "rule/unused-weights",
                format!(
                    "rule `{}` has `weights` but its strategy is not `weighted`",
                    rule.name
                ),
                loc("/weights"),
            ));
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// Rules that can never match because an earlier rule always matches first. Rules whose
/// condition did not compile (`broken`) take no part: they are reported already.
pub(crate) fn shadowed(diags: &mut Vec<Diagnostic>, rules: &[Rule], broken: &[bool]) {
    for (i, earlier) in rules.iter().enumerate() {
        if broken[i] {
            continue;
        }
        let Some(covered) = index::covers(earlier) else {
            continue;
        };
        for (_, later) in rules
            .iter()
            .enumerate()
            .skip(i + 1)
            .filter(|(j, _)| !broken[*j])
        {
            let models = later.when.as_ref().and_then(|w| index::models_of(w.ast()));
            let hidden = match (&covered, &models) {
                (None, _) => true,
                (Some(c), Some(m)) => m.iter().all(|x| c.contains(x)),
                (Some(_), None) => false,
            };
            if hidden {
                diags.push(
                    Diagnostic::error(
                        "rule/shadowed",
                        format!(
                            "rule `{}` can never match: rule `{}` at {} matches every request it could",
                            later.name, earlier.name, earlier.location
                        ),
                        Some(later.location.clone()),
                    )
                    .with_help("move the broader rule below the narrower one, or give it a condition"),
                );
            }
        }
    }
}

/// A rate limit's own problems: rates and bursts that are not above 0, a bucket expression on
/// a scope that does not read it.
pub(crate) fn rate_limit(
    diags: &mut Vec<Diagnostic>,
    l: &model::RateLimit,
    doc: &Parsed,
    base: &str,
) {
    for (field, rate) in [("requests", &l.requests), ("tokens", &l.tokens)] {
        let Some(rate) = rate else { continue };
        for (what, value) in [("limit", Some(rate.limit)), ("burst", rate.burst)] {
            let Some(value) = value.filter(|v| !(*v > 0.0 && v.is_finite())) else {
                continue;
            };
            diags.push(
                Diagnostic::error(
                    "ratelimit/not-positive",
                    format!(
                        "rate limit `{}`: `{field}.{what}` must be above 0, got {value}",
                        l.name
                    ),
                    Some(doc.loc(&format!("{base}/{field}/{what}"))),
                )
                .with_help("a rate that admits nothing is a block: remove the rule's traffic with a key's `allowed_models`, or write the rate the provider or plan allows"),
            );
        }
    }
    if l.bucket.is_some() && l.scope != model::LimitScope::Expression {
        diags.push(
            Diagnostic::warning(
                "ratelimit/unused-bucket",
                format!(
                    "rate limit `{}` has a `bucket` but its scope is `{}`, which ignores it",
                    l.name,
                    l.scope.as_str()
                ),
                Some(doc.loc(&format!("{base}/bucket"))),
            )
            .with_help("set `scope: expression` to count per value of `bucket`, or remove it"),
        );
    }
}

/// Rate limits that can never refuse a request: an earlier limit on the same scope and bucket,
/// with no condition or the same one, is at least as strict for every rate they both count.
pub(crate) fn redundant_rate_limits(diags: &mut Vec<Diagnostic>, limits: &[RateLimitRule]) {
    let src = |e: &Option<crate::expr::CompiledExpr>| e.as_ref().map(|e| e.source.clone());
    // At most as much per period and at once, over the same kind of units.
    let stricter = |a: &Option<model::Rate>, b: &Option<model::Rate>| match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => {
            a.count == b.count && a.per_ms() <= b.per_ms() && a.burst() <= b.burst()
        }
    };
    for (i, earlier) in limits.iter().enumerate() {
        for later in &limits[i + 1..] {
            let same_scope = earlier.spec.scope == later.spec.scope
                && src(&earlier.bucket) == src(&later.bucket);
            let covers = earlier.when.is_none() || src(&earlier.when) == src(&later.when);
            if same_scope
                && covers
                && stricter(&earlier.spec.requests, &later.spec.requests)
                && stricter(&earlier.spec.tokens, &later.spec.tokens)
            {
                diags.push(
                    Diagnostic::warning(
                        "ratelimit/shadowed",
                        format!(
                            "rate limit `{}` can never refuse a request: rate limit `{}` at {} counts every request it does, per the same bucket, and is at least as strict",
                            later.name, earlier.name, earlier.location
                        ),
                        Some(later.location.clone()),
                    )
                    .with_help("remove it, loosen the earlier limit, or give the earlier one a narrower condition"),
                );
            }
        }
    }
}

/// Downgrade chains that loop, each loop reported once, at its first rule.
pub(crate) fn downgrade_cycles(
    diags: &mut Vec<Diagnostic>,
    rules: &[DowngradeRuleInfo],
    models: &[ModelInfo],
) {
    let mut next: Vec<Vec<(usize, usize)>> = vec![Vec::new(); models.len()];
    for (r, rule) in rules.iter().enumerate() {
        for &from in &rule.from {
            next[from].push((rule.to, r));
        }
    }
    let mut found: Vec<Vec<usize>> = Vec::new();
    for start in 0..models.len() {
        // Depth-first search for paths from `start` back to itself: (model, models, rules).
        let mut stack = vec![(start, vec![start], Vec::<usize>::new())];
        let mut seen = vec![false; models.len()];
        while let Some((node, path, via)) = stack.pop() {
            for &(to, r) in &next[node] {
                let mut rules_on_loop = via.clone();
                rules_on_loop.push(r);
                if to == start {
                    let mut key = rules_on_loop.clone();
                    key.sort_unstable();
                    key.dedup();
                    if found.contains(&key) {
                        continue;
                    }
                    let first = key[0];
                    found.push(key);
                    let names: Vec<&str> = path
                        .iter()
                        .chain([&start])
                        .map(|&m| &*models[m].name)
                        .collect();
                    diags.push(Diagnostic::error(
                        "downgrade/cycle",
                        format!("downgrades loop: {}", names.join(" → ")),
                        Some(rules[first].location.clone()),
                    ));
                } else if !seen[to] {
                    seen[to] = true;
                    let mut p = path.clone();
                    p.push(to);
                    stack.push((to, p, rules_on_loop));
                }
            }
        }
    }
}

/// The rollout spec's own problems and split caveats.
pub(crate) fn canary(diags: &mut Vec<Diagnostic>, c: &model::Canary, doc: &Parsed, base: &str) {
    for p in c.rollout.validate() {
        let pointer = p.path.replace('[', "/").replace(']', "").replace('.', "/");
        diags.push(Diagnostic::error(
            "canary/invalid-rollout",
            format!("canary `{}`: {} ({})", c.name, p.message, p.code),
            Some(doc.loc(&format!("{base}/rollout/{pointer}"))),
        ));
    }
    let min_secs: u64 = c.rollout.steps.iter().map(|s| s.min_duration_secs).sum();
    if min_secs > 30 * 86_400 {
        diags.push(
            Diagnostic::warning(
                "canary/long-rollout",
                format!(
                    "canary `{}` takes at least {} days: its steps' `min_duration_secs` add up to more than a month, whatever the traffic",
                    c.name,
                    min_secs / 86_400
                ),
                Some(doc.loc(&format!("{base}/rollout/steps"))),
            )
            .with_help("`llmgw-policy canary plan --rate <requests>/h` shows how long each step takes at your traffic"),
        );
    }
    // A sticky split with checks is an error above; without, it is promoted unchecked.
    if c.rollout.split != llmgw_canary::spec::Split::PerRequest && c.rollout.metrics.is_empty() {
        diags.push(
            Diagnostic::warning(
                "canary/sticky-split",
                format!(
                    "canary `{}` splits by key or user, so nothing is checked: it is promoted after its steps unless an operator rolls it back",
                    c.name
                ),
                Some(doc.loc(&format!("{base}/rollout/split"))),
            )
            .with_help("use `split: per_request` unless clients must see one version"),
        );
    }
}

/// The key of a canary's persisted state: its model, deployments and rollout spec.
pub(crate) fn canary_hash(c: &model::Canary) -> String {
    let text = format!(
        "{}|{}|{}|{}",
        c.model,
        c.baseline,
        c.candidate,
        c.rollout.spec_hash()
    );
    format!("{:016x}", source::fnv64(text.bytes()))
}

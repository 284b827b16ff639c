//! From files to a compiled policy: parse, validate, type, cross-reference, compile.
//!
//! Loading never stops at the first problem: it gathers every diagnostic it can, and builds a
//! policy only when none of them is an error.

use crate::celenv::Site;
use crate::diag::{at, Diagnostic};
use crate::expr::CompiledExpr;
use crate::model::{self, Document};
use crate::policy::{
    BudgetRule, CanaryInfo, CompiledPolicy, DeploymentInfo, DowngradeRuleInfo, Location, ModelInfo,
    RateLimitRule, Rule,
};
use crate::source::{content_revision, PolicyFile};
use crate::yaml::{self, Node};
use crate::{checks, index, secrets};
use std::collections::HashMap;
use std::sync::Arc;

/// A policy unit test with where it was written.
#[derive(Debug, Clone)]
pub struct TestCase {
    /// The case.
    pub test: model::PolicyTest,
    /// Where it was written.
    pub location: Location,
    /// Its position in its file's `tests` list.
    pub index: usize,
}

/// What loading produced.
#[derive(Debug)]
pub struct LoadOutcome {
    /// The policy, when there is no error.
    pub policy: Option<CompiledPolicy>,
    /// The policy tests of the repository.
    pub tests: Vec<TestCase>,
    /// Every finding, errors and warnings, sorted by file and line.
    pub diagnostics: Vec<Diagnostic>,
    /// The revision loaded.
    pub revision: String,
}

impl LoadOutcome {
    /// Whether some finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// A document with where it came from.
pub(crate) struct Parsed {
    pub(crate) file: Arc<str>,
    pub(crate) root: Node,
    pub(crate) doc: Document,
}

impl Parsed {
    /// The location of the node at a JSON pointer (the document's start when absent).
    pub(crate) fn loc(&self, pointer: &str) -> Location {
        let node = self.root.pointer(pointer).unwrap_or(&self.root);
        at(&self.file, node.line, node.column)
    }
}

/// Loads a policy from files already read. `revision` names it (a commit id); a hash of the
/// files otherwise.
pub fn load_files(files: &[PolicyFile], revision: Option<&str>) -> LoadOutcome {
    let revision = revision.map_or_else(|| content_revision(files), str::to_owned);
    let mut diags = Vec::new();
    let mut docs = Vec::new();
    for file in files {
        if let Some(parsed) = parse_file(file, &mut diags) {
            docs.push(parsed);
        }
    }
    if files.is_empty() {
        diags.push(Diagnostic::error(
            "source/empty",
            "the policy repository holds no *.yaml file",
            None,
        ));
    }
    let (policy, tests) = Builder::new(&revision, &mut diags).build(&docs);
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| {
            d.location
                .as_ref()
                .map(|l| (l.file.to_string(), l.line, l.column))
        };
        key(a).cmp(&key(b))
    });
    let failed = diags.iter().any(Diagnostic::is_error);
    LoadOutcome {
        policy: if failed { None } else { policy },
        tests,
        diagnostics: diags,
        revision,
    }
}

fn parse_file(file: &PolicyFile, diags: &mut Vec<Diagnostic>) -> Option<Parsed> {
    let name: Arc<str> = file.path.as_str().into();
    let text = match std::str::from_utf8(&file.bytes) {
        Ok(text) => text,
        Err(e) => {
            // Point at the first byte that is not UTF-8.
            let valid = String::from_utf8_lossy(&file.bytes[..e.valid_up_to()]);
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            diags.push(Diagnostic::error(
                "yaml/encoding",
                "the file is not UTF-8",
                Some(at(&name, line, column)),
            ));
            return None;
        }
    };
    for found in secrets::scan(text) {
        diags.push(
            Diagnostic::error(
                "secret/literal",
                format!("this looks like {} written into the repository", found.what),
                Some(at(&name, found.line, found.column)),
            )
            .with_len(found.len)
            .with_help(format!("keep secrets out of git: write a reference such as `env:OPENAI_API_KEY` or `file:/run/secrets/openai`, and rotate the exposed key; a reviewed false positive is silenced with the comment `# {}` on its line", secrets::ALLOW_MARKER)),
        );
    }
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            diags.push(Diagnostic::error(
                e.code,
                e.message,
                Some(at(&name, e.line, e.column)),
            ));
            return None;
        }
    };
    let json = root.to_json();
    let kind = match crate::schema::validate(&name, &root, &json) {
        Ok(kind) => kind,
        Err(errs) => {
            diags.extend(errs);
            return None;
        }
    };
    match typed(&kind, json) {
        Ok(doc) => Some(Parsed {
            file: name,
            root,
            doc,
        }),
        Err(e) => {
            let pointer: String = e
                .path()
                .iter()
                .map(|seg| match seg {
                    serde_path_to_error::Segment::Seq { index } => format!("/{index}"),
                    serde_path_to_error::Segment::Map { key } => {
                        format!("/{}", crate::checks::segment(key))
                    }
                    _ => String::new(),
                })
                .collect();
            let node = root.pointer(&pointer).unwrap_or(&root);
            diags.push(Diagnostic::error(
                "schema/invalid",
                format!("`{}` does not fit its kind: {}", e.path(), e.inner()),
                Some(at(&name, node.line, node.column)),
            ));
            None
        }
    }
}

/// Deserialises a validated document of a kind, keeping the path of any mismatch.
fn typed(
    kind: &str,
    json: serde_json::Value,
) -> Result<Document, serde_path_to_error::Error<serde_json::Error>> {
    use serde_path_to_error::deserialize as de;
    Ok(match kind {
        "Providers" => Document::Providers(de(json)?),
        "Models" => Document::Models(de(json)?),
        "Routing" => Document::Routing(de(json)?),
        "Budgets" => Document::Budgets(de(json)?),
        "RateLimits" => Document::RateLimits(de(json)?),
        "Downgrades" => Document::Downgrades(de(json)?),
        "Canaries" => Document::Canaries(de(json)?),
        "Cache" => Document::Cache(de(json)?),
        _ => Document::PolicyTests(de(json)?),
    })
}

/// The names of one kind seen so far, to report a name declared twice.
#[derive(Default)]
struct Names(HashMap<String, Location>);

impl Names {
    /// Records `name` declared at `loc`; reports it and returns false when it was seen before.
    fn claim(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        code: &'static str,
        what: &str,
        name: &str,
        loc: &Location,
    ) -> bool {
        if let Some(first) = self.0.get(name) {
            let msg = format!("{what} `{name}` is declared twice (first at {first})");
            diags.push(Diagnostic::error(code, msg, Some(loc.clone())));
            return false;
        }
        self.0.insert(name.to_owned(), loc.clone());
        true
    }
}

/// Builds a compiled policy from documents, reporting every problem.
pub(crate) struct Builder<'d> {
    revision: Arc<str>,
    diags: &'d mut Vec<Diagnostic>,
}

fn intern(s: &str) -> Arc<str> {
    Arc::from(s)
}

impl<'d> Builder<'d> {
    fn new(revision: &str, diags: &'d mut Vec<Diagnostic>) -> Self {
        Builder {
            revision: revision.into(),
            diags,
        }
    }

    fn error(&mut self, code: &'static str, message: String, loc: Location) {
        self.diags.push(Diagnostic::error(code, message, Some(loc)));
    }

    /// Compiles an expression written at `pointer` of `doc`.
    fn expr(&mut self, doc: &Parsed, pointer: &str, site: Site) -> Option<CompiledExpr> {
        let node = doc.root.pointer(pointer)?;
        let text = node.as_str()?;
        let base = at(&doc.file, node.line, node.column);
        match CompiledExpr::compile(text, site, base.clone()) {
            Ok(e) => Some(e),
            Err(errs) => {
                let chars = text.chars().count();
                // Columns inside the expression are exact for one-line plain or quoted scalars.
                let shift = if text.contains('\n') {
                    None
                } else if node.len == chars {
                    Some(0)
                } else if node.len == chars + 2 {
                    Some(1)
                } else {
                    None
                };
                for e in errs {
                    let loc = match shift {
                        Some(s) => at(&doc.file, node.line, node.column + s + e.offset),
                        None => base.clone(),
                    };
                    let mut d = Diagnostic::error(e.code, e.message, Some(loc)).with_len(1);
                    d.help = e.help;
                    self.diags.push(d);
                }
                None
            }
        }
    }

    fn build(mut self, docs: &[Parsed]) -> (Option<CompiledPolicy>, Vec<TestCase>) {
        let mut providers: Vec<model::Provider> = Vec::new();
        let mut provider_names = Names::default();
        for doc in docs {
            if let Document::Providers(p) = &doc.doc {
                for (i, prov) in p.providers.iter().enumerate() {
                    let loc = doc.loc(&format!("/providers/{i}/name"));
                    if !provider_names.claim(
                        self.diags,
                        "ref/duplicate-name",
                        "provider",
                        &prov.name,
                        &loc,
                    ) {
                        continue;
                    }
                    checks::provider(self.diags, prov, doc, i);
                    providers.push(prov.clone());
                }
            }
        }
        let provider_index: HashMap<&str, usize> = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();

        // Models and deployments.
        let mut models: Vec<ModelInfo> = Vec::new();
        let mut model_index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut deployments: Vec<DeploymentInfo> = Vec::new();
        let mut deployment_index: HashMap<Arc<str>, usize> = HashMap::new();
        for doc in docs {
            let Document::Models(m) = &doc.doc else {
                continue;
            };
            for (i, model) in m.models.iter().enumerate() {
                let loc = doc.loc(&format!("/models/{i}/name"));
                let name = intern(&model.name);
                if let Some(&first) = model_index.get(&name) {
                    let msg = format!(
                        "model `{name}` is declared twice (first at {})",
                        models[first].location
                    );
                    self.error("ref/duplicate-name", msg, loc);
                    continue;
                }
                checks::model(self.diags, model, doc, i);
                let index = models.len();
                let mut routable = Vec::new();
                for (j, dep) in model.deployments.iter().enumerate() {
                    let dep_name: Arc<str> = match &dep.name {
                        Some(n) => intern(n),
                        None => intern(&format!("{}@{}", model.name, dep.provider)),
                    };
                    let Some(&provider) = provider_index.get(dep.provider.as_str()) else {
                        let msg = format!(
                            "deployment `{dep_name}` names unknown provider `{}`",
                            dep.provider
                        );
                        let loc = doc.loc(&format!("/models/{i}/deployments/{j}/provider"));
                        self.diags.push(
                            Diagnostic::error("ref/unknown-provider", msg, Some(loc))
                                .with_help(checks::known(provider_index.keys().copied())),
                        );
                        continue;
                    };
                    if deployment_index.contains_key(&dep_name) {
                        let loc = doc.loc(&format!("/models/{i}/deployments/{j}"));
                        let msg = format!("deployment `{dep_name}` is declared twice");
                        self.error("ref/duplicate-name", msg, loc);
                        continue;
                    }
                    let d = deployments.len();
                    deployment_index.insert(dep_name.clone(), d);
                    if !dep.canary_only {
                        routable.push(d);
                    }
                    deployments.push(DeploymentInfo {
                        name: dep_name,
                        model: index,
                        model_name: name.clone(),
                        provider,
                        provider_name: intern(&providers[provider].name),
                        region: intern(&providers[provider].region),
                        upstream_model: intern(&dep.upstream_model),
                        canary_only: dep.canary_only,
                        quota: dep.quota,
                    });
                }
                if routable.is_empty() {
                    let msg = format!("model `{name}` has no deployment that routing can use");
                    self.error("model/no-deployment", msg, loc.clone());
                }
                model_index.insert(name.clone(), index);
                models.push(ModelInfo {
                    name,
                    class: intern(&model.class),
                    quality: model.quality,
                    context_window: model.context_window,
                    max_output_tokens: model.max_output_tokens,
                    capabilities: model.capabilities.clone(),
                    price: model.price,
                    deployments: routable,
                    equivalents: Vec::new(),
                    location: loc,
                });
            }
        }
        for i in 0..models.len() {
            let mut eq: Vec<usize> = (0..models.len())
                .filter(|&j| j != i && models[j].class == models[i].class)
                .collect();
            eq.sort_by(|&a, &b| {
                models[b].quality.total_cmp(&models[a].quality).then(
                    models[a]
                        .price
                        .output_per_mtok
                        .total_cmp(&models[b].price.output_per_mtok),
                )
            });
            models[i].equivalents = eq;
        }
        let resolve_model = |this: &mut Self, name: &str, loc: Location, what: &str| {
            let found = model_index.get(name).copied();
            if found.is_none() {
                this.diags.push(
                    Diagnostic::error(
                        "ref/unknown-model",
                        format!("{what} names unknown model `{name}`"),
                        Some(loc),
                    )
                    .with_help(checks::known(model_index.keys().map(|k| &**k))),
                );
            }
            found
        };

        // Routing rules.
        let mut rules: Vec<Rule> = Vec::new();
        let mut broken: Vec<bool> = Vec::new();
        let mut rule_names = Names::default();
        for doc in docs {
            let Document::Routing(r) = &doc.doc else {
                continue;
            };
            for (i, rule) in r.rules.iter().enumerate() {
                let base = format!("/rules/{i}");
                let loc = doc.loc(&format!("{base}/name"));
                rule_names.claim(self.diags, "rule/duplicate-name", "rule", &rule.name, &loc);
                let when = self.expr(doc, &format!("{base}/when"), Site::When);
                broken.push(rule.when.is_some() && when.is_none());
                let filter = self.expr(doc, &format!("{base}/filter"), Site::Filter);
                let candidates = rule.candidates.as_ref().map(|names| {
                    names
                        .iter()
                        .enumerate()
                        .filter_map(|(j, n)| {
                            let l = doc.loc(&format!("{base}/candidates/{j}"));
                            resolve_model(&mut self, n, l, &format!("rule `{}`", rule.name))
                        })
                        .collect::<Vec<_>>()
                });
                let weights = checks::weights(self.diags, rule, doc, &base);
                rules.push(Rule {
                    name: intern(&rule.name),
                    when,
                    candidates,
                    filter,
                    strategy: rule.strategy,
                    latency_metric: rule.latency_metric,
                    latency_slo_ms: rule.latency_slo_ms,
                    weights,
                    failover: rule.failover,
                    location: loc,
                });
            }
        }
        checks::shadowed(self.diags, &rules, &broken);

        // Budgets.
        let mut budgets = Vec::new();
        let mut budget_names = Names::default();
        for doc in docs {
            let Document::Budgets(b) = &doc.doc else {
                continue;
            };
            for (i, budget) in b.budgets.iter().enumerate() {
                let base = format!("/budgets/{i}");
                let loc = doc.loc(&format!("{base}/name"));
                budget_names.claim(
                    self.diags,
                    "ref/duplicate-name",
                    "budget",
                    &budget.name,
                    &loc,
                );
                let when = self.expr(doc, &format!("{base}/when"), Site::When);
                budgets.push(BudgetRule {
                    spec: budget.clone(),
                    name: intern(&budget.name),
                    when,
                    location: loc,
                });
            }
        }

        checks::max_output(self.diags, &models, &budgets);

        // Rate limits.
        let mut rate_limits = Vec::new();
        let mut rate_limit_names = Names::default();
        for doc in docs {
            let Document::RateLimits(r) = &doc.doc else {
                continue;
            };
            for (i, limit) in r.limits.iter().enumerate() {
                let base = format!("/limits/{i}");
                let loc = doc.loc(&format!("{base}/name"));
                rate_limit_names.claim(
                    self.diags,
                    "ref/duplicate-name",
                    "rate limit",
                    &limit.name,
                    &loc,
                );
                checks::rate_limit(self.diags, limit, doc, &base);
                let when = self.expr(doc, &format!("{base}/when"), Site::When);
                let bucket = self.expr(doc, &format!("{base}/bucket"), Site::Bucket);
                let broken = (limit.when.is_some() && when.is_none())
                    || (limit.bucket.is_some() && bucket.is_none());
                if broken {
                    continue;
                }
                rate_limits.push(RateLimitRule {
                    spec: limit.clone(),
                    name: intern(&limit.name),
                    when,
                    bucket,
                    location: loc,
                });
            }
        }
        checks::redundant_rate_limits(self.diags, &rate_limits);

        // Downgrades.
        let mut downgrades = Vec::new();
        let mut downgrade_names = Names::default();
        for doc in docs {
            let Document::Downgrades(d) = &doc.doc else {
                continue;
            };
            for (i, rule) in d.rules.iter().enumerate() {
                let base = format!("/rules/{i}");
                let loc = doc.loc(&format!("{base}/name"));
                downgrade_names.claim(
                    self.diags,
                    "rule/duplicate-name",
                    "downgrade rule",
                    &rule.name,
                    &loc,
                );
                let when = self.expr(doc, &format!("{base}/when"), Site::When);
                let what = format!("downgrade rule `{}`", rule.name);
                let from: Vec<usize> = rule
                    .from
                    .iter()
                    .enumerate()
                    .filter_map(|(j, n)| {
                        resolve_model(&mut self, n, doc.loc(&format!("{base}/from/{j}")), &what)
                    })
                    .collect();
                let to = resolve_model(&mut self, &rule.to, doc.loc(&format!("{base}/to")), &what);
                if let Some(to) = to {
                    downgrades.push(DowngradeRuleInfo {
                        name: intern(&rule.name),
                        when,
                        from,
                        to,
                        location: loc,
                    });
                }
            }
        }
        checks::downgrade_cycles(self.diags, &downgrades, &models);
        if budgets.iter().any(BudgetRule::downgrades) && downgrades.is_empty() {
            for b in budgets.iter().filter(|b| b.downgrades()) {
                self.diags.push(
                    Diagnostic::error(
                        "budget/no-downgrade",
                        format!(
                            "budget `{}` downgrades on exceed, but there is no downgrade rule",
                            b.name
                        ),
                        Some(b.location.clone()),
                    )
                    .with_help("add a `kind: Downgrades` file, or set `on_exceed: block`"),
                );
            }
        }

        // Canaries.
        let mut canaries = Vec::new();
        let mut canary_by_model = HashMap::new();
        let mut canary_names = Names::default();
        for doc in docs {
            let Document::Canaries(c) = &doc.doc else {
                continue;
            };
            for (i, canary) in c.canaries.iter().enumerate() {
                let base = format!("/canaries/{i}");
                let loc = doc.loc(&format!("{base}/name"));
                canary_names.claim(
                    self.diags,
                    "ref/duplicate-name",
                    "canary",
                    &canary.name,
                    &loc,
                );
                let what = format!("canary `{}`", canary.name);
                let model = resolve_model(
                    &mut self,
                    &canary.model,
                    doc.loc(&format!("{base}/model")),
                    &what,
                );
                let dep = |this: &mut Self, field: &str, name: &str| {
                    let found = deployment_index.get(name).copied();
                    let l = doc.loc(&format!("{base}/{field}"));
                    match found {
                        None => {
                            this.diags.push(
                                Diagnostic::error(
                                    "ref/unknown-deployment",
                                    format!("{what} names unknown deployment `{name}`"),
                                    Some(l),
                                )
                                .with_help(checks::known(deployment_index.keys().map(|k| &**k))),
                            );
                            None
                        }
                        Some(d) if Some(deployments[d].model) != model && model.is_some() => {
                            this.error(
                                "canary/foreign-deployment",
                                format!(
                                    "{what}: deployment `{name}` serves `{}`, not `{}`",
                                    deployments[d].model_name, canary.model
                                ),
                                l,
                            );
                            None
                        }
                        Some(d) => Some(d),
                    }
                };
                let baseline = dep(&mut self, "baseline", &canary.baseline);
                let candidate = dep(&mut self, "candidate", &canary.candidate);
                checks::canary(self.diags, canary, doc, &base);
                let (Some(model), Some(baseline), Some(candidate)) = (model, baseline, candidate)
                else {
                    continue;
                };
                if baseline == candidate {
                    let msg =
                        format!("{what}: the baseline and the candidate are the same deployment");
                    self.error(
                        "canary/same-deployment",
                        msg,
                        doc.loc(&format!("{base}/candidate")),
                    );
                    continue;
                }
                if canary_by_model.insert(model, canaries.len()).is_some() {
                    let msg = format!(
                        "model `{}` already has a canary; run one at a time",
                        canary.model
                    );
                    self.error("canary/duplicate", msg, loc.clone());
                }
                canaries.push(CanaryInfo {
                    name: intern(&canary.name),
                    model,
                    baseline,
                    candidate,
                    spec: canary.rollout.clone(),
                    spec_hash: checks::canary_hash(canary),
                    salt: crate::source::fnv64(canary.name.bytes()),
                    location: loc,
                });
            }
        }

        // Cache.
        let mut cache_default_ttl = 0;
        let mut cache_ttl = HashMap::new();
        let mut cache_semantic = HashMap::new();
        let mut cache_models = Names::default();
        for doc in docs {
            let Document::Cache(c) = &doc.doc else {
                continue;
            };
            cache_default_ttl = c.default_ttl_secs;
            for (i, rule) in c.rules.iter().enumerate() {
                let l = doc.loc(&format!("/rules/{i}/model"));
                if !cache_models.claim(
                    self.diags,
                    "ref/duplicate-name",
                    "cache rule for model",
                    &rule.model,
                    &l,
                ) {
                    continue;
                }
                if let Some(m) = resolve_model(&mut self, &rule.model, l, "cache rule") {
                    cache_ttl.insert(m, rule.ttl_secs);
                    if let Some(t) = rule.semantic_threshold {
                        checks::cache_threshold(self.diags, t, doc, i);
                        cache_semantic.insert(m, t);
                    }
                }
            }
        }

        // Tests.
        let mut tests = Vec::new();
        for doc in docs {
            let Document::PolicyTests(t) = &doc.doc else {
                continue;
            };
            for (i, test) in t.tests.iter().enumerate() {
                tests.push(TestCase {
                    test: test.clone(),
                    location: doc.loc(&format!("/tests/{i}/name")),
                    index: i,
                });
            }
        }

        if !docs.iter().any(|d| matches!(d.doc, Document::Models(_))) && !docs.is_empty() {
            self.diags.push(Diagnostic::error(
                "ref/no-models",
                "the policy declares no models (`kind: Models`)",
                None,
            ));
        }

        let (rules_by_model, rules_for_other) = index::by_model(&rules, &model_index);
        let policy = CompiledPolicy {
            revision: self.revision.clone(),
            providers,
            models,
            model_index,
            deployments,
            deployment_index,
            rules,
            rules_by_model,
            rules_for_other,
            budgets,
            rate_limits,
            downgrades,
            canaries,
            canary_by_model,
            cache_default_ttl,
            cache_ttl,
            cache_semantic,
            default_rule: intern("default"),
        };
        (Some(policy), tests)
    }
}

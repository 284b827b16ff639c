//! The decision engine: a pure function of (policy, request, live stats, state).
//!
//! Phases, in order: budgets (what has been spent, what this request may cost), downgrades,
//! routing rules (first match wins), candidate filtering and ordering by strategy, expansion
//! into deployments with failover, and the canary split.

use crate::decision::{
    Arm, Attempt, BudgetAction, CanaryAssignment, Decision, Downgrade, Measure, RateCharge,
    Reservation,
};
use crate::input::{
    CircuitState, DeploymentStats, Endpoint, Identity, LiveView, RequestContext, RequestFacts,
    StateView,
};
use crate::model::{
    Capability, Failover, LatencyMetric, LimitScope, OnExceed, Rate, Scope, Strategy, TokenCount,
};
use crate::policy::{CompiledPolicy, DeploymentInfo, ModelInfo, Rule};
use crate::trace::{Step, Trace};
use crate::views::{BudgetVars, Candidate, Facts, RateVars, Spend};
use llmgw_canary::spec::Split;
use llmgw_canary::split;
use std::sync::Arc;

/// Output tokens reserved for a request that sets no `max_tokens`, on a model that declares no
/// `max_output_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 4096;

/// Why no decision could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideError {
    /// The requested model is not in the policy.
    #[error("the model `{model}` does not exist")]
    UnknownModel {
        /// The model asked for.
        model: String,
    },
    /// Every candidate was filtered out or has its circuit open.
    #[error("no deployment can serve `{model}`: {reason}")]
    NoDeployment {
        /// The model routing started from.
        model: String,
        /// The rule that matched (or the default rule) and found no deployment.
        rule: Arc<str>,
        /// Why the candidates were all dropped.
        reason: Unservable,
    },
}

/// Why no candidate is left to serve a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unservable {
    /// Every candidate that has the capabilities the request needs has a context window too
    /// small for its input plus `max_tokens`.
    #[error(
        "the request needs {tokens} tokens (input {input_tokens} plus max_tokens) but the largest \
         context window of its candidates is {largest_window}"
    )]
    ContextLength {
        /// Estimated input plus `max_tokens`, saturated at `u64::MAX`.
        tokens: u64,
        /// Estimated input tokens alone.
        input_tokens: u64,
        /// The largest context window among the candidates.
        largest_window: u64,
    },
    /// Candidates were dropped for capabilities or by the rule's filter.
    #[error("every candidate was filtered out (capabilities or filter)")]
    Filtered,
    /// Candidates remain but every deployment's circuit is open.
    #[error("every deployment's circuit is open")]
    CircuitsOpen,
}

/// What candidate screening saw, so that an empty list can say why.
#[derive(Debug, Default)]
struct Screening {
    /// The largest context window among candidates dropped for it.
    too_small: Option<u64>,
    /// Whether some candidate's context window held the request.
    fitted: bool,
}

/// Output tokens a request may produce on a model: its `max_tokens`, at most the model's
/// `max_output_tokens` (or its context window when it declares none); without `max_tokens`,
/// the model's `max_output_tokens`, or [`DEFAULT_OUTPUT_TOKENS`] when it declares none.
pub fn worst_case_output(model: &ModelInfo, max_tokens: Option<u64>) -> u64 {
    match (max_tokens, model.max_output_tokens) {
        (Some(asked), Some(most)) => asked.min(most),
        (Some(asked), None) => asked.min(model.context_window),
        (None, Some(most)) => most,
        (None, None) => DEFAULT_OUTPUT_TOKENS,
    }
}

const SCOPES: [Scope; 4] = [Scope::Key, Scope::User, Scope::Project, Scope::Tenant];

/// A budget that applies to the request, with its spend.
struct Applied {
    budget: usize,
    principal: String,
    spent: f64,
}

impl CompiledPolicy {
    /// Decides where a request goes.
    pub fn decide(
        &self,
        ctx: &RequestContext,
        live: &dyn LiveView,
        state: &dyn StateView,
    ) -> Result<Decision, DecideError> {
        self.decide_traced(ctx, live, state, &mut Trace::off())
    }

    /// Whether budget `b` (an index into [`CompiledPolicy::budgets`]) may apply to a request
    /// decided at `now_ms`: it has no condition, or its condition reads spend (`budget.*`,
    /// known only once spend is read), holds, or cannot be evaluated. A decision for the same
    /// request and time applies no budget for which this is false, so the gateway need not
    /// read that budget's spend.
    pub fn budget_may_apply(
        &self,
        b: usize,
        request: &RequestFacts,
        identity: &Identity,
        now_ms: i64,
    ) -> bool {
        let Some(budget) = self.budgets.get(b) else {
            return false;
        };
        let Some(when) = &budget.when else {
            return true;
        };
        if when.reads("budget") {
            return true;
        }
        let vars = BudgetVars::default();
        let facts = Facts {
            request,
            model: &request.model,
            identity,
            budget: &vars,
            ratelimit: RateVars::default(),
            now: chrono::DateTime::from_timestamp_millis(now_ms)
                .unwrap_or_default()
                .fixed_offset(),
        };
        Trace::off().holds(when, &facts, true)
    }

    /// Worst-case cost of the request on a model: its input plus [`worst_case_output`] at the
    /// model's prices.
    pub fn worst_case_cost(&self, model: &ModelInfo, ctx: &RequestContext) -> f64 {
        let out = worst_case_output(model, ctx.request.max_tokens);
        model.price.cost(ctx.request.input_tokens, out)
    }

    /// Decides, recording every step in `trace` when it is on.
    pub fn decide_traced(
        &self,
        ctx: &RequestContext,
        live: &dyn LiveView,
        state: &dyn StateView,
        trace: &mut Trace,
    ) -> Result<Decision, DecideError> {
        let req = &ctx.request;
        let Some(&requested) = self.model_index.get(req.model.as_str()) else {
            return Err(DecideError::UnknownModel {
                model: req.model.clone(),
            });
        };
        let now = chrono::DateTime::from_timestamp_millis(ctx.now_ms)
            .unwrap_or_default()
            .fixed_offset();
        let mut vars = BudgetVars::default();

        // Budgets: which apply, and how much has been spent against each.
        let mut applied: Vec<Applied> = Vec::new();
        for (b, budget) in self.budgets.iter().enumerate() {
            let applies = match &budget.when {
                None => true,
                // A budget whose condition cannot be evaluated applies: spend stays bounded.
                Some(when) => trace.holds(
                    when,
                    &self.facts(ctx, &req.model, &vars, RateVars::default(), now),
                    true,
                ),
            };
            let principal = &ctx.identity.of(budget.spec.scope).id;
            if !applies || principal.is_empty() {
                continue;
            }
            let spent = state.spent_usd(&budget.name, budget.spec.scope, principal);
            let slot = &mut vars.scopes[scope_slot(budget.spec.scope)];
            let spend = Spend {
                spent,
                limit: budget.spec.limit_usd,
            };
            if spend.fraction() >= slot.fraction() {
                *slot = spend;
            }
            applied.push(Applied {
                budget: b,
                principal: principal.clone(),
                spent,
            });
        }
        let requested_cost = self.worst_case_cost(&self.models[requested], ctx);
        vars.exceeded = applied.iter().any(|a| {
            let spec = &self.budgets[a.budget].spec;
            spec.on_exceed == OnExceed::Downgrade && a.spent + requested_cost > spec.limit_usd
        });
        for a in &applied {
            let spec = &self.budgets[a.budget].spec;
            trace.push(|| Step::Budget {
                budget: spec.name.clone(),
                principal: a.principal.clone(),
                spent_usd: a.spent,
                limit_usd: spec.limit_usd,
                request_usd: requested_cost,
            });
        }

        // Downgrades, chained (lint rejects cycles; the bound guards anyway).
        let mut model = requested;
        let mut downgrade: Option<Downgrade> = None;
        for _ in 0..self.models.len() {
            let mut moved = false;
            for rule in self.downgrades.iter().filter(|r| r.from.contains(&model)) {
                let fires = match &rule.when {
                    None => vars.exceeded,
                    Some(when) => trace.holds(
                        when,
                        &self.facts(
                            ctx,
                            &self.models[model].name,
                            &vars,
                            RateVars::default(),
                            now,
                        ),
                        false,
                    ),
                };
                trace.push(|| Step::Downgrade {
                    rule: rule.name.to_string(),
                    from: self.models[model].name.to_string(),
                    to: self.models[rule.to].name.to_string(),
                    fired: fires,
                });
                if fires {
                    let from = downgrade
                        .as_ref()
                        .map_or_else(|| self.models[model].name.clone(), |d| d.from.clone());
                    let budget = self
                        .budget_over(&applied, requested_cost, OnExceed::Downgrade)
                        .map(|b| self.budgets[b].name.clone());
                    downgrade = Some(Downgrade {
                        from,
                        to: self.models[rule.to].name.clone(),
                        rule: rule.name.clone(),
                        budget,
                    });
                    model = rule.to;
                    moved = true;
                    break;
                }
            }
            if !moved {
                break;
            }
        }

        // Budgets that still refuse the request at the final model's cost.
        let final_cost = self.worst_case_cost(&self.models[model], ctx);
        for a in &applied {
            let budget = &self.budgets[a.budget];
            if a.spent + final_cost <= budget.spec.limit_usd {
                continue;
            }
            let refuses = match budget.spec.on_exceed {
                OnExceed::Block => true,
                OnExceed::Downgrade => downgrade.is_none(),
            };
            if refuses {
                trace.push(|| Step::Blocked {
                    budget: budget.spec.name.clone(),
                });
                return Ok(self.blocked(
                    ctx,
                    model,
                    budget.name.clone(),
                    downgrade,
                    final_cost,
                    trace.take_errors(),
                ));
            }
        }

        // Rate limits that count the request, and what is left of them for routing to read.
        let model_name = self.models[model].name.clone();
        let (limited, rates) =
            self.rate_limits_applying(ctx, &model_name, &vars, now, state, trace);

        // Routing: the first matching rule among those indexed for this model.
        let facts = self.facts(ctx, &model_name, &vars, rates, now);
        let list = self
            .rules_by_model
            .get(&*model_name)
            .unwrap_or(&self.rules_for_other);
        let mut chosen: Option<&Rule> = None;
        for &i in list {
            let rule = &self.rules[i];
            let matched = match &rule.when {
                None => true,
                Some(when) => trace.holds(when, &facts, false),
            };
            trace.push(|| Step::Rule {
                rule: rule.name.to_string(),
                location: rule.location.to_string(),
                matched,
            });
            if matched {
                chosen = Some(rule);
                break;
            }
        }
        let (rule_name, strategy) = match chosen {
            Some(r) => (r.name.clone(), r.strategy),
            None => (self.default_rule.clone(), Strategy::Priority),
        };

        // Candidates, filtered and ordered.
        let own: Vec<usize> = chosen
            .and_then(|r| r.candidates.clone())
            .unwrap_or_else(|| vec![model]);
        let mut ranked = Vec::with_capacity(own.len());
        let mut screening = Screening::default();
        for (pos, &m) in own.iter().enumerate() {
            if let Some(c) = self.admit(m, chosen, ctx, live, trace, &mut screening) {
                ranked.push((pos, m, c));
            }
        }
        if let Some(rule) = chosen {
            self.order(rule, &mut ranked, ctx.random);
        }
        let mut models: Vec<usize> = ranked.iter().map(|&(_, m, _)| m).collect();
        let failover = chosen.map_or(Failover::Class, |r| r.failover);
        if failover == Failover::Class {
            let own_ranked: Vec<usize> = ranked.iter().map(|r| r.1).collect();
            for m in own_ranked {
                for &eq in &self.models[m].equivalents {
                    if !models.contains(&eq)
                        && self
                            .admit(eq, chosen, ctx, live, trace, &mut screening)
                            .is_some()
                    {
                        models.push(eq);
                    }
                }
            }
        }

        // Deployments: closed circuits first, half-open after, then those whose provider quota
        // cannot take the request (the provider may still; nothing else is left); open ones
        // skipped.
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut probing: Vec<Attempt> = Vec::new();
        let mut over_quota: Vec<Attempt> = Vec::new();
        for &m in &models {
            for &d in &self.models[m].deployments {
                let dep = &self.deployments[d];
                let stats = live.stats(d, &dep.name).unwrap_or_default();
                let tokens =
                    self.estimated_tokens(&self.models[m], &ctx.request, TokenCount::Total);
                if stats.circuit != CircuitState::Open && !quota_fits(dep, &stats, tokens) {
                    trace.push(|| Step::DeploymentSkipped {
                        deployment: dep.name.to_string(),
                        reason: format!(
                            "provider quota nearly used: {} requests, {} tokens left this minute; tried last",
                            shown(stats.quota_requests_left),
                            shown(stats.quota_tokens_left)
                        ),
                    });
                    over_quota.push(self.attempt(d));
                    continue;
                }
                match stats.circuit {
                    CircuitState::Closed => attempts.push(self.attempt(d)),
                    CircuitState::HalfOpen => probing.push(self.attempt(d)),
                    CircuitState::Open => trace.push(|| Step::DeploymentSkipped {
                        deployment: dep.name.to_string(),
                        reason: "circuit open".into(),
                    }),
                }
            }
        }
        attempts.extend(probing);
        attempts.extend(over_quota);

        // Canary split on the model that serves first.
        let mut canary = None;
        if let Some(&ci) = attempts
            .first()
            .and_then(|a| self.canary_by_model.get(&self.deployments[a.index].model))
        {
            let c = &self.canaries[ci];
            attempts.retain(|a| a.index != c.candidate);
            let candidate_open = live
                .stats(c.candidate, &self.deployments[c.candidate].name)
                .is_some_and(|s| s.circuit == CircuitState::Open);
            if candidate_open {
                trace.push(|| Step::DeploymentSkipped {
                    deployment: self.deployments[c.candidate].name.to_string(),
                    reason:
                        "canary candidate's circuit open: the request is left out of the canary"
                            .into(),
                });
            }
            if let Some(weight) = state.canary_weight(&c.name).filter(|_| !candidate_open) {
                // Per request by default; a sticky split keeps one key or user on one arm.
                let sticky = match c.spec.split {
                    Split::PerRequest => None,
                    Split::StickyKey => Some(&ctx.identity.key.id),
                    Split::StickyUser => Some(&ctx.identity.user.id),
                };
                let route = split::route(
                    c.spec.split,
                    weight,
                    ctx.canary_random,
                    sticky.filter(|id| !id.is_empty()).map(String::as_str),
                    c.salt,
                );
                let w = route.w;
                let arm = match route.arm {
                    split::Arm::Candidate => Arm::Candidate,
                    split::Arm::Baseline => Arm::Baseline,
                };
                if arm == Arm::Candidate {
                    attempts.insert(0, self.attempt(c.candidate));
                }
                trace.push(|| Step::Canary {
                    canary: c.name.to_string(),
                    weight_percent: weight,
                    arm: arm.as_str().into(),
                });
                canary = Some(CanaryAssignment {
                    canary: c.name.clone(),
                    arm,
                    weight: w,
                });
            }
        }

        let Some(first) = attempts.first() else {
            return Err(DecideError::NoDeployment {
                model: model_name.to_string(),
                rule: rule_name,
                reason: match screening {
                    _ if !models.is_empty() => Unservable::CircuitsOpen,
                    Screening {
                        too_small: Some(largest_window),
                        fitted: false,
                    } => Unservable::ContextLength {
                        tokens: req.input_tokens.saturating_add(req.max_tokens.unwrap_or(0)),
                        input_tokens: req.input_tokens,
                        largest_window,
                    },
                    _ => Unservable::Filtered,
                },
            });
        };
        let first_model = first.model.clone();
        let estimated =
            self.worst_case_cost(&self.models[self.deployments[first.index].model], ctx);
        // Failover may reach a pricier model than the first: hold the worst of the list.
        let worst = attempts
            .iter()
            .map(|a| self.worst_case_cost(&self.models[self.deployments[a.index].model], ctx))
            .fold(estimated, f64::max);
        let reservations = applied
            .iter()
            .map(|a| {
                let b = &self.budgets[a.budget];
                Reservation {
                    budget: b.name.clone(),
                    scope: b.spec.scope,
                    principal: a.principal.clone(),
                    amount_usd: worst,
                    limit_usd: b.spec.limit_usd,
                    // A downgraded request is the answer to its downgrade budget being
                    // exceeded: it goes past that limit on purpose.
                    strict: b.spec.strict && !(downgrade.is_some() && b.downgrades()),
                    on_store_unavailable: b.spec.on_store_unavailable,
                }
            })
            .collect();
        let rate_charges = self.rate_charges(ctx, limited, &attempts);
        let budget = downgrade.as_ref().and_then(|d| d.budget.clone());
        Ok(Decision {
            revision: self.revision.clone(),
            rule: rule_name,
            strategy,
            requested_model: req.model.clone(),
            model: model_name.clone(),
            cache_ttl_secs: self.cache_ttl_secs(&first_model),
            cache_semantic_threshold: self.cache_semantic_threshold(&first_model),
            attempts,
            budget_action: if downgrade.is_some() {
                BudgetAction::Downgrade
            } else {
                BudgetAction::Allow
            },
            budget,
            reservations,
            rate_charges,
            downgrade,
            canary,
            estimated_cost_usd: estimated,
            eval_errors: trace.take_errors(),
        })
    }

    fn facts<'a>(
        &self,
        ctx: &'a RequestContext,
        model: &'a str,
        vars: &'a BudgetVars,
        ratelimit: RateVars,
        now: chrono::DateTime<chrono::FixedOffset>,
    ) -> Facts<'a> {
        Facts {
            request: &ctx.request,
            model,
            identity: &ctx.identity,
            budget: vars,
            ratelimit,
            now,
        }
    }

    /// Tokens of a kind the request may use on a model: its input estimate, the worst-case
    /// output ([`worst_case_output`]; none on the embeddings endpoint), or both.
    pub fn estimated_tokens(
        &self,
        model: &ModelInfo,
        request: &RequestFacts,
        count: TokenCount,
    ) -> u64 {
        let input = request.input_tokens;
        let output = match request.endpoint {
            Endpoint::Chat => worst_case_output(model, request.max_tokens),
            Endpoint::Embeddings => 0,
        };
        match count {
            TokenCount::Input => input,
            TokenCount::Output => output,
            TokenCount::Total => input.saturating_add(output),
        }
    }

    /// The rate limits that count a request routed from `model`, each with its bucket, and
    /// the smallest shares left of their request and token rates. A limit whose condition
    /// cannot be evaluated applies (as a budget does); a bucket expression that cannot be
    /// evaluated counts the request in the rule's one `expression:(error)` bucket.
    fn rate_limits_applying(
        &self,
        ctx: &RequestContext,
        model: &str,
        vars: &BudgetVars,
        now: chrono::DateTime<chrono::FixedOffset>,
        state: &dyn StateView,
        trace: &mut Trace,
    ) -> (Vec<(usize, String)>, RateVars) {
        let mut applying = Vec::new();
        let mut rates = RateVars::default();
        if self.rate_limits.is_empty() {
            return (applying, rates);
        }
        let facts = self.facts(ctx, model, vars, RateVars::default(), now);
        for (i, limit) in self.rate_limits.iter().enumerate() {
            if let Some(when) = &limit.when {
                if !trace.holds(when, &facts, true) {
                    continue;
                }
            }
            let spec = &limit.spec;
            let scope = spec.scope.as_str();
            let bucket = match (spec.scope.principal(), &limit.bucket) {
                (Some(principal), _) => {
                    let id = &ctx.identity.of(principal).id;
                    if id.is_empty() {
                        continue;
                    }
                    match principal {
                        // Users and projects are named within their tenant.
                        Scope::User | Scope::Project => {
                            bucket_name(scope, &[&ctx.identity.tenant.id, "/", id])
                        }
                        Scope::Key | Scope::Tenant => bucket_name(scope, &[id]),
                    }
                }
                (None, _) if spec.scope == LimitScope::Model => bucket_name(scope, &[model]),
                (None, Some(bucket)) => match trace.value(bucket, &facts) {
                    Some(v) if v.is_empty() => continue,
                    Some(v) => bucket_name(scope, &[&v]),
                    None => bucket_name(scope, &["(error)"]),
                },
                (None, None) => continue,
            };
            let left = state
                .ratelimit_remaining(&limit.name, &bucket)
                .clamp(0.0, 1.0);
            if spec.requests.is_some() {
                rates.requests = rates.requests.min(left);
            }
            if spec.tokens.is_some() {
                rates.tokens = rates.tokens.min(left);
            }
            trace.push(|| Step::RateLimit {
                limit: spec.name.clone(),
                bucket: bucket.clone(),
                remaining: left,
            });
            applying.push((i, bucket));
        }
        (applying, rates)
    }

    /// The charges of the applying rate limits: one request, and the tokens estimated on the
    /// attempt list's hungriest model.
    fn rate_charges(
        &self,
        ctx: &RequestContext,
        applying: Vec<(usize, String)>,
        attempts: &[Attempt],
    ) -> Vec<RateCharge> {
        let mut out = Vec::with_capacity(2 * applying.len());
        for (i, bucket) in applying {
            let limit = &self.rate_limits[i];
            let spec = &limit.spec;
            let charge = |rate: &Rate, measure: Measure, bucket: String, amount: u64| RateCharge {
                rule: limit.name.clone(),
                measure,
                bucket,
                amount,
                limit: rate.limit,
                period_ms: rate.per.millis(),
                burst: rate.burst(),
                on_store_unavailable: spec.on_store_unavailable,
            };
            let Some(rate) = &spec.tokens else {
                if let Some(rate) = &spec.requests {
                    out.push(charge(rate, Measure::Requests, bucket, 1));
                }
                continue;
            };
            if let Some(requests) = &spec.requests {
                out.push(charge(requests, Measure::Requests, bucket.clone(), 1));
            }
            let tokens = attempts
                .iter()
                .map(|a| {
                    let model = &self.models[self.deployments[a.index].model];
                    self.estimated_tokens(model, &ctx.request, rate.count)
                })
                .max()
                .unwrap_or(0);
            // The bucket's name moves into the last charge.
            out.push(charge(rate, Measure::Tokens(rate.count), bucket, tokens));
        }
        out
    }

    /// Share of a deployment's declared provider quota still free: the tighter of its RPM and
    /// TPM as live stats report them; 1 when it declares none or nothing is known.
    pub fn quota_headroom(&self, d: usize, stats: &DeploymentStats) -> f64 {
        let Some(q) = self.deployments.get(d).and_then(|d| d.quota) else {
            return 1.0;
        };
        let share = |left: Option<f64>, quota: Option<f64>| match (left, quota) {
            (Some(left), Some(quota)) if quota > 0.0 => (left / quota).clamp(0.0, 1.0),
            _ => 1.0,
        };
        share(stats.quota_requests_left, q.requests_per_minute)
            .min(share(stats.quota_tokens_left, q.tokens_per_minute))
    }

    fn attempt(&self, d: usize) -> Attempt {
        let dep = &self.deployments[d];
        Attempt {
            index: d,
            deployment: dep.name.clone(),
            model: dep.model_name.clone(),
            provider: dep.provider_name.clone(),
            region: dep.region.clone(),
            upstream_model: dep.upstream_model.clone(),
        }
    }

    /// The first applied budget of the given action that this cost exceeds.
    fn budget_over(&self, applied: &[Applied], cost: f64, action: OnExceed) -> Option<usize> {
        applied
            .iter()
            .find(|a| {
                let spec = &self.budgets[a.budget].spec;
                spec.on_exceed == action && a.spent + cost > spec.limit_usd
            })
            .map(|a| a.budget)
    }

    fn blocked(
        &self,
        ctx: &RequestContext,
        model: usize,
        budget: Arc<str>,
        downgrade: Option<Downgrade>,
        cost: f64,
        eval_errors: Vec<crate::expr::EvalError>,
    ) -> Decision {
        let name = self.models[model].name.clone();
        Decision {
            revision: self.revision.clone(),
            rule: budget.clone(),
            strategy: Strategy::Priority,
            requested_model: ctx.request.model.clone(),
            cache_ttl_secs: self.cache_ttl_secs(&name),
            cache_semantic_threshold: None,
            model: name,
            attempts: Vec::new(),
            budget_action: BudgetAction::Block,
            budget: Some(budget),
            reservations: Vec::new(),
            rate_charges: Vec::new(),
            downgrade,
            canary: None,
            estimated_cost_usd: cost,
            eval_errors,
        }
    }

    /// Whether a candidate model can serve the request; its view for ordering when it can.
    /// Records in `screening` whether its context window held the request.
    fn admit(
        &self,
        m: usize,
        rule: Option<&Rule>,
        ctx: &RequestContext,
        live: &dyn LiveView,
        trace: &mut Trace,
        screening: &mut Screening,
    ) -> Option<Ranked> {
        let info = &self.models[m];
        let req = &ctx.request;
        let need = |cap: Capability, wanted: bool| !wanted || info.has(cap);
        let endpoint_cap = match req.endpoint {
            Endpoint::Chat => Capability::Chat,
            Endpoint::Embeddings => Capability::Embeddings,
        };
        let tokens = req.input_tokens.saturating_add(req.max_tokens.unwrap_or(0));
        let reason = if !info.has(endpoint_cap) {
            Some(format!(
                "does not serve the {} endpoint",
                req.endpoint.as_str()
            ))
        } else if !need(Capability::Tools, req.tools) {
            Some("does not support tools".to_owned())
        } else if !need(Capability::Vision, req.vision) {
            Some("does not accept images".to_owned())
        } else if tokens > info.context_window {
            screening.too_small = screening.too_small.max(Some(info.context_window));
            Some(format!(
                "context window {} < {tokens} tokens",
                info.context_window
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            trace.push(|| Step::CandidateDropped {
                model: info.name.to_string(),
                reason,
            });
            return None;
        }
        screening.fitted = true;
        let first = info.deployments.first().copied();
        let stats = first
            .and_then(|d| live.stats(d, &self.deployments[d].name))
            .unwrap_or_default();
        let healthy = info.deployments.iter().any(|&d| {
            live.stats(d, &self.deployments[d].name)
                .is_none_or(|s| s.circuit != CircuitState::Open)
        });
        let cost = self.worst_case_cost(info, ctx);
        if let Some(filter) = rule.and_then(|r| r.filter.as_ref()) {
            let view = Candidate {
                model: info,
                stats,
                healthy,
                estimated_cost: cost,
                quota_headroom: first.map_or(1.0, |d| self.quota_headroom(d, &stats)),
            };
            if !trace.holds(filter, &view, false) {
                trace.push(|| Step::CandidateDropped {
                    model: info.name.to_string(),
                    reason: format!("filter `{}` is false", filter.source),
                });
                return None;
            }
        }
        let latency = |metric: LatencyMetric| match metric {
            LatencyMetric::P95 => stats.p95_ms,
            LatencyMetric::P50 => stats.p50_ms,
            LatencyMetric::Ttft => stats.ttft_ms,
        };
        Some(Ranked {
            latency: rule.and_then(|r| latency(r.latency_metric)),
            cost,
            context: info.context_window,
        })
    }

    /// Orders admitted candidates by the rule's strategy; ties keep the written order.
    fn order(&self, rule: &Rule, ranked: &mut [(usize, usize, Ranked)], random: f64) {
        match rule.strategy {
            Strategy::Priority => {}
            Strategy::Latency => match rule.latency_slo_ms {
                Some(slo) => ranked.sort_by(|a, b| {
                    let within = |r: &Ranked| r.latency.is_none_or(|l| l <= slo);
                    let key = |r: &Ranked| {
                        if within(r) {
                            0.0
                        } else {
                            r.latency.unwrap_or(0.0)
                        }
                    };
                    key(&a.2).total_cmp(&key(&b.2))
                }),
                None => ranked.sort_by(|a, b| {
                    a.2.latency
                        .unwrap_or(0.0)
                        .total_cmp(&b.2.latency.unwrap_or(0.0))
                }),
            },
            Strategy::Cost => ranked.sort_by(|a, b| a.2.cost.total_cmp(&b.2.cost)),
            Strategy::Capability => ranked.sort_by(|a, b| {
                a.2.context
                    .cmp(&b.2.context)
                    .then(a.2.cost.total_cmp(&b.2.cost))
            }),
            Strategy::Weighted => {
                let weight = |pos: usize| rule.weights.get(pos).copied().unwrap_or(0.0);
                ranked.sort_by(|a, b| weight(b.0).total_cmp(&weight(a.0)));
                let total: f64 = ranked.iter().map(|r| weight(r.0)).sum();
                let mut point = random * total;
                let pick = ranked
                    .iter()
                    .position(|r| {
                        point -= weight(r.0);
                        point < 0.0
                    })
                    .unwrap_or(0);
                ranked[..=pick].rotate_right(1);
            }
        }
    }
}

/// What ordering needs of an admitted candidate.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    latency: Option<f64>,
    cost: f64,
    context: u64,
}

/// A rate limit bucket's name, `<scope>:<parts…>`, built in one allocation (it is made per
/// request and limit).
fn bucket_name(scope: &str, parts: &[&str]) -> String {
    let len = scope.len() + 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut name = String::with_capacity(len);
    name.push_str(scope);
    name.push(':');
    for p in parts {
        name.push_str(p);
    }
    name
}

/// Whether a deployment's provider quota, as far as it is known, can take one more request of
/// `tokens` tokens this minute.
fn quota_fits(dep: &DeploymentInfo, stats: &DeploymentStats, tokens: u64) -> bool {
    if dep.quota.is_none() {
        return true;
    }
    stats.quota_requests_left.is_none_or(|left| left >= 1.0)
        && stats
            .quota_tokens_left
            .is_none_or(|left| left >= tokens as f64)
}

/// A quota figure for the trace.
fn shown(left: Option<f64>) -> String {
    left.map_or_else(|| "unknown".to_owned(), |l| format!("{}", l.floor()))
}

fn scope_slot(scope: Scope) -> usize {
    SCOPES.iter().position(|&s| s == scope).unwrap_or(0)
}

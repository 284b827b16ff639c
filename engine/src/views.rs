//! Zero-copy views of a decision's inputs for CEL evaluation.
//!
//! The checker rewrites every field path (`request.model`, `budget.key.fraction`) into one
//! variable, so the resolver hands back a leaf straight from the request: strings are
//! borrowed, numbers are copied, and labels are looked up in place. Nothing is serialised into
//! CEL values per request.

use crate::input::{DeploymentStats, Identity, RequestFacts};
use cel::common::traits::{Container, Indexer, Sizer};
use cel::common::types::{
    self, CelBool, CelDouble, CelInt, CelList, CelString, CelTimestamp, Type,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::ExecutionError;
use std::collections::BTreeMap;

/// Spend of one scope as rules see it (`budget.<scope>.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    /// USD spent this period.
    pub spent: f64,
    /// The limit, 0 when no budget of the scope applies.
    pub limit: f64,
}

impl Spend {
    /// spent / limit, 0 without a limit.
    pub fn fraction(&self) -> f64 {
        if self.limit > 0.0 {
            self.spent / self.limit
        } else {
            0.0
        }
    }
}

/// The `budget` variable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetVars {
    /// Per scope, in the order key, user, project, tenant.
    pub scopes: [Spend; 4],
    /// A downgrade budget would be exceeded.
    pub exceeded: bool,
}

/// The `ratelimit` variable: the smallest share still available of the request and token
/// rates that apply; 1 when none applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateVars {
    /// Of the request rates.
    pub requests: f64,
    /// Of the token rates.
    pub tokens: f64,
}

impl Default for RateVars {
    fn default() -> Self {
        RateVars {
            requests: 1.0,
            tokens: 1.0,
        }
    }
}

/// Everything a `when` may read.
pub struct Facts<'a> {
    /// The request.
    pub request: &'a RequestFacts,
    /// The model routing starts from (after any downgrade).
    pub model: &'a str,
    /// Who sent it.
    pub identity: &'a Identity,
    /// Budget figures.
    pub budget: &'a BudgetVars,
    /// Rate limit shares.
    pub ratelimit: RateVars,
    /// The decision time.
    pub now: chrono::DateTime<chrono::FixedOffset>,
}

fn s(v: &str) -> Option<CowVal<'_, '_>> {
    Some(CowVal::owned(CelString::from(v)))
}
fn i(v: u64) -> Option<CowVal<'static, 'static>> {
    Some(CowVal::owned(CelInt::from(
        i64::try_from(v).unwrap_or(i64::MAX),
    )))
}
fn d(v: f64) -> Option<CowVal<'static, 'static>> {
    Some(CowVal::owned(CelDouble::from(v)))
}
fn b(v: bool) -> Option<CowVal<'static, 'static>> {
    Some(CowVal::owned(CelBool::from(v)))
}

impl VariableResolver for Facts<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let r = self.request;
        let (root, rest) = variable.split_once('.').unwrap_or((variable, ""));
        match root {
            "request" => match rest {
                "model" => s(self.model),
                "requested_model" => s(&r.model),
                "endpoint" => s(r.endpoint.as_str()),
                "stream" => b(r.stream),
                "input_tokens" => i(r.input_tokens),
                "max_tokens" => i(r.max_tokens.unwrap_or(0)),
                "tools" => b(r.tools),
                "vision" => b(r.vision),
                "metadata" => Some(CowVal::owned(Labels(&r.metadata))),
                _ => None,
            },
            "key" | "user" | "project" | "tenant" => {
                let p = match root {
                    "key" => &self.identity.key,
                    "user" => &self.identity.user,
                    "project" => &self.identity.project,
                    _ => &self.identity.tenant,
                };
                match rest {
                    "id" => s(&p.id),
                    "labels" => Some(CowVal::owned(Labels(&p.labels))),
                    _ => None,
                }
            }
            "budget" => {
                let scopes = &self.budget.scopes;
                match rest {
                    "exceeded" => b(self.budget.exceeded),
                    "max_fraction" => d(scopes.iter().map(Spend::fraction).fold(0.0, f64::max)),
                    _ => {
                        let (scope, field) = rest.split_once('.')?;
                        let spend = match scope {
                            "key" => scopes[0],
                            "user" => scopes[1],
                            "project" => scopes[2],
                            "tenant" => scopes[3],
                            _ => return None,
                        };
                        match field {
                            "spent" => d(spend.spent),
                            "limit" => d(spend.limit),
                            "fraction" => d(spend.fraction()),
                            _ => None,
                        }
                    }
                }
            }
            "ratelimit" => match rest {
                "requests" => d(self.ratelimit.requests),
                "tokens" => d(self.ratelimit.tokens),
                _ => None,
            },
            "now" => Some(CowVal::owned(CelTimestamp::from(self.now))),
            _ => None,
        }
    }
}

/// What a candidate filter reads as `m`.
pub struct Candidate<'a> {
    /// The model.
    pub model: &'a crate::policy::ModelInfo,
    /// Live stats of its first routable deployment.
    pub stats: DeploymentStats,
    /// Some deployment's circuit is not open.
    pub healthy: bool,
    /// Worst-case cost of the request on it.
    pub estimated_cost: f64,
    /// Share of its first deployment's provider quota still free; 1 without a quota.
    pub quota_headroom: f64,
}

impl VariableResolver for Candidate<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let m = self.model;
        let st = &self.stats;
        match variable.strip_prefix("m.")? {
            "name" => s(&m.name),
            "class" => s(&m.class),
            "quality" => d(m.quality),
            "context_window" => i(m.context_window),
            "capabilities" => {
                let items: Vec<Box<dyn Val>> = m
                    .capabilities
                    .iter()
                    .map(|c| {
                        let name = serde_json::to_value(c)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        Box::new(CelString::from(name)) as Box<dyn Val>
                    })
                    .collect();
                Some(CowVal::owned(CelList::from(items)))
            }
            "input_price" => d(m.price.input_per_mtok),
            "output_price" => d(m.price.output_per_mtok),
            "estimated_cost" => d(self.estimated_cost),
            "latency_p50_ms" => d(st.p50_ms.unwrap_or(0.0)),
            "latency_p95_ms" => d(st.p95_ms.unwrap_or(0.0)),
            "latency_p99_ms" => d(st.p99_ms.unwrap_or(0.0)),
            "ttft_ms" => d(st.ttft_ms.unwrap_or(0.0)),
            "error_rate" => d(st.error_rate),
            "circuit" => s(st.circuit.as_str()),
            "healthy" => b(self.healthy),
            "quota_headroom" => d(self.quota_headroom),
            _ => None,
        }
    }
}

/// A string-to-string map viewed in place (`request.metadata`, `key.labels`).
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a>(pub &'a BTreeMap<String, String>);

fn key_of(idx: &dyn Val) -> Result<&str, ExecutionError> {
    idx.downcast_ref::<CelString>()
        .map(|k| k.inner())
        .ok_or_else(|| ExecutionError::function_error("[]", "map keys are strings"))
}

impl<'a> Val for Labels<'a> {
    fn get_type(&self) -> &Type {
        &types::MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &types::MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(*self)
    }
}

impl Container for Labels<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.0.contains_key(key_of(value)?))
    }
}

impl Sizer for Labels<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(i64::try_from(self.0.len()).unwrap_or(i64::MAX))
    }
}

impl<'a> Indexer for Labels<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = key_of(idx)?;
        match self.0.get(key) {
            Some(v) => Ok(CowVal::owned(CelString::from(v.as_str()))),
            None => Err(ExecutionError::no_such_key(key)),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

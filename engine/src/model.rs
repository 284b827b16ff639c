//! The policy documents as typed values.
//!
//! Every file of a policy repository is one YAML document with `apiVersion: llmgw.dev/v1` and a
//! `kind`. The JSON Schemas in `schemas/` validate a document before it is deserialised into
//! these types, so the types stay plain: a missing or mistyped field is reported by the schema
//! with its file, line and column, never by serde.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The one API version this engine reads.
pub const API_VERSION: &str = "llmgw.dev/v1";

/// One policy document, by kind.
#[derive(Debug, Clone)]
pub enum Document {
    /// Upstream providers.
    Providers(ProvidersDoc),
    /// Logical models and their deployments.
    Models(ModelsDoc),
    /// Ordered routing rules.
    Routing(RoutingDoc),
    /// Spend limits.
    Budgets(BudgetsDoc),
    /// Request and token rate limits.
    RateLimits(RateLimitsDoc),
    /// Model downgrades.
    Downgrades(DowngradesDoc),
    /// Canary rollouts of new deployments.
    Canaries(CanariesDoc),
    /// Response cache settings.
    Cache(CacheDoc),
    /// Policy unit tests.
    PolicyTests(PolicyTestsDoc),
}

/// `kind: Providers`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProvidersDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The providers declared by this file.
    pub providers: Vec<Provider>,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    /// OpenAI's API.
    Openai,
    /// Any OpenAI-compatible API (DeepSeek, Qwen, Mistral, OpenRouter, vLLM, Together…).
    OpenaiCompatible,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// Azure OpenAI: OpenAI's chat API behind deployment URLs, `api-key` or Entra ID auth.
    AzureOpenai,
    /// AWS Bedrock Converse: SigV4-signed requests, event-stream answers.
    Bedrock,
    /// Gemini on Google Vertex AI: `generateContent` under a project and region, with OAuth
    /// access tokens obtained for a service account.
    Vertex,
    /// A simulated provider inside the gateway: no network, no key.
    Simulated,
}

/// One upstream provider in one region.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Provider {
    /// Unique name, referenced by deployments.
    pub name: String,
    /// Wire protocol.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Region label, the unit of circuit breaking.
    #[serde(default = "default_region")]
    pub region: String,
    /// Base URL of the API (not used by `simulated`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// A secret reference (`env:NAME` or `file:PATH`), never a secret.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Circuit breaker settings.
    #[serde(default)]
    pub circuit: CircuitSettings,
    /// Behaviour of a simulated provider.
    #[serde(default)]
    pub simulated: Option<SimulatedProfile>,
    /// Active health probes of the provider's deployments; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_probe: Option<HealthProbe>,
    /// Azure OpenAI settings (type `azure_openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// AWS Bedrock settings (type `bedrock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSettings>,
    /// Vertex AI settings (type `vertex`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexSettings>,
}

/// How an AWS Bedrock account is called. The deployment's `upstream_model` is the Bedrock model
/// or inference profile id: requests go to `{base_url}/model/{id}/converse`, signed with SigV4.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BedrockSettings {
    /// The AWS region, e.g. `us-east-1`: part of the signature and of the default endpoint.
    pub region: String,
    /// A secret reference to the access key id.
    pub access_key_id: String,
    /// A secret reference to the secret access key.
    pub secret_access_key: String,
    /// A secret reference to the session token of temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// Where a Vertex AI model is and who calls it. Requests go to
/// `https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}/publishers/google/models/{upstream_model}:generateContent`
/// (host `aiplatform.googleapis.com` for region `global`); a provider's `base_url` replaces the
/// scheme and host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VertexSettings {
    /// The Google Cloud project id.
    pub project: String,
    /// The Vertex AI location, such as `us-central1`, or `global`.
    pub region: String,
    /// A secret reference (`env:NAME` or `file:PATH`) to the service account's JSON key.
    pub service_account: String,
    /// Where access tokens are obtained instead of the key's `token_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
}

/// How an Azure OpenAI resource is called. The deployment's `upstream_model` is the Azure
/// deployment name: requests go to `{base_url}/openai/deployments/{deployment}/…`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AzureSettings {
    /// The `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: String,
    /// A secret reference to an Entra ID access token sent as a bearer token instead of the
    /// `api-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_token: Option<String>,
}

/// Active health probes: a one-token chat completion sent to a deployment whose breaker is
/// not closed or whose live stats are stale, instead of letting real traffic be the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct HealthProbe {
    /// Time between two probes of one deployment.
    #[serde(default = "default_probe_interval_secs")]
    pub interval_secs: u64,
    /// How long a probe may take before it counts as failed.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_probe_interval_secs() -> u64 {
    10
}
fn default_probe_timeout_ms() -> u64 {
    2_000
}

fn default_region() -> String {
    "default".to_owned()
}

/// Upstream timeouts in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Timeouts {
    /// TCP and TLS connect.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the first byte (JSON) or first token (stream).
    #[serde(default = "default_first_token_ms")]
    pub first_token_ms: u64,
    /// Longest silence between two stream chunks.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Whole request, JSON responses only.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_first_token_ms() -> u64 {
    15_000
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_total_ms() -> u64 {
    120_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            first_token_ms: default_first_token_ms(),
            idle_ms: default_idle_ms(),
            total_ms: default_total_ms(),
        }
    }
}

/// Circuit breaker settings of a provider region.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct CircuitSettings {
    /// Length of the sliding window over which the error ratio is computed.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Requests in the window before the error ratio may open the circuit.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Error ratio that opens the circuit.
    #[serde(default = "default_error_ratio")]
    pub error_ratio: f64,
    /// Consecutive failures that open the circuit regardless of the ratio.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u64,
    /// How long an open circuit waits before a half-open probe (unless `Retry-After` says more).
    #[serde(default = "default_cooldown_secs")]
    pub cooldown_secs: u64,
}

fn default_window_secs() -> u64 {
    30
}
fn default_min_requests() -> u64 {
    20
}
fn default_error_ratio() -> f64 {
    0.5
}
fn default_consecutive() -> u64 {
    5
}
fn default_cooldown_secs() -> u64 {
    10
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            window_secs: default_window_secs(),
            min_requests: default_min_requests(),
            error_ratio: default_error_ratio(),
            consecutive_failures: default_consecutive(),
            cooldown_secs: default_cooldown_secs(),
        }
    }
}

/// How a simulated provider behaves.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SimulatedProfile {
    /// Time to first token, milliseconds.
    #[serde(default = "default_sim_ttft")]
    pub ttft_ms: u64,
    /// Output speed.
    #[serde(default = "default_sim_tps")]
    pub tokens_per_second: f64,
    /// Random jitter added to the first-token time, as a fraction of it.
    #[serde(default)]
    pub jitter: f64,
    /// Fraction of requests answered with a 500.
    #[serde(default)]
    pub error_rate: f64,
    /// Fraction of requests answered with a 429.
    #[serde(default)]
    pub rate_limit_rate: f64,
    /// Output tokens when the request sets no `max_tokens`.
    #[serde(default = "default_sim_output")]
    pub output_tokens: u64,
}

fn default_sim_ttft() -> u64 {
    120
}
fn default_sim_tps() -> f64 {
    200.0
}
fn default_sim_output() -> u64 {
    48
}

/// `kind: Models`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelsDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The logical models declared by this file.
    pub models: Vec<Model>,
}

/// A capability a model may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Chat completions.
    Chat,
    /// Tool (function) calling.
    Tools,
    /// Image input.
    Vision,
    /// JSON mode / structured output.
    Json,
    /// Continues a partial assistant message (needed to resume a broken stream).
    Prefill,
    /// Embeddings.
    Embeddings,
}

/// A logical model: what clients ask for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Model {
    /// Unique name clients use in `model`.
    pub name: String,
    /// Equivalence class: models of one class may stand in for each other on failover.
    pub class: String,
    /// Quality score in [0, 1], used by quality thresholds.
    pub quality: f64,
    /// Context window in tokens.
    pub context_window: u64,
    /// Most output tokens one answer can have; what a request without `max_tokens` reserves.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// What the model can do.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<Capability>,
    /// Prices in USD per million tokens.
    pub price: Price,
    /// Where the model runs, in order of preference.
    pub deployments: Vec<Deployment>,
}

fn default_capabilities() -> Vec<Capability> {
    vec![Capability::Chat]
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output (completion) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// Cost in USD of the given token counts.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// One place a logical model is served.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Deployment {
    /// Unique name; defaults to `<model>@<provider>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The provider that serves it.
    pub provider: String,
    /// The model name the provider expects.
    pub upstream_model: String,
    /// Only reachable through a canary: ordinary routing never picks it.
    #[serde(default)]
    pub canary_only: bool,
    /// The provider's own limits on this deployment, when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ProviderQuota>,
}

/// A provider's rate limits on one deployment (its account's RPM and TPM for the model).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct ProviderQuota {
    /// Requests per minute the provider accepts.
    #[serde(default)]
    pub requests_per_minute: Option<f64>,
    /// Tokens (input plus output) per minute the provider accepts.
    #[serde(default)]
    pub tokens_per_minute: Option<f64>,
}

/// `kind: Routing`.
#[derive(Debug, Clone, Deserialize)]
pub struct RoutingDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Ordered rules: the first that matches decides.
    pub rules: Vec<RoutingRule>,
}

/// How a rule orders its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In the order written.
    #[default]
    Priority,
    /// Fastest first by live latency; with an SLO, the written order among those within it.
    Latency,
    /// Cheapest first for this request's estimated tokens.
    Cost,
    /// The smallest context window that fits, then price: long inputs go where they fit.
    Capability,
    /// One candidate drawn by weight, the rest by weight as failover.
    Weighted,
}

/// Which live latency the latency strategy compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMetric {
    /// Latency p95.
    #[default]
    P95,
    /// Latency p50.
    P50,
    /// Time to first token.
    Ttft,
}

/// What to append after a rule's own candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failover {
    /// The other models of each candidate's equivalence class.
    #[default]
    Class,
    /// Only the rule's candidates.
    None,
}

/// One routing rule.
#[derive(Debug, Clone, Deserialize)]
pub struct RoutingRule {
    /// Unique name, reported in every decision the rule makes.
    pub name: String,
    /// What the rule is for.
    #[serde(default)]
    pub description: Option<String>,
    /// CEL condition (boolean); absent means always.
    #[serde(default)]
    pub when: Option<String>,
    /// Logical models to choose from; absent means the requested model.
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
    /// CEL condition over each candidate `m`; a candidate for which it is false is dropped.
    #[serde(default)]
    pub filter: Option<String>,
    /// How candidates are ordered.
    #[serde(default)]
    pub strategy: Strategy,
    /// Latency strategy: which latency.
    #[serde(default)]
    pub latency_metric: LatencyMetric,
    /// Latency strategy: candidates within this many ms keep their written order.
    #[serde(default)]
    pub latency_slo_ms: Option<f64>,
    /// Weighted strategy: weight per candidate.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, f64>>,
    /// What follows the candidates in the attempt list.
    #[serde(default)]
    pub failover: Failover,
}

/// `kind: Budgets`.
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetsDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The budgets declared by this file.
    pub budgets: Vec<Budget>,
}

/// Who a budget's spend is counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each gateway key.
    Key,
    /// Each user.
    User,
    /// Each project.
    Project,
    /// Each tenant.
    Tenant,
}

impl Scope {
    /// The scope's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::User => "user",
            Scope::Project => "project",
            Scope::Tenant => "tenant",
        }
    }
}

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// UTC calendar day.
    Daily,
    /// UTC calendar week starting Monday.
    Weekly,
    /// UTC calendar month.
    Monthly,
    /// A rolling window of `window_secs`.
    Rolling,
}

/// What happens when a budget would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Refuse the request (429).
    Block,
    /// Move the request to the model the downgrade rules name; block if none applies.
    Downgrade,
}

/// What a budget does to a request while the state store is unavailable (its spend can then
/// be neither read nor held).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreUnavailable {
    /// Refuse the request (503): fail closed.
    #[default]
    Deny,
    /// Serve the request without holding or counting its cost against the budget.
    Allow,
}

/// One budget: a spend limit per entity of a scope.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Budget {
    /// Unique name, reported when it blocks or downgrades.
    pub name: String,
    /// Whose spend is counted.
    pub scope: Scope,
    /// CEL condition selecting the requests it applies to; absent means all.
    #[serde(default)]
    pub when: Option<String>,
    /// The period over which spend accumulates.
    pub period: Period,
    /// Rolling period: window length in seconds.
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// Limit in USD per period.
    pub limit_usd: f64,
    /// Fractions of the limit at which an alert is raised.
    #[serde(default)]
    pub alert_at: Vec<f64>,
    /// Action when the limit would be exceeded.
    pub on_exceed: OnExceed,
    /// Strict: reserve the worst-case cost before the call so spend never passes the limit.
    #[serde(default = "default_true")]
    pub strict: bool,
    /// While the state store is unavailable: refuse (default) or serve unbudgeted.
    #[serde(default)]
    pub on_store_unavailable: OnStoreUnavailable,
}

fn default_true() -> bool {
    true
}

/// `kind: RateLimits`.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitsDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The rate limits declared by this file.
    pub limits: Vec<RateLimit>,
}

/// Whose traffic one bucket of a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// Each gateway key.
    Key,
    /// Each user.
    User,
    /// Each project.
    Project,
    /// Each tenant.
    Tenant,
    /// Each logical model (the one routing starts from), across all clients.
    Model,
    /// Each value of the rule's `bucket` CEL expression.
    Expression,
}

impl LimitScope {
    /// The scope's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Model => "model",
            LimitScope::Expression => "expression",
            other => other.principal().map_or("", Scope::as_str),
        }
    }

    /// The principal kind of a key, user, project or tenant scope.
    pub fn principal(self) -> Option<Scope> {
        match self {
            LimitScope::Key => Some(Scope::Key),
            LimitScope::User => Some(Scope::User),
            LimitScope::Project => Some(Scope::Project),
            LimitScope::Tenant => Some(Scope::Tenant),
            LimitScope::Model | LimitScope::Expression => None,
        }
    }
}

/// The period a rate is written per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// A second.
    Second,
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day.
    Day,
}

impl Per {
    /// The period in milliseconds.
    pub fn millis(self) -> u64 {
        match self {
            Per::Second => 1_000,
            Per::Minute => 60_000,
            Per::Hour => 3_600_000,
            Per::Day => 86_400_000,
        }
    }
}

/// Which tokens a token rate counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenCount {
    /// Input (prompt) tokens.
    Input,
    /// Output (completion) tokens.
    Output,
    /// Both.
    #[default]
    Total,
}

/// A rate: at most `limit` per `per`, of which up to `burst` may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Rate {
    /// Requests or tokens per period (> 0; the lint checks).
    pub limit: f64,
    /// The period.
    pub per: Per,
    /// Most that may be used at once after a quiet spell; `limit` when absent.
    #[serde(default)]
    pub burst: Option<f64>,
    /// Token rates: which tokens count.
    #[serde(default)]
    pub count: TokenCount,
}

impl Rate {
    /// The burst, `limit` when absent.
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.limit)
    }

    /// Units per millisecond.
    pub fn per_ms(&self) -> f64 {
        self.limit / self.per.millis() as f64
    }
}

/// One rate limit: requests and/or tokens per period per bucket of a scope.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RateLimit {
    /// Unique name, reported when it refuses a request.
    pub name: String,
    /// Whose traffic one bucket counts.
    pub scope: LimitScope,
    /// Scope `expression`: CEL yielding the bucket (a string).
    #[serde(default)]
    pub bucket: Option<String>,
    /// CEL condition selecting the requests it applies to; absent means all.
    #[serde(default)]
    pub when: Option<String>,
    /// Requests per period.
    #[serde(default)]
    pub requests: Option<Rate>,
    /// Tokens per period, reserved from the estimate and corrected from `usage`.
    #[serde(default)]
    pub tokens: Option<Rate>,
    /// While the state store is unavailable: refuse (default) or serve unlimited.
    #[serde(default)]
    pub on_store_unavailable: OnStoreUnavailable,
}

/// `kind: Downgrades`.
#[derive(Debug, Clone, Deserialize)]
pub struct DowngradesDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Ordered downgrade rules.
    pub rules: Vec<DowngradeRule>,
}

/// Moves requests for some models to a cheaper one.
#[derive(Debug, Clone, Deserialize)]
pub struct DowngradeRule {
    /// Unique name, logged with every downgrade.
    pub name: String,
    /// CEL condition (boolean); absent means whenever a downgrade budget is exceeded.
    #[serde(default)]
    pub when: Option<String>,
    /// Models this rule moves away from.
    pub from: Vec<String>,
    /// The model requests move to.
    pub to: String,
}

/// `kind: Canaries`.
#[derive(Debug, Clone, Deserialize)]
pub struct CanariesDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The canaries declared by this file.
    pub canaries: Vec<Canary>,
}

/// A rollout of a candidate deployment of a logical model.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Canary {
    /// Unique name; with the spec's hash, the key of its persisted state.
    pub name: String,
    /// The logical model whose traffic is split.
    pub model: String,
    /// The deployment that serves the rest of the traffic.
    pub baseline: String,
    /// The new deployment.
    pub candidate: String,
    /// Steps, metrics, α and split.
    pub rollout: llmgw_canary::spec::CanarySpec,
}

/// `kind: Cache`.
#[derive(Debug, Clone, Deserialize)]
pub struct CacheDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// TTL for models without a rule; 0 disables caching.
    #[serde(default)]
    pub default_ttl_secs: u64,
    /// Per-model cache rules.
    #[serde(default)]
    pub rules: Vec<CacheRule>,
}

/// Cache settings of one model.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CacheRule {
    /// The logical model.
    pub model: String,
    /// How long a cached response stays fresh.
    pub ttl_secs: u64,
    /// Cosine similarity above which a near-duplicate prompt is a hit; absent means exact only.
    #[serde(default)]
    pub semantic_threshold: Option<f64>,
}

/// `kind: PolicyTests`.
#[derive(Debug, Clone, Deserialize)]
pub struct PolicyTestsDoc {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The cases.
    pub tests: Vec<PolicyTest>,
}

/// One policy unit test: an input and what the decision must be.
#[derive(Debug, Clone, Deserialize)]
pub struct PolicyTest {
    /// What the case checks.
    pub name: String,
    /// The request, identity, live stats and state.
    #[serde(flatten)]
    pub input: crate::input::DecisionInput,
    /// The expected decision.
    pub expect: Expectation,
}

/// What a policy test expects; absent fields are not checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Expectation {
    /// `route`, `downgrade` or `block`.
    #[serde(default)]
    pub action: Option<String>,
    /// The logical model of the first attempt.
    #[serde(default)]
    pub model: Option<String>,
    /// The provider of the first attempt.
    #[serde(default)]
    pub provider: Option<String>,
    /// The deployment of the first attempt.
    #[serde(default)]
    pub deployment: Option<String>,
    /// The rule that decided.
    #[serde(default)]
    pub rule: Option<String>,
    /// The model a downgrade came from.
    #[serde(default)]
    pub downgraded_from: Option<String>,
    /// The budget that blocked or downgraded.
    #[serde(default)]
    pub budget: Option<String>,
    /// The canary arm (`baseline` or `candidate`).
    #[serde(default)]
    pub canary_arm: Option<String>,
    /// The response cache TTL in seconds.
    #[serde(default)]
    pub cache_ttl_secs: Option<u64>,
    /// The whole ordered list of deployments.
    #[serde(default)]
    pub attempts: Option<Vec<String>>,
    /// The rate limits the request is counted against, in policy order.
    #[serde(default)]
    pub rate_limits: Option<Vec<String>>,
}

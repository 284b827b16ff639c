//! Phase 7: metrics and one structured log line per request, with cost attribution.
//! The line names the key by its id, never by its secret. A request a canary split also
//! hands its outcome to the canary controller (queued, never waited for).

use crate::app::App;
use crate::logging::JsonLine;
use crate::metrics::{ModelLabels, RequestLabels, TokenLabels};
use crate::phases::attempt::Trace;
use crate::upstream::Usage;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::Identity;
use prometheus_client::metrics::counter::Counter;
use std::time::Duration;

/// Everything known about a finished request.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    /// The request id (also in `x-request-id`).
    pub request_id: &'a str,
    /// HTTP status answered (499 when the client went away).
    pub status: u16,
    /// `chat` or `embeddings`.
    pub endpoint: &'static str,
    /// The API shape it came in (`openai`, `anthropic_messages`, `openai_responses`).
    pub door: &'static str,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The model asked for.
    pub requested_model: &'a str,
    /// Logical model and provider that served the answer (the last one for a resumed stream).
    pub served: Option<(&'a str, &'a str)>,
    /// The decision, when one was made.
    pub decision: Option<&'a Decision>,
    /// The rule that decided, or refused for want of a deployment (empty when no rule did).
    pub rule: &'a str,
    /// The policy revision of that decision or refusal (empty when none was made).
    pub policy_revision: &'a str,
    /// Who sent it.
    pub identity: Option<&'a Identity>,
    /// Tokens.
    pub usage: Usage,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Total latency.
    pub latency: Duration,
    /// Time to first token (streams).
    pub ttft: Option<Duration>,
    /// The attempts.
    pub trace: Option<&'a Trace>,
    /// `ok`, `error`, `truncated` or `client_closed`.
    pub outcome: &'a str,
    /// The error message, if any.
    pub error: Option<&'a str>,
    /// Pre-resolved metrics of the serving deployment (successful requests) and its
    /// `requests{status=200}` counter for the deciding rule.
    pub handles: Option<(&'a crate::metrics::ServedHandles, Counter)>,
    /// The instants of the request's trace, when traces are exported.
    pub timeline: Option<&'a crate::otel::Timeline>,
}

/// Updates metrics and writes the request's log line.
pub fn record(app: &App, r: &RequestRecord<'_>) {
    let (model, provider) = r.served.unwrap_or((r.requested_model, ""));
    match &r.handles {
        Some((h, ok)) if r.status == 200 => {
            ok.inc();
            h.latency.observe(r.latency.as_secs_f64());
            if let Some(t) = r.ttft {
                h.ttft.observe(t.as_secs_f64());
            }
            h.tokens_in.inc_by(r.usage.input_tokens);
            h.tokens_out.inc_by(r.usage.output_tokens);
            if r.cost_usd > 0.0 {
                h.cost.inc_by(r.cost_usd);
            }
        }
        _ => metrics_slow_path(app, r, model, provider),
    }
    log(r, model, provider);
    if let (Some(otel), Some(timeline)) = (&app.otel, r.timeline) {
        otel.export(timeline, r);
    }
    crate::canary_controller::observe(app, r);
}

fn metrics_slow_path(app: &App, r: &RequestRecord<'_>, model: &str, provider: &str) {
    let m = &app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            status: r.status,
            model: model.to_owned(),
            provider: provider.to_owned(),
            rule: r.rule.to_owned(),
        })
        .inc();
    let labels = ModelLabels {
        model: model.to_owned(),
        provider: provider.to_owned(),
    };
    m.latency
        .get_or_create(&labels)
        .observe(r.latency.as_secs_f64());
    if let Some(t) = r.ttft {
        m.ttft.get_or_create(&labels).observe(t.as_secs_f64());
    }
    if r.usage.input_tokens + r.usage.output_tokens > 0 {
        let tokens = |kind| TokenLabels {
            model: model.to_owned(),
            provider: provider.to_owned(),
            kind,
        };
        m.tokens
            .get_or_create(&tokens("input"))
            .inc_by(r.usage.input_tokens);
        m.tokens
            .get_or_create(&tokens("output"))
            .inc_by(r.usage.output_tokens);
    }
    if r.cost_usd > 0.0 {
        m.cost.get_or_create(&labels).inc_by(r.cost_usd);
    }
}

fn log(r: &RequestRecord<'_>, model: &str, provider: &str) {
    let id = |f: fn(&Identity) -> &str| r.identity.map(f).unwrap_or("");
    let d = r.decision;
    if tracing::enabled!(target: "llmgw::request", tracing::Level::INFO) {
        if let Some(mut line) = JsonLine::start("request") {
            // The fields of the `tracing` event below, in its order; absent options are left
            // out as `tracing` leaves them out.
            line.str("request_id", r.request_id)
                .u64("status", r.status.into())
                .str("outcome", r.outcome)
                .str("endpoint", r.endpoint)
                .str("door", r.door)
                .bool("stream", r.stream)
                .str("requested_model", r.requested_model)
                .str("model", model)
                .str("provider", provider)
                .str("rule", r.rule)
                .str("policy_revision", r.policy_revision)
                .str(
                    "downgraded_from",
                    d.and_then(|d| d.downgrade.as_ref())
                        .map(|g| &*g.from)
                        .unwrap_or(""),
                )
                .str(
                    "canary",
                    d.and_then(|d| d.canary.as_ref())
                        .map(|c| &*c.canary)
                        .unwrap_or(""),
                )
                .str(
                    "canary_arm",
                    d.and_then(|d| d.canary.as_ref())
                        .map(|c| c.arm.as_str())
                        .unwrap_or(""),
                )
                .str("key_id", id(|i| &i.key.id))
                .str("user", id(|i| &i.user.id))
                .str("project", id(|i| &i.project.id))
                .str("tenant", id(|i| &i.tenant.id))
                .u64("input_tokens", r.usage.input_tokens)
                .u64("output_tokens", r.usage.output_tokens)
                .f64("cost_usd", r.cost_usd)
                .f64("latency_ms", r.latency.as_secs_f64() * 1000.0);
            if let Some(t) = r.ttft {
                line.f64("ttft_ms", t.as_secs_f64() * 1000.0);
            }
            line.u64("retries", r.trace.map_or(0, |t| t.retries).into())
                .u64("failovers", r.trace.map_or(0, |t| t.failovers).into())
                .u64("resumed", r.trace.map_or(0, |t| t.resumed).into())
                .u64(
                    "malformed_events",
                    r.trace.map_or(0, |t| t.malformed_events).into(),
                )
                .str("cache", r.trace.map_or("", |t| t.cache))
                .json("attempts", r.trace.map_or(&[][..], |t| &t.calls[..]));
            if r.trace.is_some_and(|t| t.unbudgeted) {
                line.bool("unbudgeted", true);
            }
            if let Some(e) = r.error {
                line.str("error", e);
            }
            line.finish("llmgw::request");
            return;
        }
    }
    // Logged as text, the attempts are one JSON string.
    let attempts = r
        .trace
        .map(|t| serde_json::to_string(&t.calls).unwrap_or_default())
        .unwrap_or_default();
    tracing::info!(
        target: "llmgw::request",
        request_id = r.request_id,
        status = r.status,
        outcome = r.outcome,
        endpoint = r.endpoint,
        door = r.door,
        stream = r.stream,
        requested_model = r.requested_model,
        model = model,
        provider = provider,
        rule = r.rule,
        policy_revision = r.policy_revision,
        downgraded_from = d.and_then(|d| d.downgrade.as_ref()).map(|g| &*g.from).unwrap_or(""),
        canary = d.and_then(|d| d.canary.as_ref()).map(|c| &*c.canary).unwrap_or(""),
        canary_arm = d.and_then(|d| d.canary.as_ref()).map(|c| c.arm.as_str()).unwrap_or(""),
        key_id = id(|i| &i.key.id),
        user = id(|i| &i.user.id),
        project = id(|i| &i.project.id),
        tenant = id(|i| &i.tenant.id),
        input_tokens = r.usage.input_tokens,
        output_tokens = r.usage.output_tokens,
        cost_usd = r.cost_usd,
        latency_ms = r.latency.as_secs_f64() * 1000.0,
        ttft_ms = r.ttft.map(|t| t.as_secs_f64() * 1000.0),
        retries = r.trace.map_or(0, |t| t.retries),
        failovers = r.trace.map_or(0, |t| t.failovers),
        resumed = r.trace.map_or(0, |t| t.resumed),
        malformed_events = r.trace.map_or(0, |t| t.malformed_events),
        cache = r.trace.map_or("", |t| t.cache),
        attempts = attempts.as_str(),
        unbudgeted = r.trace.is_some_and(|t| t.unbudgeted).then_some(true),
        error = r.error,
        "request"
    );
}

//! OpenTelemetry traces, exported over OTLP/HTTP when `--otlp-endpoint` is given and not at all
//! otherwise. One server span per request, a child span per phase and a client span per
//! upstream call, named and attributed after the GenAI semantic conventions, plus llmgw's own
//! attributes (`llmgw.rule`, `llmgw.policy_revision`, `llmgw.canary.arm`, …).
//!
//! Spans are built when the request is recorded, from the instants the request path noted on
//! its way ([`Timeline`]), so a gateway that does not export pays for none of it. The one
//! thing that must exist before the end is the span id of each upstream call, which goes to
//! the provider in its `traceparent`: it is drawn when the call starts and handed to the SDK
//! when the span is built (see [`PresetIds`]).

use crate::phases::record::RequestRecord;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

/// Where traces go and how spans are named.
#[derive(Debug, Clone, clap::Args)]
pub struct OtelArgs {
    /// Exports a trace of every request over OTLP/HTTP (JSON) to this collector
    /// (`http://127.0.0.1:4318`; spans are POSTed to `/v1/traces` under it). Off by default.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    #[arg(long, value_name = "NAME", default_value = "llmgw")]
    pub otlp_service_name: String,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: {reason}")]
pub struct OtelError {
    endpoint: String,
    reason: String,
}

/// A running span exporter.
pub struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl OtelArgs {
    /// The exporter these arguments ask for, if any. `runtime` runs the HTTP calls of the
    /// exporter's background thread.
    pub fn start(&self, runtime: tokio::runtime::Handle) -> Result<Option<Exporter>, OtelError> {
        let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let fail = |reason: String| OtelError {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let url: http::Uri = endpoint
            .parse()
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) {
            return Err(fail("the URL must start with http:// or https://".into()));
        }
        let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(traces)
            .with_timeout(Duration::from_secs(10))
            .with_http_client(CollectorClient {
                client: crate::providers::http::client(&Default::default()),
                runtime,
            })
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(PresetIds)
            .with_resource(
                Resource::builder()
                    .with_service_name(self.otlp_service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("llmgw");
        Ok(Some(Exporter { provider, tracer }))
    }
}

/// The HTTP client of the exporter: the gateway's own, run on its runtime (the SDK's batch
/// thread has none).
#[derive(Debug)]
struct CollectorClient {
    client: crate::providers::http::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for CollectorClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let call = async move {
            let (parts, body) = request.into_parts();
            let resp = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        self.runtime.spawn(call).await?
    }
}

thread_local! {
    /// The span id the next span built on this thread gets, when one is preset.
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
    /// The trace id the next root span built on this thread gets, when one is preset.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except those preset on the building thread: the trace id and each upstream
/// call's span id went to the provider in a `traceparent` before their spans were built.
#[derive(Debug)]
struct PresetIds;

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| RandomIdGenerator::default().new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| RandomIdGenerator::default().new_span_id())
    }
}

/// The trace a request belongs to: the client's (from its `traceparent`) or a new one.
#[derive(Debug, Clone, Copy)]
pub struct TraceIds {
    /// The trace.
    pub trace: TraceId,
    /// The client's span, the parent of the request's span.
    pub parent: Option<SpanId>,
    /// The client's trace flags (sampled when it sent none).
    pub flags: TraceFlags,
}

impl TraceIds {
    /// The ids of a request with these headers: a valid W3C `traceparent` continues the
    /// client's trace; anything else starts a new one.
    pub fn of(headers: &http::HeaderMap) -> TraceIds {
        let parsed = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        parsed.unwrap_or_else(|| TraceIds {
            trace: RandomIdGenerator::default().new_trace_id(),
            parent: None,
            flags: TraceFlags::SAMPLED,
        })
    }

    /// The `traceparent` header of an upstream call whose span is `span`.
    pub fn traceparent(&self, span: SpanId) -> String {
        format!("00-{}-{}-{:02x}", self.trace, span, self.flags.to_u8())
    }
}

/// A W3C `traceparent` of version 00 (or a later version, read as 00 allows), with non-zero
/// ids.
fn parse_traceparent(value: &str) -> Option<TraceIds> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    if !ok || trace.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let trace = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceIds {
        trace,
        parent: Some(span),
        flags: TraceFlags::new(flags & 1),
    })
}

/// What the request path noted for the request's trace.
#[derive(Debug)]
pub struct Timeline {
    /// The trace.
    pub ids: TraceIds,
    wall: SystemTime,
    start: Instant,
    /// Each phase that ended, with when it did; a phase began where the previous one ended.
    phases: Vec<(&'static str, Instant)>,
}

/// The upstream calls of a request's trace: each one's span id and when it started, in the
/// order of the calls made.
#[derive(Debug, Clone)]
pub struct CallSpans {
    ids: TraceIds,
    calls: Vec<(SpanId, Instant)>,
}

impl CallSpans {
    /// Notes an upstream call starting now; returns the `traceparent` to send with it.
    pub fn call(&mut self) -> String {
        let span = RandomIdGenerator::default().new_span_id();
        self.calls.push((span, Instant::now()));
        self.ids.traceparent(span)
    }
}

impl Timeline {
    /// A request that started at `start`.
    pub fn new(ids: TraceIds, start: Instant) -> Timeline {
        Timeline {
            ids,
            wall: SystemTime::now() - start.elapsed(),
            start,
            phases: Vec::with_capacity(8),
        }
    }

    /// Notes that `phase` ended now.
    pub fn phase(&mut self, phase: &'static str) {
        self.phases.push((phase, Instant::now()));
    }

    /// Where the request's upstream calls are noted.
    pub fn calls(&self) -> CallSpans {
        CallSpans {
            ids: self.ids,
            calls: Vec::new(),
        }
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.start)
    }
}

impl Exporter {
    /// Builds and queues the spans of a finished request.
    pub fn export(&self, t: &Timeline, r: &RequestRecord<'_>) {
        let parent = match t.ids.parent {
            Some(span) => Context::new().with_remote_span_context(SpanContext::new(
                t.ids.trace,
                span,
                t.ids.flags,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let end = t.at(t.start + r.latency);
        let operation = if r.endpoint == "embeddings" {
            "embeddings"
        } else {
            "chat"
        };
        NEXT_TRACE_ID.with(|c| c.set(Some(t.ids.trace)));
        let mut request = self
            .tracer
            .span_builder(format!("{operation} {}", r.requested_model))
            .with_kind(SpanKind::Server)
            .with_start_time(t.wall)
            .with_attributes(request_attributes(r, operation))
            .start_with_context(&self.tracer, &parent);
        // A refusal of the client's request (4xx) is not a fault of this server.
        if r.status >= 500 {
            request.set_status(Status::error(r.error.unwrap_or("").to_owned()));
        }
        NEXT_TRACE_ID.with(|c| c.set(None));
        let cx = parent.with_span(request);
        let mut from = t.start;
        for (phase, until) in &t.phases {
            let mut span = self
                .tracer
                .span_builder(*phase)
                .with_kind(SpanKind::Internal)
                .with_start_time(t.at(from))
                .start_with_context(&self.tracer, &cx);
            span.end_with_timestamp(t.at(*until));
            from = *until;
        }
        let calls = r.trace.map(|tr| tr.calls.as_slice()).unwrap_or_default();
        let spans = r
            .trace
            .and_then(|tr| tr.spans.as_ref())
            .map(|s| s.calls.as_slice())
            .unwrap_or_default();
        for ((span_id, started), call) in spans.iter().zip(calls.iter().filter(|c| c.called())) {
            NEXT_SPAN_ID.with(|c| c.set(Some(*span_id)));
            let mut span = self
                .tracer
                .span_builder(format!("{operation} {}", call.deployment))
                .with_kind(SpanKind::Client)
                .with_start_time(t.at(*started))
                .with_attributes(vec![
                    KeyValue::new("gen_ai.operation.name", operation),
                    KeyValue::new("llmgw.deployment", call.deployment.to_string()),
                    KeyValue::new("llmgw.attempt.outcome", call.outcome),
                    KeyValue::new("llmgw.attempt.broke", call.broke),
                ])
                .start_with_context(&self.tracer, &cx);
            NEXT_SPAN_ID.with(|c| c.set(None));
            if call.outcome != "ok" || call.broke {
                span.set_status(Status::error(call.outcome));
            }
            span.end_with_timestamp(t.at(*started + Duration::from_millis(call.ms)));
        }
        cx.span().end_with_timestamp(end);
    }

    /// Sends what is queued and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

fn request_attributes(r: &RequestRecord<'_>, operation: &'static str) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new("gen_ai.request.model", r.requested_model.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("llmgw.request_id", r.request_id.to_owned()),
        KeyValue::new("llmgw.outcome", r.outcome.to_owned()),
        KeyValue::new("llmgw.rule", r.rule.to_owned()),
        KeyValue::new("llmgw.policy_revision", r.policy_revision.to_owned()),
        KeyValue::new("llmgw.cost_usd", r.cost_usd),
        KeyValue::new("llmgw.stream", r.stream),
    ];
    if let Some((model, provider)) = r.served {
        a.push(KeyValue::new("gen_ai.response.model", model.to_owned()));
        a.push(KeyValue::new("gen_ai.provider.name", provider.to_owned()));
    }
    if r.usage.input_tokens + r.usage.output_tokens > 0 {
        a.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            r.usage.input_tokens as i64,
        ));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            r.usage.output_tokens as i64,
        ));
    }
    if let Some(ttft) = r.ttft {
        a.push(KeyValue::new(
            "llmgw.time_to_first_token_ms",
            ttft.as_secs_f64() * 1e3,
        ));
    }
    if let Some(tr) = r.trace {
        a.push(KeyValue::new("llmgw.failovers", i64::from(tr.failovers)));
        a.push(KeyValue::new("llmgw.cache", tr.cache));
    }
    if let Some(d) = r.decision {
        if let Some(c) = &d.canary {
            a.push(KeyValue::new("llmgw.canary", c.canary.to_string()));
            a.push(KeyValue::new("llmgw.canary.arm", c.arm.as_str()));
        }
        if let Some(g) = &d.downgrade {
            a.push(KeyValue::new("llmgw.downgraded_from", g.from.to_string()));
        }
    }
    if let Some(id) = r.identity {
        a.push(KeyValue::new("llmgw.tenant", id.tenant.id.clone()));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_continues_the_clients_trace() {
        let ids = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(ids.trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.parent.expect("parent").to_string(), "00f067aa0ba902b7");
        assert!(ids.flags.is_sampled());
        let span = SpanId::from_hex("0102030405060708").expect("hex");
        assert_eq!(
            ids.traceparent(span),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}

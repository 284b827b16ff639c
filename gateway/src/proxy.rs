//! The model endpoints: the phases of [`crate::phases`] strung together, and the stream pump
//! that relays a streamed answer, resumes it elsewhere if it breaks, and settles at the end.

use crate::app::App;
use crate::body::GatewayBody;
use crate::budgets::{self, Held, Settlement};
use crate::cache;
use crate::decision_log::{self, Captured, Outcome as LogOutcome};
use crate::error::ApiError;
use crate::phases::attempt::{self, LiveStream, Plan, Success, Trace};
use crate::phases::record::{record, RequestRecord};
use crate::phases::settle::{format_cost, Bill, Charge};
use crate::phases::{authenticate, decide, identify, reserve};
use crate::request_body;
use crate::upstream::{Delta, ErrorClass, StreamEvent, UpstreamError, Usage};
use crate::wire::{self, estimate_tokens};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::{DecisionInput, Endpoint, Identity};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Header names the gateway sets.
pub mod headers {
    /// The policy revision that decided.
    pub const POLICY_REV: &str = "x-llmgw-policy-rev";
    /// The rule that decided.
    pub const RULE: &str = "x-llmgw-rule";
    /// The logical model that served.
    pub const MODEL: &str = "x-llmgw-model";
    /// The provider that served.
    pub const PROVIDER: &str = "x-llmgw-provider";
    /// The cost in USD (an estimate on streams, see `x-llmgw-cost-estimated`).
    pub const COST: &str = "x-llmgw-cost-usd";
    /// Present on streams: the cost header is the decision's estimate; the final SSE comment
    /// and the request log carry the real cost.
    pub const COST_ESTIMATED: &str = "x-llmgw-cost-estimated";
    /// `<canary>; arm=<baseline|candidate>; w=<candidate probability>` when a canary split
    /// applied.
    pub const CANARY: &str = "x-llmgw-canary";
    /// The model asked for, when a downgrade moved the request.
    pub const DOWNGRADED_FROM: &str = "x-llmgw-downgraded-from";
    /// Cache status: `hit`, `miss` (the answer may be stored) or `bypass` (not used).
    pub const CACHE: &str = "x-llmgw-cache";
    /// On a near-duplicate hit: the cosine similarity of the prompt to the cached one.
    pub const CACHE_SIMILARITY: &str = "x-llmgw-cache-similarity";
    /// The request id.
    pub const REQUEST_ID: &str = "x-request-id";
}

/// What is known of a request before a decision.
struct Info {
    request_id: String,
    started: Instant,
    endpoint: Endpoint,
    revision: Arc<str>,
    /// What the decision read, kept for the decision log when it is on.
    decision_input: Option<DecisionInput>,
    /// The `x-llmgw-cache` value, once the cache was looked up.
    cache: &'static str,
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A JSON response with the gateway's common headers.
fn json_response(status: StatusCode, body: Bytes, info: &Info) -> Response<GatewayBody> {
    let mut resp = Response::new(GatewayBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    set(h, headers::POLICY_REV, &info.revision);
    set(h, headers::REQUEST_ID, &info.request_id);
    resp
}

/// An error response, with decision headers when a decision was made.
fn error_response(
    err: &ApiError,
    info: &Info,
    decision: Option<&Decision>,
) -> Response<GatewayBody> {
    let mut resp = json_response(err.status, Bytes::from(err.body().to_string()), info);
    let h = resp.headers_mut();
    if let Some(ra) = err.retry_after {
        set(h, "retry-after", &ra.as_secs().max(1).to_string());
    }
    if let Some(rule) = &err.rule {
        set(h, headers::RULE, rule);
    }
    if let Some(d) = decision {
        set(h, headers::RULE, &d.rule);
        set(h, headers::MODEL, &d.model);
        set(h, headers::COST, "0");
        set(h, headers::CACHE, info.cache);
        decision_extras(h, d);
    }
    if err.status == StatusCode::UNAUTHORIZED {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn decision_extras(h: &mut HeaderMap, d: &Decision) {
    if let Some(c) = &d.canary {
        set(
            h,
            headers::CANARY,
            &format!("{}; arm={}; w={}", c.canary, c.arm.as_str(), c.weight),
        );
    }
    if let Some(g) = &d.downgrade {
        set(h, headers::DOWNGRADED_FROM, &g.from);
    }
}

fn served_headers(h: &mut HeaderMap, plan: &Plan, idx: usize, cost: &str, cache: &str) {
    let d = &plan.decision;
    let a = plan.attempt(idx);
    set(h, headers::RULE, &d.rule);
    set(h, headers::MODEL, &a.model);
    set(h, headers::PROVIDER, &a.provider);
    set(h, headers::COST, cost);
    set(h, headers::CACHE, cache);
    decision_extras(h, d);
}

/// Records and answers a request that failed before or at decision time.
fn reject(
    app: &App,
    info: &Info,
    err: ApiError,
    model: &str,
    stream: bool,
    identity: Option<&Identity>,
) -> Response<GatewayBody> {
    record(
        app,
        &RequestRecord {
            request_id: &info.request_id,
            status: err.status.as_u16(),
            endpoint: info.endpoint.as_str(),
            stream,
            requested_model: model,
            served: None,
            decision: None,
            // A refusal of the decision (no deployment) names its rule, of the revision in force.
            rule: err.rule.as_deref().map_or("", String::as_str),
            policy_revision: if err.rule.is_some() {
                &info.revision
            } else {
                ""
            },
            identity,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: info.started.elapsed(),
            ttft: None,
            trace: None,
            outcome: "error",
            error: Some(&err.message),
            handles: None,
        },
    );
    error_response(&err, info, None)
}

/// The spend the decision reads. When the store is known to be unavailable (`fault`), or
/// fails now (`fault` is set to its 503), nothing is read: every budget counts as unspent, and
/// phase 4 serves the request unbudgeted or refuses it.
async fn read_spend(
    app: &App,
    policy: &llmgw_engine::CompiledPolicy,
    identity: &Identity,
    request: &llmgw_engine::input::RequestFacts,
    fault: &mut Option<ApiError>,
) -> budgets::Spend {
    let now = chrono::Utc::now();
    if fault.is_none() {
        match budgets::prefetch(&app.state, policy, identity, now, Some(request)).await {
            Ok(spend) => return spend,
            Err(e) => *fault = Some(crate::store::health::failed("reading spend", &e)),
        }
    }
    budgets::Spend::unread(policy, identity, now, Some(request))
}

/// Handles `POST /v1/chat/completions` and `POST /v1/embeddings`.
pub async fn handle(
    app: Arc<App>,
    parts: http::request::Parts,
    body: Incoming,
    endpoint: Endpoint,
) -> Response<GatewayBody> {
    let rt = app.runtime.load_full();
    let mut info = Info {
        request_id: new_request_id(),
        started: Instant::now(),
        endpoint,
        revision: rt.policy.revision().into(),
        decision_input: None,
        cache: "",
    };
    // A state store the probe found unavailable is not asked: no request waits on it, and
    // none proceeds on a store whose writes would be lost, unless its budgets all allow it
    // (phase 4); until then, `fault` is the 503 it gets.
    let probed = app.store_health.fault();
    let mut fault = probed
        .as_deref()
        .map(|r| crate::store::health::unavailable(&r));
    // Phase 1: authenticate.
    let key = match authenticate::authenticate(&parts.headers, &app.keys, probed.as_deref()).await {
        Ok(k) => k,
        Err(e) => return reject(&app, &info, e, "", false, None),
    };
    let bytes = match request_body::read(
        &parts.headers,
        body,
        app.limits.max_body_bytes,
        app.limits.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return reject(&app, &info, e, "", false, None),
    };
    let signed = match &fault {
        // The replay check of a signed request needs the store.
        Some(refusal) if key.record.signing => Err(refusal.clone()),
        _ => authenticate::verify_signature(&parts.headers, &key, &bytes, &app.keys).await,
    };
    if let Err(e) = signed {
        return reject(&app, &info, e, "", false, None);
    }
    let token = crate::tenant_token::resolve(&app, &parts.headers, &key, fault.as_ref()).await;
    let token = match token {
        Ok(t) => t,
        Err(e) => return reject(&app, &info, e, "", false, None),
    };
    let parsed = wire::meta_headers(&parts.headers).and_then(|m| wire::parse(endpoint, &bytes, m));
    let request = match parsed {
        Ok(r) => r,
        Err(e) => return reject(&app, &info, e, "", false, None),
    };
    // Phase 2: identify.
    let mut identity = match identify::identify(&key, request.user.as_deref()) {
        Ok(i) => i,
        Err(e) => {
            let model = request.facts.model.clone();
            let tried = identify::key_only(&key);
            return reject(&app, &info, e, &model, request.facts.stream, Some(&tried));
        }
    };
    if let Some(t) = &token {
        t.apply(&mut identity);
    }
    let spend = match authenticate::check_model(&key, &request.facts.model) {
        Ok(()) => Ok(read_spend(&app, &rt.policy, &identity, &request.facts, &mut fault).await),
        Err(e) => Err(e),
    };
    let spend = match spend {
        Ok(s) => s,
        Err(e) => {
            let model = request.facts.model.clone();
            return reject(
                &app,
                &info,
                e,
                &model,
                request.facts.stream,
                Some(&identity),
            );
        }
    };
    // Phase 3: decide.
    let mut captured = app.decision_log.enabled().then(Captured::default);
    let decided = decide::decide(
        &rt,
        &request,
        identity.clone(),
        &spend,
        &app.canaries,
        captured.as_mut(),
    );
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            if e.code.as_deref() == Some("budget_exceeded") {
                let hit = cached_despite_budget(
                    &app,
                    &rt,
                    &parts.headers,
                    &request,
                    &identity,
                    &spend,
                    &mut info,
                    &mut captured,
                );
                if let Some(resp) = hit {
                    return resp;
                }
            }
            if let Some(Captured {
                input: Some(input),
                blocked: Some(blocked),
            }) = &captured
            {
                let outcome = LogOutcome {
                    status: e.status.as_u16(),
                    served: None,
                    usage: Usage::default(),
                    cost_usd: 0.0,
                    latency: info.started.elapsed(),
                    ttft: None,
                    trace: None,
                };
                decision_log::record(
                    &app.decision_log,
                    &info.request_id,
                    Some(input),
                    blocked,
                    outcome,
                );
            }
            let model = request.facts.model.clone();
            return reject(
                &app,
                &info,
                e,
                &model,
                request.facts.stream,
                Some(&identity),
            );
        }
    };
    info.decision_input = captured.and_then(|c| c.input);
    // The response cache: after the decision (its TTL and revision), before any reservation
    // or upstream call. A hit is answered from memory without reserving or spending.
    let terms = cache::Terms::of(&decision);
    let cached = app.cache.lookup(&parts.headers, &request, &identity, terms);
    info.cache = cached.header();
    let cache_store = match cached {
        cache::Lookup::Hit(hit) => {
            return serve_cached(&app, &info, &request, &identity, &decision, &hit)
        }
        cache::Lookup::Miss(store) => Some(store),
        cache::Lookup::Bypass => None,
    };
    // Phase 4: reserve.
    let redecide = |s: &budgets::Spend| {
        decide::decide(&rt, &request, identity.clone(), s, &app.canaries, None)
    };
    let reserved =
        reserve::reserve(&app.state, &rt.policy, &spend, decision, fault, redecide).await;
    let (decision, held) = match reserved {
        Ok(v) => v,
        Err(e) => {
            let model = request.facts.model.clone();
            return reject(
                &app,
                &info,
                e,
                &model,
                request.facts.stream,
                Some(&identity),
            );
        }
    };
    if let Some(g) = &decision.downgrade {
        tracing::info!(
            target: "llmgw::budget",
            request_id = info.request_id.as_str(),
            from = &*g.from,
            to = &*g.to,
            rule = &*g.rule,
            budget = g.budget.as_deref().unwrap_or(""),
            tenant = identity.tenant.id.as_str(),
            key_id = identity.key.id.as_str(),
            "downgrade"
        );
    }
    let unbudgeted = !held.unbudgeted_under().is_empty();
    if unbudgeted {
        app.metrics.unbudgeted_requests.inc();
        tracing::warn!(
            target: "llmgw::budget",
            request_id = info.request_id.as_str(),
            budgets = held.unbudgeted_under().join(",").as_str(),
            tenant = identity.tenant.id.as_str(),
            key_id = identity.key.id.as_str(),
            "the state store is unavailable; serving unbudgeted, as these budgets allow"
        );
    }
    app.retry_budget.deposit();
    app.metrics.in_flight.inc();
    let in_flight = InFlightGauge(app.clone());
    let plan = Plan {
        app: app.clone(),
        rt,
        decision,
        request,
        request_id: info.request_id.clone(),
    };
    let mut trace = Trace {
        cache: info.cache,
        unbudgeted,
        ..Trace::default()
    };
    // Phase 5: attempt.
    match attempt::run(&plan, 0, None, &mut trace).await {
        Err(failure) => {
            let err = failure.api_error();
            let settlement = Settlement {
                identity: &identity,
                model: &plan.decision.model,
                usage: Usage::default(),
                cost_usd: 0.0,
            };
            held.settle(&app.state, &app.metrics, settlement).await;
            finish(
                &plan,
                &info,
                &identity,
                err.status.as_u16(),
                None,
                &Bill::default(),
                None,
                &trace,
                "error",
                Some(&err.message),
            );
            error_response(&err, &info, Some(&plan.decision))
        }
        Ok(Success::Full { idx, mut response }) => {
            // Phase 6: settle.
            let bill = Bill {
                charges: vec![Charge {
                    model: plan.model_index(idx),
                    usage: response.usage,
                    estimated: false,
                }],
            };
            let cost = bill.cost_usd(&plan.rt.policy);
            if let Some(obj) = response.body.as_object_mut() {
                obj.insert(
                    "model".into(),
                    Value::String(plan.attempt(idx).model.to_string()),
                );
            }
            let settlement = Settlement {
                identity: &identity,
                model: &plan.attempt(idx).model,
                usage: bill.usage(),
                cost_usd: cost,
            };
            held.settle(&app.state, &app.metrics, settlement).await;
            if let Some(store) = cache_store {
                let a = plan.attempt(idx);
                let served = (&a.model, &a.provider);
                let endpoint = plan.request.facts.endpoint;
                store.full(
                    &app.cache,
                    &plan.decision,
                    endpoint,
                    &response.body,
                    response.usage,
                    served,
                );
            }
            let body = Bytes::from(response.body.to_string());
            let mut resp = json_response(StatusCode::OK, body, &info);
            served_headers(
                resp.headers_mut(),
                &plan,
                idx,
                &format_cost(cost),
                info.cache,
            );
            // Phase 7: record.
            finish(
                &plan,
                &info,
                &identity,
                200,
                Some(idx),
                &bill,
                None,
                &trace,
                "ok",
                None,
            );
            drop(in_flight);
            resp
        }
        Ok(Success::Stream(live)) => {
            let (tx, body) = GatewayBody::channel(16);
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            set(h, headers::POLICY_REV, &info.revision);
            set(h, headers::REQUEST_ID, &info.request_id);
            served_headers(
                h,
                &plan,
                live.idx,
                &format_cost(plan.decision.estimated_cost_usd),
                info.cache,
            );
            set(h, headers::COST_ESTIMATED, "true");
            let capture = cache_store.map(cache::Store::capture);
            tokio::spawn(pump(
                plan, live, tx, trace, info, identity, in_flight, held, capture,
            ));
            resp
        }
    }
}

/// The cached answer of a request a budget refuses: a hit reserves and spends nothing, so it
/// is served all the same (on the requested model's cache rule). The refusing decision names
/// the rule in the headers and logs; it is decided again with its input captured when the
/// decision log did not capture it already.
#[allow(clippy::too_many_arguments)]
fn cached_despite_budget(
    app: &App,
    rt: &crate::app::Runtime,
    headers: &HeaderMap,
    request: &wire::ClientRequest,
    identity: &Identity,
    spend: &budgets::Spend,
    info: &mut Info,
    captured: &mut Option<Captured>,
) -> Option<Response<GatewayBody>> {
    let model = request.facts.model.as_str();
    let terms = cache::Terms {
        ttl_secs: rt.policy.cache_ttl_secs(model),
        semantic_threshold: rt.policy.cache_semantic_threshold(model),
    };
    let hit = app.cache.hit_only(headers, request, identity, terms)?;
    let blocked = match captured.take() {
        Some(Captured {
            input,
            blocked: Some(blocked),
        }) => {
            info.decision_input = input;
            blocked
        }
        _ => {
            let mut again = Captured::default();
            let decided = decide::decide(
                rt,
                request,
                identity.clone(),
                spend,
                &app.canaries,
                Some(&mut again),
            );
            match (decided, again.blocked) {
                (Ok(d), _) | (Err(_), Some(d)) => d,
                (Err(_), None) => return None,
            }
        }
    };
    info.cache = "hit";
    Some(serve_cached(app, info, request, identity, &blocked, &hit))
}

/// Answers from the response cache: the usual headers with the model and provider that
/// produced the answer, cost 0, `x-llmgw-cache: hit` and `age`; a stream request gets the
/// answer as SSE events. Nothing is reserved, spent or sent upstream; the canary split and
/// downgrade of the decision did not serve it, so they are neither reported nor observed.
fn serve_cached(
    app: &App,
    info: &Info,
    request: &wire::ClientRequest,
    identity: &Identity,
    decision: &Decision,
    hit: &cache::Hit,
) -> Response<GatewayBody> {
    let stream = request.facts.stream;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("chatcmpl-{}", info.request_id);
    let body = hit.body(&id, created, stream, request.include_usage);
    let mut resp = json_response(StatusCode::OK, body, info);
    let h = resp.headers_mut();
    if stream {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    set(h, headers::RULE, &decision.rule);
    set(h, headers::MODEL, hit.model());
    set(h, headers::PROVIDER, hit.provider());
    set(h, headers::COST, "0");
    set(h, headers::CACHE, "hit");
    set(h, "age", &hit.age().as_secs().to_string());
    if let Some(s) = hit.similarity() {
        set(h, headers::CACHE_SIMILARITY, &format!("{s:.4}"));
    }
    let trace = Trace {
        cache: hit.outcome(),
        ..Trace::default()
    };
    decision_log::record(
        &app.decision_log,
        &info.request_id,
        info.decision_input.as_ref(),
        decision,
        LogOutcome {
            status: 200,
            served: Some((hit.model(), "cache")),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: info.started.elapsed(),
            ttft: None,
            trace: Some(&trace),
        },
    );
    let served = Decision {
        canary: None,
        downgrade: None,
        ..decision.clone()
    };
    record(
        app,
        &RequestRecord {
            request_id: &info.request_id,
            status: 200,
            endpoint: info.endpoint.as_str(),
            stream,
            requested_model: &request.facts.model,
            // Metrics and the log name the cache as the provider: nothing upstream served it.
            served: Some((hit.model(), "cache")),
            decision: Some(&served),
            rule: &served.rule,
            policy_revision: &served.revision,
            identity: Some(identity),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency: info.started.elapsed(),
            ttft: None,
            trace: Some(&trace),
            outcome: "ok",
            error: None,
            handles: None,
        },
    );
    resp
}

/// Keeps the in-flight gauge up while a request (or its stream) lives.
struct InFlightGauge(Arc<App>);

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    plan: &Plan,
    info: &Info,
    identity: &Identity,
    status: u16,
    served: Option<usize>,
    bill: &Bill,
    ttft: Option<Duration>,
    trace: &Trace,
    outcome: &str,
    error: Option<&str>,
) {
    let handles = served.map(|i| plan.attempt(i).index).and_then(|d| {
        plan.rt
            .served_metrics(d, &plan.decision.rule, &plan.app.metrics)
    });
    let served = served
        .map(|i| plan.attempt(i))
        .map(|a| (&*a.model, &*a.provider));
    let cost_usd = bill.cost_usd(&plan.rt.policy);
    decision_log::record(
        &plan.app.decision_log,
        &info.request_id,
        info.decision_input.as_ref(),
        &plan.decision,
        LogOutcome {
            status,
            served,
            usage: bill.usage(),
            cost_usd,
            latency: info.started.elapsed(),
            ttft,
            trace: Some(trace),
        },
    );
    record(
        &plan.app,
        &RequestRecord {
            request_id: &info.request_id,
            status,
            endpoint: info.endpoint.as_str(),
            stream: plan.request.facts.stream,
            requested_model: &plan.request.facts.model,
            served,
            decision: Some(&plan.decision),
            rule: &plan.decision.rule,
            policy_revision: &plan.decision.revision,
            identity: Some(identity),
            usage: bill.usage(),
            cost_usd,
            latency: info.started.elapsed(),
            ttft,
            trace: Some(trace),
            outcome,
            error,
            handles,
        },
    );
}

/// Writes OpenAI chat completion chunks.
struct SseOut {
    id: String,
    created: u64,
    model: Arc<str>,
    role_sent: bool,
}

impl SseOut {
    fn event(value: &Value) -> Bytes {
        Bytes::from(format!("data: {value}\n\n"))
    }

    /// One chunk, written by hand: this runs once per streamed token.
    fn delta(&mut self, d: &Delta) -> Bytes {
        let mut out = Vec::with_capacity(192 + d.content.as_ref().map_or(0, String::len));
        out.extend_from_slice(b"data: {\"id\":");
        json_str(&mut out, &self.id);
        out.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        out.extend_from_slice(self.created.to_string().as_bytes());
        out.extend_from_slice(b",\"model\":");
        json_str(&mut out, &self.model);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, name: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(name);
        };
        if !self.role_sent {
            field(&mut out, b"\"role\":\"assistant\"");
            self.role_sent = true;
        }
        if let Some(c) = &d.content {
            field(&mut out, b"\"content\":");
            json_str(&mut out, c);
        }
        if let Some(t) = &d.tool_calls {
            field(&mut out, b"\"tool_calls\":");
            let _ = serde_json::to_writer(&mut out, t);
        }
        out.extend_from_slice(b"},\"finish_reason\":");
        match &d.finish_reason {
            Some(f) => json_str(&mut out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
        Bytes::from(out)
    }

    fn usage(&self, u: Usage) -> Bytes {
        SseOut::event(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": &*self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": u.input_tokens,
                "completion_tokens": u.output_tokens,
                "total_tokens": u.input_tokens + u.output_tokens,
            },
        }))
    }

    fn error(message: &str) -> Bytes {
        let body = json!({ "error": {
            "message": message,
            "type": "server_error",
            "code": "stream_interrupted",
            "param": null,
        }});
        Bytes::from(format!("event: error\ndata: {body}\n\n"))
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(out, s);
}

/// Relays a stream to the client. A break after output went out resumes on the next attempt
/// that accepts a prefill (streaming only the rest), or ends with an in-band `error` event and
/// no `[DONE]`, so a truncated answer never looks complete.
#[allow(clippy::too_many_arguments)]
async fn pump(
    plan: Plan,
    mut live: LiveStream,
    tx: mpsc::Sender<Bytes>,
    mut trace: Trace,
    info: Info,
    identity: Identity,
    _in_flight: InFlightGauge,
    mut held: Held,
    mut capture: Option<cache::Capture>,
) {
    held.keep_alive();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = SseOut {
        id: format!("chatcmpl-{}", info.request_id),
        created,
        model: plan.attempt(live.idx).model.clone(),
        role_sent: false,
    };
    // Time to first token as the client saw it: from its request, across failed attempts.
    let first_ttft = (live.started + live.ttft).saturating_duration_since(info.started);
    let mut text = String::new();
    let mut attempt_chars = 0usize;
    let mut reported: Option<Usage> = None;
    let mut finished = false;
    let mut tool_calls = false;
    let mut bill = Bill::default();
    let mut pending: VecDeque<StreamEvent> = std::mem::take(&mut live.buffered).into();
    let idle_of = |plan: &Plan, idx: usize| {
        let d = &plan.rt.policy.deployments()[plan.attempt(idx).index];
        Duration::from_millis(plan.rt.policy.providers()[d.provider].timeouts.idle_ms)
    };
    let mut idle = idle_of(&plan, live.idx);
    let charge = |bill: &mut Bill, idx: usize, reported: Option<Usage>, chars: usize| {
        let usage = reported.unwrap_or(Usage {
            input_tokens: plan.request.facts.input_tokens,
            output_tokens: estimate_tokens(chars),
        });
        bill.charges.push(Charge {
            model: plan.model_index(idx),
            usage,
            estimated: reported.is_none(),
        });
    };
    let outcome = loop {
        let next = match pending.pop_front() {
            Some(ev) => Some(Ok(ev)),
            None => match tokio::time::timeout(idle, live.stream.next()).await {
                Ok(n) => n,
                Err(_) => Some(Err(UpstreamError::new(
                    ErrorClass::Timeout,
                    format!("the stream was idle for more than {} ms", idle.as_millis()),
                )
                .after_first_byte())),
            },
        };
        let failure = match next {
            Some(Ok(StreamEvent::Delta(d))) => {
                if !d.is_visible() {
                    continue;
                }
                if let Some(c) = &d.content {
                    text.push_str(c);
                    attempt_chars += c.len();
                }
                tool_calls |= d.tool_calls.is_some();
                finished |= d.finish_reason.is_some();
                if let Some(c) = &mut capture {
                    c.push(&d);
                }
                if tx.send(out.delta(&d)).await.is_err() {
                    break "client_closed";
                }
                continue;
            }
            Some(Ok(StreamEvent::Usage(u))) => {
                reported = Some(u);
                continue;
            }
            Some(Ok(StreamEvent::Malformed(why))) => {
                attempt::note_malformed(&plan, live.idx, &why, &mut trace);
                continue;
            }
            Some(Ok(StreamEvent::Done)) => break "ok",
            Some(Err(e)) => e,
            None => UpstreamError::new(
                ErrorClass::Protocol,
                "the stream ended before the answer was complete",
            )
            .after_first_byte(),
        };
        if finished {
            // The answer was complete; only the end of the stream went wrong.
            break "ok";
        }
        attempt::note_failure(&plan, live.idx, &failure, crate::circuit::Ticket::ALLOWED);
        // The call answered its first token but did not finish: it is not logged as `ok`.
        let call = &mut trace.calls[live.call];
        call.outcome = failure.class.as_str();
        call.ms = live.started.elapsed().as_millis() as u64;
        call.broke = true;
        charge(&mut bill, live.idx, reported.take(), attempt_chars);
        if !tool_calls {
            if let Ok(Success::Stream(next)) =
                attempt::run(&plan, live.idx + 1, Some(&text), &mut trace).await
            {
                trace.resumed += 1;
                let a = plan.attempt(next.idx);
                plan.app
                    .metrics
                    .resumed_streams
                    .get_or_create(&crate::metrics::ModelLabels {
                        model: a.model.to_string(),
                        provider: a.provider.to_string(),
                    })
                    .inc();
                tracing::warn!(
                    target: "llmgw::failover",
                    request_id = info.request_id.as_str(),
                    error = %failure,
                    resumed_on = &*a.deployment,
                    "stream broke after output was sent; resuming with the partial answer as prefill"
                );
                live = next;
                // An answer stitched from two models is not cached.
                capture = None;
                pending = std::mem::take(&mut live.buffered).into();
                out.model = a.model.clone();
                idle = idle_of(&plan, live.idx);
                attempt_chars = 0;
                continue;
            }
        }
        let message =
            format!("the upstream stream broke after part of the answer was sent: {failure}");
        let _ = tx.send(SseOut::error(&message)).await;
        break "truncated";
    };
    trace.calls[live.call].ms = live.started.elapsed().as_millis() as u64;
    if outcome == "ok" {
        if let Some(r) = plan.rt.live.deployment(plan.attempt(live.idx).index) {
            r.record(live.started.elapsed(), Some(live.ttft), true);
        }
        charge(&mut bill, live.idx, reported, attempt_chars);
        if let Some(c) = capture.take() {
            let a = plan.attempt(live.idx);
            c.finish(
                &plan.app.cache,
                &plan.decision,
                bill.usage(),
                (&a.model, &a.provider),
            );
        }
        if plan.request.include_usage {
            // The answer the client received; the bill (cost, budgets) counts every attempt.
            let _ = tx.send(out.usage(bill.delivered())).await;
        }
        let cost = bill.cost_usd(&plan.rt.policy);
        let _ = tx
            .send(Bytes::from(format!(
                ": x-llmgw-cost-usd={}\n\n",
                format_cost(cost)
            )))
            .await;
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    } else if outcome == "client_closed" {
        charge(&mut bill, live.idx, reported, attempt_chars);
    }
    let status = if outcome == "client_closed" { 499 } else { 200 };
    let error = (outcome == "truncated").then_some("stream truncated");
    let settlement = Settlement {
        identity: &identity,
        model: &plan.attempt(live.idx).model,
        usage: bill.usage(),
        cost_usd: bill.cost_usd(&plan.rt.policy),
    };
    held.settle(&plan.app.state, &plan.app.metrics, settlement)
        .await;
    finish(
        &plan,
        &info,
        &identity,
        status,
        Some(live.idx),
        &bill,
        Some(first_ttft),
        &trace,
        outcome,
        error,
    );
}

#[cfg(test)]
mod sse_out_tests {
    use super::*;

    #[test]
    fn chunks_are_openai_json() {
        let mut out = SseOut {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m\"x".into(),
            role_sent: false,
        };
        let d = Delta {
            content: Some("a \"quoted\"\nline".into()),
            tool_calls: Some(json!([{ "index": 0 }])),
            finish_reason: None,
        };
        let first = out.delta(&d);
        let text = std::str::from_utf8(&first).expect("utf-8");
        let v: Value = serde_json::from_str(text.strip_prefix("data: ").expect("data").trim_end())
            .expect("json");
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v["choices"][0]["delta"]["content"], "a \"quoted\"\nline");
        assert_eq!(v["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert!(v["choices"][0]["finish_reason"].is_null());
        let last = out.delta(&Delta {
            finish_reason: Some("stop".into()),
            ..Delta::default()
        });
        let v: Value =
            serde_json::from_str(std::str::from_utf8(&last).expect("utf-8")[6..].trim_end())
                .expect("json");
        assert_eq!(v["choices"][0]["delta"], json!({}));
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

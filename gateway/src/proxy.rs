//! The model endpoints: the phases of [`crate::phases`] strung together, and the stream pump
//! that relays a streamed answer, resumes it elsewhere if it breaks, and settles at the end.

use crate::app::App;
use crate::body::GatewayBody;
use crate::budgets::{self, Held, Settlement};
use crate::cache;
use crate::continuation::Aligner;
use crate::decision_log::{self, Captured, Outcome as LogOutcome};
use crate::error::ApiError;
use crate::front::responses::Turn;
use crate::front::{Door, StreamOut};
use crate::otel::{Timeline, TraceIds};
use crate::phases::attempt::{self, LiveStream, Plan, Success, Trace};
use crate::phases::record::{record, RequestRecord};
use crate::phases::settle::{format_cost, Bill, Charge};
use crate::phases::{authenticate, decide, identify, reserve};
use crate::ratelimit;
use crate::request_body;
use crate::upstream::{Delta, ErrorClass, StreamEvent, UpstreamError, Usage};
use crate::wire::{self, estimate_tokens};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::{DecisionInput, Endpoint, Identity};
use serde_json::Value;
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
    /// The door it came in by: the shape of its answer and errors.
    door: Door,
    /// The turn of a Responses request.
    turn: Option<Turn>,
    revision: Arc<str>,
    /// What the decision read, kept for the decision log when it is on.
    decision_input: Option<DecisionInput>,
    /// The `x-llmgw-cache` value, once the cache was looked up.
    cache: &'static str,
    /// The instants of the request's trace, when traces are exported.
    timeline: Option<Box<Timeline>>,
}

impl Info {
    /// Notes the end of a phase in the request's trace.
    fn phase(&mut self, phase: &'static str) {
        if let Some(t) = &mut self.timeline {
            t.phase(phase);
        }
    }
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
    let body = info.door.error_body(err).to_string();
    let mut resp = json_response(err.status, Bytes::from(body), info);
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
            door: info.door.as_str(),
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
            timeline: info.timeline.as_deref(),
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

/// Handles the model endpoints: `POST /v1/chat/completions` and `POST /v1/embeddings` (door
/// [`Door::OpenAi`]), `POST /v1/messages` ([`Door::Messages`]), `POST /v1/responses`
/// ([`Door::Responses`]).
pub async fn handle(
    app: Arc<App>,
    parts: http::request::Parts,
    body: Incoming,
    endpoint: Endpoint,
    door: Door,
) -> Response<GatewayBody> {
    let rt = app.runtime.load_full();
    let started = Instant::now();
    let mut info = Info {
        request_id: new_request_id(),
        started,
        endpoint,
        door,
        turn: None,
        revision: rt.policy.revision().into(),
        decision_input: None,
        cache: "",
        timeline: app
            .otel
            .as_ref()
            .map(|_| Box::new(Timeline::new(TraceIds::of(&parts.headers), started))),
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
    // The tenant the request acts for (a Responses request continues its conversations only).
    let mut acting = identify::key_only(&key);
    if let Some(t) = &token {
        t.apply(&mut acting);
    }
    let parsed = match wire::meta_headers(&parts.headers) {
        Ok(meta) => {
            let tenant = acting.tenant.id.as_str();
            door.parse(&app, tenant, &info.request_id, endpoint, &bytes, meta)
                .await
        }
        Err(e) => Err(e),
    };
    let request = match parsed {
        Ok((r, turn)) => {
            info.turn = turn;
            r
        }
        Err(e) => return reject(&app, &info, e, "", false, None),
    };
    info.phase("authenticate");
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
    info.phase("identify");
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
    // Routing that reads `ratelimit.*` decides again with the shares left of the limits the
    // first decision counts the request against (the same limits: a limit's own condition
    // does not see the shares).
    let (spend, decided) = match decided {
        Ok(d)
            if rt.policy.reads_ratelimit()
                && !d.rate_charges.is_empty()
                && (fault.is_none() || app.state.rates_in_process()) =>
        {
            match ratelimit::shares(&app.state, &d).await {
                Ok(shares) => {
                    let spend = spend.with_rate_shares(shares);
                    let again = decide::decide(
                        &rt,
                        &request,
                        identity.clone(),
                        &spend,
                        &app.canaries,
                        captured.as_mut(),
                    );
                    (spend, again)
                }
                Err(e) => {
                    tracing::warn!(target: "llmgw::ratelimit", error = %e, "cannot read rate limit shares; routing sees them as full");
                    (spend, Ok(d))
                }
            }
        }
        other => (spend, other),
    };
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
                )
                .await;
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
    info.phase("decide");
    // The response cache: after the decision (its TTL and revision), before any reservation
    // or upstream call. A hit is answered from the cache without reserving or spending.
    let terms = cache::Terms::of(&decision);
    let cached = app
        .cache
        .lookup(&parts.headers, &request, &identity, terms)
        .await;
    info.cache = cached.header();
    info.phase("cache");
    let cache_store = match cached {
        cache::Lookup::Hit(hit) => {
            return serve_cached(&app, &info, &request, &identity, &decision, &hit).await
        }
        cache::Lookup::Miss(store) => Some(store),
        cache::Lookup::Bypass => None,
    };
    // Phase 4: reserve the budgets, then the rate limits of the decision that holds: a
    // downgrade found at the reservation moves the request to another model, and the limits
    // scoped to `model` count the model that serves. A hit of the cache above sent nothing
    // upstream and counts against neither.
    let redecide = |s: &budgets::Spend| {
        decide::decide(&rt, &request, identity.clone(), s, &app.canaries, None)
    };
    let reserved = reserve::reserve(
        &app.state,
        &rt.policy,
        &spend,
        decision,
        fault.clone(),
        redecide,
    )
    .await;
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
    let caller = ratelimit::Caller {
        request_id: &info.request_id,
        tenant: &identity.tenant.id,
        key_id: &identity.key.id,
    };
    let limited =
        ratelimit::check(&app.state, &decision, fault.as_ref(), &app.metrics, caller).await;
    let (charged, rate_headers) = match limited {
        Ok(v) => v,
        Err(refusal) => {
            // Nothing goes upstream: the budget holds are released.
            drop(held);
            let model = request.facts.model.clone();
            let stream = request.facts.stream;
            let mut resp = reject(&app, &info, refusal.error, &model, stream, Some(&identity));
            refusal.headers.apply(resp.headers_mut());
            return resp;
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
    info.phase("reserve");
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
        spans: info.timeline.as_ref().map(|t| t.calls()),
        ..Trace::default()
    };
    // Phase 5: attempt.
    let attempted = attempt::run(&plan, 0, None, &mut trace).await;
    info.phase("attempt");
    match attempted {
        Err(failure) => {
            let err = failure.api_error();
            let settlement = Settlement {
                identity: &identity,
                model: &plan.decision.model,
                usage: Usage::default(),
                cost_usd: 0.0,
            };
            held.settle(&app.state, &app.metrics, settlement).await;
            charged.settle(Usage::default());
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
            let mut resp = error_response(&err, &info, Some(&plan.decision));
            rate_headers.apply(resp.headers_mut());
            resp
        }
        Ok(Success::Full { idx, mut response }) => {
            // Phase 6: settle.
            let bill = Bill {
                charges: vec![Charge::new(plan.model_index(idx), response.usage, false)],
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
            charged.settle(bill.usage());
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
            let body = info
                .door
                .full(response.body, &info.request_id, info.turn.as_ref());
            if let Some(turn) = &info.turn {
                turn.save(&app, &body).await;
            }
            let mut resp = json_response(StatusCode::OK, Bytes::from(body.to_string()), &info);
            served_headers(
                resp.headers_mut(),
                &plan,
                idx,
                &format_cost(cost),
                info.cache,
            );
            rate_headers.apply(resp.headers_mut());
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
            rate_headers.apply(h);
            let capture = cache_store.map(cache::Store::capture);
            let holds = Holds {
                budgets: held,
                rates: charged,
            };
            tokio::spawn(pump(
                plan, live, tx, trace, info, identity, in_flight, holds, capture,
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
async fn cached_despite_budget(
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
    let hit = app
        .cache
        .hit_only(headers, request, identity, terms)
        .await?;
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
    Some(serve_cached(app, info, request, identity, &blocked, &hit).await)
}

/// Answers from the response cache: the usual headers with the model and provider that
/// produced the answer, cost 0, `x-llmgw-cache: hit` and `age`; a stream request gets the
/// answer as SSE events. Nothing is reserved, spent or sent upstream; the canary split and
/// downgrade of the decision did not serve it, so they are neither reported nor observed.
async fn serve_cached(
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
    let turn = info.turn.as_ref();
    let (body, finished) = info
        .door
        .cached(hit, request, &info.request_id, created, turn);
    if let (Some(turn), Some(response)) = (turn, &finished) {
        turn.save(app, response).await;
    }
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
            door: info.door.as_str(),
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
            timeline: info.timeline.as_deref(),
        },
    );
    resp
}

/// What a streamed request holds until its stream ends: budget holds and rate limit tokens.
struct Holds {
    budgets: Held,
    rates: ratelimit::Charged,
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
            door: info.door.as_str(),
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
            timeline: info.timeline.as_deref(),
        },
    );
}

/// Relays a stream to the client. A break after output went out resumes on the next attempt
/// that answers (streaming only the rest): as prefill on a model that accepts one, re-asked
/// with the partial answer as context on any other, whose answer is aligned with the text
/// already sent ([`Aligner`]). When nothing can resume it, or a re-asked answer does not line
/// up, the stream ends with an in-band `error` event and no `[DONE]`, so a truncated answer
/// never looks complete.
#[allow(clippy::too_many_arguments)]
async fn pump(
    plan: Plan,
    mut live: LiveStream,
    tx: mpsc::Sender<Bytes>,
    mut trace: Trace,
    mut info: Info,
    identity: Identity,
    _in_flight: InFlightGauge,
    holds: Holds,
    mut capture: Option<cache::Capture>,
) {
    let Holds {
        budgets: mut held,
        rates,
    } = holds;
    held.keep_alive();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = StreamOut::new(
        info.door,
        &plan.request,
        &info.request_id,
        created,
        plan.attempt(live.idx).model.clone(),
        info.turn.take(),
    );
    // Time to first token as the client saw it: from its request, across failed attempts.
    let first_ttft = (live.started + live.ttft).saturating_duration_since(info.started);
    let mut text = String::new();
    // Characters of the current attempt's text received, and passed to the client (fewer when
    // a re-asked continuation restated the partial answer).
    let mut attempt_chars = 0usize;
    let mut attempt_sent = 0usize;
    let mut aligner: Option<Aligner> = None;
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
    let charge =
        |bill: &mut Bill, idx: usize, reported: Option<Usage>, chars: usize, sent: usize| {
            let usage = reported.unwrap_or(Usage {
                input_tokens: plan.request.facts.input_tokens,
                output_tokens: estimate_tokens(chars),
            });
            let charge = Charge::new(plan.model_index(idx), usage, reported.is_none());
            bill.charges.push(charge.delivering(sent, chars));
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
            Some(Ok(StreamEvent::Delta(mut d))) => {
                if !d.is_visible() {
                    continue;
                }
                if let Some(c) = &d.content {
                    attempt_chars += c.len();
                }
                if let Some(a) = &mut aligner {
                    let ends = d.finish_reason.is_some() || d.tool_calls.is_some();
                    let aligned = a
                        .push(d.content.as_deref().unwrap_or(""))
                        .and_then(|mut t| {
                            if ends {
                                t.push_str(&a.finish()?);
                            }
                            Ok(t)
                        });
                    match aligned {
                        Ok(t) => d.content = (!t.is_empty()).then_some(t),
                        Err(e) => {
                            break misaligned(&plan, &info, &tx, &mut out, &mut trace, &live, e)
                                .await
                        }
                    }
                    if !d.is_visible() {
                        continue;
                    }
                }
                if let Some(c) = &d.content {
                    text.push_str(c);
                    attempt_sent += c.len();
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
            Some(Ok(StreamEvent::Done)) => {
                // A re-asked continuation that ended while it could still be a restatement:
                // what it held back is the rest of the answer (never cached: a resumed answer
                // has no capture).
                let rest = aligner.as_mut().map(Aligner::finish).transpose();
                match rest {
                    Ok(Some(t)) if !t.is_empty() => {
                        text.push_str(&t);
                        attempt_sent += t.len();
                        let d = Delta {
                            content: Some(t),
                            ..Delta::default()
                        };
                        if tx.send(out.delta(&d)).await.is_err() {
                            break "client_closed";
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        break misaligned(&plan, &info, &tx, &mut out, &mut trace, &live, e).await
                    }
                }
                break "ok";
            }
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
        charge(
            &mut bill,
            live.idx,
            reported.take(),
            attempt_chars,
            attempt_sent,
        );
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
                    how = if next.reasked { "reask" } else { "prefill" },
                    "stream broke after output was sent; resuming with the partial answer"
                );
                aligner = next.reasked.then(|| Aligner::new(&text));
                live = next;
                // An answer stitched from two models is not cached.
                capture = None;
                pending = std::mem::take(&mut live.buffered).into();
                out.set_model(a.model.clone());
                idle = idle_of(&plan, live.idx);
                attempt_chars = 0;
                attempt_sent = 0;
                continue;
            }
        }
        let message =
            format!("the upstream stream broke after part of the answer was sent: {failure}");
        let _ = tx.send(out.error(&message)).await;
        break "truncated";
    };
    trace.calls[live.call].ms = live.started.elapsed().as_millis() as u64;
    if outcome == "ok" {
        if let Some(r) = plan.rt.live.deployment(plan.attempt(live.idx).index) {
            r.record(live.started.elapsed(), Some(live.ttft), true);
        }
        charge(&mut bill, live.idx, reported, attempt_chars, attempt_sent);
        if let Some(c) = bill.charges.last() {
            attempt::quota_settle(&plan, live.idx, c.usage);
        }
        if let Some(c) = capture.take() {
            let a = plan.attempt(live.idx);
            c.finish(
                &plan.app.cache,
                &plan.decision,
                bill.usage(),
                (&a.model, &a.provider),
            );
        }
        // The usage is the answer the client received; the bill (cost, budgets) counts every
        // attempt.
        let cost = format_cost(bill.cost_usd(&plan.rt.policy));
        let _ = tx.send(out.end(bill.delivered(), &cost)).await;
        if let Some((turn, response)) = out.finished() {
            turn.save(&plan.app, response).await;
        }
    } else if outcome == "client_closed" || outcome == "misaligned" {
        // Paid upstream all the same.
        charge(&mut bill, live.idx, reported, attempt_chars, attempt_sent);
    }
    let status = if outcome == "client_closed" { 499 } else { 200 };
    let error = match outcome {
        "truncated" => Some("stream truncated"),
        "misaligned" => Some("stream truncated: the re-asked continuation did not line up"),
        _ => None,
    };
    // A misaligned continuation truncated the answer the client has.
    let outcome = if outcome == "misaligned" {
        "truncated"
    } else {
        outcome
    };
    let settlement = Settlement {
        identity: &identity,
        model: &plan.attempt(live.idx).model,
        usage: bill.usage(),
        cost_usd: bill.cost_usd(&plan.rt.policy),
    };
    held.settle(&plan.app.state, &plan.app.metrics, settlement)
        .await;
    rates.settle(bill.usage());
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

/// Ends a stream whose re-asked continuation did not line up with the text already sent: the
/// call is logged as `misaligned` and the client gets the in-band error of a broken stream.
async fn misaligned(
    plan: &Plan,
    info: &Info,
    tx: &mpsc::Sender<Bytes>,
    out: &mut StreamOut,
    trace: &mut Trace,
    live: &LiveStream,
    e: crate::continuation::Misaligned,
) -> &'static str {
    let call = &mut trace.calls[live.call];
    call.outcome = "misaligned";
    call.broke = true;
    tracing::warn!(
        target: "llmgw::failover",
        request_id = info.request_id.as_str(),
        deployment = &*plan.attempt(live.idx).deployment,
        error = %e,
        "a re-asked continuation did not line up with the partial answer"
    );
    let message = format!("the upstream stream broke after part of the answer was sent: {e}");
    let _ = tx.send(out.error(&message)).await;
    "misaligned"
}

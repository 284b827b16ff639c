//! Phase 5: execute the decision's attempt list with failover.
//!
//! Attempts are tried in order. A deployment whose breaker (or whose region's) is open is
//! skipped, and so is one whose declared provider quota cannot take the call while another
//! attempt is left ([`crate::quota`]). Every attempt after the first (a retry or a move to the
//! next deployment) is paid from the retry budget. The same provider is tried again only for a
//! single 429 with a short `Retry-After` (after waiting it) or a single 500; any other failure
//! moves on. A content filter or another 4xx about the request is returned as is. After
//! `context_length_exceeded` the next candidate is tried unless its declared window is smaller
//! than that of a model that refused the input (then it is known too small), and never the
//! model that refused: an equal window may fit, as providers count tokens differently. For
//! streams, an attempt succeeds when its first visible event arrives within the first-token
//! timeout, so failures before the first byte stay invisible. An event the provider sent that
//! cannot be parsed is skipped and counted ([`note_malformed`]); it does not fail the attempt.
//!
//! A stream that broke after output went out is continued by [`run`] with the partial answer:
//! a model with the `prefill` capability gets it as assistant prefill, any other is re-asked
//! with it as context ([`crate::continuation`]); so is a model declared with prefill that
//! answers the prefilled request with a 4xx about the request.

use crate::app::{App, Runtime};
use crate::circuit::Ticket;
use crate::continuation;
use crate::error::ApiError;
use crate::live::InFlight;
use crate::metrics::{ErrorLabels, ModelLabels, UpstreamLabels};
use crate::quota::Quota;
use crate::upstream::{
    ChunkStream, ErrorClass, FullResponse, StreamEvent, UpstreamError, UpstreamRequest,
    UpstreamResponse, Usage,
};
use crate::wire::ClientRequest;
use http::StatusCode;
use llmgw_engine::decision::{Attempt, Decision};
use llmgw_engine::model::{Capability, TokenCount};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest `Retry-After` the gateway waits in place before trying the same provider again.
pub const MAX_INPLACE_WAIT: Duration = Duration::from_secs(2);
/// The pause before trying the same provider again after a 500.
const RETRY_500_DELAY: Duration = Duration::from_millis(100);

/// Everything an execution needs, owned so that a stream can carry it into its task.
pub struct Plan {
    /// The app.
    pub app: Arc<App>,
    /// The policy revision that decided.
    pub rt: Arc<Runtime>,
    /// The decision.
    pub decision: Decision,
    /// The client's request.
    pub request: ClientRequest,
    /// The request id, for the log lines of the attempts.
    pub request_id: String,
}

impl Plan {
    /// The attempt at `idx`.
    pub fn attempt(&self, idx: usize) -> &Attempt {
        &self.decision.attempts[idx]
    }

    /// Index of the logical model of attempt `idx`.
    pub fn model_index(&self, idx: usize) -> usize {
        self.rt.policy.deployments()[self.attempt(idx).index].model
    }

    fn labels(&self, idx: usize) -> ModelLabels {
        let a = self.attempt(idx);
        ModelLabels {
            model: a.model.to_string(),
            provider: a.provider.to_string(),
        }
    }
}

/// One upstream call as it went, for the request log.
#[derive(Debug, Clone, Serialize)]
pub struct CallLog {
    /// The deployment.
    pub deployment: Arc<str>,
    /// `ok`, an error class (a stream that broke after its first token names the class of the
    /// break), or, when no call was made: `skipped_open_circuit`, `skipped_context_window` (a
    /// model that refused the input, or a window known too small for it),
    /// `skipped_provider_quota` (its deployment's quota cannot take the call and another
    /// attempt is left) or `no_retry_budget`.
    pub outcome: &'static str,
    /// Milliseconds spent (a stream: until it ended or broke).
    pub ms: u64,
    /// The call's stream broke after part of the answer reached the client.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub broke: bool,
    /// On a call that continued a broken stream: `prefill` (the partial answer sent as
    /// assistant prefill) or `reask` (re-asked with the partial answer as context).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<&'static str>,
}

impl CallLog {
    /// Whether an upstream call was made.
    pub fn called(&self) -> bool {
        !self.outcome.starts_with("skipped") && self.outcome != "no_retry_budget"
    }
}

/// What happened across the attempts of one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trace {
    /// Each call or skip.
    pub calls: Vec<CallLog>,
    /// Same-provider retries.
    pub retries: u32,
    /// Moves to a later attempt that made an upstream call.
    pub failovers: u32,
    /// Streams resumed on another model after a break.
    pub resumed: u32,
    /// Stream events skipped because they could not be parsed.
    pub malformed_events: u32,
    /// What the response cache did before the attempts: `hit`, `near_hit`, `miss`, `bypass`.
    pub cache: &'static str,
    /// Served without budget holds while the state store was unavailable.
    pub unbudgeted: bool,
    /// The spans of the upstream calls, when traces are exported.
    #[serde(skip)]
    pub spans: Option<crate::otel::CallSpans>,
}

/// A stream whose first visible event has arrived.
pub struct LiveStream {
    /// Index of the attempt serving it.
    pub idx: usize,
    /// The rest of the stream.
    pub stream: ChunkStream,
    /// Events received up to and including the first visible one.
    pub buffered: Vec<StreamEvent>,
    /// Its entry in [`Trace::calls`].
    pub call: usize,
    /// When the attempt started.
    pub started: Instant,
    /// Time to the first visible event.
    pub ttft: Duration,
    /// Counts the attempt in flight.
    pub in_flight: InFlight,
    /// The stream continues a broken one by re-asking ([`crate::continuation`]): its text may
    /// begin by restating the partial answer and must be aligned with it.
    pub reasked: bool,
}

/// A successful attempt.
pub enum Success {
    /// A whole answer.
    Full {
        /// Index of the attempt.
        idx: usize,
        /// The answer.
        response: FullResponse,
    },
    /// A stream.
    Stream(LiveStream),
}

/// Every attempt failed, was skipped or must not be retried.
#[derive(Debug)]
pub struct Failure {
    /// The last upstream error; `None` when no provider could be tried.
    pub error: Option<UpstreamError>,
}

impl Failure {
    /// The error the client sees.
    pub fn api_error(&self) -> ApiError {
        let Some(e) = &self.error else {
            return ApiError::unavailable(
                "no_healthy_upstream",
                "no provider can take this request now (circuits open or retry budget spent)",
            )
            .with_retry_after(Some(Duration::from_secs(1)));
        };
        match e.class {
            ErrorClass::ContentFilter | ErrorClass::BadRequest | ErrorClass::ContextLength => {
                let status = e
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::BAD_REQUEST);
                let code = e.code.clone().unwrap_or_else(|| match e.class {
                    ErrorClass::ContextLength => "context_length_exceeded".to_owned(),
                    other => other.as_str().to_owned(),
                });
                let mut err =
                    ApiError::new(status, "invalid_request_error", &code, e.message.clone());
                err.param = e.param.clone();
                err
            }
            ErrorClass::RateLimited => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                format!("every provider is rate limiting: {e}"),
            )
            .with_retry_after(e.retry_after.or(Some(Duration::from_secs(1)))),
            ErrorClass::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "upstream_timeout",
                format!("no provider answered in time: {e}"),
            ),
            ErrorClass::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "upstream_unavailable",
                format!("no provider could answer: {e}"),
            )
            .with_retry_after(e.retry_after),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_error",
                format!("no provider could answer: {e}"),
            ),
        }
    }
}

/// Runs the attempts from `from` on. With `resume` (the partial answer of a stream that broke
/// after output went out), each call continues it: as assistant prefill on a model with the
/// `prefill` capability, re-asked with it as context on any other.
pub async fn run(
    plan: &Plan,
    from: usize,
    resume: Option<&str>,
    trace: &mut Trace,
) -> Result<Success, Failure> {
    let app = &plan.app;
    let policy = &plan.rt.policy;
    let stream = plan.request.facts.stream;
    let mut idx = from;
    let mut first_call = resume.is_none();
    let mut retried_same = false;
    // Models that refused the input as too long, and the largest window among them: a smaller
    // declared window is known too small for this input.
    let mut refused: Vec<usize> = Vec::new();
    let mut refused_window: Option<u64> = None;
    // The attempt that failed last, until the next upstream call makes it a failover.
    let mut failed: Option<usize> = None;
    let mut last_error: Option<UpstreamError> = None;
    // The attempt whose model, declared with prefill, refused one: it is re-asked instead.
    let mut prefill_refused: Option<usize> = None;
    while idx < plan.decision.attempts.len() {
        let attempt = plan.attempt(idx);
        let deployment = &policy.deployments()[attempt.index];
        let model = &policy.models()[deployment.model];
        let resume = resume.map(|partial| {
            if model.has(Capability::Prefill) && prefill_refused != Some(idx) {
                Resume::Prefill(partial)
            } else {
                Resume::Reask(partial)
            }
        });
        if refused.contains(&deployment.model)
            || refused_window.is_some_and(|w| model.context_window < w)
        {
            trace.calls.push(CallLog {
                deployment: attempt.deployment.clone(),
                outcome: "skipped_context_window",
                ms: 0,
                broke: false,
                resume: None,
            });
            idx += 1;
            continue;
        }
        // The deployment's provider quota takes the call first: one it cannot take is skipped
        // while another attempt is left.
        let quota = plan.rt.live.quota(attempt.index);
        let estimated = quota.map_or(0, |_| quota_estimate(plan, idx));
        if let Some(q) = quota {
            let last = idx + 1 == plan.decision.attempts.len();
            if !q.take(&app.state, estimated, last).await {
                trace.calls.push(CallLog {
                    deployment: attempt.deployment.clone(),
                    outcome: "skipped_provider_quota",
                    ms: 0,
                    broke: false,
                    resume: None,
                });
                idx += 1;
                continue;
            }
        }
        let give_back = || {
            if let Some(q) = quota {
                q.give_back(&app.state, estimated);
            }
        };
        let breakers = &plan.rt.breakers;
        let ticket = breakers.admit(attempt.index);
        if ticket.rejected() {
            give_back();
            trace.calls.push(CallLog {
                deployment: attempt.deployment.clone(),
                outcome: "skipped_open_circuit",
                ms: 0,
                broke: false,
                resume: None,
            });
            idx += 1;
            continue;
        }
        if !first_call && !app.retry_budget.withdraw() {
            give_back();
            app.metrics.retry_budget_exhausted.inc();
            trace.calls.push(CallLog {
                deployment: attempt.deployment.clone(),
                outcome: "no_retry_budget",
                ms: 0,
                broke: false,
                resume: None,
            });
            break;
        }
        first_call = false;
        let Some(recorder) = plan.rt.live.deployment(attempt.index) else {
            give_back();
            break;
        };
        if let Some(from) = failed.take() {
            trace.failovers += 1;
            app.metrics
                .failovers
                .get_or_create(&plan.labels(from))
                .inc();
        }
        let in_flight = recorder.start();
        let started = Instant::now();
        let result = call(plan, idx, resume, stream, trace).await;
        let elapsed = started.elapsed();
        match result {
            Ok(Called::Full(response)) => {
                breakers.record_success(attempt.index);
                recorder.record(elapsed, None, true);
                trace.calls.push(CallLog {
                    deployment: attempt.deployment.clone(),
                    outcome: "ok",
                    ms: elapsed.as_millis() as u64,
                    broke: false,
                    resume: resume.map(Resume::name),
                });
                return Ok(Success::Full { idx, response });
            }
            Ok(Called::Stream(stream, buffered)) => {
                breakers.record_success(attempt.index);
                trace.calls.push(CallLog {
                    deployment: attempt.deployment.clone(),
                    outcome: "ok",
                    ms: elapsed.as_millis() as u64,
                    broke: false,
                    resume: resume.map(Resume::name),
                });
                return Ok(Success::Stream(LiveStream {
                    idx,
                    stream,
                    buffered,
                    call: trace.calls.len() - 1,
                    started,
                    ttft: elapsed,
                    in_flight,
                    reasked: matches!(resume, Some(Resume::Reask(_))),
                }));
            }
            Err(e) => {
                drop(in_flight);
                trace.calls.push(CallLog {
                    deployment: attempt.deployment.clone(),
                    outcome: e.class.as_str(),
                    ms: elapsed.as_millis() as u64,
                    broke: false,
                    resume: resume.map(Resume::name),
                });
                note_failure(plan, idx, &e, ticket);
                match e.class {
                    // A request error about the prefill itself (the model's declared capability
                    // was wrong): the same model is re-asked without it.
                    ErrorClass::BadRequest if matches!(resume, Some(Resume::Prefill(_))) => {
                        prefill_refused = Some(idx);
                        trace.retries += 1;
                        app.metrics.retries.get_or_create(&plan.labels(idx)).inc();
                        last_error = Some(e);
                        continue;
                    }
                    ErrorClass::ContentFilter | ErrorClass::BadRequest => {
                        return Err(Failure { error: Some(e) })
                    }
                    ErrorClass::ContextLength => {
                        refused.push(deployment.model);
                        refused_window = refused_window.max(Some(model.context_window));
                    }
                    _ => {}
                }
                let short_wait = e.retry_after.filter(|d| *d <= MAX_INPLACE_WAIT);
                let same_again = !retried_same
                    && !ticket.probe()
                    && match e.class {
                        ErrorClass::RateLimited => short_wait.is_some(),
                        ErrorClass::Server => e.status == Some(500),
                        _ => false,
                    };
                if same_again {
                    retried_same = true;
                    trace.retries += 1;
                    app.metrics.retries.get_or_create(&plan.labels(idx)).inc();
                    tokio::time::sleep(short_wait.unwrap_or(RETRY_500_DELAY)).await;
                    last_error = Some(e);
                    continue;
                }
                // A provider that asks for a long pause (429 or 503 with `Retry-After`) gets it:
                // the deployment is skipped for that long (its region too once enough of the
                // region's deployments are open).
                if e.class.is_health_failure() {
                    if let Some(long) = e.retry_after.filter(|d| *d > MAX_INPLACE_WAIT) {
                        breakers.trip_for(attempt.index, long);
                    }
                }
                last_error = Some(e);
                failed = Some(idx);
                idx += 1;
            }
        }
    }
    Err(Failure { error: last_error })
}

/// Records a failed call (admitted with `ticket`) in the breakers, live stats and metrics.
pub fn note_failure(plan: &Plan, idx: usize, e: &UpstreamError, ticket: Ticket) {
    let attempt = plan.attempt(idx);
    plan.rt.breakers.record_failure(attempt.index, e, ticket);
    if e.class.is_health_failure() {
        if let Some(r) = plan.rt.live.deployment(attempt.index) {
            r.record(Duration::ZERO, None, false);
        }
    }
    plan.app
        .metrics
        .upstream_errors
        .get_or_create(&ErrorLabels {
            provider: attempt.provider.to_string(),
            class: e.class.as_str(),
        })
        .inc();
}

/// Counts and logs a stream event of attempt `idx` that could not be parsed (`why`); the
/// stream goes on without it.
pub fn note_malformed(plan: &Plan, idx: usize, why: &str, trace: &mut Trace) {
    let attempt = plan.attempt(idx);
    trace.malformed_events += 1;
    plan.app
        .metrics
        .upstream_malformed_events
        .get_or_create(&UpstreamLabels {
            provider: attempt.provider.to_string(),
        })
        .inc();
    tracing::warn!(
        target: "llmgw::failover",
        request_id = plan.request_id.as_str(),
        deployment = &*attempt.deployment,
        error = why,
        "skipped a stream event that could not be parsed"
    );
}

/// How a call continues the partial answer of a broken stream.
#[derive(Debug, Clone, Copy)]
enum Resume<'a> {
    /// As assistant prefill.
    Prefill(&'a str),
    /// Re-asked with it as context ([`continuation::reask_body`]).
    Reask(&'a str),
}

impl Resume<'_> {
    /// Its name in the request log.
    fn name(self) -> &'static str {
        match self {
            Resume::Prefill(_) => "prefill",
            Resume::Reask(_) => "reask",
        }
    }
}

enum Called {
    Full(FullResponse),
    Stream(ChunkStream, Vec<StreamEvent>),
}

/// One call, with the first-token (streams) or total (whole answers) timeout.
async fn call(
    plan: &Plan,
    idx: usize,
    resume: Option<Resume<'_>>,
    stream: bool,
    trace: &mut Trace,
) -> Result<Called, UpstreamError> {
    let attempt = plan.attempt(idx);
    let deployment = &plan.rt.policy.deployments()[attempt.index];
    let timeouts = plan.rt.policy.providers()[deployment.provider].timeouts;
    let provider = &plan.rt.providers[deployment.provider];
    let traceparent = trace.spans.as_mut().map(crate::otel::CallSpans::call);
    let reasked;
    let (body, prefill) = match resume {
        None => (&plan.request.body, None),
        Some(Resume::Prefill(partial)) => (&plan.request.body, Some(partial)),
        Some(Resume::Reask(partial)) => {
            reasked = continuation::reask_body(&plan.request.body, partial);
            (&reasked, None)
        }
    };
    let store = &plan.app.state;
    let quota = plan.rt.live.quota(attempt.index).map(|q| &**q);
    let request = UpstreamRequest {
        endpoint: plan.request.facts.endpoint,
        body,
        upstream_model: &attempt.upstream_model,
        prefill,
        stream,
        max_output_tokens: plan.rt.policy.models()[deployment.model].max_output_tokens,
        traceparent: traceparent.as_deref(),
        quota: quota.map(|cell| Quota { cell, store }),
    };
    let called = send(plan, idx, provider, request, stream, timeouts, trace).await;
    if let Some(q) = quota {
        // Taken before the call ([`run`]).
        let estimated = quota_estimate(plan, idx);
        match &called {
            // Nothing was produced: the provider counts no tokens.
            Err(_) => q.correct(store, -(estimated as i64)),
            Ok(Called::Full(full)) => {
                let used = full.usage.input_tokens + full.usage.output_tokens;
                q.correct(store, used as i64 - estimated as i64);
            }
            // Corrected when the stream ends ([`quota_settle`]).
            Ok(Called::Stream(..)) => {}
        }
    }
    called
}

/// The tokens an attempt takes of its deployment's provider quota when it is sent: the
/// request's input and worst-case output on the deployment's model.
fn quota_estimate(plan: &Plan, idx: usize) -> u64 {
    let policy = &plan.rt.policy;
    let model = &policy.models()[plan.model_index(idx)];
    policy.estimated_tokens(model, &plan.request.facts, TokenCount::Total)
}

/// Corrects the provider quota of a streamed attempt from the tokens it used.
pub fn quota_settle(plan: &Plan, idx: usize, used: Usage) {
    if let Some(q) = plan.rt.live.quota(plan.attempt(idx).index) {
        let used = used.input_tokens + used.output_tokens;
        q.correct(
            &plan.app.state,
            used as i64 - quota_estimate(plan, idx) as i64,
        );
    }
}

/// Sends one call and waits for its answer or first token.
async fn send(
    plan: &Plan,
    idx: usize,
    provider: &Arc<dyn crate::upstream::Provider>,
    request: UpstreamRequest<'_>,
    stream: bool,
    timeouts: llmgw_engine::model::Timeouts,
    trace: &mut Trace,
) -> Result<Called, UpstreamError> {
    let first_token = Duration::from_millis(timeouts.first_token_ms);
    let limit = if stream {
        first_token
    } else {
        Duration::from_millis(timeouts.total_ms)
    };
    let deadline = tokio::time::Instant::now() + limit;
    let timeout = |what: &str| {
        UpstreamError::new(
            ErrorClass::Timeout,
            format!("no {what} within {} ms", limit.as_millis()),
        )
    };
    let response = match tokio::time::timeout_at(deadline, provider.send(request)).await {
        Err(_) => return Err(timeout(if stream { "first token" } else { "answer" })),
        Ok(r) => r?,
    };
    match response {
        UpstreamResponse::Full(full) => Ok(Called::Full(full)),
        UpstreamResponse::Stream(mut s) => {
            let mut buffered = Vec::new();
            loop {
                match tokio::time::timeout_at(deadline, s.next()).await {
                    Err(_) => return Err(timeout("first token")),
                    Ok(None) => {
                        return Err(UpstreamError::new(
                            ErrorClass::Protocol,
                            "the stream ended before any token",
                        ))
                    }
                    Ok(Some(Err(mut e))) => {
                        e.after_first_byte = false;
                        return Err(e);
                    }
                    Ok(Some(Ok(StreamEvent::Malformed(why)))) => {
                        note_malformed(plan, idx, &why, trace);
                    }
                    Ok(Some(Ok(ev))) => {
                        let visible = match &ev {
                            StreamEvent::Delta(d) => d.is_visible(),
                            StreamEvent::Done => true,
                            StreamEvent::Usage(_) | StreamEvent::Malformed(_) => false,
                        };
                        buffered.push(ev);
                        if visible {
                            return Ok(Called::Stream(s, buffered));
                        }
                    }
                }
            }
        }
    }
}

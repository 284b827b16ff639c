//! Active health probes: for providers with a `health_probe` setting, a background task sends a
//! one-token chat completion (`max_tokens: 1`, through the deployment's own adapter) to each
//! deployment whose breaker is open or half-open or whose live stats are stale, at most once
//! per `interval_secs`. A success closes the deployment's breaker; a failure keeps it open.
//! Outcomes and latencies go to the live stats apart from client traffic
//! ([`crate::live::DeploymentLive::record_probe`]): they stand in only while the window holds
//! no traffic, so a one-token probe never makes a slow deployment look fast. Probes are not client requests: they spend no budget and
//! write no request log line, only the `llmgw_health_probes_total` metric and a debug log.
//! Each round reads the runtime in force, so probes follow policy reloads.

use crate::app::{App, Runtime};
use crate::metrics::ProbeLabels;
use crate::upstream::{ErrorClass, UpstreamError, UpstreamRequest};
use llmgw_engine::input::Endpoint;
use llmgw_engine::model::Capability;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

/// How often the task looks for deployments that are due a probe.
const TICK: Duration = Duration::from_millis(100);

/// Starts the probe task; abort the handle to stop it (probes under way stop with it).
pub fn spawn(app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // When each deployment (by name) was last probed.
        let mut last: HashMap<Arc<str>, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rt = app.runtime.load_full();
            let now = Instant::now();
            let due = due(&rt, &last, now);
            last.retain(|name, _| rt.policy.deployments().iter().any(|d| d.name == *name));
            let mut probes = JoinSet::new();
            for index in due {
                last.insert(rt.policy.deployments()[index].name.clone(), now);
                probes.spawn(probe(app.clone(), rt.clone(), index));
            }
            probes.join_all().await;
        }
    })
}

/// The deployments of `rt` that need a probe and whose interval has passed since `last`.
fn due(rt: &Runtime, last: &HashMap<Arc<str>, Instant>, now: Instant) -> Vec<usize> {
    let policy = &rt.policy;
    policy
        .deployments()
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            let Some(settings) = policy.providers()[d.provider].health_probe else {
                return false;
            };
            let interval = Duration::from_secs(settings.interval_secs.max(1));
            let needed = rt.breakers.deployment_open(*i)
                || rt
                    .live
                    .deployment(*i)
                    .is_some_and(|l| l.compute().is_none());
            policy.models()[d.model].has(Capability::Chat)
                && needed
                && last
                    .get(&d.name)
                    .is_none_or(|t| now.duration_since(*t) >= interval)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Sends one probe to deployment `index` of `rt` and records its outcome.
async fn probe(app: Arc<App>, rt: Arc<Runtime>, index: usize) {
    let d = &rt.policy.deployments()[index];
    let Some(settings) = rt.policy.providers()[d.provider].health_probe else {
        return;
    };
    let Some(adapter) = rt.providers.get(d.provider) else {
        return;
    };
    let body = json!({
        "model": &*d.upstream_model,
        "messages": [{ "role": "user", "content": "ping" }],
        "max_tokens": 1,
    });
    let request = UpstreamRequest {
        endpoint: Endpoint::Chat,
        body: &body,
        upstream_model: &d.upstream_model,
        prefill: None,
        stream: false,
        max_output_tokens: Some(1),
        traceparent: None,
        quota: None,
    };
    let started = Instant::now();
    let limit = Duration::from_millis(settings.timeout_ms);
    let result = match tokio::time::timeout(limit, adapter.send(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(UpstreamError::new(
            ErrorClass::Timeout,
            "health probe timed out",
        )),
    };
    let elapsed = started.elapsed();
    rt.breakers.record_probe(index, result.as_ref().map(|_| ()));
    let outcome = match &result {
        Ok(()) => "ok",
        Err(e) => e.class.as_str(),
    };
    if let Some(recorder) = rt.live.deployment(index) {
        match &result {
            Ok(()) => recorder.record_probe(elapsed, true),
            Err(e) if e.class.is_health_failure() => recorder.record_probe(Duration::ZERO, false),
            Err(_) => {}
        }
    }
    app.metrics
        .health_probes
        .get_or_create(&ProbeLabels {
            deployment: d.name.to_string(),
            outcome,
        })
        .inc();
    tracing::debug!(
        target: "llmgw::health",
        deployment = %d.name,
        outcome,
        ms = elapsed.as_millis() as u64,
        "health probe"
    );
}

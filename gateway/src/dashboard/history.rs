//! `GET /admin/history`: a bounded ring of recent snapshots of every deployment's live stats
//! and every canary's progress, for the dashboard's time-series charts.
//!
//! A task takes one snapshot every [`SAMPLE_EVERY`] from what `/admin/status` shows (the
//! live-stats snapshot the gateway refreshes anyway, and the canary controller's published
//! status); the ring keeps the last [`KEEP`]. Nothing of it runs on the request path.

use crate::admin::require_admin_token;
use crate::admin_routes::live_json;
use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::routes::json;
use http::{Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a snapshot is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Snapshots kept: 15 minutes at [`SAMPLE_EVERY`].
pub const KEEP: usize = 450;

/// The ring of snapshots.
#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<VecDeque<Value>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one snapshot of `app` at `now_ms` (unix milliseconds), dropping the oldest past
    /// [`KEEP`].
    pub fn sample(&self, app: &App, now_ms: u64) {
        self.push(snapshot(app, now_ms));
    }

    /// Keeps `snapshot` (whose `t` is unix milliseconds), dropping the oldest past [`KEEP`].
    fn push(&self, snapshot: Value) {
        let mut ring = self.lock();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(snapshot);
    }

    /// The snapshots taken after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Value> {
        self.lock()
            .iter()
            .filter(|s| s["t"].as_u64().is_some_and(|t| t > since_ms))
            .cloned()
            .collect()
    }
}

/// One snapshot: `{t, deployments: {name: live}, canaries: {name: progress}}`.
fn snapshot(app: &App, now_ms: u64) -> Value {
    let rt = app.runtime.load();
    let deployments: Map<String, Value> = rt
        .policy
        .deployments()
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let stats = rt.live.current(i)?;
            Some((d.name.to_string(), live_json(&rt.policy, i, &stats)))
        })
        .collect();
    let canaries: Map<String, Value> = app
        .canaries
        .status_json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c["canary"].as_str()?.to_owned();
            let log_e: Vec<Value> = c["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| json!({ "metric": m["metric"], "log_e": m["log_e"], "threshold": m["threshold"] }))
                .collect();
            Some((
                name,
                json!({
                    "state": c["state"],
                    "step": c["step"],
                    "weight_percent": c["weight_percent"],
                    "requests": c["requests"],
                    "metrics": log_e,
                }),
            ))
        })
        .collect();
    json!({ "t": now_ms, "deployments": deployments, "canaries": canaries })
}

/// Samples `app` every [`SAMPLE_EVERY`] until aborted.
pub fn spawn(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            app.history.sample(&app, now_ms);
        }
    })
}

/// Answers `GET /admin/history[?since=MS]` (the admin token only): the snapshots after
/// `since` (unix milliseconds), the deployments with their prices, and the policy's budgets.
pub async fn handle(
    app: &App,
    parts: &http::request::Parts,
) -> Result<Response<GatewayBody>, ApiError> {
    require_admin_token(app, &parts.headers, "`/admin/history`").await?;
    let mut since = 0;
    for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match &*name {
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::invalid_field(
                        "since",
                        format!("`since` must be unix milliseconds, not `{value}`"),
                    )
                })?
            }
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    format!("unknown parameter `{other}`; the parameter is since"),
                ))
            }
        }
    }
    let rt = app.runtime.load();
    let policy = &rt.policy;
    let deployments: Vec<Value> = policy
        .deployments()
        .iter()
        .map(|d| {
            let price = policy.models().get(d.model).map(|m| &m.price);
            json!({
                "deployment": &*d.name,
                "model": &*d.model_name,
                "provider": &*d.provider_name,
                "region": &*d.region,
                "input_per_mtok": price.map(|p| p.input_per_mtok),
                "output_per_mtok": price.map(|p| p.output_per_mtok),
            })
        })
        .collect();
    let budgets: Vec<Value> = policy.budgets().iter().map(|b| json!(b.spec)).collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "interval_secs": SAMPLE_EVERY.as_secs(),
            "samples": app.history.since(since),
            "deployments": deployments,
            "budgets": budgets,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_snapshots_and_answers_those_after_since() {
        let h = History::default();
        for t in 1..=(KEEP as u64 + 10) {
            h.push(json!({ "t": t }));
        }
        let all = h.since(0);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0]["t"], 11, "the 10 oldest were dropped");
        let newest: Vec<u64> = h
            .since(KEEP as u64 + 7)
            .iter()
            .filter_map(|s| s["t"].as_u64())
            .collect();
        assert_eq!(
            newest,
            vec![KEEP as u64 + 8, KEEP as u64 + 9, KEEP as u64 + 10]
        );
    }
}

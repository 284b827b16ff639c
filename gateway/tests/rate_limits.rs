//! Rate limits enforced by the real `llmgw` binary: a per-key request rate and a per-tenant
//! token rate hold within 5% under bounded concurrent traffic, on one replica with SQLite state
//! (in-process cells) and on two replicas sharing one Redis (one Lua script per check); a
//! client that waits the `Retry-After` it was given is served; every answer carries OpenAI's
//! `x-ratelimit-*` headers; a refusal is logged and counted under the limit's name; and a
//! deployment nearing its declared provider TPM sheds its traffic to an equivalent before the
//! provider answers 429; and routing rules read the share left of the limits (`ratelimit.*`).
//!
//! The issue asks for 60 s of traffic against per-minute limits. These tests use per-second
//! limits over 4 s instead: GCRA treats both alike (a rate is an emission interval and a burst
//! whatever its period), and a minute of traffic per case would take CI minutes. How many
//! requests the traffic may get through is computed from how long it ran, measured around it:
//! admissions can only happen inside that span, so `burst + rate × span` bounds them from above,
//! and saturating clients make them reach `rate × duration` less 5%.
//!
//! The Redis tests need a Redis: set `LLMGW_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`)
//! and run with `--include-ignored`. Each writes under a prefix of its own.

mod common;
mod state_support;

use common::*;
use state_support::*;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Requests per second of `per-key-rps`, on model `chat-rpm`.
const RPS: f64 = 50.0;
/// Its burst: enough to absorb the clients' jitter (a slot no client asks for in time is
/// kept for later, up to the burst), small enough to stay within 5% of the rate.
const BURST: f64 = 5.0;
/// Tokens per second of `per-tenant-tps`, on model `chat-tpm`.
const TPS: f64 = 1000.0;
/// Its burst: five requests' worth.
const TOKEN_BURST: f64 = 100.0;
/// Tokens of one request: "Say something." is 4 input tokens, and the mock answers exactly
/// `max_tokens` (16).
const REQUEST_TOKENS: f64 = 20.0;
/// How long each run of traffic lasts.
const TRAFFIC: Duration = Duration::from_secs(4);
/// Concurrent clients per gateway.
const CLIENTS: usize = 3;

/// Models `chat-rpm`, `chat-tpm` and `chat-slow` (one request per 2 s) on the mock, each under
/// its own rate limit.
fn policy(dir: &Path, base_url: &str) {
    budget_policy(
        dir,
        base_url,
        &[
            ("chat-rpm", "a", "a+ok"),
            ("chat-tpm", "b", "b+ok"),
            ("chat-slow", "c", "c+ok"),
        ],
        "",
    );
    std::fs::write(
        dir.join("ratelimits.yaml"),
        format!(
            r#"apiVersion: llmgw.dev/v1
kind: RateLimits
limits:
  - name: per-key-rps
    scope: key
    when: 'request.model == "chat-rpm"'
    requests: {{limit: {RPS}, per: second, burst: {BURST}}}
  - name: per-tenant-tps
    scope: tenant
    when: 'request.model == "chat-tpm"'
    tokens: {{limit: {TPS}, per: second, burst: {TOKEN_BURST}}}
  - name: slow-key
    scope: key
    when: 'request.model == "chat-slow"'
    requests: {{limit: 30, per: minute, burst: 1}}
"#
        ),
    )
    .expect("write rate limits");
}

/// What a run of traffic got.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
}

/// `CLIENTS` clients per gateway send `body` back to back for [`TRAFFIC`]; returns the tally
/// and the span from the first request sent to the last answer received.
async fn traffic(gateways: &[&Gateway], body: &str, limit: &str) -> (Tally, Duration) {
    let start = Instant::now();
    let end = start + TRAFFIC;
    let mut tasks = Vec::new();
    for gw in gateways {
        for _ in 0..CLIENTS {
            let url = gw.url("/v1/chat/completions");
            let body = body.to_owned();
            let limit = limit.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < end {
                    let a = post(&url, &body).await;
                    match a.status {
                        200 => t.ok += 1,
                        429 => {
                            assert_eq!(a.header("x-llmgw-rule"), limit, "{}", a.body);
                            t.refused += 1;
                        }
                        s => panic!("unexpected {s}: {}", a.body),
                    }
                }
                t
            }));
        }
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.expect("client");
        total.ok += t.ok;
        total.refused += t.refused;
    }
    (total, start.elapsed())
}

/// Asserts that `admitted` units went through a rate of `rate` per second with `burst`: at
/// most what GCRA allows in the span, which is within 5% of the rate, and at least the
/// traffic's duration's worth less 5%.
fn within_five_percent(what: &str, admitted: f64, rate: f64, burst: f64, span: Duration) {
    let most = burst + rate * span.as_secs_f64();
    let least = 0.95 * rate * TRAFFIC.as_secs_f64();
    assert!(
        admitted <= most + 1e-9,
        "{what}: {admitted} admitted, more than {most} ({span:?})"
    );
    assert!(
        admitted <= 1.05 * rate * span.as_secs_f64(),
        "{what}: {admitted} admitted in {span:?}, more than 5% over the rate"
    );
    assert!(
        admitted >= least,
        "{what}: {admitted} admitted, less than {least}: the limit took more than 5%"
    );
}

async fn rates_hold(gateways: &[&Gateway]) {
    let (rpm, span) = traffic(
        gateways,
        &chat_for("chat-rpm", Some(16), None),
        "per-key-rps",
    )
    .await;
    assert!(rpm.refused > 0, "the traffic went past the limit");
    within_five_percent("per-key requests", rpm.ok as f64, RPS, BURST, span);
    let (tpm, span) = traffic(
        gateways,
        &chat_for("chat-tpm", Some(16), None),
        "per-tenant-tps",
    )
    .await;
    assert!(tpm.refused > 0, "the traffic went past the limit");
    within_five_percent(
        "per-tenant tokens",
        tpm.ok as f64 * REQUEST_TOKENS,
        TPS,
        TOKEN_BURST,
        span,
    );
    for gw in gateways {
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains(
                r#"llmgw_ratelimit_refused_total{limit="per-key-rps",measure="requests"}"#
            ),
            "{metrics}"
        );
        let logs = gw.logs();
        assert!(
            logs.contains("rate limit exceeded") && logs.contains(r#""limit":"per-tenant-tps""#),
            "{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_on_sqlite_holds_a_key_rate_and_a_tenant_token_rate() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, &mock.base_url()));
    rates_hold(&[&gw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn two_replicas_on_one_redis_hold_a_key_rate_and_a_tenant_token_rate_together() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url());
    let one = replica(policies.path(), &url, &prefix);
    let two = replica(policies.path(), &url, &prefix);
    rates_hold(&[&one, &two]).await;
    drop((one, two));
    cleanup_redis(&url, &prefix).await;
}

/// A refusal says how long to wait, and waiting that long is enough; every answer carries the
/// limit's standing.
async fn retry_after_is_honest(gw: &Gateway) {
    let body = chat_for("chat-slow", Some(4), None);
    let url = gw.url("/v1/chat/completions");
    let first = post(&url, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-ratelimit-limit-requests"), "30");
    assert_eq!(first.header("x-ratelimit-remaining-requests"), "0");
    assert_eq!(first.header("x-ratelimit-reset-requests"), "2s");
    let refused = post(&url, &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(refused.header("x-llmgw-rule"), "slow-key");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), "0");
    let wait: u64 = refused
        .header("retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // The client does what the answer says.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let after = post(&url, &body).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let streamed = post(&url, &chat("chat-rpm", true, 4)).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(streamed.header("x-ratelimit-limit-requests"), "50");
    let unlimited = post(&url, &chat_for("chat-tpm", Some(4), None)).await;
    assert_eq!(unlimited.header("x-ratelimit-limit-tokens"), "1000");
    assert!(unlimited
        .headers
        .get("x-ratelimit-limit-requests")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_retry_after_is_served_on_sqlite() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, &mock.base_url()));
    retry_after_is_honest(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn a_client_that_waits_retry_after_is_served_on_redis() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    policy(policies.path(), &mock.base_url());
    let gw = replica(policies.path(), &url, &prefix);
    retry_after_is_honest(&gw).await;
    drop(gw);
    cleanup_redis(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_token_burst_is_refused_without_retry_after() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| policy(d, &mock.base_url()));
    let a = post(
        &gw.url("/v1/chat/completions"),
        &chat_for("chat-tpm", Some(100), None),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(
        a.headers.get("retry-after").is_none(),
        "waiting never helps"
    );
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("request too large")),
        "{}",
        a.body
    );
}

/// The mock's `primary` model, which takes 1,000 tokens and then answers 429.
const QUOTA_PRIMARY: &str = "p+tpm-1000";

/// `primary` on [`QUOTA_PRIMARY`], declaring its 1,000 tokens a minute, and its equivalent
/// `backup`.
fn quota_policy(dir: &Path, base_url: &str) {
    primary_and_backup(dir, base_url, "tpm-1000");
    let models = std::fs::read_to_string(dir.join("models.yaml")).expect("models");
    let declared = models.replace(
        &format!("upstream_model: \"{QUOTA_PRIMARY}\"\n"),
        &format!(
            "upstream_model: \"{QUOTA_PRIMARY}\"\n        quota: {{tokens_per_minute: 1000}}\n"
        ),
    );
    assert_ne!(models, declared);
    std::fs::write(dir.join("models.yaml"), declared).expect("write models");
}

/// Sends 30 requests for `primary`, in turn through each gateway, each taking 44 tokens of the
/// quota (4 prompt tokens, 40 answer tokens: the 23rd would be refused): the primary serves
/// until its quota is nearly used, and the backup after, before the provider answers 429.
async fn quota_sheds(gateways: &[&Gateway], mock: &llmgw_mock_provider::MockHandle) {
    let mut served_by = Vec::new();
    for i in 0..30 {
        let gw = gateways[i % gateways.len()];
        let a = post(&gw.url("/v1/chat/completions"), &chat("primary", false, 40)).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        served_by.push(a.header("x-llmgw-model").to_owned());
    }
    let on_primary = served_by.iter().filter(|m| *m == "primary").count();
    assert!(
        on_primary >= 20,
        "the quota was used before shedding: {served_by:?}"
    );
    assert!(
        served_by[on_primary..].iter().all(|m| m == "backup"),
        "once near the quota, the backup serves: {served_by:?}"
    );
    assert_eq!(
        mock.stats.attempts(QUOTA_PRIMARY),
        on_primary as u64,
        "every call to the primary was answered: none got the provider's 429"
    );
    for gw in gateways {
        let metrics = gw.metrics().await;
        assert!(
            !metrics.contains(r#"llmgw_upstream_errors_total{provider="mock-a""#),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_nearing_its_provider_tpm_sheds_to_its_equivalent_before_a_429() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| quota_policy(d, &mock.base_url()));
    quota_sheds(&[&gw], &mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn two_replicas_on_one_redis_share_a_provider_tpm_and_shed_before_a_429() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    quota_policy(policies.path(), &mock.base_url());
    let one = replica(policies.path(), &url, &prefix);
    let two = replica(policies.path(), &url, &prefix);
    // Each replica alone would count half the calls and send the 23rd to the primary.
    quota_sheds(&[&one, &two], &mock).await;
    drop((one, two));
    cleanup_redis(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_moves_traffic_off_a_model_before_its_rate_limit_bites() {
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        budget_policy(
            d,
            &mock.base_url(),
            &[("lead", "a", "a+ok"), ("spare", "b", "b+ok")],
            "",
        );
        std::fs::write(
            d.join("ratelimits.yaml"),
            "apiVersion: llmgw.dev/v1\nkind: RateLimits\nlimits:\n  - name: lead-rate\n    scope: key\n    when: 'request.model == \"lead\"'\n    requests: {limit: 4, per: minute}\n",
        )
        .expect("write rate limits");
        std::fs::write(
            d.join("routing.yaml"),
            "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: spare-the-lead\n    when: 'ratelimit.requests < 0.5'\n    candidates: [spare]\n",
        )
        .expect("write routing");
    });
    let mut seen = Vec::new();
    for _ in 0..5 {
        let a = post(&gw.url("/v1/chat/completions"), &chat("lead", false, 4)).await;
        seen.push(match a.status {
            200 => a.header("x-llmgw-model").to_owned(),
            s => format!("{s} {}", a.header("x-llmgw-rule")),
        });
    }
    // Shares left before each request: 1, 0.75, 0.5, 0.25, 0.
    assert_eq!(seen, ["lead", "lead", "lead", "spare", "429 lead-rate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_downgraded_at_its_reservation_counts_against_the_served_models_limit() {
    // `big` hangs upstream, so its first request holds the budget until it times out; a second
    // request for `big` is then refused its hold and decided again, downgraded to `small`.
    const HANGING: &str = "s+hang";
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        budget_policy(
            d,
            &mock.base_url(),
            &[("big", "big", HANGING), ("small", "small", "b+ok")],
            // One request of 2,000 output tokens holds 0.004 USD: a second does not fit.
            "  - name: key-cap\n    scope: key\n    period: daily\n    limit_usd: 0.006\n    on_exceed: downgrade\n",
        );
        std::fs::write(
            d.join("downgrades.yaml"),
            "apiVersion: llmgw.dev/v1\nkind: Downgrades\nrules:\n  - name: big-to-small\n    from: [big]\n    to: small\n",
        )
        .expect("write downgrades");
        std::fs::write(
            d.join("ratelimits.yaml"),
            concat!(
                "apiVersion: llmgw.dev/v1\nkind: RateLimits\nlimits:\n",
                "  - name: big-rate\n    scope: model\n    when: 'request.model == \"big\"'\n",
                "    requests: {limit: 100, per: minute}\n",
                "  - name: small-rate\n    scope: model\n    when: 'request.model == \"small\"'\n",
                "    requests: {limit: 7, per: minute}\n",
            ),
        )
        .expect("write rate limits");
    });
    let url = gw.url("/v1/chat/completions");
    let body = chat_for("big", Some(2000), None);
    let first = {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move { post(&url, &body).await })
    };
    until(
        Duration::from_secs(10),
        "the first request upstream",
        || async { mock.stats.attempts(HANGING) >= 1 },
    )
    .await;
    let moved = post(&url, &body).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.header("x-llmgw-downgraded-from"), "big");
    assert_eq!(moved.header("x-llmgw-model"), "small");
    assert_eq!(
        (
            moved.header("x-ratelimit-limit-requests"),
            moved.header("x-ratelimit-remaining-requests")
        ),
        ("7", "6"),
        "counted against the served model's limit, not the requested one's"
    );
    first.abort();
}

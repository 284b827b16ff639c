//! Which rate limits count a request, in which bucket and for how much; what `ratelimit.*` and
//! `m.quota_headroom` read; where a deployment near its provider quota goes.

use llmgw_engine::decision::{Measure, RateCharge};
use llmgw_engine::input::DecisionInput;
use llmgw_engine::model::TokenCount;
use llmgw_engine::source::policy_files;
use llmgw_engine::{load_files, CompiledPolicy, Decision};

const MODELS: &str = r#"
apiVersion: llmgw.dev/v1
kind: Models
models:
  - name: big
    class: c
    quality: 0.9
    context_window: 100000
    max_output_tokens: 4000
    price: {input_per_mtok: 1, output_per_mtok: 2}
    deployments:
      - provider: p1
        upstream_model: big
        quota: {requests_per_minute: 100, tokens_per_minute: 10000}
      - provider: p2
        upstream_model: big
  - name: small
    class: c
    quality: 0.5
    context_window: 100000
    max_output_tokens: 1000
    price: {input_per_mtok: 0.1, output_per_mtok: 0.2}
    deployments:
      - provider: p2
        upstream_model: small
"#;

const PROVIDERS: &str = r#"
apiVersion: llmgw.dev/v1
kind: Providers
providers:
  - {name: p1, type: simulated}
  - {name: p2, type: simulated}
"#;

fn policy(extra: &[(&str, &str)]) -> CompiledPolicy {
    let mut files = vec![
        ("models.yaml".to_owned(), MODELS.as_bytes().to_vec()),
        ("providers.yaml".to_owned(), PROVIDERS.as_bytes().to_vec()),
    ];
    files.extend(
        extra
            .iter()
            .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec())),
    );
    let outcome = load_files(&policy_files(files), None);
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    outcome.policy.expect("compiles")
}

fn decide(policy: &CompiledPolicy, json: &str) -> Decision {
    let i: DecisionInput = serde_json::from_str(json).expect("valid input");
    policy.decide(&i.context(), &i, &i).expect("decides")
}

fn charge<'d>(d: &'d Decision, rule: &str, measure: &str) -> &'d RateCharge {
    d.rate_charges
        .iter()
        .find(|c| &*c.rule == rule && c.measure.as_str() == measure)
        .unwrap_or_else(|| panic!("no {measure} charge of `{rule}` in {:#?}", d.rate_charges))
}

const LIMITS: &str = r#"
apiVersion: llmgw.dev/v1
kind: RateLimits
limits:
  - name: per-user
    scope: user
    requests: {limit: 10, per: second, burst: 3}
    tokens: {limit: 600000, per: minute, count: output}
  - name: per-model
    scope: model
    tokens: {limit: 1000, per: hour, count: input}
  - name: per-team
    scope: expression
    bucket: '"team" in key.labels ? key.labels["team"] : ""'
    tokens: {limit: 50, per: day}
"#;

#[test]
fn each_limit_counts_its_units_in_its_bucket() {
    let p = policy(&[("ratelimits.yaml", LIMITS)]);
    let d = decide(
        &p,
        r#"{"request":{"model":"big","input_tokens":700,"max_tokens":300},
            "identity":{"key":{"id":"k1","labels":{"team":"search"}},"user":{"id":"alice"},
                        "tenant":{"id":"acme"}}}"#,
    );
    let req = charge(&d, "per-user", "requests");
    assert_eq!(req.measure, Measure::Requests);
    assert_eq!(req.amount, 1);
    assert_eq!(
        req.bucket, "user:acme/alice",
        "users are named within their tenant"
    );
    assert_eq!((req.limit, req.period_ms, req.burst), (10.0, 1_000, 3.0));
    let out = charge(&d, "per-user", "tokens");
    assert_eq!(out.measure, Measure::Tokens(TokenCount::Output));
    assert_eq!(out.amount, 300, "the worst-case output on every attempt");
    assert_eq!(out.burst, 600_000.0, "the burst defaults to the limit");
    let model = charge(&d, "per-model", "tokens");
    assert_eq!((model.bucket.as_str(), model.amount), ("model:big", 700));
    let team = charge(&d, "per-team", "tokens");
    assert_eq!(
        (team.bucket.as_str(), team.amount),
        ("expression:search", 1000)
    );
}

#[test]
fn output_is_reserved_for_the_hungriest_model_of_the_attempt_list() {
    let p = policy(&[("ratelimits.yaml", LIMITS)]);
    // No max_tokens: `big` may write 4000, `small` (its failover) 1000.
    let d = decide(
        &p,
        r#"{"request":{"model":"small","input_tokens":10},
            "identity":{"user":{"id":"bob"}}}"#,
    );
    assert_eq!(d.attempts.len(), 3, "{:?}", d.attempts);
    assert_eq!(charge(&d, "per-user", "tokens").amount, 4000);
}

#[test]
fn a_request_without_a_principal_or_bucket_of_the_scope_is_not_counted() {
    let p = policy(&[("ratelimits.yaml", LIMITS)]);
    let d = decide(&p, r#"{"request":{"model":"big","input_tokens":5}}"#);
    let rules: Vec<&str> = d.rate_charges.iter().map(|c| &*c.rule).collect();
    assert_eq!(rules, ["per-model"], "no user, and an empty team bucket");
}

#[test]
fn a_bucket_that_fails_to_evaluate_counts_in_one_shared_bucket() {
    let limits = r#"
apiVersion: llmgw.dev/v1
kind: RateLimits
limits:
  - name: by-team
    scope: expression
    bucket: 'key.labels["team"]'
    requests: {limit: 1, per: second}
"#;
    let p = policy(&[("ratelimits.yaml", limits)]);
    let d = decide(
        &p,
        r#"{"request":{"model":"big"},"identity":{"key":{"id":"k"}}}"#,
    );
    assert_eq!(
        charge(&d, "by-team", "requests").bucket,
        "expression:(error)"
    );
    assert_eq!(d.eval_errors.len(), 1, "the failure is reported");
}

#[test]
fn routing_reads_the_share_left_of_the_limits_that_apply() {
    let routing = r#"
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: spare-the-quota
    when: 'ratelimit.tokens < 0.2 && ratelimit.requests == 1.0'
    candidates: [small]
"#;
    let p = policy(&[("ratelimits.yaml", LIMITS), ("routing.yaml", routing)]);
    let ask = |left: f64| {
        decide(
            &p,
            &format!(
                r#"{{"request":{{"model":"big","input_tokens":5}},
                    "ratelimit_remaining":{{"per-model":{left}}}}}"#
            ),
        )
    };
    assert_eq!(&*ask(0.1).rule, "spare-the-quota");
    assert_eq!(&*ask(0.5).rule, "default");
}

#[test]
fn a_deployment_near_its_provider_quota_is_tried_after_the_others() {
    let p = policy(&[]);
    let attempts = |live: &str| -> Vec<String> {
        decide(
            &p,
            &format!(
                r#"{{"request":{{"model":"big","input_tokens":500,"max_tokens":500}},
                    "live":{{"big@p1":{live}}}}}"#
            ),
        )
        .attempts
        .iter()
        .map(|a| a.deployment.to_string())
        .collect()
    };
    let order = ["big@p1", "big@p2", "small@p2"];
    assert_eq!(attempts(r#"{"quota_tokens_left":1000}"#), order);
    assert_eq!(
        attempts(r#"{"quota_tokens_left":999}"#),
        ["big@p2", "small@p2", "big@p1"],
        "999 tokens left cannot take a request of 1000"
    );
    assert_eq!(
        attempts(r#"{"quota_requests_left":0.5}"#),
        ["big@p2", "small@p2", "big@p1"]
    );
}

#[test]
fn filters_read_a_candidates_quota_headroom() {
    let routing = r#"
apiVersion: llmgw.dev/v1
kind: Routing
rules:
  - name: roomy
    candidates: [big, small]
    filter: 'm.quota_headroom >= 0.5'
    failover: none
"#;
    let p = policy(&[("routing.yaml", routing)]);
    let first = |live: &str| {
        decide(
            &p,
            &format!(r#"{{"request":{{"model":"big"}},"live":{{"big@p1":{live}}}}}"#),
        )
        .attempts[0]
            .model
            .to_string()
    };
    // The tighter of RPM (60 of 100 left) and TPM (4000 of 10000 left).
    assert_eq!(
        first(r#"{"quota_requests_left":60,"quota_tokens_left":4000}"#),
        "small"
    );
    assert_eq!(
        first(r#"{"quota_requests_left":60,"quota_tokens_left":6000}"#),
        "big"
    );
    assert_eq!(first("{}"), "big", "nothing known: all headroom");
}

//! The canary split: per request by default, sticky by key when the spec asks.

use llmgw_engine::decision::Arm;
use llmgw_engine::input::DecisionInput;
use llmgw_engine::load::load_files;
use llmgw_engine::source::PolicyFile;
use llmgw_engine::CompiledPolicy;

fn policy(split: &str) -> CompiledPolicy {
    // A sticky split cannot be checked: it is valid only with no metric.
    let metrics = if split == "per_request" {
        "[{metric: error_rate}]"
    } else {
        "[]"
    };
    let file = |path: &str, text: &str| PolicyFile {
        path: path.into(),
        bytes: text.as_bytes().to_vec(),
    };
    let files = [
        file(
            "providers.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n",
        ),
        file(
            "models.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: big\n    class: c\n    quality: 0.9\n    context_window: 1000\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n    deployments:\n      - {provider: sim, upstream_model: big-1}\n      - {name: big-2, provider: sim, upstream_model: big-2, canary_only: true}\n",
        ),
        file(
            "canaries.yaml",
            &format!("apiVersion: llmgw.dev/v1\nkind: Canaries\ncanaries:\n  - name: big-2\n    model: big\n    baseline: big@sim\n    candidate: big-2\n    rollout:\n      split: {split}\n      metrics: {metrics}\n      steps:\n        - {{weight_percent: 30, min_requests: 10, min_duration_secs: 1}}\n"),
        ),
    ];
    let outcome = load_files(&files, Some("r"));
    outcome
        .policy
        .unwrap_or_else(|| panic!("{:#?}", outcome.diagnostics))
}

fn arm(policy: &CompiledPolicy, key: &str, canary_random: f64) -> Arm {
    let input: DecisionInput = serde_json::from_str(&format!(
        r#"{{"request":{{"model":"big","input_tokens":10}},"identity":{{"key":{{"id":"{key}"}}}},
            "canary_weights":{{"big-2":30}},"canary_random":{canary_random}}}"#
    ))
    .unwrap();
    let d = policy.decide(&input.context(), &input, &input).unwrap();
    let c = d.canary.expect("the canary applies");
    assert_eq!(c.weight, 0.3);
    assert_eq!(
        &*d.attempts[0].deployment == "big-2",
        c.arm == Arm::Candidate,
        "the candidate goes first exactly on the candidate arm"
    );
    c.arm
}

#[test]
fn per_request_split_follows_the_request_draw() {
    let p = policy("per_request");
    assert_eq!(arm(&p, "k1", 0.29), Arm::Candidate);
    assert_eq!(arm(&p, "k1", 0.31), Arm::Baseline);
}

#[test]
fn sticky_split_keeps_a_key_on_one_arm_and_shares_keys_by_weight() {
    let p = policy("sticky_key");
    let mut candidates = 0;
    for k in 0..1_000 {
        let key = format!("key-{k}");
        let first = arm(&p, &key, 0.01);
        assert_eq!(arm(&p, &key, 0.99), first, "{key} changed arm");
        candidates += usize::from(first == Arm::Candidate);
    }
    // 30% of 1,000 keys: within five standard deviations (about 72).
    assert!(
        (228..=372).contains(&candidates),
        "{candidates} keys on the candidate"
    );
}

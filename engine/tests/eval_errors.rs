//! A condition that fails at run time (a missing metadata key) does not fail the request: the
//! rule does not match, and the decision reports where the condition is written.

use llmgw_engine::input::DecisionInput;
use llmgw_engine::load::load_files;
use llmgw_engine::source::PolicyFile;

fn file(path: &str, text: &str) -> PolicyFile {
    PolicyFile {
        path: path.into(),
        bytes: text.as_bytes().to_vec(),
    }
}

#[test]
fn a_rule_whose_condition_fails_is_skipped_and_reported() {
    let files = [
        file(
            "providers.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n",
        ),
        file(
            "models.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: big\n    class: c\n    quality: 0.9\n    context_window: 1000\n    price: {input_per_mtok: 1, output_per_mtok: 2}\n    deployments: [{provider: sim, upstream_model: big}]\n  - name: small\n    class: c\n    quality: 0.5\n    context_window: 1000\n    price: {input_per_mtok: 0.1, output_per_mtok: 0.2}\n    deployments: [{provider: sim, upstream_model: small}]\n",
        ),
        file(
            "routing.yaml",
            "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: batch\n    when: 'request.metadata[\"workload\"] == \"batch\"'\n    candidates: [small]\n",
        ),
    ];
    let outcome = load_files(&files, Some("r1"));
    let policy = outcome.policy.expect("compiles");
    let input: DecisionInput =
        serde_json::from_str(r#"{"request":{"model":"big","input_tokens":10}}"#).unwrap();
    let d = policy.decide(&input.context(), &input, &input).unwrap();
    assert_eq!(d.rule.as_ref(), "default");
    assert_eq!(d.attempts[0].model.as_ref(), "big");
    assert_eq!(d.eval_errors.len(), 1);
    let e = &d.eval_errors[0];
    assert_eq!(e.location.to_string(), "routing.yaml:5:11");
    assert!(e.message.contains("workload"), "{}", e.message);

    let input: DecisionInput = serde_json::from_str(
        r#"{"request":{"model":"big","input_tokens":10,"metadata":{"workload":"batch"}}}"#,
    )
    .unwrap();
    let d = policy.decide(&input.context(), &input, &input).unwrap();
    assert_eq!(
        (d.rule.as_ref(), d.attempts[0].model.as_ref()),
        ("batch", "small")
    );
    assert!(d.eval_errors.is_empty());
}

//! Which budgets' spend a decision can read: the gateway reads only those
//! (`CompiledPolicy::budget_may_apply`), so a budget whose condition is false for the request
//! costs no store read, and skipping it never changes the decision.

use llmgw_engine::input::{DecisionInput, StateView};
use llmgw_engine::model::Scope;
use llmgw_engine::{load_files, CompiledPolicy, PolicyFile};

mod common;

fn policy(files: Vec<PolicyFile>) -> CompiledPolicy {
    load_files(&files, None)
        .policy
        .expect("the policies compile")
}

fn input(json: &str) -> DecisionInput {
    serde_json::from_str(json).expect("valid input")
}

/// The names of the budgets that may apply to `i`.
fn may_apply(policy: &CompiledPolicy, i: &DecisionInput) -> Vec<String> {
    let ctx = i.context();
    (0..policy.budgets().len())
        .filter(|&b| policy.budget_may_apply(b, &ctx.request, &ctx.identity, ctx.now_ms))
        .map(|b| policy.budgets()[b].name.to_string())
        .collect()
}

/// `inner`'s spend for the budgets in `read`; for any other, a spend far past every limit, so
/// that a decision which consulted it would change.
struct OnlyRead<'a> {
    inner: &'a DecisionInput,
    read: Vec<String>,
}

impl StateView for OnlyRead<'_> {
    fn spent_usd(&self, budget: &str, scope: Scope, id: &str) -> f64 {
        if self.read.iter().any(|b| b == budget) {
            self.inner.spent_usd(budget, scope, id)
        } else {
            1e9
        }
    }

    fn canary_weight(&self, canary: &str) -> Option<f64> {
        self.inner.canary_weight(canary)
    }
}

const ORDINARY: &str = r#"{"request":{"model":"gpt-4o","input_tokens":100,"max_tokens":50},
    "identity":{"key":{"id":"k1"},"project":{"id":"p1"},"tenant":{"id":"acme"}},
    "spent_usd":{"key-monthly":3.0,"tenant-monthly":10.0}}"#;
const TRIAL_DEVELOPER: &str = r#"{"request":{"model":"gpt-4o","input_tokens":100,"max_tokens":50},
    "identity":{"key":{"id":"k2","labels":{"tier":"developer"}},"user":{"id":"u1"},
                "tenant":{"id":"initech","labels":{"plan":"trial"}}},
    "spent_usd":{"developer-key-daily":9.99,"trial-tenant-hourly":1.99}}"#;

#[test]
fn a_budget_whose_condition_is_false_for_the_request_need_not_be_read() {
    let policy = policy(common::bundled_files());
    assert_eq!(
        may_apply(&policy, &input(ORDINARY)),
        ["key-monthly", "project-monthly", "tenant-monthly"],
        "no user, no trial tenant, no developer key: their budgets are not read"
    );
    assert_eq!(
        may_apply(&policy, &input(TRIAL_DEVELOPER)),
        [
            "developer-key-daily",
            "key-monthly",
            "user-daily",
            "tenant-monthly",
            "trial-tenant-hourly"
        ],
        "no project: its budget is not read"
    );
}

#[test]
fn deciding_on_the_read_budgets_alone_decides_the_same() {
    let policy = policy(common::bundled_files());
    for json in [ORDINARY, TRIAL_DEVELOPER] {
        let i = input(json);
        let ctx = i.context();
        let only = OnlyRead {
            inner: &i,
            read: may_apply(&policy, &i),
        };
        let all = policy.decide(&ctx, &i, &i);
        let read = policy.decide(&ctx, &i, &only);
        assert_eq!(format!("{all:?}"), format!("{read:?}"), "{json}");
    }
}

#[test]
fn a_condition_on_spend_is_always_read() {
    let mut files = common::bundled_files();
    let budgets = files
        .iter_mut()
        .find(|f| f.path.ends_with("budgets.yaml"))
        .expect("budgets.yaml");
    budgets.bytes = b"apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: late-month\n    scope: key\n    when: 'budget.key.fraction > 0.5'\n    period: monthly\n    limit_usd: 10\n    on_exceed: block\n".to_vec();
    let policy = policy(files);
    assert_eq!(may_apply(&policy, &input(ORDINARY)), ["late-month"]);
}

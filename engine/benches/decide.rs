//! Benchmarks of the decision engine on the bundled policy, and of compiling a generated
//! repository of 1,000 rules. After criterion's figures, prints decide latency percentiles
//! measured call by call.
// A benchmark times itself: the clock ban of the engine (engine/clippy.toml) is for its code.
#![allow(clippy::disallowed_methods)]

use criterion::Criterion;
use llmgw_engine::input::{DecisionInput, Identity, Principal, RequestContext, RequestFacts};
use llmgw_engine::load::load_files;
use llmgw_engine::source::{is_policy_file, policy_files, PolicyFile};
use llmgw_engine::CompiledPolicy;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn bundled() -> CompiledPolicy {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let files = llmgw_git::files_in_dir(&dir, is_policy_file)
        .map(policy_files)
        .expect("bundled policies are readable");
    load_files(&files, Some("bench"))
        .policy
        .expect("bundled policies compile")
}

fn principal(id: &str, labels: &[(&str, &str)]) -> Arc<Principal> {
    Arc::new(Principal {
        id: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

/// Requests of the bundled policy's scenarios.
fn requests() -> Vec<(&'static str, RequestContext)> {
    let identity = Identity {
        key: principal("key-1", &[("tier", "dev")]),
        user: principal("alice", &[]),
        project: principal("search", &[]),
        tenant: principal("acme", &[("plan", "pro")]),
    };
    let ctx = |model: &str, workload: Option<&str>, tools: bool, vision: bool, input: u64| {
        let mut metadata = BTreeMap::new();
        if let Some(w) = workload {
            metadata.insert("workload".to_owned(), w.to_owned());
        }
        RequestContext {
            request: RequestFacts {
                model: model.into(),
                input_tokens: input,
                max_tokens: Some(512),
                tools,
                vision,
                metadata,
                ..RequestFacts::default()
            },
            identity: identity.clone(),
            now_ms: 1_790_000_000_000,
            random: 0.37,
            canary_random: 0.61,
        }
    };
    vec![
        (
            "realtime",
            ctx("claude-sonnet", Some("realtime"), false, false, 800),
        ),
        ("batch", ctx("gpt-4o", Some("batch"), false, false, 6_000)),
        ("default", ctx("gpt-4o", None, false, false, 1_200)),
        ("tools", ctx("gpt-4o-mini", None, true, false, 900)),
        ("vision", ctx("gpt-4o", None, false, true, 2_000)),
    ]
}

/// A repository with `n` routing rules over a few models.
fn generated(n: usize) -> Vec<PolicyFile> {
    let mut routing = String::from("apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n");
    for i in 0..n {
        routing.push_str(&format!(
            "  - name: rule-{i}\n    when: 'request.model == \"m{}\" && \"team\" in key.labels && key.labels[\"team\"] == \"t{i}\" && request.input_tokens > {}'\n    candidates: [m{}, m{}]\n    strategy: cost\n    filter: 'm.quality >= 0.{}'\n",
            i % 10,
            i * 7,
            i % 10,
            (i + 1) % 10,
            i % 9 + 1
        ));
    }
    let mut models = String::from("apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n");
    for m in 0..10 {
        models.push_str(&format!(
            "  - name: m{m}\n    class: c{}\n    quality: 0.{}\n    context_window: 128000\n    price: {{input_per_mtok: {}.5, output_per_mtok: {}.0}}\n    deployments:\n      - provider: sim\n        upstream_model: m{m}\n",
            m % 3,
            m + 1,
            m,
            m + 2
        ));
    }
    let providers = "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n    simulated: {ttft_ms: 10}\n";
    [
        ("providers.yaml", providers.to_owned()),
        ("models.yaml", models),
        ("routing.yaml", routing),
    ]
    .into_iter()
    .map(|(p, t)| PolicyFile {
        path: p.into(),
        bytes: t.into_bytes(),
    })
    .collect()
}

fn main() {
    let policy = bundled();
    let none = DecisionInput::default();
    let mut c = Criterion::default().configure_from_args();
    for (name, ctx) in requests() {
        policy.decide(&ctx, &none, &none).expect("scenario decides");
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| policy.decide(black_box(&ctx), &none, &none))
        });
    }
    let files = generated(1_000);
    c.bench_function("compile/1000-rules", |b| {
        b.iter(|| {
            let out = load_files(black_box(&files), Some("bench"));
            assert!(out.policy.is_some(), "{:?}", out.diagnostics.first());
        })
    });
    c.final_summary();

    // Percentiles over single calls, all scenarios interleaved.
    let reqs = requests();
    let mut samples: Vec<u64> = Vec::with_capacity(200_000);
    for i in 0..200_000 {
        let ctx = &reqs[i % reqs.len()].1;
        let t = Instant::now();
        let d = policy.decide(black_box(ctx), &none, &none);
        let ns = t.elapsed().as_nanos() as u64;
        black_box(d).ok();
        samples.push(ns);
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "decide over {} calls: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs",
        samples.len(),
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        pct(0.999) as f64 / 1000.0
    );
    let t = Instant::now();
    let out = load_files(&files, Some("bench"));
    println!(
        "1,000 rules: load, lint and compile in {:.1} ms ({} diagnostics)",
        t.elapsed().as_secs_f64() * 1000.0,
        out.diagnostics.len()
    );
}

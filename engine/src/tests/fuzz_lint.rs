//! Property tests: no input makes loading (what `llmgw-policy lint` runs) or the CEL compiler
//! panic.
//!
//! The inputs range from raw bytes to documents that look like real policies: random YAML-ish
//! text, base repository files with random edits, generated documents of every kind with odd
//! values, and generated or arbitrary CEL in `when` and `filter`. When a generated repository
//! compiles, its policy tests are run too, so `decide` sees the same policies; compiled CEL is
//! evaluated against a request.
//!
//! Everything runs on the test threads' ordinary 2 MiB stacks, like the gateway's workers: deep
//! or long CEL must be refused (`cel/too-complex`), never overflow the stack. One property
//! generates such shapes on purpose. Evaluation is only exercised with shallow expressions, as
//! evaluating deep ones still needs a large stack in debug builds (`lint_regressions.rs`).

use crate::celenv::Site;
use crate::expr::CompiledExpr;
use crate::input::{DeploymentStats, Identity, Principal, RequestFacts};
use crate::load::{load_files, LoadOutcome};
use crate::policy::Location;
use crate::source::{is_policy_file, policy_files, PolicyFile};
use crate::views::{BudgetVars, Candidate, Facts, RateVars, Spend};
use crate::{testing, CompiledPolicy};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

/// Cases per property: enough to cover the generators, few enough to keep the suite fast.
/// `PROPTEST_CASES` sets another number for a longer run.
const CASES: u32 = 256;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The valid base repository of the lint corpus.
static BASE: LazyLock<Vec<PolicyFile>> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/base");
    let files = llmgw_git::files_in_dir(&root, is_policy_file)
        .map(policy_files)
        .expect("read the corpus base");
    assert!(!files.is_empty());
    files
});

static BASE_POLICY: LazyLock<CompiledPolicy> = LazyLock::new(|| {
    load_files(&BASE, None)
        .policy
        .expect("the corpus base compiles")
});

/// The base with `files` laid over it (same path replaces).
fn over_base(files: Vec<(String, Vec<u8>)>) -> Vec<PolicyFile> {
    let mut all: BTreeMap<String, Vec<u8>> = BASE
        .iter()
        .map(|f| (f.path.clone(), f.bytes.clone()))
        .collect();
    all.extend(files);
    policy_files(all)
}

/// Loads the files; when the policy compiles, runs its tests through `decide`.
fn load_and_use(files: Vec<PolicyFile>) -> LoadOutcome {
    let outcome = load_files(&files, None);
    assert_eq!(outcome.policy.is_some(), !outcome.has_errors());
    for d in &outcome.diagnostics {
        if let Some(loc) = &d.location {
            assert!(loc.line >= 1 && loc.column >= 1, "{d}");
            assert!(files.iter().any(|f| *f.path == *loc.file), "{d}");
        }
    }
    if let Some(policy) = &outcome.policy {
        let _ = testing::run(policy, &outcome.tests);
    }
    outcome
}

// --- YAML-ish text ------------------------------------------------------------------------------

/// Fragments that YAML and policies are made of.
const YAML_TOKENS: &[&str] = &[
    "\n",
    "\n  ",
    "\n    ",
    "\n  - ",
    "- ",
    ": ",
    ":",
    "  ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "!!str ",
    "!!int ",
    "!tag ",
    "? ",
    "|\n  ",
    ">\n  ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "1.5",
    "1e3",
    ".nan",
    "-.inf",
    "0x1F",
    "0o17",
    "99999999999999999999",
    "\\",
    "\u{feff}",
    "\r\n",
    "é",
    "日本",
    "apiVersion: llmgw.dev/v1\n",
    "kind: Routing\n",
    "kind: Models\n",
    "kind: Providers\n",
    "kind: Budgets\n",
    "kind: Downgrades\n",
    "kind: Canaries\n",
    "kind: Cache\n",
    "kind: PolicyTests\n",
    "rules:",
    "models:",
    "providers:",
    "budgets:",
    "canaries:",
    "tests:",
    "name: ",
    "when: ",
    "filter: ",
    "candidates: ",
    "weights: ",
    "strategy: weighted",
    "from: [big]",
    "to: small",
    "model: big",
    "baseline: big@sim-us",
    "candidate: big-2@sim-us",
    "steps: ",
    "weight_percent: ",
    "price: ",
    "deployments: ",
    "provider: sim-us",
    "upstream_model: x",
    "api_key: ",
    "sk-proj-4fJ9qL2mX8vR1tY6wE3uI0oP5aS7dG2h",
    "'request.model == \"big\"'",
    "'m.quality >= 0.5'",
    "request.",
    "(",
    ")",
];

fn yamlish_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(YAML_TOKENS), 0..80).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        alone in any::<bool>(),
    ) {
        let file = ("fuzz.yaml".to_owned(), bytes);
        let files = if alone {
            policy_files([file])
        } else {
            over_base(vec![file])
        };
        load_and_use(files);
    }

    #[test]
    fn arbitrary_text_never_panics(
        text in prop_oneof![
            "\\PC{0,400}",
            "[ -~\n\t]{0,400}",
            yamlish_text(),
        ],
        path in prop::sample::select(&["routing.yaml", "models.yaml", "extra.yaml", "a/b.yml"][..]),
    ) {
        load_and_use(over_base(vec![(path.to_owned(), text.into_bytes())]));
    }

    #[test]
    fn random_edits_of_valid_files_never_panic(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let file = which.get(&BASE[..]).clone();
        let mut text = file.bytes.clone();
        for e in &edits {
            e.apply(&mut text);
        }
        load_and_use(over_base(vec![(file.path, text)]));
    }
}

/// One edit of a file's bytes, at a position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Edit {
    Insert(f64, String),
    Delete(f64, usize),
    DuplicateLine(f64),
    SwapLines(f64, f64),
    Replace(f64, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), prop::sample::select(YAML_TOKENS))
            .prop_map(|(a, t)| Edit::Insert(a, t.into())),
        (at.clone(), "[ -~]{1,12}").prop_map(|(a, t)| Edit::Insert(a, t)),
        (at.clone(), 1..40usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        at.clone().prop_map(Edit::DuplicateLine),
        (at.clone(), at.clone()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (at, any::<u8>()).prop_map(|(a, b)| Edit::Replace(a, b)),
    ]
}

impl Edit {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
        match self {
            Edit::Insert(a, s) => {
                let p = pos(*a, bytes.len());
                bytes.splice(p..p, s.bytes());
            }
            Edit::Delete(a, n) => {
                let p = pos(*a, bytes.len());
                let end = (p + n).min(bytes.len());
                bytes.drain(p..end);
            }
            Edit::Replace(a, b) => {
                if !bytes.is_empty() {
                    let p = pos(*a, bytes.len() - 1);
                    bytes[p] = *b;
                }
            }
            Edit::DuplicateLine(a) | Edit::SwapLines(a, _) => {
                let mut lines: Vec<Vec<u8>> = bytes
                    .split_inclusive(|&b| b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.is_empty() {
                    return;
                }
                let i = pos(*a, lines.len() - 1);
                match self {
                    Edit::SwapLines(_, b) => {
                        let j = pos(*b, lines.len() - 1);
                        lines.swap(i, j);
                    }
                    _ => {
                        let line = lines[i].clone();
                        lines.insert(i, line);
                    }
                }
                *bytes = lines.concat();
            }
        }
    }
}

// --- generated policy documents -----------------------------------------------------------------

/// A YAML value to render.
#[derive(Debug, Clone)]
enum Y {
    /// A scalar, rendered as given.
    Scalar(String),
    /// A block sequence.
    Seq(Vec<Y>),
    /// A block mapping.
    Map(Vec<(String, Y)>),
}

impl Y {
    fn render(&self, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match self {
            Y::Scalar(s) => {
                out.push(' ');
                out.push_str(s);
                out.push('\n');
            }
            Y::Seq(items) if items.is_empty() => out.push_str(" []\n"),
            Y::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
            Y::Seq(items) => {
                out.push('\n');
                for item in items {
                    out.push_str(&pad);
                    out.push_str("  -");
                    match item {
                        Y::Map(entries) if !entries.is_empty() => {
                            // `- key: value` with the rest of the mapping aligned under it.
                            let mut first = true;
                            for (k, v) in entries {
                                if !first {
                                    out.push_str(&pad);
                                    out.push_str("   ");
                                }
                                first = false;
                                out.push(' ');
                                out.push_str(k);
                                out.push(':');
                                v.render(indent + 4, out);
                            }
                        }
                        other => other.render(indent + 2, out),
                    }
                }
            }
            Y::Map(entries) => {
                out.push('\n');
                for (k, v) in entries {
                    out.push_str(&pad);
                    out.push_str("  ");
                    out.push_str(k);
                    out.push(':');
                    v.render(indent + 2, out);
                }
            }
        }
    }

    /// A top-level document.
    fn document(entries: Vec<(String, Y)>) -> String {
        let mut out = String::new();
        for (k, v) in entries {
            out.push_str(&k);
            out.push(':');
            v.render(0, &mut out);
        }
        out
    }
}

/// A string scalar in one of YAML's styles.
fn quoted(s: String) -> impl Strategy<Value = Y> {
    let single = format!("'{}'", s.replace('\'', "''"));
    let double = format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    prop_oneof![
        4 => Just(Y::Scalar(single)),
        2 => Just(Y::Scalar(double)),
        1 => Just(Y::Scalar(s)),
    ]
}

fn string_from(pool: &'static [&'static str]) -> BoxedStrategy<Y> {
    prop::sample::select(pool)
        .prop_flat_map(|s| quoted(s.to_owned()))
        .boxed()
}

const NAMES: &[&str] = &[
    "big",
    "small",
    "cheap",
    "embed",
    "smal",
    "tiny",
    "Big",
    "acme/big",
    "a",
    "x_y",
    "",
    "big-2",
    "9lives",
    "sim-us",
    "key-daily",
];
const DEPLOYMENTS: &[&str] = &[
    "big@sim-us",
    "big@sim-eu",
    "big-2@sim-us",
    "small@sim-us",
    "cheap@sim-eu",
    "embed@sim-us",
    "big@nowhere",
    "x@y@z",
    "",
];
const PROVIDER_NAMES: &[&str] = &["sim-us", "sim-eu", "sim-europe", "openai", "Sim", ""];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "0.5",
    "0.95",
    "1.5",
    "3",
    "5",
    "50",
    "100",
    "101",
    "150",
    "3600",
    "-0.1",
    "1e3",
    "8000.0",
    "99999999999999999999",
    "-0",
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "0o7",
    "1_000",
    "'5'",
    "~",
    "true",
    "[]",
    "{}",
];
const SECRET_LIKE: &[&str] = &[
    "env:OPENAI_API_KEY",
    "file:/run/secrets/key",
    "env:",
    "sk-proj-4fJ9qL2mX8vR1tY6wE3uI0oP5aS7dG2h",
    "AIzaSyD4x9Qm2Lr7Tn8Wc3Vb6Yh1Jk5Pz0Gs2Fe",
    "7Hq2Zx9Lm4Pw8Rt3Nv6Bk1Yc5Jd0Fs2Gh8Ka",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "https://api.example.com/v1?key=7Hq2Zx9Lm4Pw8Rt3Nv6Bk1Yc5Jd0Fs2Gh8Ka",
];

fn number() -> BoxedStrategy<Y> {
    prop_oneof![
        3 => prop::sample::select(NUMBERS).prop_map(|s| Y::Scalar(s.to_owned())),
        1 => any::<i64>().prop_map(|n| Y::Scalar(n.to_string())),
        1 => any::<f64>().prop_map(|n| Y::Scalar(format!("{n:?}"))),
    ]
    .boxed()
}

fn boolean() -> BoxedStrategy<Y> {
    prop::sample::select(&["true", "false", "yes", "1", "'true'"][..])
        .prop_map(|s| Y::Scalar(s.to_owned()))
        .boxed()
}

fn list_of(item: BoxedStrategy<Y>, max: usize) -> BoxedStrategy<Y> {
    prop::collection::vec(item, 0..=max)
        .prop_map(Y::Seq)
        .boxed()
}

fn flow_names(pool: &'static [&'static str]) -> BoxedStrategy<Y> {
    prop::collection::vec(prop::sample::select(pool), 0..4)
        .prop_map(|names| Y::Scalar(format!("[{}]", names.join(", "))))
        .boxed()
}

fn cel_value() -> BoxedStrategy<Y> {
    prop_oneof![
        3 => typed_cel("bool", 2),
        3 => cel(),
        1 => "[ -~]{0,40}",
    ]
    .prop_flat_map(quoted)
    .boxed()
}

/// An object: each field present with high probability, sometimes an unknown field.
fn object(fields: Vec<(&'static str, BoxedStrategy<Y>)>) -> BoxedStrategy<Y> {
    let fields: Vec<BoxedStrategy<Option<(String, Y)>>> = fields
        .into_iter()
        .map(|(k, v)| prop::option::weighted(0.85, v.prop_map(move |y| (k.to_owned(), y))).boxed())
        .chain([prop::option::weighted(
            0.05,
            (
                prop::sample::select(&["stratgy", "extra", "name", "x-note"][..]),
                number(),
            )
                .prop_map(|(k, y)| (k.to_owned(), y)),
        )
        .boxed()])
        .collect();
    fields
        .prop_map(|fields| Y::Map(fields.into_iter().flatten().collect()))
        .boxed()
}

fn provider() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(PROVIDER_NAMES)),
        (
            "type",
            string_from(&[
                "simulated",
                "openai",
                "openai_compatible",
                "anthropic",
                "gemini",
                "grpc",
            ]),
        ),
        (
            "region",
            string_from(&["us-east", "eu-west", "US East", ""]),
        ),
        (
            "base_url",
            string_from(&[
                "https://api.example.com/v1",
                "ftp://x",
                "",
                "http://localhost:8080",
            ]),
        ),
        ("api_key", string_from(SECRET_LIKE)),
        (
            "simulated",
            object(vec![("ttft_ms", number()), ("error_rate", number())]),
        ),
    ])
}

fn model() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(NAMES)),
        (
            "class",
            string_from(&["frontier", "fast", "embedding", "Fast"]),
        ),
        ("quality", number()),
        ("context_window", number()),
        (
            "capabilities",
            flow_names(&[
                "chat",
                "tools",
                "vision",
                "embeddings",
                "prefill",
                "telepathy",
            ]),
        ),
        (
            "price",
            object(vec![
                ("input_per_mtok", number()),
                ("output_per_mtok", number()),
            ]),
        ),
        (
            "deployments",
            list_of(
                object(vec![
                    ("name", string_from(DEPLOYMENTS)),
                    ("provider", string_from(PROVIDER_NAMES)),
                    (
                        "upstream_model",
                        string_from(&["m-1", "", "sk-proj-4fJ9qL2mX8vR1tY6wE3uI0oP5aS7dG2h"]),
                    ),
                    ("canary_only", boolean()),
                ]),
                3,
            ),
        ),
    ])
}

fn routing_rule() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(NAMES)),
        ("when", cel_value()),
        ("candidates", flow_names(NAMES)),
        ("filter", cel_value()),
        (
            "strategy",
            string_from(&[
                "priority",
                "latency",
                "cost",
                "capability",
                "weighted",
                "random",
            ]),
        ),
        (
            "latency_metric",
            string_from(&["p95", "p50", "ttft", "p42"]),
        ),
        ("latency_slo_ms", number()),
        (
            "weights",
            prop::collection::vec((prop::sample::select(NAMES), number()), 0..4)
                .prop_map(|w| Y::Map(w.into_iter().map(|(k, v)| (format!("'{k}'"), v)).collect()))
                .boxed(),
        ),
        ("failover", string_from(&["class", "none", "all"])),
    ])
}

fn budget() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(NAMES)),
        (
            "scope",
            string_from(&["key", "user", "project", "tenant", "team"]),
        ),
        ("when", cel_value()),
        (
            "period",
            string_from(&["daily", "weekly", "monthly", "rolling", "hourly"]),
        ),
        ("window_secs", number()),
        ("limit_usd", number()),
        ("alert_at", list_of(number(), 3)),
        ("on_exceed", string_from(&["block", "downgrade", "warn"])),
        ("strict", boolean()),
        (
            "on_store_unavailable",
            string_from(&["deny", "allow", "open"]),
        ),
    ])
}

fn downgrade_rule() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(NAMES)),
        ("when", cel_value()),
        ("from", flow_names(NAMES)),
        ("to", string_from(NAMES)),
    ])
}

fn canary() -> BoxedStrategy<Y> {
    let step = object(vec![
        ("weight_percent", number()),
        ("min_requests", number()),
        ("min_duration_secs", number()),
    ]);
    let metric = object(vec![
        (
            "metric",
            string_from(&["error_rate", "latency_p95", "ttft_p95", "cost"]),
        ),
        ("margin", number()),
    ]);
    object(vec![
        ("name", string_from(NAMES)),
        ("model", string_from(NAMES)),
        ("baseline", string_from(DEPLOYMENTS)),
        ("candidate", string_from(DEPLOYMENTS)),
        (
            "rollout",
            object(vec![
                ("steps", list_of(step, 4)),
                ("metrics", list_of(metric, 3)),
                ("alpha", number()),
                (
                    "split",
                    string_from(&["per_request", "sticky_key", "sticky_user", "coin"]),
                ),
            ]),
        ),
    ])
}

fn cache_rule() -> BoxedStrategy<Y> {
    object(vec![
        ("model", string_from(NAMES)),
        ("ttl_secs", number()),
        ("semantic_threshold", number()),
    ])
}

fn policy_test() -> BoxedStrategy<Y> {
    object(vec![
        ("name", string_from(&["a case", "another case", ""])),
        (
            "request",
            object(vec![
                ("model", string_from(NAMES)),
                ("input_tokens", number()),
                ("max_tokens", number()),
                ("tools", boolean()),
                ("endpoint", string_from(&["chat", "embeddings", "images"])),
            ]),
        ),
        (
            "expect",
            object(vec![
                ("model", string_from(NAMES)),
                (
                    "action",
                    string_from(&["route", "block", "downgrade", "explode"]),
                ),
            ]),
        ),
    ])
}

/// A document of some kind, sometimes with the wrong header, as (file name, text).
fn document() -> impl Strategy<Value = (String, String)> {
    let kinds: Vec<(&'static str, &'static str, BoxedStrategy<Y>)> = vec![
        ("Providers", "providers", provider()),
        ("Models", "models", model()),
        ("Routing", "rules", routing_rule()),
        ("Budgets", "budgets", budget()),
        ("Downgrades", "rules", downgrade_rule()),
        ("Canaries", "canaries", canary()),
        ("Cache", "rules", cache_rule()),
        ("PolicyTests", "tests", policy_test()),
    ];
    let strategies: Vec<BoxedStrategy<(String, String)>> = kinds
        .into_iter()
        .map(|(kind, list, item)| {
            (
                prop::collection::vec(item, 0..4),
                prop::sample::select(&["llmgw.dev/v1", "llmgw.dev/v2", ""][..]),
                prop::bool::weighted(0.95),
                prop::sample::select(
                    &[
                        "routing.yaml",
                        "models.yaml",
                        "providers.yaml",
                        "more.yaml",
                        "t/x.yaml",
                    ][..],
                ),
            )
                .prop_map(move |(items, version, right_kind, path)| {
                    let version = if right_kind { "llmgw.dev/v1" } else { version };
                    let mut entries = vec![
                        ("apiVersion".to_owned(), Y::Scalar(version.to_owned())),
                        ("kind".to_owned(), Y::Scalar(kind.to_owned())),
                        (list.to_owned(), Y::Seq(items)),
                    ];
                    if kind == "Cache" {
                        entries.push(("default_ttl_secs".to_owned(), Y::Scalar("60".into())));
                    }
                    (path.to_owned(), Y::document(entries))
                })
                .boxed()
        })
        .collect();
    prop::strategy::Union::new(strategies)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_policy_documents_never_panic(
        docs in prop::collection::vec(document(), 1..4),
    ) {
        let files = docs.into_iter().map(|(p, t)| (p, t.into_bytes())).collect();
        load_and_use(over_base(files));
    }

    #[test]
    fn arbitrary_cel_in_rules_never_panics(
        when in cel_value(),
        filter in cel_value(),
        rule in 0..4usize,
    ) {
        let routing = BASE
            .iter()
            .find(|f| f.path == "routing.yaml")
            .expect("the base has routing.yaml");
        let text = String::from_utf8(routing.bytes.clone()).expect("UTF-8");
        let render = |y: &Y| match y {
            Y::Scalar(s) => s.clone(),
            _ => unreachable!("cel_value is a scalar"),
        };
        // Replace or add `when` and `filter` of the rule-th rule.
        let mut out = String::new();
        let mut seen = 0;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("- name:") {
                seen += 1;
                out.push_str(line);
                out.push('\n');
                if seen == rule + 1 {
                    out.push_str(&format!("    when: {}\n", render(&when)));
                    out.push_str(&format!("    filter: {}\n", render(&filter)));
                }
                continue;
            }
            if seen == rule + 1 && (trimmed.starts_with("when:") || trimmed.starts_with("filter:")) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        load_and_use(over_base(vec![("routing.yaml".to_owned(), out.into_bytes())]));
    }
}

// --- CEL ----------------------------------------------------------------------------------------

/// Every variable path of the environment, some misspellings, and comprehension variables.
const IDENTS: &[&str] = &[
    "request.model",
    "request.requested_model",
    "request.endpoint",
    "request.stream",
    "request.input_tokens",
    "request.max_tokens",
    "request.tools",
    "request.vision",
    "request.metadata",
    "request.metadata[\"workload\"]",
    "key.id",
    "key.labels",
    "user.id",
    "project.labels",
    "tenant.id",
    "tenant.labels[\"plan\"]",
    "budget.key.spent",
    "budget.user.limit",
    "budget.tenant.fraction",
    "budget.max_fraction",
    "budget.exceeded",
    "now",
    "m",
    "m.name",
    "m.class",
    "m.quality",
    "m.context_window",
    "m.capabilities",
    "m.input_price",
    "m.estimated_cost",
    "m.latency_p95_ms",
    "m.circuit",
    "m.healthy",
    "request",
    "budget",
    "budget.key",
    "reqest.model",
    "request.modle",
    "m.qualty",
    "x",
    "y",
    "__result__",
    "google.protobuf.Value",
];

const LITERALS: &[&str] = &[
    "0",
    "1",
    "-1",
    "1u",
    "0u",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615u",
    "0.0",
    "1.5",
    "-0.5",
    "1e308",
    "1e-308",
    "\"\"",
    "\"big\"",
    "\"chat\"",
    "'x'",
    "\"\\u00e9\"",
    "r\"\\d+\"",
    "b\"bytes\"",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[1, 2]",
    "{\"a\": 1}",
    "duration(\"1h\")",
    "timestamp(\"2026-01-01T00:00:00Z\")",
    "0x7fffffffffffffff",
    "\"日本語\"",
];

const BINARY: &[&str] = &[
    "==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "/", "%", "in",
];

const FUNCTIONS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "type",
    "dyn",
    "timestamp",
    "duration",
    "has",
    "lowerAscii",
    "max",
    "matches",
    "contains",
    "startsWith",
];

const METHODS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "getHours",
    "getDayOfWeek",
    "getFullYear",
    "lowerAscii",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
];

const PATTERNS: &[&str] = &[
    "\"^big\"",
    "\"(\"",
    "\"[a-\"",
    "\"\\\\d+\"",
    "\"a{99999999}\"",
    "\"(?P<x>a)\"",
    "\"\"",
    "\"(a*)*b\"",
    "request.model",
];

/// A CEL expression a few levels deep, mostly well-formed.
fn cel() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        3 => prop::sample::select(IDENTS).prop_map(str::to_owned),
        3 => prop::sample::select(LITERALS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|n| format!("{n:?}")),
        1 => "[a-z]{1,6}",
    ];
    leaf.prop_recursive(4, 40, 3, |inner| {
        prop_oneof![
            4 => (inner.clone(), prop::sample::select(BINARY), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            2 => (inner.clone(), prop::sample::select(BINARY), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => inner.clone().prop_map(|a| format!("!{a}")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("{c} ? {a} : {b}")),
            2 => (prop::sample::select(FUNCTIONS), prop::collection::vec(inner.clone(), 0..3))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            2 => (inner.clone(), prop::sample::select(METHODS), prop::collection::vec(inner.clone(), 0..2))
                .prop_map(|(t, f, args)| format!("{t}.{f}({})", args.join(", "))),
            1 => (inner.clone(), prop::sample::select(PATTERNS))
                .prop_map(|(t, p)| format!("{t}.matches({p})")),
            1 => (inner.clone(), prop::sample::select(&["all", "exists", "exists_one", "map", "filter"][..]), inner.clone())
                .prop_map(|(t, f, body)| format!("{t}.{f}(x, {body})")),
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
            1 => (inner.clone(), "[a-z_]{1,8}").prop_map(|(a, f)| format!("{a}.{f}")),
            1 => (inner.clone(), "[a-z_]{1,8}").prop_map(|(a, f)| format!("has({a}.{f})")),
            1 => prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            1 => (inner.clone(), inner.clone()).prop_map(|(k, v)| format!("{{{k}: {v}}}")),
            1 => inner.prop_map(|a| format!("Msg{{f: {a}}}")),
        ]
    })
    .boxed()
}

/// A well-typed CEL expression of type `ty` ("bool", "int", "double" or "string"), `depth`
/// levels deep: these compile, so evaluation is exercised too.
fn typed_cel(ty: &'static str, depth: u32) -> BoxedStrategy<String> {
    let leaf: BoxedStrategy<String> = match ty {
        "int" => prop_oneof![
            prop::sample::select(
                &[
                    "request.input_tokens",
                    "request.max_tokens",
                    "m.context_window",
                    "size(request.model)",
                    "size(request.metadata)",
                    "now.getHours()",
                    "9223372036854775807",
                    "-9223372036854775808",
                    "0",
                ][..]
            )
            .prop_map(str::to_owned),
            any::<i64>().prop_map(|n| n.to_string()),
        ]
        .boxed(),
        "double" => prop_oneof![
            prop::sample::select(
                &[
                    "budget.key.spent",
                    "budget.user.fraction",
                    "budget.max_fraction",
                    "m.quality",
                    "m.estimated_cost",
                    "m.latency_p95_ms",
                    "1e308",
                    "0.0",
                    "-0.0",
                ][..]
            )
            .prop_map(str::to_owned),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|n| format!("{n:?}")),
        ]
        .boxed(),
        "string" => prop::sample::select(
            &[
                "request.model",
                "request.endpoint",
                "key.id",
                "tenant.labels[\"plan\"]",
                "request.metadata[\"workload\"]",
                "m.name",
                "m.circuit",
                "\"big\"",
                "\"\"",
                "\"日本語\"",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
        _ => prop::sample::select(
            &[
                "true",
                "false",
                "request.stream",
                "request.tools",
                "budget.exceeded",
                "m.healthy",
                "\"workload\" in request.metadata",
                "\"chat\" in m.capabilities",
                "now > timestamp(\"2026-01-01T00:00:00Z\")",
            ][..],
        )
        .prop_map(str::to_owned)
        .boxed(),
    };
    if depth == 0 {
        return leaf;
    }
    let d = depth - 1;
    let arith = |t: &'static str| {
        (
            typed_cel(t, d),
            prop::sample::select(&["+", "-", "*", "/", "%"][..]),
            typed_cel(t, d),
        )
            .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
    };
    match ty {
        "int" => prop_oneof![
            2 => leaf,
            2 => arith("int"),
            1 => typed_cel("int", d).prop_map(|a| format!("-({a})")),
            1 => typed_cel("double", d).prop_map(|a| format!("int({a})")),
            1 => typed_cel("string", d).prop_map(|a| format!("size({a})")),
            1 => (typed_cel("bool", d), typed_cel("int", d), typed_cel("int", d))
                .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
        ]
        .boxed(),
        "double" => prop_oneof![
            2 => leaf,
            2 => arith("double"),
            1 => typed_cel("int", d).prop_map(|a| format!("double({a})")),
        ]
        .boxed(),
        "string" => prop_oneof![
            2 => leaf,
            1 => (typed_cel("string", d), typed_cel("string", d)).prop_map(|(a, b)| format!("({a} + {b})")),
            1 => typed_cel("int", d).prop_map(|a| format!("string({a})")),
            1 => typed_cel("double", d).prop_map(|a| format!("string({a})")),
        ]
        .boxed(),
        _ => prop_oneof![
            1 => leaf,
            2 => (typed_cel("int", d), prop::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]), typed_cel("int", d))
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            2 => (typed_cel("double", d), prop::sample::select(&["<", ">=", "=="][..]), typed_cel("int", d))
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            1 => (typed_cel("string", d), prop::sample::select(&["startsWith", "endsWith", "contains"][..]), typed_cel("string", d))
                .prop_map(|(a, f, b)| format!("{a}.{f}({b})")),
            1 => (typed_cel("string", d), prop::sample::select(&["\"^big\"", "\"\\\\d+\"", "\"(a|b)*c\"", "\"\""][..]))
                .prop_map(|(a, p)| format!("{a}.matches({p})")),
            1 => (typed_cel("string", d), typed_cel("string", d), typed_cel("string", d))
                .prop_map(|(a, b, c)| format!("{a} in [{b}, {c}]")),
            2 => (typed_cel("bool", d), prop::sample::select(&["&&", "||"][..]), typed_cel("bool", d))
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => typed_cel("bool", d).prop_map(|a| format!("!({a})")),
            1 => typed_cel("bool", d).prop_map(|a| format!("request.metadata.exists_one(k, k == \"x\" || {a})")),
            1 => typed_cel("int", d).prop_map(|a| format!("size([1, 2, 3].filter(x, x < {a})) > 1")),
        ]
        .boxed(),
    }
}

/// CEL tokens in any order: mostly syntax errors.
fn cel_token_soup() -> impl Strategy<Value = String> {
    let tokens: Vec<&'static str> = IDENTS
        .iter()
        .chain(LITERALS)
        .chain(BINARY)
        .chain(FUNCTIONS)
        .chain(
            &[
                "(", ")", "[", "]", "{", "}", ".", ",", "?", ":", "!", "-", "\"", "'", "`", "\\",
                "?.",
            ][..],
        )
        .copied()
        .collect();
    prop::collection::vec(prop::sample::select(tokens), 0..24).prop_map(|t| t.join(" "))
}

fn request_facts() -> impl Strategy<Value = RequestFacts> {
    (
        prop::sample::select(NAMES),
        any::<bool>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        prop::collection::btree_map(
            prop::sample::select(&["workload", "re", "x", ""][..]).prop_map(str::to_owned),
            "[a-z(]{0,6}",
            0..3,
        ),
    )
        .prop_map(
            |(model, stream, input_tokens, max_tokens, metadata)| RequestFacts {
                model: model.to_owned(),
                stream,
                input_tokens,
                max_tokens,
                metadata,
                ..RequestFacts::default()
            },
        )
}

/// Compiles `text` at both sites; evaluates what compiles against `request`.
fn compile_and_eval(text: &str, request: &RequestFacts, spent: f64) {
    let identity = Identity {
        tenant: Arc::new(Principal {
            id: "t-1".into(),
            labels: [("plan".to_owned(), "trial".to_owned())].into(),
        }),
        ..Identity::default()
    };
    let budget = BudgetVars {
        scopes: [Spend { spent, limit: 10.0 }; 4],
        exceeded: spent > 10.0,
    };
    let facts = Facts {
        request,
        model: &request.model,
        identity: &identity,
        budget: &budget,
        ratelimit: RateVars::default(),
        now: chrono::DateTime::from_timestamp(1_790_000_000, 0)
            .expect("a valid time")
            .fixed_offset(),
    };
    if let Ok(expr) = CompiledExpr::compile(text, Site::When, Location::default()) {
        let _ = expr.eval(&facts);
    }
    if let Ok(expr) = CompiledExpr::compile(text, Site::Filter, Location::default()) {
        for model in BASE_POLICY.models() {
            let candidate = Candidate {
                model,
                stats: DeploymentStats::default(),
                healthy: true,
                estimated_cost: 0.01,
                quota_headroom: 1.0,
            };
            let _ = expr.eval(&candidate);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_cel_strings_never_panic(
        text in prop_oneof![
            "\\PC{0,120}",
            "[a-z_.()\\[\\]{}!<>=&|+*/%?:,\"' 0-9-]{0,120}",
            cel_token_soup(),
        ],
    ) {
        for site in [Site::When, Site::Filter] {
            if let Err(errs) = CompiledExpr::compile(&text, site, Location::default()) {
                assert!(!errs.is_empty());
                for e in &errs {
                    assert!(e.code.starts_with("cel/"), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn generated_cel_compiles_and_evaluates_without_panicking(
        text in prop_oneof![3 => typed_cel("bool", 3), 1 => cel()],
        request in request_facts(),
        spent in prop::sample::select(&[0.0, 5.0, 12.0, f64::MAX][..]),
    ) {
        compile_and_eval(&text, &request, spent);
    }
}

/// Deep or long shapes: nesting, chains of operators, prefixes, member and index chains, mixed.
fn deep_cel() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(&["1", "true", "request.input_tokens", "m.quality", "x"][..]);
    prop_oneof![
        (0..60usize, leaf.clone()).prop_map(|(n, l)| format!(
            "{}{l}{} > 0",
            "(".repeat(n),
            ")".repeat(n)
        )),
        (1..800usize, prop::sample::select(BINARY), leaf.clone())
            .prop_map(|(n, op, l)| vec![l; n].join(&format!(" {op} "))),
        (
            0..1200usize,
            prop::sample::select(&["!", "-", "!-"][..]),
            leaf.clone()
        )
            .prop_map(|(n, p, l)| format!("{}{l}", p.repeat(n))),
        (0..60usize).prop_map(|n| format!("{}{} == []", "[".repeat(n), "]".repeat(n))),
        (0..60usize).prop_map(|n| format!("{}1{} > 0", "size(".repeat(n), ")".repeat(n))),
        (
            0..80usize,
            prop::sample::select(&["(", "[", "{", "size(", "\""][..])
        )
            .prop_map(|(n, open)| open.repeat(n)),
        (0..600usize).prop_map(|n| format!("request{} == 1", ".a".repeat(n))),
        (0..600usize).prop_map(|n| format!("x{} == 1", ".y".repeat(n))),
        (0..300usize).prop_map(|n| format!("request.metadata{} == \"v\"", "[\"k\"]".repeat(n))),
        (0..200usize)
            .prop_map(|n| { format!("{}true{}", "true ? ".repeat(n), " : false".repeat(n)) }),
        (0..300usize).prop_map(|n| format!("[{}]", vec!["[1]"; n].join(", "))),
        prop::collection::vec(
            prop::sample::select(&["(", "1 + ", "!", "-", "[", "x.", "size(", "a ? ", " : b"][..]),
            0..600
        )
        .prop_map(|t| t.concat() + "1"),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn deep_or_long_cel_is_refused_or_compiled_without_overflowing(text in deep_cel()) {
        for site in [Site::When, Site::Filter] {
            if let Err(errs) = CompiledExpr::compile(&text, site, Location::default()) {
                for e in &errs {
                    assert!(e.code.starts_with("cel/"), "{e:?}");
                    assert_ne!(e.code, "cel/internal", "{e:?}");
                }
            }
        }
    }
}

#[test]
fn the_typed_generator_produces_compiling_cel() {
    // Guards the typed generator against drifting into errors: evaluation needs compiled
    // expressions to be exercised at all.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = typed_cel("bool", 3);
    let mut compiled = 0;
    for _ in 0..500 {
        let text = strategy.new_tree(&mut runner).expect("a value").current();
        if CompiledExpr::compile(&text, Site::Filter, Location::default()).is_ok() {
            compiled += 1;
        }
    }
    assert!(
        compiled >= 450,
        "only {compiled} of 500 generated expressions compile"
    );
}

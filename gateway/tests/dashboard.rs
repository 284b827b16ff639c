//! The web dashboard (`/ui` on the admin listener) driven in headless Chromium through
//! WebDriver, against the real `llmgw` binary serving the mock provider: every page renders
//! what the gateway knows (a deployment's provider quota headroom among it), a decision shows
//! within a second of being made, a canary rolled back from its page shows as rolled back, a
//! reload shows what it changed in the decision table, and a tenant admin sees its own tenant
//! only.
//! Screenshots of each page go to `$CARGO_TARGET_TMPDIR/dashboard/`; with
//! `LLMGW_UPDATE_SCREENSHOTS=1` they are also copied to `docs/screenshots/` for the README.

mod common;
#[path = "webdriver/mod.rs"]
mod webdriver;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use webdriver::Browser;

const ADMIN: &str = "adm-dashboard-token-5c2e";

/// How long a decision may take to show on the live page once its request has completed.
const LIVE: Duration = Duration::from_secs(1);
/// How long a page may take to load its data the first time.
const LOAD: Duration = Duration::from_secs(10);

fn providers(base_url: &str) -> String {
    let provider = |name: &str, region: &str| {
        format!(
            "  - name: {name}\n    type: openai_compatible\n    region: {region}\n    base_url: {base_url}\n    timeouts: {{ connect_ms: 1000, first_token_ms: 5000, idle_ms: 5000, total_ms: 10000 }}\n    circuit: {{ window_secs: 10, min_requests: 1000, error_ratio: 1.0, consecutive_failures: 1000, cooldown_secs: 1 }}\n"
        )
    };
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n{}{}",
        provider("mock-a", "us-east"),
        provider("mock-b", "eu-west")
    )
}

const MODELS: &str = "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: chat\n    class: chat\n    quality: 0.9\n    context_window: 32000\n    capabilities: [chat]\n    price: { input_per_mtok: 3, output_per_mtok: 15 }\n    deployments:\n      - provider: mock-a\n        upstream_model: \"chat+ok\"\n        quota: { requests_per_minute: 600 }\n      - name: chat-v2@mock-b\n        provider: mock-b\n        upstream_model: \"chat2+ok\"\n        canary_only: true\n  - name: fast\n    class: chat\n    quality: 0.6\n    context_window: 32000\n    capabilities: [chat]\n    price: { input_per_mtok: 0.5, output_per_mtok: 1.5 }\n    deployments:\n      - provider: mock-b\n        upstream_model: \"fast+ok\"\n        quota: { requests_per_minute: 2, tokens_per_minute: 100000 }\n";

const ROUTING: &str = "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: globex-on-fast\n    description: Tenant globex is served by the fast model.\n    when: 'tenant.id == \"globex\"'\n    candidates: [fast]\n    failover: none\n  - name: requested-model\n    strategy: priority\n";

const BUDGETS: &str = "apiVersion: llmgw.dev/v1\nkind: Budgets\nbudgets:\n  - name: tenant-monthly\n    scope: tenant\n    period: monthly\n    limit_usd: 0.01\n    alert_at: [0.5, 0.8]\n    on_exceed: block\n";

const CANARIES: &str = "apiVersion: llmgw.dev/v1\nkind: Canaries\ncanaries:\n  - name: chat-v2\n    model: chat\n    baseline: chat@mock-a\n    candidate: chat-v2@mock-b\n    rollout:\n      steps:\n        - weight_percent: 25\n          min_requests: 1000000\n          min_duration_secs: 3600\n      metrics:\n        - metric: error_rate\n          margin: 1.0\n      alpha: 0.01\n";

/// The next revision: the globex rule takes a second tenant, the budget's second alert moves
/// and a rate limit is added.
const ROUTING_V2: &str = "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: globex-on-fast\n    description: Tenants globex and initech are served by the fast model.\n    when: 'tenant.id in [\"globex\", \"initech\"]'\n    candidates: [fast]\n    failover: none\n  - name: requested-model\n    strategy: priority\n";

const RATE_LIMITS: &str = "apiVersion: llmgw.dev/v1\nkind: RateLimits\nlimits:\n  - name: per-tenant\n    scope: tenant\n    requests: { limit: 1000, per: minute }\n";

/// A rule whose condition does not compile: the revision is rejected with a diagnostic.
const BROKEN_ROUTING: &str = "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: globex-on-fast\n    when: 'tenant.id == '\n    candidates: [fast]\n";

fn commit(repo: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, text) in files {
        std::fs::write(repo.join(name), text).expect("write policy");
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// Creates a key of `tenant` (an admin key when `admin`) and returns its secret.
async fn key(gw: &Gateway, tenant: &str, project: &str, admin: bool) -> String {
    let body = json!({ "tenant": tenant, "project": project, "admin": admin }).to_string();
    let a = gw.admin_send("POST", "/admin/keys", Some(&body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()["secret"].as_str().expect("secret").to_owned()
}

/// Sends a chat request with `secret` and returns its request id (the decision's id).
async fn request(gw: &Gateway, secret: &str, model: &str) -> String {
    let a = send(
        "POST",
        &gw.url("/v1/chat/completions"),
        Some(&chat(model, false, 12)),
        &[("authorization", &format!("Bearer {secret}"))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.header("x-request-id").to_owned()
}

struct Shots {
    dir: PathBuf,
    taken: Vec<PathBuf>,
}

impl Shots {
    async fn take(&mut self, browser: &Browser, name: &str) {
        let path = self.dir.join(format!("{name}.png"));
        browser.screenshot(&path).await;
        let png = std::fs::read(&path).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        self.taken.push(path);
    }

    /// Copies the screenshots into `docs/screenshots/` when asked to.
    fn publish(&self) {
        if std::env::var_os("LLMGW_UPDATE_SCREENSHOTS").is_none() {
            return;
        }
        let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("docs")
            .join("screenshots");
        std::fs::create_dir_all(&docs).expect("docs/screenshots");
        for p in &self.taken {
            std::fs::copy(p, docs.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

async fn sign_in(browser: &Browser, gw: &Gateway, token: &str) {
    browser.go(&gw.admin_url("/ui#decisions")).await;
    browser.wait_for("#login:not([hidden]) #token", LOAD).await;
    browser.fill_and_submit("#token", token).await;
    browser.wait_for("#nav:not([hidden])", LOAD).await;
}

async fn open_page(browser: &Browser, page: &str) {
    browser
        .run("location.hash = arguments[0];", json!([page]))
        .await;
    browser.wait_for(&format!("#page-{page}"), LOAD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_live_data_for_the_admin_and_one_tenant_for_its_admin() {
    let mock = mock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("policies");
    std::fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(
        &repo,
        &[
            ("providers.yaml", &providers(&mock.base_url())),
            ("models.yaml", MODELS),
            ("routing.yaml", ROUTING),
            ("budgets.yaml", BUDGETS),
            ("canaries.yaml", CANARIES),
        ],
        "Chat with a canary of chat-v2; globex on the fast model",
    );
    let decisions = dir.path().join("decisions.jsonl");
    let gw = Gateway::start(&[
        "--repo",
        repo.to_str().expect("utf-8"),
        "--branch",
        "main",
        "--poll-interval",
        "200ms",
        "--decision-log",
        decisions.to_str().expect("utf-8"),
        "--admin-token",
        ADMIN,
    ]);
    let acme = key(&gw, "acme", "web", false).await;
    let acme_batch = key(&gw, "acme", "batch", false).await;
    let globex = key(&gw, "globex", "search", false).await;
    let acme_admin = key(&gw, "acme", "ops", true).await;
    for _ in 0..6 {
        request(&gw, &acme, "chat").await;
        request(&gw, &acme_batch, "chat").await;
        request(&gw, &globex, "chat").await;
    }

    let browser = Browser::start().await;
    let mut shots = Shots {
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard"),
        taken: Vec::new(),
    };

    // A wrong token is refused on the sign-in form.
    browser.go(&gw.admin_url("/ui")).await;
    browser.wait_for("#login:not([hidden]) #token", LOAD).await;
    browser.fill_and_submit("#token", "not-a-token").await;
    browser.wait_for("#login-error:not(:empty)", LOAD).await;
    assert!(browser
        .text("#login-error")
        .await
        .contains("not an admin token or a tenant admin key"));

    // --- the admin token --------------------------------------------------------------
    sign_in(&browser, &gw, ADMIN).await;
    assert!(browser.text("#who").await.contains("admin token"));
    browser
        .wait_for("#decisions tr[data-decision-id]", LOAD)
        .await;

    // A decision shows within a second of its request completing.
    let id = request(&gw, &acme, "chat").await;
    let row = format!("#decisions tr[data-decision-id=\"{id}\"]");
    browser.wait_for(&row, LIVE).await;
    let text = browser.text(&row).await;
    assert!(text.contains("acme"), "{text}");
    assert!(text.contains("requested-model"), "{text}");
    assert!(text.contains("chat →"), "{text}");
    let globex_id = request(&gw, &globex, "chat").await;
    let globex_row = format!("#decisions tr[data-decision-id=\"{globex_id}\"]");
    browser.wait_for(&globex_row, LIVE).await;
    let text = browser.text(&globex_row).await;
    assert!(
        text.contains("globex-on-fast") && text.contains("chat → fast") && text.contains("mock-b"),
        "{text}"
    );

    // Its trace: the rules evaluated in order, with the file and line of each.
    browser.click(&globex_row).await;
    browser.wait_for("#decision-trace ol li", LOAD).await;
    let trace = browser.text("#decision-detail").await;
    assert!(trace.contains(&first), "the revision that decided: {trace}");
    assert!(
        trace.contains("rule globex-on-fast matched routing.yaml:"),
        "{trace}"
    );
    assert!(trace.contains("Replayed on revision"), "{trace}");
    // Filtering by rule leaves that rule's decisions.
    browser.type_into("#filter-rule", "globex-on-fast").await;
    browser
        .wait_for("#decisions[data-query*=\"rule=globex-on-fast\"] tr", LOAD)
        .await;
    let rules = browser.texts("#decisions tr td:nth-child(3)").await;
    assert!(rules.iter().all(|r| r == "globex-on-fast"), "{rules:?}");
    shots.take(&browser, "decisions").await;

    // Models and providers: the live registry with prices and circuit states, and charts.
    open_page(&browser, "models").await;
    browser
        .wait_for("#deployments tr[data-deployment=\"fast@mock-b\"]", LOAD)
        .await;
    let fast = browser
        .text("#deployments tr[data-deployment=\"fast@mock-b\"]")
        .await;
    assert!(
        fast.contains("closed")
            && fast.contains("$0.5 / $1.5")
            && fast.contains("mock-b / eu-west"),
        "{fast}"
    );
    let chat = browser
        .text("#deployments tr[data-deployment=\"chat@mock-a\"]")
        .await;
    assert!(chat.contains("ms") && chat.contains("$3 / $15"), "{chat}");
    // Provider quota headroom: fast@mock-b's 2 requests a minute were spent by globex (each
    // request takes 30 s of it), chat@mock-a declares 600, the canary's candidate none.
    let headroom = |row: &str| {
        row.split(" %")
            .filter_map(|part| part.rsplit(' ').next()?.parse::<f64>().ok())
            .collect::<Vec<_>>()
    };
    let quota = browser
        .text("#deployments tr[data-deployment=\"fast@mock-b\"] td.quota")
        .await;
    assert!(
        quota.contains("of 2 req/min") && quota.contains("of 100,000 tok/min left"),
        "{quota}"
    );
    assert!(
        headroom(&quota).first().is_some_and(|&h| h < 50.0),
        "{quota}"
    );
    assert!(browser
        .text("#deployments tr[data-deployment=\"chat@mock-a\"] td.quota")
        .await
        .contains("of 600 req/min left"));
    assert_eq!(
        browser
            .text("#deployments tr[data-deployment=\"chat-v2@mock-b\"] td.quota")
            .await,
        "–"
    );
    let status = gw.admin_get("/admin/status").await.json();
    let live = |name: &str| {
        status["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["deployment"] == name))
            .map(|d| d["live"].clone())
            .unwrap_or_else(|| panic!("{name} in {status:#}"))
    };
    let fast_live = live("fast@mock-b");
    assert!(
        fast_live["quota_headroom"]
            .as_f64()
            .is_some_and(|h| h < 0.5),
        "{fast_live:#}"
    );
    assert!(
        fast_live["quota_requests_left"].as_f64().is_some(),
        "{fast_live:#}"
    );
    assert!(
        live("chat-v2@mock-b")["quota_headroom"].is_null(),
        "{status:#}"
    );
    browser
        .wait_for(
            "#model-charts svg.chart[aria-label=\"Provider quota headroom\"] path.series",
            LOAD,
        )
        .await;
    browser
        .wait_for("#model-charts svg.chart path.series", LOAD)
        .await;
    let titles = browser.texts("#model-charts svg.chart .title").await;
    assert!(titles.iter().any(|t| t == "Latency p95 (ms)"), "{titles:?}");
    shots.take(&browser, "models").await;

    // Spend: both tenants, by tenant, against the tenant budget and its alert thresholds.
    open_page(&browser, "spend").await;
    browser
        .wait_for("#spend-totals tr[data-group=\"globex\"]", LOAD)
        .await;
    assert!(!browser
        .text("#spend-totals tr[data-group=\"acme\"]")
        .await
        .is_empty());
    let budgets = browser.text("#spend-budgets").await;
    assert!(
        budgets.contains("tenant-monthly") && budgets.contains("alerts at 50 %, 80 %"),
        "{budgets}"
    );
    browser.run("const s = document.querySelector('#spend-group'); s.value = 'project'; s.dispatchEvent(new Event('change'));", json!([])).await;
    browser
        .wait_for("#spend-totals tr[data-group=\"batch\"]", LOAD)
        .await;
    shots.take(&browser, "spend").await;

    // Canaries: progressing at 25 %, then rolled back from the page.
    open_page(&browser, "canaries").await;
    let card = "[data-canary=\"chat-v2\"]";
    browser
        .wait_for(&format!("{card} .badge.progressing"), LOAD)
        .await;
    assert!(browser
        .text(&format!("{card} .canary-weight"))
        .await
        .contains("25 %"));
    browser.wait_for(&format!("{card} svg.chart"), LOAD).await;
    shots.take(&browser, "canaries").await;
    browser
        .click(&format!("{card} button[data-action=\"rollback\"]"))
        .await;
    browser
        .wait_for(&format!("{card} .badge.rolled_back"), LOAD)
        .await;
    assert!(browser
        .text(&format!("{card} .canary-weight"))
        .await
        .contains("0 %"));
    let status = gw.admin_get("/admin/canaries").await.json();
    assert_eq!(status["data"][0]["state"], "rolled_back", "{status}");
    browser
        .wait_for(&format!("{card} .canary-transitions li"), LOAD)
        .await;
    shots.take(&browser, "canaries-rolled-back").await;

    // Policy: a broken commit is rejected with its diagnostic; the first keeps serving.
    let broken = commit(
        &repo,
        &[("routing.yaml", BROKEN_ROUTING)],
        "Break the globex rule",
    );
    open_page(&browser, "policy").await;
    browser
        .wait_for(&format!("[data-rejected=\"{broken}\"] pre.diag"), LOAD)
        .await;
    assert_eq!(browser.text("#policy-revision").await, first);
    let history = browser.text("#policy-history").await;
    assert!(
        history.contains("Break the globex rule") && history.contains("Policy Author"),
        "{history}"
    );
    assert!(
        history.contains("failed") && history.contains("applied"),
        "{history}"
    );
    assert!(browser
        .text(&format!("[data-rejected=\"{broken}\"]"))
        .await
        .contains("routing.yaml"));
    shots.take(&browser, "policy").await;

    // The next good revision: the page compares it with the one before, entry by entry.
    let second = commit(
        &repo,
        &[
            ("routing.yaml", ROUTING_V2),
            ("budgets.yaml", &BUDGETS.replace("[0.5, 0.8]", "[0.5, 0.9]")),
            ("ratelimits.yaml", RATE_LIMITS),
        ],
        "Initech on the fast model too; alert at 90 %; a request limit per tenant",
    );
    let rule = "[data-change=\"rule/globex-on-fast\"]";
    browser.wait_for(rule, LOAD).await;
    assert_eq!(browser.text("#policy-revision").await, second);
    let changed = browser.text(rule).await;
    assert!(
        changed.contains("changed")
            && changed.contains("when")
            && changed.contains("tenant.id == \"globex\"")
            && changed.contains("tenant.id in [\"globex\", \"initech\"]")
            && changed.contains("routing.yaml:4"),
        "{changed}"
    );
    let summary = browser.text("#diff-summary").await;
    assert!(
        summary.contains(&first[..12])
            && summary.contains(&second[..12])
            && summary.contains("3 entries differ (1 added, 0 removed, 2 changed)"),
        "{summary}"
    );
    assert!(browser
        .text("[data-change=\"rate_limit/per-tenant\"]")
        .await
        .contains("added"));
    assert!(browser
        .text("[data-change=\"budget/tenant-monthly\"]")
        .await
        .contains("alert_at"));
    browser
        .run(
            "document.querySelector('#policy-diff').scrollIntoView();",
            json!([]),
        )
        .await;
    shots.take(&browser, "policy-diff").await;
    // The route behind it: revisions by id or prefix; one that did not compile has no table.
    let diff = gw
        .admin_get(&format!(
            "/admin/policy/diff?from={}&to={second}",
            &first[..7]
        ))
        .await;
    assert_eq!(diff.status, 200, "{}", diff.body);
    let diff = diff.json();
    assert_eq!(diff["from"]["id"], first.as_str(), "{diff:#}");
    assert_eq!(diff["changes"][0]["kind"], "rule", "{diff:#}");
    assert_eq!(diff["changes"][0]["fields"][0]["field"], "when", "{diff:#}");
    assert_eq!(
        gw.admin_get("/admin/policy/diff").await.json()["from"]["id"],
        first.as_str(),
        "by default, the serving revision against the one applied before"
    );
    let failed = gw
        .admin_get(&format!("/admin/policy/diff?from={broken}"))
        .await;
    assert_eq!(failed.status, 409, "{}", failed.body);
    assert_eq!(failed.json()["error"]["code"], "revision_not_compiled");
    let unknown = gw.admin_get("/admin/policy/diff?from=0000000").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // --- a tenant admin key: acme only --------------------------------------------------
    browser.click("#logout").await;
    browser.wait_for("#login:not([hidden])", LOAD).await;
    sign_in(&browser, &gw, &acme_admin).await;
    assert!(browser.text("#who").await.contains("tenant admin: acme"));
    let hidden: Value = browser
        .run("return [...document.querySelectorAll('#nav a')].filter((a) => !a.hidden).map((a) => a.dataset.page);", json!([]))
        .await;
    assert_eq!(hidden, json!(["decisions", "spend", "policy"]));
    let other = request(&gw, &globex, "chat").await;
    let own = request(&gw, &acme, "chat").await;
    browser
        .wait_for(&format!("#decisions tr[data-decision-id=\"{own}\"]"), LIVE)
        .await;
    assert_eq!(
        browser
            .text(&format!("#decisions tr[data-decision-id=\"{other}\"]"))
            .await,
        ""
    );
    let tenants: Vec<String> = browser.texts("#decisions tr td:nth-child(2)").await;
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| t == "acme"),
        "{tenants:?}"
    );
    shots.take(&browser, "tenant-decisions").await;
    open_page(&browser, "spend").await;
    browser
        .wait_for("#spend-totals tr[data-group=\"acme\"]", LOAD)
        .await;
    assert_eq!(browser.texts("#spend-totals tbody tr").await.len(), 1);
    browser
        .wait_for("#budgets tr[data-budget=\"tenant-monthly\"]", LOAD)
        .await;
    assert!(!browser.text("body").await.contains("globex"));
    shots.take(&browser, "tenant-spend").await;
    // The admin-only pages say so, and the trace route refuses the key.
    open_page(&browser, "canaries").await;
    assert!(browser
        .text("#page-canaries")
        .await
        .contains("needs the gateway's admin token"));
    let refused = send(
        "GET",
        &gw.admin_url(&format!("/admin/decisions/{own}/trace")),
        None,
        &[("authorization", &format!("Bearer {acme_admin}"))],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // The Policy page shows it the serving revision only, and the diff route refuses the key.
    open_page(&browser, "policy").await;
    browser.wait_for("#policy-revision", LOAD).await;
    assert_eq!(browser.text("#policy-revision").await, second);
    assert!(browser
        .text("#page-policy")
        .await
        .contains("admin token only"));
    assert_eq!(browser.text("#policy-diff").await, "");
    let refused = send(
        "GET",
        &gw.admin_url("/admin/policy/diff"),
        None,
        &[("authorization", &format!("Bearer {acme_admin}"))],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(!refused.body.contains("globex"), "{}", refused.body);

    browser.quit().await;
    shots.publish();
}

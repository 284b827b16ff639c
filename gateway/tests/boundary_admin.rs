//! The operator boundary, crossed through the real `llmgw` binary: the API listener serves no
//! operator route; on the admin listener the admin token sees everything, a tenant admin key
//! sees its own tenant only, an ordinary gateway key is refused (403) and no credential is
//! 401; the decision log is read back per tenant, filtered and paged.

mod common;
mod state_support;

use common::*;
use serde_json::Value;
use state_support::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ADMIN: &str = "adm-token-boundary-5c1e";

struct World {
    gw: Gateway,
    policies: tempfile::TempDir,
    _state: tempfile::TempDir,
    log_dir: tempfile::TempDir,
    _mock: llmgw_mock_provider::MockHandle,
    acme: NewKey,
    acme_admin: NewKey,
    globex: NewKey,
    globex_admin: NewKey,
}

/// Two tenants, each with a gateway key and a tenant admin key, on a gateway with two models
/// (`chat-b` routed by the rule `to-b`, `chat-a` by the built-in `default`), a tenant budget,
/// and, with `decision_log`, a decision log rotated every few records.
async fn world(decision_log: bool) -> World {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let log_dir = tempfile::tempdir().expect("tempdir");
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok"), ("chat-b", "b", "b+ok")],
        "  - name: tenant-monthly\n    scope: tenant\n    period: monthly\n    limit_usd: 100\n    on_exceed: block\n",
    );
    std::fs::write(
        policies.path().join("routing.yaml"),
        "apiVersion: llmgw.dev/v1\nkind: Routing\nrules:\n  - name: to-b\n    description: chat-b by name.\n    when: 'request.model == \"chat-b\"'\n",
    )
    .expect("write routing");
    let location = state.path().to_str().expect("utf-8").to_owned();
    let s = ["--state", location.as_str()];
    let acme = create_key(&s, &["--tenant", "acme"]);
    let acme_admin = create_key(&s, &["--tenant", "acme", "--admin"]);
    let globex = create_key(&s, &["--tenant", "globex"]);
    let globex_admin = create_key(&s, &["--tenant", "globex", "--admin"]);
    let log = log_dir.path().join("decisions.jsonl");
    let mut args = vec![
        "--policies".to_owned(),
        policies.path().to_str().expect("utf-8").to_owned(),
        "--admin-token".to_owned(),
        ADMIN.to_owned(),
    ];
    if decision_log {
        args.extend([
            "--decision-log".to_owned(),
            log.to_str().expect("utf-8").to_owned(),
            "--decision-log-max-bytes".to_owned(),
            "1600".to_owned(),
            "--decision-log-keep".to_owned(),
            "50".to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start_on(
        &args,
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(&location),
    );
    World {
        gw,
        policies,
        _state: state,
        log_dir,
        _mock: mock,
        acme,
        acme_admin,
        globex,
        globex_admin,
    }
}

/// A request to the admin listener with `token` (none when empty).
async fn admin(gw: &Gateway, token: &str, method: &str, path: &str) -> Answer {
    let auth = format!("Bearer {token}");
    let headers: &[(&str, &str)] = if token.is_empty() {
        &[]
    } else {
        &[("authorization", &auth)]
    };
    send(method, &gw.admin_url(path), None, headers).await
}

/// A successful chat request for `model` as `key`.
async fn chat(gw: &Gateway, key: &NewKey, model: &str) {
    let a = chat_as(gw, &key.bearer(), &chat_for(model, Some(3), None)).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

fn assert_no_tenant(what: &str, body: &str) {
    for tenant in ["acme", "globex"] {
        assert!(!body.contains(tenant), "{what} names `{tenant}`: {body}");
    }
}

// The API listener serves no operator route: each answers 404 with an OpenAI error that points
// to the admin listener and says nothing of tenants, whatever the credential. The health
// checks stay on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_listener_serves_no_operator_route() {
    let w = world(false).await;
    let gw = &w.gw;
    chat(gw, &w.acme, "chat-a").await;
    let admin_auth = format!("Bearer {ADMIN}");
    for path in [
        "/metrics",
        "/admin/status",
        "/admin/keys",
        "/admin/spend",
        "/admin/decisions",
        "/admin/tenants/acme",
        "/admin/canaries",
        "/admin/policy/diff",
    ] {
        for auth in [
            "",
            admin_auth.as_str(),
            &w.acme.bearer(),
            &w.acme_admin.bearer(),
        ] {
            let headers: &[(&str, &str)] = if auth.is_empty() {
                &[]
            } else {
                &[("authorization", auth)]
            };
            let a = send("GET", &gw.url(path), None, headers).await;
            assert_eq!(a.status, 404, "{path}: {}", a.body);
            let e = &a.json()["error"];
            assert_eq!(e["type"], "invalid_request_error", "{path}: {}", a.body);
            assert!(
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("admin listener"),
                "{path}: {}",
                a.body
            );
            assert_no_tenant(path, &a.body);
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(send("GET", &gw.url(path), None, &[]).await.status, 200);
        let a = send("GET", &gw.admin_url(path), None, &[]).await;
        assert_eq!(a.status, 200, "{path} on the admin listener: {}", a.body);
        assert_no_tenant(path, &a.body);
    }
    // The API itself is not on the admin listener.
    let a = send(
        "POST",
        &gw.admin_url("/v1/chat/completions"),
        Some(&chat_for("chat-a", Some(3), None)),
        &[("authorization", &w.acme.bearer())],
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.body);
}

// On the admin listener: no credential is 401, an ordinary key 403; /metrics and the canary
// commands take the admin token only; /admin/status is global for the admin token and holds
// one tenant, and nothing of the policy's files or other tenants, for a tenant admin key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_admits_by_credential_and_scopes_tenant_admins() {
    let w = world(false).await;
    let gw = &w.gw;
    chat(gw, &w.acme, "chat-a").await;
    chat(gw, &w.acme, "chat-b").await;
    chat(gw, &w.globex, "chat-a").await;

    for path in [
        "/metrics",
        "/admin/status",
        "/admin/decisions",
        "/admin/spend",
    ] {
        let none = admin(gw, "", "GET", path).await;
        assert_eq!(none.status, 401, "{path}: {}", none.body);
        assert_eq!(none.json()["error"]["type"], "authentication_error");
        assert_no_tenant(path, &none.body);
        let wrong = admin(gw, "adm-not-the-token", "GET", path).await;
        assert_eq!(wrong.status, 401, "{path}: {}", wrong.body);
        assert_no_tenant(path, &wrong.body);
        let ordinary = admin(gw, &w.acme.secret, "GET", path).await;
        assert_eq!(ordinary.status, 403, "{path}: {}", ordinary.body);
        assert_eq!(ordinary.json()["error"]["type"], "permission_error");
    }

    // /metrics: the admin token only (and it does name tenants, so the refusals matter).
    let refused = admin(gw, &w.acme_admin.secret, "GET", "/metrics").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_no_tenant("a refused /metrics", &refused.body);
    let metrics = until_some(
        Duration::from_secs(10),
        "spend metrics of both tenants",
        || async {
            let m = gw.metrics().await;
            (m.contains("acme") && m.contains("globex")).then_some(m)
        },
    )
    .await;
    assert!(metrics.contains("llmgw_requests_total"), "{metrics}");

    // Canary commands: the admin token only.
    for token in [w.acme_admin.secret.as_str(), w.acme.secret.as_str()] {
        let a = admin(gw, token, "POST", "/admin/canaries/any/pause").await;
        assert_eq!(a.status, 403, "{}", a.body);
    }
    assert_eq!(
        admin(gw, "", "POST", "/admin/canaries/any/pause")
            .await
            .status,
        401
    );
    let through = admin(gw, ADMIN, "POST", "/admin/canaries/any/pause").await;
    assert!(
        ![401, 403].contains(&through.status),
        "the admin token gets through to the (missing) canary: {}",
        through.body
    );

    // The admin token: the whole gateway.
    let global = admin(gw, ADMIN, "GET", "/admin/status").await;
    assert_eq!(global.status, 200, "{}", global.body);
    let global = global.json();
    assert!(
        global["deployments"]
            .as_array()
            .is_some_and(|d| d.len() == 2),
        "{global:#}"
    );
    assert!(global["policy"]["source"].as_str().is_some(), "{global:#}");

    // A tenant admin key: its own tenant, and nothing that is not its own.
    let policy_dir = w.policies.path().to_str().expect("utf-8").to_owned();
    for (key, mine, other, requests) in [
        (&w.acme_admin, "acme", "globex", 2),
        (&w.globex_admin, "globex", "acme", 1),
    ] {
        let a = until_some(Duration::from_secs(10), "the tenant's spend", || async {
            let a = admin(gw, &key.secret, "GET", "/admin/status").await;
            assert_eq!(a.status, 200, "{}", a.body);
            let s = a.json();
            let spent = s["budgets"][0]["spent_usd"].as_f64().unwrap_or(0.0);
            (s["spend"]["requests"] == requests && spent > 0.0).then_some(a)
        })
        .await;
        let s = a.json();
        assert_eq!(s["tenant"], mine, "{s:#}");
        assert_eq!(
            s["keys"]["active"], 2,
            "a gateway key and an admin key: {s:#}"
        );
        assert!(
            s["spend"]["total_usd"].as_f64().is_some_and(|t| t > 0.0),
            "{s:#}"
        );
        let budget = &s["budgets"][0];
        assert_eq!(budget["budget"], "tenant-monthly", "{s:#}");
        assert_eq!(budget["limit_usd"], 100.0, "{s:#}");
        assert!(
            budget["spent_usd"].as_f64().is_some_and(|t| t > 0.0),
            "{s:#}"
        );
        assert!(!a.body.contains(other), "{mine} sees {other}: {}", a.body);
        assert!(!a.body.contains(&policy_dir), "a policy path: {}", a.body);
        for field in ["deployments", "circuits", "canaries"] {
            assert!(s.get(field).is_none(), "{field} shown to a tenant: {s:#}");
        }
        // Its own spend, not the other tenant's.
        let spend = admin(gw, &key.secret, "GET", "/admin/spend").await;
        assert_eq!(spend.status, 200, "{}", spend.body);
        assert!(!spend.body.contains(other), "{}", spend.body);
        let cross = admin(
            gw,
            &key.secret,
            "GET",
            &format!("/admin/spend?tenant={other}"),
        )
        .await;
        assert_eq!(cross.status, 403, "{}", cross.body);
    }
}

/// Polls `f` every 25 ms until it gives a value; panics with `what` after `limit`.
async fn until_some<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not observed within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every record of `/admin/decisions?QUERY` as `token` sees it, following `next` page by page.
async fn all_pages(gw: &Gateway, token: &str, query: &str) -> (Vec<Value>, usize) {
    let mut records = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/admin/decisions?{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let a = admin(gw, token, "GET", &path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let v = a.json();
        assert_eq!(v["unreadable"], 0, "{}", a.body);
        records.extend(v["data"].as_array().expect("data").iter().cloned());
        pages += 1;
        assert!(pages < 100, "paging does not end");
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (records, pages),
        }
    }
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

fn tenant_of(r: &Value) -> &str {
    r["input"]["identity"]["tenant"]["id"]
        .as_str()
        .unwrap_or("")
}

// Two tenants' traffic in a decision log rotated every few records: each tenant admin key
// reads its own decisions only, the admin token reads all or one tenant's, the filters work,
// paging returns every record exactly once (newest first), and a bad parameter is a 400 that
// names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_read_back_per_tenant_filtered_and_paged() {
    let w = world(true).await;
    let gw = &w.gw;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for model in ["chat-a", "chat-b", "chat-a", "chat-a", "chat-b", "chat-a"] {
        chat(gw, &w.acme, model).await;
    }
    for model in ["chat-b", "chat-a", "chat-b", "chat-b"] {
        chat(gw, &w.globex, model).await;
    }
    // The writer appends in the background: wait for all ten.
    let everything = until_some(Duration::from_secs(10), "ten decisions", || async {
        let a = admin(gw, ADMIN, "GET", "/admin/decisions?limit=1000").await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        let data = v["data"].as_array().expect("data").clone();
        (data.len() == 10).then_some(data)
    })
    .await;
    let log = w.log_dir.path().join("decisions.jsonl.3");
    let files: Vec<_> = std::fs::read_dir(w.log_dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(
        log.exists(),
        "the log was rotated three times or more: {files:?}"
    );

    // Newest first, every record exactly once, with pages of 3.
    let (paged, pages) = all_pages(gw, ADMIN, "limit=3").await;
    assert_eq!(ids(&paged), ids(&everything));
    assert_eq!(pages, 4, "10 records in pages of 3");
    let unique: BTreeSet<String> = ids(&paged).into_iter().collect();
    assert_eq!(unique.len(), 10);
    let times: Vec<chrono::DateTime<chrono::Utc>> = paged
        .iter()
        .map(|r| {
            r["time"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("a time")
        })
        .collect();
    assert!(
        times.windows(2).all(|t| t[0] >= t[1]),
        "newest first: {times:?}"
    );

    // Each tenant admin key: its own, all of them, and nothing else.
    for (key, mine, n) in [(&w.acme_admin, "acme", 6), (&w.globex_admin, "globex", 4)] {
        let (own, _) = all_pages(gw, &key.secret, "limit=2").await;
        assert_eq!(own.len(), n, "{mine}");
        assert!(own.iter().all(|r| tenant_of(r) == mine), "{mine}: {own:#?}");
        let other = if mine == "acme" { "globex" } else { "acme" };
        let cross = admin(
            gw,
            &key.secret,
            "GET",
            &format!("/admin/decisions?tenant={other}"),
        )
        .await;
        assert_eq!(cross.status, 403, "{}", cross.body);
    }
    let (globex, _) = all_pages(gw, ADMIN, "tenant=globex").await;
    assert_eq!(globex.len(), 4);
    assert!(globex.iter().all(|r| tenant_of(r) == "globex"));

    // Filters: rule, model, since (RFC 3339 and unix ms), combined with the tenant.
    let (to_b, _) = all_pages(gw, &w.globex_admin.secret, "rule=to-b").await;
    assert_eq!(to_b.len(), 3);
    assert!(to_b
        .iter()
        .all(|r| r["rule"] == "to-b" && r["requested_model"] == "chat-b"));
    let (a_models, _) = all_pages(gw, &w.acme_admin.secret, "model=chat-a&limit=1").await;
    assert_eq!(a_models.len(), 4);
    assert!(a_models.iter().all(|r| r["rule"] == "default"));
    let (defaults, _) = all_pages(gw, ADMIN, "rule=default").await;
    assert_eq!(defaults.len(), 5);
    let rfc3339 = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (recent, _) = all_pages(gw, ADMIN, &format!("since={rfc3339}")).await;
    assert_eq!(recent.len(), 10);
    let millis = before.timestamp_millis();
    let (recent, _) = all_pages(gw, &w.acme_admin.secret, &format!("since={millis}")).await;
    assert_eq!(recent.len(), 6);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
    let (none, _) = all_pages(gw, ADMIN, &format!("since={later}")).await;
    assert!(none.is_empty());

    // A bad parameter is a 400 naming it.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("since=last-tuesday", "since"),
        ("cursor=not-a-cursor", "cursor"),
        ("model=", "model"),
        ("colour=blue", "colour"),
    ] {
        let a = admin(gw, ADMIN, "GET", &format!("/admin/decisions?{query}")).await;
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        let e = &a.json()["error"];
        assert_eq!(e["param"], param, "{query}: {}", a.body);
        assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("`{param}`")),
            "{query}: {}",
            a.body
        );
    }
    // A cursor into a file that no longer exists.
    let gone = admin(gw, ADMIN, "GET", "/admin/decisions?cursor=ffffffffff-0").await;
    assert_eq!(gone.status, 410, "{}", gone.body);
}

// Without `--decision-log` the query says so (409), after checking the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_without_a_decision_log_say_it_is_not_enabled() {
    let w = world(false).await;
    let gw = &w.gw;
    assert_eq!(admin(gw, "", "GET", "/admin/decisions").await.status, 401);
    for token in [ADMIN, w.acme_admin.secret.as_str()] {
        let a = admin(gw, token, "GET", "/admin/decisions").await;
        assert_eq!(a.status, 409, "{}", a.body);
        assert_eq!(a.json()["error"]["code"], "decision_log_disabled");
        assert!(a.body.contains("--decision-log"), "{}", a.body);
    }
}

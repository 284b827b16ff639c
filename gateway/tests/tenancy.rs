//! Tenant isolation through every interface of the real `llmgw` binary: the admin API with the
//! gateway's admin token and with tenant admin keys, the `llmgw keys` and `llmgw spend`
//! commands through the admin API, and budgets and spend that never cross tenants.

mod common;
mod state_support;

use common::*;
use serde_json::{json, Value};
use state_support::*;

const ADMIN: &str = "adm-token-for-tests-9d41";

struct World {
    gw: Gateway,
    state: tempfile::TempDir,
    _policies: tempfile::TempDir,
    _mock: llmgw_mock_provider::MockHandle,
    acme: NewKey,
    acme_admin: NewKey,
    globex: NewKey,
    globex_admin: NewKey,
}

/// Two tenants, each with a gateway key and an admin key, on a gateway whose policy gives every
/// user 3.5 requests' worth of spend a day.
async fn world() -> World {
    let mock = mock().await;
    let policies = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    budget_policy(
        policies.path(),
        &mock.base_url(),
        &[("chat-a", "a", "a+ok")],
        &format!(
            "  - name: user-daily\n    scope: user\n    period: daily\n    limit_usd: {}\n    on_exceed: block\n",
            mock_cost(100) * 3.5
        ),
    );
    let location = state.path().to_str().expect("utf-8").to_owned();
    let s = ["--state", location.as_str()];
    let acme = create_key(
        &s,
        &[
            "--tenant",
            "acme",
            "--project",
            "search",
            "--assert-users",
            "alice",
        ],
    );
    let acme_admin = create_key(&s, &["--tenant", "acme", "--admin"]);
    let globex = create_key(&s, &["--tenant", "globex", "--assert-users", "*"]);
    let globex_admin = create_key(&s, &["--tenant", "globex", "--admin"]);
    let gw = Gateway::start_on(
        &[
            "--policies",
            policies.path().to_str().expect("utf-8"),
            "--admin-token",
            ADMIN,
        ],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(&location),
    );
    World {
        gw,
        state,
        _policies: policies,
        _mock: mock,
        acme,
        acme_admin,
        globex,
        globex_admin,
    }
}

async fn admin(gw: &Gateway, token: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| b.to_string());
    send(
        method,
        &gw.admin_url(path),
        body.as_deref(),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn ids(a: &Answer) -> Vec<String> {
    a.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|k| k["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_an_admin_token_and_keeps_tenant_admins_in_their_tenant() {
    let w = world().await;
    let gw = &w.gw;
    // No token, a wrong token, a gateway key: refused.
    let none = send("GET", &gw.admin_url("/admin/keys"), None, &[]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.json()["error"]["type"], "authentication_error");
    assert_eq!(
        admin(gw, "adm-token-for-tests-9d42", "GET", "/admin/keys", None)
            .await
            .status,
        401
    );
    let as_key = admin(gw, &w.acme.secret, "GET", "/admin/keys", None).await;
    assert_eq!(as_key.status, 403, "{}", as_key.body);
    assert_eq!(as_key.json()["error"]["type"], "permission_error");
    // The admin token sees every tenant.
    let all = admin(gw, ADMIN, "GET", "/admin/keys", None).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(ids(&all).len(), 4);
    // A tenant admin sees its own tenant only…
    let mine = admin(gw, &w.acme_admin.secret, "GET", "/admin/keys", None).await;
    let mut expected = vec![w.acme.id.clone(), w.acme_admin.id.clone()];
    expected.sort();
    let mut got = ids(&mine);
    got.sort();
    assert_eq!(got, expected);
    // …and every attempt at the other tenant fails.
    let listed = admin(
        gw,
        &w.acme_admin.secret,
        "GET",
        "/admin/keys?tenant=globex",
        None,
    )
    .await;
    assert_eq!(listed.status, 403, "{}", listed.body);
    for (method, path) in [
        ("GET", format!("/admin/keys/{}", w.globex.id)),
        ("POST", format!("/admin/keys/{}/rotate", w.globex.id)),
        ("POST", format!("/admin/keys/{}/revoke", w.globex.id)),
        ("POST", format!("/admin/keys/{}/revoke", w.globex_admin.id)),
    ] {
        let a = admin(gw, &w.acme_admin.secret, method, &path, Some(json!({}))).await;
        assert_eq!(a.status, 404, "{method} {path}: {}", a.body);
        assert_eq!(a.json()["error"]["code"], "key_not_found");
    }
    let foreign = admin(
        gw,
        &w.acme_admin.secret,
        "POST",
        "/admin/keys",
        Some(json!({ "tenant": "globex" })),
    )
    .await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let spend = admin(
        gw,
        &w.acme_admin.secret,
        "GET",
        "/admin/spend?tenant=globex",
        None,
    )
    .await;
    assert_eq!(spend.status, 403, "{}", spend.body);
    // The globex key still works: nothing above touched it.
    let ok = chat_as(gw, &w.globex.bearer(), &chat_for("chat-a", Some(5), None)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A tenant admin manages its own keys: create (in its tenant by default), rotate, revoke.
    let created = admin(
        gw,
        &w.acme_admin.secret,
        "POST",
        "/admin/keys",
        Some(json!({ "labels": { "team": "ops" }, "models": ["chat-a"] })),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let c = created.json();
    assert_eq!(c["key"]["tenant"], "acme");
    let new_id = c["key"]["id"].as_str().expect("id").to_owned();
    let new_secret = c["secret"].as_str().expect("secret").to_owned();
    let shown = admin(
        gw,
        &w.acme_admin.secret,
        "GET",
        &format!("/admin/keys/{new_id}"),
        None,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(!shown.body.contains(&new_secret) && !shown.body.contains("sha256"));
    let revoked = admin(
        gw,
        &w.acme_admin.secret,
        "POST",
        &format!("/admin/keys/{new_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["status"], "revoked");
    // Revoked through the admin API of this replica: refused at once.
    let refused = chat_as(
        gw,
        &format!("Bearer {new_secret}"),
        &chat_for("chat-a", Some(5), None),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    // Admin keys do not serve model requests.
    let as_model = chat_as(
        gw,
        &w.acme_admin.bearer(),
        &chat_for("chat-a", Some(5), None),
    )
    .await;
    assert_eq!(as_model.status, 403, "{}", as_model.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_spend_never_cross_tenants() {
    let w = world().await;
    let gw = &w.gw;
    let body = chat_for("chat-a", Some(100), Some("alice"));
    // `alice` of acme spends her daily budget…
    for _ in 0..3 {
        let a = chat_as(gw, &w.acme.bearer(), &body).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let refused = chat_as(gw, &w.acme.bearer(), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("`user-daily`"), "{}", refused.body);
    // …which is not the budget of `alice` of globex.
    let other = chat_as(gw, &w.globex.bearer(), &body).await;
    assert_eq!(other.status, 200, "{}", other.body);
    // Spend through the admin API: each tenant admin reads its own tenant only.
    let acme_spend = admin(gw, &w.acme_admin.secret, "GET", "/admin/spend", None).await;
    assert_eq!(acme_spend.status, 200, "{}", acme_spend.body);
    let v = acme_spend.json();
    let rows = v["data"].as_array().expect("rows");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["tenant"] == "acme"), "{v}");
    assert_eq!(
        rows.iter()
            .map(|r| r["requests"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        3
    );
    assert!((v["total_usd"].as_f64().expect("total") - 3.0 * mock_cost(100)).abs() < 1e-9);
    assert_eq!(rows[0]["project"], "search");
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["key"], w.acme.id.as_str());
    let globex_spend = admin(gw, &w.globex_admin.secret, "GET", "/admin/spend", None)
        .await
        .json();
    assert!(globex_spend["data"]
        .as_array()
        .expect("rows")
        .iter()
        .all(|r| r["tenant"] == "globex"));
    let everyone = admin(gw, ADMIN, "GET", "/admin/spend", None).await.json();
    assert_eq!(everyone["data"].as_array().expect("rows").len(), 2);
    // The same through the command line against the admin API.
    let url = gw.admin_url("");
    let cli = llmgw(&[
        "spend",
        "--admin-url",
        &url,
        "--admin-token",
        &w.acme_admin.secret,
        "--json",
    ]);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    let rows = cli.json()["data"].as_array().expect("rows").clone();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["tenant"] == "acme"));
    let cross = llmgw(&[
        "spend",
        "--admin-url",
        &url,
        "--admin-token",
        &w.acme_admin.secret,
        "--tenant",
        "globex",
    ]);
    assert_eq!(cross.code, 1, "{}", cross.stdout);
    assert!(cross.stderr.contains("403"), "{}", cross.stderr);
    // Directly on the store, the report covers every tenant, or the one asked for.
    let location = w.state.path().to_str().expect("utf-8");
    let local = spend_once_written(&["spend", "--state", location, "--tenant", "globex"], |o| {
        o.stdout.contains("tenant globex:")
    });
    assert!(local.stdout.contains("tenant globex:") && !local.stdout.contains("tenant acme:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_commands_through_the_admin_api_respect_the_tenant_of_the_token() {
    let w = world().await;
    let url = w.gw.admin_url("");
    let remote = |token: &str, args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin-url", &url, "--admin-token", token]);
        llmgw(&all)
    };
    let listed = remote(&w.acme_admin.secret, &["list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let tenants: Vec<String> = listed
        .json()
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["tenant"].as_str().expect("tenant").to_owned())
        .collect();
    assert_eq!(tenants, vec!["acme", "acme"]);
    let revoke = remote(&w.acme_admin.secret, &["revoke", &w.globex.id]);
    assert_eq!(revoke.code, 1, "{}", revoke.stdout);
    assert!(revoke.stderr.contains("404"), "{}", revoke.stderr);
    let created = remote(ADMIN, &["create", "--tenant", "initech", "--json"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let v = created.json();
    let id = v["key"]["id"].as_str().expect("id").to_owned();
    let secret = v["secret"].as_str().expect("secret").to_owned();
    let ok = chat_as(
        &w.gw,
        &format!("Bearer {secret}"),
        &chat_for("chat-a", Some(5), None),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let rotated = remote(ADMIN, &["rotate", &id, "--grace", "0", "--json"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let new = rotated.json()["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let old = chat_as(
        &w.gw,
        &format!("Bearer {secret}"),
        &chat_for("chat-a", Some(5), None),
    )
    .await;
    assert_eq!(old.status, 401, "no grace: the old secret ends at once");
    let fresh = chat_as(
        &w.gw,
        &format!("Bearer {new}"),
        &chat_for("chat-a", Some(5), None),
    )
    .await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let shown = remote(&w.acme_admin.secret, &["show", &id]);
    assert_eq!(shown.code, 1, "another tenant's key is not shown");
    let no_token = llmgw(&["keys", "list", "--admin-url", &url]);
    assert_eq!(no_token.code, 2);
    assert!(
        no_token.stderr.contains("--admin-token"),
        "{}",
        no_token.stderr
    );
    let bytes = sqlite_bytes(w.state.path());
    for s in [
        &secret,
        &new,
        &w.acme.secret,
        &w.acme_admin.secret,
        &w.globex.secret,
    ] {
        assert!(
            !bytes.contains(s.as_str()),
            "a secret is stored in plain text"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_reach_the_policy_and_a_rolling_budget_applies_to_trial_tenants_only() {
    let setup = OneModel::new(&format!(
        "  - name: trial-rolling\n    scope: tenant\n    when: {TRIAL_TENANT}\n    period: rolling\n    window_secs: 3600\n    limit_usd: {}\n    on_exceed: block\n",
        mock_cost(100) * 2.5
    ))
    .await;
    trial_routing(setup.policies.path());
    let location = setup.state().to_owned();
    let s = ["--state", location.as_str()];
    let labelled = llmgw(&[
        "tenants",
        "label",
        "initech",
        "plan=trial",
        "--state",
        &location,
    ]);
    assert_eq!(labelled.code, 0, "{}", labelled.stderr);
    let trial = create_key(&s, &["--tenant", "initech"]);
    let trial_admin = create_key(&s, &["--tenant", "initech", "--admin"]);
    let paying = create_key(&s, &["--tenant", "acme"]);
    let gw = Gateway::start_on(
        &["--policies", setup.policies(), "--admin-token", ADMIN],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(&location),
    );
    let body = chat_for("chat-a", Some(100), None);
    for _ in 0..2 {
        let a = chat_as(&gw, &trial.bearer(), &body).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-rule"), "trial-tenant");
    }
    let refused = chat_as(&gw, &trial.bearer(), &body).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused.body.contains("`trial-rolling`") && refused.body.contains("rolling 3600 s"),
        "{}",
        refused.body
    );
    for _ in 0..3 {
        let a = chat_as(&gw, &paying.bearer(), &body).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-llmgw-rule"), "everyone-else");
    }
    // A tenant admin reads its labels but may not change its plan; the admin token may.
    let shown = admin(
        &gw,
        &trial_admin.secret,
        "GET",
        "/admin/tenants/initech",
        None,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["labels"]["plan"], "trial");
    let other = admin(&gw, &trial_admin.secret, "GET", "/admin/tenants/acme", None).await;
    assert_eq!(other.status, 403, "{}", other.body);
    let upgrade = json!({ "labels": { "plan": "enterprise" } });
    let denied = admin(
        &gw,
        &trial_admin.secret,
        "PUT",
        "/admin/tenants/initech",
        Some(upgrade.clone()),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let set = admin(&gw, ADMIN, "PUT", "/admin/tenants/initech", Some(upgrade)).await;
    assert_eq!(set.status, 200, "{}", set.body);
    until(
        std::time::Duration::from_secs(3),
        "the new plan reaches the gateway",
        || async { chat_as(&gw, &trial.bearer(), &body).await.status == 200 },
    )
    .await;
}

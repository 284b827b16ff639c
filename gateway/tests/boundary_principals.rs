//! Boundaries between principals, each tried through the real `llmgw` binary and refused with
//! its documented status: a key charges only the end users it owns (the request's `user`
//! field: 403 `user_not_allowed`), user budgets never cross tenants, and a captured signed
//! request cannot sign another (Ed25519 signing keys, of which the gateway stores only the
//! public half: 401 `signature_*`).

mod common;
mod state_support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use state_support::*;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ADMIN: &str = "adm-token-for-boundaries-5c2e";

/// A gateway on the mock with model `chat-a`, a state directory, and a daily user budget of
/// 3.5 answers of 100 tokens.
struct World {
    gw: Gateway,
    setup: OneModel,
}

impl World {
    fn location(&self) -> &str {
        self.setup.state()
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        send(
            method,
            &self.gw.admin_url(path),
            body.as_deref(),
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await
    }
}

/// Starts the world; `keys` runs before the gateway starts (keys made on its state).
async fn world(keys: impl FnOnce(&Path)) -> World {
    let setup = OneModel::new(&format!(
        "  - name: user-daily\n    scope: user\n    period: daily\n    limit_usd: {}\n    on_exceed: block\n",
        mock_cost(100) * 3.5
    ))
    .await;
    keys(setup.state.path());
    let gw = Gateway::start_on(
        &["--policies", setup.policies(), "--admin-token", ADMIN],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        false,
        Some(setup.state()),
    );
    World { gw, setup }
}

/// Asserts a 403 `user_not_allowed` whose message names the `user` field and says `why`.
fn assert_user_refused(a: &Answer, why: &str) {
    assert_eq!(a.status, 403, "{}", a.body);
    let e = &a.json()["error"];
    assert_eq!(e["type"], "permission_error", "{}", a.body);
    assert_eq!(e["code"], "user_not_allowed", "{}", a.body);
    assert_eq!(e["param"], "user", "{}", a.body);
    let message = e["message"].as_str().expect("message");
    assert!(
        message.contains("`user` field") && message.contains(why),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_charges_only_the_end_users_it_owns() {
    let mut made = Vec::new();
    let w = world(|state| {
        let s = ["--state", state.to_str().expect("utf-8")];
        for extra in [
            &["--tenant", "acme", "--user", "alice"][..],
            &["--tenant", "acme"],
            &["--tenant", "acme", "--assert-users", "svc-*,bob"],
        ] {
            made.push(create_key(&s, extra));
        }
    })
    .await;
    let [alice, plain, svc] = <[NewKey; 3]>::try_from(made).expect("three keys");
    let gw = &w.gw;
    let as_user = |user: &str| chat_for("chat-a", Some(100), Some(user));
    // A key that may not assert users cannot charge alice, however often it tries…
    for _ in 0..5 {
        let a = chat_as(gw, &plain.bearer(), &as_user("alice")).await;
        assert_user_refused(&a, "may not assert end users");
    }
    // …nor can a key asserting other users, nor a key bound to another user.
    assert_user_refused(
        &chat_as(gw, &svc.bearer(), &as_user("alice")).await,
        "`svc-*`, `bob`",
    );
    assert_user_refused(
        &chat_as(gw, &alice.bearer(), &as_user("bob")).await,
        "bound to the user `alice`",
    );
    // So alice's whole budget is still hers: three answers (by name, or by her key alone)…
    for body in [
        as_user("alice"),
        chat_for("chat-a", Some(100), None),
        as_user("alice"),
    ] {
        let a = chat_as(gw, &alice.bearer(), &body).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // …and then her budget, not anyone else's, refuses her.
    let spent = chat_as(gw, &alice.bearer(), &as_user("alice")).await;
    assert_eq!(spent.status, 429, "{}", spent.body);
    assert!(spent.body.contains("`user-daily`"), "{}", spent.body);
    // A key asserts the users its patterns match, and no user needs no permission.
    for (key, body) in [
        (&svc, as_user("svc-batch")),
        (&svc, as_user("bob")),
        (&plain, chat_for("chat-a", Some(100), None)),
    ] {
        let a = chat_as(gw, &key.bearer(), &body).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_user_refused(
        &chat_as(gw, &svc.bearer(), &as_user("bobby")).await,
        "may assert only",
    );
    // Through the admin API: a key that may assert every user, shown as such.
    let created = w
        .admin(
            "POST",
            "/admin/keys",
            Some(json!({ "tenant": "acme", "assert_users": ["*"] })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let c = created.json();
    assert_eq!(c["key"]["assert_users"], json!(["*"]));
    let any = format!("Bearer {}", c["secret"].as_str().expect("secret"));
    let a = chat_as(gw, &any, &as_user("carol")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let listed = w.admin("GET", "/admin/keys", None).await.json();
    let shown = listed["data"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == svc.id.as_str())
        .expect("svc key listed")
        .clone();
    assert_eq!(shown["assert_users"], json!(["svc-*", "bob"]));
    assert_eq!(
        w.admin("GET", &format!("/admin/keys/{}", plain.id), None)
            .await
            .json()["assert_users"],
        json!([])
    );
    // `llmgw keys` through the admin API sends them along.
    let url = gw.admin_url("");
    let remote = llmgw(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--assert-users",
        "ops-*",
        "--json",
        "--admin-url",
        &url,
        "--admin-token",
        ADMIN,
    ]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    assert_eq!(remote.json()["key"]["assert_users"], json!(["ops-*"]));
    // `llmgw keys show` and `list` show them too; a key bound to a user asserts no other.
    let s = ["--state", w.location()];
    let show = llmgw(&[&["keys", "show", &svc.id][..], &s].concat());
    assert!(
        show.stdout
            .lines()
            .any(|l| l.starts_with("assert users") && l.ends_with("svc-*,bob")),
        "{}",
        show.stdout
    );
    let list = llmgw(&[&["keys", "list"][..], &s].concat());
    assert!(
        list.stdout.contains("ASSERTS") && list.stdout.contains("svc-*,bob"),
        "{}",
        list.stdout
    );
    let both = llmgw(
        &[
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--user",
                "a",
                "--assert-users",
                "b",
            ][..],
            &s,
        ]
        .concat(),
    );
    assert_eq!(both.code, 2, "{}", both.stdout);
    // The ledger and the request log name the key that asserted each user.
    let spend = spend_once_written(&["spend", "--json", "--state", w.location()], |o| {
        total_is(o, 7.0 * mock_cost(100))
    });
    let rows = spend.json()["data"].as_array().expect("rows").clone();
    let key_of = |user: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["user"] == user)
            .map(|r| r["key"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(key_of("alice"), vec![alice.id.clone()], "{rows:?}");
    assert_eq!(key_of("svc-batch"), vec![svc.id.clone()], "{rows:?}");
    let logs = gw.wait_request_logs(16);
    let line = logs
        .iter()
        .find(|l| l["user"] == "svc-batch")
        .expect("log line of svc-batch");
    assert_eq!(line["key_id"], svc.id.as_str());
    let refused = logs
        .iter()
        .filter(|l| l["status"] == 403 && l["key_id"] == plain.id.as_str())
        .count();
    assert_eq!(refused, 5, "each refusal is logged with the key that tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_budgets_are_kept_per_tenant() {
    let mut made = Vec::new();
    let w = world(|state| {
        let s = ["--state", state.to_str().expect("utf-8")];
        for tenant in ["acme", "globex"] {
            made.push(create_key(&s, &["--tenant", tenant, "--assert-users", "*"]));
        }
    })
    .await;
    let [acme, globex] = <[NewKey; 2]>::try_from(made).expect("two keys");
    let body = chat_for("chat-a", Some(100), Some("alice"));
    // Each tenant's `alice` has a budget of her own: three answers, then 429, in both.
    for key in [&acme, &globex] {
        for _ in 0..3 {
            let a = chat_as(&w.gw, &key.bearer(), &body).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
        let refused = chat_as(&w.gw, &key.bearer(), &body).await;
        assert_eq!(refused.status, 429, "{}", refused.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_key_may_assert_any_user() {
    let setup = OneModel::new("").await;
    let gw = Gateway::start_on(
        &["--policies", setup.policies()],
        &[("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET)],
        true,
        None,
    );
    let a = chat_as(
        &gw,
        &format!("Bearer {KEY}"),
        &chat_for("chat-a", Some(5), Some("anyone")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The signature header of `body` at `t` with a private key as `keys create --signing` prints
/// it (base64 of the seed), computed as the README tells clients to.
fn ed25519(private: &str, t: i64, body: &str) -> String {
    let seed: [u8; 32] = B64
        .decode(private)
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let signature = SigningKey::from_bytes(&seed).sign(format!("{t}.{body}").as_bytes());
    format!("t={t},ed25519={}", B64.encode(signature.to_bytes()))
}

/// The HMAC signature of earlier versions, keyed with the bearer secret: what anyone holding
/// one captured request could compute for any body.
fn hmac_v1(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a chat body with this bearer and signature header.
async fn signed(gw: &Gateway, bearer: &str, signature: Option<&str>, body: &str) -> Answer {
    let mut h = vec![("authorization", bearer)];
    if let Some(s) = signature {
        h.push(("x-llmgw-signature", s));
    }
    send("POST", &gw.url("/v1/chat/completions"), Some(body), &h).await
}

/// Asserts a 401 with this code whose message says `words`.
fn assert_401(a: &Answer, code: &str, words: &str) {
    assert_eq!(a.status, 401, "{}", a.body);
    let e = &a.json()["error"];
    assert_eq!(e["type"], "authentication_error", "{}", a.body);
    assert_eq!(e["code"], code, "{}", a.body);
    assert!(
        e["message"].as_str().expect("message").contains(words),
        "{}",
        a.body
    );
}

/// A chat body that differs for each `n`.
fn nth_body(n: u64) -> String {
    chat_for("chat-a", Some(n), None)
}

/// POSTs the `n`th body signed now with `private`.
async fn signed_by(gw: &Gateway, bearer: &str, private: &str, n: u64) -> Answer {
    let body = nth_body(n);
    signed(
        gw,
        bearer,
        Some(&ed25519(private, unix_now(), &body)),
        &body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_signed_request_cannot_sign_another() {
    let client_dir = tempfile::tempdir().expect("tempdir");
    let client_private = B64.encode(rand::random::<[u8; 32]>());
    let client_public = {
        let seed: [u8; 32] = B64
            .decode(&client_private)
            .expect("b64")
            .try_into()
            .expect("32");
        B64.encode(SigningKey::from_bytes(&seed).verifying_key().to_bytes())
    };
    let public_file = client_dir.path().join("signing.pub");
    std::fs::write(&public_file, format!("{client_public}\n")).expect("write");
    let public_arg = format!("file:{}", public_file.display());
    let mut made = Vec::new();
    let w = world(|state| {
        let s = ["--state", state.to_str().expect("utf-8")];
        made.push(create_key(&s, &["--tenant", "acme", "--signing"]));
        made.push(create_key(
            &s,
            &["--tenant", "acme", "--signing-public-key", &public_arg],
        ));
        made.push(create_key(&s, &["--tenant", "acme"]));
    })
    .await;
    let [key, held, plain] = <[NewKey; 3]>::try_from(made).expect("three keys");
    let gw = &w.gw;
    let private = key
        .signing_key
        .clone()
        .expect("`--signing` prints the private signing key once");
    assert_eq!(held.signing_key, None, "a client-held key is never printed");
    let body = nth_body(3);
    assert_401(
        &signed(gw, &key.bearer(), None, &body).await,
        "signature_missing",
        "missing",
    );
    assert_401(
        &signed(gw, &key.bearer(), Some("ed25519=abc"), &body).await,
        "signature_malformed",
        "malformed",
    );
    // A correct signature is accepted; this is the request an eavesdropper captures.
    let t = unix_now();
    let captured = ed25519(&private, t, &body);
    let ok = signed(gw, &key.bearer(), Some(&captured), &body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // Sent again, it is refused…
    assert_401(
        &signed(gw, &key.bearer(), Some(&captured), &body).await,
        "signature_replayed",
        "already used",
    );
    // …and the bearer secret, the signature and the body it holds sign no other body: the
    // captured signature does not match one, nor does the old HMAC keyed by the bearer secret,
    // nor an Ed25519 key derived from it.
    let other = nth_body(4);
    assert_401(
        &signed(gw, &key.bearer(), Some(&captured), &other).await,
        "signature_invalid",
        "does not match",
    );
    assert_401(
        &signed(
            gw,
            &key.bearer(),
            Some(&hmac_v1(&key.secret, t, &other)),
            &other,
        )
        .await,
        "signature_unsupported",
        "moved to Ed25519",
    );
    let derived = B64.encode(Sha256::digest(key.secret.as_bytes()));
    assert_401(
        &signed(
            gw,
            &key.bearer(),
            Some(&ed25519(&derived, t, &other)),
            &other,
        )
        .await,
        "signature_invalid",
        "does not match",
    );
    // A stale signature is refused even with the right key.
    assert_401(
        &signed(
            gw,
            &key.bearer(),
            Some(&ed25519(&private, t - 3600, &other)),
            &other,
        )
        .await,
        "signature_stale",
        "stale",
    );
    // `llmgw sign` signs for a client, from a key file and a body file.
    let key_file = client_dir.path().join("signing.key");
    std::fs::write(&key_file, &private).expect("write");
    let body_file = client_dir.path().join("body.json");
    std::fs::write(&body_file, &other).expect("write");
    let out = llmgw(&[
        "sign",
        "--key",
        &format!("file:{}", key_file.display()),
        "--body",
        body_file.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let header = out.stdout.trim();
    assert!(
        header.starts_with("t=") && header.contains(",ed25519="),
        "{header}"
    );
    let a = signed(gw, &key.bearer(), Some(header), &other).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A key registered with a client-held public key verifies that client's signatures only.
    let by_client = ed25519(&client_private, unix_now(), &body);
    let a = signed(gw, &held.bearer(), Some(&by_client), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let by_other = ed25519(&private, unix_now(), &nth_body(5));
    assert_401(
        &signed(gw, &held.bearer(), Some(&by_other), &nth_body(5)).await,
        "signature_invalid",
        "does not match",
    );
    let shown = w
        .admin("GET", &format!("/admin/keys/{}", held.id), None)
        .await;
    assert_eq!(shown.json()["signing_public_key"], client_public.as_str());
    // The admin API generates a signing keypair too, and shows its private key once.
    let created = w
        .admin(
            "POST",
            "/admin/keys",
            Some(json!({ "tenant": "acme", "signing": true })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let c = created.json();
    let api_private = c["signing_key"].as_str().expect("signing key").to_owned();
    let api_bearer = format!("Bearer {}", c["secret"].as_str().expect("secret"));
    let api_id = c["key"]["id"].as_str().expect("id").to_owned();
    let a = signed(
        gw,
        &api_bearer,
        Some(&ed25519(&api_private, unix_now(), &body)),
        &body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let again = w.admin("GET", &format!("/admin/keys/{api_id}"), None).await;
    assert!(!again.body.contains(&api_private));
    // Keys without signing ignore the header.
    let a = signed(gw, &plain.bearer(), Some(&captured), &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // No private signing key is stored or logged.
    let stored = sqlite_bytes(w.setup.state.path());
    let logs = gw.logs();
    for secret in [&private, &api_private, &client_private] {
        assert!(!stored.contains(secret.as_str()), "a private key is stored");
        assert!(!logs.contains(secret.as_str()), "a private key is logged");
    }
    for secret in [&key.secret, &held.secret, &plain.secret] {
        assert!(!stored.contains(secret.as_str()) && !logs.contains(secret.as_str()));
    }
    assert!(stored.contains(&client_public), "the public key is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_the_old_signing_key_works_until_its_grace_ends() {
    let mut made = Vec::new();
    let w = world(|state| {
        let s = ["--state", state.to_str().expect("utf-8")];
        made.push(create_key(&s, &["--tenant", "acme", "--signing"]));
    })
    .await;
    let key = made.pop().expect("key");
    let old = key.signing_key.clone().expect("signing key");
    let s = ["--state", w.location()];
    let rotated = llmgw(
        &[
            &["keys", "rotate", &key.id, "--grace", "5s", "--json"][..],
            &s,
        ]
        .concat(),
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let r = rotated.json();
    let new = r["signing_key"]
        .as_str()
        .expect("a new signing key")
        .to_owned();
    let bearer = format!("Bearer {}", r["secret"].as_str().expect("secret"));
    assert_ne!(new, old);
    // Each request signs a body of its own (a signature is accepted once).
    let n = AtomicU64::new(1);
    let next = || n.fetch_add(1, Ordering::Relaxed);
    let gw = &w.gw;
    // Inside the grace window both signing keys work…
    assert_eq!(signed_by(gw, &bearer, &old, next()).await.status, 200);
    assert_eq!(signed_by(gw, &bearer, &new, next()).await.status, 200);
    // …then the old one is refused, and the new one still works.
    until(
        Duration::from_secs(20),
        "the old signing key is refused",
        || {
            let answer = signed_by(gw, &bearer, &old, next());
            async move { answer.await.status == 401 }
        },
    )
    .await;
    assert_401(
        &signed_by(gw, &bearer, &old, next()).await,
        "signature_invalid",
        "does not match",
    );
    assert_eq!(signed_by(gw, &bearer, &new, next()).await.status, 200);
    // Rotated through the admin API without grace, the previous key ends at once.
    let answer = w
        .admin(
            "POST",
            &format!("/admin/keys/{}/rotate", key.id),
            Some(json!({ "grace": "0" })),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let v = answer.json();
    let newest = v["signing_key"].as_str().expect("signing key").to_owned();
    let bearer = format!("Bearer {}", v["secret"].as_str().expect("secret"));
    let body = nth_body(99);
    let by_new = ed25519(&new, unix_now(), &body);
    assert_401(
        &signed(&w.gw, &bearer, Some(&by_new), &body).await,
        "signature_invalid",
        "does not match",
    );
    let by_newest = ed25519(&newest, unix_now(), &body);
    assert_eq!(
        signed(&w.gw, &bearer, Some(&by_newest), &body).await.status,
        200
    );
    let stored = sqlite_bytes(w.setup.state.path());
    for private in [&old, &new, &newest] {
        assert!(!stored.contains(private.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set LLMGW_TEST_REDIS_URL and run with --include-ignored"]
async fn redis_holds_public_signing_keys_only() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let s = ["--state", url.as_str(), "--state-prefix", prefix.as_str()];
    let key = create_key(&s, &["--tenant", "acme", "--signing"]);
    let rotated = llmgw(
        &[
            &["keys", "rotate", &key.id, "--grace", "1h", "--json"][..],
            &s,
        ]
        .concat(),
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let r = rotated.json();
    let stored = redis_dump(&url, &prefix).await;
    for private in [
        key.signing_key.as_deref().expect("signing key"),
        r["signing_key"].as_str().expect("signing key"),
    ] {
        assert!(
            !stored.contains(private),
            "a private signing key is in Redis"
        );
    }
    let public = r["key"]["signing_public_key"].as_str().expect("public key");
    assert!(stored.contains(public));
    cleanup_redis(&url, &prefix).await;
}

//! GitOps against real git hosts on 127.0.0.1: the real `llmgw` binary following a branch
//! served by git's smart HTTP behind TLS (a CA made for the test, token auth) and by an
//! OpenSSH `sshd` (a passphrase-protected deploy key, a `known_hosts` file); push
//! notifications on `POST /hooks/git` that fetch from the HTTPS host at once; and SSH-signed
//! commits, verified in the shallow mirror, when signatures are required.
//!
//! Every test proves a change went live by waiting for `/admin/status` to show it, with a
//! wait that fails loudly; none asserts on wall-clock time.

mod common;
mod git_hosts;

use common::{fails_with, git, send, serve_with_env, Gateway};
use git_hosts::{bare_remote, keygen, push, sshd_binary, HttpsGitServer, Sshd};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROVIDERS: &str = "\
apiVersion: llmgw.dev/v1
kind: Providers
providers:
  - name: sim
    type: simulated
    simulated: { ttft_ms: 1, tokens_per_second: 100000, jitter: 0, error_rate: 0, rate_limit_rate: 0, output_tokens: 4 }
";

fn models(name: &str) -> String {
    format!(
        "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: {name}\n    class: chat\n    quality: 0.8\n    context_window: 32000\n    capabilities: [chat]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: sim\n        upstream_model: {name}-1\n"
    )
}

/// Writes `files` and commits them all (signed with the SSH key `sign_with`, if given);
/// returns the commit id.
fn commit(dir: &Path, files: &[(&str, &str)], message: &str, sign_with: Option<&Path>) -> String {
    for (path, text) in files {
        std::fs::write(dir.join(path), text).expect("write policy");
    }
    git(dir, &["add", "-A"]);
    match sign_with {
        Some(key) => {
            let key = format!("user.signingkey={}", key.display());
            git(
                dir,
                &[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &key,
                    "commit",
                    "-q",
                    "-S",
                    "-m",
                    message,
                ],
            );
        }
        None => {
            git(dir, &["commit", "-q", "-m", message]);
        }
    }
    git(dir, &["rev-parse", "HEAD"])
}

/// A work tree on `main` with one good commit; its id.
fn init_work(dir: &Path, sign_with: Option<&Path>) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    commit(
        dir,
        &[
            ("providers.yaml", PROVIDERS),
            ("models.yaml", &models("first")),
        ],
        "One simulated model",
        sign_with,
    )
}

/// Breaks `models.yaml`; the commit id.
fn break_it(dir: &Path) -> String {
    commit(
        dir,
        &[("models.yaml", "kind: [\n")],
        "Break the models",
        None,
    )
}

fn revert(dir: &Path, id: &str) -> String {
    git(dir, &["revert", "--no-edit", id]);
    git(dir, &["rev-parse", "HEAD"])
}

/// The `policy` object of `/admin/status`.
async fn policy(gw: &Gateway) -> Value {
    let a = gw.admin_get("/admin/status").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["policy"].clone()
}

/// Waits until the policy status satisfies `done`; fails the test after `limit`.
async fn wait_policy(
    gw: &Gateway,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let p = policy(gw).await;
        if done(&p) {
            return p;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; status: {p:#}\nlog:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn applied(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |p| p["applied_revision"]["id"] == id
}

fn rejected(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |p| p["attempted_revision"]["id"] == id && p["attempted_revision"]["result"] == "failed"
}

/// A generous bound for a change to show: polling runs every 100 ms in these tests.
const LIVE: Duration = Duration::from_secs(20);

/// Good commit live, broken one rejected, revert live: the core loop on any remote.
async fn good_broken_revert(gw: &Gateway, work: &Path, c1: &str, publish: impl Fn()) {
    wait_policy(gw, LIVE, "the first commit serves", applied(c1)).await;
    let c2 = break_it(work);
    publish();
    let p = wait_policy(gw, LIVE, "the broken commit is tried", rejected(&c2)).await;
    assert_eq!(p["applied_revision"]["id"], c1, "{p:#}");
    assert_eq!(p["serving_last_known_good"], true, "{p:#}");
    assert!(
        p["attempted_revision"]["diagnostics"][0]["code"].is_string(),
        "{p:#}"
    );
    let c3 = revert(work, &c2);
    publish();
    let p = wait_policy(gw, LIVE, "the revert goes live", applied(&c3)).await;
    assert_eq!(p["serving_last_known_good"], false, "{p:#}");
}

/// Asserts that `secret` shows nowhere the gateway speaks: its log, banner, status, metrics.
async fn nowhere(gw: &Gateway, secret: &str) {
    assert!(!gw.logs().contains(secret), "the log shows the credential");
    assert!(
        !gw.banner.join("\n").contains(secret),
        "the banner shows it"
    );
    let status = gw.admin_get("/admin/status").await.body;
    assert!(!status.contains(secret), "/admin/status shows it");
    assert!(!gw.metrics().await.contains(secret), "/metrics shows it");
}

/// How many mirrors under the state directory `state` are shallow; fails the test if any is not.
fn shallow_mirrors(state: &Path) -> usize {
    let mirrors: Vec<PathBuf> = std::fs::read_dir(state.join("repos"))
        .expect("mirrors under the state directory")
        .map(|e| e.expect("entry").path())
        .collect();
    for m in &mirrors {
        assert!(m.join("shallow").exists(), "{} is not shallow", m.display());
    }
    mirrors.len()
}

fn args_of(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// The environment variable the gateways of these tests read the HTTPS token from.
const TOKEN_VAR: &str = "LLMGW_TEST_GIT_TOKEN";

/// A work tree whose `main` is pushed to a bare repository served over HTTPS.
struct HttpsRepo {
    work: PathBuf,
    server: HttpsGitServer,
    url: String,
    ca: String,
}

impl HttpsRepo {
    /// Makes the work tree under `dir` with one good commit (signed with `sign_with`), pushes
    /// it and serves it with `token`; the first commit's id.
    async fn start(dir: &Path, token: &str, sign_with: Option<&Path>) -> (HttpsRepo, String) {
        let work = dir.join("work");
        let c1 = init_work(&work, sign_with);
        let hosted = dir.join("hosted");
        std::fs::create_dir(&hosted).expect("mkdir");
        bare_remote(&hosted, "policies", &work);
        push(&work);
        let server = HttpsGitServer::start(&hosted, token, dir).await;
        let url = format!("{}/policies.git", server.base);
        let ca = server.ca_file.display().to_string();
        let repo = HttpsRepo {
            work,
            server,
            url,
            ca,
        };
        (repo, c1)
    }

    /// `--repo URL --repo-token env:… --repo-ca-file CA` and `more`.
    fn args(&self, more: &[&str]) -> Vec<String> {
        let base = [
            "--repo",
            &self.url,
            "--repo-token",
            &format!("env:{TOKEN_VAR}"),
            "--repo-ca-file",
            &self.ca,
        ]
        .map(str::to_owned);
        base.into_iter()
            .chain(more.iter().map(|a| (*a).to_owned()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_remote_with_a_token_serves_refuses_and_survives_an_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "ghp_llmgwTestToken7c1e";
    let (hosted, c1) = HttpsRepo::start(dir.path(), token, None).await;
    let (work, url, ca) = (&hosted.work, hosted.url.clone(), hosted.ca.clone());
    let state = dir.path().join("state");
    let args = hosted.args(&["--poll-interval", "100ms"]);
    let env = [(TOKEN_VAR, token)];
    let gw = Gateway::start_on(&args_of(&args), &env, true, state.to_str());
    good_broken_revert(&gw, work, &c1, || push(work)).await;

    // The mirror lives under the state directory and is shallow.
    assert_eq!(shallow_mirrors(&state), 1, "one shallow mirror");

    // A wrong token, no CA, a password in the URL: refused at start-up, saying why.
    let failed = serve_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &url,
            "--repo-token",
            "env:TOKEN",
            "--repo-ca-file",
            &ca,
        ],
        &[("TOKEN", "ghp_wrongToken0000")],
    );
    fails_with(&failed, &["HTTP 401", "--repo-password"]);
    assert!(
        !failed.stderr.contains("ghp_wrongToken0000"),
        "{}",
        failed.stderr
    );
    let failed = serve_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &url,
            "--repo-token",
            "env:TOKEN",
        ],
        &[("TOKEN", token)],
    );
    fails_with(&failed, &["invalid peer certificate"]);
    let with_password = url.replace("https://", "https://bob:pw-in-url-4417@");
    let failed = serve_with_env(&["--listen", "127.0.0.1:0", "--repo", &with_password], &[]);
    fails_with(&failed, &["carries a password", "bob:***@"]);
    assert!(
        !failed.stderr.contains("pw-in-url-4417"),
        "{}",
        failed.stderr
    );

    // The remote goes down: the last good revision keeps serving and status says why.
    let serving = policy(&gw).await["applied_revision"]["id"].clone();
    drop(hosted.server);
    let p = wait_policy(&gw, LIVE, "status reports the outage", |p| {
        p["source_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach"))
    })
    .await;
    assert_eq!(p["applied_revision"]["id"], serving, "{p:#}");
    let answer = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat("first", false, 4),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    nowhere(&gw, token).await;
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("x-access-token:{token}"),
    );
    nowhere(&gw, &basic).await;

    // Restarted while the remote is still down: the last good revision, read back from the
    // mirror, serves, and the banner and status say why.
    drop(gw);
    let gw = Gateway::start_on(&args_of(&args), &env, true, state.to_str());
    assert!(
        gw.banner.iter().any(|l| l.contains("last known good")),
        "{:?}",
        gw.banner
    );
    let p = policy(&gw).await;
    assert_eq!(p["applied_revision"]["id"], serving, "{p:#}");
    assert!(
        p["source_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{p:#}"
    );
    nowhere(&gw, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_remote_with_a_deploy_key_and_known_hosts() {
    let Some(sshd_bin) = sshd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let c1 = init_work(&work, None);
    let hosted = dir.path().join("hosted");
    std::fs::create_dir(&hosted).expect("mkdir");
    let bare = bare_remote(&hosted, "policies", &work);
    push(&work);
    let passphrase = "deploy-passphrase-93b1";
    let key = dir.path().join("deploy_key");
    let public = keygen(&key, passphrase);
    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir(&sshd_dir).expect("mkdir");
    let sshd = Sshd::start(&sshd_bin, &sshd_dir, &public);
    let url = sshd.url(&bare);
    let key_arg = key.display().to_string();
    let known = sshd.known_hosts.display().to_string();
    let args = [
        "--repo".to_owned(),
        url.clone(),
        "--repo-ssh-key".to_owned(),
        key_arg.clone(),
        "--repo-ssh-passphrase".to_owned(),
        "env:LLMGW_TEST_SSH_PASSPHRASE".to_owned(),
        "--repo-known-hosts".to_owned(),
        known.clone(),
        "--poll-interval".to_owned(),
        "100ms".to_owned(),
    ];
    let env = [("LLMGW_TEST_SSH_PASSPHRASE", passphrase)];
    let state = dir.path().join("state");
    let gw = Gateway::start_on(&args_of(&args), &env, true, state.to_str());
    good_broken_revert(&gw, &work, &c1, || push(&work)).await;
    assert_eq!(shallow_mirrors(&state), 1, "one shallow mirror");
    nowhere(&gw, passphrase).await;

    // A host key that is not the one on record: refused before any key is offered.
    let other = dir.path().join("other_host_key");
    let other_public = keygen(&other, "");
    let wrong_known = dir.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong_known,
        format!("[127.0.0.1]:{} {other_public}\n", sshd.port),
    )
    .expect("known_hosts");
    let failed = serve_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &url,
            "--repo-ssh-key",
            &key_arg,
            "--repo-ssh-passphrase",
            "env:PASS",
            "--repo-known-hosts",
            wrong_known.to_str().expect("utf-8"),
        ],
        &[("PASS", passphrase)],
    );
    let host = format!("[127.0.0.1]:{}", sshd.port);
    fails_with(&failed, &["host key verification failed", &host, "SHA256:"]);
    assert!(!failed.stderr.contains(passphrase), "{}", failed.stderr);

    // A key the server does not accept.
    let stranger = dir.path().join("stranger_key");
    keygen(&stranger, "");
    let failed = serve_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &url,
            "--repo-ssh-key",
            stranger.to_str().expect("utf-8"),
            "--repo-known-hosts",
            &known,
        ],
        &[],
    );
    fails_with(&failed, &["refused the key"]);

    // The deploy key with a wrong passphrase: refused naming the key, the passphrase unshown.
    let wrong = "not-the-passphrase-5521";
    let failed = serve_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &url,
            "--repo-ssh-key",
            &key_arg,
            "--repo-ssh-passphrase",
            "env:PASS",
            "--repo-known-hosts",
            &known,
        ],
        &[("PASS", wrong)],
    );
    fails_with(&failed, &["cannot use the SSH key", &key_arg]);
    assert!(!failed.stderr.contains(wrong), "{}", failed.stderr);
}

/// The HMAC-SHA256 signature GitHub sends for `body`.
fn github_signature(secret: &str, body: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_fetches_at_once_with_polling_a_minute_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "ghp_llmgwHookTest51aa";
    let (hosted, c1) = HttpsRepo::start(dir.path(), token, None).await;
    let work = &hosted.work;
    let secret = "hook-secret-5d20";
    let args = hosted.args(&[
        "--poll-interval",
        "1m",
        "--webhook-secret",
        "env:LLMGW_TEST_HOOK",
    ]);
    let gw = Gateway::start_with(
        &args_of(&args),
        &[("LLMGW_TEST_HOOK", secret), (TOKEN_VAR, token)],
        true,
    );
    wait_policy(&gw, LIVE, "the first commit serves", applied(&c1)).await;
    let hook = gw.admin_url("/hooks/git");
    let body = r#"{"ref":"refs/heads/main"}"#;

    // Unsigned or wrongly signed notifications are refused.
    let none = send("POST", &hook, Some(body), &[("x-github-event", "push")]).await;
    assert_eq!(none.status, 401, "{}", none.body);
    let wrong = github_signature("not-the-secret", body);
    let bad = send(
        "POST",
        &hook,
        Some(body),
        &[("x-hub-signature-256", &wrong)],
    )
    .await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    let bad = send("POST", &hook, Some(body), &[("x-gitlab-token", "guess")]).await;
    assert_eq!(bad.status, 401, "{}", bad.body);

    // A signed GitHub push: live long before the next poll, a minute away. The wait below
    // is far shorter than that minute, so only the webhook can explain the change.
    let c2 = commit(
        work,
        &[("models.yaml", &models("second"))],
        "Rename the model",
        None,
    );
    push(work);
    let signed = github_signature(secret, body);
    let started = Instant::now();
    let ok = send(
        "POST",
        &hook,
        Some(body),
        &[("x-hub-signature-256", &signed), ("x-github-event", "push")],
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    wait_policy(
        &gw,
        Duration::from_secs(10),
        "the webhook's fetch",
        applied(&c2),
    )
    .await;
    eprintln!(
        "commit-to-live through the webhook: {} ms",
        started.elapsed().as_millis()
    );

    // GitLab's token header works the same.
    let c3 = commit(
        work,
        &[("models.yaml", &models("third"))],
        "Rename again",
        None,
    );
    push(work);
    let ok = send("POST", &hook, Some(body), &[("x-gitlab-token", secret)]).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    wait_policy(
        &gw,
        Duration::from_secs(10),
        "the GitLab hook's fetch",
        applied(&c3),
    )
    .await;
    nowhere(&gw, secret).await;
    nowhere(&gw, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_an_allowed_key_go_live_when_signatures_are_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = dir.path().join("signer");
    let signer_public = keygen(&signer, "");
    let stranger = dir.path().join("stranger");
    keygen(&stranger, "");
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("# who may change the policy\nauthor@example.com {signer_public}\n"),
    )
    .expect("allowed signers");
    let token = "ghp_llmgwSignedTest9e0f";
    let (hosted, c1) = HttpsRepo::start(dir.path(), token, Some(&signer)).await;
    let work = &hosted.work;
    let env = [(TOKEN_VAR, token)];
    let allowed_arg = allowed.display().to_string();
    let signed_args = hosted.args(&["--require-signed-commits", &allowed_arg]);
    let mut polled = signed_args.clone();
    polled.extend(["--poll-interval".to_owned(), "100ms".to_owned()]);
    let gw = Gateway::start_with(&args_of(&polled), &env, true);
    wait_policy(&gw, LIVE, "the signed first commit serves", applied(&c1)).await;

    let check = |p: &Value, needle: &str| {
        let d = &p["attempted_revision"]["diagnostics"][0];
        assert_eq!(d["code"], "git/signature", "{p:#}");
        assert!(
            d["message"].as_str().is_some_and(|m| m.contains(needle)),
            "{p:#}"
        );
        assert_eq!(p["applied_revision"]["id"], c1, "{p:#}");
    };
    let c2 = commit(
        work,
        &[("models.yaml", &models("unsigned"))],
        "Unsigned change",
        None,
    );
    push(work);
    let p = wait_policy(&gw, LIVE, "the unsigned commit is rejected", rejected(&c2)).await;
    check(&p, "is not signed");
    let c3 = commit(
        work,
        &[("models.yaml", &models("stranger"))],
        "Signed by someone else",
        Some(&stranger),
    );
    push(work);
    let p = wait_policy(
        &gw,
        LIVE,
        "the stranger's commit is rejected",
        rejected(&c3),
    )
    .await;
    check(&p, "not an allowed signer");
    let c4 = commit(
        work,
        &[("models.yaml", &models("signed"))],
        "Signed change",
        Some(&signer),
    );
    push(work);
    wait_policy(&gw, LIVE, "the signed commit goes live", applied(&c4)).await;

    // With an unsigned head and nothing good on record, the gateway does not start.
    let c5 = commit(
        work,
        &[("models.yaml", &models("again"))],
        "Unsigned again",
        None,
    );
    push(work);
    let mut once = signed_args.clone();
    once.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let failed = serve_with_env(&args_of(&once), &env);
    fails_with(&failed, &[&c5]);
    assert!(failed.stderr.contains("is not signed"), "{}", failed.stderr);

    // Nor on an unsigned revision recorded as good before signatures were required.
    let state = dir.path().join("state-before-signing");
    let state_arg = state.display().to_string();
    let unsigned_args = hosted.args(&[]);
    let before = Gateway::start_on(&args_of(&unsigned_args), &env, true, Some(&state_arg));
    wait_policy(&before, LIVE, "the unsigned head serves", applied(&c5)).await;
    drop(before);
    once.extend(["--state".to_owned(), state_arg.clone()]);
    let failed = serve_with_env(&args_of(&once), &env);
    fails_with(&failed, &[&c5]);
    assert!(
        failed
            .stderr
            .contains("no last known good revision to serve (error[git/signature]"),
        "{}",
        failed.stderr
    );
}

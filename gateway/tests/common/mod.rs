//! Helpers of the end-to-end tests: the real `llmgw` binary in a child process, policies in
//! temporary directories, the fault-injecting mock provider on an ephemeral port, and a small
//! HTTP client.
#![allow(dead_code)]

pub mod python;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The dev key every test gateway accepts.
pub const KEY: &str = "llmgw_test_key";

/// The admin token of test gateways started without `--admin-token` among their arguments.
pub const ADMIN_TOKEN: &str = "llmgw_test_admin_token";

/// A running `llmgw serve`.
pub struct Gateway {
    /// The child process.
    pub child: Child,
    /// `host:port` of the API.
    pub addr: String,
    /// `host:port` of the admin listener (`/metrics`, `/admin/…`).
    pub admin_addr: String,
    /// The admin token it accepts.
    pub admin_token: String,
    /// Where its stderr (JSON logs) goes.
    pub log: PathBuf,
    /// Start-up lines printed on stdout.
    pub banner: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with `args` (plus a dev key, ephemeral ports for the API and the admin
    /// listener, [`ADMIN_TOKEN`] unless `args` give `--admin-token`, and a temp state dir).
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_with(args, &[], true)
    }

    /// Starts the binary with extra environment variables; `dev_key` adds `--dev-key`.
    pub fn start_with(args: &[&str], env: &[(&str, &str)], dev_key: bool) -> Gateway {
        Gateway::start_on(args, env, dev_key, None)
    }

    /// Starts the binary on the state store `state` (a directory or `redis://…`; a temp
    /// directory when `None`).
    pub fn start_on(
        args: &[&str],
        env: &[(&str, &str)],
        dev_key: bool,
        state: Option<&str>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmgw"));
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0");
        cmd.arg("--admin-listen").arg("127.0.0.1:0");
        let admin_token = match args.iter().position(|a| *a == "--admin-token") {
            Some(i) => args.get(i + 1).copied().unwrap_or_default().to_owned(),
            None => {
                cmd.arg("--admin-token").arg(ADMIN_TOKEN);
                ADMIN_TOKEN.to_owned()
            }
        };
        match state {
            Some(s) => cmd.arg("--state").arg(s),
            None => cmd.arg("--state").arg(dir.path().join("state")),
        };
        if dev_key {
            cmd.arg("--dev-key").arg(KEY);
        }
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("LLMGW_DEV_KEY")
            .env("LLMGW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("llmgw starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut banner = Vec::new();
        let mut addr = None;
        let mut admin_addr = None;
        // The banner ends with the `try:` line (or the key line when no model exists).
        for _ in 0..8 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end().to_owned();
            if let Some(a) = line.strip_prefix("llmgw listening on http://") {
                addr = Some(a.to_owned());
            }
            if let Some(a) = admin_addr_in(&line) {
                admin_addr = Some(a);
            }
            let last = line.starts_with("try:");
            banner.push(line);
            if last {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let (Some(addr), Some(admin_addr)) = (addr, admin_addr) else {
            let _ = child.kill();
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("llmgw did not start: {banner:?}\n{err}");
        };
        Gateway {
            child,
            addr,
            admin_addr,
            admin_token,
            log,
            banner,
            _dir: dir,
        }
    }

    /// `http://addr` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://admin_addr` + path: the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// GETs `path` on the admin listener with the admin token.
    pub async fn admin_get(&self, path: &str) -> Answer {
        self.admin_send("GET", path, None).await
    }

    /// Sends a request to the admin listener with the admin token.
    pub async fn admin_send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let auth = format!("Bearer {}", self.admin_token);
        send(
            method,
            &self.admin_url(path),
            body,
            &[("authorization", &auth)],
        )
        .await
    }

    /// The `/metrics` text, read with the admin token.
    pub async fn metrics(&self) -> String {
        let a = self.admin_get("/metrics").await;
        assert_eq!(a.status, 200, "/metrics: {}", a.body);
        a.body
    }

    /// The log written so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON request log lines.
    pub fn request_logs(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "request")
            .collect()
    }

    /// The request log lines once at least `n` are written (logs are written in the
    /// background; waits up to 10 s).
    pub fn wait_request_logs(&self, n: usize) -> Vec<Value> {
        let start = std::time::Instant::now();
        loop {
            let logs = self.request_logs();
            if logs.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The admin listener's `host:port` when `line` is the banner line that names it.
pub fn admin_addr_in(line: &str) -> Option<String> {
    let (_, rest) = line
        .strip_prefix("admin API")?
        .split_once("listening on http://")?;
    rest.split_whitespace().next().map(str::to_owned)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer as the client saw it.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body text.
    pub body: String,
}

impl Answer {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The SSE events of a streamed body: (event name, data).
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        self.body
            .split("\n\n")
            .filter_map(|block| {
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = Some(e.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(d.to_owned());
                    }
                }
                data.map(|d| (event, d))
            })
            .collect()
    }

    /// The streamed answer's text.
    pub fn streamed_text(&self) -> String {
        self.events()
            .iter()
            .filter(|(e, d)| e.is_none() && d != "[DONE]")
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The `model` of every streamed chunk, in order, without repeats.
    pub fn streamed_models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (e, d) in self.events() {
            if e.is_some() || d == "[DONE]" {
                continue;
            }
            if let Some(m) = serde_json::from_str::<Value>(&d)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_owned))
            {
                if out.last() != Some(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// Whether the stream ended with `[DONE]`.
    pub fn done(&self) -> bool {
        self.events().iter().any(|(_, d)| d == "[DONE]")
    }

    /// Whether the stream carries an in-band error event.
    pub fn stream_error(&self) -> bool {
        self.events()
            .iter()
            .any(|(e, _)| e.as_deref() == Some("error"))
    }
}

/// Sends a request; `body` None means GET.
pub async fn send(method: &str, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body within 30 s");
    let body = match body {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        Err(e) => format!("<body error: {e}>"),
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs JSON with the test key.
pub async fn post(url: &str, body: &str) -> Answer {
    send(
        "POST",
        url,
        Some(body),
        &[("authorization", &format!("Bearer {KEY}"))],
    )
    .await
}

/// GETs with the test key.
pub async fn get(url: &str) -> Answer {
    send(
        "GET",
        url,
        None,
        &[("authorization", &format!("Bearer {KEY}"))],
    )
    .await
}

/// A chat request body.
pub fn chat(model: &str, stream: bool, max_tokens: u64) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{ "role": "user", "content": "Say something." }],
    })
    .to_string()
}

/// The mock's deterministic answer of `n` tokens.
pub fn expected_text(n: u64) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

/// A model of a test policy.
pub struct TestModel<'a> {
    /// Logical name.
    pub name: &'a str,
    /// Quality (equivalents are tried best first).
    pub quality: f64,
    /// Context window.
    pub context: u64,
    /// Whether it accepts a prefill.
    pub prefill: bool,
    /// Provider (`mock-a` or `mock-b`).
    pub provider: &'a str,
    /// Upstream model name: the mock's fault.
    pub upstream: &'a str,
}

/// The circuit settings [`mock_policy`] gives both providers: open after 3 consecutive
/// failures, for 1 s.
pub const MOCK_CIRCUIT: &str =
    "{ window_secs: 10, min_requests: 10, error_ratio: 0.5, consecutive_failures: 3, cooldown_secs: 1 }";

/// Writes a policy for the mock at `base_url`: providers `mock-a` and `mock-b` (two regions)
/// with tight timeouts and the [`MOCK_CIRCUIT`] settings.
pub fn mock_policy(dir: &Path, base_url: &str, models: &[TestModel<'_>]) {
    mock_policy_with_circuit(dir, base_url, MOCK_CIRCUIT, models)
}

/// [`mock_policy`] with the given `circuit` settings (a YAML flow mapping) on both providers.
pub fn mock_policy_with_circuit(
    dir: &Path,
    base_url: &str,
    circuit: &str,
    models: &[TestModel<'_>],
) {
    mock_policy_with_probes(dir, base_url, circuit, None, models)
}

/// [`mock_policy_with_circuit`] with active health probes (`health_probe`, a YAML flow
/// mapping) on both providers when given.
pub fn mock_policy_with_probes(
    dir: &Path,
    base_url: &str,
    circuit: &str,
    health_probe: Option<&str>,
    models: &[TestModel<'_>],
) {
    let probe = health_probe
        .map(|p| format!("    health_probe: {p}\n"))
        .unwrap_or_default();
    let provider = |name: &str, region: &str| {
        format!(
            "  - name: {name}\n    type: openai_compatible\n    region: {region}\n    base_url: {base_url}\n    api_key: env:LLMGW_TEST_UPSTREAM_KEY\n    timeouts: {{ connect_ms: 500, first_token_ms: 1000, idle_ms: 500, total_ms: 3000 }}\n    circuit: {circuit}\n{probe}"
        )
    };
    let providers = format!(
        "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n{}{}",
        provider("mock-a", "region-a"),
        provider("mock-b", "region-b")
    );
    let mut m = String::from("apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n");
    for t in models {
        let caps = if t.prefill {
            "[chat, tools, prefill]"
        } else {
            "[chat, tools]"
        };
        m.push_str(&format!(
            "  - name: {}\n    class: chat\n    quality: {}\n    context_window: {}\n    capabilities: {caps}\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: {}\n        upstream_model: \"{}\"\n",
            t.name, t.quality, t.context, t.provider, t.upstream
        ));
    }
    std::fs::write(dir.join("providers.yaml"), providers).expect("write policy");
    std::fs::write(dir.join("models.yaml"), m).expect("write policy");
}

/// A primary (on `mock-a`) with the given fault and a healthy prefill-capable backup (on `mock-b`).
pub fn primary_and_backup(dir: &Path, base_url: &str, fault: &str) {
    mock_policy(
        dir,
        base_url,
        &[
            TestModel {
                name: "primary",
                quality: 0.9,
                context: 100_000,
                prefill: true,
                provider: "mock-a",
                upstream: &format!("p+{fault}"),
            },
            TestModel {
                name: "backup",
                quality: 0.5,
                context: 100_000,
                prefill: true,
                provider: "mock-b",
                upstream: "b+ok",
            },
        ],
    );
}

/// A mock provider on an ephemeral port.
pub async fn mock() -> llmgw_mock_provider::MockHandle {
    llmgw_mock_provider::spawn("127.0.0.1:0", llmgw_mock_provider::Options::default())
        .await
        .expect("mock listens")
}

/// The lines of a `vertex` provider of `mock` after its name (`type`, `region`, `base_url` and
/// `vertex`), whose service account key (the mock's test account, with tokens from the mock)
/// is written to `dir` (a policy directory: the key is not YAML, so not read as policy).
pub fn vertex_provider(dir: &Path, mock: &llmgw_mock_provider::MockHandle) -> String {
    let root = format!("http://{}", mock.addr);
    let token_uri = format!("{root}{}", llmgw_mock_provider::vertex::TOKEN_PATH);
    let key = dir.join("vertex-service-account.json");
    std::fs::write(
        &key,
        llmgw_mock_provider::vertex::service_account_key(&token_uri),
    )
    .expect("write the service account key");
    format!(
        "    type: vertex\n    region: us-central1\n    base_url: {root}\n    vertex:\n      project: llmgw-test-project\n      region: us-central1\n      service_account: file:{}\n",
        key.display()
    )
}

/// Starts a gateway on a fresh policy directory written by `write`.
pub fn gateway_for(write: impl FnOnce(&Path)) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path());
    let gw = Gateway::start_with(
        &["--policies", dir.path().to_str().expect("utf-8 path")],
        &UPSTREAM_ENV,
        true,
    );
    (gw, dir)
}

/// The upstream key given to test gateways; it must never show up in answers or logs.
pub const UPSTREAM_SECRET: &str = "sk-upstream-SECRET-7f3a9c";

/// The environment of [`gateway_for`]'s gateways: [`UPSTREAM_SECRET`], and the mock's AWS
/// keys (long-term, and temporary with their session token) for Bedrock providers.
pub const UPSTREAM_ENV: [(&str, &str); 6] = {
    use llmgw_mock_provider::bedrock;
    [
        ("LLMGW_TEST_UPSTREAM_KEY", UPSTREAM_SECRET),
        ("LLMGW_TEST_AWS_ACCESS_KEY_ID", bedrock::ACCESS_KEY_ID),
        (
            "LLMGW_TEST_AWS_SECRET_ACCESS_KEY",
            bedrock::SECRET_ACCESS_KEY,
        ),
        (
            "LLMGW_TEST_AWS_TEMP_ACCESS_KEY_ID",
            bedrock::TEMP_ACCESS_KEY_ID,
        ),
        (
            "LLMGW_TEST_AWS_TEMP_SECRET_ACCESS_KEY",
            bedrock::TEMP_SECRET_ACCESS_KEY,
        ),
        ("LLMGW_TEST_AWS_SESSION_TOKEN", bedrock::SESSION_TOKEN),
    ]
};

/// The `bedrock` settings of a provider signing with the mock's long-term AWS keys.
pub const BEDROCK_SETTINGS: &str = "    bedrock:\n      region: us-east-1\n      access_key_id: env:LLMGW_TEST_AWS_ACCESS_KEY_ID\n      secret_access_key: env:LLMGW_TEST_AWS_SECRET_ACCESS_KEY\n";

/// Read a text file fully (helper for assertions).
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s
}

/// Runs git in `dir` as a fixed author, without commit signing; fails the test when git does,
/// and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Policy Author",
            "-c",
            "user.email=author@example.com",
        ])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How long a failing start may take at most before the test fails.
pub const FAILING_START_BOUND: Duration = Duration::from_secs(30);

/// What a failed `llmgw serve` left.
pub struct Failed {
    /// Its exit code.
    pub code: Option<i32>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `llmgw serve ARGS` (with a dev key, a temp state directory unless `--state` is
/// given and an ephemeral admin port unless `--admin-listen` is) and waits for it to exit;
/// fails the test if it is still running after [`FAILING_START_BOUND`].
pub fn serve(args: &[&str]) -> Failed {
    serve_with_env(args, &[])
}

/// [`serve`] with extra environment variables.
pub fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Failed {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmgw"));
    cmd.arg("serve").arg("--dev-key").arg(KEY);
    if !args.contains(&"--state") {
        cmd.arg("--state").arg(dir.path().join("state"));
    }
    if !args.contains(&"--admin-listen") {
        cmd.arg("--admin-listen").arg("127.0.0.1:0");
    }
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("LLMGW_DEV_KEY")
        .env_remove("LLMGW_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("llmgw starts");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > FAILING_START_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("llmgw serve {args:?} was still running after {FAILING_START_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    Failed {
        code: status.code(),
        stderr,
    }
}

/// Asserts exit code 2 and one stderr line (besides JSON log lines and indented details
/// such as policy diagnostics) that starts with `llmgw: ` and contains every one of `needles`.
pub fn fails_with(failed: &Failed, needles: &[&str]) {
    let lines: Vec<&str> = failed
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('{') && !l.starts_with(' '))
        .collect();
    assert_eq!(failed.code, Some(2), "{}", failed.stderr);
    assert_eq!(lines.len(), 1, "one line: {}", failed.stderr);
    assert!(lines[0].starts_with("llmgw: "), "{}", lines[0]);
    for needle in needles {
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "`{needle}` missing from: {}",
            lines[0]
        );
    }
}

/// A port free now on 127.0.0.1 (another process may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

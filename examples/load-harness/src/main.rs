//! `llmgw-load`: measures llmgw against a bare hyper pass-through proxy and against the
//! upstream directly, in one run on 127.0.0.1, and prints the ratios.
//!
//! It starts three processes: the mock upstream (`mock-provider`, answering at once), a bare
//! hyper pass-through proxy (this binary with `passthrough`), and `llmgw serve` on the bundled
//! policies (budgets, downgrades, the canary, routing rules; cache off) with every provider
//! pointed at the mock, on a SQLite state store; requests ask for `gpt-4o`, the canaried model
//! under the per-key budget. Then, for each target: closed-loop throughput, CPU time per
//! request (from `/proc/<pid>/stat`), p50/p99 latency at fixed rates of 500 and 2,000 req/s
//! (open loop), streaming throughput, and llmgw's idle and peak RSS. Everything is bounded in
//! time (about a minute; `--quick` for about fifteen seconds).
//!
//! `--callgrind` measures instructions per request instead, under `valgrind --tool=callgrind`,
//! for the pass-through and llmgw ([`instructions`]). `--callgrind-ratelimit [REDIS_URL]`
//! measures what the rate limit check costs: llmgw with and without a limit on every request,
//! on SQLite state and, given a Redis, on Redis ([`ratelimit_instructions`]).
#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Linux's fixed user-visible clock tick for `/proc/<pid>/stat` times.
const CLK_TCK: f64 = 100.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.get(1).map(String::as_str) == Some("passthrough") {
        let listen = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
        let upstream = args.get(3).cloned().expect("upstream address");
        rt.block_on(passthrough(listen, upstream));
        return;
    }
    if args.iter().any(|a| a == "--callgrind") {
        std::process::exit(rt.block_on(instructions()));
    }
    if let Some(i) = args.iter().position(|a| a == "--callgrind-ratelimit") {
        let redis = args.get(i + 1).cloned();
        std::process::exit(rt.block_on(ratelimit_instructions(redis)));
    }
    let quick = args.iter().any(|a| a == "--quick");
    std::process::exit(rt.block_on(harness(quick)));
}

// --- the bare pass-through proxy -------------------------------------------------------------

async fn passthrough(listen: String, upstream: String) {
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let client = client.clone();
                let uri = format!(
                    "http://{upstream}{}",
                    req.uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                );
                async move {
                    *req.uri_mut() = uri.parse().expect("uri");
                    req.headers_mut().remove(http::header::HOST);
                    match client.request(req).await {
                        Ok(resp) => Ok::<_, std::convert::Infallible>(resp.map(|b| b.boxed())),
                        Err(_) => {
                            let mut r = http::Response::new(
                                Full::new(Bytes::from_static(b"bad gateway"))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            );
                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                            Ok(r)
                        }
                    }
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// --- processes -------------------------------------------------------------------------------

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and waits for a stdout line containing `marker`; the address follows it.
fn spawn(mut cmd: Command, marker: &str) -> Proc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut addr = None;
    for _ in 0..10 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(pos) = line.find(marker) {
            let rest = line[pos + marker.len()..].trim();
            addr = Some(rest.trim_start_matches("http://").to_owned());
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let addr = addr.unwrap_or_else(|| panic!("{cmd:?} did not print `{marker}`"));
    Proc { child, addr }
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / CLK_TCK
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// --- load ------------------------------------------------------------------------------------

#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    body: Bytes,
    stream_body: Bytes,
    client: HttpClient,
}

impl Target {
    fn new(name: &'static str, addr: &str, model: &str) -> Target {
        let body = |stream: bool, tokens: u64| {
            Bytes::from(
                serde_json::json!({
                    "model": model,
                    "stream": stream,
                    "max_tokens": tokens,
                    "messages": [{ "role": "user", "content": "Summarise the load test in one line." }],
                })
                .to_string(),
            )
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http();
        Target {
            name,
            url: format!("http://{addr}/v1/chat/completions"),
            body: body(false, 16),
            stream_body: body(true, 200),
            client,
        }
    }

    /// One request; its latency when it succeeded.
    async fn call(&self, stream: bool) -> Option<(Duration, usize)> {
        let start = Instant::now();
        let req = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer bench")
            .body(Full::new(if stream {
                self.stream_body.clone()
            } else {
                self.body.clone()
            }))
            .ok()?;
        let resp = self.client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((start.elapsed(), body.len()))
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Closed loop: `workers` concurrent callers for `secs`; returns (requests, failures).
async fn closed_loop(target: &Target, workers: usize, secs: f64) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (t, ok, failed) = (target.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match t.call(false).await {
                    Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Open loop at `rate` req/s for `secs`; returns sorted latencies and failures.
async fn open_loop(target: &Target, rate: f64, secs: f64) -> (Vec<Duration>, u64) {
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (t, tx) = (target.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(t.call(false).await.map(|(d, _)| d));
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Some(d) => lat.push(d),
            None => failed += 1,
        }
    }
    lat.sort();
    (lat, failed)
}

/// `streams` concurrent streamed answers of 200 tokens; returns tokens per second.
async fn streaming(target: &Target, streams: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let t = target.clone();
        tasks.push(tokio::spawn(async move { t.call(true).await.is_some() }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    (ok * 200) as f64 / start.elapsed().as_secs_f64()
}

/// The repository's bundled policies.
const BUNDLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");

/// Writes the bundled policies (budgets, downgrades, canary, routing rules) to `dir` with every
/// simulated provider turned into an OpenAI-compatible one at `upstream`, and without the
/// response cache, so that every request takes the whole policy path to the upstream.
fn write_policy(dir: &Path, upstream: &str) {
    std::fs::create_dir_all(dir).expect("policy dir");
    for entry in std::fs::read_dir(BUNDLED).expect("the bundled policies") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".yaml") || name == "cache.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read a bundled policy");
        let text = if name == "providers.yaml" {
            at_mock(&text, upstream)
        } else {
            text
        };
        std::fs::write(dir.join(name), text).expect("write");
    }
}

/// `providers.yaml` with each `type: simulated` provider pointed at the mock and its
/// `simulated:` block dropped.
fn at_mock(providers: &str, upstream: &str) -> String {
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    for line in providers.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(block) = skipping {
            if line.trim().is_empty() || indent > block {
                continue;
            }
            skipping = None;
        }
        match line.trim() {
            "type: simulated" => {
                let pad = &line[..indent];
                out.push_str(&format!(
                    "{pad}type: openai_compatible\n{pad}base_url: http://{upstream}/v1\n"
                ));
            }
            "simulated:" => skipping = Some(indent),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What `llmgw serve` prints once it listens.
const GATEWAY_READY: &str = "llmgw listening on ";

/// `cmd` (the gateway binary, or valgrind in front of it) with the arguments of `llmgw serve`
/// on `policy` and a SQLite state store in `state`.
fn gateway(mut cmd: Command, policy: &Path, state: &Path) -> Command {
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--dev-key",
        "bench",
        "--policies",
    ])
    .arg(policy)
    .arg("--state")
    .arg(state);
    cmd
}

/// Requests of the shorter and the longer callgrind run: the difference of their instruction
/// counts, divided by the difference of these, is the cost of one request without start-up
/// and shutdown.
const CALLGRIND_RUNS: [u64; 2] = [200, 1200];

/// Instructions per request of the pass-through and of llmgw under
/// `valgrind --tool=callgrind`: a figure that machine noise does not move. Each target runs
/// twice under callgrind (with [`CALLGRIND_RUNS`] sequential non-streamed requests), stopped
/// by SIGTERM; the mock upstream runs natively.
async fn instructions() -> i32 {
    let mut mock_cmd = Command::new(bin("mock-provider"));
    mock_cmd.args(["--listen", "127.0.0.1:0", "--token-interval-ms", "0"]);
    let mock = spawn(mock_cmd, "listening on ");
    let dir = std::env::temp_dir().join(format!("llmgw-callgrind-{}", std::process::id()));
    let policy = dir.join("policies");
    write_policy(&policy, &mock.addr);
    println!("# Instructions per request under callgrind (sequential, non-streamed chat)\n");
    println!("| target | instructions/request |");
    println!("|---|---:|");
    let mut per_request = Vec::new();
    for name in ["pass-through", "llmgw"] {
        let per = callgrind_per_request(&dir, name, |mut cmd, run| {
            if name == "llmgw" {
                cmd.arg(bin("llmgw"));
                let state = dir.join(format!("state-{run}"));
                (gateway(cmd, &policy, &state), GATEWAY_READY, "gpt-4o")
            } else {
                cmd.arg(std::env::current_exe().expect("exe")).args([
                    "passthrough",
                    "127.0.0.1:0",
                    &mock.addr,
                ]);
                (cmd, "listening on ", "bench+ok")
            }
        })
        .await;
        let Some(per) = per else { return 1 };
        println!("| {name} | {per:.0} |");
        per_request.push(per);
    }
    println!(
        "\nllmgw instructions per request / pass-through: **{:.2}×**",
        per_request[1] / per_request[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
    0
}

/// Instructions per request of one target under callgrind: `make` completes a `valgrind`
/// command for run 0 or 1 and says what line announces the target and which model to ask
/// for; each run sends its [`CALLGRIND_RUNS`] requests. `None` (reported) when a request fails.
async fn callgrind_per_request(
    dir: &Path,
    name: &str,
    make: impl Fn(Command, usize) -> (Command, &'static str, &'static str),
) -> Option<f64> {
    let mut totals = Vec::new();
    for (run, n) in CALLGRIND_RUNS.iter().enumerate() {
        let out = dir.join(format!("{name}-{run}.callgrind"));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()));
        let (cmd, ready, model) = make(cmd, run);
        let proc = spawn(cmd, ready);
        let target = Target::new("measured", &proc.addr, model);
        for _ in 0..*n {
            if target.call(false).await.is_none() {
                eprintln!("{name}: a request failed under callgrind");
                return None;
            }
        }
        totals.push(stop_and_count(proc, &out));
    }
    Some((totals[1] - totals[0]) as f64 / (CALLGRIND_RUNS[1] - CALLGRIND_RUNS[0]) as f64)
}

/// A rate limit on every request of the harness's key, far above what it sends: a request
/// and a token rate, so every request checks two cells and corrects one from `usage`.
const EVERY_KEY_LIMIT: &str = "apiVersion: llmgw.dev/v1
kind: RateLimits
limits:
  - name: every-key
    scope: key
    requests: {limit: 1000000, per: second}
    tokens: {limit: 1000000000, per: second}
";

/// What the rate limit check costs: llmgw's instructions per request under callgrind on the
/// bundled policies (none of whose limits applies to the harness's key) with and without
/// [`EVERY_KEY_LIMIT`], on SQLite state and, with `redis`, on Redis.
async fn ratelimit_instructions(redis: Option<String>) -> i32 {
    let mut mock_cmd = Command::new(bin("mock-provider"));
    mock_cmd.args(["--listen", "127.0.0.1:0", "--token-interval-ms", "0"]);
    let mock = spawn(mock_cmd, "listening on ");
    let dir = std::env::temp_dir().join(format!("llmgw-callgrind-rl-{}", std::process::id()));
    let plain = dir.join("plain");
    let limited = dir.join("limited");
    write_policy(&plain, &mock.addr);
    write_policy(&limited, &mock.addr);
    std::fs::write(limited.join("ratelimits-every-key.yaml"), EVERY_KEY_LIMIT)
        .expect("write the limit");
    println!("# The rate limit check under callgrind (sequential, non-streamed chat)\n");
    println!("| state | without a limit | with one (2 cells) | the check's share |");
    println!("|---|---:|---:|---:|");
    let mut stores = vec![("sqlite", None)];
    if let Some(url) = redis {
        stores.push(("redis", Some(url)));
    }
    for (store, url) in &stores {
        let mut per = Vec::new();
        for (label, policy) in [("plain", &plain), ("limited", &limited)] {
            let name = format!("{store}-{label}");
            let measured = callgrind_per_request(&dir, &name, |mut cmd, run| {
                cmd.arg(bin("llmgw"));
                let state = match url {
                    Some(url) => PathBuf::from(url),
                    None => dir.join(format!("state-{name}-{run}")),
                };
                let mut cmd = gateway(cmd, policy, &state);
                if url.is_some() {
                    let prefix = format!("llmgw-load-{}-{name}-{run}:", std::process::id());
                    cmd.args(["--state-prefix", &prefix]);
                }
                (cmd, GATEWAY_READY, "gpt-4o")
            })
            .await;
            let Some(p) = measured else { return 1 };
            per.push(p);
        }
        println!(
            "| {store} | {:.0} | {:.0} | {:.1}% |",
            per[0],
            per[1],
            100.0 * (per[1] - per[0]) / per[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    0
}

/// Stops a process running under callgrind with SIGTERM and returns the instructions it
/// executed (the `summary:` line of its output file).
fn stop_and_count(mut proc: Proc, out: &Path) -> u64 {
    let _ = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status();
    let _ = proc.child.wait();
    let text = std::fs::read_to_string(out)
        .unwrap_or_else(|e| panic!("no callgrind output at {}: {e}", out.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no instruction total in {}", out.display()))
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("bin dir").join(name)
}

async fn harness(quick: bool) -> i32 {
    let phase = if quick { 1.5 } else { 4.0 };
    let started = Instant::now();
    let mut mock_cmd = Command::new(bin("mock-provider"));
    mock_cmd.args(["--listen", "127.0.0.1:0", "--token-interval-ms", "0"]);
    let mock = spawn(mock_cmd, "listening on ");
    let mut pass_cmd = Command::new(std::env::current_exe().expect("exe"));
    pass_cmd.args(["passthrough", "127.0.0.1:0", &mock.addr]);
    let pass = spawn(pass_cmd, "listening on ");
    let policy = std::env::temp_dir().join(format!("llmgw-load-{}", std::process::id()));
    write_policy(&policy, &mock.addr);
    // The state store lives beside the policy directory, not in it: its commits are not
    // policy changes.
    let state = std::env::temp_dir().join(format!("llmgw-load-{}-state", std::process::id()));
    let gw = spawn(
        gateway(Command::new(bin("llmgw")), &policy, &state),
        GATEWAY_READY,
    );
    let gw_pid = gw.child.id();
    let targets = [
        Target::new("direct", &mock.addr, "bench+ok"),
        Target::new("pass-through", &pass.addr, "bench+ok"),
        Target::new("llmgw", &gw.addr, "gpt-4o"),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(gw_pid, "VmRSS:");
    for t in &targets {
        closed_loop(t, 8, 0.5).await;
    }
    println!(
        "# llmgw load harness (all on 127.0.0.1, {} s phases)\n",
        phase
    );
    println!("## Throughput (closed loop, 32 concurrent, non-streamed chat)\n");
    println!("| target | req/s | proxy CPU µs/req | upstream CPU µs/req |");
    println!("|---|---:|---:|---:|");
    let mut cpu_per_req = [0.0f64; 3];
    for (i, t) in targets.iter().enumerate() {
        let pid = match i {
            1 => Some(pass.child.id()),
            2 => Some(gw_pid),
            _ => None,
        };
        let (c0, m0) = (pid.map(cpu_secs).unwrap_or(0.0), cpu_secs(mock.child.id()));
        let t0 = Instant::now();
        let (ok, failed) = closed_loop(t, 32, phase).await;
        let secs = t0.elapsed().as_secs_f64();
        let (c1, m1) = (pid.map(cpu_secs).unwrap_or(0.0), cpu_secs(mock.child.id()));
        let per = |d: f64| if ok > 0 { d / ok as f64 * 1e6 } else { 0.0 };
        cpu_per_req[i] = per(c1 - c0);
        println!(
            "| {} | {:.0}{} | {} | {:.1} |",
            t.name,
            ok as f64 / secs,
            if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            },
            if pid.is_some() {
                format!("{:.1}", cpu_per_req[i])
            } else {
                "-".into()
            },
            per(m1 - m0)
        );
    }
    if cpu_per_req[1] > 0.0 {
        println!(
            "\nllmgw CPU per request / pass-through CPU per request: **{:.2}×** (target ≤ 1.5×)",
            cpu_per_req[2] / cpu_per_req[1]
        );
    }
    for rate in [500.0, 2000.0] {
        println!("\n## Fixed rate {rate:.0} req/s (open loop, {phase} s)\n");
        println!("| target | p50 ms | p99 ms | failed | proxy CPU µs/req |");
        println!("|---|---:|---:|---:|---:|");
        let mut p = [(Duration::ZERO, Duration::ZERO); 3];
        for (i, t) in targets.iter().enumerate() {
            let pid = match i {
                1 => Some(pass.child.id()),
                2 => Some(gw_pid),
                _ => None,
            };
            let c0 = pid.map(cpu_secs).unwrap_or(0.0);
            let (lat, failed) = open_loop(t, rate, phase).await;
            let c1 = pid.map(cpu_secs).unwrap_or(0.0);
            p[i] = (quantile(&lat, 0.5), quantile(&lat, 0.99));
            let cpu = if lat.is_empty() {
                0.0
            } else {
                (c1 - c0) / lat.len() as f64 * 1e6
            };
            println!(
                "| {} | {:.3} | {:.3} | {failed} | {} |",
                t.name,
                p[i].0.as_secs_f64() * 1e3,
                p[i].1.as_secs_f64() * 1e3,
                if pid.is_some() {
                    format!("{cpu:.1}")
                } else {
                    "-".into()
                }
            );
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "\nllmgw added latency at {rate:.0} req/s: vs direct p50 {:+.3} ms, p99 {:+.3} ms; vs pass-through p50 {:+.3} ms, p99 {:+.3} ms (target: added p99 ≤ 1 ms at 2,000 req/s)",
            ms(p[2].0) - ms(p[0].0),
            ms(p[2].1) - ms(p[0].1),
            ms(p[2].0) - ms(p[1].0),
            ms(p[2].1) - ms(p[1].1),
        );
    }
    println!("\n## Streaming (50 concurrent streams of 200 tokens)\n");
    println!("| target | tokens/s |");
    println!("|---|---:|");
    for t in &targets {
        println!("| {} | {:.0} |", t.name, streaming(t, 50).await);
    }
    let peak = rss_kib(gw_pid, "VmHWM:");
    println!("\n## Memory\n");
    println!(
        "llmgw idle RSS {:.1} MiB (target ≤ 20 MiB), peak RSS {:.1} MiB",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!("\n(total run {:.0} s)", started.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&policy);
    let _ = std::fs::remove_dir_all(&state);
    0
}

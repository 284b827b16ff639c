//! Start-up failures end the process at once with exit code 2 and one line on stderr that
//! names the cause: the port in use, an unreadable or broken policy, an unreachable state
//! store.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a failing start may take at most before the test fails.
const BOUND: Duration = Duration::from_secs(30);

/// What a failed `llmgw serve` left.
struct Failed {
    code: Option<i32>,
    stderr: String,
}

/// Runs `llmgw serve ARGS` (with a dev key, a temp state directory unless `--state` is
/// given and an ephemeral admin port unless `--admin-listen` is) and waits for it to exit; fails the test if it is still running after [`BOUND`].
fn serve(args: &[&str]) -> Failed {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmgw"));
    cmd.arg("serve").arg("--dev-key").arg("llmgw_test_key");
    if !args.contains(&"--state") {
        cmd.arg("--state").arg(dir.path().join("state"));
    }
    if !args.contains(&"--admin-listen") {
        cmd.arg("--admin-listen").arg("127.0.0.1:0");
    }
    let mut child = cmd
        .args(args)
        .current_dir(dir.path())
        .env_remove("LLMGW_DEV_KEY")
        .env_remove("LLMGW_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("llmgw starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("llmgw serve {args:?} was still running after {BOUND:?}");
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
fn fails_with(failed: &Failed, needles: &[&str]) {
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

#[test]
fn a_port_in_use_fails_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let failed = serve(&["--listen", &addr]);
    fails_with(
        &failed,
        &[
            &format!("cannot listen on {addr}"),
            "address already in use",
        ],
    );
}

/// The admin listener is bound at start-up like the API's; its default is 127.0.0.1:9090.
#[test]
fn an_admin_port_in_use_fails_at_once_and_the_default_is_local() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let failed = serve(&["--listen", "127.0.0.1:0", "--admin-listen", &addr]);
    fails_with(
        &failed,
        &[&format!("llmgw: cannot listen on {addr}"), "--admin-listen"],
    );
    let help = Command::new(env!("CARGO_BIN_EXE_llmgw"))
        .args(["serve", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--admin-listen"), "{help}");
    assert!(help.contains("127.0.0.1:9090"), "{help}");
}

#[test]
fn an_unreadable_or_broken_policy_fails_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-policies");
    let missing = missing.to_str().expect("utf-8");
    let failed = serve(&["--listen", "127.0.0.1:0", "--policies", missing]);
    fails_with(&failed, &[missing, "no such file"]);
    assert_eq!(
        failed.stderr.matches(missing).count(),
        1,
        "{}",
        failed.stderr
    );
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(broken.join("models.yaml"), "apiVersion: [unclosed\n").expect("write");
    let failed = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--policies",
        broken.to_str().expect("utf-8"),
    ]);
    fails_with(&failed, &["does not load"]);
    assert!(
        failed.stderr.contains("models.yaml:2:1"),
        "{}",
        failed.stderr
    );
}

#[test]
fn an_unreachable_state_store_fails_within_the_bound() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let failed = serve(&["--listen", "127.0.0.1:0", "--state", &url]);
    fails_with(&failed, &["state store", &url]);
}

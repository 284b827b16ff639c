//! Start-up failures end the process at once with exit code 2 and one line on stderr that
//! names the cause: the port in use, an unreadable or broken policy, an unreachable state
//! store.

mod common;

use common::{fails_with, serve};
use std::process::Command;

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

//! Helpers shared by the engine's integration tests: real git repositories in temp dirs.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs git in `dir` as a fixed author; panics when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=Policy Owner",
            "-c",
            "user.email=owner@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A git repository holding a copy of `policies`, with one commit on `main`.
pub fn policy_repo(policies: &Path, repo: &Path) {
    copy_dir(policies, repo);
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "policies"]);
}

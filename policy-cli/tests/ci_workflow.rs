//! The commands of `ci/llmgw-policy.yml` and `ci/pre-commit`, run as CI would run them on a
//! sample policy repository with a pull-request branch.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{copy_dir, git};

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `run:` lines of the workflow that call llmgw-policy (each a plain one-line scalar).
fn workflow_commands() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ci/llmgw-policy.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("run: "))
        .filter(|r| r.starts_with("llmgw-policy "))
        .map(|r| r.replace("${{ github.base_ref }}", "main"))
        .collect()
}

/// A directory holding `llmgw-policy`, to put on PATH.
fn bin_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(BIN, dir.join("llmgw-policy")).unwrap();
    dir
}

fn sh(dir: &Path, path: &Path, command: &str) -> std::process::Output {
    let search = format!(
        "{}:{}",
        path.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", search)
        .output()
        .unwrap()
}

#[test]
fn the_workflow_lints_tests_and_diffs_a_pull_request() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    let repo = tmp.path().join("policy-repo");
    copy_dir(&Path::new(ROOT).join("policies"), &repo);
    copy_dir(
        &Path::new(ROOT).join("examples/traffic"),
        &repo.join("traffic"),
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "policies"]);
    git(&repo, &["update-ref", "refs/remotes/origin/main", "main"]);
    git(&repo, &["checkout", "-q", "-b", "deepseek-price"]);
    let models = repo.join("models.yaml");
    let text = std::fs::read_to_string(&models).unwrap();
    assert_eq!(text.matches("input_per_mtok: 0.28").count(), 1);
    std::fs::write(
        &models,
        text.replace("input_per_mtok: 0.28", "input_per_mtok: 0.56"),
    )
    .unwrap();
    git(
        &repo,
        &["commit", "-q", "-am", "DeepSeek V3 input price doubles"],
    );

    let commands = workflow_commands();
    assert_eq!(commands.len(), 3, "lint, test and diff: {commands:?}");
    for command in &commands {
        let out = sh(&repo, &bin, command);
        assert!(
            out.status.success(),
            "`{command}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let comment = std::fs::read_to_string(repo.join("diff.md")).unwrap();
    assert!(comment.starts_with("### llmgw policy diff"), "{comment}");
    assert!(comment.contains(" of 40 recorded requests ("), "{comment}");
    assert!(comment.contains("| batch-cost → batch-cost |"), "{comment}");
    assert!(
        comment.contains("(**+$"),
        "the same traffic costs more: {comment}"
    );
}

#[test]
fn the_workflow_installs_the_package_that_holds_the_binary() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("ci/llmgw-policy.yml")).unwrap();
    let install = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("run: cargo install "))
        .expect("the workflow installs llmgw-policy");
    assert!(
        install.ends_with(&format!(" {}", env!("CARGO_PKG_NAME"))),
        "{install}"
    );
}

#[test]
fn the_pre_commit_hook_refuses_a_broken_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = bin_dir(tmp.path());
    let repo = tmp.path().join("policy-repo");
    copy_dir(&Path::new(ROOT).join("policies"), &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    let hook = Path::new(ROOT).join("ci/pre-commit");
    let hook = hook.to_string_lossy();
    assert!(sh(&repo, &bin, &hook).status.success());
    std::fs::write(
        repo.join("oops.yaml"),
        "apiVersion: llmgw.dev/v1\nkind: Routing\nrules: []\nrules: []\n",
    )
    .unwrap();
    let out = sh(&repo, &bin, &hook);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("yaml/duplicate-key"));
}

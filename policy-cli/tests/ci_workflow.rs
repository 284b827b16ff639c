//! `ci/llmgw-policy.yml`, its scripts and `ci/pre-commit`, run as CI would run them: the
//! workflow's own `run:` lines, in order, on a policy repository with a base branch and a
//! pull-request branch, with the runner's PATH handling and a warm cache.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{copy_dir, git};

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn workflow() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("ci/llmgw-policy.yml")).unwrap()
}

/// The one-line `run:` of the step named `name`, with the expressions a pull request against
/// `main` gives; any other expression fails the test.
fn run_of(name: &str) -> String {
    let text = workflow();
    let mut current = None;
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(n) = line.strip_prefix("- name: ") {
            current = Some(n.to_owned());
        } else if line.starts_with("- uses: ") {
            current = None;
        } else if let Some(run) = line.strip_prefix("run: ") {
            if current.as_deref() == Some(name) {
                let run = run.replace("${{ github.base_ref }}", "main");
                assert!(!run.contains("${{"), "unexpected expression in `{run}`");
                return run;
            }
        }
    }
    panic!("no step `{name}` with a `run:` in ci/llmgw-policy.yml")
}

/// A GitHub runner's view of a job: a home, the GITHUB_PATH file later steps' PATH is built
/// from, and a PATH without cargo, so a step that would compile fails instead.
struct Runner {
    home: PathBuf,
    github_path: PathBuf,
    base_path: String,
}

impl Runner {
    fn new(tmp: &Path) -> Self {
        let home = tmp.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let github_path = tmp.join("github_path");
        std::fs::write(&github_path, "").unwrap();
        let base_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .filter(|dir| !dir.join("cargo").exists())
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        Runner {
            home,
            github_path,
            base_path,
        }
    }

    /// Runs a step's script as the runner does (`bash -e`), in `dir`.
    fn step(&self, dir: &Path, script: &str, env: &[(&str, &str)]) -> Output {
        let added = std::fs::read_to_string(&self.github_path).unwrap();
        let mut path: Vec<&str> = added.lines().rev().collect();
        path.push(&self.base_path);
        Command::new("bash")
            .args(["-e", "-c", script])
            .current_dir(dir)
            .env("PATH", path.join(":"))
            .env("HOME", &self.home)
            .env("GITHUB_PATH", &self.github_path)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// The install root of the workflow's install step, filled as the cache restores it after
    /// an earlier run at the same llmgw commit.
    fn warm_cache(&self) {
        let root = self.home.join(".llmgw-policy");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(BIN, root.join("bin/llmgw-policy")).unwrap();
        let head = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(ROOT)
            .output()
            .unwrap();
        assert!(head.status.success());
        std::fs::write(root.join("commit"), head.stdout).unwrap();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A policy repository as the workflow's checkouts leave it: the bundled policies and traffic
/// sample on `main` (also `origin/main`), llmgw checked out at `.llmgw`.
fn policy_repo(tmp: &Path) -> PathBuf {
    let repo = tmp.join("policy-repo");
    copy_dir(&Path::new(ROOT).join("policies"), &repo);
    copy_dir(
        &Path::new(ROOT).join("examples/traffic"),
        &repo.join("traffic"),
    );
    std::fs::write(
        repo.join(".gitignore"),
        ".llmgw\nllmgw-policy-junit.xml\nllmgw-policy-diff.md\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "policies"]);
    git(&repo, &["update-ref", "refs/remotes/origin/main", "main"]);
    std::os::unix::fs::symlink(Path::new(ROOT).canonicalize().unwrap(), repo.join(".llmgw"))
        .unwrap();
    repo
}

/// A pull-request branch off `main` with one edit.
fn pull_request(repo: &Path, branch: &str, file: &str, from: &str, to: &str) {
    git(repo, &["checkout", "-q", "main"]);
    git(repo, &["checkout", "-q", "-b", branch]);
    let path = repo.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches(from).count(), 1, "`{from}` in {file}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
    git(repo, &["commit", "-q", "-am", branch]);
}

fn read(repo: &Path, file: &str) -> String {
    std::fs::read_to_string(repo.join(file)).unwrap_or_default()
}

#[test]
fn the_workflow_passes_a_good_change_and_fails_a_bad_one_with_the_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = policy_repo(tmp.path());
    let runner = Runner::new(tmp.path());
    runner.warm_cache();
    let install = runner.step(&repo, &run_of("Install llmgw-policy"), &[]);
    assert!(install.status.success(), "{}", text(&install));
    assert!(
        text(&install).contains("restored from the cache"),
        "a warm cache builds nothing: {}",
        text(&install)
    );
    let check = run_of("Check");

    // A good change: a price moves; lint, tests and diff pass and the comment shows the cost.
    pull_request(
        &repo,
        "deepseek-price",
        "models.yaml",
        "input_per_mtok: 0.28",
        "input_per_mtok: 0.56",
    );
    let out = runner.step(&repo, &check, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let comment = read(&repo, "llmgw-policy-diff.md");
    assert!(comment.starts_with("### llmgw policy diff"), "{comment}");
    assert!(comment.contains(" of 40 recorded requests ("), "{comment}");
    assert!(
        comment.contains("(**+$"),
        "the same traffic costs more: {comment}"
    );
    assert!(
        comment.contains("| served model | requests before |"),
        "{comment}"
    );
    assert!(comment.contains("| by tenant |"), "{comment}");
    let junit = read(&repo, "llmgw-policy-junit.xml");
    assert!(junit.contains("failures=\"0\""), "{junit}");

    // A broken change: the check fails with the finding as an annotation on its line, and the
    // comment carries the diagnostics.
    pull_request(
        &repo,
        "typo",
        "routing.yaml",
        "filter: 'm.quality >= 0.8'",
        "filter: 'm.qualty >= 0.8'",
    );
    let out = runner.step(&repo, &check, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("::error file=routing.yaml,line=60,col=15,title=cel/unknown-field::"),
        "{}",
        text(&out)
    );
    let comment = read(&repo, "llmgw-policy-diff.md");
    assert!(comment.contains("does not lint clean"), "{comment}");
    assert!(comment.contains("cel/unknown-field"), "{comment}");

    // A behaviour change whose tests were not updated fails on them; `test --update`, reviewed
    // and committed, makes it pass, and the comment shows what changes.
    pull_request(
        &repo,
        "batch-quality",
        "routing.yaml",
        "filter: 'm.quality >= 0.8'",
        "filter: 'm.quality >= 0.9'",
    );
    let out = runner.step(&repo, &check, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL batch summarization goes to DeepSeek V3"),
        "{}",
        text(&out)
    );
    let junit = read(&repo, "llmgw-policy-junit.xml");
    assert!(
        junit.contains("<testsuite name=\"tests/batch.yaml\"")
            && junit.contains("<failure type=\"mismatch\""),
        "{junit}"
    );
    let update = runner.step(&repo, "llmgw-policy test . --update", &[]);
    assert!(update.status.success(), "{}", text(&update));
    git(
        &repo,
        &[
            "commit",
            "-q",
            "-am",
            "tests: batch jobs now need quality 0.9",
        ],
    );
    let out = runner.step(&repo, &check, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let comment = read(&repo, "llmgw-policy-diff.md");
    assert!(
        comment.contains("| deepseek-v3 → claude-sonnet |"),
        "{comment}"
    );
}

#[test]
fn the_cache_holds_what_the_install_step_installs_keyed_on_the_lock_file() {
    let text = workflow();
    let install = run_of("Install llmgw-policy");
    assert!(install.contains("\"$HOME/.llmgw-policy\""), "{install}");
    assert!(text.contains("\n            ~/.llmgw-policy\n"), "{text}");
    assert!(
        text.contains("key: llmgw-policy-${{ runner.os }}-${{ hashFiles('.llmgw/Cargo.lock') }}-")
    );
    // What the script builds is this package.
    let script =
        std::fs::read_to_string(Path::new(ROOT).join("ci/install-llmgw-policy.sh")).unwrap();
    assert!(script.contains("cargo install --locked --force --path \"$source/policy-cli\""));
    assert_eq!(
        Path::new(ROOT).join("policy-cli").canonicalize().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .canonicalize()
            .unwrap()
    );
}

#[test]
fn a_cold_cache_builds_from_the_checkout() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = Runner::new(tmp.path());
    runner.warm_cache();
    let root = runner.home.join(".llmgw-policy");
    std::fs::write(root.join("commit"), "an older commit\n").unwrap();
    let script = format!(
        "{ROOT}/ci/install-llmgw-policy.sh {} {ROOT}",
        root.display()
    );
    // cargo is not on the runner's PATH here, so the build it starts is what fails.
    let out = runner.step(tmp.path(), &script, &[]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(text(&out).contains("cargo: not found"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(root.join("commit")).unwrap(),
        "an older commit\n",
        "a failed build records nothing"
    );
}

#[test]
fn a_release_binary_installs_only_with_its_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = Runner::new(tmp.path());
    let root = tmp.path().join("install");
    let script = format!("{ROOT}/ci/install-llmgw-policy.sh {}", root.display());
    let url = format!("file://{BIN}");
    let binary = std::fs::read(BIN).unwrap();
    let sha: String = Sha256::digest(&binary)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let wrong = "0".repeat(64);
    let out = runner.step(
        tmp.path(),
        &script,
        &[("LLMGW_POLICY_URL", &url), ("LLMGW_POLICY_SHA256", &wrong)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&format!("has SHA-256 {sha}, not the expected {wrong}")));
    assert!(!root.join("bin/llmgw-policy").exists());
    assert_eq!(std::fs::read_dir(root.join("bin")).unwrap().count(), 0);

    let out = runner.step(tmp.path(), &script, &[("LLMGW_POLICY_URL", &url)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = runner.step(
        tmp.path(),
        &script,
        &[("LLMGW_POLICY_URL", &url), ("LLMGW_POLICY_SHA256", &sha)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.join("bin/llmgw-policy")).unwrap(),
        binary
    );
    assert!(text(&out).contains("llmgw-policy "), "prints its version");
    assert_eq!(
        std::fs::read_to_string(&runner.github_path).unwrap(),
        format!("{}\n", root.join("bin").display())
    );
}

#[test]
fn the_pre_commit_hook_refuses_a_broken_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = Runner::new(tmp.path());
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("llmgw-policy")).unwrap();
    std::fs::write(&runner.github_path, format!("{}\n", bin.display())).unwrap();
    let repo = tmp.path().join("policy-repo");
    copy_dir(&Path::new(ROOT).join("policies"), &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    let hook = format!("{ROOT}/ci/pre-commit");
    assert!(runner.step(&repo, &hook, &[]).status.success());
    std::fs::write(
        repo.join("oops.yaml"),
        "apiVersion: llmgw.dev/v1\nkind: Routing\nrules: []\nrules: []\n",
    )
    .unwrap();
    let out = runner.step(&repo, &hook, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("yaml/duplicate-key"));
}

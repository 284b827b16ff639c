//! The official OpenAI Python client works unchanged against `llmgw serve`. The test installs
//! the `openai` package into a virtual environment under the target directory (reused across
//! runs) and skips, saying why, when Python, venv or the package index is unavailable.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv() -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = dir.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import openai"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status();
    if !made.map(|s| s.success()).unwrap_or(false) {
        return Err("python3 with the venv module is not available".into());
    }
    let pip = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai>=1.40",
        ])
        .status();
    if !pip.map(|s| s.success()).unwrap_or(false) {
        return Err("pip could not install the `openai` package (no package index?)".into());
    }
    if ready(&python) {
        Ok(python)
    } else {
        Err("the `openai` package does not import".into())
    }
}

#[test]
fn the_official_openai_python_client_works_unchanged() {
    let python = match venv() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_official_openai_python_client_works_unchanged: {why}");
            return;
        }
    };
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/policies/simulated");
    let gw = Gateway::start(&["--policies", policy.to_str().expect("utf-8")]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python)
        .arg(script)
        .env("LLMGW_URL", format!("http://{}", gw.addr))
        .env("LLMGW_KEY", KEY)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all ok"), "{stdout}");
}

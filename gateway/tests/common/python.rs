//! Official Python SDKs for the client tests: each installed into its own virtual environment
//! under the target directory (reused across runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Tests of one binary that share an environment set it up one at a time.
static SETUP: Mutex<()> = Mutex::new(());

/// The Python of a virtual environment `name` under `CARGO_TARGET_TMPDIR` in which `module`
/// imports, installing `requirement` with pip when it does not yet; why not when Python, venv
/// or the package index is unavailable (the caller skips, saying so).
pub fn venv(name: &str, requirement: &str, module: &str) -> Result<PathBuf, String> {
    let _one_at_a_time = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = dir.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
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
    // `python -m pip`, not `bin/pip`: the script's first line names the path the environment
    // was made at, which is not this one when a target directory was copied.
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ])
        .status();
    if !pip.map(|s| s.success()).unwrap_or(false) {
        return Err(format!(
            "pip could not install `{requirement}` (no package index?)"
        ));
    }
    if ready(&python) {
        Ok(python)
    } else {
        Err(format!("the `{module}` package does not import"))
    }
}

/// Runs `gateway/tests/{script}` with `python` against the gateway at `addr` (its URL and the
/// test key in `LLMGW_URL` and `LLMGW_KEY`); fails the test unless the script exits 0 and
/// prints `all ok`.
pub fn run_script(python: &Path, script: &str, addr: &str) {
    run_script_with_env(python, script, addr, &[]);
}

/// [`run_script`] with more environment variables for the script.
pub fn run_script_with_env(python: &Path, script: &str, addr: &str, env: &[(&str, &str)]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new(python)
        .arg(script)
        .env("LLMGW_URL", format!("http://{addr}"))
        .env("LLMGW_KEY", crate::common::KEY)
        .envs(env.iter().copied())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all ok"), "{stdout}");
}

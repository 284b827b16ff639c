//! The official OpenAI Python client works unchanged against `llmgw serve`. The test installs
//! the `openai` package into a virtual environment under the target directory (reused across
//! runs) and skips, saying why, when Python, venv or the package index is unavailable.

mod common;

use common::*;
use std::path::PathBuf;

#[test]
fn the_official_openai_python_client_works_unchanged() {
    let python = match python::venv("openai-venv", "openai>=1.40", "openai") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_official_openai_python_client_works_unchanged: {why}");
            return;
        }
    };
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/policies/simulated");
    let gw = Gateway::start(&["--policies", policy.to_str().expect("utf-8")]);
    python::run_script(&python, "openai_client.py", &gw.addr);
}

/// The Responses API of the official client (`responses.create`, streaming, function calls,
/// `previous_response_id`, retrieve, delete) against a mock upstream that speaks chat
/// completions.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_client_speaks_the_responses_api() {
    let python = match python::venv("openai-venv", "openai>=1.66", "openai.resources.responses") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_official_openai_python_client_speaks_the_responses_api: {why}");
            return;
        }
    };
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[TestModel {
                name: "gpt-mock",
                quality: 0.9,
                context: 100_000,
                prefill: true,
                provider: "mock-a",
                upstream: "r+tool",
            }],
        );
        // Images in the input need a model that sees.
        let models = d.join("models.yaml");
        let text = std::fs::read_to_string(&models).expect("models");
        let text = text.replace("[chat, tools, prefill]", "[chat, tools, prefill, vision]");
        std::fs::write(&models, text).expect("models");
    });
    let addr = gw.addr.clone();
    tokio::task::spawn_blocking(move || python::run_script(&python, "openai_responses.py", &addr))
        .await
        .expect("the script's thread");
}

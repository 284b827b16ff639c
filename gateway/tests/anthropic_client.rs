//! The official Anthropic Python client works unchanged against `llmgw serve`'s
//! `/v1/messages`: the request is served by an OpenAI-compatible upstream (the mock provider)
//! and answered in Anthropic's shapes. The test installs the `anthropic` package into a virtual
//! environment under the target directory (reused across runs) and skips, saying why, when
//! Python, venv or the package index is unavailable.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_anthropic_python_client_works_unchanged() {
    let python = match python::venv("anthropic-venv", "anthropic>=0.40", "anthropic") {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_official_anthropic_python_client_works_unchanged: {why}");
            return;
        }
    };
    let mock = mock().await;
    let (gw, _dir) = gateway_for(|d| {
        mock_policy(
            d,
            &mock.base_url(),
            &[TestModel {
                name: "claude-mock",
                quality: 0.9,
                context: 100_000,
                prefill: true,
                provider: "mock-a",
                upstream: "c+tool",
            }],
        )
    });
    let addr = gw.addr.clone();
    tokio::task::spawn_blocking(move || python::run_script(&python, "anthropic_client.py", &addr))
        .await
        .expect("the script's thread");
}

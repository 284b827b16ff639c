//! `llmgw serve` with no `--policies`, run from an empty directory, serves the policies
//! embedded at build time: a streamed chat completion with a dev key, and the JSON form.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_streams_a_chat_completion_with_a_dev_key() {
    let gw = Gateway::start(&[]);
    assert!(
        gw.banner.iter().any(|l| l.contains("bundled policies")),
        "{:?}",
        gw.banner
    );
    let models = get(&gw.url("/v1/models")).await;
    assert_eq!(models.status, 200, "{}", models.body);
    let ids: Vec<String> = models.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    let model = ids
        .iter()
        .find(|m| m.as_str() == "gpt-4o")
        .unwrap_or(&ids[0])
        .clone();
    let a = post(&gw.url("/v1/chat/completions"), &chat(&model, true, 8)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), "text/event-stream");
    assert!(!a.streamed_text().trim().is_empty(), "{}", a.body);
    assert!(a.done() && !a.stream_error(), "{}", a.body);
    for h in [
        "x-llmgw-policy-rev",
        "x-llmgw-rule",
        "x-llmgw-model",
        "x-llmgw-provider",
        "x-llmgw-cost-usd",
    ] {
        assert!(!a.header(h).is_empty(), "{h} missing");
    }
    let j = post(&gw.url("/v1/chat/completions"), &chat(&model, false, 4)).await;
    assert_eq!(j.status, 200, "{}", j.body);
    assert_eq!(j.json()["object"], "chat.completion");
    assert!(j.json()["usage"]["completion_tokens"].as_u64().is_some());
}

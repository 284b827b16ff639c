//! `llmgw-policy test` as a pull request uses it: picking cases, reports for people, programs
//! and CI, and `--update` rewriting the expectations of a reviewed change in place.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::copy_dir;

const BIN: &str = env!("CARGO_BIN_EXE_llmgw-policy");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("test")
        .arg(dir)
        .args(args)
        .output()
        .expect("llmgw-policy runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two cases that were right before a change the reviewer accepts: batch jobs now go to
/// DeepSeek V3, and the realtime rule has another name than the test says.
const STALE: &str = "\
# Cases for the pull request. Keep the comments!
apiVersion: llmgw.dev/v1
kind: PolicyTests
tests:
  - name: batch goes to the cheapest model   # trailing comment
    request:
      model: gpt-4o
      input_tokens: 6000
      max_tokens: 800
      metadata: {workload: batch}
    expect:
      rule: batch-cost
      model: gpt-4o          # the model before the change
      deployment: \"gpt-4o@openai-us-east\"  # quoted
      attempts:
        - gpt-4o@openai-us-east   # first choice
        - gpt-4o@openai-eu-west

  # A flow mapping, written on one line.
  - name: realtime chat keeps its model
    request: {model: claude-sonnet, input_tokens: 900, metadata: {workload: realtime}}
    expect: {model: claude-sonnet, rule: 'old-realtime-rule'}
";

/// The bundled policies plus the stale cases in `tests/pr.yaml`.
fn repo_with_stale_cases() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("policies");
    copy_dir(Path::new(POLICIES), &repo);
    std::fs::write(repo.join("tests/pr.yaml"), STALE).unwrap();
    (tmp, repo)
}

/// The names of the bundled cases.
fn bundled_names() -> Vec<String> {
    let out = run(Path::new(POLICIES), &["--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn filter_runs_the_cases_whose_name_contains_it_or_matches_the_glob() {
    let names = bundled_names();
    let batch = names.iter().filter(|n| n.contains("batch")).count();
    assert!(batch >= 2 && batch < names.len(), "{names:?}");
    let out = run(Path::new(POLICIES), &["--filter", "batch"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.trim_end().ends_with(&format!(
            "{batch} passed, 0 failed, {} filtered out",
            names.len() - batch
        )),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok   ")).count(),
        batch
    );
    assert!(text
        .lines()
        .filter(|l| l.starts_with("ok   "))
        .all(|l| l.contains("batch")));

    // A glob matches the whole name: `batch*` is the cases that start with it.
    let starting = names.iter().filter(|n| n.starts_with("batch")).count();
    assert!(starting >= 1 && starting < batch, "{names:?}");
    let out = run(
        Path::new(POLICIES),
        &["--filter", "batch*", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], starting);
    assert_eq!(v["filtered_out"], names.len() - starting);

    // A filter that matches nothing is a mistake, not a green run.
    let out = run(Path::new(POLICIES), &["--filter", "no such case"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches --filter"));
}

#[test]
fn json_format_lists_every_case_with_its_place_and_mismatches() {
    let (_tmp, repo) = repo_with_stale_cases();
    let out = run(&repo, &["--format", "json", "--filter", "batch goes"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64()),
        (Some(0), Some(1))
    );
    let case = &v["cases"][0];
    assert_eq!(case["name"], "batch goes to the cheapest model");
    assert_eq!(
        (&case["file"], &case["line"], &case["column"]),
        (
            &serde_json::json!("tests/pr.yaml"),
            &serde_json::json!(5),
            &serde_json::json!(11)
        )
    );
    assert_eq!(case["passed"], false);
    let model = case["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["field"] == "model")
        .expect("the model differs");
    assert_eq!(model["expected"], "gpt-4o");
    assert_eq!(model["actual"], "deepseek-v3");
}

#[test]
fn junit_format_has_a_suite_per_file_and_a_failure_with_file_and_line() {
    let (_tmp, repo) = repo_with_stale_cases();
    let out = run(&repo, &["--format", "junit"]);
    assert_eq!(out.status.code(), Some(1));
    let xml = stdout(&out);
    let total = bundled_names().len() + 2;
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<testsuites name=\"llmgw-policy test\" tests=\"{total}\" failures=\"2\" errors=\"0\">"
        )),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), total);
    assert_eq!(xml.matches("<failure ").count(), 2);
    // The bundled test files and the added `tests/pr.yaml`.
    let files = std::fs::read_dir(Path::new(POLICIES).join("tests"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert_eq!(
        xml.matches("<testsuite ").count(),
        files + 1,
        "one per test file"
    );
    assert!(
        xml.contains("<testsuite name=\"tests/pr.yaml\" tests=\"2\" failures=\"2\" errors=\"0\" skipped=\"0\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"batch goes to the cheapest model\" classname=\"tests/pr.yaml\" file=\"tests/pr.yaml\" line=\"5\">"),
        "{xml}"
    );
    assert!(
        xml.contains(">tests/pr.yaml:5:11: model: expected gpt-4o, got deepseek-v3; "),
        "{xml}"
    );
    assert!(xml.trim_end().ends_with("</testsuites>"));
    assert_eq!(
        xml.matches("<testsuite ").count(),
        xml.matches("</testsuite>").count()
    );
}

#[test]
fn update_rewrites_only_the_failing_values_keeping_comments_and_layout() {
    let (_tmp, repo) = repo_with_stale_cases();
    let before: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo.join("tests"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "pr.yaml")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();

    let out = run(&repo, &["--update"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.trim_end().ends_with(" passed, 0 failed"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("updated 2 case(s) in tests/pr.yaml"));

    let after = std::fs::read_to_string(repo.join("tests/pr.yaml")).unwrap();
    // Every line outside the rewritten values is as written, comments included.
    let rewritten = [13, 14, 16, 17, 22];
    let old: Vec<&str> = STALE.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    for (i, line) in old.iter().enumerate() {
        if !rewritten.contains(&(i + 1)) && i + 1 < 18 {
            assert_eq!(new[i], *line, "line {} changed:\n{after}", i + 1);
        }
    }
    assert_eq!(
        new[12],
        "      model: deepseek-v3     # the model before the change"
    );
    assert_eq!(
        new[13],
        "      deployment: \"deepseek-v3@deepseek-us-east\" # quoted"
    );
    assert_eq!(
        new[15],
        "        - deepseek-v3@deepseek-us-east # first choice"
    );
    // A comment after a value keeps its column while the value fits before it.
    assert_eq!(new[12].find('#'), old[12].find('#'));
    // The list grows to the whole attempt order, one item a line at the same indentation.
    let items: Vec<&str> = new[15..]
        .iter()
        .take_while(|l| l.starts_with("        - "))
        .copied()
        .collect();
    assert_eq!(items.len(), 8, "{after}");
    let tail = &new[15 + items.len()..];
    assert_eq!(tail[0], "");
    assert_eq!(tail[1], "  # A flow mapping, written on one line.");
    assert_eq!(tail[2], old[19]);
    assert_eq!(tail[3], old[20]);
    assert_eq!(
        tail[4],
        "    expect: {model: claude-sonnet, rule: 'realtime-chat'}"
    );
    assert_eq!(tail.len(), 5);

    // The rest of the repository is untouched, and a second run passes as it is.
    for (name, bytes) in before {
        assert_eq!(
            std::fs::read(repo.join("tests").join(&name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    let again = run(&repo, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
}

#[test]
fn update_with_a_filter_touches_only_the_selected_cases() {
    let (_tmp, repo) = repo_with_stale_cases();
    let out = run(&repo, &["--update", "--filter", "realtime chat keeps"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let after = std::fs::read_to_string(repo.join("tests/pr.yaml")).unwrap();
    assert_eq!(
        after,
        STALE.replace("'old-realtime-rule'", "'realtime-chat'")
    );
    let out = run(&repo, &["--filter", "batch goes"]);
    assert_eq!(out.status.code(), Some(1), "the batch case was not updated");
}

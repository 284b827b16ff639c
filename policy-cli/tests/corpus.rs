//! The corpus of broken policy repositories in `tests/corpus/`.
//!
//! `tests/corpus/base/` is a small valid repository. Each directory of `tests/corpus/cases/`
//! holds one mistake: its files replace the base file of the same path or add to the base, an
//! optional `remove.txt` lists base files to leave out, and `expect.txt` lists the diagnostics
//! the mistake must produce, one per line:
//!
//! ```text
//! # what is wrong (comment lines start with `#`)
//! code file line [column]
//! ```
//!
//! `file` and `line` are `-` for a finding about the repository as a whole. Every listed
//! diagnostic must be reported as an error, and every error reported must be listed: a case
//! holds one mistake, so a new check that fires on it, or a cascade of follow-up errors, fails
//! the test as surely as a check that stops firing. `tests/corpus/warnings/` works the same way
//! for warnings, and its repositories must still compile.
//!
//! The same cases go through the `llmgw-policy` binary, which must agree with the library.

use llmgw_engine::diag::{Diagnostic, Severity};
use llmgw_engine::load::{load_files, LoadOutcome};
use llmgw_engine::source::policy_files;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The smallest number of broken repositories the corpus may hold.
const MIN_CASES: usize = 30;

/// Every error code a policy repository can trigger. The corpus must exercise each of them.
///
/// Not listed, because no input reaches them (an earlier check always reports the mistake
/// first): `schema/kind` (the document schema lists the same kinds), `yaml/unknown-alias` (the
/// YAML parser rejects the alias itself), and `cel/internal` (the compiler's own failures).
/// `source/empty` is about the repository rather than its files and is tested below.
const ERROR_CODES: &[&str] = &[
    "yaml/syntax",
    "yaml/duplicate-key",
    "yaml/multiple-documents",
    "yaml/encoding",
    "yaml/empty",
    "yaml/complex-key",
    "yaml/too-deep",
    "yaml/too-large",
    "schema/enum",
    "schema/unknown-field",
    "schema/missing-field",
    "schema/type",
    "schema/range",
    "schema/pattern",
    "schema/invalid",
    "secret/literal",
    "ref/duplicate-name",
    "ref/unknown-provider",
    "ref/unknown-model",
    "ref/unknown-deployment",
    "ref/no-models",
    "rule/duplicate-name",
    "rule/shadowed",
    "rule/missing-weights",
    "rule/missing-candidates",
    "rule/weight-not-candidate",
    "model/no-deployment",
    "model/price-not-positive",
    "budget/no-downgrade",
    "downgrade/cycle",
    "canary/invalid-rollout",
    "canary/foreign-deployment",
    "canary/same-deployment",
    "canary/duplicate",
    "cel/syntax",
    "cel/unknown-variable",
    "cel/unknown-field",
    "cel/type-mismatch",
    "cel/not-boolean",
    "cel/unknown-function",
    "cel/bad-regex",
    "cel/dynamic-regex",
    "cel/variable-not-here",
    "cel/object-value",
    "cel/unsupported",
    "cel/too-complex",
];

/// Every warning code; the warnings corpus must exercise each of them.
const WARNING_CODES: &[&str] = &[
    "provider/no-key",
    "provider/probe-timeout",
    "cache/low-threshold",
    "rule/unused-weights",
    "canary/sticky-split",
    "canary/long-rollout",
    "model/no-max-output",
    "provider/unused-settings",
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus")
}

/// The bundled policy repository.
fn bundled_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Every file under `dir`, by path relative to it with `/` separators.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// One expected diagnostic.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    code: String,
    /// `None` for a finding about the repository as a whole.
    file: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.file.as_deref().unwrap_or("-"))?;
        match self.line {
            Some(line) => write!(f, " {line}")?,
            None => write!(f, " -")?,
        }
        if let Some(column) = self.column {
            write!(f, " {column}")?;
        }
        Ok(())
    }
}

impl Expected {
    fn parse(case: &str, text: &str) -> Expected {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let number = |s: &str| -> usize {
            s.parse()
                .unwrap_or_else(|_| panic!("{case}/expect.txt: `{s}` is not a number in `{text}`"))
        };
        match fields.as_slice() {
            [code, "-", "-"] => Expected {
                code: (*code).to_owned(),
                file: None,
                line: None,
                column: None,
            },
            [code, file, line] => Expected {
                code: (*code).to_owned(),
                file: Some((*file).to_owned()),
                line: Some(number(line)),
                column: None,
            },
            [code, file, line, column] => Expected {
                code: (*code).to_owned(),
                file: Some((*file).to_owned()),
                line: Some(number(line)),
                column: Some(number(column)),
            },
            _ => panic!("{case}/expect.txt: expected `code file line [column]`, got `{text}`"),
        }
    }

    /// Whether a diagnostic is this one (code, file, line and, when given, column).
    fn matches(
        &self,
        code: &str,
        file: Option<&str>,
        line: Option<usize>,
        col: Option<usize>,
    ) -> bool {
        code == self.code
            && file == self.file.as_deref()
            && (self.file.is_none() || line == self.line)
            && self.column.is_none_or(|c| col == Some(c))
    }

    fn matches_diag(&self, d: &Diagnostic) -> bool {
        let loc = d.location.as_ref();
        self.matches(
            d.code,
            loc.map(|l| &*l.file),
            loc.map(|l| l.line),
            loc.map(|l| l.column),
        )
    }
}

/// A broken repository: the base with one case laid over it.
struct Case {
    name: String,
    /// What is wrong, from the comments of `expect.txt`.
    about: String,
    files: BTreeMap<String, Vec<u8>>,
    expected: Vec<Expected>,
}

impl Case {
    fn load(&self) -> LoadOutcome {
        let files = policy_files(self.files.iter().map(|(p, b)| (p.clone(), b.clone())));
        load_files(&files, None)
    }

    /// Writes the repository to a fresh directory, for the binary.
    fn write_to(&self, dir: &Path) {
        for (path, bytes) in &self.files {
            let target = dir.join(path);
            std::fs::create_dir_all(target.parent().expect("a file has a parent"))
                .expect("create directory");
            std::fs::write(&target, bytes).expect("write policy file");
        }
    }
}

fn base_files() -> BTreeMap<String, Vec<u8>> {
    read_tree(&corpus().join("base"))
}

/// The cases of `tests/corpus/<kind>/`, sorted by name.
fn cases(kind: &str) -> Vec<Case> {
    let base = base_files();
    let dir = corpus().join(kind);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let mut own = read_tree(&dir.join(&name));
            let expect = own
                .remove("expect.txt")
                .unwrap_or_else(|| panic!("{kind}/{name} has no expect.txt"));
            let expect = String::from_utf8(expect).expect("expect.txt is UTF-8");
            let mut about = Vec::new();
            let mut expected = Vec::new();
            for line in expect.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line.strip_prefix('#') {
                    Some(comment) => about.push(comment.trim().to_owned()),
                    None => expected.push(Expected::parse(&name, line)),
                }
            }
            assert!(
                !expected.is_empty(),
                "{kind}/{name}/expect.txt expects nothing"
            );
            let mut files = base.clone();
            if let Some(remove) = own.remove("remove.txt") {
                let remove = String::from_utf8(remove).expect("remove.txt is UTF-8");
                for path in remove.lines().map(str::trim) {
                    if path.is_empty() || path.starts_with('#') {
                        continue;
                    }
                    assert!(
                        files.remove(path).is_some(),
                        "{kind}/{name}/remove.txt names `{path}`, which the base does not have"
                    );
                }
            }
            files.extend(own);
            Case {
                name,
                about: about.join(" "),
                files,
                expected,
            }
        })
        .collect()
}

fn show(diags: &[Diagnostic]) -> String {
    if diags.is_empty() {
        return "    (none)\n".to_owned();
    }
    diags.iter().map(|d| format!("    {d}\n")).collect()
}

/// What is wrong with a case's outcome, if anything.
fn check(case: &Case, outcome: &LoadOutcome, severity: Severity) -> Option<String> {
    let found: Vec<&Diagnostic> = outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .collect();
    let mut problems = Vec::new();
    for e in &case.expected {
        if !found.iter().any(|d| e.matches_diag(d)) {
            problems.push(format!(
                "expected {} `{e}`, not reported",
                severity.as_str()
            ));
        }
    }
    for d in &found {
        if !case.expected.iter().any(|e| e.matches_diag(d)) {
            problems.push(format!("unexpected {} {d}", severity.as_str()));
        }
    }
    match severity {
        Severity::Error if outcome.policy.is_some() => {
            problems.push("the policy compiled despite its errors".to_owned());
        }
        Severity::Warning if outcome.has_errors() => {
            problems.push("a warnings case must have no error".to_owned());
        }
        _ => {}
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "{} ({}):\n  {}\n  all diagnostics:\n{}",
        case.name,
        case.about,
        problems.join("\n  "),
        show(&outcome.diagnostics)
    ))
}

fn assert_all(kind: &str, severity: Severity) {
    let cases = cases(kind);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case, &case.load(), severity))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {kind} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_base_repository_is_valid_and_clean() {
    let files = base_files();
    let outcome = load_files(&policy_files(files), None);
    assert!(
        outcome.diagnostics.is_empty(),
        "the base must have no finding at all:\n{}",
        show(&outcome.diagnostics)
    );
    let policy = outcome.policy.expect("the base compiles");
    // Every kind is present, so that every case has something to break.
    assert_eq!(policy.providers().len(), 2);
    assert_eq!(policy.models().len(), 4);
    assert_eq!(policy.rules().len(), 4);
    assert_eq!(policy.budgets().len(), 2);
    assert_eq!(policy.downgrades().len(), 2);
    assert_eq!(policy.canaries().len(), 1);
    assert_eq!(policy.cache_ttl_secs("embed"), 86400);
    assert_eq!(outcome.tests.len(), 1);
}

#[test]
fn the_corpus_cannot_silently_shrink() {
    let cases = cases("cases");
    assert!(
        cases.len() >= MIN_CASES,
        "the corpus holds {} broken repositories, fewer than {MIN_CASES}",
        cases.len()
    );
    for (kind, codes) in [("cases", ERROR_CODES), ("warnings", WARNING_CODES)] {
        let covered: BTreeSet<String> = cases_codes(kind);
        let missing: Vec<&&str> = codes.iter().filter(|c| !covered.contains(**c)).collect();
        assert!(missing.is_empty(), "no {kind} case covers {missing:?}");
    }
}

fn cases_codes(kind: &str) -> BTreeSet<String> {
    cases(kind)
        .iter()
        .flat_map(|c| c.expected.iter().map(|e| e.code.clone()))
        .collect()
}

#[test]
fn each_case_reports_exactly_its_mistake() {
    assert_all("cases", Severity::Error);
}

#[test]
fn each_warning_case_reports_exactly_its_warning() {
    assert_all("warnings", Severity::Warning);
}

#[test]
fn a_repository_without_policy_files_is_an_error() {
    let outcome = load_files(&policy_files(Vec::new()), None);
    assert!(outcome.policy.is_none());
    let codes: Vec<&str> = outcome.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["source/empty"]);
    // Files that are not YAML are not policy files.
    let outcome = load_files(
        &policy_files([("README.md".to_owned(), b"# policies\n".to_vec())]),
        None,
    );
    assert_eq!(outcome.diagnostics[0].code, "source/empty");
}

// --- the binary -------------------------------------------------------------------------------

fn policy_cli(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmgw-policy"))
        .arg("lint")
        .arg(dir)
        .args(args)
        .output()
        .expect("run llmgw-policy")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// The diagnostics of `lint --format json` whose severity is `severity`.
fn json_findings(out: &Output, severity: &str) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> = serde_json::from_str(&stdout(out)).unwrap_or_else(|e| {
        panic!(
            "lint --format json printed no JSON array: {e}\n{}",
            stdout(out)
        )
    });
    for d in &all {
        for field in ["file", "line", "column", "severity", "code", "message"] {
            assert!(d.get(field).is_some(), "`{field}` missing from {d}");
        }
    }
    all.into_iter()
        .filter(|d| d["severity"] == severity)
        .collect()
}

fn json_matches(e: &Expected, d: &serde_json::Value) -> bool {
    let as_usize = |v: &serde_json::Value| v.as_u64().map(|n| n as usize);
    e.matches(
        d["code"].as_str().unwrap_or_default(),
        d["file"].as_str(),
        as_usize(&d["line"]),
        as_usize(&d["column"]),
    )
}

#[test]
fn the_binary_agrees_with_the_library_on_every_case() {
    let mut failures = Vec::new();
    for case in cases("cases") {
        let dir = tempfile::tempdir().expect("temporary directory");
        case.write_to(dir.path());
        let out = policy_cli(&["--format", "json"], dir.path());
        if out.status.code() != Some(1) {
            failures.push(format!("{}: exit {:?}, not 1", case.name, out.status));
            continue;
        }
        let errors = json_findings(&out, "error");
        for e in &case.expected {
            if !errors.iter().any(|d| json_matches(e, d)) {
                failures.push(format!(
                    "{}: `{e}` missing from\n{}",
                    case.name,
                    stdout(&out)
                ));
            }
        }
        if errors.len()
            != case
                .load()
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .count()
        {
            failures.push(format!(
                "{}: the binary and the library disagree",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn github_format_prints_workflow_commands_at_the_mistake() {
    let case = cases("cases")
        .into_iter()
        .find(|c| c.name == "cel-unknown-field")
        .expect("the cel-unknown-field case");
    let e = &case.expected[0];
    let dir = tempfile::tempdir().expect("temporary directory");
    case.write_to(dir.path());
    let out = policy_cli(&["--format", "github"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let prefix = format!(
        "::error file={},line={},col={}",
        e.file.as_deref().expect("a file"),
        e.line.expect("a line"),
        e.column.expect("a column")
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line starts with `{prefix}`:\n{text}"));
    let (props, message) = line
        .strip_prefix("::error ")
        .and_then(|rest| rest.split_once("::"))
        .unwrap_or_else(|| panic!("not a workflow command: {line}"));
    assert!(props.starts_with("file="), "{line}");
    assert!(
        message.contains(&e.code),
        "the message names the code: {line}"
    );
    assert!(!message.contains('\n'));
}

#[test]
fn human_format_shows_the_code_and_the_place() {
    let case = cases("cases")
        .into_iter()
        .find(|c| c.name == "unknown-model-candidate")
        .expect("the unknown-model-candidate case");
    let e = &case.expected[0];
    let dir = tempfile::tempdir().expect("temporary directory");
    case.write_to(dir.path());
    let out = policy_cli(&[], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains(&e.code), "{text}");
    let place = format!(
        "{}:{}:{}",
        e.file.as_deref().expect("a file"),
        e.line.expect("a line"),
        e.column.expect("a column")
    );
    assert!(text.contains(&place), "`{place}` missing from\n{text}");
    assert!(text.contains("1 error(s)"), "{text}");
}

#[test]
fn lint_exits_0_on_clean_repositories() {
    for dir in [bundled_policies(), corpus().join("base")] {
        let out = policy_cli(&["--format", "json", "--deny-warnings"], &dir);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}{}",
            dir.display(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout(&out).trim(), "[]");
    }
}

#[test]
fn warnings_fail_lint_only_when_denied() {
    for case in cases("warnings") {
        let dir = tempfile::tempdir().expect("temporary directory");
        case.write_to(dir.path());
        let out = policy_cli(&["--format", "json"], dir.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            case.name,
            stdout(&out)
        );
        let warnings = json_findings(&out, "warning");
        for e in &case.expected {
            assert!(
                warnings.iter().any(|d| json_matches(e, d)),
                "{}: `{e}` missing from\n{}",
                case.name,
                stdout(&out)
            );
        }
        let out = policy_cli(&["--format", "json", "--deny-warnings"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{}", case.name);
    }
}

#[test]
fn lint_exits_2_on_a_missing_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-policies");
    let out = policy_cli(&["--format", "json"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-policies"),
        "the error names the directory"
    );
    // A file is not a policy repository either.
    let file = dir.path().join("routing.yaml");
    std::fs::write(&file, "apiVersion: llmgw.dev/v1\n").expect("write");
    assert_eq!(policy_cli(&[], &file).status.code(), Some(2));
}

#[test]
fn lint_exits_2_on_a_bad_flag() {
    let out = policy_cli(&["--format", "xml"], &corpus().join("base"));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lint_of_an_empty_directory_is_a_finding() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = policy_cli(&["--format", "json"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let errors = json_findings(&out, "error");
    assert_eq!(errors.len(), 1, "{}", stdout(&out));
    assert_eq!(errors[0]["code"], "source/empty");
    assert!(errors[0]["file"].is_null());
}

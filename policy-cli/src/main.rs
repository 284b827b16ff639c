//! `llmgw-policy`: lint, test and explain llmgw policy repositories.
//!
//! Exit codes: 0 clean, 1 findings or failures, 2 usage or I/O error.

mod render;

use clap::{Parser, Subcommand};
use llmgw_engine::input::DecisionInput;
use llmgw_engine::load::{load_files, LoadOutcome};
use llmgw_engine::source::{is_policy_file, policy_files, PolicyFile};
use llmgw_engine::trace::Trace;
use llmgw_engine::{diag::Severity, testing};
use render::Format;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "llmgw-policy",
    version,
    about = "Lint, test and explain llmgw policy repositories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy repository: YAML, schemas, CEL, references, secrets.
    Lint {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run the policy unit tests kept in the repository.
    Test {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Show how a request is decided, step by step.
    Explain {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// A JSON file with the request, identity and optional live stats and state.
        #[arg(long)]
        request: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: ExplainFormat,
    },
    /// Replay recorded traffic through two revisions of a policy repository in git.
    Diff {
        /// The base revision (branch, tag or commit).
        base: String,
        /// The head revision.
        head: String,
        /// The git repository.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Recorded requests: the gateway's decision log (JSONL).
        #[arg(long)]
        traffic: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "markdown")]
        format: DiffFormat,
    },
    /// Canary statistics offline.
    #[command(subcommand)]
    Canary(CanaryCommand),
}

#[derive(Subcommand)]
enum CanaryCommand {
    /// Run the rollback checks over recorded events (one JSON object a line:
    /// `{"w":0.05,"arm":"candidate","error":true,"latency_ms":812}`).
    Analyze {
        /// The events file.
        events: PathBuf,
        /// False-rollback budget of the whole rollout.
        #[arg(long, default_value_t = 0.01)]
        alpha: f64,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: ExplainFormat,
    },
    /// Monte Carlo of false rollbacks and detection delays, beside a naive repeated z-test and
    /// a fixed-horizon test.
    Simulate {
        /// Simulated canaries per scenario.
        #[arg(long, default_value_t = 10_000)]
        sims: usize,
        /// Seed of every random stream.
        #[arg(long, default_value_t = llmgw_canary::simulate::DEFAULT_SEED)]
        seed: u64,
        /// Worker threads; 0 means one per core.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: ExplainFormat,
    },
}

/// Formats of `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExplainFormat {
    Human,
    Json,
}

/// Formats of `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiffFormat {
    Markdown,
    Json,
}

/// A failure that is not a finding: exit 2.
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lint {
            dir,
            format,
            deny_warnings,
        } => lint(&dir, format, deny_warnings),
        Command::Test { dir } => test(&dir),
        Command::Explain {
            dir,
            request,
            format,
        } => explain(&dir, &request, format),
        Command::Diff {
            base,
            head,
            repo,
            traffic,
            format,
        } => diff(&repo, &base, &head, &traffic, format),
        Command::Canary(CanaryCommand::Analyze {
            events,
            alpha,
            format,
        }) => canary_analyze(&events, alpha, format),
        Command::Canary(CanaryCommand::Simulate {
            sims,
            seed,
            threads,
            format,
        }) => {
            let cfg = llmgw_canary::SimConfig {
                sims,
                seed,
                threads,
            };
            let report = llmgw_canary::simulate(&cfg);
            match format {
                ExplainFormat::Json => println!("{}", to_json(&report)),
                ExplainFormat::Human => print!("{}", report.render_human()),
            }
            Ok(true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn read(dir: &Path) -> Result<Vec<PolicyFile>, UsageError> {
    if !dir.is_dir() {
        return Err(UsageError(format!("{} is not a directory", dir.display())));
    }
    llmgw_git::files_in_dir(dir, is_policy_file)
        .map(policy_files)
        .map_err(|e| UsageError(e.to_string()))
}

fn lint(dir: &Path, format: Format, deny_warnings: bool) -> Result<bool, UsageError> {
    let files = read(dir)?;
    let outcome = load_files(&files, None);
    print!(
        "{}",
        render::diagnostics(&outcome.diagnostics, &files, format)
    );
    let errors = outcome.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    if format == Format::Human {
        println!(
            "{} file(s) checked: {errors} error(s), {warnings} warning(s)",
            files.len()
        );
    }
    Ok(errors == 0 && (!deny_warnings || warnings == 0))
}

/// Loads a repository that must compile; prints its diagnostics when it does not.
fn compiled(dir: &Path) -> Result<(Vec<PolicyFile>, LoadOutcome), UsageError> {
    let files = read(dir)?;
    let outcome = load_files(&files, None);
    if outcome.policy.is_none() {
        eprint!(
            "{}",
            render::diagnostics(&outcome.diagnostics, &files, Format::Human)
        );
        return Err(UsageError(format!(
            "{} does not compile; run `llmgw-policy lint` for details",
            dir.display()
        )));
    }
    Ok((files, outcome))
}

fn test(dir: &Path) -> Result<bool, UsageError> {
    let (_, outcome) = compiled(dir)?;
    let Some(policy) = &outcome.policy else {
        return Ok(false);
    };
    let results = testing::run(policy, &outcome.tests);
    for r in &results {
        if r.passed() {
            println!("ok   {} ({})", r.name, r.location);
            continue;
        }
        println!("FAIL {} ({})", r.name, r.location);
        if let Some(e) = &r.error {
            println!("     error: {e}");
        }
        for m in &r.mismatches {
            println!("     {}:", m.field);
            println!("       - expected: {}", m.expected);
            println!("       + actual:   {}", m.actual);
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(failed == 0)
}

fn explain(dir: &Path, request: &Path, format: ExplainFormat) -> Result<bool, UsageError> {
    let (_, outcome) = compiled(dir)?;
    let Some(policy) = &outcome.policy else {
        return Ok(false);
    };
    let text = std::fs::read_to_string(request)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", request.display())))?;
    let input: DecisionInput = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{}: {e}", request.display())))?;
    let mut trace = Trace::on();
    let decision = policy.decide_traced(&input.context(), &input, &input, &mut trace);
    match format {
        ExplainFormat::Json => {
            let out = serde_json::json!({
                "revision": policy.revision(),
                "steps": trace.steps(),
                "decision": decision.as_ref().ok(),
                "error": decision.as_ref().err().map(ToString::to_string),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        ExplainFormat::Human => {
            println!("policy revision {}", policy.revision());
            for step in trace.steps() {
                println!("  {}", describe(step));
            }
            match &decision {
                Ok(d) => {
                    println!(
                        "decision: rule `{}`, strategy {:?}, action {}",
                        d.rule,
                        d.strategy,
                        d.budget_action.as_str()
                    );
                    if let Some(g) = &d.downgrade {
                        println!("  downgraded from {} to {} by `{}`", g.from, g.to, g.rule);
                    }
                    for (i, a) in d.attempts.iter().enumerate() {
                        println!(
                            "  {}. {} (model {}, provider {}, region {}, upstream {})",
                            i + 1,
                            a.deployment,
                            a.model,
                            a.provider,
                            a.region,
                            a.upstream_model
                        );
                    }
                    println!("  estimated cost ${:.6}", d.estimated_cost_usd);
                }
                Err(e) => println!("no decision: {e}"),
            }
        }
    }
    Ok(decision.is_ok())
}

/// Loads a revision of a git repository.
fn load_rev(
    repo: &llmgw_git::PolicyRepo,
    rev: &str,
) -> Result<(Vec<PolicyFile>, LoadOutcome), UsageError> {
    let commit = repo.resolve(rev).map_err(|e| UsageError(e.to_string()))?;
    let files = repo
        .files_at(&commit.id, is_policy_file)
        .map(policy_files)
        .map_err(|e| UsageError(e.to_string()))?;
    let outcome = load_files(&files, Some(&commit.id));
    Ok((files, outcome))
}

/// Exit 1 when HEAD does not lint clean.
fn diff(
    repo: &Path,
    base: &str,
    head: &str,
    traffic: &Path,
    format: DiffFormat,
) -> Result<bool, UsageError> {
    let repo = llmgw_git::PolicyRepo::open(&repo.to_string_lossy(), &std::env::temp_dir())
        .map_err(|e| UsageError(e.to_string()))?;
    let (head_files, head_out) = load_rev(&repo, head)?;
    if head_out.has_errors() {
        match format {
            DiffFormat::Json => print!(
                "{}",
                render::diagnostics(&head_out.diagnostics, &head_files, Format::Json)
            ),
            DiffFormat::Markdown => {
                println!("### llmgw policy diff: `{head}` does not lint clean\n\n```");
                print!(
                    "{}",
                    render::diagnostics(&head_out.diagnostics, &head_files, Format::Human)
                );
                println!("```");
            }
        }
        return Ok(false);
    }
    let (_, base_out) = load_rev(&repo, base)?;
    let (Some(base_policy), Some(head_policy)) = (&base_out.policy, &head_out.policy) else {
        return Err(UsageError(format!(
            "`{base}` does not compile, so there is nothing to compare with"
        )));
    };
    let text = std::fs::read_to_string(traffic)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", traffic.display())))?;
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record = serde_json::from_str(line)
            .map_err(|e| UsageError(format!("{} line {}: {e}", traffic.display(), i + 1)))?;
        records.push(record);
    }
    let report = llmgw_engine::diff::diff(base_policy, head_policy, &records);
    match format {
        DiffFormat::Json => println!("{}", to_json(&report)),
        DiffFormat::Markdown => print!("{}", report.markdown()),
    }
    Ok(true)
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Exit 1 when the checks call for a rollback.
fn canary_analyze(events: &Path, alpha: f64, format: ExplainFormat) -> Result<bool, UsageError> {
    let text = std::fs::read_to_string(events)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", events.display())))?;
    let report = llmgw_canary::analyze(&text, alpha)
        .map_err(|e| UsageError(format!("{}: {e}", events.display())))?;
    match format {
        ExplainFormat::Json => println!("{}", to_json(&report)),
        ExplainFormat::Human => print!("{}", report.render_human()),
    }
    Ok(report.decision == llmgw_canary::analyze::Decision::Continue)
}

fn describe(step: &llmgw_engine::trace::Step) -> String {
    use llmgw_engine::trace::Step;
    match step {
        Step::Budget {
            budget,
            principal,
            spent_usd,
            limit_usd,
            request_usd,
        } => format!(
            "budget `{budget}` for `{principal}`: spent ${spent_usd:.4} of ${limit_usd:.2}, this request up to ${request_usd:.6}"
        ),
        Step::RateLimit {
            limit,
            bucket,
            remaining,
        } => format!(
            "rate limit `{limit}` counts the request in `{bucket}`: {:.0}% left",
            remaining * 100.0
        ),
        Step::Downgrade {
            rule,
            from,
            to,
            fired,
        } => format!(
            "downgrade `{rule}` {from} → {to}: {}",
            if *fired { "applies" } else { "does not apply" }
        ),
        Step::Blocked { budget } => format!("blocked by budget `{budget}`"),
        Step::Rule {
            rule,
            location,
            matched,
        } => format!(
            "rule `{rule}` ({location}): {}",
            if *matched { "matches" } else { "no match" }
        ),
        Step::CandidateDropped { model, reason } => format!("candidate {model} dropped: {reason}"),
        Step::DeploymentSkipped { deployment, reason } => {
            format!("deployment {deployment} skipped: {reason}")
        }
        Step::EvalError {
            location,
            expression,
            message,
            taken_as,
        } => format!("`{expression}` ({location}) failed to evaluate, taken as {taken_as}: {message}"),
        Step::Canary {
            canary,
            weight_percent,
            arm,
        } => format!("canary `{canary}` at {weight_percent}%: {arm}"),
    }
}

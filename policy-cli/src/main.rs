//! `llmgw-policy`: lint, test and explain llmgw policy repositories.
//!
//! Exit codes: 0 clean, 1 findings or failures, 2 usage or I/O error.

mod junit;
mod plan;
mod render;
mod test_cmd;
mod traffic;

use clap::{Parser, Subcommand};
use llmgw_engine::diag::Severity;
use llmgw_engine::input::DecisionInput;
use llmgw_engine::load::{load_files, LoadOutcome};
use llmgw_engine::record::DecisionRecord;
use llmgw_engine::source::{is_policy_file, policy_files, PolicyFile};
use llmgw_engine::trace::Trace;
use render::Format;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use test_cmd::{Filter, TestFormat};

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
        /// Run only the cases whose name contains NAME, or matches it as a glob when it holds
        /// `*` or `?`; repeat for several.
        #[arg(long, value_name = "NAME")]
        filter: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: TestFormat,
        /// Rewrite the expected values of failing cases to what the policy now decides, in
        /// place (comments and layout kept), then run the cases again.
        #[arg(long)]
        update: bool,
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
    /// Recorded traffic for `diff`.
    #[command(subcommand)]
    Traffic(TrafficCommand),
}

#[derive(Subcommand)]
enum TrafficCommand {
    /// Sample the gateway's decision log (JSONL) and anonymise it for the policy repository:
    /// ids become keyed hashes, metadata and label values are dropped unless allow-listed.
    /// Writes JSONL to standard output.
    #[command(alias = "anonymize")]
    Anonymise {
        /// The decision log.
        log: PathBuf,
        /// A file holding the secret key of the hashes (at least 16 bytes); keep it out of the
        /// repository and reuse it so the same id keeps its token.
        #[arg(long)]
        key_file: PathBuf,
        /// The fraction of requests kept.
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
        /// Metadata keys whose values are kept (comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        allow_meta: Vec<String>,
        /// Label keys of keys, users, projects and tenants whose values are kept.
        #[arg(long, value_delimiter = ',')]
        allow_label: Vec<String>,
        /// Kinds of id kept in the clear, for ids the rules name.
        #[arg(long, value_delimiter = ',', value_enum)]
        keep_ids: Vec<traffic::Kind>,
    },
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
    /// How long each canary's rollout takes at a traffic rate: time to promotion of a healthy
    /// candidate, and to the rollback of a doubled error rate and of latencies x1.3, from a
    /// simulation of the canary's own steps and metrics.
    Plan {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Requests to each canary's model: `100/h`, `2/s`, `30/min`, `5000/d`.
        #[arg(long, value_parser = plan::parse_rate)]
        rate: f64,
        /// The baseline's error rate: `1%` or `0.01`.
        #[arg(long, default_value = "1%", value_parser = plan::parse_error_rate)]
        base_error: f64,
        /// Simulated rollouts per regression.
        #[arg(long, default_value_t = 200)]
        sims: usize,
        /// Seed of every random stream.
        #[arg(long, default_value_t = llmgw_canary::simulate::DEFAULT_SEED)]
        seed: u64,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: ExplainFormat,
    },
    /// Monte Carlo of false rollbacks and detection delays, beside a naive repeated z-test and
    /// a fixed-horizon test; with `--policy`, of each canary of a repository on fleets of 1, 2,
    /// 4 and 8 replicas sharing its rollout.
    Simulate {
        /// Simulated canaries per scenario.
        #[arg(long, default_value_t = 10_000)]
        sims: usize,
        /// Simulate the canaries of this policy repository (their own steps, metrics, margins
        /// and alpha) run by fleets of replicas, instead of the reference scenarios.
        #[arg(long, value_name = "DIR")]
        policy: Option<PathBuf>,
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
        Command::Test {
            dir,
            filter,
            format,
            update,
        } => test(&dir, &Filter::new(filter), format, update),
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
        Command::Traffic(TrafficCommand::Anonymise {
            log,
            key_file,
            sample,
            allow_meta,
            allow_label,
            keep_ids,
        }) => std::fs::read(&key_file)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", key_file.display())))
            .and_then(|key| {
                traffic::Anonymiser::new(key, sample, allow_meta, allow_label, keep_ids)
                    .map_err(|e| UsageError(format!("{}: {e}", key_file.display())))
            })
            .and_then(|anonymiser| anonymise(&log, &anonymiser)),
        Command::Canary(CanaryCommand::Plan {
            dir,
            rate,
            base_error,
            sims,
            seed,
            format,
        }) => {
            let cfg = llmgw_canary::PlanConfig {
                requests_per_hour: rate,
                base_error_rate: base_error,
                sims,
                seed,
                threads: 0,
            };
            canary_plan(&dir, &cfg, format)
        }
        Command::Canary(CanaryCommand::Simulate {
            sims,
            policy: Some(dir),
            seed,
            threads,
            format,
        }) => {
            let cfg = llmgw_canary::PlanConfig {
                sims,
                seed,
                threads,
                ..plan::FLEET_TRAFFIC
            };
            canary_fleet(&dir, &cfg, format)
        }
        Command::Canary(CanaryCommand::Simulate {
            sims,
            policy: None,
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

fn test(dir: &Path, filter: &Filter, format: TestFormat, update: bool) -> Result<bool, UsageError> {
    let (files, outcome) = compiled(dir)?;
    let mut results = test_cmd::run(&outcome, filter);
    if results.is_empty() && !outcome.tests.is_empty() {
        return Err(UsageError(format!(
            "no case of the {} in {} matches --filter",
            outcome.tests.len(),
            dir.display()
        )));
    }
    if update && results.iter().any(|r| !r.passed()) {
        let updated = test_cmd::update(dir, &files, &results);
        for u in &updated {
            match &u.error {
                None => eprintln!("updated {} case(s) in {}", u.cases, u.file),
                Some(e) => eprintln!("could not update {}: {e}", u.file),
            }
        }
        // What the files say now, as a reviewer will see it.
        let (_, outcome) = compiled(dir)?;
        results = test_cmd::run(&outcome, filter);
    }
    let skipped = outcome.tests.len() - results.len();
    print!("{}", test_cmd::report(&results, skipped, format));
    Ok(results.iter().all(|r| r.passed()))
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

/// Streams the log through the anonymiser to standard output.
fn anonymise(log: &Path, anonymiser: &traffic::Anonymiser) -> Result<bool, UsageError> {
    use std::io::{BufRead, Write};
    let file = std::fs::File::open(log)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", log.display())))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut read, mut kept) = (0usize, 0usize);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|e| UsageError(format!("{} line {}: {e}", log.display(), i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        read += 1;
        let record: DecisionRecord = serde_json::from_str(&line)
            .map_err(|e| UsageError(format!("{} line {}: {e}", log.display(), i + 1)))?;
        if let Some(record) = anonymiser.apply(record) {
            kept += 1;
            let text = serde_json::to_string(&record).unwrap_or_default();
            writeln!(out, "{text}")
                .map_err(|e| UsageError(format!("cannot write the output: {e}")))?;
        }
    }
    out.flush()
        .map_err(|e| UsageError(format!("cannot write the output: {e}")))?;
    eprintln!("kept {kept} of {read} records");
    Ok(true)
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Plans every canary of the repository; exit 0 (a long rollout is a warning).
fn canary_plan(
    dir: &Path,
    cfg: &llmgw_canary::PlanConfig,
    format: ExplainFormat,
) -> Result<bool, UsageError> {
    let (_, outcome) = compiled(dir)?;
    let Some(policy) = &outcome.policy else {
        return Ok(false);
    };
    let mut plans = Vec::new();
    for c in policy.canaries() {
        let p = llmgw_canary::plan(&c.spec, cfg)
            .map_err(|e| UsageError(format!("canary `{}`: {e}", c.name)))?;
        plans.push(plan::CanaryPlan {
            canary: c.name.to_string(),
            longer_than_a_month: p.longer_than_a_month(),
            plan: p,
        });
    }
    match format {
        ExplainFormat::Json => println!("{}", to_json(&plans)),
        ExplainFormat::Human => print!("{}", plan::render_human(&plans, cfg)),
    }
    Ok(true)
}

/// Simulates every canary of the repository on fleets of 1, 2, 4 and 8 replicas.
fn canary_fleet(
    dir: &Path,
    cfg: &llmgw_canary::PlanConfig,
    format: ExplainFormat,
) -> Result<bool, UsageError> {
    let (_, outcome) = compiled(dir)?;
    let Some(policy) = &outcome.policy else {
        return Ok(false);
    };
    let mut all = Vec::new();
    for c in policy.canaries() {
        let report = llmgw_canary::fleet(&c.spec, cfg, &plan::FLEET_SIZES, plan::FLEET_BATCH)
            .map_err(|e| UsageError(format!("canary `{}`: {e}", c.name)))?;
        all.push(plan::CanaryFleet {
            canary: c.name.to_string(),
            report,
        });
    }
    match format {
        ExplainFormat::Json => println!("{}", to_json(&all)),
        ExplainFormat::Human => print!("{}", plan::render_fleet(&all, cfg)),
    }
    Ok(true)
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

//! The `llmgw` command line: `llmgw serve`, `llmgw keys …`, `llmgw tenants …`, `llmgw spend`
//! and `llmgw sign`.

use crate::app::{App, Limits};
use crate::keys::{KeyCache, KeySetup};
use crate::keys_cmd::{KeysCommand, SignArgs, SpendArgs, TenantsCommand};
use crate::policy_source::{self, PolicyLocation};
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// llmgw: an LLM API gateway whose routing is a policy repository.
#[derive(Debug, Parser)]
#[command(name = "llmgw", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(Box<ServeArgs>),
    /// Manage gateway keys: create, list, show, rotate, revoke.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Set or show a tenant's labels.
    Tenants {
        /// What to do.
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Print a spend report from the ledger.
    Spend(SpendArgs),
    /// Mint tenant tokens (`x-llmgw-tenant-token`) for platforms and tests.
    TenantToken {
        /// What to do.
        #[command(subcommand)]
        command: crate::tenant_token::TokenCommand,
    },
    /// Print the `x-llmgw-signature` header value of a request body, signed with a key's
    /// private Ed25519 signing key.
    Sign(SignArgs),
    /// Measure near-duplicate cache matching on a labelled set of prompt pairs: precision
    /// and recall per threshold, with and without the guard.
    CacheEval(crate::cache::eval::EvalArgs),
}

/// Options of `llmgw serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where policies come from.
    #[command(flatten)]
    pub policy: crate::policy_source::PolicyArgs,
    /// The decision log.
    #[command(flatten)]
    pub decision_log: crate::decision_log::DecisionLogArgs,
    /// OpenTelemetry traces.
    #[command(flatten)]
    pub otel: crate::otel::OtelArgs,
    /// Address to listen on (port 0 picks a free port, printed at start-up).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address of the admin listener: `/metrics` and `/admin/…`, apart from the API (port 0
    /// picks a free port, printed at start-up).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Durable state (keys, budget spend, the spend ledger): a directory holding
    /// `state.sqlite`, or `redis://…` to share it between replicas.
    #[arg(long, value_name = "DIR|URL", default_value = ".llmgw-state")]
    pub state: PathBuf,
    /// Key prefix in Redis (several gateways may share one Redis under different prefixes).
    #[arg(long, value_name = "PREFIX", default_value = "llmgw:")]
    pub state_prefix: String,
    /// The admin token of the admin listener: `/metrics`, `/admin/status`, `/admin/keys…`,
    /// `/admin/spend` and `/admin/decisions` for every tenant, and `/admin/canaries…`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LLMGW_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Registers this gateway key with full access (local use and tests).
    #[arg(
        long,
        value_name = "KEY",
        env = "LLMGW_DEV_KEY",
        hide_env_values = true
    )]
    pub dev_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a whole request body (answered 408 past it).
    #[arg(long, default_value_t = 30)]
    pub body_read_timeout_secs: u64,
    /// Seconds after which an idle client connection is closed.
    #[arg(long, default_value_t = 90)]
    pub idle_timeout_secs: u64,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Seconds a response stored by `POST /v1/responses` (`store`, the default) is kept for
    /// `GET /v1/responses/{id}` and `previous_response_id`.
    #[arg(long, default_value_t = crate::app::DEFAULT_RESPONSE_RETENTION_SECS)]
    pub response_retention_secs: u64,
    /// Bytes the response cache may hold (answers, prompt vectors, bookkeeping); 0 turns it
    /// off. Entries live for the TTL of the policy's `kind: Cache` rules.
    #[arg(long, value_name = "BYTES", default_value_t = crate::cache::DEFAULT_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// With `--state redis://…`, where the response cache is shared by the replicas: the most
    /// entries (answers and near-duplicate buckets) each tenant keeps in Redis; storing past
    /// it drops those nearest their expiry.
    #[arg(long, value_name = "N", default_value_t = crate::cache::shared::DEFAULT_TENANT_ENTRIES)]
    pub cache_tenant_entries: u64,
    /// A key that opens tenant tokens: `KID=env:NAME` or `KID=file:PATH` (32 bytes, hex or
    /// base64), optionally `,until=<RFC 3339 time>` when it retires (repeatable).
    #[arg(long = "tenant-token-key", value_name = "KID=REF[,until=TIME]")]
    pub tenant_token_keys: Vec<String>,
    /// Log filter (`info`, `warn`, `llmgw=debug`…); logs are JSON lines on stderr.
    #[arg(long, env = "LLMGW_LOG", default_value = "info")]
    pub log: String,
}

/// Runs the command line; returns the exit code (0 ok, 2 usage or start-up error).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("llmgw: cannot start the async runtime: {e}");
            return 2;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Keys { command } => report(runtime.block_on(crate::keys_cmd::keys(command))),
        Command::Tenants { command } => report(runtime.block_on(crate::keys_cmd::tenants(command))),
        Command::Spend(args) => report(runtime.block_on(crate::keys_cmd::spend(args))),
        Command::TenantToken { command } => match crate::tenant_token::run(command) {
            Ok(out) => report(Ok(out)),
            Err(e) => {
                eprintln!("llmgw: {e}");
                2
            }
        },
        Command::Sign(args) => report(crate::keys_cmd::sign(args)),
        Command::CacheEval(args) => report(crate::cache::eval::run(args)),
    }
}

/// `llmgw serve`.
pub async fn serve(args: ServeArgs) -> i32 {
    crate::logging::init(&args.log);
    // The ports first: the most common start-up failure, found before any slower step.
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("llmgw: cannot listen on {}: {e}", args.listen);
            return 2;
        }
    };
    let admin_listener = match tokio::net::TcpListener::bind(&args.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "llmgw: cannot listen on {} for the admin API (--admin-listen): {e}",
                args.admin_listen
            );
            return 2;
        }
    };
    let tenant_tokens = match crate::tenant_token::TenantTokens::from_args(&args.tenant_token_keys)
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("llmgw: --tenant-token-key: {e}");
            return 2;
        }
    };
    let location = args.policy.location();
    if location == PolicyLocation::Embedded && policy_source::embedded_files().is_empty() {
        eprintln!("llmgw: this binary holds no bundled policies; pass --policies DIR");
        return 2;
    }
    let access = match args.policy.git_access() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("llmgw: {e}");
            return 2;
        }
    };
    let webhook_secret = match args.policy.webhook_secret.as_deref() {
        Some(r) => match policy_source::resolve_secret("--webhook-secret", r) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("llmgw: {e}");
                return 2;
            }
        },
        None => None,
    };
    let state_location = args.state.to_string_lossy().into_owned();
    let store = match crate::keys_cmd::open_store(&state_location, &args.state_prefix).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("llmgw: cannot open the state store {state_location}: {e}");
            return 2;
        }
    };
    // The last good policy revision lives in the state store (shared by replicas on Redis);
    // mirrors of remote policy repositories in the state directory, or a temporary one.
    let started = {
        let location = location.clone();
        let cache_dir = match store {
            crate::store::Store::Sqlite(_) => args.state.join("repos"),
            _ => std::env::temp_dir().join("llmgw-repos"),
        };
        let last_good = crate::reload::LastGoodStore::in_store(
            store.clone(),
            tokio::runtime::Handle::current(),
        );
        tokio::task::spawn_blocking(move || {
            crate::reload::start(location, access, &cache_dir, last_good)
        })
        .await
    };
    let crate::reload::Started {
        runtime,
        status: policy_status,
        reloader,
    } = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("llmgw: {e}");
            return 2;
        }
        Err(e) => {
            eprintln!("llmgw: loading the policy failed: {e}");
            return 2;
        }
    };
    let key_setup = match crate::keys::setup(&store, args.dev_key.as_deref()).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("llmgw: {e}");
            return 2;
        }
    };
    let keys = KeyCache::new(store);
    let (addr, admin_addr) = match (listener.local_addr(), admin_listener.local_addr()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("llmgw: cannot read the listening address: {e}");
            return 2;
        }
    };
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs.max(1)),
        body_read_timeout: Duration::from_secs(args.body_read_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        response_retention: Duration::from_secs(args.response_retention_secs.max(1)),
    };
    let first_model = runtime.policy.models().first().map(|m| m.name.to_string());
    let revision = runtime.policy.revision().to_owned();
    let (n_models, n_providers) = (
        runtime.policy.models().len(),
        runtime.policy.providers().len(),
    );
    let mut app = App::new(runtime, keys, limits);
    app.admin_token = args
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(crate::admin::AdminToken::new);
    app.policy_status = policy_status;
    app.tenant_tokens = tenant_tokens;
    app.webhook_secret = webhook_secret;
    let cache_metrics = app.metrics.cache.clone();
    app.cache = match &app.state {
        crate::store::Store::Redis(redis) => {
            let shared = crate::cache::shared::Shared::new(
                redis,
                app.store_health.clone(),
                args.cache_tenant_entries,
                cache_metrics.clone(),
            );
            crate::cache::ResponseCache::shared(args.cache_max_bytes, cache_metrics, shared)
        }
        crate::store::Store::Sqlite(_) => {
            crate::cache::ResponseCache::new(args.cache_max_bytes, cache_metrics)
        }
    };
    app.decision_log = match args.decision_log.open(&app.metrics) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("llmgw: {e}");
            return 2;
        }
    };
    app.otel = match args.otel.start(tokio::runtime::Handle::current()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("llmgw: {e}");
            return 2;
        }
    };
    let app = Arc::new(app);
    // Canaries resume from the state store (or start) before the first request is served.
    let canaries = crate::canary_controller::start(app.clone()).await;
    crate::reload::publish_start(&*app);
    let lkg = if app.policy_status.serving_last_known_good() {
        "; the last known good revision: the head does not load, see /admin/status on the admin listener"
    } else {
        ""
    };
    let state_dir =
        matches!(app.state, crate::store::Store::Sqlite(_)).then_some(args.state.as_path());
    let watcher = crate::watch::spawn(app.clone(), reloader, args.policy.poll_interval, state_dir);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "llmgw listening on http://{addr}");
    let _ = writeln!(
        out,
        "admin API (/metrics, /admin/…) listening on http://{admin_addr}{}",
        if app.admin_token.is_some() {
            ""
        } else {
            " (no --admin-token: tenant admin keys only)"
        }
    );
    let _ = writeln!(
        out,
        "policy revision {revision} from {location} ({n_models} models, {n_providers} providers{lkg})"
    );
    let shown_key = match &key_setup {
        KeySetup::DevKey => {
            let _ = writeln!(out, "gateway key: the --dev-key / LLMGW_DEV_KEY value");
            None
        }
        KeySetup::Generated(secret) => {
            let _ = writeln!(
                out,
                "gateway key (shown once; only its SHA-256 is kept in {state_location}): {secret}"
            );
            Some(secret.as_str())
        }
        KeySetup::Stored(n) => {
            let _ = writeln!(
                out,
                "gateway keys: {n} stored in {state_location} (see `llmgw keys list`)"
            );
            None
        }
    };
    if let Some(model) = first_model {
        let key = shown_key.unwrap_or("$KEY");
        let _ = writeln!(
            out,
            "try: curl -N http://{addr}/v1/chat/completions -H 'Authorization: Bearer {key}' \
             -H 'content-type: application/json' \
             -d '{{\"model\":\"{model}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'"
        );
    }
    let _ = out.flush();
    drop(out);
    tracing::info!(target: "llmgw::server", %addr, %admin_addr, revision = revision.as_str(), "serving");
    crate::server::serve(listener, admin_listener, app.clone(), shutdown_signal()).await;
    if let Some(w) = watcher {
        w.abort();
    }
    app.canaries.flush(Duration::from_secs(5)).await;
    if let Some(c) = canaries {
        c.abort();
    }
    app.decision_log.close(Duration::from_secs(5));
    let exporting = app.clone();
    // The exporter's last batch is sent from its own thread on this runtime.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(otel) = &exporting.otel {
            otel.shutdown();
        }
    })
    .await;
    if !app.state.flush(Duration::from_secs(5)).await {
        tracing::error!(target: "llmgw::budget", "spend-ledger rows were still unwritten at shutdown");
    }
    tracing::info!(target: "llmgw::server", "stopped");
    crate::logging::flush();
    0
}

/// Prints a command's output (or its error) and returns the exit code.
fn report(result: Result<String, crate::keys_cmd::CmdError>) -> i32 {
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            0
        }
        Err(e) => {
            eprintln!("llmgw: {e}");
            e.exit_code()
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

//! `llmgw keys …` and `llmgw spend`: key management and spend reports, against the state
//! store directly (`--state`) or through a running gateway's admin API (`--admin-url` with
//! `--admin-token`). Secrets and generated private signing keys are printed once, by `create`
//! and `rotate`; `list` and `show` never print one.

use crate::admin::{check_day, ledger_row, month_start};
use crate::keys::{self, Authority, KeyError, KeySpec};
use crate::store::{self, Store};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// Where key and spend commands act.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// State store: a directory (SQLite) or `redis://…`; ignored with `--admin-url`.
    #[arg(
        long,
        value_name = "DIR|URL",
        env = "LLMGW_STATE",
        default_value = ".llmgw-state"
    )]
    pub state: String,
    /// Key prefix in Redis (several gateways may share one Redis under different prefixes).
    #[arg(long, value_name = "PREFIX", default_value = "llmgw:")]
    pub state_prefix: String,
    /// Act through this gateway's admin API instead of the store (`http://host:port`).
    #[arg(long, value_name = "URL", env = "LLMGW_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// The admin token (or a tenant admin key) for `--admin-url`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LLMGW_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `llmgw keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// Its project.
        #[arg(long)]
        project: Option<String>,
        /// Its user (requests then act for this user, and may name no other in `user`).
        #[arg(long, conflicts_with = "assert_users")]
        user: Option<String>,
        /// End users its requests may name in the `user` field: names and glob patterns,
        /// comma-separated (`'svc-*,bob'`), or `'*'` for every user. Without it (nor
        /// `--user`) a request naming a user is refused.
        #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
        assert_users: Vec<String>,
        /// A label rules can read as `key.labels` (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// A model it may use (repeatable; none means every model).
        #[arg(long = "model", value_name = "MODEL")]
        models: Vec<String>,
        /// Lifetime (`90d`, `12h`…); none means no expiry.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Requests must be signed (`x-llmgw-signature`, Ed25519): generates a signing keypair
        /// and prints its private key once (only the public key is stored).
        #[arg(long)]
        signing: bool,
        /// Requests must be signed with the private key of this Ed25519 public key (base64,
        /// PEM, or `file:PATH` holding either), which stays with the client.
        #[arg(long, value_name = "KEY|file:PATH", conflicts_with = "signing")]
        signing_public_key: Option<String>,
        /// A tenant admin key: manages its tenant's keys and reads its spend through the
        /// admin API; refused on the model endpoints.
        #[arg(long)]
        admin: bool,
        /// May present `x-llmgw-tenant-token` to act for the tenant a platform's token names
        /// (see `llmgw tenant-token`).
        #[arg(long)]
        accept_tenant_tokens: bool,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
    /// List keys (never their secrets).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
    /// Show one key (never its secret).
    Show {
        /// The key id.
        id: String,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
    /// Issue a new secret (and for a signing key a new signing keypair); the old ones stay
    /// valid for the grace window.
    Rotate {
        /// The key id.
        id: String,
        /// How long the old secret and signing key stay valid (`24h`, `30m`; 0 ends them at
        /// once).
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        grace: String,
        /// Register this client-held Ed25519 public key (base64, PEM, or `file:PATH`) instead
        /// of generating a signing keypair.
        #[arg(long, value_name = "KEY|file:PATH")]
        signing_public_key: Option<String>,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a key at once (every replica refuses it within a second).
    Revoke {
        /// The key id.
        id: String,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
}

/// `llmgw tenants` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Set a tenant's labels (`tenant.labels` in rules), replacing the previous ones.
    Label {
        /// The tenant.
        tenant: String,
        /// `k=v` labels (none clears them).
        #[arg(value_name = "K=V")]
        labels: Vec<String>,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
    /// Show a tenant's labels.
    Show {
        /// The tenant.
        tenant: String,
        /// Where to act.
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a `tenants` subcommand; returns what to print.
pub async fn tenants(cmd: TenantsCommand) -> Result<String, CmdError> {
    let (target, v) = match cmd {
        TenantsCommand::Label {
            tenant,
            labels,
            target,
        } => {
            let labels = keys::parse_labels(&labels)?;
            keys::check_name("tenant", &tenant)?;
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    keys::set_tenant_labels(&store, &Authority::Global, &tenant, labels).await?
                }
                Backend::Remote { url, token } => {
                    call(
                        &url,
                        &token,
                        "PUT",
                        &format!("/admin/tenants/{tenant}"),
                        Some(json!({ "labels": labels })),
                    )
                    .await?
                }
            };
            (target, v)
        }
        TenantsCommand::Show { tenant, target } => {
            keys::check_name("tenant", &tenant)?;
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    keys::show_tenant(&store, &Authority::Global, &tenant).await?
                }
                Backend::Remote { url, token } => {
                    call(
                        &url,
                        &token,
                        "GET",
                        &format!("/admin/tenants/{tenant}"),
                        None,
                    )
                    .await?
                }
            };
            (target, v)
        }
    };
    Ok(if target.json {
        format!("{v:#}\n")
    } else {
        format!(
            "{:<8} {}\nlabels   {}\n",
            "tenant",
            text(&v["tenant"]),
            labels_text(&v["labels"])
        )
    })
}

/// Options of `llmgw spend`.
#[derive(Debug, Args)]
pub struct SpendArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// First day (`YYYY-MM-DD`, UTC); the first day of this month by default.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Where to act.
    #[command(flatten)]
    pub target: Target,
}

/// Options of `llmgw sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private signing key: base64 of its seed (as `keys create --signing` prints it), a
    /// PEM `PRIVATE KEY`, or `file:PATH` holding either.
    #[arg(
        long,
        value_name = "KEY|file:PATH",
        env = "LLMGW_SIGNING_KEY",
        hide_env_values = true
    )]
    pub key: String,
    /// The request body to sign, exactly as it will be sent (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub body: String,
    /// The signature's time, Unix seconds; now by default.
    #[arg(long, value_name = "SECONDS")]
    pub time: Option<i64>,
}

/// Runs `llmgw sign`; returns the header value to print.
pub fn sign(args: SignArgs) -> Result<String, CmdError> {
    let key = crate::signing::parse_private_key(&key_text(&args.key)?)
        .map_err(|e| CmdError::Usage(e.to_string()))?;
    let body = if args.body == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).map_err(|e| {
            CmdError::Usage(format!("cannot read the body from standard input: {e}"))
        })?;
        b
    } else {
        std::fs::read(&args.body)
            .map_err(|e| CmdError::Usage(format!("cannot read the body file {}: {e}", args.body)))?
    };
    let t = args.time.unwrap_or_else(|| keys::now_ms().div_euclid(1000));
    Ok(format!("{}\n", crate::signing::sign(&key, t, &body)))
}

/// A failure of a key or spend command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CmdError {
    /// The operation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The store could not be opened.
    #[error("cannot open the state store: {0}")]
    Open(store::StoreError),
    /// The admin API answered with an error.
    #[error("the admin API answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The admin API could not be reached.
    #[error("cannot reach the admin API: {0}")]
    Http(String),
    /// Options that do not fit together.
    #[error("{0}")]
    Usage(String),
}

impl CmdError {
    /// The exit code: 1 for a refused or failed operation, 2 for usage and connection errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            CmdError::Key(KeyError::Invalid(_)) | CmdError::Usage(_) => 2,
            CmdError::Open(_) | CmdError::Http(_) => 2,
            _ => 1,
        }
    }
}

/// Opens the store a command names.
pub async fn open_store(location: &str, prefix: &str) -> Result<Store, store::StoreError> {
    if location.starts_with("redis://") || location.starts_with("rediss://") {
        Ok(Store::Redis(
            store::RedisStore::connect(location, prefix).await?,
        ))
    } else {
        Store::open(location).await
    }
}

/// Where a command acts.
enum Backend {
    Local(Store),
    Remote { url: String, token: String },
}

impl Backend {
    async fn of(target: &Target) -> Result<Backend, CmdError> {
        match &target.admin_url {
            Some(url) => {
                let token = target.admin_token.clone().ok_or_else(|| {
                    CmdError::Usage(
                        "--admin-url needs --admin-token (or LLMGW_ADMIN_TOKEN)".to_owned(),
                    )
                })?;
                Ok(Backend::Remote {
                    url: url.trim_end_matches('/').to_owned(),
                    token,
                })
            }
            None => Ok(Backend::Local(
                open_store(&target.state, &target.state_prefix)
                    .await
                    .map_err(CmdError::Open)?,
            )),
        }
    }
}

/// Calls the admin API.
async fn call(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CmdError> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut auth = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| CmdError::Usage("the admin token is not a valid header value".into()))?;
    auth.set_sensitive(true);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| CmdError::Usage(format!("bad admin URL `{url}`: {e}")))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| CmdError::Http("no answer within 30 s".into()))?
        .map_err(|e| CmdError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CmdError::Http(e.to_string()))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status >= 400 {
        return Err(CmdError::Api {
            status,
            message: value["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_owned(),
        });
    }
    Ok(value)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn patterns_text(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(text).collect::<Vec<_>>().join(","),
        _ => "-".to_owned(),
    }
}

/// A key given as itself or as `file:PATH` (whose contents are read).
fn key_text(arg: &str) -> Result<String, CmdError> {
    match arg.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CmdError::Usage(format!("cannot read the key file {path}: {e}"))),
        None => Ok(arg.to_owned()),
    }
}

fn labels_text(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

/// A key view as text lines.
fn describe(v: &Value) -> String {
    let mut out = String::new();
    let models = v["models"]
        .as_array()
        .filter(|m| !m.is_empty())
        .map(|m| m.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "all".to_owned());
    for (name, value) in [
        ("id", text(&v["id"])),
        ("prefix", text(&v["prefix"])),
        ("tenant", text(&v["tenant"])),
        ("project", text(&v["project"])),
        ("user", text(&v["user"])),
        ("assert users", patterns_text(&v["assert_users"])),
        ("labels", labels_text(&v["labels"])),
        ("models", models),
        ("signing", text(&v["signing"])),
        ("signing public key", text(&v["signing_public_key"])),
        ("admin", text(&v["admin"])),
        ("tenant tokens", text(&v["tenant_tokens"])),
        ("status", text(&v["status"])),
        ("created", text(&v["created_at"])),
        ("expires", text(&v["expires_at"])),
        ("revoked", text(&v["revoked_at"])),
        (
            "previous secret valid until",
            text(&v["previous_secret_valid_until"]),
        ),
    ] {
        let _ = writeln!(out, "{name:<28} {value}");
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn key_table(keys: &[Value]) -> String {
    let mut rows = vec![[
        "ID", "TENANT", "PROJECT", "USER", "ASSERTS", "PREFIX", "STATUS", "LABELS", "EXPIRES",
    ]
    .map(str::to_owned)
    .to_vec()];
    for k in keys {
        rows.push(vec![
            text(&k["id"]),
            text(&k["tenant"]),
            text(&k["project"]),
            text(&k["user"]),
            patterns_text(&k["assert_users"]),
            text(&k["prefix"]),
            text(&k["status"]),
            labels_text(&k["labels"]),
            text(&k["expires_at"]),
        ]);
    }
    table(&rows)
}

/// Runs a `keys` subcommand; returns what to print.
pub async fn keys(cmd: KeysCommand) -> Result<String, CmdError> {
    let now = keys::now_ms();
    let (target, result) = match cmd {
        KeysCommand::Create {
            tenant,
            project,
            user,
            assert_users,
            labels,
            models,
            expires,
            signing,
            signing_public_key,
            admin,
            accept_tenant_tokens,
            target,
        } => {
            let spec = KeySpec {
                tenant,
                project,
                user,
                assert_users: assert_users
                    .iter()
                    .flat_map(|p| keys::parse_patterns(p))
                    .collect(),
                labels: keys::parse_labels(&labels)?,
                models,
                expires_in: expires.as_deref().map(keys::parse_duration).transpose()?,
                signing,
                signing_public_key: signing_public_key.as_deref().map(key_text).transpose()?,
                admin,
                tenant_tokens: accept_tenant_tokens,
            };
            spec.validate()?;
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    let (issued, record) = keys::create(&store, &Authority::Global, spec).await?;
                    issued.answer(&record, now)
                }
                Backend::Remote { url, token } => {
                    call(&url, &token, "POST", "/admin/keys", Some(spec.to_json())).await?
                }
            };
            (target, Shown::Secret(v, "created"))
        }
        KeysCommand::List { tenant, target } => {
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    let list = keys::list(&store, &Authority::Global, tenant.as_deref()).await?;
                    Value::Array(list.iter().map(|k| keys::view(k, now)).collect())
                }
                Backend::Remote { url, token } => {
                    let path = match &tenant {
                        Some(t) => {
                            keys::check_name("tenant", t)?;
                            format!("/admin/keys?tenant={t}")
                        }
                        None => "/admin/keys".to_owned(),
                    };
                    call(&url, &token, "GET", &path, None).await?["data"].take()
                }
            };
            (target, Shown::List(v))
        }
        KeysCommand::Show { id, target } => {
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    keys::view(&keys::show(&store, &Authority::Global, &id).await?, now)
                }
                Backend::Remote { url, token } => {
                    call(&url, &token, "GET", &format!("/admin/keys/{id}"), None).await?
                }
            };
            (target, Shown::Key(v))
        }
        KeysCommand::Rotate {
            id,
            grace,
            signing_public_key,
            target,
        } => {
            let grace_d = keys::parse_duration(&grace)?;
            let public = signing_public_key.as_deref().map(key_text).transpose()?;
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    let (issued, record) =
                        keys::rotate(&store, &Authority::Global, &id, grace_d, public.as_deref())
                            .await?;
                    issued.answer(&record, now)
                }
                Backend::Remote { url, token } => {
                    call(
                        &url,
                        &token,
                        "POST",
                        &format!("/admin/keys/{id}/rotate"),
                        Some(json!({ "grace": grace, "signing_public_key": public })),
                    )
                    .await?
                }
            };
            (target, Shown::Secret(v, "rotated"))
        }
        KeysCommand::Revoke { id, target } => {
            let v = match Backend::of(&target).await? {
                Backend::Local(store) => {
                    keys::view(&keys::revoke(&store, &Authority::Global, &id).await?, now)
                }
                Backend::Remote { url, token } => {
                    call(
                        &url,
                        &token,
                        "POST",
                        &format!("/admin/keys/{id}/revoke"),
                        None,
                    )
                    .await?
                }
            };
            (target, Shown::Key(v))
        }
    };
    Ok(result.render(target.json))
}

enum Shown {
    Secret(Value, &'static str),
    List(Value),
    Key(Value),
}

impl Shown {
    fn render(self, as_json: bool) -> String {
        match self {
            Shown::Secret(v, _) | Shown::List(v) | Shown::Key(v) if as_json => {
                format!("{v:#}\n")
            }
            Shown::Secret(v, what) => {
                let mut out = format!(
                    "{}\nkey {what}; its secret is shown this once (only its SHA-256 is stored):\n{}\n",
                    describe(&v["key"]),
                    text(&v["secret"])
                );
                if let Some(k) = v["signing_key"].as_str() {
                    let _ = write!(
                        out,
                        "its Ed25519 signing key (private) is shown this once (only its public key is stored):\n{k}\n"
                    );
                }
                out
            }
            Shown::List(v) => key_table(v.as_array().map_or(&[], Vec::as_slice)),
            Shown::Key(v) => describe(&v),
        }
    }
}

/// Runs `llmgw spend`; returns what to print.
pub async fn spend(args: SpendArgs) -> Result<String, CmdError> {
    let since = args.since.clone().unwrap_or_else(month_start);
    check_day(&since)?;
    if let Some(t) = &args.tenant {
        keys::check_name("tenant", t)?;
    }
    let rows: Vec<Value> = match Backend::of(&args.target).await? {
        Backend::Local(store) => store
            .ledger(args.tenant.as_deref(), &since)
            .await
            .map_err(KeyError::from)?
            .iter()
            .map(ledger_row)
            .collect(),
        Backend::Remote { url, token } => {
            let mut path = format!("/admin/spend?since={since}");
            if let Some(t) = &args.tenant {
                path.push_str(&format!("&tenant={t}"));
            }
            let mut v = call(&url, &token, "GET", &path, None).await?;
            match v["data"].take() {
                Value::Array(a) => a,
                _ => Vec::new(),
            }
        }
    };
    let total: f64 = rows.iter().filter_map(|r| r["cost_usd"].as_f64()).sum();
    if args.target.json {
        return Ok(format!(
            "{:#}\n",
            json!({ "since": since, "tenant": args.tenant, "data": rows, "total_usd": total })
        ));
    }
    let mut out = format!(
        "spend since {since}{}\n",
        args.tenant
            .as_deref()
            .map(|t| format!(" for tenant {t}"))
            .unwrap_or_default()
    );
    let mut table_rows = vec![[
        "DAY",
        "TENANT",
        "PROJECT",
        "USER",
        "KEY",
        "MODEL",
        "REQUESTS",
        "TOKENS IN",
        "TOKENS OUT",
        "COST USD",
    ]
    .map(str::to_owned)
    .to_vec()];
    let mut by_tenant: std::collections::BTreeMap<String, f64> = Default::default();
    for r in &rows {
        let cost = r["cost_usd"].as_f64().unwrap_or(0.0);
        *by_tenant.entry(text(&r["tenant"])).or_default() += cost;
        table_rows.push(vec![
            text(&r["day"]),
            text(&r["tenant"]),
            text(&r["project"]),
            text(&r["user"]),
            text(&r["key"]),
            text(&r["model"]),
            text(&r["requests"]),
            text(&r["tokens_in"]),
            text(&r["tokens_out"]),
            format!("{cost:.6}"),
        ]);
    }
    out.push_str(&table(&table_rows));
    for (tenant, cost) in &by_tenant {
        let _ = writeln!(out, "tenant {tenant}: {cost:.6} USD");
    }
    let _ = writeln!(out, "total: {total:.6} USD");
    Ok(out)
}

//! Safe policy reloads, and the last known good revision across restarts.
//!
//! A [`Reloader`] asks the source for its head revision; a revision not seen before is read,
//! loaded, validated and compiled on the calling (blocking) thread, never on the request path.
//! A revision that compiles becomes a new [`Runtime`] (circuits and live stats carried over by
//! name) swapped in atomically: requests already running keep the runtime they loaded. A
//! revision that does not compile never goes live: the last good one keeps serving, the
//! failure is reported in [`PolicyStatus`], a metric and a log line, and that revision is not
//! tried again (a new one is).
//!
//! Every applied revision is recorded in the state directory (`policy-last-good.json`; for a
//! directory or the bundled policies with its files, as they have no history to read it back
//! from), so a gateway restarted while the head is broken serves the last good revision
//! instead of refusing to start, and says so.

use crate::app::{App, Runtime};
use crate::metrics::Metrics;
use crate::metrics::{DeploymentLabels, PolicyLabels, ProviderLabels, ReloadLabels};
use crate::policy_source::{
    self, GitAccess, PolicyLocation, RevisionInfo, SourceError, SourceReader,
};
use arc_swap::ArcSwap;
use llmgw_engine::diag::Diagnostic;
use llmgw_engine::source::PolicyFile;
use llmgw_engine::CompiledPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The name of the last-known-good file in the state directory.
pub const LAST_GOOD_FILE: &str = "policy-last-good.json";

/// The outcome of trying a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new revision went live.
    Applied,
    /// A new revision did not compile; the previous one keeps serving.
    Failed,
    /// Nothing new: the head is the revision serving, or one that already failed.
    Unchanged,
    /// The source could not be read; nothing changed.
    SourceError,
}

impl ReloadResult {
    /// Its name in metrics, logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Failed => "failed",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::SourceError => "source_error",
        }
    }
}

/// The last revision tried and what came of it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The revision.
    pub revision: RevisionInfo,
    /// [`ReloadResult::Applied`] or [`ReloadResult::Failed`].
    pub result: ReloadResult,
    /// Its findings: the errors that kept it from going live, or its warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// When it was tried.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Its compiled policy, when it was applied: what `/admin/policy/diff` compares.
    pub policy: Option<Arc<CompiledPolicy>>,
}

/// Revisions tried that `/admin/status` lists (`policy.history`), newest first. The applied
/// ones keep their compiled policy, so at most this many revisions stay in memory.
pub const HISTORY: usize = 20;

#[derive(Debug, Clone, Default)]
struct StatusState {
    applied: Option<RevisionInfo>,
    applied_at: Option<chrono::DateTime<chrono::Utc>>,
    attempted: Option<Attempt>,
    /// The last [`HISTORY`] attempts, oldest first.
    history: std::collections::VecDeque<Attempt>,
    serving_last_known_good: bool,
    counts: BTreeMap<&'static str, u64>,
    source_error: Option<String>,
}

/// Revisions applied and attempted, reload counts and source errors, as `/admin/status`
/// shows them.
#[derive(Debug, Default)]
pub struct PolicyStatus {
    inner: Mutex<StatusState>,
}

impl StatusState {
    /// Records a revision tried: the last attempt, and in the history.
    fn attempt(&mut self, attempt: Attempt) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(attempt.clone());
        self.attempted = Some(attempt);
    }
}

impl PolicyStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision serving, once one was applied through a source.
    pub fn applied(&self) -> Option<RevisionInfo> {
        self.lock().applied.clone()
    }

    /// The last revision tried.
    pub fn attempted(&self) -> Option<Attempt> {
        self.lock().attempted.clone()
    }

    /// The last [`HISTORY`] revisions tried, newest first.
    pub fn history(&self) -> Vec<Attempt> {
        self.lock().history.iter().rev().cloned().collect()
    }

    /// Whether the head of the source is broken and an earlier good revision serves.
    pub fn serving_last_known_good(&self) -> bool {
        self.lock().serving_last_known_good
    }

    /// How many revisions had this result.
    pub fn count(&self, result: ReloadResult) -> u64 {
        self.lock()
            .counts
            .get(result.as_str())
            .copied()
            .unwrap_or(0)
    }

    fn bump(&self, result: ReloadResult) {
        *self.lock().counts.entry(result.as_str()).or_default() += 1;
    }

    /// The `policy` object of `/admin/status`.
    pub fn to_json(&self, rt: &Runtime) -> Value {
        let s = self.lock().clone();
        let policy = &rt.policy;
        let applied = s
            .applied
            .clone()
            .unwrap_or_else(|| RevisionInfo::content(policy.revision().to_owned(), &rt.location));
        let attempted = s.attempted.as_ref().map(attempt_json);
        let history: Vec<Value> = s.history.iter().rev().map(attempt_json).collect();
        let mut applied_json = revision_json(&applied);
        applied_json["applied_at"] = json!(s.applied_at);
        let count = |r: ReloadResult| s.counts.get(r.as_str()).copied().unwrap_or(0);
        json!({
            "applied_revision": applied_json,
            "attempted_revision": attempted,
            "history": history,
            "serving_last_known_good": s.serving_last_known_good,
            "reloads": {
                "applied": count(ReloadResult::Applied),
                "failed": count(ReloadResult::Failed),
                "unchanged": count(ReloadResult::Unchanged),
            },
            "source_error": s.source_error,
            "source": rt.location.to_string(),
            "models": policy.models().len(),
            "deployments": policy.deployments().len(),
            "providers": policy.providers().len(),
        })
    }
}

fn attempt_json(a: &Attempt) -> Value {
    let mut v = revision_json(&a.revision);
    v["result"] = json!(a.result.as_str());
    v["attempted_at"] = json!(a.at);
    v["diagnostics"] = diagnostics_json(&a.diagnostics);
    v
}

/// A revision as `/admin/status` names it: id, time, author, summary, source.
pub(crate) fn revision_json(r: &RevisionInfo) -> Value {
    json!({
        "id": r.id,
        "time": r.time,
        "author": r.author,
        "summary": r.summary,
        "source": r.source,
    })
}

/// Diagnostics in the shape of `llmgw-policy lint --format json`.
pub fn diagnostics_json(diagnostics: &[Diagnostic]) -> Value {
    let items: Vec<_> = diagnostics.iter().map(llmgw_engine::render::json).collect();
    serde_json::to_value(items).unwrap_or(Value::Null)
}

/// The diagnostics on one line, for a log field.
fn one_line(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A file of a recorded revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredFile {
    path: String,
    text: String,
}

/// The last good revision of one source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastGood {
    revision: RevisionInfo,
    /// The content hash of a directory (its revision id) with its files, which a directory
    /// cannot give back once changed; absent for git, which keeps every commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<StoredFile>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LastGoodFile {
    /// By source (`PolicyLocation` as text).
    sources: BTreeMap<String, LastGood>,
}

/// Where the last known good revision of each source is kept: a small JSON file of the state
/// directory, or the state store's `policy` namespace (shared by replicas on Redis).
#[derive(Debug, Clone)]
pub enum LastGoodStore {
    /// A JSON file holding every source's last good revision.
    File(PathBuf),
    /// The state store, one value per source. Its calls block on `handle`: use it from
    /// blocking threads only (start-up and reloads run there).
    Store {
        /// The store.
        store: crate::store::Store,
        /// The runtime the store's connections live on.
        handle: tokio::runtime::Handle,
    },
}

/// The namespace of last known good revisions in the state store.
pub const STORE_NAMESPACE: &str = "policy";

impl LastGoodStore {
    /// The file `policy-last-good.json` in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        LastGoodStore::File(state_dir.join(LAST_GOOD_FILE))
    }

    /// The state store's `policy` namespace.
    pub fn in_store(store: crate::store::Store, handle: tokio::runtime::Handle) -> Self {
        LastGoodStore::Store { store, handle }
    }

    fn read_file(path: &Path) -> LastGoodFile {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn get(&self, location: &PolicyLocation) -> Option<LastGood> {
        let key = location.to_string();
        match self {
            LastGoodStore::File(path) => Self::read_file(path).sources.remove(&key),
            LastGoodStore::Store { store, handle } => {
                match handle.block_on(store.get(STORE_NAMESPACE, &key)) {
                    Ok(value) => value.and_then(|v| serde_json::from_str(&v).ok()),
                    Err(e) => {
                        tracing::warn!(target: "llmgw::policy", error = %e, "cannot read the last known good revision from the state store");
                        None
                    }
                }
            }
        }
    }

    /// Records `revision` as the last good one of `location` (with `files` unless it is a git
    /// repository, which keeps its commits).
    pub fn save(
        &self,
        location: &PolicyLocation,
        revision: &RevisionInfo,
        files: &[PolicyFile],
    ) -> Result<(), String> {
        let is_git = matches!(location, PolicyLocation::Repo { .. });
        let stored = if is_git {
            Vec::new()
        } else {
            files
                .iter()
                .map(|f| StoredFile {
                    path: f.path.clone(),
                    text: String::from_utf8_lossy(&f.bytes).into_owned(),
                })
                .collect()
        };
        let entry = LastGood {
            revision: revision.clone(),
            content_hash: (!is_git).then(|| revision.id.clone()),
            files: stored,
            recorded_at: chrono::Utc::now(),
        };
        let key = location.to_string();
        match self {
            LastGoodStore::File(path) => {
                let mut all = Self::read_file(path);
                all.sources.insert(key, entry);
                let write = || -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let tmp = path.with_extension("json.tmp");
                    let text = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
                    std::fs::write(&tmp, text)?;
                    std::fs::rename(&tmp, path)
                };
                write().map_err(|e| format!("{}: {e}", path.display()))
            }
            LastGoodStore::Store { store, handle } => {
                let value = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
                handle
                    .block_on(store.put(STORE_NAMESPACE, &key, &value))
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Why the gateway cannot start on a policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The source cannot be read and no last good revision can stand in.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// The head does not compile and there is no last good revision to serve.
    #[error(
        "revision `{}` of {} does not load, and there is no last known good revision to serve{}:\n{}",
        .head.id,
        .head.source,
        .last_good_problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default(),
        policy_source::render(.diagnostics)
    )]
    NoGoodRevision {
        /// The head.
        head: Box<RevisionInfo>,
        /// Its findings.
        diagnostics: Vec<Diagnostic>,
        /// Why the recorded last good revision could not be used, if one was recorded.
        last_good_problem: Option<String>,
    },
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("revision", &self.runtime.policy.revision())
            .field("status", &self.status)
            .field("reloader", &self.reloader)
            .finish()
    }
}

/// Follows one policy source: tries every new revision, applies the good ones.
#[derive(Debug)]
pub struct Reloader {
    reader: SourceReader,
    store: Option<LastGoodStore>,
    failed: HashSet<String>,
}

/// A gateway's policy at start-up, with the reloader that follows its source afterwards.
pub struct Started {
    /// The runtime to serve first.
    pub runtime: Runtime,
    /// What status shows at start-up.
    pub status: PolicyStatus,
    /// Follows the source from here on.
    pub reloader: Reloader,
}

/// Checks that `revision` may be applied (its signature, when required), then compiles it.
fn compile_trusted(
    reader: &SourceReader,
    files: &[PolicyFile],
    revision: &RevisionInfo,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), Vec<Diagnostic>> {
    reader.trust(revision).map_err(|d| vec![d])?;
    policy_source::compile(files, &revision.id).map_err(|e| e.diagnostics)
}

/// Reads the head of `location` and compiles it; when it does not compile (or the source
/// cannot be reached), serves the last good revision recorded in `last_good`. A remote
/// repository is mirrored under `cache_dir` and reached with `access`. Blocking: call it
/// from a blocking thread.
pub fn start(
    location: PolicyLocation,
    access: GitAccess,
    cache_dir: &Path,
    last_good: LastGoodStore,
) -> Result<Started, StartError> {
    let mut reader = SourceReader::open(location.clone(), cache_dir, access)?;
    let store = (location != PolicyLocation::Embedded).then_some(last_good);
    let status = PolicyStatus::default();
    let mut failed = HashSet::new();
    let now = chrono::Utc::now();
    let head = reader.head();
    let head_outcome = match &head {
        Ok(head) => {
            let files = reader.files(head)?;
            match compile_trusted(&reader, &files, head) {
                Ok((policy, warnings)) => {
                    for w in &warnings {
                        tracing::warn!(target: "llmgw::policy", revision = head.id.as_str(), diagnostic = %w, "policy warning");
                    }
                    if let Some(store) = &store {
                        if let Err(e) = store.save(&location, head, &files) {
                            tracing::warn!(target: "llmgw::policy", error = %e, "cannot record the last known good revision");
                        }
                    }
                    let runtime = Runtime::new(policy, location);
                    let mut s = status.lock();
                    s.applied = Some(head.clone());
                    s.applied_at = Some(now);
                    s.attempt(Attempt {
                        revision: head.clone(),
                        result: ReloadResult::Applied,
                        diagnostics: warnings,
                        at: now,
                        policy: Some(runtime.policy.clone()),
                    });
                    *s.counts.entry(ReloadResult::Applied.as_str()).or_default() += 1;
                    drop(s);
                    tracing::info!(
                        target: "llmgw::policy",
                        result = "applied",
                        revision = head.id.as_str(),
                        author = head.author.as_deref().unwrap_or(""),
                        summary = head.summary.as_deref().unwrap_or(""),
                        source = head.source.as_str(),
                        "policy loaded"
                    );
                    return Ok(Started {
                        runtime,
                        status,
                        reloader: Reloader {
                            reader,
                            store,
                            failed,
                        },
                    });
                }
                Err(diagnostics) => Some(diagnostics),
            }
        }
        Err(_) => None,
    };
    // The head does not compile, or the source cannot be read: the last known good revision.
    let last_good = store.as_ref().and_then(|s| s.get(&location));
    let fallback = last_good
        .as_ref()
        .ok_or_else(|| "none recorded".to_owned())
        .and_then(|lg| last_good_policy(&mut reader, lg));
    let (policy, revision) = match (head, head_outcome, fallback) {
        (Ok(head), Some(diagnostics), Ok(found)) => {
            tracing::warn!(
                target: "llmgw::policy",
                result = "failed",
                revision = head.id.as_str(),
                author = head.author.as_deref().unwrap_or(""),
                summary = head.summary.as_deref().unwrap_or(""),
                errors = diagnostics.iter().filter(|d| d.is_error()).count(),
                diagnostics = one_line(&diagnostics).as_str(),
                serving = found.1.id.as_str(),
                "the head revision does not load; serving the last known good revision"
            );
            let mut s = status.lock();
            s.attempt(Attempt {
                revision: head.clone(),
                result: ReloadResult::Failed,
                diagnostics,
                at: now,
                policy: None,
            });
            *s.counts.entry(ReloadResult::Failed.as_str()).or_default() += 1;
            drop(s);
            failed.insert(head.id);
            found
        }
        (Ok(head), Some(diagnostics), Err(problem)) => {
            return Err(StartError::NoGoodRevision {
                head: Box::new(head),
                diagnostics,
                last_good_problem: last_good.is_some().then_some(problem),
            });
        }
        (Err(e), _, Ok(found)) => {
            tracing::warn!(
                target: "llmgw::policy",
                error = %e,
                serving = found.1.id.as_str(),
                "the policy source cannot be read; serving the last known good revision"
            );
            status.lock().source_error = Some(e.to_string());
            found
        }
        (Err(e), _, Err(_)) => return Err(StartError::Source(e)),
        (Ok(_), None, _) => unreachable!("a readable head either compiles or has diagnostics"),
    };
    let mut s = status.lock();
    s.applied = Some(revision);
    s.applied_at = Some(now);
    s.serving_last_known_good = true;
    drop(s);
    Ok(Started {
        runtime: Runtime::new(policy, location),
        status,
        reloader: Reloader {
            reader,
            store,
            failed,
        },
    })
}

/// Compiles a recorded last good revision: read back from git, or from the recorded files.
fn last_good_policy(
    reader: &mut SourceReader,
    lg: &LastGood,
) -> Result<(CompiledPolicy, RevisionInfo), String> {
    let (files, revision) = match reader.commit(&lg.revision.id) {
        Some(Ok(revision)) => {
            // Recorded before signatures were required, perhaps: it must pass today's check.
            reader.trust(&revision).map_err(|d| d.to_string())?;
            let files = reader.files(&revision).map_err(|e| e.to_string())?;
            (files, revision)
        }
        Some(Err(e)) => return Err(e.to_string()),
        None => {
            let files: Vec<PolicyFile> = lg
                .files
                .iter()
                .map(|f| PolicyFile {
                    path: f.path.clone(),
                    bytes: f.text.clone().into_bytes(),
                })
                .collect();
            (files, lg.revision.clone())
        }
    };
    match policy_source::compile(&files, &revision.id) {
        Ok((policy, _)) => Ok((policy, revision)),
        Err(e) => Err(format!(
            "the recorded revision `{}` no longer loads:\n{}",
            revision.id,
            policy_source::render(&e.diagnostics)
        )),
    }
}

/// What a reload changes: the runtime serving, the status and the metrics.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The runtime in force.
    pub runtime: &'a ArcSwap<Runtime>,
    /// The status shown by `/admin/status`.
    pub policy_status: &'a PolicyStatus,
    /// The metrics.
    pub metrics: &'a Metrics,
}

impl<'a> From<&'a App> for Target<'a> {
    fn from(app: &'a App) -> Self {
        Target {
            runtime: &app.runtime,
            policy_status: &app.policy_status,
            metrics: &app.metrics,
        }
    }
}

/// Publishes the start-up outcome: the policy metrics, counts of the start-up attempts.
pub fn publish_start<'a>(app: impl Into<Target<'a>>) {
    let app = app.into();
    for result in [ReloadResult::Applied, ReloadResult::Failed] {
        let n = app.policy_status.count(result);
        if n > 0 {
            app.metrics
                .policy_reloads
                .get_or_create(&ReloadLabels {
                    result: result.as_str(),
                })
                .inc_by(n);
        }
    }
}

impl Reloader {
    /// The location followed.
    pub fn location(&self) -> &PolicyLocation {
        self.reader.location()
    }

    /// Looks at the source once and applies its head if it is new and compiles. Blocking:
    /// it reads git or the file system and compiles; call it off the request path.
    pub fn poll<'a>(&mut self, app: impl Into<Target<'a>>) -> ReloadResult {
        let app = app.into();
        let started = Instant::now();
        let head = match self.reader.head() {
            Ok(h) => h,
            Err(e) => {
                self.source_error(app, &e);
                return ReloadResult::SourceError;
            }
        };
        self.source_ok(app);
        let serving = app.runtime.load().policy.revision().to_owned();
        if head.id == serving {
            app.policy_status.lock().serving_last_known_good = false;
            return self.unchanged(app, &head);
        }
        if self.failed.contains(&head.id) {
            return self.unchanged(app, &head);
        }
        let files = match self.reader.files(&head) {
            Ok(f) => f,
            Err(e) => {
                self.source_error(app, &e);
                return ReloadResult::SourceError;
            }
        };
        match compile_trusted(&self.reader, &files, &head) {
            Ok((policy, warnings)) => {
                self.apply(app, policy, &head, &files, warnings, started);
                ReloadResult::Applied
            }
            Err(diagnostics) => {
                self.reject(app, &head, diagnostics, &serving, started);
                ReloadResult::Failed
            }
        }
    }

    fn unchanged(&self, app: Target<'_>, head: &RevisionInfo) -> ReloadResult {
        app.policy_status.bump(ReloadResult::Unchanged);
        count(app, ReloadResult::Unchanged);
        tracing::debug!(target: "llmgw::policy", revision = head.id.as_str(), "policy unchanged");
        ReloadResult::Unchanged
    }

    fn source_error(&self, app: Target<'_>, e: &SourceError) {
        let message = e.to_string();
        let mut s = app.policy_status.lock();
        if s.source_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(target: "llmgw::policy", source = %self.reader.location(), error = message.as_str(), "cannot read the policy source; the current revision keeps serving");
        }
        s.source_error = Some(message);
    }

    fn source_ok(&self, app: Target<'_>) {
        if app.policy_status.lock().source_error.take().is_some() {
            tracing::info!(target: "llmgw::policy", source = %self.reader.location(), "the policy source can be read again");
        }
    }

    fn apply(
        &self,
        app: Target<'_>,
        policy: CompiledPolicy,
        head: &RevisionInfo,
        files: &[PolicyFile],
        warnings: Vec<Diagnostic>,
        started: Instant,
    ) {
        let previous = app.runtime.load_full();
        let runtime =
            Runtime::carrying_over(policy, self.reader.location().clone(), Some(&previous));
        let gone: Vec<ProviderLabels> = previous
            .policy
            .providers()
            .iter()
            .filter(|p| {
                !runtime
                    .policy
                    .providers()
                    .iter()
                    .any(|q| q.name == p.name && q.region == p.region)
            })
            .map(|p| ProviderLabels {
                provider: p.name.clone(),
                region: p.region.clone(),
            })
            .collect();
        let compiled = runtime.policy.clone();
        let runtime_deployments: Vec<DeploymentLabels> = runtime
            .policy
            .deployments()
            .iter()
            .map(DeploymentLabels::of)
            .collect();
        app.runtime.store(Arc::new(runtime));
        let m = &app.metrics;
        m.policy.remove(&PolicyLabels {
            revision: previous.policy.revision().to_owned(),
        });
        m.policy
            .get_or_create(&PolicyLabels {
                revision: head.id.clone(),
            })
            .set(1);
        for labels in &gone {
            m.circuit.remove(labels);
        }
        let kept: HashSet<DeploymentLabels> = runtime_deployments.into_iter().collect();
        for d in previous.policy.deployments() {
            let labels = DeploymentLabels::of(d);
            if !kept.contains(&labels) {
                m.deployment_circuit.remove(&labels);
            }
        }
        count(app, ReloadResult::Applied);
        let now = chrono::Utc::now();
        {
            let mut s = app.policy_status.lock();
            *s.counts.entry(ReloadResult::Applied.as_str()).or_default() += 1;
            s.applied = Some(head.clone());
            s.applied_at = Some(now);
            s.serving_last_known_good = false;
            s.attempt(Attempt {
                revision: head.clone(),
                result: ReloadResult::Applied,
                diagnostics: warnings.clone(),
                at: now,
                policy: Some(compiled),
            });
        }
        tracing::info!(
            target: "llmgw::policy",
            result = "applied",
            revision = head.id.as_str(),
            previous = previous.policy.revision(),
            author = head.author.as_deref().unwrap_or(""),
            summary = head.summary.as_deref().unwrap_or(""),
            source = head.source.as_str(),
            warnings = warnings.len(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "policy reload"
        );
        for w in &warnings {
            tracing::warn!(target: "llmgw::policy", revision = head.id.as_str(), diagnostic = %w, "policy warning");
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.save(self.reader.location(), head, files) {
                tracing::warn!(target: "llmgw::policy", error = %e, "cannot record the last known good revision");
            }
        }
    }

    fn reject(
        &mut self,
        app: Target<'_>,
        head: &RevisionInfo,
        diagnostics: Vec<Diagnostic>,
        serving: &str,
        started: Instant,
    ) {
        self.failed.insert(head.id.clone());
        count(app, ReloadResult::Failed);
        tracing::warn!(
            target: "llmgw::policy",
            result = "failed",
            revision = head.id.as_str(),
            serving = serving,
            author = head.author.as_deref().unwrap_or(""),
            summary = head.summary.as_deref().unwrap_or(""),
            source = head.source.as_str(),
            errors = diagnostics.iter().filter(|d| d.is_error()).count(),
            diagnostics = one_line(&diagnostics).as_str(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "policy reload failed; the previous revision keeps serving"
        );
        let mut s = app.policy_status.lock();
        *s.counts.entry(ReloadResult::Failed.as_str()).or_default() += 1;
        s.serving_last_known_good = true;
        s.attempt(Attempt {
            revision: head.clone(),
            result: ReloadResult::Failed,
            diagnostics,
            at: chrono::Utc::now(),
            policy: None,
        });
    }
}

fn count(app: Target<'_>, result: ReloadResult) {
    app.metrics
        .policy_reloads
        .get_or_create(&ReloadLabels {
            result: result.as_str(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDERS: &str = "apiVersion: llmgw.dev/v1\nkind: Providers\nproviders:\n  - name: sim\n    type: simulated\n    simulated: { ttft_ms: 1, tokens_per_second: 10000, jitter: 0, error_rate: 0, rate_limit_rate: 0, output_tokens: 2 }\n";

    fn models(second: &str) -> String {
        format!(
            "apiVersion: llmgw.dev/v1\nkind: Models\nmodels:\n  - name: a\n    class: chat\n    quality: 0.9\n    context_window: 8000\n    capabilities: [chat]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: sim\n        upstream_model: a\n  - name: {second}\n    class: chat\n    quality: 0.5\n    context_window: 8000\n    capabilities: [chat]\n    price: {{ input_per_mtok: 1, output_per_mtok: 2 }}\n    deployments:\n      - provider: sim\n        upstream_model: b\n"
        )
    }

    fn write(dir: &Path, second: &str) {
        std::fs::write(dir.join("providers.yaml"), PROVIDERS).expect("write");
        std::fs::write(dir.join("models.yaml"), models(second)).expect("write");
    }

    /// What a gateway holds, without the rest of the app.
    struct Held {
        runtime: ArcSwap<Runtime>,
        policy_status: PolicyStatus,
        metrics: Metrics,
    }

    impl<'a> From<&'a Held> for Target<'a> {
        fn from(h: &'a Held) -> Self {
            Target {
                runtime: &h.runtime,
                policy_status: &h.policy_status,
                metrics: &h.metrics,
            }
        }
    }

    fn app_for(started: Started) -> (Held, Reloader) {
        let held = Held {
            metrics: Metrics::new(),
            policy_status: started.status,
            runtime: ArcSwap::from_pointee(started.runtime),
        };
        held.metrics
            .policy
            .get_or_create(&PolicyLabels {
                revision: held.runtime.load().policy.revision().to_owned(),
            })
            .set(1);
        publish_start(&held);
        (held, started.reloader)
    }

    #[test]
    fn a_directory_reloads_keeps_the_last_good_and_survives_a_restart() {
        let policies = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        write(policies.path(), "b");
        let location = PolicyLocation::Dir(policies.path().to_path_buf());
        let (app, mut reloader) = app_for(
            start(
                location.clone(),
                GitAccess::default(),
                state.path(),
                LastGoodStore::in_dir(state.path()),
            )
            .expect("starts"),
        );
        let first = app.runtime.load().policy.revision().to_owned();
        let recorder = app.runtime.load().live.deployment(0).cloned().expect("a");
        assert_eq!(reloader.poll(&app), ReloadResult::Unchanged);

        write(policies.path(), "c");
        assert_eq!(reloader.poll(&app), ReloadResult::Applied);
        let rt = app.runtime.load_full();
        assert_ne!(rt.policy.revision(), first);
        assert!(rt.policy.model("c").is_some());
        let carried = rt.live.deployment(0).expect("a");
        assert!(
            Arc::ptr_eq(carried, &recorder),
            "live stats of `a` carried over"
        );

        std::fs::write(policies.path().join("models.yaml"), "kind: [").expect("write");
        assert_eq!(reloader.poll(&app), ReloadResult::Failed);
        assert_eq!(app.runtime.load().policy.revision(), rt.policy.revision());
        assert!(app.policy_status.serving_last_known_good());
        let attempted = app.policy_status.attempted().expect("attempted");
        assert_eq!(attempted.result, ReloadResult::Failed);
        assert!(!attempted.diagnostics.is_empty());
        assert_eq!(
            reloader.poll(&app),
            ReloadResult::Unchanged,
            "not tried again"
        );
        assert_eq!(app.policy_status.count(ReloadResult::Failed), 1);
        let status = app.policy_status.to_json(&app.runtime.load());
        assert_eq!(status["attempted_revision"]["result"], "failed");
        assert!(status["attempted_revision"]["diagnostics"][0]["code"].is_string());
        let metrics = app.metrics.render();
        assert!(metrics.contains("llmgw_policy_reloads_total{result=\"failed\"} 1"));
        assert!(metrics.contains(&format!(
            "llmgw_policy_info{{revision=\"{}\"}} 1",
            rt.policy.revision()
        )));
        assert!(
            !metrics.contains(&first),
            "the old revision left policy_info"
        );

        // A restart on the broken directory serves the last good revision.
        let again = start(
            location.clone(),
            GitAccess::default(),
            state.path(),
            LastGoodStore::in_dir(state.path()),
        )
        .expect("starts on the last good");
        assert_eq!(again.runtime.policy.revision(), rt.policy.revision());
        assert!(again.status.serving_last_known_good());

        // Without a last good revision, start-up refuses with the diagnostics.
        let empty = tempfile::tempdir().expect("tempdir");
        let err = start(
            location,
            GitAccess::default(),
            empty.path(),
            LastGoodStore::in_dir(empty.path()),
        )
        .expect_err("refuses");
        assert!(err.to_string().contains("does not load"), "{err}");
    }

    #[test]
    fn the_last_good_revision_can_live_in_the_state_store() {
        let policies = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        write(policies.path(), "b");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt
            .block_on(crate::store::Store::open(&state.path().to_string_lossy()))
            .expect("store");
        let last_good = LastGoodStore::in_store(store, rt.handle().clone());
        let location = PolicyLocation::Dir(policies.path().to_path_buf());
        let good = std::thread::scope(|s| {
            s.spawn(|| {
                start(
                    location.clone(),
                    GitAccess::default(),
                    state.path(),
                    last_good.clone(),
                )
            })
            .join()
            .expect("thread")
        })
        .expect("starts");
        let revision = good.runtime.policy.revision().to_owned();
        std::fs::write(policies.path().join("models.yaml"), "kind: [").expect("write");
        let again = std::thread::scope(|s| {
            s.spawn(|| {
                start(
                    location.clone(),
                    GitAccess::default(),
                    state.path(),
                    last_good.clone(),
                )
            })
            .join()
            .expect("thread")
        })
        .expect("starts on the last good revision from the store");
        assert_eq!(again.runtime.policy.revision(), revision);
        assert!(again.status.serving_last_known_good());
        assert!(!state.path().join(LAST_GOOD_FILE).exists());
    }
}

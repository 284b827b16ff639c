//! The decision log: one JSON line per decided request ([`DecisionRecord`]), holding the
//! whole input the decision read, so that `llmgw-policy diff` replays it exactly.
//!
//! Requests never wait for the log: a record goes into a bounded channel with `try_send`, and
//! a writer thread appends it to the file, rotating by size (`PATH` → `PATH.1` → … →
//! `PATH.N`). A full channel drops the record and counts it
//! (`llmgw_decision_log_dropped_total`). Shutdown drains the channel and flushes.
//!
//! Identity is written as ids and labels; a gateway key's secret never reaches a decision.

use crate::metrics::Metrics;
use crate::phases::attempt::Trace;
use crate::upstream::Usage;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::{DecisionInput, DeploymentStats, LiveView, RequestContext, StateView};
use llmgw_engine::model::Scope;
use llmgw_engine::record::{DecisionRecord, RecordOutcome};
use prometheus_client::metrics::counter::Counter;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Where and how the decision log is written.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The file written; rotated files get `.1`, `.2`, … appended.
    pub path: PathBuf,
    /// The file is rotated before a line would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// Records that may wait for the writer before new ones are dropped.
    pub capacity: usize,
}

/// The decision-log options of `llmgw serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecisionLogArgs {
    /// Writes one JSON line per decided request here (what `llmgw-policy diff` replays).
    #[arg(long, value_name = "PATH")]
    pub decision_log: Option<PathBuf>,
    /// Size at which the decision log is rotated (`PATH` becomes `PATH.1`, …).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub decision_log_max_bytes: u64,
    /// Rotated decision-log files kept.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub decision_log_keep: usize,
}

impl DecisionLogArgs {
    /// Opens the log these options name; a disabled one without `--decision-log`.
    pub fn open(&self, metrics: &Metrics) -> Result<DecisionLog, OpenError> {
        match &self.decision_log {
            None => Ok(DecisionLog::disabled()),
            Some(path) => DecisionLog::open(
                LogConfig {
                    path: path.clone(),
                    max_bytes: self.decision_log_max_bytes,
                    keep: self.decision_log_keep,
                    capacity: 16_384,
                },
                metrics,
            ),
        }
    }
}

/// A decision log that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the decision log {}: {source}", .path.display())]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

enum Msg {
    Record(Box<DecisionRecord>),
    Stop(mpsc::Sender<()>),
}

/// The files of an open decision log, for reading it back ([`crate::decision_query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFiles {
    /// The file written.
    pub path: PathBuf,
    /// Rotated files kept (`PATH.1` … `PATH.keep`).
    pub keep: usize,
}

impl LogFiles {
    /// Every file, newest first: `PATH`, `PATH.1`, … `PATH.keep`.
    pub fn newest_first(&self) -> impl Iterator<Item = PathBuf> + '_ {
        std::iter::once(self.path.clone())
            .chain((1..=self.keep).map(|n| rotated_path(&self.path, n)))
    }
}

/// The request side of the decision log; disabled unless opened.
#[derive(Default)]
pub struct DecisionLog {
    tx: Option<SyncSender<Msg>>,
    dropped: Counter,
    files: Option<LogFiles>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl DecisionLog {
    /// A log that writes nothing.
    pub fn disabled() -> Self {
        DecisionLog::default()
    }

    /// Opens (appends to) the file and starts the writer thread.
    pub fn open(config: LogConfig, metrics: &Metrics) -> Result<Self, OpenError> {
        let path = config.path.clone();
        let files = LogFiles {
            path: config.path.clone(),
            keep: config.keep,
        };
        let err = |source| OpenError {
            path: path.clone(),
            source,
        };
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let file = open_append(&config.path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let (tx, rx) = mpsc::sync_channel(config.capacity.max(1));
        let mut writer = Writer {
            out: BufWriter::with_capacity(64 << 10, file),
            size,
            written: metrics.decision_log_written.clone(),
            rotations: metrics.decision_log_rotations.clone(),
            failing: false,
            config,
        };
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(DecisionLog {
            tx: Some(tx),
            dropped: metrics.decision_log_dropped.clone(),
            files: Some(files),
        })
    }

    /// Whether records are written.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// The files written, when the log is enabled.
    pub fn files(&self) -> Option<&LogFiles> {
        self.files.as_ref()
    }

    /// Queues a record; never waits. A full queue drops it (and counts it).
    pub fn write(&self, record: DecisionRecord) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Writes every queued record and flushes the file; waits at most `limit`. Records
    /// queued afterwards are dropped. For shutdown.
    pub fn close(&self, limit: Duration) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (ack_tx, ack_rx) = mpsc::channel();
        if tx.send(Msg::Stop(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(limit);
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The path of the `n`th rotated file.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

struct Writer {
    config: LogConfig,
    out: BufWriter<File>,
    size: u64,
    written: Counter,
    rotations: Counter,
    failing: bool,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            // Write what is queued, then flush once.
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => self.append(&r),
                    Msg::Stop(ack) => {
                        while let Ok(Msg::Record(r)) = rx.try_recv() {
                            self.append(&r);
                        }
                        self.flush();
                        let _ = ack.send(());
                        return;
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush();
        }
    }

    fn append(&mut self, record: &DecisionRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(target: "llmgw::decision_log", error = %e, "a decision record does not serialise");
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.config.max_bytes {
            self.rotate();
        }
        let result = self.out.write_all(&line);
        self.report(result);
        self.size += len;
        self.written.inc();
    }

    fn rotate(&mut self) {
        self.flush();
        let path = &self.config.path;
        let keep = self.config.keep;
        let result = (|| {
            if keep == 0 {
                std::fs::remove_file(path)?;
            } else {
                let _ = std::fs::remove_file(rotated_path(path, keep));
                for n in (1..keep).rev() {
                    let from = rotated_path(path, n);
                    if from.exists() {
                        std::fs::rename(&from, rotated_path(path, n + 1))?;
                    }
                }
                std::fs::rename(path, rotated_path(path, 1))?;
            }
            open_append(path)
        })();
        match result {
            Ok(file) => {
                self.out = BufWriter::with_capacity(64 << 10, file);
                self.size = 0;
                self.rotations.inc();
                tracing::info!(target: "llmgw::decision_log", path = %path.display(), keep, "decision log rotated");
            }
            Err(e) => self.report(Err(e)),
        }
    }

    fn flush(&mut self) {
        let result = self.out.flush();
        self.report(result);
    }

    /// Logs the first failure of a run of failures, and the recovery.
    fn report(&mut self, result: std::io::Result<()>) {
        match (result, self.failing) {
            (Err(e), false) => {
                self.failing = true;
                tracing::warn!(target: "llmgw::decision_log", path = %self.config.path.display(), error = %e, "cannot write the decision log");
            }
            (Ok(()), true) => {
                self.failing = false;
                tracing::info!(target: "llmgw::decision_log", path = %self.config.path.display(), "the decision log is written again");
            }
            _ => {}
        }
    }
}

/// Views of live stats and state that remember what a decision read, so that the decision
/// log holds exactly the input that decided.
pub struct Capture<'a> {
    live: &'a dyn LiveView,
    state: &'a dyn StateView,
    seen_live: RefCell<BTreeMap<String, DeploymentStats>>,
    seen_spent: RefCell<BTreeMap<String, f64>>,
    seen_weights: RefCell<BTreeMap<String, f64>>,
    seen_ratelimit: RefCell<BTreeMap<String, f64>>,
}

impl<'a> Capture<'a> {
    /// Wraps the views a decision reads.
    pub fn new(live: &'a dyn LiveView, state: &'a dyn StateView) -> Self {
        Capture {
            live,
            state,
            seen_live: RefCell::default(),
            seen_spent: RefCell::default(),
            seen_weights: RefCell::default(),
            seen_ratelimit: RefCell::default(),
        }
    }

    /// The decision input: the request context and everything read through the views.
    pub fn into_input(self, ctx: &RequestContext) -> DecisionInput {
        DecisionInput {
            request: ctx.request.clone(),
            identity: ctx.identity.clone(),
            live: self.seen_live.into_inner(),
            spent_usd: self.seen_spent.into_inner(),
            ratelimit_remaining: self.seen_ratelimit.into_inner(),
            canary_weights: self.seen_weights.into_inner(),
            random: Some(ctx.random),
            canary_random: Some(ctx.canary_random),
            now: chrono::DateTime::from_timestamp_millis(ctx.now_ms),
        }
    }
}

impl LiveView for Capture<'_> {
    fn stats(&self, index: usize, name: &str) -> Option<DeploymentStats> {
        let stats = self.live.stats(index, name);
        if let Some(s) = stats {
            self.seen_live.borrow_mut().insert(name.to_owned(), s);
        }
        stats
    }
}

impl StateView for Capture<'_> {
    fn spent_usd(&self, budget: &str, scope: Scope, id: &str) -> f64 {
        let spent = self.state.spent_usd(budget, scope, id);
        self.seen_spent
            .borrow_mut()
            .insert(budget.to_owned(), spent);
        spent
    }

    fn canary_weight(&self, canary: &str) -> Option<f64> {
        let weight = self.state.canary_weight(canary);
        if let Some(w) = weight {
            self.seen_weights.borrow_mut().insert(canary.to_owned(), w);
        }
        weight
    }

    fn ratelimit_remaining(&self, rule: &str, bucket: &str) -> f64 {
        let left = self.state.ratelimit_remaining(rule, bucket);
        self.seen_ratelimit
            .borrow_mut()
            .insert(rule.to_owned(), left);
        left
    }
}

/// What the decision phase hands the decision log: the input read and, when a budget blocked
/// the request, the blocking decision.
#[derive(Debug, Default)]
pub struct Captured {
    /// The input the decision read.
    pub input: Option<DecisionInput>,
    /// The decision of a request a budget blocked (the request itself is refused).
    pub blocked: Option<Decision>,
}

/// How a decided request ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// HTTP status answered (499 when the client went away).
    pub status: u16,
    /// Logical model and provider that served it, if any did.
    pub served: Option<(&'a str, &'a str)>,
    /// Tokens billed.
    pub usage: Usage,
    /// Cost in USD.
    pub cost_usd: f64,
    /// From arrival to the last byte.
    pub latency: Duration,
    /// To the first token of a stream.
    pub ttft: Option<Duration>,
    /// The attempts, when any were made (or the cache answered).
    pub trace: Option<&'a Trace>,
}

/// Writes the decision-log line of a decided request (nothing when the log is disabled or
/// no input was captured).
pub fn record(
    log: &DecisionLog,
    id: &str,
    input: Option<&DecisionInput>,
    decision: &Decision,
    outcome: Outcome<'_>,
) {
    let Some(input) = input.filter(|_| log.enabled()) else {
        return;
    };
    let time = input.now.unwrap_or_else(chrono::Utc::now);
    let mut r = DecisionRecord::new(id.to_owned(), time, input.clone(), decision);
    if let Some((model, provider)) = outcome.served {
        r.served_model = Some(model.to_owned());
        r.provider = Some(provider.to_owned());
    } else {
        r.served_model = None;
        r.provider = None;
    }
    r.tokens_in = outcome.usage.input_tokens;
    r.tokens_out = outcome.usage.output_tokens;
    r.cost_usd = outcome.cost_usd;
    r.status = outcome.status;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    r.outcome = Some(RecordOutcome {
        latency_ms: ms(outcome.latency),
        ttft_ms: outcome.ttft.map(ms),
        failovers: outcome.trace.map_or(0, |t| t.failovers),
        retries: outcome.trace.map_or(0, |t| t.retries),
        cache: outcome.trace.map_or("", |t| t.cache).to_owned(),
    });
    log.write(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> DecisionRecord {
        let decision_json = serde_json::json!({
            "id": format!("req-{i}"),
            "time": "2026-01-01T00:00:00Z",
            "revision": "r1",
            "rule": "default",
            "requested_model": "m",
            "budget_action": "route",
            "input": { "request": { "model": "m" } },
            "status": 200,
        });
        serde_json::from_value(decision_json).expect("record")
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.jsonl");
        let metrics = Metrics::new();
        let log = DecisionLog::open(
            LogConfig {
                path: path.clone(),
                max_bytes: 1_000,
                keep: 2,
                capacity: 1_000,
            },
            &metrics,
        )
        .expect("open");
        for i in 0..60 {
            log.write(sample(i));
        }
        log.close(Duration::from_secs(5));
        let mut ids = Vec::new();
        for p in [rotated_path(&path, 2), rotated_path(&path, 1), path.clone()] {
            let text = std::fs::read_to_string(&p).expect("file");
            assert!(text.len() as u64 <= 1_000, "{} is too big", p.display());
            for line in text.lines() {
                let r: DecisionRecord = serde_json::from_str(line).expect("a record per line");
                ids.push(r.id);
            }
        }
        assert!(
            !rotated_path(&path, 3).exists(),
            "only two rotated files are kept"
        );
        let last = ids.last().cloned();
        assert_eq!(last.as_deref(), Some("req-59"), "the newest line is last");
        assert!(ids.windows(2).all(|w| {
            let n = |s: &str| s.trim_start_matches("req-").parse::<usize>().unwrap_or(0);
            n(&w[1]) == n(&w[0]) + 1
        }));
        assert_eq!(metrics.decision_log_dropped.get(), 0);
        assert!(metrics.decision_log_rotations.get() >= 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Metrics::new();
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = DecisionLog {
            tx: Some(tx),
            dropped: metrics.decision_log_dropped.clone(),
            files: None,
        };
        log.write(sample(0));
        log.write(sample(1));
        log.write(sample(2));
        assert_eq!(metrics.decision_log_dropped.get(), 2);
    }
}

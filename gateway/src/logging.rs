//! JSON logs on stderr, written by a background thread in batches so that a busy gateway does
//! not pay one `write` system call per request on its request threads.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::OnceLock;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

static SENDER: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Whether [`init`] installed the JSON subscriber, so that a line written by hand in its
/// format (see [`JsonLine`]) reads the same as one it formats.
static JSON: AtomicBool = AtomicBool::new(false);

/// Writes lines in batches: the first line after a quiet period wakes the thread, which then
/// drains the queue every [`BATCH_INTERVAL`] until it finds it empty, so a busy gateway pays
/// one `write` per batch and no thread wake-up per line.
fn writer_thread(rx: Receiver<Msg>) {
    // Stderr is locked only while a batch is written: a lock held for the thread's life
    // would block every other writer to stderr (a start-up error line) forever.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let mut acks = Vec::new();
    let handle = |m: Msg, out: &mut std::io::BufWriter<_>, acks: &mut Vec<SyncSender<()>>| match m {
        Msg::Line(line) => {
            let _ = out.write_all(&line);
        }
        Msg::Flush(ack) => acks.push(ack),
    };
    while let Ok(first) = rx.recv() {
        handle(first, &mut out, &mut acks);
        loop {
            let mut drained = false;
            while let Ok(m) = rx.try_recv() {
                drained = true;
                handle(m, &mut out, &mut acks);
            }
            let _ = out.flush();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if !drained {
                break;
            }
            std::thread::sleep(BATCH_INTERVAL);
        }
    }
}

/// How long the log thread waits between two batches while lines keep coming.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

fn sender() -> &'static SyncSender<Msg> {
    SENDER.get_or_init(|| {
        // Its slots are allocated and initialised up front (32 bytes each): 4,096 lines is
        // 128 KiB, and more than a busy gateway writes between two batches.
        let (tx, rx) = mpsc::sync_channel(4 * 1024);
        std::thread::Builder::new()
            .name("llmgw-log".into())
            .spawn(move || writer_thread(rx))
            .expect("the log thread starts");
        tx
    })
}

/// One log event being formatted; handed to the writer thread when dropped.
pub struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = sender().send(Msg::Line(std::mem::take(&mut self.0)));
        }
    }
}

/// The writer factory given to `tracing-subscriber`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter(Vec::with_capacity(512))
    }
}

/// Waits until every event logged so far is written.
pub fn flush() {
    if let Some(tx) = SENDER.get() {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Installs the JSON subscriber with `filter` (an `EnvFilter` directive).
pub fn init(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(BatchedStderr)
        .try_init()
        .is_ok();
    JSON.store(installed, Ordering::Relaxed);
}

/// One JSON log line in the subscriber's format, written field by field without going
/// through `tracing`'s visitors: the request line is the one event of every request. Start
/// one with [`JsonLine::start`] (`None` when the subscriber is not this module's or filters
/// the event out, in which case log through `tracing` as usual).
pub struct JsonLine(Vec<u8>);

impl JsonLine {
    /// A line of an `INFO` event with this message, when logged this way. The caller has
    /// checked that the filter lets the event through (`tracing::enabled!`).
    pub fn start(message: &str) -> Option<JsonLine> {
        if !JSON.load(Ordering::Relaxed) {
            return None;
        }
        let mut out = Vec::with_capacity(768);
        // The subscriber's clock format: RFC 3339, UTC, microseconds (written field by field:
        // `format` would parse its pattern on every line).
        use chrono::{Datelike, Timelike};
        let now = chrono::Utc::now();
        let _ = write!(
            out,
            "{{\"timestamp\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\",\"level\":\"INFO\",\"message\":",
            now.year(),
            now.month(),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.timestamp_subsec_micros().min(999_999)
        );
        json(&mut out, message);
        Some(JsonLine(out))
    }

    /// A string field.
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.key(name);
        json(&mut self.0, value);
        self
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.key(name);
        let _ = write!(self.0, "{value}");
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.key(name);
        self.0
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A field holding `value` as JSON (an array or object, not a string of JSON).
    pub fn json<T: serde::Serialize + ?Sized>(&mut self, name: &str, value: &T) -> &mut Self {
        self.key(name);
        json(&mut self.0, value);
        self
    }

    /// A floating-point field, formatted as the subscriber formats it.
    pub fn f64(&mut self, name: &str, value: f64) -> &mut Self {
        self.key(name);
        json(&mut self.0, &value);
        self
    }

    fn key(&mut self, name: &str) {
        self.0.push(b',');
        json(&mut self.0, name);
        self.0.push(b':');
    }

    /// Ends the line with the event's target, where the subscriber writes it, and hands it to
    /// the log thread.
    pub fn finish(mut self, target: &str) {
        self.str("target", target);
        self.0.extend_from_slice(b"}\n");
        drop(EventWriter(std::mem::take(&mut self.0)));
    }
}

fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

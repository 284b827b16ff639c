//! `GET /admin/decisions`: the decision log ([`crate::decision_log`]) read back, newest first,
//! a page at a time, filtered by tenant, time, rule and model.
//!
//! The files (`PATH`, `PATH.1`, … `PATH.keep`) are read backwards in chunks of [`CHUNK`]
//! bytes, line by line: memory stays bounded by the chunk, the longest line read
//! ([`MAX_LINE`]; longer lines are skipped and counted) and the page, whatever the log's size.
//!
//! A cursor names a position in one file by the file's identity (its inode, which rotation's
//! renames keep) and a byte offset. Paging therefore continues where it stopped while the
//! writer appends and rotates: every record in the log when the first page was read is
//! returned exactly once, and records written after it are not (they are on a new first
//! page). A cursor whose file was deleted by rotation (past `--decision-log-keep`) answers
//! 410. One request reads at most [`SCAN_LINES`] lines and returns at most [`MAX_PAGE_BYTES`]
//! of records: a page cut short by either holds fewer than `limit` records and still has a
//! `next` cursor; paging ends when `next` is `null`.

use crate::admin::{authority, key_error};
use crate::app::App;
use crate::body::GatewayBody;
use crate::decision_log::LogFiles;
use crate::error::ApiError;
use crate::keys::Authority;
use crate::routes::json;
use chrono::{DateTime, Utc};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::time::SystemTime;

/// Records per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Bytes read from a file at a time.
pub const CHUNK: usize = 64 << 10;
/// Longest line read; a longer one is skipped (and counted as unreadable).
pub const MAX_LINE: usize = 1 << 20;
/// Lines one request reads at most.
pub const SCAN_LINES: usize = 200_000;
/// Bytes of records one page holds at most (past them, the page ends early with a `next`).
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// A position in the decision log: the lines of file `file` before byte `offset` (and every
/// older file) are still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The file's identity ([`file_id`]).
    pub file: u64,
    /// A line boundary in it.
    pub offset: u64,
}

impl Cursor {
    /// The opaque text form given to clients.
    pub fn encode(&self) -> String {
        format!("{:x}-{:x}", self.file, self.offset)
    }

    /// Reads [`Cursor::encode`]'s form.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (file, offset) = text.split_once('-')?;
        Some(Cursor {
            file: u64::from_str_radix(file, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
        })
    }
}

/// What to return: the filters, the page size and where to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Only this tenant's decisions (`input.identity.tenant.id`).
    pub tenant: Option<String>,
    /// Only decisions made at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only decisions of this rule.
    pub rule: Option<String>,
    /// Only the decision with this id (the request id).
    pub id: Option<String>,
    /// Only decisions that asked for or were served by this model.
    pub model: Option<String>,
    /// Records per page.
    pub limit: usize,
    /// Where to continue; the newest record when `None`.
    pub cursor: Option<Cursor>,
}

impl Query {
    /// Parses a query string for `who`: a tenant admin sees its own tenant only (403 for
    /// another); each bad parameter is a 400 that names it.
    pub fn parse(raw: Option<&str>, who: &Authority) -> Result<Query, ApiError> {
        let mut q = Query {
            tenant: None,
            since: None,
            rule: None,
            id: None,
            model: None,
            limit: DEFAULT_LIMIT,
            cursor: None,
        };
        let mut asked_tenant = None;
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let bad = |message: String| ApiError::invalid_field(&name, message);
            let text = |v: &str| -> Result<String, ApiError> {
                if v.is_empty() {
                    Err(bad(format!("`{name}` must not be empty")))
                } else {
                    Ok(v.to_owned())
                }
            };
            match &*name {
                "tenant" => asked_tenant = Some(text(&value)?),
                "rule" => q.rule = Some(text(&value)?),
                "id" => q.id = Some(text(&value)?),
                "model" => q.model = Some(text(&value)?),
                "since" => {
                    q.since = Some(parse_since(&value).ok_or_else(|| {
                        bad(format!(
                            "`since` must be an RFC 3339 time (2026-12-01T00:00:00Z) or unix \
                             milliseconds, not `{value}`"
                        ))
                    })?)
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                            "`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{value}`"
                        ))
                        })?
                }
                "cursor" => {
                    q.cursor = Some(Cursor::parse(&value).ok_or_else(|| {
                        bad(format!(
                            "`cursor` must be the `next` of an earlier page, not `{value}`"
                        ))
                    })?)
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{other}`; the parameters are since, rule, model, \
                         id, tenant, limit and cursor"
                    )))
                }
            }
        }
        q.tenant = who
            .tenant_filter(asked_tenant.as_deref())
            .map_err(key_error)?;
        Ok(q)
    }
}

/// `since`: unix milliseconds, or an RFC 3339 time.
fn parse_since(text: &str) -> Option<DateTime<Utc>> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return DateTime::from_timestamp_millis(text.parse().ok()?);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One page of records.
#[derive(Debug, Default)]
pub struct Page {
    /// The records, newest first, each as logged.
    pub records: Vec<Value>,
    /// Where the next page starts; `None` when the log holds no more.
    pub next: Option<Cursor>,
    /// Lines passed over that are not records (too long, or not JSON of a record).
    pub unreadable: usize,
}

/// Why a page cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cursor's file is no longer among the log's files.
    #[error(
        "the cursor's part of the decision log has been rotated away; start again without `cursor`"
    )]
    Expired,
    /// A file cannot be read.
    #[error("cannot read the decision log: {0}")]
    Io(#[from] std::io::Error),
}

/// The fields a query filters on (the rest of a record is not parsed to filter).
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: String,
    time: DateTime<Utc>,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    requested_model: String,
    #[serde(default)]
    served_model: Option<String>,
    #[serde(default)]
    input: HeadInput,
}

#[derive(Deserialize, Default)]
struct HeadInput {
    #[serde(default)]
    identity: HeadIdentity,
}

#[derive(Deserialize, Default)]
struct HeadIdentity {
    #[serde(default)]
    tenant: HeadPrincipal,
}

#[derive(Deserialize, Default)]
struct HeadPrincipal {
    #[serde(default)]
    id: String,
}

impl Query {
    /// Whether a record's head passes the filters.
    fn admits(&self, h: &Head) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| *t == h.input.identity.tenant.id)
            && self.since.is_none_or(|s| h.time >= s)
            && self.rule.as_ref().is_none_or(|r| *r == h.rule)
            && self.id.as_ref().is_none_or(|i| *i == h.id)
            && self
                .model
                .as_ref()
                .is_none_or(|m| *m == h.requested_model || h.served_model.as_ref() == Some(m))
    }
}

/// A file's identity, kept when rotation renames it.
#[cfg(unix)]
fn file_id(meta: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

/// A file's identity, kept when rotation renames it.
#[cfg(not(unix))]
fn file_id(meta: &Metadata) -> u64 {
    meta.created()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A log file opened for reading, with its size and last change at opening.
struct Opened {
    id: u64,
    file: File,
    len: u64,
    modified: Option<SystemTime>,
}

/// Opens the log's files, newest first. A file renamed by a rotation while they are opened
/// is opened once (by identity); missing files are passed over.
fn open_all(files: &LogFiles) -> std::io::Result<Vec<Opened>> {
    let mut out: Vec<Opened> = Vec::new();
    for path in files.newest_first() {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let id = file_id(&meta);
        if out.iter().any(|o| o.id == id) {
            continue;
        }
        out.push(Opened {
            id,
            len: meta.len(),
            modified: meta.modified().ok(),
            file,
        });
    }
    Ok(out)
}

/// Reads one page of `files` for `query`.
pub fn read(files: &LogFiles, query: &Query) -> Result<Page, ReadError> {
    let opened = open_all(files)?;
    let (first, start) = match query.cursor {
        None => (0, None),
        Some(c) => {
            let i = opened
                .iter()
                .position(|o| o.id == c.file && c.offset <= o.len)
                .ok_or(ReadError::Expired)?;
            (i, Some(c.offset))
        }
    };
    let mut page = Page::default();
    let mut scanned = 0usize;
    let mut page_bytes = 0usize;
    for (i, o) in opened.iter().enumerate().skip(first) {
        // Every record of a file last written before `since` was decided before it, and so was
        // every record of the older files.
        if let (Some(since), Some(modified)) = (query.since, o.modified) {
            if DateTime::<Utc>::from(modified) < since {
                break;
            }
        }
        let end = if i == first {
            start.unwrap_or(o.len)
        } else {
            o.len
        };
        let mut lines = Backward::new(&o.file, end)?;
        while let Some((offset, line)) = lines.previous()? {
            scanned += 1;
            match serde_json::from_slice::<Head>(&line) {
                Ok(head) if query.admits(&head) => {
                    if page.records.len() == query.limit {
                        // One more exists: the next page starts with it.
                        page.next = Some(Cursor {
                            file: o.id,
                            offset: offset + line.len() as u64 + 1,
                        });
                        page.unreadable += lines.skipped;
                        return Ok(page);
                    }
                    match serde_json::from_slice::<Value>(&line) {
                        Ok(v) => page.records.push(v),
                        Err(_) => page.unreadable += 1,
                    }
                    page_bytes += line.len();
                }
                Ok(_) => {}
                Err(_) => page.unreadable += 1,
            }
            if scanned >= SCAN_LINES || page_bytes >= MAX_PAGE_BYTES {
                page.next = Some(Cursor { file: o.id, offset });
                page.unreadable += lines.skipped;
                return Ok(page);
            }
        }
        page.unreadable += lines.skipped;
    }
    Ok(page)
}

/// The complete lines of a file before some offset, last first.
struct Backward<'f> {
    file: &'f File,
    /// File offset of `buf[0]`.
    pos: u64,
    /// Bytes read and not yet returned; they end at a line end unless `skipping`.
    buf: Vec<u8>,
    /// Whether `buf` ends inside a line that is not returned (an unfinished last line, or
    /// one over [`MAX_LINE`]).
    skipping: bool,
    /// Lines over [`MAX_LINE`] passed over.
    skipped: usize,
}

impl<'f> Backward<'f> {
    /// Lines ending at or before `end`; an unfinished line at `end` (still being written) is
    /// passed over.
    fn new(file: &'f File, end: u64) -> std::io::Result<Self> {
        let mut lines = Backward {
            file,
            pos: end,
            buf: Vec::new(),
            skipping: false,
            skipped: 0,
        };
        if end > 0 {
            let mut last = [0u8; 1];
            lines.read_at(end - 1, &mut last)?;
            lines.skipping = last[0] != b'\n';
        }
        Ok(lines)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let mut f = self.file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(out)
    }

    /// The previous line (without its `\n`) and its offset.
    fn previous(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        loop {
            // A skipped line ends at the last `\n` of the buffer; a line to return ends with the
            // buffer's last byte, and starts after the `\n` before it.
            let searched = if self.skipping {
                self.buf.len()
            } else {
                self.buf.len().saturating_sub(1)
            };
            if let Some(i) = self.buf[..searched].iter().rposition(|&b| b == b'\n') {
                if self.skipping {
                    self.skipping = false;
                    self.buf.truncate(i + 1);
                    continue;
                }
                let line = self.buf[i + 1..self.buf.len() - 1].to_vec();
                self.buf.truncate(i + 1);
                return Ok(Some((self.pos + i as u64 + 1, line)));
            }
            if self.pos == 0 {
                // The file's first line.
                let line = (!self.skipping && !self.buf.is_empty())
                    .then(|| self.buf[..self.buf.len() - 1].to_vec());
                self.buf.clear();
                return Ok(line.map(|l| (0, l)));
            }
            if self.skipping {
                self.buf.clear();
            } else if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
                self.skipped += 1;
            }
            let n = CHUNK.min(self.pos as usize);
            let mut chunk = vec![0u8; n];
            self.read_at(self.pos - n as u64, &mut chunk)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
            self.pos -= n as u64;
        }
    }
}

/// Reads one page of the gateway's decision log for `query`, off the async threads: 409
/// without a decision log, 410 for a cursor rotation deleted.
pub async fn read_page(app: &App, query: Query) -> Result<Page, ApiError> {
    let Some(files) = app.decision_log.files().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "decision_log_disabled",
            "the decision log is not enabled on this gateway; start it with `--decision-log PATH`",
        ));
    };
    let page = tokio::task::spawn_blocking(move || read(&files, &query))
        .await
        .map_err(|e| ApiError::internal(format!("reading the decision log failed: {e}")))?;
    match page {
        Ok(p) => Ok(p),
        Err(ReadError::Expired) => Err(ApiError::new(
            StatusCode::GONE,
            "invalid_request_error",
            "cursor_expired",
            ReadError::Expired.to_string(),
        )
        .with_param("cursor")),
        Err(e) => {
            tracing::error!(target: "llmgw::admin", error = %e, "decision log query failed");
            Err(ApiError::internal("cannot read the decision log"))
        }
    }
}

/// Answers `GET /admin/decisions`.
pub async fn handle(
    app: &App,
    parts: &http::request::Parts,
) -> Result<Response<GatewayBody>, ApiError> {
    let who = authority(app, &parts.headers).await?;
    let query = Query::parse(parts.uri.query(), &who)?;
    let page = read_page(app, query).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": page.records,
            "next": page.next.map(|c| c.encode()),
            "unreadable": page.unreadable,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision_log::rotated_path;
    use std::io::Write as _;

    fn lines_of(text: &[u8], end: Option<u64>) -> Vec<(u64, String)> {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(text).expect("write");
        let mut lines = Backward::new(&f, end.unwrap_or(text.len() as u64)).expect("reader");
        let mut out = Vec::new();
        while let Some((at, l)) = lines.previous().expect("read") {
            out.push((at, String::from_utf8(l).expect("utf-8")));
        }
        out
    }

    #[test]
    fn reads_lines_backwards_with_their_offsets_and_passes_over_an_unfinished_one() {
        assert_eq!(
            lines_of(b"ab\ncde\n\nf\ngh", None),
            vec![
                (8, "f".to_owned()),
                (7, String::new()),
                (3, "cde".to_owned()),
                (0, "ab".to_owned())
            ]
        );
        assert_eq!(lines_of(b"ab\ncde\n", Some(3)), vec![(0, "ab".to_owned())]);
        assert!(lines_of(b"", None).is_empty());
        assert!(lines_of(b"no end", None).is_empty());
    }

    #[test]
    fn lines_longer_than_a_chunk_are_read_and_overlong_ones_skipped() {
        let long = "x".repeat(CHUNK * 2 + 7);
        let huge = "y".repeat(MAX_LINE + CHUNK);
        let text = format!("a\n{huge}\n{long}\nb\n");
        let got = lines_of(text.as_bytes(), None);
        let texts: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, vec!["b", long.as_str(), "a"]);
    }

    fn record(i: usize, tenant: &str) -> String {
        format!(
            "{{\"id\":\"r{i}\",\"time\":\"2026-12-01T00:00:{:02}Z\",\"rule\":\"default\",\"requested_model\":\"m\",\"input\":{{\"identity\":{{\"tenant\":{{\"id\":\"{tenant}\"}}}}}}}}\n",
            i % 60
        )
    }

    fn append(path: &std::path::Path, from: usize, to: usize) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        for i in from..to {
            let tenant = if i % 3 == 0 { "globex" } else { "acme" };
            f.write_all(record(i, tenant).as_bytes()).expect("write");
        }
    }

    fn page_ids(page: &Page) -> Vec<String> {
        page.records
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn paging_continues_across_a_rotation_and_returns_each_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LogFiles {
            path: dir.path().join("d.jsonl"),
            keep: 3,
        };
        append(&rotated_path(&files.path, 1), 0, 5);
        append(&files.path, 5, 10);
        let mut query = Query::parse(Some("limit=4"), &Authority::Global).expect("query");
        let first = read(&files, &query).expect("page");
        assert_eq!(page_ids(&first), ["r9", "r8", "r7", "r6"]);
        // The writer rotates and appends before the next page is asked for.
        std::fs::rename(rotated_path(&files.path, 1), rotated_path(&files.path, 2)).expect("mv");
        std::fs::rename(&files.path, rotated_path(&files.path, 1)).expect("mv");
        append(&files.path, 10, 12);
        let mut seen = page_ids(&first);
        query.cursor = first.next;
        while query.cursor.is_some() {
            let page = read(&files, &query).expect("page");
            seen.extend(page_ids(&page));
            query.cursor = page.next;
        }
        let expected: Vec<String> = (0..10).rev().map(|i| format!("r{i}")).collect();
        assert_eq!(seen, expected);
        // One tenant's records only.
        let acme = Query::parse(None, &Authority::Tenant("acme".into())).expect("query");
        let page = read(&files, &acme).expect("page");
        assert_eq!(page.records.len(), 8);
        assert!(page_ids(&page).iter().all(|id| id != "r0" && id != "r9"));
        // A cursor into a file that rotation deleted is expired.
        let oldest = rotated_path(&files.path, 2);
        let id = file_id(&std::fs::metadata(&oldest).expect("metadata"));
        std::fs::remove_file(&oldest).expect("rm");
        query.cursor = Some(Cursor {
            file: id,
            offset: 10,
        });
        assert!(matches!(read(&files, &query), Err(ReadError::Expired)));
    }

    #[test]
    fn cursors_round_trip_and_bad_parameters_are_named() {
        let c = Cursor {
            file: 0xabc,
            offset: 12,
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c));
        assert_eq!(Cursor::parse("zz-1"), None);
        let who = Authority::Global;
        for (raw, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("since=yesterday", "since"),
            ("cursor=nope", "cursor"),
            ("rule=", "rule"),
            ("colour=red", "colour"),
        ] {
            let e = Query::parse(Some(raw), &who).expect_err(raw);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{raw}");
            assert_eq!(e.param.as_deref(), Some(param), "{raw}");
            assert!(
                e.message.contains(&format!("`{param}`")),
                "{raw}: {}",
                e.message
            );
        }
        let q = Query::parse(Some("since=1764720000000&limit=5"), &who).expect("valid");
        assert_eq!(q.limit, 5);
        assert_eq!(
            q.since,
            Query::parse(Some("since=2025-12-03T00:00:00Z"), &who)
                .expect("valid")
                .since
        );
        let mine = Query::parse(None, &Authority::Tenant("acme".into())).expect("valid");
        assert_eq!(mine.tenant.as_deref(), Some("acme"));
        let other = Query::parse(Some("tenant=globex"), &Authority::Tenant("acme".into()));
        assert_eq!(other.expect_err("forbidden").status, StatusCode::FORBIDDEN);
    }
}

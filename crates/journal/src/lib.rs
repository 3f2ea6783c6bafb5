//! The order journal: for each trigger, a compact record of what happened to it (accepted by the
//! ingress, fetched from Tradecloud, published, dead-lettered, replayed), written by every process
//! into a SQLite file next to it and searched by Tradecloud order id, purchase order number,
//! trigger id or message id (`tradecloud-bridge trace`).
//!
//! Never on a request's critical path: [`Journal::record`] hands the entry to a writer thread
//! through a bounded queue and returns at once; a full queue or a failing disk drops the entry
//! (counted in `tcb_journal_dropped_total`), it never delays or fails a webhook. Bounded by age
//! and by row count; old entries are deleted in the background.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};

/// `[journal]`: where the process keeps its journal. Without `path`, no journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// The SQLite file (relative to the config file's folder). Each process needs its own:
    /// ingress and worker of one host use two files, `trace` reads both.
    pub path: Option<PathBuf>,
    /// The journals of the bridge's other processes (relative to the config file's folder), e.g.
    /// the worker's on a volume the ingress shares: the console and `trace --config` search them
    /// with this process's own, read-only. A file that does not exist (yet) is skipped.
    pub read_also: Vec<PathBuf>,
    /// Entries older than this are deleted (hours; default 7 days).
    pub max_age_hours: u64,
    /// At most this many entries; the oldest go first (default 1,000,000, about 300 MB).
    pub max_entries: u64,
    /// At most this much space (MiB) for the entries; past it the oldest go first (default
    /// 1024). Freed space is reused, so the file stays about this large.
    pub max_size_mb: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            path: None,
            read_also: Vec::new(),
            max_age_hours: 24 * 7,
            max_entries: 1_000_000,
            max_size_mb: 1024,
        }
    }
}

impl JournalConfig {
    /// Every journal to search: this process's, then the others'.
    pub fn searched(&self) -> Vec<PathBuf> {
        self.path.iter().chain(&self.read_also).cloned().collect()
    }

    /// Every problem of the section, each naming its key (relative to `journal`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.max_age_hours == 0 {
            problems.push(("max_age_hours".to_owned(), "must be at least 1".to_owned()));
        }
        if self.max_entries < 1000 {
            problems.push(("max_entries".to_owned(), "must be at least 1000".to_owned()));
        }
        if self.max_size_mb == 0 {
            problems.push(("max_size_mb".to_owned(), "must be at least 1".to_owned()));
        }
        problems
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What happened to a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The ingress answered 200: the broker holds the trigger.
    Accepted,
    /// The ingress answered 503 or 413: the trigger was not stored (Tradecloud retries a 503).
    NotStored,
    /// An authenticated request the ingress refused with a 4xx (bad body, unsupported content
    /// type, too large): Tradecloud does not retry it, so the order change never arrives.
    Refused,
    /// An attempt to fetch the order from Tradecloud failed (it is retried, or dead-lettered).
    FetchFailed,
    /// The order was fetched (or the event read) and normalized.
    Fetched,
    /// The order message is on the orders topic.
    Published,
    /// The trigger went to the dead-letter topic.
    DeadLettered,
    /// An operator moved the dead letter back to the triggers topic.
    Replayed,
    /// Tradecloud delivered a message the worker had published already: acked, not published.
    Duplicate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Accepted => "accepted",
            Stage::NotStored => "not_stored",
            Stage::Refused => "refused",
            Stage::FetchFailed => "fetch_failed",
            Stage::Fetched => "fetched",
            Stage::Published => "published",
            Stage::DeadLettered => "dead_lettered",
            Stage::Replayed => "replayed",
            Stage::Duplicate => "duplicate",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Stage::Accepted,
            Stage::NotStored,
            Stage::Refused,
            Stage::FetchFailed,
            Stage::Fetched,
            Stage::Published,
            Stage::DeadLettered,
            Stage::Replayed,
            Stage::Duplicate,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub trigger_id: String,
    pub stage: Stage,
    /// `ingress`, `worker` or `replay`.
    pub process: String,
    pub order_id: Option<String>,
    pub po_number: Option<String>,
    /// Tradecloud's `meta.messageId` (ingress) or the output's message id (worker).
    pub message_id: Option<String>,
    pub trace_id: Option<String>,
    /// What the stage is about: status, peer, topic, reason, version, ...
    pub detail: serde_json::Value,
}

impl Entry {
    pub fn new(trigger_id: impl Into<String>, stage: Stage) -> Self {
        Self {
            at: Utc::now(),
            trigger_id: trigger_id.into(),
            stage,
            process: String::new(),
            order_id: None,
            po_number: None,
            message_id: None,
            trace_id: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn order(mut self, id: Option<&str>) -> Self {
        self.order_id = id.filter(|s| !s.is_empty()).map(str::to_owned);
        self
    }

    pub fn po_number(mut self, po: Option<&str>) -> Self {
        self.po_number = po.filter(|s| !s.is_empty()).map(str::to_owned);
        self
    }

    pub fn message(mut self, id: Option<&str>) -> Self {
        self.message_id = id.filter(|s| !s.is_empty()).map(str::to_owned);
        self
    }

    pub fn trace(mut self, id: &str) -> Self {
        self.trace_id = Some(id.to_owned()).filter(|s| !s.is_empty());
        self
    }

    /// When it happened, if not now (e.g. when the request arrived, before the publish).
    pub fn at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Entries waiting for the writer; past this, entries are dropped (and counted).
const QUEUE: usize = 16_384;
/// How long the writer gathers entries into one transaction.
const LINGER: Duration = Duration::from_millis(50);
/// Most entries in one transaction.
const BATCH: usize = 4096;
/// How often old entries are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Entries dropped because the queue was full or the writer is gone.
pub const DROPPED: &str = "tcb_journal_dropped_total";
/// How long [`Journal::flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// Entries written.
pub const WRITTEN: &str = "tcb_journal_entries_total";

/// A process's journal: cheap to clone; recording never blocks.
#[derive(Clone)]
pub struct Journal {
    tx: SyncSender<Msg>,
    process: &'static str,
}

enum Msg {
    Entry(Entry),
    /// Answered once everything sent before is written.
    Flush(SyncSender<()>),
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    process TEXT NOT NULL,
    order_id TEXT,
    po_number TEXT,
    message_id TEXT,
    trace_id TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_trigger ON journal (trigger_id);
CREATE INDEX IF NOT EXISTS journal_order ON journal (order_id);
";

fn open(path: &Path, write: bool) -> Result<Connection, JournalError> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sqlite(path))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(sqlite(path))?;
    if write {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite(path))?;
        // The journal is a record for people, not the source of truth: a power cut may lose the
        // last entries, never a trigger.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite(path))?;
        conn.execute_batch(SCHEMA).map_err(sqlite(path))?;
    }
    Ok(conn)
}

impl Journal {
    /// Opens (creating) the journal file and starts its writer. `process` names the writer in
    /// every entry (`ingress`, `worker`, `replay`).
    pub fn open(
        config: &JournalConfig,
        path: &Path,
        process: &'static str,
    ) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = open(path, true)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let limits = config.clone();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || writer(conn, rx, limits, &shown))
            .map_err(|source| JournalError::Io {
                path: path.display().to_string(),
                source,
            })?;
        metrics::counter!(DROPPED).increment(0);
        metrics::counter!(WRITTEN).increment(0);
        Ok(Self { tx, process })
    }

    /// Waits (a few seconds at most) until every entry recorded so far is written: before the
    /// process exits. Blocking: call it off the async threads.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }

    /// Records `entry` (never blocks; dropped and counted when the writer cannot keep up).
    pub fn record(&self, mut entry: Entry) {
        entry.process = self.process.to_owned();
        match self.tx.try_send(Msg::Entry(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                metrics::counter!(DROPPED).increment(1);
            }
        }
    }
}

fn writer(mut conn: Connection, rx: Receiver<Msg>, limits: JournalConfig, path: &str) {
    let mut swept = Instant::now()
        .checked_sub(SWEEP_EVERY)
        .unwrap_or_else(Instant::now);
    while let Ok(first) = rx.recv() {
        // Everything queued now goes in one transaction; flushes are answered after it.
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        // Entries of the next LINGER join this one's transaction (one commit for many: the
        // writer's share of the CPU stays small), unless a flush waits.
        let until = Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Entry(e) => batch.push(e),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH && flushes.is_empty() {
                let left = until.saturating_duration_since(Instant::now());
                next = rx.recv_timeout(left).ok();
            }
        }
        let n = batch.len() as u64;
        if n > 0 {
            match insert(&mut conn, &batch) {
                Ok(()) => metrics::counter!(WRITTEN).increment(n),
                Err(e) => {
                    metrics::counter!(DROPPED).increment(n);
                    tracing::warn!(error = %e, journal = path, "journal entries not written");
                }
            }
        }
        for done in flushes {
            let _ = done.try_send(());
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = Instant::now();
            if let Err(e) = sweep(&conn, &limits) {
                tracing::warn!(error = %e, journal = path, "deleting old journal entries failed");
            }
        }
    }
}

fn insert(conn: &mut Connection, batch: &[Entry]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO journal (at, trigger_id, stage, process, order_id, po_number, message_id, trace_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in batch {
            stmt.execute(params![
                e.at.to_rfc3339_opts(SecondsFormat::Micros, true),
                e.trigger_id,
                e.stage.as_str(),
                e.process,
                e.order_id,
                e.po_number,
                e.message_id,
                e.trace_id,
                e.detail.to_string(),
            ])?;
        }
    }
    tx.commit()
}

/// Deletes entries past the age, beyond the count and beyond the size (the oldest first).
fn sweep(conn: &Connection, limits: &JournalConfig) -> Result<(), rusqlite::Error> {
    let (max_age_hours, max_entries) = (limits.max_age_hours, limits.max_entries);
    let cutoff = Utc::now() - chrono::Duration::hours(max_age_hours.min(1 << 20) as i64);
    conn.execute(
        "DELETE FROM journal WHERE at < ?1",
        params![cutoff.to_rfc3339_opts(SecondsFormat::Micros, true)],
    )?;
    conn.execute(
        "DELETE FROM journal WHERE seq <= (SELECT max(seq) FROM journal) - ?1",
        params![max_entries as i64],
    )?;
    // Size: the pages in use (freed pages are reused); past the limit, the oldest share of the
    // entries that brings them under it goes, plus a twentieth so this does not run every sweep.
    let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0));
    let used = (pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?;
    let max = (limits.max_size_mb.min(1 << 30) as i64) << 20;
    if used > max {
        let count: i64 = conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))?;
        let excess = (count as i128 * (used - max) as i128 / used as i128) as i64 + count / 20 + 1;
        conn.execute(
            "DELETE FROM journal WHERE seq <= (SELECT min(seq) FROM journal) + ?1",
            params![excess - 1],
        )?;
    }
    Ok(())
}

/// What to look for: an order id, a purchase order number, a trigger id or a message id (empty:
/// any trigger), and an optional time window.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub text: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// At most this many triggers (the latest).
    pub limit: usize,
}

/// Every entry of the triggers that match `query`, from all `journals` (e.g. the ingress's and
/// the worker's), oldest first. A journal file that does not exist (yet) is skipped.
pub fn search(journals: &[PathBuf], query: &Query) -> Result<Vec<Entry>, JournalError> {
    let limit = if query.limit == 0 { 20 } else { query.limit };
    let since = query
        .since
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default();
    let until = query
        .until
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| "9999".to_owned());
    let open_all: Vec<(PathBuf, Connection)> = journals
        .iter()
        .filter(|p| p.exists())
        .map(|p| open(p, false).map(|c| (p.clone(), c)))
        .collect::<Result<_, _>>()?;
    // The triggers that match, latest first, across the journals.
    let mut triggers: Vec<(String, String)> = Vec::new();
    for (path, conn) in &open_all {
        let mut stmt = conn
            .prepare(
                "SELECT trigger_id, max(at) AS last FROM journal
                 WHERE (?1 = '' OR trigger_id = ?1 OR order_id = ?1 OR po_number = ?1 OR message_id = ?1)
                   AND at >= ?2 AND at <= ?3
                 GROUP BY trigger_id ORDER BY last DESC LIMIT ?4",
            )
            .map_err(sqlite(path))?;
        let rows = stmt
            .query_map(params![query.text, since, until, limit as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sqlite(path))?;
        for row in rows {
            triggers.push(row.map_err(sqlite(path))?);
        }
    }
    triggers.sort_by(|a, b| b.1.cmp(&a.1));
    let mut ids: Vec<String> = Vec::new();
    for (id, _) in triggers {
        if !ids.contains(&id) && ids.len() < limit {
            ids.push(id);
        }
    }
    let mut out = Vec::new();
    for (path, conn) in &open_all {
        let mut stmt = conn
            .prepare(
                "SELECT at, trigger_id, stage, process, order_id, po_number, message_id, trace_id, detail
                 FROM journal WHERE trigger_id = ?1 ORDER BY seq",
            )
            .map_err(sqlite(path))?;
        for id in &ids {
            let rows = stmt
                .query_map(params![id], |r| {
                    let at: String = r.get(0)?;
                    let stage: String = r.get(2)?;
                    let detail: String = r.get(8)?;
                    let (Ok(at), Some(stage)) =
                        (DateTime::parse_from_rfc3339(&at), Stage::parse(&stage))
                    else {
                        return Ok(None);
                    };
                    Ok(Some(Entry {
                        at: at.with_timezone(&Utc),
                        trigger_id: r.get(1)?,
                        stage,
                        process: r.get(3)?,
                        order_id: r.get(4)?,
                        po_number: r.get(5)?,
                        message_id: r.get(6)?,
                        trace_id: r.get(7)?,
                        detail: serde_json::from_str(&detail).unwrap_or_default(),
                    }))
                })
                .map_err(sqlite(path))?;
            for row in rows {
                out.extend(row.map_err(sqlite(path))?);
            }
        }
    }
    // Triggers by their first entry, oldest first; a trigger's entries together, in the order
    // they happened.
    let mut first: std::collections::HashMap<String, DateTime<Utc>> = Default::default();
    for e in &out {
        first
            .entry(e.trigger_id.clone())
            .and_modify(|t| *t = (*t).min(e.at))
            .or_insert(e.at);
    }
    out.sort_by_cached_key(|e| {
        (
            first.get(&e.trigger_id).copied(),
            e.trigger_id.clone(),
            e.at,
            stage_rank(e.stage),
        )
    });
    Ok(out)
}

/// When each of `ids` was last replayed, from the journals (one indexed lookup per id).
pub fn replayed(
    journals: &[PathBuf],
    ids: &[&str],
) -> Result<BTreeMap<String, String>, JournalError> {
    let mut out = BTreeMap::new();
    for path in journals.iter().filter(|p| p.exists()) {
        let conn = open(path, false)?;
        let mut stmt = conn
            .prepare("SELECT max(at) FROM journal WHERE trigger_id = ?1 AND stage = 'replayed'")
            .map_err(sqlite(path))?;
        for id in ids {
            let at: Option<String> = stmt
                .query_row(params![id], |r| r.get(0))
                .map_err(sqlite(path))?;
            if let Some(at) = at {
                let e = out.entry((*id).to_owned()).or_insert_with(String::new);
                if at > *e {
                    *e = at;
                }
            }
        }
    }
    Ok(out)
}

/// The order of stages within one moment (clocks of two processes may agree to the microsecond).
fn stage_rank(s: Stage) -> u8 {
    match s {
        Stage::Accepted | Stage::NotStored | Stage::Refused => 0,
        Stage::Replayed => 1,
        Stage::FetchFailed => 2,
        Stage::Fetched => 3,
        Stage::Published | Stage::DeadLettered | Stage::Duplicate => 4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn wait_written(path: &Path, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count: i64 = open(path, false)
                .and_then(|c| {
                    c.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
                        .map_err(sqlite(path))
                })
                .unwrap_or(0);
            if count >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{count} of {n} entries written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn entries_of_two_processes_are_found_by_any_id_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("ingress.db"), dir.path().join("worker.db"));
        let config = JournalConfig::default();
        let ingress = Journal::open(&config, &a, "ingress").unwrap();
        let worker = Journal::open(&config, &b, "worker").unwrap();
        ingress.record(
            Entry::new("t-1", Stage::Accepted)
                .order(Some("o-1"))
                .message(Some("tc-msg-1"))
                .trace("abc"),
        );
        ingress.record(Entry::new("t-2", Stage::Accepted).order(Some("o-2")));
        worker.record(Entry::new("t-1", Stage::Fetched).order(Some("o-1")));
        worker.record(
            Entry::new("t-1", Stage::Published)
                .order(Some("o-1"))
                .po_number(Some("PO-4711"))
                .message(Some("out-1")),
        );
        ingress.flush();
        worker.flush();
        wait_written(&a, 2);
        wait_written(&b, 2);
        let both = [a.clone(), b.clone(), dir.path().join("missing.db")];
        for text in ["t-1", "o-1", "PO-4711", "tc-msg-1", "out-1"] {
            let found = search(
                &both,
                &Query {
                    text: text.to_owned(),
                    ..Query::default()
                },
            )
            .unwrap();
            let stages: Vec<_> = found
                .iter()
                .map(|e| (e.process.as_str(), e.stage))
                .collect();
            assert_eq!(
                stages,
                [
                    ("ingress", Stage::Accepted),
                    ("worker", Stage::Fetched),
                    ("worker", Stage::Published)
                ],
                "{text}"
            );
        }
        assert!(
            search(
                &both,
                &Query {
                    text: "nothing".to_owned(),
                    ..Query::default()
                }
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn old_and_surplus_entries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut conn = open(&path, true).unwrap();
        let mut old = Entry::new("old", Stage::Accepted);
        old.at = Utc::now() - chrono::Duration::hours(48);
        let recent: Vec<Entry> = (0..1500)
            .map(|i| Entry::new(format!("t-{i}"), Stage::Accepted))
            .collect();
        insert(&mut conn, &[old]).unwrap();
        insert(&mut conn, &recent).unwrap();
        let limits = JournalConfig {
            max_age_hours: 24,
            max_entries: 1000,
            ..JournalConfig::default()
        };
        sweep(&conn, &limits).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1000);
        let oldest: String = conn
            .query_row(
                "SELECT trigger_id FROM journal ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(oldest, "t-500", "the oldest go first");
    }

    #[test]
    fn entries_beyond_the_size_limit_are_swept_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut conn = open(&path, true).unwrap();
        // About 4 MiB of entries against a 1 MiB limit.
        let detail = serde_json::json!({"error": "x".repeat(400)});
        let entries: Vec<Entry> = (0..8000)
            .map(|i| Entry::new(format!("t-{i}"), Stage::Accepted).detail(detail.clone()))
            .collect();
        insert(&mut conn, &entries).unwrap();
        let used = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert!(used(&conn) > 3 << 20, "{}", used(&conn));
        let limits = JournalConfig {
            max_size_mb: 1,
            ..JournalConfig::default()
        };
        sweep(&conn, &limits).unwrap();
        assert!(used(&conn) <= 1 << 20, "{}", used(&conn));
        let (oldest, newest): (String, String) = conn
            .query_row(
                "SELECT (SELECT trigger_id FROM journal ORDER BY seq LIMIT 1), (SELECT trigger_id FROM journal ORDER BY seq DESC LIMIT 1)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(newest, "t-7999", "the newest stay");
        let first: u32 = oldest.trim_start_matches("t-").parse().unwrap();
        assert!(first > 5000, "the oldest went first: {oldest}");
        // Under the limit, nothing more goes.
        let count = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
                .unwrap()
        };
        let before = count(&conn);
        sweep(&conn, &limits).unwrap();
        assert_eq!(count(&conn), before);
    }

    #[test]
    fn a_journal_that_cannot_keep_up_drops_instead_of_blocking() {
        // A writer that never reads and a queue of one: recording 100 entries returns (a
        // blocking send would hang here for ever), the queue holds the first.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let journal = Journal {
            tx,
            process: "ingress",
        };
        for i in 0..100 {
            journal.record(Entry::new(format!("t-{i}"), Stage::Accepted));
        }
        let queued: Vec<_> = rx
            .try_iter()
            .filter_map(|m| match m {
                Msg::Entry(e) => Some(e.trigger_id),
                Msg::Flush(_) => None,
            })
            .collect();
        assert_eq!(queued, ["t-0"]);
    }
}

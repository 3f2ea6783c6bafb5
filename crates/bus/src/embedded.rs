//! The embedded backend: a durable on-disk queue in one SQLite file.
//!
//! Why SQLite (through rusqlite, bundled): a committed transaction in WAL mode with
//! `synchronous=FULL` survives `kill -9` and power loss; several processes can open the same file
//! at once (the bridge and an operator's `consume`), which redb and fjall do not allow; and an
//! operator can inspect the queue with the `sqlite3` shell.
//!
//! Layout: `messages` is an append-only log per topic (ids increase); `acks` records which ids a
//! consumer group has settled. A group's consumer reads ids above its cursor that it has not
//! acked, so after a crash everything unacked is delivered again. One consumer per group and
//! topic at a time, enforced by a lock file (a second worker on the same file fails to start).
//! Messages older than `retention_hours` are deleted once every group that consumes their topic
//! has acked them; unacked ones are kept.
//!
//! Writes go through one writer thread that commits whatever is pending in one transaction (group
//! commit), so many concurrent publishes share one fsync.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, params};
use serde::Deserialize;
use tokio::sync::{Notify, oneshot};

use crate::{
    Acker, BusError, Consumer, ConsumerOpener, Delivery, Headers, Message, Pending, Publisher,
    TopicsConfig,
};

/// Most operations one transaction commits.
const MAX_BATCH: usize = 512;
/// Rows one consumer fetch reads.
const FETCH_BATCH: i64 = 128;
/// How often an idle consumer looks for messages written by another process.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// `[bus]` with `backend = "embedded"`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The SQLite file; it and its folder are created when missing.
    pub path: PathBuf,
    /// Most publishes and acks waiting for the writer; past it a publish fails at once as
    /// overloaded (the ingress answers 503) instead of queueing without bound.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Messages older than this are deleted once some consumer group has acked them, so the file
    /// does not grow without bound; unacked messages are kept. 0 keeps everything.
    #[serde(default = "default_retention")]
    pub retention_hours: u64,
    #[serde(default)]
    pub topics: TopicsConfig,
}

fn default_max_pending() -> usize {
    10_000
}

fn default_retention() -> u64 {
    24 * 7
}

/// How often the writer applies the retention.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

impl EmbeddedConfig {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_pending: default_max_pending(),
            retention_hours: default_retention(),
            topics: TopicsConfig::default(),
        }
    }

    /// Every problem of this section, each naming its key (relative to `bus`).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(("path".to_owned(), "must not be empty".to_owned()));
        }
        if self.max_pending == 0 {
            problems.push(("max_pending".to_owned(), "must be at least 1".to_owned()));
        }
        problems.extend(self.topics.validate());
        problems
    }
}

enum Op {
    Publish {
        topic: String,
        message: Message,
        reply: oneshot::Sender<Result<i64, BusError>>,
    },
    Ack {
        group: String,
        topic: String,
        id: i64,
        reply: oneshot::Sender<Result<i64, BusError>>,
    },
    /// Apply the retention now.
    Sweep {
        reply: oneshot::Sender<Result<i64, BusError>>,
    },
}

impl Op {
    /// `result`: the new message's id for a publish, 0 otherwise.
    fn reply(self, result: Result<i64, BusError>) {
        let reply = match self {
            Op::Publish { reply, .. } | Op::Ack { reply, .. } | Op::Sweep { reply } => reply,
        };
        // The caller may have given up waiting (timeout); nothing to tell then.
        let _ = reply.send(result);
    }
}

struct Inner {
    path: PathBuf,
    tx: SyncSender<Op>,
    notify: Arc<Notify>,
    writer_alive: Arc<AtomicBool>,
}

/// The open store: a [`Publisher`] and a [`ConsumerOpener`]. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

fn storage(e: impl Into<crate::BoxError>) -> BusError {
    BusError::storage("the embedded store failed", e)
}

fn writer_stopped() -> BusError {
    BusError::Storage {
        context: "the embedded store's writer stopped".to_owned(),
        source: None,
    }
}

fn open_connection(path: &Path) -> Result<Connection, BusError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| BusError::storage(format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(storage)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(storage)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    published_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, id);
CREATE TABLE IF NOT EXISTS acks (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
";

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl EmbeddedStore {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: &EmbeddedConfig) -> Result<Self, BusError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| BusError::storage(format!("cannot create {}", dir.display()), e))?;
        }
        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(BusError::Config(format!("bus.{key}: {message}")));
        }
        let conn = open_connection(&config.path)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        let (tx, rx) = sync_channel(config.max_pending);
        let retention_hours = config.retention_hours;
        let notify = Arc::new(Notify::new());
        let writer_alive = Arc::new(AtomicBool::new(true));
        {
            let notify = notify.clone();
            let alive = writer_alive.clone();
            std::thread::Builder::new()
                .name("embedded-writer".to_owned())
                .spawn(move || {
                    // Marks the writer dead however it ends, a panic included: readiness goes red.
                    struct Alive(Arc<AtomicBool>);
                    impl Drop for Alive {
                        fn drop(&mut self) {
                            self.0.store(false, Ordering::SeqCst);
                            // It ends normally once the store is dropped (every sender gone).
                            if std::thread::panicking() {
                                tracing::error!("the embedded store's writer stopped");
                            } else {
                                tracing::debug!(
                                    "the embedded store's writer stopped: the store is closed"
                                );
                            }
                        }
                    }
                    let _alive = Alive(alive);
                    writer_loop(conn, rx, &notify, retention_hours);
                })
                .map_err(storage)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                tx,
                notify,
                writer_alive,
            }),
        })
    }

    async fn submit(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<i64, BusError>>) -> Op,
    ) -> Result<i64, BusError> {
        outcome(self.send(op)?).await
    }

    /// Queues `op` for the writer (in call order: the writer works its queue in order and
    /// commits what waits together) and returns where its answer will come ([`outcome`]).
    fn send(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<i64, BusError>>) -> Op,
    ) -> Result<oneshot::Receiver<Result<i64, BusError>>, BusError> {
        let (reply, rx) = oneshot::channel();
        match self.inner.tx.try_send(op(reply)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(BusError::Overloaded(
                "too many writes pending for the embedded store".to_owned(),
            )),
            Err(TrySendError::Disconnected(_)) => Err(writer_stopped()),
        }
    }
}

/// What the writer answered to an op [`EmbeddedStore::send`] queued.
async fn outcome(answer: oneshot::Receiver<Result<i64, BusError>>) -> Result<i64, BusError> {
    answer.await.map_err(|_| writer_stopped())?
}

/// Deletes messages older than the retention that every known consumer group of their topic has
/// acked, and their acks. A group is known from when it first consumes the topic until an
/// operator removes it (`DELETE FROM groups WHERE grp = ...`): a worker paused for longer than the
/// retention must not lose what it has not processed. A message of a topic no group consumes, or
/// one a group has not acked, is kept however old it is: nothing acknowledged to Tradecloud is lost.
fn sweep(conn: &Connection, retention_hours: u64) -> Result<(), rusqlite::Error> {
    if retention_hours == 0 {
        return Ok(());
    }
    let age = format!("-{} seconds", retention_hours.saturating_mul(3600));
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS sweep_ids (id INTEGER PRIMARY KEY); DELETE FROM sweep_ids;",
    )?;
    conn.execute(
        "INSERT INTO sweep_ids SELECT m.id FROM messages m
         WHERE m.published_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)
           AND EXISTS (SELECT 1 FROM groups g WHERE g.topic = m.topic)
           AND NOT EXISTS (
               SELECT 1 FROM groups g WHERE g.topic = m.topic AND NOT EXISTS (
                   SELECT 1 FROM acks a WHERE a.grp = g.grp AND a.topic = m.topic AND a.id = m.id))",
        params![age],
    )?;
    conn.execute(
        "DELETE FROM acks WHERE id IN (SELECT id FROM sweep_ids)",
        [],
    )?;
    let deleted = conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM sweep_ids)",
        [],
    )?;
    if deleted > 0 {
        tracing::info!(
            deleted,
            retention_hours,
            "embedded store: deleted consumed messages past the retention"
        );
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: Receiver<Op>, notify: &Notify, retention_hours: u64) {
    let mut last_sweep = std::time::Instant::now();
    loop {
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            last_sweep = std::time::Instant::now();
            if let Err(e) = sweep(&conn, retention_hours) {
                tracing::warn!(error = %e, "embedded store: retention sweep failed");
            }
        }
        let first = match rx.recv_timeout(SWEEP_INTERVAL) {
            Ok(op) => op,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), rusqlite::Error> {
            let txn = conn.transaction()?;
            {
                let mut insert = txn.prepare_cached(
                    "INSERT INTO messages (topic, key, headers, payload) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut ack = txn.prepare_cached(
                    "INSERT OR IGNORE INTO acks (grp, topic, id) VALUES (?1, ?2, ?3)",
                )?;
                let mut seen = txn.prepare_cached(&format!(
                    "INSERT INTO groups (grp, topic, last_seen) VALUES (?1, ?2, {NOW})
                     ON CONFLICT (grp, topic) DO UPDATE SET last_seen = excluded.last_seen"
                ))?;
                for op in &batch {
                    let result = match op {
                        Op::Publish { topic, message, .. } => {
                            match serde_json::to_string(&message.headers) {
                                Ok(headers) => insert
                                    .insert(params![topic, message.key, headers, message.payload])
                                    .map_err(storage),
                                Err(e) => Err(storage(e)),
                            }
                        }
                        Op::Ack {
                            group, topic, id, ..
                        } => ack
                            .execute(params![group, topic, id])
                            .and_then(|_| seen.execute(params![group, topic]))
                            .map(|_| 0)
                            .map_err(storage),
                        Op::Sweep { .. } => {
                            sweep(&txn, retention_hours).map(|()| 0).map_err(storage)
                        }
                    };
                    results.push(result);
                }
            }
            txn.commit()
        })();
        match committed {
            Ok(()) => {
                for (op, result) in batch.into_iter().zip(results) {
                    op.reply(result);
                }
                notify.notify_waiters();
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store: commit failed");
                for op in batch {
                    op.reply(Err(BusError::Storage {
                        context: format!("the embedded store's commit failed: {e}"),
                        source: None,
                    }));
                }
            }
        }
    }
}

impl EmbeddedStore {
    /// Applies the retention now (the writer also does every ten minutes).
    pub async fn sweep(&self) -> Result<(), BusError> {
        self.submit(|reply| Op::Sweep { reply }).await.map(|_| ())
    }
}

#[async_trait]
impl Publisher for EmbeddedStore {
    async fn publish(&self, topic: &str, message: Message) -> Result<(), BusError> {
        self.publish_at(topic, message).await.map(|_| ())
    }

    async fn publish_at(&self, topic: &str, message: Message) -> Result<String, BusError> {
        self.enqueue(topic, message).await?.await
    }

    /// Queues the message for the writer without waiting for its commit: messages queued one
    /// after another are stored in that order, those waiting together in one commit (one
    /// `fsync`), so an order's outputs in flight together cost one commit, not one each.
    async fn enqueue(&self, topic: &str, message: Message) -> Result<Pending, BusError> {
        let topic = topic.to_owned();
        let stored = self.send(|reply| Op::Publish {
            topic,
            message,
            reply,
        })?;
        Ok(Box::pin(async move {
            Ok(format!("id {}", outcome(stored).await?))
        }))
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        if !self.inner.writer_alive.load(Ordering::SeqCst) {
            return Err(writer_stopped());
        }
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            conn.query_row("SELECT count(*) FROM acks LIMIT 1", [], |_| Ok(()))
                .map_err(storage)
        })
        .await
        .map_err(storage)?
    }
}

#[async_trait]
impl ConsumerOpener for EmbeddedStore {
    async fn consumer(
        &self,
        topic: &str,
        group: Option<&str>,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let path = self.inner.path.clone();
        let (topic_, group_) = (topic.to_owned(), group.map(str::to_owned));
        let (conn, lock) = tokio::task::spawn_blocking(move || {
            let conn = open_connection(&path)?;
            let lock = match &group_ {
                Some(g) => {
                    let lock = lock_group(&path, g, &topic_)?;
                    // Known from now on: retention keeps what this group has not acked.
                    conn.execute(
                        &format!(
                            "INSERT INTO groups (grp, topic, last_seen) VALUES (?1, ?2, {NOW})
                             ON CONFLICT (grp, topic) DO UPDATE SET last_seen = excluded.last_seen"
                        ),
                        params![g, topic_],
                    )
                    .map_err(storage)?;
                    Some(lock)
                }
                None => None,
            };
            Ok::<_, BusError>((conn, lock))
        })
        .await
        .map_err(storage)??;
        let conn = Arc::new(Mutex::new(conn));
        // A group member reports what it has not acked yet (in process or not taken), every
        // LAG_INTERVAL, for as long as the consumer lives.
        let lag_probe = group.map(|g| {
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(report_lag(
                conn.clone(),
                topic.to_owned(),
                g.to_owned(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        Ok(Box::new(EmbeddedConsumer {
            store: self.clone(),
            topic: topic.to_owned(),
            group: group.map(str::to_owned),
            conn,
            cursor: 0,
            buffer: VecDeque::new(),
            _lag_probe: lag_probe,
            _lock: lock,
        }))
    }
}

/// Counts the messages of `topic` that `group` has not acked, every [`crate::LAG_INTERVAL`],
/// into `tcb_worker_consumer_lag_messages`, until `stop`.
async fn report_lag(
    conn: Arc<Mutex<Connection>>,
    topic: String,
    group: String,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let (conn, t, g) = (conn.clone(), topic.clone(), group.clone());
        let counted = tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| "the connection is poisoned".to_owned())?;
            conn.prepare_cached(
                "SELECT count(*) FROM messages m WHERE m.topic = ?1
                   AND NOT EXISTS (SELECT 1 FROM acks a
                                   WHERE a.grp = ?2 AND a.topic = ?1 AND a.id = m.id)",
            )
            .and_then(|mut s| s.query_row(params![t, g], |r| r.get::<_, i64>(0)))
            .map_err(|e| e.to_string())
        })
        .await;
        match counted {
            Ok(Ok(n)) => tcb_telemetry::metrics::consumer_lag(&topic, n.max(0) as u64),
            Ok(Err(e)) => tracing::debug!(error = %e, topic, "counting the lag failed"),
            Err(_) => return,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::LAG_INTERVAL) => {}
        }
    }
}

/// One process at a time consumes a group's topic from one file (two workers on one file would
/// each take every message, out of order): an exclusive lock on `<file>.<group>.<topic>.lock`.
fn lock_group(db: &Path, group: &str, topic: &str) -> Result<std::fs::File, BusError> {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".{}.{}.lock", safe(group), safe(topic)));
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BusError::storage(format!("cannot open {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BusError::Config(format!(
            "another process already consumes group {group:?} of topic {topic:?} from {} \
             (one worker per embedded file)",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(BusError::storage(
            format!("cannot lock {}", path.display()),
            e,
        )),
    }
}

struct Row {
    id: i64,
    message: Message,
}

struct EmbeddedConsumer {
    store: EmbeddedStore,
    topic: String,
    group: Option<String>,
    conn: Arc<Mutex<Connection>>,
    cursor: i64,
    buffer: VecDeque<Row>,
    /// Stops the lag probe when the consumer goes.
    _lag_probe: Option<tokio_util::sync::DropGuard>,
    /// The exclusive lock of this group on this topic, while it consumes.
    _lock: Option<std::fs::File>,
}

impl EmbeddedConsumer {
    async fn fetch(&self) -> Result<Vec<Row>, BusError> {
        let conn = self.conn.clone();
        let topic = self.topic.clone();
        let group = self.group.clone();
        let cursor = self.cursor;
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| BusError::Storage {
                context: "the embedded consumer's connection is poisoned".to_owned(),
                source: None,
            })?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT m.id, m.key, m.headers, m.payload FROM messages m
                     WHERE m.topic = ?1 AND m.id > ?2
                       AND NOT EXISTS (SELECT 1 FROM acks a
                                       WHERE a.grp = ?3 AND a.topic = ?1 AND a.id = m.id)
                     ORDER BY m.id LIMIT ?4",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(
                    params![topic, cursor, group.unwrap_or_default(), FETCH_BATCH],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                        ))
                    },
                )
                .map_err(storage)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, key, headers, payload) = row.map_err(storage)?;
                let headers: Headers = serde_json::from_str(&headers).map_err(storage)?;
                out.push(Row {
                    id,
                    message: Message {
                        key,
                        headers,
                        payload,
                        ..Message::default()
                    },
                });
            }
            Ok(out)
        })
        .await
        .map_err(storage)?
    }

    fn delivery(&self, row: Row) -> Delivery {
        let acker = EmbeddedAcker {
            store: self.store.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            id: row.id,
        };
        Delivery::new(
            self.topic.clone(),
            row.id.to_string(),
            row.message,
            Box::new(acker),
        )
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if let Some(row) = self.buffer.pop_front() {
                return Ok(self.delivery(row));
            }
            let notify = self.store.inner.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rows = self.fetch().await?;
            if let Some(last) = rows.last() {
                self.cursor = last.id;
                self.buffer.extend(rows);
                continue;
            }
            let _ = tokio::time::timeout(POLL_INTERVAL, notified).await;
        }
    }
}

struct EmbeddedAcker {
    store: EmbeddedStore,
    topic: String,
    group: Option<String>,
    id: i64,
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let Some(group) = self.group else {
            return Ok(());
        };
        let (topic, id) = (self.topic, self.id);
        self.store
            .submit(|reply| Op::Ack {
                group,
                topic,
                id,
                reply,
            })
            .await
            .map(|_| ())
    }
}

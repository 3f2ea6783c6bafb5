//! Repeats of one Tradecloud message (`meta.messageId`) are published once.
//!
//! Tradecloud redelivers a message it thinks failed (a timeout on its side after the bridge
//! stored it), so the same `meta.messageId` can come several times. The worker remembers, in a
//! SQLite file beside it (`[worker] dedupe_path`), which ids it has published and when; a repeat
//! within `dedupe_window_hours` is acknowledged without publishing and counted
//! (`tcb_worker_duplicates_total`). The file survives restarts; ids older than the window are
//! deleted (at most once a minute, in the same commit as a new id). One order's triggers are
//! worked in order, and a repeat of a message still in flight in its order's pipeline waits for
//! it to be remembered, so two repeats of one message never race each other.
//!
//! One thread owns the file and works the lookups and ids that wait for it as one transaction
//! (group commit): a commit is one `fsync`, a few hundred µs on a disk, and with many orders in
//! flight one commit per message would bound the worker at a few thousand messages per second
//! on a fast disk and a few hundred on a slow one. An id is reported remembered only once its
//! commit is on disk.

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Ids past the window are deleted at most this often (milliseconds), not on every publish.
const SWEEP_EVERY_MS: i64 = 60_000;

/// At most this many lookups and ids in one transaction.
const MAX_BATCH: usize = 512;

/// Ids published, by Tradecloud message id.
#[derive(Clone)]
pub(crate) struct Dedupe {
    ops: mpsc::Sender<Op>,
    window: Duration,
    path: Arc<str>,
    /// When ids past the window were last deleted (ms since the epoch; 0: not yet).
    last_sweep: Arc<AtomicI64>,
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").field("path", &self.path).finish()
    }
}

/// A request to the thread that owns the file.
enum Op {
    /// Whether the id was published at or after `since` (ms).
    Seen {
        id: String,
        since: i64,
        answer: oneshot::Sender<Result<bool, String>>,
    },
    /// The id published at `now` (ms); with `sweep`: ids before it deleted too.
    Remember {
        id: String,
        now: i64,
        sweep: Option<i64>,
        answer: oneshot::Sender<Result<(), String>>,
    },
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Dedupe {
    /// Opens (creating) the file, and starts the thread that owns it (it stops when the last
    /// clone of this is dropped).
    pub(crate) fn open(path: &Path, window: Duration) -> Result<Self, String> {
        let shown: Arc<str> = path.display().to_string().into();
        let err = |e: &dyn std::fmt::Display| format!("the duplicates file {shown}: {e}");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| err(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| err(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(&e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS published (
                 message_id TEXT PRIMARY KEY,
                 at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS published_at ON published (at);",
        )
        .map_err(|e| err(&e))?;
        let (ops, queue) = mpsc::channel(4 * MAX_BATCH);
        let thread_path = shown.clone();
        std::thread::Builder::new()
            .name("tcb-dedupe".to_owned())
            .spawn(move || serve(conn, queue, &thread_path))
            .map_err(|e| err(&e))?;
        Ok(Self {
            ops,
            window,
            path: shown,
            last_sweep: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Whether `message_id` was published within the window.
    pub(crate) async fn seen(&self, message_id: &str) -> Result<bool, String> {
        let (answer, answered) = oneshot::channel();
        self.ask(
            Op::Seen {
                id: message_id.to_owned(),
                since: now_ms() - self.window.as_millis() as i64,
                answer,
            },
            answered,
        )
        .await
    }

    /// Remembers that `message_id` was published now, and (at most once a minute, in the same
    /// commit) forgets ids past the window; `seen` ignores those meanwhile. Returns once the
    /// commit holding it is on disk.
    pub(crate) async fn remember(&self, message_id: &str) -> Result<(), String> {
        let now = now_ms();
        let last = self.last_sweep.load(Ordering::Relaxed);
        let sweep = now - last >= SWEEP_EVERY_MS
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let (answer, answered) = oneshot::channel();
        self.ask(
            Op::Remember {
                id: message_id.to_owned(),
                now,
                sweep: sweep.then(|| now - self.window.as_millis() as i64),
                answer,
            },
            answered,
        )
        .await
    }

    async fn ask<T>(
        &self,
        op: Op,
        answered: oneshot::Receiver<Result<T, String>>,
    ) -> Result<T, String> {
        let stopped = || format!("the duplicates file {}: its thread stopped", self.path);
        self.ops.send(op).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The thread that owns the file: takes what waits (up to [`MAX_BATCH`]), works it in one
/// transaction, answers each once it is committed.
fn serve(mut conn: Connection, mut queue: mpsc::Receiver<Op>, path: &str) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = queue.blocking_recv() {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match work(&mut conn, &batch) {
            Ok(seen) => {
                for (op, seen) in batch.drain(..).zip(seen) {
                    op.answer(Ok(seen));
                }
            }
            Err(e) => {
                let e = format!("the duplicates file {path}: {e}");
                for op in batch.drain(..) {
                    op.answer(Err(e.clone()));
                }
            }
        }
    }
}

impl Op {
    /// Answers the caller: for a lookup whether the id was seen, for an id that it is
    /// committed (or the batch's error, for either).
    fn answer(self, outcome: Result<bool, String>) {
        match self {
            Op::Seen { answer, .. } => {
                let _ = answer.send(outcome);
            }
            Op::Remember { answer, .. } => {
                let _ = answer.send(outcome.map(|_| ()));
            }
        }
    }
}

/// One transaction for `batch`, in order (a lookup after an id in the same batch sees it): for
/// each op, whether the id was seen (lookups; `false` for the rest).
fn work(conn: &mut Connection, batch: &[Op]) -> Result<Vec<bool>, rusqlite::Error> {
    // A batch that writes takes the write lock up front (waiting up to the busy timeout for
    // another worker sharing the file): a read transaction upgraded to a write later would fail
    // at once with SQLITE_BUSY instead of waiting.
    let writes = batch.iter().any(|op| matches!(op, Op::Remember { .. }));
    let tx = conn.transaction_with_behavior(if writes {
        TransactionBehavior::Immediate
    } else {
        TransactionBehavior::Deferred
    })?;
    let mut seen = Vec::with_capacity(batch.len());
    {
        let mut lookup =
            tx.prepare_cached("SELECT count(*) FROM published WHERE message_id = ?1 AND at >= ?2")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO published (message_id, at) VALUES (?1, ?2)
             ON CONFLICT (message_id) DO UPDATE SET at = excluded.at",
        )?;
        for op in batch {
            match op {
                Op::Seen { id, since, .. } => {
                    seen.push(lookup.query_row(params![id, since], |r| r.get::<_, i64>(0))? > 0);
                }
                Op::Remember { id, now, sweep, .. } => {
                    insert.execute(params![id, now])?;
                    if let Some(since) = sweep {
                        tx.execute("DELETE FROM published WHERE at < ?1", params![since])?;
                    }
                    seen.push(false);
                }
            }
        }
    }
    tx.commit()?;
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_remembered_across_opens_and_forgotten_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/dedupe.db");
        let hour = Duration::from_secs(3600);
        let d = Dedupe::open(&path, hour).unwrap();
        assert!(!d.seen("m-1").await.unwrap());
        d.remember("m-1").await.unwrap();
        assert!(d.seen("m-1").await.unwrap());
        drop(d);
        // A restart: the file still knows it.
        let d = Dedupe::open(&path, hour).unwrap();
        assert!(d.seen("m-1").await.unwrap());
        // Published two hours ago (written by another connection to the file): outside the
        // window, and deleted by the next remember.
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO published (message_id, at) VALUES ('m-old', ?1)",
                params![now_ms() - 2 * 3600 * 1000],
            )
            .unwrap();
        assert!(!d.seen("m-old").await.unwrap());
        d.remember("m-2").await.unwrap();
        let left: i64 = other
            .query_row("SELECT count(*) FROM published", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 2, "m-1 and m-2 stay, m-old went");
    }

    /// Lookups and ids from many tasks at once (worked in shared transactions) each get their
    /// own answer; a lookup after an id in the same transaction sees it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_at_once_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dedupe::open(&dir.path().join("dedupe.db"), Duration::from_secs(3600)).unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let d = d.clone();
                tokio::spawn(async move {
                    let id = format!("m-{i}");
                    assert!(!d.seen(&id).await.unwrap());
                    d.remember(&id).await.unwrap();
                    assert!(d.seen(&id).await.unwrap());
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(!d.seen("m-300").await.unwrap());

        let mut conn = Connection::open(dir.path().join("other.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE published (message_id TEXT PRIMARY KEY, at INTEGER NOT NULL);",
        )
        .unwrap();
        let (answer, _) = oneshot::channel();
        let remember = Op::Remember {
            id: "a".to_owned(),
            now: 10,
            sweep: None,
            answer,
        };
        let seen = |id: &str, since| Op::Seen {
            id: id.to_owned(),
            since,
            answer: oneshot::channel().0,
        };
        let batch = [
            seen("a", 0),
            remember,
            seen("a", 0),
            seen("a", 11),
            seen("b", 0),
        ];
        assert_eq!(
            work(&mut conn, &batch).unwrap(),
            [false, false, true, false, false]
        );
    }

    /// Two workers sharing one file (compose's scaled replicas on one volume): a batch that
    /// looks up and then writes while the other holds the write lock waits for it (the busy
    /// timeout) instead of failing with SQLITE_BUSY, and sees what the other committed.
    #[test]
    fn a_batch_waits_for_another_worker_holding_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedupe.db");
        drop(Dedupe::open(&path, Duration::from_secs(3600)).unwrap());
        let open = || {
            let c = Connection::open(&path).unwrap();
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c
        };
        let other = open();
        other
            .execute_batch(
                "BEGIN IMMEDIATE; INSERT INTO published (message_id, at) VALUES ('theirs', 1);",
            )
            .unwrap();
        let mut mine = open();
        let worked = std::thread::spawn(move || {
            let batch = [
                Op::Seen {
                    id: "theirs".to_owned(),
                    since: 0,
                    answer: oneshot::channel().0,
                },
                Op::Remember {
                    id: "mine".to_owned(),
                    now: 2,
                    sweep: None,
                    answer: oneshot::channel().0,
                },
            ];
            work(&mut mine, &batch)
        });
        // Time for the batch to meet the held lock (were it slower, the test would show less,
        // not fail wrongly).
        std::thread::sleep(Duration::from_millis(200));
        other.execute_batch("COMMIT;").unwrap();
        assert_eq!(worked.join().unwrap().unwrap(), [true, false]);
    }

    #[test]
    fn an_unusable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let e = Dedupe::open(&file.join("dedupe.db"), Duration::from_secs(3600)).unwrap_err();
        assert!(e.starts_with("the duplicates file "), "{e}");
    }
}

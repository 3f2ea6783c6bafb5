//! Repeats of one Tradecloud message (`meta.messageId`) are published once.
//!
//! Tradecloud redelivers a message it thinks failed (a timeout on its side after the bridge
//! stored it), so the same `meta.messageId` can come several times. The worker remembers, in a
//! SQLite file beside it (`[worker] dedupe_path`), which ids it has published and when; a repeat
//! within `dedupe_window_hours` is acknowledged without publishing and counted
//! (`tcb_worker_duplicates_total`). The file survives restarts; ids older than the window are
//! deleted (at most once a minute, in the same commit as a new id: one write per message). One order's triggers are worked one at a time, so two repeats of one message never
//! race each other.

use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ids past the window are deleted at most this often (milliseconds), not on every publish.
const SWEEP_EVERY_MS: i64 = 60_000;

/// Ids published, by Tradecloud message id.
#[derive(Clone)]
pub(crate) struct Dedupe {
    conn: Arc<Mutex<Connection>>,
    window: Duration,
    path: PathBuf,
    /// When ids past the window were last deleted (ms since the epoch; 0: not yet).
    last_sweep: Arc<AtomicI64>,
}

impl std::fmt::Debug for Dedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedupe").field("path", &self.path).finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Dedupe {
    /// Opens (creating) the file.
    pub(crate) fn open(path: &Path, window: Duration) -> Result<Self, String> {
        let shown = path.display().to_string();
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            window,
            path: path.to_owned(),
            last_sweep: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Whether `message_id` was published within the window.
    pub(crate) async fn seen(&self, message_id: &str) -> Result<bool, String> {
        let since = now_ms() - self.window.as_millis() as i64;
        let id = message_id.to_owned();
        self.blocking(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM published WHERE message_id = ?1 AND at >= ?2",
                params![id, since],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
        .await
    }

    /// Remembers that `message_id` was published now, and (at most once a minute, in the same
    /// commit) forgets ids past the window; `seen` ignores those meanwhile.
    pub(crate) async fn remember(&self, message_id: &str) -> Result<(), String> {
        let now = now_ms();
        let since = now - self.window.as_millis() as i64;
        let last = self.last_sweep.load(Ordering::Relaxed);
        let sweep = now - last >= SWEEP_EVERY_MS
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let id = message_id.to_owned();
        self.blocking(move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO published (message_id, at) VALUES (?1, ?2)
                 ON CONFLICT (message_id) DO UPDATE SET at = excluded.at",
                params![id, now],
            )?;
            if sweep {
                tx.execute("DELETE FROM published WHERE at < ?1", params![since])?;
            }
            tx.commit()
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| "the duplicates file's lock is poisoned".to_owned())?;
            f(&conn).map_err(|e| format!("the duplicates file {path}: {e}"))
        })
        .await
        .map_err(|e| format!("the duplicates task failed: {e}"))?
    }
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
        // Published two hours ago: outside the window, and deleted by the next remember.
        d.blocking(|c| {
            c.execute(
                "INSERT INTO published (message_id, at) VALUES ('m-old', ?1)",
                params![now_ms() - 2 * 3600 * 1000],
            )
        })
        .await
        .unwrap();
        assert!(!d.seen("m-old").await.unwrap());
        d.remember("m-2").await.unwrap();
        let left: i64 = d
            .blocking(|c| c.query_row("SELECT count(*) FROM published", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(left, 2, "m-1 and m-2 stay, m-old went");
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

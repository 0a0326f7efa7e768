//! SQLite's WAL checkpoints, taken off the commit path.
//!
//! In WAL mode SQLite appends each commit to the write-ahead log and copies the log back
//! into the database file in a checkpoint, which syncs the file to disk. By default the
//! connection that commits past 1,000 pages of log runs the checkpoint before its commit
//! returns; with the store's writes taking turns, every write queued behind it waits too, and
//! those waits were most of the engine's slowest trips. So the store's connections run no
//! checkpoints of their own accord (`wal_autocheckpoint = 0`), and a connection of its own
//! takes one every second (`PASSIVE`), which copies what it can without blocking anyone and
//! writes nothing to the log, so the writer never finds its view of the log out of date.
//!
//! Once every page of the log is copied back, the next commit starts the log again from its
//! beginning. A writer that never pauses long enough for that lets the log grow; past
//! [`MOST_PAGES`] the store's writing connection, in a turn between two transactions, copies it
//! all back and empties it (`TRUNCATE`), as the commit that crossed the old threshold did.

use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;
use tracing::{debug, warn};

use crate::direct::Direct;

/// How often the log is copied back into the database file.
const EVERY: Duration = Duration::from_secs(1);

/// The log's length, in pages, past which the store's connection empties it: about 16 MB
/// at SQLite's default page size.
const MOST_PAGES: i64 = 4_000;

/// The task taking the checkpoints; it ends when the store is closed or dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Opens a connection to the database `options` name and checkpoints on it from now on;
    /// `writer` is the store's writing connection, which empties a log that grew too long.
    pub(crate) async fn start(
        options: &SqliteConnectOptions,
        writer: Arc<Direct>,
    ) -> Result<Self, sqlx::Error> {
        let mut connection = options.connect().await?;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // (blocked by another checkpoint, pages in the log, pages copied back)
                let passive: Result<(i64, i64, i64), _> =
                    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&mut connection)
                        .await;
                match passive {
                    Ok((_, log, copied)) if log > MOST_PAGES && copied < log => {
                        debug!(
                            pages = log,
                            "the log outgrew its passive checkpoints; emptying it"
                        );
                        if let Err(e) = writer.truncate_log().await {
                            warn!(error = %e, "SQLite checkpoint failed; the next one tries again");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "SQLite checkpoint failed; the next one tries again")
                    }
                }
            }
        });
        Ok(Self { task })
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use sluice_core::ActionRef;
    use sqlx::ConnectOptions as _;
    use sqlx::sqlite::SqliteConnectOptions;

    use crate::Store;

    /// The store's own connection takes no checkpoints, so what reaches the database file
    /// itself (read while ignoring the log: `immutable`) got there by the checkpointer.
    #[tokio::test]
    async fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.db");
        let store = Store::connect(path.to_str().unwrap()).await.unwrap();
        let action: ActionRef = "core.noop".parse().unwrap();
        for _ in 0..20 {
            store
                .create_execution(&action, &Default::default(), None, None)
                .await
                .unwrap();
        }
        let in_file = || async {
            let url = format!("sqlite://{}?immutable=1", path.display());
            let mut file = SqliteConnectOptions::from_str(&url)
                .unwrap()
                .read_only(true)
                .connect()
                .await
                .unwrap();
            // Read without locks, the file can be caught halfway through a checkpoint's
            // copy ("malformed"): not there yet, read again.
            sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM executions")
                .fetch_one(&mut file)
                .await
                .map_or(0, |(n,)| n)
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while in_file().await < 20 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the executions never left the write-ahead log"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        store.close().await;
    }
}

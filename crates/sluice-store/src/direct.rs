//! SQLite's writes on the execution path, each run in one turn on a connection of their own.
//!
//! sqlx drives a SQLite connection from a thread of its own: every statement, `BEGIN` and
//! `COMMIT` included, goes to that thread over a channel and its answer comes back over
//! another, two thread wake-ups each. An event and its execution took five of them (`BEGIN`,
//! the fence, two inserts, `COMMIT`), about 310 µs at p50 on an idle two-core machine,
//! where the same statements run straight on a connection took about 70 µs.
//!
//! So these writes run on a connection the store opens for them through rusqlite, with their
//! statements prepared once and kept, on the calling task's thread: no other thread is woken
//! for them. SQLite has one write lock, and two connections that both write collide on it
//! and back off in sleeps; so the store's other statements, on sqlx's connection, take the
//! same turn ([`Direct::turn`]) as these writes, and writers still queue in order, one at a
//! time, as they did for the store's one connection. The transaction is SQLite's as before:
//! the same statements, the same fence check, the same busy timeout and settings.

use rusqlite::{Connection, OpenFlags};
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{Mutex, MutexGuard};

use crate::error::StoreError;
use crate::model::Fence;

/// How many prepared statements are kept, the least recently used let go first.
const KEPT_STATEMENTS: usize = 64;

/// The settings of every connection to a SQLite store, sqlx's and this one, as `PRAGMA`
/// names and values.
pub(crate) const SETTINGS: [(&str, &str); 3] = [
    ("synchronous", "NORMAL"),
    ("foreign_keys", "ON"),
    // A statement's undo within its transaction (the statement journal) stays in memory:
    // past 64 KiB SQLite moved it to a temporary file for the rest of the transaction and
    // wrote it there page by page, which under load was a tenth of the engine's CPU. It is
    // never needed after the transaction.
    ("temp_store", "MEMORY"),
];

/// Sets what SQLite keeps for the whole process, once, before its first connection opens.
///
/// SQLite counts the memory it holds, for `sqlite3_memory_used` and its soft heap limit, by
/// taking a process-wide mutex around every allocation and free it makes. Sluice reads
/// neither, and under load those lock and unlock pairs were a sixth of SQLite's time on the
/// execution path; so the count is off. Once SQLite has started in the process (another
/// library opened a database first), the setting is refused and SQLite keeps counting, which
/// changes nothing else.
pub(crate) fn configure_process() {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| {
        // SAFETY: `sqlite3_config` takes the one `int` argument `SQLITE_CONFIG_MEMSTATUS`
        // takes, and must not run while another thread calls into SQLite. Every SQLite
        // connection of a Sluice process is opened by `Store::connect`, which runs this
        // first; a second caller waits here until it is done. If SQLite has already started
        // (a test that opened a database by other means), it returns `SQLITE_MISUSE` and
        // changes nothing.
        #[allow(unsafe_code)]
        let code = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                std::ffi::c_int::from(0u8),
            )
        };
        if code != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                code,
                "SQLite had started already; its memory count stays on"
            );
        }
    });
}

/// What the connections that write set besides: they take no checkpoints of their own
/// accord (see `checkpoint`).
pub(crate) const WRITER_SETTING: (&str, &str) = ("wal_autocheckpoint", "0");

/// The connection the writes on the execution path run on, and the turn every statement
/// of the store takes; shared by the store's clones. `None` once the store is closed.
pub(crate) struct Direct {
    connection: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

/// A turn on the database: while it is held, no other statement of the store runs.
pub(crate) type Turn<'a> = MutexGuard<'a, Option<Connection>>;

impl Direct {
    /// Opens the connection to the database `options` names, which exists, is migrated and
    /// is in WAL mode, with the settings of the store's sqlx connection: [`SETTINGS`],
    /// [`WRITER_SETTING`] and `busy_timeout`.
    pub(crate) fn open(
        options: &SqliteConnectOptions,
        busy_timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let connection = Connection::open_with_flags(
            options.get_filename(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(busy_timeout)?;
        for (name, value) in SETTINGS.into_iter().chain([WRITER_SETTING]) {
            connection.execute_batch(&format!("PRAGMA {name} = {value};"))?;
        }
        // Status updates differ by their sources and attempt, admissions by their round's
        // size: room for those in use, beside the few fixed statements.
        connection.set_prepared_statement_cache_capacity(KEPT_STATEMENTS);
        Ok(Self {
            connection: Mutex::new(Some(connection)),
        })
    }

    /// Waits for a turn on the database: sqlx's statements take one, as these writes do.
    pub(crate) async fn turn(&self) -> Turn<'_> {
        self.connection.lock().await
    }

    /// Runs `work` in one transaction in a turn of its own, after checking `fences`, and
    /// commits it; an error rolls it all back.
    pub(crate) async fn transaction<T>(
        &self,
        fences: &[Fence],
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let turn = self.turn().await;
        let connection = turn
            .as_ref()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))?;
        let tx = connection.unchecked_transaction()?;
        check_fences(&tx, fences)?;
        let done = work(&tx)?;
        tx.commit()?;
        Ok(done)
    }

    /// Copies the whole write-ahead log back into the database file and empties it, in a turn
    /// of its own, on a thread that may block.
    pub(crate) async fn truncate_log(self: &std::sync::Arc<Self>) -> Result<(), StoreError> {
        let direct = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let turn = handle.block_on(direct.turn());
            let connection = turn
                .as_ref()
                .ok_or(StoreError::Database(sqlx::Error::PoolClosed))?;
            connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?
    }

    /// Closes the connection once no turn holds it; no write runs here after this.
    pub(crate) async fn close(&self) {
        self.turn().await.take();
    }
}

/// The statement that reads a fence's token on SQLite.
pub(crate) const FENCE_CHECK: &str = "SELECT token FROM fences WHERE name = $1";

/// The store's fence check (`check_fence!`) on a rusqlite transaction.
fn check_fences(tx: &rusqlite::Transaction<'_>, fences: &[Fence]) -> Result<(), StoreError> {
    for fence in fences {
        let current: Option<i64> = rows(
            &mut tx.prepare_cached(FENCE_CHECK)?,
            &[&fence.name],
            |row| row.get(0),
        )?
        .pop();
        fence.check(current)?;
    }
    Ok(())
}

/// The names of the first parameters [`rows`] binds, in order, so that a status update's
/// are not written out again for every row.
const PARAMETERS: [&str; 16] = [
    "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12", "$13", "$14", "$15",
    "$16",
];

/// The rows `statement` returns for `values`. The statements are written with `$1`, `$2`,
/// … as for PostgreSQL; SQLite numbers such names in the order they first appear, so each
/// value is bound by its name.
pub(crate) fn rows<T>(
    statement: &mut rusqlite::CachedStatement<'_>,
    values: &[&dyn rusqlite::ToSql],
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    for (n, value) in values.iter().enumerate() {
        let index = match PARAMETERS.get(n) {
            Some(name) => statement.parameter_index(name)?,
            None => statement.parameter_index(&format!("${}", n + 1))?,
        };
        if let Some(index) = index {
            statement.raw_bind_parameter(index, value)?;
        }
    }
    let mut rows = statement.raw_query();
    let mut found = Vec::new();
    while let Some(next) = rows.next()? {
        found.push(row(next)?);
    }
    Ok(found)
}

/// A time as sqlx writes it to SQLite, so both read back the same.
pub(crate) fn time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A JSON value for a column of `table`, as sqlx writes it to SQLite (`Json`): its text.
pub(crate) fn json(
    table: &'static str,
    value: &impl serde::Serialize,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        table,
        message: format!("a value that cannot be written as JSON: {e}"),
    })
}

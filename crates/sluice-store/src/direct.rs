//! SQLite's writes on the execution path, each run as one turn on the store's connection.
//!
//! sqlx drives a SQLite connection from a thread of its own: every statement, `BEGIN` and
//! `COMMIT` included, goes to that thread over a channel and its answer comes back over
//! another, two thread wake-ups each. An event and its execution took five of them (`BEGIN`,
//! the fence, two inserts, `COMMIT`), about 310 µs at p50 on an idle two-core machine,
//! where the same statements run straight on the connection took about 70 µs.
//!
//! So these writes take the connection's handle from sqlx for the length of one
//! transaction (`lock_handle`: a single round trip, after which sqlx's thread waits for the
//! handle back) and run the whole transaction on it through rusqlite, with their statements
//! prepared once and kept. The connection is still the store's one connection from its
//! pool, so writers queue for it in order as before, and the transaction is SQLite's as
//! before: the same statements, the same fence check, the same busy timeout. It runs on the
//! calling task's thread; with one connection, one such transaction runs at a time, for as
//! long as sqlx's thread took for it before.
//!
//! The kept statements belong to sqlx's connection, which refuses to close while any is
//! left. They are let go before the pool can close it: in [`Store::close`], or when the last
//! clone of the store is dropped (the connection is opened serialized, so letting them go
//! is safe whatever sqlx's thread is doing then), and the pool never closes the connection
//! on its own (no idle timeout, no lifetime, no test before use).
//!
//! [`Store::close`]: crate::Store::close

use std::sync::Mutex;

use sqlx::SqlitePool;

use crate::error::StoreError;
use crate::model::Fence;

/// How many prepared statements are kept, the least recently used let go first.
const KEPT_STATEMENTS: usize = 64;

/// The kept statements of the store's SQLite connection; shared by the store's clones.
#[derive(Default)]
pub(crate) struct Direct {
    kept: Mutex<Kept>,
}

#[derive(Default)]
enum Kept {
    #[default]
    None,
    /// rusqlite's view of the connection whose handle is `handle`: a new connection needs a
    /// new view.
    On {
        handle: usize,
        connection: rusqlite::Connection,
    },
    /// The store is closed: nothing more may be kept.
    Closed,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl Direct {
    /// Runs `work` in one transaction on the pool's connection, after checking `fences`,
    /// and commits it; an error rolls it all back.
    pub(crate) async fn transaction<T>(
        &self,
        pool: &SqlitePool,
        fences: &[Fence],
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = pool.acquire().await?;
        let mut locked = connection.lock_handle().await?;
        let handle = locked.as_raw_handle();
        let handle_id = handle.as_ptr() as usize;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match &*kept {
            Kept::Closed => return Err(StoreError::Database(sqlx::Error::PoolClosed)),
            Kept::On { handle, .. } if *handle == handle_id => {}
            _ => {
                // SAFETY: the handle is sqlx's open connection, which stays open while the pool
                // holds it: the pool closes it only when closed or dropped, and the statements
                // this view keeps are let go before either (see the module's comment). rusqlite
                // does not close a connection it did not open. It runs statements only while
                // `locked` holds the handle, so nothing else runs on it meanwhile; dropped with
                // the last clone of the store, it lets its statements go on a connection
                // opened serialized, which SQLite makes safe from any thread.
                #[allow(unsafe_code)]
                let connection =
                    unsafe { rusqlite::Connection::from_handle(handle.as_ptr().cast()) }?;
                // Status updates differ by their sources and attempt, admissions by their
                // round's size: room for those in use, beside the few fixed statements.
                connection.set_prepared_statement_cache_capacity(KEPT_STATEMENTS);
                *kept = Kept::On {
                    handle: handle_id,
                    connection,
                };
            }
        }
        let Kept::On { connection, .. } = &*kept else {
            unreachable!("set above");
        };
        let tx = connection.unchecked_transaction()?;
        check_fences(&tx, fences)?;
        let done = work(&tx)?;
        tx.commit()?;
        Ok(done)
    }

    /// Lets the kept statements go, while the pool's connection is held, before the pool
    /// closes it; no transaction runs here after this.
    pub(crate) async fn close(&self, pool: &SqlitePool) {
        let mut connection = pool.acquire().await.ok();
        let _locked = match connection.as_mut() {
            Some(connection) => connection.lock_handle().await.ok(),
            None => None,
        };
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Kept::Closed;
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

/// The rows `statement` returns for `values`. The statements are written with `$1`, `$2`,
/// … as for PostgreSQL; SQLite numbers such names in the order they first appear, so each
/// value is bound by its name.
pub(crate) fn rows<T>(
    statement: &mut rusqlite::CachedStatement<'_>,
    values: &[&dyn rusqlite::ToSql],
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    for (n, value) in values.iter().enumerate() {
        if let Some(index) = statement.parameter_index(&format!("${}", n + 1))? {
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

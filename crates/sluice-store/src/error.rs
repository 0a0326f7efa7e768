//! What a store operation can fail with, and whether trying again later may help.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite's own error, from a write run on its connection directly.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("failed to apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    /// Another engine took the lease this store's writes were made under.
    #[error(
        "the {name} lease this engine wrote under (token {token}) was taken by another engine (token {current:?}); nothing was written"
    )]
    Fenced {
        name: String,
        token: i64,
        current: Option<i64>,
    },
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Busy, locked or unreachable: worth trying again later.
    Unavailable,
    /// The database refused the statement (a constraint, a type, a bug): trying again
    /// gives the same answer.
    Refused,
    /// A row or the schema is not what this version expects.
    Corrupt,
}

impl StoreError {
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => StoreErrorKind::Unavailable,
            Self::Database(sqlx::Error::Database(e)) if transient_code(e.as_ref()) => {
                StoreErrorKind::Unavailable
            }
            Self::Database(_) => StoreErrorKind::Refused,
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreErrorKind::Unavailable
            }
            Self::Sqlite(_) => StoreErrorKind::Refused,
            Self::Migrate(_) | Self::Corrupt { .. } => StoreErrorKind::Corrupt,
            // The message goes back for the engine that owns the lease now.
            Self::Fenced { .. } => StoreErrorKind::Unavailable,
        }
    }

    /// Worth retrying later: the database is busy or unreachable, not wrong.
    pub fn is_transient(&self) -> bool {
        self.kind() == StoreErrorKind::Unavailable
    }
}

/// Whether a database's own error code says "busy, try again": SQLite's `SQLITE_BUSY` and
/// `SQLITE_LOCKED` (extended codes keep the primary code in their low byte); PostgreSQL's
/// connection exceptions (class 08), an administrator or crash shutdown, "cannot connect
/// now", a session the server ended for idling (in a transaction, as it ends a paused
/// engine's, or outside one), too many connections, and a serialization failure or
/// deadlock.
fn transient_code(error: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        const SQLITE_BUSY: i64 = 5;
        const SQLITE_LOCKED: i64 = 6;
        return code
            .parse::<i64>()
            .is_ok_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
    }
    code.starts_with("08")
        || matches!(
            code.as_ref(),
            "57P01" | "57P02" | "57P03" | "25P03" | "57P05" | "53300" | "40001" | "40P01"
        )
}

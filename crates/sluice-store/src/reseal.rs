//! Key rotation's pass over the store: every stored value that holds sealed secrets is
//! written again with what the caller makes of it (sealed with the newest key).
//!
//! Execution parameters never change after insert, and a result only while the execution
//! runs, so those are rewritten unconditionally (results of ended executions only); a
//! workflow's state is rewritten only if no step saved it meanwhile.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sluice_core::ExecutionStatus;
use sqlx::types::Json;

use crate::error::StoreError;
use crate::store::{Store, on_pool};

/// How many stored values a rotation sealed again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resealed {
    pub execution_parameters: u64,
    pub execution_results: u64,
    pub workflow_states: u64,
    /// Secret datastore entries (filled in by the engine, which owns the datastore).
    pub datastore: u64,
}

const PAGE: i64 = 1000;
const MARK: &str = "%sluice-sealed:%";

type ExecutionRow = (i64, Json<Value>, Option<Json<Value>>, String);

impl Store {
    /// Applies `reseal` to every stored value holding a sealed secret; `reseal` changes the
    /// value in place and says whether it did.
    pub async fn reseal(
        &self,
        reseal: &(dyn Fn(&mut Value) -> Result<bool, String> + Sync),
    ) -> Result<Resealed, StoreError> {
        let mut counts = Resealed::default();
        let failed = |e: String| StoreError::Corrupt {
            table: "executions",
            message: format!("a sealed value cannot be sealed again: {e}"),
        };
        let mut after = 0i64;
        loop {
            let rows: Vec<ExecutionRow> = on_pool!(self, pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id, parameters, result, status FROM executions \
                     WHERE id > $1 AND (CAST(parameters AS TEXT) LIKE '{MARK}' OR CAST(result AS TEXT) LIKE '{MARK}') \
                     ORDER BY id LIMIT {PAGE}"
                )))
                .bind(after)
                .fetch_all(pool)
                .await?
            });
            let Some(last) = rows.last() else { break };
            after = last.0;
            for (id, Json(mut parameters), result, status) in rows {
                if reseal(&mut parameters).map_err(failed)? {
                    on_pool!(self, pool => {
                        sqlx::query("UPDATE executions SET parameters = $1 WHERE id = $2")
                            .bind(Json(&parameters))
                            .bind(id)
                            .execute(pool)
                            .await?
                            .rows_affected()
                    });
                    counts.execution_parameters += 1;
                }
                let ended = status
                    .parse::<ExecutionStatus>()
                    .is_ok_and(|s| s.is_terminal());
                if let (Some(Json(mut result)), true) = (result, ended)
                    && reseal(&mut result).map_err(failed)?
                {
                    on_pool!(self, pool => {
                        sqlx::query("UPDATE executions SET result = $1 WHERE id = $2")
                            .bind(Json(&result))
                            .bind(id)
                            .execute(pool)
                            .await?
                            .rows_affected()
                    });
                    counts.execution_results += 1;
                }
            }
        }
        let rows: Vec<(i64, Json<Value>, DateTime<Utc>)> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT execution_id, state, updated_at FROM workflows WHERE CAST(state AS TEXT) LIKE '{MARK}'"
            )))
            .fetch_all(pool)
            .await?
        });
        for (id, Json(mut state), updated_at) in rows {
            if reseal(&mut state).map_err(failed)? {
                let done = on_pool!(self, pool => {
                    sqlx::query("UPDATE workflows SET state = $1 WHERE execution_id = $2 AND updated_at = $3")
                        .bind(Json(&state))
                        .bind(id)
                        .bind(updated_at)
                        .execute(pool)
                        .await?
                        .rows_affected()
                });
                // A step saved it meanwhile, sealing with the newest key itself.
                counts.workflow_states += done;
            }
        }
        Ok(counts)
    }
}

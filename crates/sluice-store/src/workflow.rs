//! Workflow state: the workflow actor's saved state, and the child executions it started.
//!
//! A workflow moves in steps. Each step — the workflow starting, or acting on one child's
//! end — is one transaction: the child is marked handled (only if it was not, so a step is
//! never taken twice), the new state is saved with the parts of it the step changed, and the
//! children the step starts are created, each under the unique key (workflow, task, round,
//! item, attempt).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sqlx::types::Json;

use crate::error::StoreError;
use crate::store::{Store, check_fence, on_pool, timed, wrote};

/// A child execution a workflow step starts.
#[derive(Debug, Clone)]
pub struct NewChild {
    pub task: String,
    /// How many times the task had run before in this workflow (tasks in a loop run again).
    pub round: u32,
    /// The item index of a `with: items` task; -1 without items.
    pub item: i64,
    pub attempt: u32,
    pub action: ActionRef,
    /// Secret values already sealed.
    pub parameters: serde_json::Map<String, Value>,
    pub traceparent: Option<String>,
}

/// One child a workflow started, with how it stands now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowChild {
    pub task: String,
    pub round: u32,
    pub item: i64,
    pub attempt: u32,
    pub execution_id: ExecutionId,
    pub handled: bool,
    pub status: ExecutionStatus,
    pub result: Option<Value>,
}

/// A workflow's saved state and its children.
#[derive(Debug, Clone)]
pub struct WorkflowRecord {
    pub state: Value,
    /// The parts saved beside the state, by key, each as it was last written.
    pub parts: Vec<(String, Value)>,
    pub updated_at: DateTime<Utc>,
    pub children: Vec<WorkflowChild>,
}

/// What one step saves: the workflow's state, and the parts of it that changed (each
/// replaces the part of that key).
#[derive(Debug, Clone, Copy)]
pub struct WorkflowSave<'a> {
    pub state: &'a Value,
    pub parts: &'a [(String, Value)],
}

type SavedRow = (Json<Value>, DateTime<Utc>);
type PartRow = (String, Json<Value>);
type ChildRow = (
    String,
    i64,
    i64,
    i64,
    i64,
    bool,
    String,
    Option<Json<Value>>,
);

impl Store {
    /// Takes one step of workflow `workflow`: marks the `handled` children handled (if any
    /// already was, nothing is written and `None` comes back), saves `save`, and creates
    /// `children` as `requested` executions. Returns the new children's ids, in order;
    /// `None` for one whose key already existed.
    pub async fn workflow_step(
        &self,
        workflow: ExecutionId,
        handled: &[ExecutionId],
        save: WorkflowSave<'_>,
        children: &[NewChild],
    ) -> Result<Option<Vec<Option<ExecutionId>>>, StoreError> {
        let now = Utc::now();
        let started = std::time::Instant::now();
        let created = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            check_fence!(self, tx);
            for child in handled {
                let marked = sqlx::query(
                    "UPDATE workflow_tasks SET handled = TRUE \
                     WHERE workflow_id = $1 AND execution_id = $2 AND handled = FALSE",
                )
                .bind(workflow.0)
                .bind(child.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if marked == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            sqlx::query(
                "INSERT INTO workflows (execution_id, state, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (execution_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            )
            .bind(workflow.0)
            .bind(Json(save.state))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for (key, value) in save.parts {
                sqlx::query(
                    "INSERT INTO workflow_parts (workflow_id, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value",
                )
                .bind(workflow.0)
                .bind(key)
                .bind(Json(value))
                .execute(&mut *tx)
                .await?;
            }
            let mut created = Vec::with_capacity(children.len());
            for child in children {
                let taken: Option<(i64,)> = sqlx::query_as(
                    "SELECT id FROM workflow_tasks WHERE workflow_id = $1 AND task = $2 \
                     AND round = $3 AND item = $4 AND attempt = $5",
                )
                .bind(workflow.0)
                .bind(&child.task)
                .bind(i64::from(child.round))
                .bind(child.item)
                .bind(i64::from(child.attempt))
                .fetch_optional(&mut *tx)
                .await?;
                if taken.is_some() {
                    created.push(None);
                    continue;
                }
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO executions (action, status, parameters, parent_id, attempt, created_at, updated_at, traceparent) \
                     VALUES ($1, 'requested', $2, $3, 1, $4, $4, $5) RETURNING id",
                )
                .bind(child.action.as_str())
                .bind(Json(&child.parameters))
                .bind(workflow.0)
                .bind(now)
                .bind(child.traceparent.as_deref())
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO workflow_tasks (workflow_id, task, round, item, attempt, execution_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(workflow.0)
                .bind(&child.task)
                .bind(i64::from(child.round))
                .bind(child.item)
                .bind(i64::from(child.attempt))
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                created.push(Some(ExecutionId(id)));
            }
            tx.commit().await?;
            created
        });
        let n = created.iter().flatten().count() as u64;
        wrote("workflows", "upsert", 1);
        wrote("workflow_parts", "upsert", save.parts.len() as u64);
        let json = |value: &Value| serde_json::to_vec(value).map_or(0, |b| b.len() as u64);
        let metrics = sluice_telemetry::metrics();
        metrics
            .store_json_bytes
            .add(["workflows"], json(save.state));
        metrics.store_json_bytes.add(
            ["workflow_parts"],
            save.parts.iter().map(|(_, v)| json(v)).sum(),
        );
        wrote("executions", "insert", n);
        wrote("execution_history", "insert", n);
        wrote("workflow_tasks", "insert", n);
        timed("workflow_step", started);
        Ok(Some(created))
    }

    /// A workflow's saved state and every child it started, oldest first; `None` before its
    /// first step.
    pub async fn workflow(
        &self,
        workflow: ExecutionId,
    ) -> Result<Option<WorkflowRecord>, StoreError> {
        let (saved, parts, rows): (Option<SavedRow>, Vec<PartRow>, Vec<ChildRow>) = on_pool!(self, pool => {
            let saved = sqlx::query_as("SELECT state, updated_at FROM workflows WHERE execution_id = $1")
                .bind(workflow.0)
                .fetch_optional(pool)
                .await?;
            let parts = sqlx::query_as("SELECT key, value FROM workflow_parts WHERE workflow_id = $1")
                .bind(workflow.0)
                .fetch_all(pool)
                .await?;
            let rows = sqlx::query_as(
                "SELECT t.task, CAST(t.round AS BIGINT), t.item, CAST(t.attempt AS BIGINT), t.execution_id, t.handled, e.status, e.result \
                 FROM workflow_tasks t JOIN executions e ON e.id = t.execution_id \
                 WHERE t.workflow_id = $1 ORDER BY t.id",
            )
            .bind(workflow.0)
            .fetch_all(pool)
            .await?;
            (saved, parts, rows)
        });
        let Some((Json(state), updated_at)) = saved else {
            return Ok(None);
        };
        let children = rows
            .into_iter()
            .map(
                |(task, round, item, attempt, id, handled, status, result)| {
                    Ok(WorkflowChild {
                        task,
                        round: u32::try_from(round).unwrap_or(0),
                        item,
                        attempt: u32::try_from(attempt).unwrap_or(1),
                        execution_id: ExecutionId(id),
                        handled,
                        status: status.parse().map_err(
                            |e: sluice_core::status::UnknownStatus| {
                                crate::store::corrupt("executions", e)
                            },
                        )?,
                        result: result.map(|r| r.0),
                    })
                },
            )
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(WorkflowRecord {
            state,
            parts: parts
                .into_iter()
                .map(|(key, Json(value))| (key, value))
                .collect(),
            updated_at,
            children,
        }))
    }
}

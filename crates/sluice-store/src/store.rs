//! The store and its queries.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_core::{ActionRef, EventId, EventStatus, ExecutionId, ExecutionStatus};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, FromRow};

use sluice_core::DeadLetter;
use sluice_telemetry::metrics;

use crate::checkpoint::Checkpointer;
use crate::direct::{self, Direct};
use crate::error::StoreError;
use crate::model::{
    DeadLetterRecord, Enforcement, Event, EventFilter, EventOutcome, Execution, ExecutionFilter,
    Fence, Firing, HistoryEntry, Ledger, NewEvent, ResultJson, Transition,
};

/// An event, unless its stream sequence was recorded before.
const INSERT_EVENT: &str = "INSERT INTO events (trigger, status, reason, payload, subject, stream_seq, msg_id, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (stream_seq) DO NOTHING RETURNING id";

/// The event recorded for a stream sequence.
const EVENT_OF_SEQ: &str = "SELECT id FROM events WHERE stream_seq = $1";

/// An execution a rule requested; the database adds its history and its enforcement
/// (migrations 0011, 0012, 0014).
const INSERT_FIRED_EXECUTION: &str = "INSERT INTO executions (action, status, parameters, result, rule, event_id, attempt, created_at, updated_at, finished_at, traceparent) \
     VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7, $8, $9) RETURNING id";

fn event_status(event: &NewEvent) -> &'static str {
    if event.rejected.is_some() {
        EventStatus::Rejected
    } else {
        EventStatus::Accepted
    }
    .as_str()
}

/// The status an execution is created in for `firing`.
fn firing_status(firing: &Firing) -> ExecutionStatus {
    match (&firing.failed, firing.admitted) {
        (Some(_), _) => ExecutionStatus::Failed,
        (None, true) => ExecutionStatus::Scheduled,
        (None, false) => ExecutionStatus::Requested,
    }
}

/// [`Store::record_events`]' statements, on SQLite's connection directly.
fn record_events_on(
    tx: &rusqlite::Transaction<'_>,
    batch: &[(&NewEvent, &[Firing])],
    now: DateTime<Utc>,
) -> Result<Vec<EventOutcome>, StoreError> {
    let now_text = direct::time(now);
    let mut insert_event = tx.prepare_cached(INSERT_EVENT)?;
    let mut insert_execution = tx.prepare_cached(INSERT_FIRED_EXECUTION)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (event, firings) in batch {
        let stream_seq = event.stream_seq.map(|s| s as i64);
        let payload = event
            .payload
            .as_ref()
            .map(|payload| direct::json("events", payload))
            .transpose()?;
        let inserted: Option<i64> = direct::rows(
            &mut insert_event,
            rusqlite::params![
                event.trigger,
                event_status(event),
                event.rejected,
                payload,
                event.subject,
                stream_seq,
                event.msg_id,
                now_text,
            ],
            |row| row.get(0),
        )?
        .pop();
        let Some(event_id) = inserted else {
            let event_id: i64 = direct::rows(
                &mut tx.prepare_cached(EVENT_OF_SEQ)?,
                rusqlite::params![stream_seq],
                |row| row.get(0),
            )?
            .pop()
            .ok_or(StoreError::Corrupt {
                table: "events",
                message: format!("no event recorded for stream sequence {stream_seq:?}"),
            })?;
            outcomes.push(EventOutcome::duplicate(EventId(event_id)));
            continue;
        };
        let mut executions = Vec::new();
        for firing in firings.iter() {
            let result = firing
                .failure()
                .as_ref()
                .map(|result| direct::json("executions", result))
                .transpose()?;
            let id: i64 = direct::rows(
                &mut insert_execution,
                rusqlite::params![
                    firing.action.as_str(),
                    firing_status(firing).as_str(),
                    direct::json("executions", &firing.parameters)?,
                    result,
                    firing.rule,
                    event_id,
                    now_text,
                    firing.failed.as_ref().map(|_| &now_text),
                    firing.traceparent,
                ],
                |row| row.get(0),
            )?
            .pop()
            .ok_or(StoreError::Corrupt {
                table: "executions",
                message: "an insert returned no id".to_owned(),
            })?;
            if firing.failed.is_none() {
                executions.push((ExecutionId(id), firing.action.clone()));
            }
        }
        outcomes.push(EventOutcome::recorded(EventId(event_id), executions));
    }
    Ok(outcomes)
}

/// [`Store::record_events`]' statements on PostgreSQL: the batch's events in one insert and
/// its executions in another, whatever its size. Ids are taken from their sequences first,
/// in ascending order, so each row's id is known before the insert, in the batch's order.
async fn record_events_pg(
    tx: &mut sqlx::PgConnection,
    batch: &[(&NewEvent, &[Firing])],
    now: DateTime<Utc>,
) -> Result<Vec<EventOutcome>, StoreError> {
    let firings = batch.iter().map(|(_, f)| f.len()).sum::<usize>();
    let (event_ids, execution_ids): (Vec<i64>, Vec<i64>) = sqlx::query_as(
        "SELECT \
         (SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM (SELECT nextval('events_id_seq') AS id FROM generate_series(1, $1)) e), \
         (SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM (SELECT nextval('executions_id_seq') AS id FROM generate_series(1, $2)) x)",
    )
    .bind(batch.len() as i64)
    .bind(firings as i64)
    .fetch_one(&mut *tx)
    .await?;
    let stream_seqs: Vec<Option<i64>> = batch
        .iter()
        .map(|(event, _)| event.stream_seq.map(|s| s as i64))
        .collect();
    let inserted: std::collections::HashSet<i64> = sqlx::query_scalar(
        "INSERT INTO events (id, trigger, status, reason, payload, subject, stream_seq, msg_id, created_at) \
         SELECT *, $9 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::JSONB[], $6::TEXT[], $7::BIGINT[], $8::TEXT[]) \
         ON CONFLICT (stream_seq) DO NOTHING RETURNING id",
    )
    .bind(&event_ids)
    .bind(batch.iter().map(|(e, _)| e.trigger.as_str()).collect::<Vec<_>>())
    .bind(batch.iter().map(|(e, _)| event_status(e)).collect::<Vec<_>>())
    .bind(batch.iter().map(|(e, _)| e.rejected.as_deref()).collect::<Vec<_>>())
    .bind(batch.iter().map(|(e, _)| e.payload.as_ref().map(Json)).collect::<Vec<_>>())
    .bind(batch.iter().map(|(e, _)| e.subject.as_str()).collect::<Vec<_>>())
    .bind(&stream_seqs)
    .bind(batch.iter().map(|(e, _)| e.msg_id.as_deref()).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // A redelivered trigger, or the same one twice in this batch: the event first recorded
    // for its stream sequence.
    let recorded: std::collections::HashMap<i64, i64> = if inserted.len() < batch.len() {
        let seqs: Vec<i64> = stream_seqs.iter().flatten().copied().collect();
        sqlx::query_as("SELECT stream_seq, id FROM events WHERE stream_seq = ANY($1)")
            .bind(seqs)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    } else {
        Default::default()
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut rows = ExecutionRows::default();
    let mut next_id = execution_ids.into_iter();
    for (((event, firings), event_id), stream_seq) in batch.iter().zip(event_ids).zip(&stream_seqs)
    {
        if !inserted.contains(&event_id) {
            let event_id = stream_seq
                .and_then(|seq| recorded.get(&seq))
                .ok_or_else(|| StoreError::Corrupt {
                    table: "events",
                    message: format!(
                        "no event recorded for stream sequence {:?}",
                        event.stream_seq
                    ),
                })?;
            outcomes.push(EventOutcome::duplicate(EventId(*event_id)));
            continue;
        }
        let mut executions = Vec::new();
        for firing in firings.iter() {
            let id = next_id.next().ok_or(StoreError::Corrupt {
                table: "executions",
                message: "fewer ids than executions".to_owned(),
            })?;
            rows.push(id, firing, event_id, now);
            if firing.failed.is_none() {
                executions.push((ExecutionId(id), firing.action.clone()));
            }
        }
        outcomes.push(EventOutcome::recorded(EventId(event_id), executions));
    }
    if !rows.id.is_empty() {
        // The database adds their history and their enforcements (migration 0015).
        sqlx::query(
            "INSERT INTO executions (id, action, status, parameters, result, rule, event_id, finished_at, traceparent, attempt, created_at, updated_at) \
             SELECT *, 1, $10, $10 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::JSONB[], $5::JSONB[], $6::TEXT[], $7::BIGINT[], $8::TIMESTAMPTZ[], $9::TEXT[])",
        )
        .bind(rows.id)
        .bind(rows.action)
        .bind(rows.status)
        .bind(rows.parameters)
        .bind(rows.result)
        .bind(rows.rule)
        .bind(rows.event_id)
        .bind(rows.finished_at)
        .bind(rows.traceparent)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(outcomes)
}

/// The columns of a batch of fired executions, one array each, for an `UNNEST` insert.
#[derive(Default)]
struct ExecutionRows<'a> {
    id: Vec<i64>,
    action: Vec<&'a str>,
    status: Vec<&'static str>,
    parameters: Vec<Json<&'a serde_json::Map<String, serde_json::Value>>>,
    result: Vec<Option<Json<serde_json::Value>>>,
    rule: Vec<&'a str>,
    event_id: Vec<i64>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    traceparent: Vec<Option<&'a str>>,
}

impl<'a> ExecutionRows<'a> {
    fn push(&mut self, id: i64, firing: &'a Firing, event_id: i64, now: DateTime<Utc>) {
        self.id.push(id);
        self.action.push(firing.action.as_str());
        self.status.push(firing_status(firing).as_str());
        self.parameters.push(Json(&firing.parameters));
        self.result.push(firing.failure().map(Json));
        self.rule.push(&firing.rule);
        self.event_id.push(event_id);
        self.finished_at.push(firing.failed.as_ref().map(|_| now));
        self.traceparent.push(firing.traceparent.as_deref());
    }
}

/// [`Store::transitions`]' updates, on SQLite's connection directly: one conditional
/// update a transition, its sources and attempt in its text, so each shape is prepared once.
fn transitions_on(
    tx: &rusqlite::Transaction<'_>,
    batch: &[(ExecutionId, &Transition, &[ExecutionStatus])],
) -> Result<Vec<(bool, Option<String>)>, StoreError> {
    let sql = |transition: &Transition, sources: &[ExecutionStatus]| {
        format!(
            "UPDATE executions SET status = $1, updated_at = $2, \
             result = COALESCE($3, result), \
             worker = CASE WHEN $8 THEN NULL ELSE COALESCE($4, worker) END, \
             attempt = CASE WHEN $8 THEN attempt + 1 ELSE attempt END, \
             started_at = CASE WHEN $5 THEN $2 WHEN $8 THEN NULL ELSE COALESCE($9, started_at) END, \
             finished_at = CASE WHEN $6 THEN $2 ELSE finished_at END \
             WHERE id = $7 AND status IN ({}){} RETURNING action",
            status_list(sources),
            // A number from the report's typed field, never text from outside.
            transition
                .attempt
                .map(|a| format!(" AND attempt = {a}"))
                .unwrap_or_default()
        )
    };
    let mut results = Vec::with_capacity(batch.len());
    for (id, transition, sources) in batch {
        let to = transition.to;
        debug_assert!(sources.iter().all(|from| from.can_transition_to(to)));
        if sources.is_empty() {
            results.push((false, None));
            continue;
        }
        // A result that arrived as JSON text is written as that text, without a copy.
        let value_text;
        let result: Option<&str> = match &transition.result {
            None => None,
            Some(ResultJson::Text(raw)) => Some(raw.get()),
            Some(ResultJson::Value(value)) => {
                value_text = value.to_string();
                Some(&value_text)
            }
        };
        let action: Option<String> = direct::rows(
            &mut tx.prepare_cached(&sql(transition, sources))?,
            rusqlite::params![
                to.as_str(),
                direct::time(transition.at),
                result,
                transition.worker,
                to == ExecutionStatus::Running,
                to.is_terminal(),
                id.0,
                to == ExecutionStatus::Requested,
                transition.started.map(direct::time),
            ],
            |row| row.get(0),
        )?
        .pop();
        results.push((action.is_some(), action));
    }
    Ok(results)
}

/// [`Store::transitions`]' updates on PostgreSQL: one update for the whole batch. A batch
/// that moves an execution more than once is applied in rounds, each holding at most one
/// move of an execution, in the batch's order: an execution's second move is checked
/// against what its first left. The statement is planned for each batch, with its arrays
/// and the table as they are: a plan kept from when the table was small reads all of it.
async fn transitions_pg(
    tx: &mut sqlx::PgConnection,
    batch: &[(ExecutionId, &Transition, &[ExecutionStatus])],
) -> Result<Vec<(bool, Option<String>)>, StoreError> {
    let mut rounds: Vec<TransitionRows> = Vec::new();
    let mut moves = std::collections::HashMap::<i64, usize>::new();
    for (i, (id, transition, sources)) in batch.iter().enumerate() {
        debug_assert!(
            sources
                .iter()
                .all(|from| from.can_transition_to(transition.to))
        );
        if sources.is_empty() {
            continue;
        }
        let round = moves.entry(id.0).or_default();
        if rounds.len() <= *round {
            rounds.push(TransitionRows::default());
        }
        rounds[*round].push(i, *id, transition, sources);
        *round += 1;
    }
    let mut results = vec![(false, None); batch.len()];
    for round in rounds {
        let changed: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE executions e SET status = t.status, updated_at = t.at, \
             result = COALESCE(t.result, e.result), \
             worker = CASE WHEN t.retry THEN NULL ELSE COALESCE(t.worker, e.worker) END, \
             attempt = CASE WHEN t.retry THEN e.attempt + 1 ELSE e.attempt END, \
             started_at = CASE WHEN t.running THEN t.at WHEN t.retry THEN NULL ELSE COALESCE(t.started, e.started_at) END, \
             finished_at = CASE WHEN t.terminal THEN t.at ELSE e.finished_at END \
             FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TIMESTAMPTZ[], $5::JSONB[], $6::TEXT[], \
                         $7::BOOL[], $8::BOOL[], $9::BOOL[], $10::TIMESTAMPTZ[], $11::TEXT[], $12::BIGINT[]) \
                 AS t(i, id, status, at, result, worker, running, terminal, retry, started, sources, attempt) \
             WHERE e.id = t.id AND e.status = ANY(string_to_array(t.sources, ',')) \
             AND (t.attempt IS NULL OR e.attempt = t.attempt) \
             RETURNING t.i, e.action",
        )
        .persistent(false)
        .bind(round.i)
        .bind(round.id)
        .bind(round.status)
        .bind(round.at)
        .bind(round.result)
        .bind(round.worker)
        .bind(round.running)
        .bind(round.terminal)
        .bind(round.retry)
        .bind(round.started)
        .bind(round.sources)
        .bind(round.attempt)
        .fetch_all(&mut *tx)
        .await?;
        for (i, action) in changed {
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| results.get_mut(i))
                .ok_or(StoreError::Corrupt {
                    table: "executions",
                    message: format!("an update returned an unknown position {i}"),
                })?;
            *slot = (true, Some(action));
        }
    }
    Ok(results)
}

/// One round of [`transitions_pg`]: a column each, for an `UNNEST`.
#[derive(Default)]
struct TransitionRows<'a> {
    /// The transition's position in its batch.
    i: Vec<i64>,
    id: Vec<i64>,
    status: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
    result: Vec<Option<Json<&'a ResultJson>>>,
    worker: Vec<Option<&'a str>>,
    running: Vec<bool>,
    terminal: Vec<bool>,
    /// Back to `requested` for another attempt.
    retry: Vec<bool>,
    started: Vec<Option<DateTime<Utc>>>,
    /// The statuses it may move from, comma-separated.
    sources: Vec<String>,
    /// Only if this is the execution's current attempt.
    attempt: Vec<Option<i64>>,
}

impl<'a> TransitionRows<'a> {
    fn push(
        &mut self,
        i: usize,
        id: ExecutionId,
        transition: &'a Transition,
        sources: &[ExecutionStatus],
    ) {
        let to = transition.to;
        self.i.push(i as i64);
        self.id.push(id.0);
        self.status.push(to.as_str());
        self.at.push(transition.at);
        self.result.push(transition.result.as_ref().map(Json));
        self.worker.push(transition.worker.as_deref());
        self.running.push(to == ExecutionStatus::Running);
        self.terminal.push(to.is_terminal());
        self.retry.push(to == ExecutionStatus::Requested);
        self.started.push(transition.started);
        self.sources.push(
            sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        self.attempt.push(transition.attempt.map(i64::from));
    }
}

/// Records how long a write took, for `sluice_store_write_seconds`.
pub(crate) fn timed(op: &'static str, started: std::time::Instant) {
    metrics()
        .store_write_seconds
        .observe([op], started.elapsed().as_secs_f64());
}

/// Counts rows written, for `sluice_store_writes_total`.
pub(crate) fn wrote(table: &'static str, kind: &'static str, rows: u64) {
    if rows > 0 {
        metrics().store_writes.add([table, kind], rows);
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Sqlite {
        /// The connection its writes on the execution path run on, and the turn every
        /// statement takes.
        direct: Arc<Direct>,
        pool: SqlitePool,
    },
    Postgres(PgPool),
}

/// A handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// The fences the execution core's writes are checked against; none: unfenced.
    pub(crate) fences: Arc<[Fence]>,
    /// SQLite's checkpoints, while the store is open.
    checkpointer: Option<Arc<Checkpointer>>,
}

/// Runs the same code against whichever pool the store has: every query here is written
/// with `$N` placeholders, which SQLite and PostgreSQL both understand.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite {
                pool: $pool,
                direct,
            } => {
                let _turn = direct.turn().await;
                $body
            }
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Returns [`StoreError::Fenced`] from the enclosing function, with nothing written, when
/// the store is fenced and one of its fences is no longer the one in the database. The first
/// statements of every fenced transaction `$tx`.
macro_rules! check_fence {
    ($store:expr, $tx:expr) => {
        for fence in $store.fences() {
            let current: Option<i64> = sqlx::query_scalar($store.fence_check_sql())
                .bind(&fence.name)
                .fetch_optional(&mut *$tx)
                .await?;
            fence.check(current)?;
        }
    };
}
pub(crate) use check_fence;

#[derive(FromRow)]
struct ExecutionRow {
    id: i64,
    action: String,
    status: String,
    parameters: String,
    result: Option<String>,
    rule: Option<String>,
    event_id: Option<i64>,
    parent_id: Option<i64>,
    attempt: i32,
    worker: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    traceparent: Option<String>,
    rerun_of: Option<i64>,
}

const EXECUTION_COLUMNS: &str = "id, action, status, CAST(parameters AS TEXT) AS parameters, CAST(result AS TEXT) AS result, rule, event_id, parent_id, attempt, worker, created_at, updated_at, started_at, finished_at, traceparent, rerun_of";

/// The trace id inside a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_owned())
}

/// A stored JSON value, read within the same limits as anything from outside. A value that
/// cannot be read costs its own row, never a listing: it reads as `null`, and the reason is
/// logged and returned for the row.
fn stored_json(
    table: &str,
    id: i64,
    column: &str,
    text: &str,
    problems: &mut Vec<String>,
) -> serde_json::Value {
    sluice_core::bounded::from_json(text.as_bytes()).unwrap_or_else(|e| {
        let problem = format!("{column} cannot be read: {e}");
        tracing::warn!(table, id, column, error = %e, "stored value cannot be read");
        problems.push(problem);
        serde_json::Value::Null
    })
}

pub(crate) fn corrupt(table: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.to_string(),
    }
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = StoreError;
    fn try_from(row: ExecutionRow) -> Result<Self, StoreError> {
        let mut problems = Vec::new();
        let parameters = stored_json(
            "executions",
            row.id,
            "parameters",
            &row.parameters,
            &mut problems,
        );
        let result = row
            .result
            .as_deref()
            .map(|r| stored_json("executions", row.id, "result", r, &mut problems));
        Ok(Execution {
            id: ExecutionId(row.id),
            action: row.action.parse().map_err(|e| corrupt("executions", e))?,
            status: row.status.parse().map_err(|e| corrupt("executions", e))?,
            parameters,
            result,
            unreadable: (!problems.is_empty()).then(|| problems.join("; ")),
            rule: row.rule,
            event_id: row.event_id.map(EventId),
            parent_id: row.parent_id.map(ExecutionId),
            attempt: u32::try_from(row.attempt).map_err(|e| corrupt("executions", e))?,
            worker: row.worker,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            trace_id: row.traceparent.as_deref().and_then(trace_id_of),
            traceparent: row.traceparent,
            rerun_of: row.rerun_of.map(ExecutionId),
            history: Vec::new(),
        })
    }
}

#[derive(FromRow)]
struct EventRow {
    id: i64,
    trigger: String,
    status: String,
    reason: Option<String>,
    payload: Option<String>,
    subject: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;
    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        Ok(Event {
            id: EventId(row.id),
            trigger: row.trigger,
            status: row.status.parse().map_err(|e| corrupt("events", e))?,
            reason: row.reason,
            payload: row
                .payload
                .as_deref()
                .map(|p| stored_json("events", row.id, "payload", p, &mut Vec::new())),
            subject: row.subject,
            created_at: row.created_at,
        })
    }
}

#[derive(FromRow)]
struct DeadLetterRow {
    id: i64,
    stream: String,
    consumer: String,
    subject: String,
    stream_seq: i64,
    deliveries: i64,
    reason: String,
    payload_size: i64,
    payload: Option<Vec<u8>>,
    given_up_by: String,
    created_at: DateTime<Utc>,
}

impl From<DeadLetterRow> for DeadLetterRecord {
    fn from(row: DeadLetterRow) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        DeadLetterRecord {
            id: row.id,
            stream: row.stream,
            consumer: row.consumer,
            subject: row.subject,
            stream_seq: count(row.stream_seq),
            deliveries: count(row.deliveries),
            reason: row.reason,
            payload_size: count(row.payload_size),
            payload: row
                .payload
                .map(|p| String::from_utf8_lossy(&p).into_owned()),
            given_up_by: row.given_up_by,
            created_at: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct HistoryRow {
    attempt: i32,
    status: String,
    at: DateTime<Utc>,
}

/// `'a', 'b'` for an `IN (...)` list; the values come from the status enum, never input.
fn status_list(statuses: &[ExecutionStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a query waits for a connection (PostgreSQL) or a lock (SQLite) before it fails
/// as transient: well inside the engine consumers' 5 s `ack_wait`, so a message is nak'd
/// with a backoff rather than redelivered while its handler still waits.
const WAIT_FOR_DATABASE: Duration = Duration::from_secs(2);

/// How long PostgreSQL keeps a transaction whose client sent nothing more: then it ends the
/// session and rolls the transaction back. An engine's transactions send their statements
/// back to back, so only a paused or cut-off engine leaves one open that long. Without this,
/// such a zombie would hold its locks (the fence's `FOR SHARE`, the rows it updated) until it
/// woke, and the engine taking over would wait on them.
const ABANDONED_TRANSACTION: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating if needed) and migrates the store at `url`: `postgres://…` for
    /// PostgreSQL, `sqlite://PATH` or a plain file path for SQLite.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut checkpointer = None;
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?.options([(
                "idle_in_transaction_session_timeout",
                format!("{}ms", ABANDONED_TRANSACTION.as_millis()),
            )]);
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(WAIT_FOR_DATABASE)
                .connect_with(options)
                .await?;
            sqlx::migrate!("../../migrations/postgres")
                .run(&pool)
                .await?;
            Backend::Postgres(pool)
        } else {
            direct::configure_process();
            let url = if url.starts_with("sqlite:") {
                url.to_owned()
            } else {
                format!("sqlite://{url}")
            };
            let options = direct::SETTINGS.into_iter().fold(
                SqliteConnectOptions::from_str(&url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(WAIT_FOR_DATABASE),
                |options, (name, value)| options.pragma(name, value),
            );
            // Checkpoints are taken by a connection of their own (see `checkpoint`).
            let (name, value) = direct::WRITER_SETTING;
            let writer = options.clone().pragma(name, value);
            // SQLite has one write lock. With several connections writing at once, writers
            // collide on it and back off in sleeps, which halved throughput; so every
            // statement takes a turn on the database (`direct`), and writers queue in order.
            // Readers are short and queue with them. A connection to a file does not go
            // stale, so it is not pinged before each use.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(WAIT_FOR_DATABASE)
                .connect_with(writer)
                .await?;
            sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
            let direct = Arc::new(Direct::open(&options, WAIT_FOR_DATABASE)?);
            checkpointer = Some(Arc::new(
                Checkpointer::start(&options, direct.clone()).await?,
            ));
            Backend::Sqlite { direct, pool }
        };
        Ok(Self {
            backend,
            fences: Arc::from(Vec::new()),
            checkpointer,
        })
    }

    /// The statement that starts a fenced transaction.
    pub(crate) fn fence_check_sql(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "SELECT token FROM fences WHERE name = $1 FOR SHARE",
            Backend::Sqlite { .. } => direct::FENCE_CHECK,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
        match &self.backend {
            Backend::Sqlite { direct, pool } => {
                direct.close().await;
                pool.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    /// Stores an event and, in the same transaction, one enforcement and one execution per
    /// firing. A trigger message seen before (same stream sequence) writes nothing.
    pub async fn record_event(
        &self,
        event: &NewEvent,
        firings: &[Firing],
    ) -> Result<EventOutcome, StoreError> {
        let mut outcomes = self.record_events(&[(event, firings)]).await?;
        Ok(outcomes.remove(0))
    }

    /// [`Store::record_event`] for a batch of events, in one transaction (group commit):
    /// all are stored or none. Outcomes come back in the order of `batch`.
    pub async fn record_events(
        &self,
        batch: &[(&NewEvent, &[Firing])],
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let now = Utc::now();
        let started = std::time::Instant::now();
        let outcomes = match &self.backend {
            Backend::Sqlite { direct, .. } => {
                direct
                    .transaction(&self.fences, |tx| record_events_on(tx, batch, now))
                    .await?
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                check_fence!(self, tx);
                let outcomes = record_events_pg(&mut tx, batch, now).await?;
                tx.commit().await?;
                outcomes
            }
        };
        for ((_, firings), outcome) in batch.iter().zip(&outcomes) {
            if outcome.duplicate {
                continue;
            }
            let n = firings.len() as u64;
            let ended = firings.iter().filter(|f| f.failed.is_some()).count() as u64;
            // An execution admitted as it arrived enters `scheduling` and `scheduled` too.
            let admitted = firings
                .iter()
                .filter(|f| f.failed.is_none() && f.admitted)
                .count() as u64;
            wrote("events", "insert", 1);
            wrote("executions", "insert", n);
            wrote("enforcements", "insert", n);
            wrote("execution_history", "insert", n + ended + 2 * admitted);
            for firing in firings.iter().filter(|f| f.failed.is_some()) {
                metrics()
                    .executions_ended
                    .inc([firing.action.as_str(), "failed"]);
            }
        }
        timed("record_event", started);
        Ok(outcomes)
    }

    /// Creates a `requested` execution directly (API, CLI, workflow tasks).
    pub async fn create_execution(
        &self,
        action: &ActionRef,
        parameters: &serde_json::Map<String, serde_json::Value>,
        parent_id: Option<ExecutionId>,
        traceparent: Option<&str>,
    ) -> Result<ExecutionId, StoreError> {
        self.insert_execution(
            ExecutionStatus::Requested,
            action,
            parameters,
            parent_id,
            None,
            traceparent,
        )
        .await
    }

    /// Stores a `requested` execution that runs `of` again.
    pub async fn create_rerun(
        &self,
        action: &ActionRef,
        parameters: &serde_json::Map<String, serde_json::Value>,
        of: ExecutionId,
        traceparent: Option<&str>,
    ) -> Result<ExecutionId, StoreError> {
        self.insert_execution(
            ExecutionStatus::Requested,
            action,
            parameters,
            None,
            Some(of),
            traceparent,
        )
        .await
    }

    /// Stores an execution already `scheduled`: its action's supervisor reserved it a slot
    /// (see `Gate::reserve` in the engine). Its history reads `requested`, `scheduling`,
    /// `scheduled`, all at this moment (migration 0014). `rerun_of` names the execution it
    /// runs again, if any.
    pub async fn create_admitted_execution(
        &self,
        action: &ActionRef,
        parameters: &serde_json::Map<String, serde_json::Value>,
        rerun_of: Option<ExecutionId>,
        traceparent: Option<&str>,
    ) -> Result<ExecutionId, StoreError> {
        self.insert_execution(
            ExecutionStatus::Scheduled,
            action,
            parameters,
            None,
            rerun_of,
            traceparent,
        )
        .await
    }

    /// Inserts an execution `requested`, or already `scheduled`; the database adds its
    /// history: `requested`, and for one already admitted `scheduling` and `scheduled` too
    /// (migrations 0011, 0014).
    async fn insert_execution(
        &self,
        status: ExecutionStatus,
        action: &ActionRef,
        parameters: &serde_json::Map<String, serde_json::Value>,
        parent_id: Option<ExecutionId>,
        rerun_of: Option<ExecutionId>,
        traceparent: Option<&str>,
    ) -> Result<ExecutionId, StoreError> {
        let now = Utc::now();
        let started = std::time::Instant::now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            check_fence!(self, tx);
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO executions (action, status, parameters, parent_id, attempt, created_at, updated_at, traceparent, rerun_of) \
                 VALUES ($1, $7, $2, $3, 1, $4, $4, $5, $6) RETURNING id",
            )
            .bind(action.as_str())
            .bind(Json(parameters))
            .bind(parent_id.map(|p| p.0))
            .bind(now)
            .bind(traceparent)
            .bind(rerun_of.map(|r| r.0))
            .bind(status.as_str())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            wrote("executions", "insert", 1);
            let history = if status == ExecutionStatus::Scheduled { 3 } else { 1 };
            wrote("execution_history", "insert", history);
            timed("create_execution", started);
            Ok(ExecutionId(id))
        })
    }

    /// Moves an execution to `transition.to` if the state machine allows it from its current
    /// status. Returns whether anything changed: a repeated or stale status writes nothing.
    pub async fn transition(
        &self,
        id: ExecutionId,
        transition: &Transition,
    ) -> Result<bool, StoreError> {
        self.transition_from(id, transition, transition.to.sources())
            .await
    }

    /// Ends an execution that has not been handed to a worker yet (`requested` or
    /// `scheduling`) as `failed` or `cancelled`, with the reason: what the engine may decide
    /// on its own. Returns whether it changed.
    pub async fn end_before_handoff(
        &self,
        id: ExecutionId,
        status: ExecutionStatus,
        reason: &str,
    ) -> Result<bool, StoreError> {
        debug_assert!(matches!(
            status,
            ExecutionStatus::Failed | ExecutionStatus::Cancelled
        ));
        let mut end = Transition::to(status);
        end.result = Some(serde_json::json!({ "error": reason }).into());
        let engine_owned = [ExecutionStatus::Requested, ExecutionStatus::Scheduling];
        self.transition_from(id, &end, &engine_owned).await
    }

    /// [`Self::end_before_handoff`] as `failed`.
    pub async fn fail_before_handoff(
        &self,
        id: ExecutionId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.end_before_handoff(id, ExecutionStatus::Failed, reason)
            .await
    }

    /// The one conditional update: moves `id` to `transition.to` only from `sources`, and
    /// records the status in the history when it changed.
    async fn transition_from(
        &self,
        id: ExecutionId,
        transition: &Transition,
        sources: &[ExecutionStatus],
    ) -> Result<bool, StoreError> {
        let changed = self.transitions_from(&[(id, transition, sources)]).await?;
        Ok(changed[0])
    }

    /// [`Store::transition`] for a batch, in one transaction (group commit), applied in
    /// order: a batch may move one execution twice (`running`, then its completion).
    /// Returns, in order, whether each changed anything.
    pub async fn transitions(
        &self,
        batch: &[(ExecutionId, Transition)],
    ) -> Result<Vec<bool>, StoreError> {
        let batch: Vec<_> = batch
            .iter()
            .map(|(id, transition)| (*id, transition, transition.to.sources()))
            .collect();
        self.transitions_from(&batch).await
    }

    /// Admits a round of executions at once: each `requested` one moves to `scheduled`, at
    /// its own time, in one statement whatever the round's size; the database adds both
    /// `scheduling` and `scheduled` to its history at that time (migration 0013). Returns, in
    /// the order of `round`, whether each was admitted (one no longer `requested`, cancelled
    /// or ended meanwhile, is left as it is).
    pub async fn admit(
        &self,
        round: &[(ExecutionId, DateTime<Utc>)],
    ) -> Result<Vec<bool>, StoreError> {
        if round.is_empty() {
            return Ok(Vec::new());
        }
        // Each execution's id is `$2i+1` and its time `$2i+2`.
        let times: String = (0..round.len())
            .map(|i| format!(" WHEN ${} THEN ${}", 2 * i + 1, 2 * i + 2))
            .collect();
        let ids = (0..round.len())
            .map(|i| format!("${}", 2 * i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE executions SET status = '{}', updated_at = CASE id{times} END \
             WHERE status = '{}' AND id IN ({ids}) RETURNING id",
            ExecutionStatus::Scheduled,
            ExecutionStatus::Requested,
        );
        let started = std::time::Instant::now();
        let admitted: std::collections::HashSet<i64> = match &self.backend {
            Backend::Sqlite { direct, .. } => {
                direct
                    .transaction(&self.fences, |tx| {
                        let mut update = tx.prepare_cached(&sql)?;
                        let times: Vec<String> =
                            round.iter().map(|(_, at)| direct::time(*at)).collect();
                        let params: Vec<&dyn rusqlite::ToSql> = round
                            .iter()
                            .zip(&times)
                            .flat_map(|((id, _), at)| [&id.0 as &dyn rusqlite::ToSql, at])
                            .collect();
                        let admitted = direct::rows(&mut update, &params, |row| row.get(0))?;
                        Ok(admitted.into_iter().collect())
                    })
                    .await?
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                check_fence!(self, tx);
                // Planned for each round, as `transitions_pg`'s update is.
                let mut query = sqlx::query_scalar(AssertSqlSafe(sql.clone())).persistent(false);
                for (id, at) in round {
                    query = query.bind(id.0).bind(*at);
                }
                let admitted: std::collections::HashSet<i64> =
                    query.fetch_all(&mut *tx).await?.into_iter().collect();
                tx.commit().await?;
                admitted
            }
        };
        timed("transition", started);
        let n = admitted.len() as u64;
        // Each admission is one update, and its trigger adds two statuses to the history.
        wrote("executions", "update", n);
        wrote("execution_history", "insert", 2 * n);
        Ok(round
            .iter()
            .map(|(id, _)| admitted.contains(&id.0))
            .collect())
    }

    /// The one conditional update: moves each execution to its `transition.to` only from
    /// its sources, and records the status in the history when it changed.
    async fn transitions_from(
        &self,
        batch: &[(ExecutionId, &Transition, &[ExecutionStatus])],
    ) -> Result<Vec<bool>, StoreError> {
        let started = std::time::Instant::now();
        let results: Vec<(bool, Option<String>)> = match &self.backend {
            Backend::Sqlite { direct, .. } => {
                direct
                    .transaction(&self.fences, |tx| transitions_on(tx, batch))
                    .await?
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                check_fence!(self, tx);
                let results = transitions_pg(&mut tx, batch).await?;
                tx.commit().await?;
                results
            }
        };
        timed("transition", started);
        for ((_, transition, _), (changed, action)) in batch.iter().zip(&results) {
            // The update's triggers add the status to the history (migration 0011), and
            // `running` too when it records the start (0012).
            let entered = 1 + u64::from(transition.started.is_some());
            wrote("executions", "update", u64::from(*changed));
            wrote("execution_history", "insert", u64::from(*changed) * entered);
            if let Some(action) = action.as_deref().filter(|_| transition.to.is_terminal()) {
                metrics()
                    .executions_ended
                    .inc([action, transition.to.as_str()]);
            }
        }
        Ok(results.into_iter().map(|(changed, _)| changed).collect())
    }

    /// One execution with its status history.
    pub async fn get_execution(&self, id: ExecutionId) -> Result<Option<Execution>, StoreError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        let (row, history): (Option<ExecutionRow>, Vec<HistoryRow>) = on_pool!(self, pool => {
            let row = sqlx::query_as(AssertSqlSafe(sql)).bind(id.0).fetch_optional(pool).await?;
            let history = sqlx::query_as("SELECT attempt, status, at FROM execution_history WHERE execution_id = $1")
                .bind(id.0)
                .fetch_all(pool)
                .await?;
            (row, history)
        });
        let Some(row) = row else { return Ok(None) };
        let mut execution = Execution::try_from(row)?;
        let mut history = history
            .into_iter()
            .map(|h| {
                Ok(HistoryEntry {
                    attempt: u32::try_from(h.attempt)
                        .map_err(|e| corrupt("execution_history", e))?,
                    status: h
                        .status
                        .parse()
                        .map_err(|e| corrupt("execution_history", e))?,
                    at: h.at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Statuses are entered in lifecycle order within an attempt; timestamps alone can tie.
        history.sort_by_key(|h| (h.attempt, h.at, h.status));
        execution.history = history;
        Ok(Some(execution))
    }

    /// Executions, newest first.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<Execution>, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE (CAST($1 AS TEXT) IS NULL OR action = $1) AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
             AND id < $4 AND (CAST($5 AS BIGINT) IS NULL OR parent_id = $5) \
             AND (CAST($6 AS TEXT) IS NULL OR rule = $6) AND ($7 IS NULL OR created_at >= $7) \
             AND ($8 IS NULL OR created_at < $8) ORDER BY id DESC LIMIT $3"
        );
        let limit = i64::from(filter.limit.unwrap_or(50).clamp(1, 1000));
        let rows: Vec<ExecutionRow> = on_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(&filter.action)
                .bind(filter.status.map(|s| s.as_str()))
                .bind(limit)
                .bind(filter.before.unwrap_or(i64::MAX))
                .bind(filter.parent)
                .bind(&filter.rule)
                .bind(filter.since)
                .bind(filter.until)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Execution::try_from).collect()
    }

    /// Executions not yet finished, oldest first: what the engine rebuilds its queues and
    /// active sets from when it starts.
    pub async fn unfinished_executions(&self) -> Result<Vec<Execution>, StoreError> {
        self.unfinished_executions_after(ExecutionId(0), u32::MAX)
            .await
    }

    /// One page of [`Self::unfinished_executions`]: at most `limit`, with ids above `after`,
    /// so a long queue is read without holding it twice in memory.
    pub async fn unfinished_executions_after(
        &self,
        after: ExecutionId,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        let unfinished = ExecutionStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect::<Vec<_>>();
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE status IN ({}) AND id > $1 ORDER BY id LIMIT $2",
            status_list(&unfinished)
        );
        let rows: Vec<ExecutionRow> = on_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(after.0).bind(i64::from(limit)).fetch_all(pool).await?
        });
        rows.into_iter().map(Execution::try_from).collect()
    }

    /// How many executions a rule requested that have not finished: what a timer's
    /// `overlap` policy looks at.
    pub async fn unfinished_for_rule(&self, rule: &str) -> Result<i64, StoreError> {
        let unfinished = ExecutionStatus::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect::<Vec<_>>();
        let sql = format!(
            "SELECT COUNT(*) FROM executions WHERE rule = $1 AND status IN ({})",
            status_list(&unfinished)
        );
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(rule).fetch_one(pool).await?
        });
        Ok(n)
    }

    /// Events, newest first.
    pub async fn list_events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.find_events(&EventFilter {
            limit: Some(limit),
            ..Default::default()
        })
        .await
    }

    /// Events matching `filter`, newest first.
    pub async fn find_events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        // The payload path is bound, never written into the statement.
        let at_path = match self.backend {
            Backend::Sqlite { .. } => "CAST(json_extract(payload, '$.' || $7) AS TEXT)",
            Backend::Postgres(_) => "payload #>> string_to_array($7, '.')",
        };
        let sql = format!(
            "SELECT id, trigger, status, reason, CAST(payload AS TEXT) AS payload, subject, created_at FROM events \
             WHERE id < $2 AND (CAST($3 AS TEXT) IS NULL OR trigger = $3) AND (CAST($4 AS TEXT) IS NULL OR status = $4) \
             AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6) \
             AND (CAST($7 AS TEXT) IS NULL OR {at_path} = $8) ORDER BY id DESC LIMIT $1"
        );
        let (path, value) = filter.payload.clone().unzip();
        let rows: Vec<EventRow> = on_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(i64::from(filter.limit.unwrap_or(50).clamp(1, 1000)))
                .bind(filter.before.unwrap_or(i64::MAX))
                .bind(&filter.trigger)
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.since)
                .bind(filter.until)
                .bind(&path)
                .bind(&value)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Event::try_from).collect()
    }

    /// Records a dead letter; one per stream message, so a repeat writes nothing. Returns
    /// whether it was new.
    pub async fn record_dead_letter(&self, letter: &DeadLetter) -> Result<bool, StoreError> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let started = std::time::Instant::now();
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO dead_letters (stream, consumer, subject, stream_seq, deliveries, reason, payload_size, payload, given_up_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (stream, stream_seq) DO NOTHING",
            )
            .bind(&letter.stream)
            .bind(&letter.consumer)
            .bind(&letter.subject)
            .bind(count(letter.stream_seq))
            .bind(count(letter.deliveries))
            .bind(&letter.reason)
            .bind(count(letter.payload_size))
            .bind(letter.payload.as_deref())
            .bind(&letter.by)
            .bind(letter.at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        wrote("dead_letters", "insert", inserted);
        timed("record_dead_letter", started);
        Ok(inserted == 1)
    }

    /// Dead letters, newest first.
    pub async fn list_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let rows: Vec<DeadLetterRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, stream, consumer, subject, stream_seq, deliveries, reason, payload_size, payload, given_up_by, created_at \
                            FROM dead_letters ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit.clamp(1, 1000)))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(DeadLetterRecord::from).collect())
    }

    /// The store's counts, and any execution that did not end exactly once.
    pub async fn ledger(&self) -> Result<Ledger, StoreError> {
        let terminal: Vec<_> = ExecutionStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        let terminal = status_list(&terminal);
        let mismatches = format!(
            "SELECT e.id FROM executions e \
             LEFT JOIN execution_history h ON h.execution_id = e.id AND h.status IN ({terminal}) \
             WHERE e.status IN ({terminal}) GROUP BY e.id HAVING COUNT(h.status) <> 1 ORDER BY e.id LIMIT 100"
        );
        on_pool!(self, pool => {
            let count = |sql: &'static str| async move {
                let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
                Ok::<i64, StoreError>(n)
            };
            let by_status: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, COUNT(*) FROM executions GROUP BY status")
                    .fetch_all(pool)
                    .await?;
            let ended_other_than_once: Vec<(i64,)> =
                sqlx::query_as(AssertSqlSafe(mismatches)).fetch_all(pool).await?;
            let mut ledger = Ledger {
                events: count("SELECT COUNT(*) FROM events").await?,
                rejected_events: sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM events WHERE status = $1")
                    .bind(EventStatus::Rejected.as_str())
                    .fetch_one(pool)
                    .await?
                    .0,
                enforcements: count("SELECT COUNT(*) FROM enforcements").await?,
                dead_letters: count("SELECT COUNT(*) FROM dead_letters").await?,
                ended_other_than_once: ended_other_than_once.into_iter().map(|(id,)| id).collect(),
                ..Ledger::default()
            };
            for (status, n) in by_status {
                let status: ExecutionStatus = status.parse().map_err(|e| corrupt("executions", e))?;
                if !status.is_terminal() {
                    ledger.unfinished += n;
                }
                ledger.executions.insert(status, n);
            }
            Ok(ledger)
        })
    }

    /// One event.
    pub async fn get_event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        let row: Option<EventRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, trigger, status, reason, CAST(payload AS TEXT) AS payload, subject, created_at FROM events WHERE id = $1")
                .bind(id.0)
                .fetch_optional(pool)
                .await?
        });
        row.map(Event::try_from).transpose()
    }

    /// The enforcements of an event: each rule that fired on it, with the execution it
    /// requested.
    pub async fn enforcements_of(&self, event: EventId) -> Result<Vec<Enforcement>, StoreError> {
        let rows: Vec<(i64, String, i64, DateTime<Utc>)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, rule, execution_id, created_at FROM enforcements WHERE event_id = $1 ORDER BY id")
                .bind(event.0)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, rule, execution, created_at)| Enforcement {
                id,
                rule,
                event_id: event,
                execution_id: ExecutionId(execution),
                created_at,
            })
            .collect())
    }

    /// Enforcements, newest first: of one rule, or one event, or all; `before` pages on.
    pub async fn list_enforcements(
        &self,
        rule: Option<&str>,
        event: Option<EventId>,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<Enforcement>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, DateTime<Utc>)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, rule, event_id, execution_id, created_at FROM enforcements \
                 WHERE id < $1 AND (CAST($2 AS TEXT) IS NULL OR rule = $2) AND (CAST($3 AS BIGINT) IS NULL OR event_id = $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(before.unwrap_or(i64::MAX))
            .bind(rule)
            .bind(event.map(|e| e.0))
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, rule, event, execution, created_at)| Enforcement {
                id,
                rule,
                event_id: EventId(event),
                execution_id: ExecutionId(execution),
                created_at,
            })
            .collect())
    }

    /// How many enforcements exist for an event (one per rule that fired).
    pub async fn count_enforcements(&self, event_id: EventId) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM enforcements WHERE event_id = $1").bind(event_id.0).fetch_one(pool).await?
        });
        Ok(n)
    }
}

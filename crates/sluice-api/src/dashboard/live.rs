//! The two API routes the dashboard needs beyond the others: who the caller is, and a live
//! snapshot of the engine every second.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_core::ExecutionStatus;
use sluice_store::ExecutionFilter;
use tracing::warn;

use super::activity::{Ended, Minute, Today, totals};
use super::{Dashboard, Session};
use crate::auth::Caller;
use crate::error::{ApiError, AppState, Query};

/// Who the token is and what its scope lets the dashboard offer.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "engine",
    responses((status = 200, description = "The caller's token name and scope, what it may do, and where trace ids link to", body = Session))
)]
pub(crate) async fn session(
    Extension(caller): Extension<Caller>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
) -> Json<Session> {
    Json(Session::of(&caller, &dashboard.options))
}

/// Which executions a snapshot lists, newest first.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LiveQuery {
    /// How many of the newest executions each snapshot lists (0, the default, lists none;
    /// at most 200).
    window: Option<u32>,
    action: Option<String>,
    status: Option<String>,
    rule: Option<String>,
    /// An RFC 3339 time or a duration back from now (`1h`).
    since: Option<String>,
}

/// An execution as the live list shows it: no parameters, no result.
#[derive(Serialize, utoipa::ToSchema)]
struct Row {
    id: i64,
    action: String,
    status: ExecutionStatus,
    attempt: u32,
    rule: Option<String>,
    parent_id: Option<i64>,
    worker: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// One snapshot of the engine.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Snapshot {
    at: DateTime<Utc>,
    /// Executions ended since the engine started, by status.
    #[schema(value_type = Object)]
    ended: Ended,
    /// Executions ended per minute, by status, over the last hour (since the engine
    /// started), the minute under way last.
    #[schema(value_type = Vec<Object>)]
    minutes: Vec<Minute>,
    /// Rejected events and dead letters since midnight UTC, once the engine has counted them.
    #[schema(value_type = Option<Object>)]
    today: Option<Today>,
    /// Each action's queue: length, active count, limit, oldest wait, per key.
    #[schema(value_type = Vec<Object>)]
    queues: Vec<Value>,
    /// Workers: capacity, what they run, last heartbeat.
    #[schema(value_type = Vec<Object>)]
    workers: Vec<Value>,
    /// The newest executions that match the query, at most `window`.
    executions: Vec<Row>,
}

async fn snapshot(
    engine: &AppState,
    dashboard: &Dashboard,
    filter: Option<&ExecutionFilter>,
) -> Snapshot {
    let now = Utc::now();
    let ended = totals(engine);
    let minutes = dashboard.activity.minutes(now, &ended);
    let queues = engine
        .supervisor_stats()
        .await
        .iter()
        .map(|s| {
            let mut shown = json!(s);
            shown["oldest_wait_seconds"] = json!(
                s.oldest_queued_at
                    .map(|at| (now - at).as_seconds_f64().max(0.0))
            );
            shown
        })
        .collect();
    let workers = engine.workers().iter().map(|w| json!(w)).collect();
    let executions = match filter {
        None => Vec::new(),
        Some(filter) => match engine.store().list_executions(filter).await {
            Ok(found) => found
                .into_iter()
                .map(|e| Row {
                    id: e.id.0,
                    action: e.action.to_string(),
                    status: e.status,
                    attempt: e.attempt,
                    rule: e.rule,
                    parent_id: e.parent_id.map(|p| p.0),
                    worker: e.worker,
                    created_at: e.created_at,
                    finished_at: e.finished_at,
                })
                .collect(),
            Err(error) => {
                warn!(%error, "the live list could not read executions");
                Vec::new()
            }
        },
    };
    Snapshot {
        at: now,
        ended,
        minutes,
        today: dashboard.activity.today(),
        queues,
        workers,
        executions,
    }
}

/// Server-Sent Events: `event: snapshot` every second, each the engine's state as the
/// overview and the live list draw it, until the client goes away.
#[utoipa::path(
    get,
    path = "/api/v1/live",
    tag = "engine",
    params(LiveQuery),
    responses((status = 200, description = "Server-Sent Events: a snapshot every second (event: snapshot)", content_type = "text/event-stream", body = Snapshot))
)]
pub(crate) async fn live(
    State(engine): State<AppState>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
    Query(query): Query<LiveQuery>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let window = query.window.unwrap_or(0);
    if window > 200 {
        return Err(ApiError::BadRequest(format!(
            "window={window}: a snapshot lists at most 200 executions"
        )));
    }
    let status = query
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<ExecutionStatus>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let filter = (window > 0)
        .then(|| -> Result<ExecutionFilter, ApiError> {
            Ok(ExecutionFilter {
                action: query.action.filter(|a| !a.is_empty()),
                status,
                limit: Some(window),
                rule: query.rule.filter(|r| !r.is_empty()),
                since: crate::error::instant(
                    "since",
                    query.since.as_deref().filter(|s| !s.is_empty()),
                )?,
                ..ExecutionFilter::default()
            })
        })
        .transpose()?;
    let state = (engine, dashboard, filter, None::<tokio::time::Interval>);
    let stream = futures::stream::unfold(state, |(engine, dashboard, filter, tick)| async move {
        let mut tick = match tick {
            Some(tick) => tick,
            None => tokio::time::interval(Duration::from_secs(1)),
        };
        tick.tick().await;
        let shown = snapshot(&engine, &dashboard, filter.as_ref()).await;
        let event = Event::default()
            .event("snapshot")
            .json_data(&shown)
            .unwrap_or_else(|_| Event::default().event("snapshot").data("{}"));
        Some((Ok(event), (engine, dashboard, filter, Some(tick))))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

//! Sluice's HTTP API (JSON): executions, packs, actions, triggers, events, dead letters, the live actor tree,
//! rules (switched on and off at run time), API tokens, the datastore and the secrets key; and the process's metrics at `/metrics`;
//! and the dashboard, at `/`, which uses nothing but that API ([`dashboard`]).
//!
//! [`app`] builds the router over a running [`sluice_engine::Engine`]. Every route but `/healthz` is behind
//! [`auth::authorize`]; [`ApiError::into_response`] is the one place errors become status
//! codes, and internal details never reach a client.

pub mod auth;
mod catalog;
pub mod dashboard;
mod error;
mod exposition;
mod keys;
mod openapi;
mod rules;
mod standby;
mod webhooks;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use openapi::{Problems as OpenApiProblems, Security as OpenApiSecurity};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_core::{ExecutionId, ExecutionStatus};
use sluice_store::ExecutionFilter;
use utoipa::OpenApi as _;

pub use error::{ApiError, AppState, Body, problem};
use error::{Query, instant};
pub use exposition::metrics;
use exposition::prometheus_text;
pub use standby::{Primary, standby_app};

pub fn app(engine: AppState, options: dashboard::Options) -> Router {
    let activity = std::sync::Arc::new(dashboard::Activity::default());
    activity.watch(std::sync::Arc::downgrade(&engine));
    let dashboard = std::sync::Arc::new(dashboard::Dashboard { options, activity });
    Router::new()
        .route(
            "/api/v1/executions",
            get(list_executions).post(create_execution),
        )
        .route("/api/v1/executions/{id}", get(get_execution))
        .route("/api/v1/executions/cancel", post(cancel_executions))
        .route("/api/v1/executions/{id}/cancel", post(cancel_execution))
        .route("/api/v1/executions/{id}/re-run", post(rerun_execution))
        .route("/api/v1/executions/{id}/output", get(execution_output))
        .route("/api/v1/executions/{id}/tasks", get(workflow_tasks))
        .route("/api/v1/actions", get(list_actions))
        .route("/api/v1/actions/{action}/queue-stats", get(queue_stats))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/timers", get(timers))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{id}", get(get_event))
        .route("/api/v1/enforcements", get(list_enforcements))
        .route("/api/v1/dead-letters", get(list_dead_letters))
        .route("/api/v1/ledger", get(ledger))
        .route("/api/v1/actors", get(actors))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/metrics", get(engine_metrics))
        .route("/api/v1/openapi.json", get(openapi_document))
        .route("/api/v1/session", get(dashboard::session))
        .route("/api/v1/live", get(dashboard::live))
        .merge(keys::routes())
        .merge(rules::routes())
        .merge(catalog::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            engine.clone(),
            to_duty_owner,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            engine.clone(),
            auth::authorize,
        ))
        .route("/healthz", get(healthz))
        // Authenticated as each webhook says, not by the middleware above.
        .merge(webhooks::routes())
        // Pages that send a caller without a live cookie to the login form.
        .merge(dashboard::routes())
        .layer(Extension(dashboard))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(engine)
}

/// With several engines active at once, the rules and timers are partition 0's owner's
/// (it takes the triggers and fires the timers): a change to a rule, and the timers' view,
/// are forwarded there from any other engine.
async fn to_duty_owner(
    State(engine): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(partitions) = engine.partitions() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let changes_rules = path.starts_with("/api/v1/rules")
        && request.method() != axum::http::Method::GET
        && !path.ends_with("/test");
    if partitions.held.contains_key(&0) || !(changes_rules || path == "/api/v1/timers") {
        return next.run(request).await;
    }
    let holder = engine.partition_holder(0).await;
    standby::to_partition_owner(partitions, 0, holder, request).await
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route {} (the API is under /api/v1; see docs/api.md)",
        uri.path()
    ))
}

async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    error::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{} does not take {method}", uri.path()),
    )
}

/// `/metrics` (the engine's, gauges included) and `/healthz` without credentials, for a
/// listener the operator names for scraping (`--metrics-http`).
pub fn open_metrics_app(engine: AppState) -> Router {
    Router::new()
        .route("/metrics", get(engine_metrics))
        .route("/healthz", get(healthz))
        .with_state(engine)
}

/// What a process without the API serves (`sluice worker`): `/metrics` and `/healthz`.
pub fn metrics_app() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/metrics", get(metrics))
}

/// The process's counters and histograms, and gauges read from the engine at scrape time:
/// each action's queue, active count and limit (per concurrency key too), and workers.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "engine",
    responses((status = 200, description = "Prometheus / OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
async fn engine_metrics(State(engine): State<AppState>) -> impl IntoResponse {
    let mut gauges = sluice_telemetry::metrics::Gauges::default();
    let stats = engine.supervisor_stats().await;
    let now = chrono::Utc::now();
    let per_action = |value: &dyn Fn(&sluice_engine::SupervisorStats) -> Option<f64>| {
        stats
            .iter()
            .filter_map(|s| Some((vec![s.action.to_string()], value(s)?)))
            .collect::<Vec<_>>()
    };
    let per_key = |value: &dyn Fn(&sluice_engine::KeyQueueStats) -> f64| {
        stats
            .iter()
            .flat_map(|s| {
                s.keys
                    .iter()
                    .map(|k| (vec![s.action.to_string(), k.key.clone()], value(k)))
            })
            .collect::<Vec<_>>()
    };
    gauges.add(
        "sluice_queue_length",
        "Executions waiting at an action's gate.",
        &["action"],
        &per_action(&|s| Some(s.queue_length as f64)),
    );
    gauges.add(
        "sluice_active_executions",
        "Executions admitted and not yet finished, by action.",
        &["action"],
        &per_action(&|s| Some(s.active_count as f64)),
    );
    gauges.add(
        "sluice_max_concurrent",
        "An action's concurrency limit (actions with one only).",
        &["action"],
        &per_action(&|s| s.max_concurrent.map(|m| m as f64)),
    );
    gauges.add(
        "sluice_oldest_queued_seconds",
        "How long the oldest queued execution of an action has waited.",
        &["action"],
        &per_action(&|s| {
            s.oldest_queued_at
                .map(|at| (now - at).as_seconds_f64().max(0.0))
        }),
    );
    gauges.add(
        "sluice_key_queue_length",
        "Executions waiting, per concurrency key.",
        &["action", "key"],
        &per_key(&|k| k.queue_length as f64),
    );
    gauges.add(
        "sluice_key_active_executions",
        "Executions admitted and not yet finished, per concurrency key.",
        &["action", "key"],
        &per_key(&|k| k.active_count as f64),
    );
    let workers = engine.workers();
    gauges.add(
        "sluice_worker_capacity",
        "Actions a worker runs at once, from its heartbeats.",
        &["worker"],
        &workers
            .iter()
            .filter(|w| !w.lost)
            .map(|w| (vec![w.name.clone()], w.capacity as f64))
            .collect::<Vec<_>>(),
    );
    gauges.add(
        "sluice_worker_running",
        "Executions a worker is running, from its heartbeats.",
        &["worker"],
        &workers
            .iter()
            .filter(|w| !w.lost)
            .map(|w| (vec![w.name.clone()], w.running.len() as f64))
            .collect::<Vec<_>>(),
    );
    gauges.add(
        "sluice_workers",
        "Workers known to the engine, live or lost.",
        &["state"],
        &[
            (
                vec!["live".into()],
                workers.iter().filter(|w| !w.lost).count() as f64,
            ),
            (
                vec!["lost".into()],
                workers.iter().filter(|w| w.lost).count() as f64,
            ),
        ],
    );
    let lags = engine.consumer_lag().await;
    let per_consumer = |value: &dyn Fn(&sluice_bus::ConsumerLag) -> Option<f64>| {
        lags.iter()
            .filter_map(|l| Some((vec![l.stream.clone(), l.consumer.clone()], value(l)?)))
            .collect::<Vec<_>>()
    };
    gauges.add(
        "sluice_consumer_pending",
        "Messages a durable consumer has not been given yet.",
        &["stream", "consumer"],
        &per_consumer(&|l| Some(l.pending as f64)),
    );
    gauges.add(
        "sluice_consumer_ack_pending",
        "Messages a durable consumer was given and has not acknowledged.",
        &["stream", "consumer"],
        &per_consumer(&|l| Some(l.ack_pending as f64)),
    );
    gauges.add(
        "sluice_consumer_oldest_unprocessed_seconds",
        "Age of the oldest message a durable consumer has not acknowledged (0 when none).",
        &["stream", "consumer"],
        &per_consumer(&|l| {
            Some(
                l.oldest_unprocessed_at
                    .map_or(0.0, |at| (now - at).as_seconds_f64().max(0.0)),
            )
        }),
    );
    prometheus_text(sluice_telemetry::metrics().render_with(&gauges))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTokenRequest {
    /// What the token is for, shown in listings.
    name: Option<String>,
    scope: String,
    /// `30d`, `12h`, `90m`; never without it.
    expires: Option<String>,
}

/// Creates a token; the answer holds the token itself, which is never shown again.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = NewTokenRequest,
    responses((status = 201, description = "The token, with its secret shown this once", body = Value))
)]
async fn create_token(
    State(engine): State<AppState>,
    Extension(caller): Extension<auth::Caller>,
    Body(request): Body<NewTokenRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scope: sluice_core::Scope = request
        .scope
        .parse()
        .map_err(|e: sluice_core::auth::UnknownScope| ApiError::Unprocessable(e.to_string()))?;
    let expires = request
        .expires
        .as_deref()
        .map(auth::parse_expiry)
        .transpose()
        .map_err(ApiError::Unprocessable)?;
    let name = request.name.unwrap_or_else(|| format!("{scope} token"));
    let (token, secret) = auth::issue(engine.store(), &name, scope, expires).await?;
    tracing::info!(token_id = token.id, name, %scope, by = caller.name, "token created");
    let mut body = json!(token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Every token, without its secret.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    responses((status = 200, description = "Every token, without its secret", body = Vec<sluice_store::Token>))
)]
async fn list_tokens(State(engine): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(engine.store().list_tokens().await?)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    responses((status = 200, description = "Revoked", body = Value))
)]
async fn revoke_token(
    State(engine): State<AppState>,
    Extension(caller): Extension<auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("token id {id:?} is not a number")))?;
    if !engine.store().revoke_token(id).await? {
        return Err(ApiError::NotFound(format!(
            "no token {id}, or it was revoked already"
        )));
    }
    tracing::info!(token_id = id, by = caller.name, "token revoked");
    Ok(Json(json!({ "id": id, "revoked": true })))
}

fn parse_id(id: &str) -> Result<ExecutionId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("execution id {id:?} is not a number")))
}

#[utoipa::path(
    post,
    path = "/api/v1/executions/{id}/cancel",
    tag = "executions",
    params(("id" = i64, Path, description = "The execution's id")),
    responses((status = 202, description = "Cancelling: queued ones at once, running ones by their worker", body = Value))
)]
async fn cancel_execution(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let outcome = engine.cancel(id).await?;
    let execution = engine.store().get_execution(id).await?;
    let status = execution.map(|e| e.status);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "cancel": outcome, "status": status })),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// What an execution's result kept of its output.
#[derive(Serialize, utoipa::ToSchema)]
struct Output {
    id: ExecutionId,
    status: ExecutionStatus,
    stdout: String,
    stderr: String,
}

/// One Server-Sent Event of an execution's output followed live.
#[derive(utoipa::ToSchema)]
struct OutputEvent {
    event: OutputEventKind,
    /// `stdout` and `stderr`: the text, as a JSON string; `end`: the final status.
    data: String,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
enum OutputEventKind {
    Stdout,
    Stderr,
    End,
}

impl OutputEvent {
    fn piece(stream: &str, text: &str) -> Self {
        Self {
            event: if stream == "stderr" {
                OutputEventKind::Stderr
            } else {
                OutputEventKind::Stdout
            },
            data: serde_json::to_string(text).unwrap_or_default(),
        }
    }

    fn end(status: ExecutionStatus) -> Self {
        Self {
            event: OutputEventKind::End,
            data: status.as_str().to_owned(),
        }
    }

    fn into_sse(self) -> axum::response::sse::Event {
        let name = match self.event {
            OutputEventKind::Stdout => "stdout",
            OutputEventKind::Stderr => "stderr",
            OutputEventKind::End => "end",
        };
        axum::response::sse::Event::default()
            .event(name)
            .data(self.data)
    }
}

/// The output an execution's result kept: `(stdout, stderr)`.
fn kept_output(execution: &sluice_store::Execution) -> (String, String) {
    let text = |name: &str| {
        execution
            .result
            .as_ref()
            .and_then(|r| r.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (text("stdout"), text("stderr"))
}

/// An execution's output. Without `follow`, what its result kept, as JSON. With
/// `follow=true`, Server-Sent Events: each piece from the first, then as the worker reads
/// it (`event: stdout` or `stderr`, the text as a JSON string), then `event: end` with the
/// final status; for an execution that already ended, what its result kept, then `end`.
#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}/output",
    tag = "executions",
    params(("id" = i64, Path, description = "The execution's id"), OutputQuery),
    responses((status = 200, description = "What its result kept; with follow=true, Server-Sent Events (stdout, stderr, end)", content((Output = "application/json"), (OutputEvent = "text/event-stream"))))
)]
async fn execution_output(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<OutputQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;

    let id = parse_id(&id)?;
    let found = |execution: Option<sluice_store::Execution>| {
        execution.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))
    };
    if !query.follow {
        let execution = found(engine.store().get_execution(id).await?)?;
        let (stdout, stderr) = kept_output(&execution);
        return Ok(Json(Output {
            id,
            status: execution.status,
            stdout,
            stderr,
        })
        .into_response());
    }
    // Listening first, then reading the status: no piece falls between the two.
    let mut pieces = engine
        .follow_output(id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .boxed();
    let now = found(engine.store().get_execution(id).await?)?;
    let piece = |stream: &str, text: &str| OutputEvent::piece(stream, text).into_sse();
    let end = |status: ExecutionStatus| OutputEvent::end(status).into_sse();
    let (events, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        if now.status.is_terminal() {
            // It ended before anyone listened: what the result kept.
            let (stdout, stderr) = kept_output(&now);
            for (stream, text) in [("stdout", stdout), ("stderr", stderr)] {
                if !text.is_empty() {
                    let _ = events.send(piece(stream, &text)).await;
                }
            }
            let _ = events.send(end(now.status)).await;
            return;
        }
        let mut check = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                // The client went away: stop following (and drop the consumer).
                () = events.closed() => return,
                chunk = pieces.next() => {
                    let Some(chunk) = chunk else { return };
                    if events.send(piece(&chunk.stream, &chunk.text)).await.is_err() {
                        return;
                    }
                }
                _ = check.tick() => {
                    let Ok(Some(execution)) = engine.store().get_execution(id).await else {
                        continue;
                    };
                    if !execution.status.is_terminal() {
                        continue;
                    }
                    // The worker sends every piece before the result that ends it; what is
                    // still on its way arrives within moments.
                    let settle = std::time::Duration::from_millis(300);
                    while let Ok(Some(chunk)) = tokio::time::timeout(settle, pieces.next()).await {
                        let _ = events.send(piece(&chunk.stream, &chunk.text)).await;
                    }
                    let _ = events.send(end(execution.status)).await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A workflow execution's tasks as its action defines them now, with the transitions
/// between them, and every child it started, by task.
#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}/tasks",
    tag = "executions",
    params(("id" = i64, Path, description = "The workflow execution's id")),
    responses((status = 200, description = "The workflow's tasks (name, action, with-items, transitions) and its children by task", body = Value))
)]
async fn workflow_tasks(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let execution = stored(&engine, id).await?;
    let catalog = engine.catalog();
    let workflow = catalog
        .actions
        .get(&execution.action)
        .and_then(|action| action.workflow.clone())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "execution {id} runs {}, which is not a workflow (now)",
                execution.action
            ))
        })?;
    let tasks: Vec<Value> = workflow
        .tasks
        .iter()
        .map(|(name, task)| {
            json!({
                "name": name,
                "action": task.action.as_ref().map(|a| a.to_string()),
                "with": task.with.as_ref().map(|w| json!({"concurrency": w.concurrency})),
                "start": workflow.start.contains(name),
                "next": task.next.iter().map(|t| json!({
                    "when": t.when.as_ref().map(|w| w.source.clone()),
                    "do": t.targets,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let children: Vec<Value> = engine
        .store()
        .workflow(id)
        .await?
        .map(|record| record.children)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            json!({
                "task": c.task,
                "round": c.round,
                "item": c.item,
                "attempt": c.attempt,
                "execution_id": c.execution_id,
                "status": c.status,
            })
        })
        .collect();
    Ok(Json(json!({ "tasks": tasks, "children": children })))
}

/// Which executions a bulk cancel takes: at least one of these.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelFilter {
    action: Option<String>,
    rule: Option<String>,
    status: Option<String>,
    parent: Option<i64>,
    since: Option<String>,
    until: Option<String>,
}

/// Cancels every unfinished execution matching the filter, oldest first; what became of
/// each.
#[utoipa::path(
    post,
    path = "/api/v1/executions/cancel",
    tag = "executions",
    request_body = CancelFilter,
    responses((status = 200, description = "How many matched, and what became of each", body = Value))
)]
async fn cancel_executions(
    State(engine): State<AppState>,
    Body(filter): Body<CancelFilter>,
) -> Result<Json<Value>, ApiError> {
    let CancelFilter {
        action,
        rule,
        status,
        parent,
        since,
        until,
    } = filter;
    if action.is_none() && rule.is_none() && status.is_none() && parent.is_none() && since.is_none()
    {
        return Err(ApiError::BadRequest(
            "name what to cancel: action, rule, status, parent or since (and until)".into(),
        ));
    }
    let status = status
        .map(|s| s.parse::<ExecutionStatus>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut filter = ExecutionFilter {
        action,
        status,
        limit: Some(1000),
        before: None,
        parent,
        rule,
        since: instant("since", since.as_deref())?,
        until: instant("until", until.as_deref())?,
    };
    let mut matching = Vec::new();
    loop {
        let page = engine.store().list_executions(&filter).await?;
        let last = page.last().map(|e| e.id.0);
        matching.extend(
            page.into_iter()
                .filter(|e| !e.status.is_terminal())
                .map(|e| e.id),
        );
        match last {
            Some(last) => filter.before = Some(last),
            None => break,
        }
    }
    matching.reverse();
    let mut outcomes = Vec::with_capacity(matching.len());
    for id in matching {
        let outcome = match engine.cancel(id).await {
            Ok(outcome) => json!({ "id": id, "cancel": outcome }),
            // It ended meanwhile.
            Err(sluice_engine::CancelError::Finished(_, status)) => {
                json!({ "id": id, "finished": status })
            }
            Err(e) => return Err(e.into()),
        };
        outcomes.push(outcome);
    }
    Ok(Json(
        json!({ "matched": outcomes.len(), "executions": outcomes }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rerun {
    /// Parameters that replace the original's; the others stay as they were.
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[utoipa::path(
    post,
    path = "/api/v1/executions/{id}/re-run",
    tag = "executions",
    params(("id" = i64, Path, description = "The execution's id")),
    request_body = Rerun,
    responses((status = 201, description = "The new execution, naming the one it re-runs", body = sluice_store::Execution))
)]
async fn rerun_execution(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Body(request): Body<Rerun>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = engine.rerun(parse_id(&id)?, request.parameters).await?;
    created(&engine, id).await
}

/// `201` with an execution just requested.
async fn created(
    engine: &AppState,
    id: ExecutionId,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let execution = engine
        .store()
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("execution {id} vanished")))?;
    Ok((StatusCode::CREATED, shown(&execution)))
}

#[utoipa::path(
    get,
    path = "/api/v1/actions/{action}/queue-stats",
    tag = "engine",
    params(("action" = String, Path, description = "The action, pack.name")),
    responses((status = 200, description = "Queue length, active count and limit, per key, oldest wait", body = Value))
)]
async fn queue_stats(
    State(engine): State<AppState>,
    Path(action): Path<String>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    if let Some(stats) = engine.queue_stats(&action).await {
        return Ok(Json(json!(stats)).into_response());
    }
    // With several engines active at once, another engine's action: its owner answers.
    if let Some(partitions) = engine.partitions()
        && let Ok(action_ref) = action.parse::<sluice_core::ActionRef>()
        && engine.catalog().action(&action_ref).is_some()
        && let Some((partition, holder)) = engine.owner_of(&action_ref).await
    {
        return Ok(standby::to_partition_owner(partitions, partition, holder, request).await);
    }
    Err(ApiError::NotFound(format!("unknown action {action}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "engine",
    responses((status = 200, description = "Workers: capacity, what they run, last heartbeat", body = Vec<Value>))
)]
async fn workers(State(engine): State<AppState>) -> Json<Value> {
    Json(json!(engine.workers()))
}

#[utoipa::path(
    get,
    path = "/api/v1/timers",
    tag = "rules",
    responses((status = 200, description = "Timer rules: schedule, next and last tick", body = Vec<Value>))
)]
async fn timers(State(engine): State<AppState>) -> Json<Value> {
    Json(json!(engine.timers()))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "engine",
    responses((status = 200, description = "The engine is up: `role` is `primary` (it runs the execution core), on a standby `standby` with the `primary` it forwards to, or with several engines active at once `partitioned` with the `partitions` it owns `of` how many", body = Value)),
    security(())
)]
async fn healthz(State(engine): State<AppState>) -> Json<Value> {
    if let Some(partitions) = engine.partitions() {
        return Json(json!({
            "status": "ok",
            "role": "partitioned",
            "store": engine.store().backend_name(),
            "partitions": partitions.held.keys().collect::<Vec<_>>(),
            "of": partitions.count,
        }));
    }
    let fence = engine.store().fence().map(|f| f.token);
    Json(json!({
        "status": "ok",
        "role": "primary",
        "store": engine.store().backend_name(),
        "lease_token": fence,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    action: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
    parent: Option<i64>,
    rule: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/executions",
    tag = "executions",
    params(ListQuery),
    responses((status = 200, description = "Executions, newest first", body = Vec<sluice_store::Execution>))
)]
async fn list_executions(
    State(engine): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = query
        .status
        .map(|s| s.parse::<ExecutionStatus>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let filter = ExecutionFilter {
        action: query.action,
        status,
        limit: query.limit,
        before: query.before,
        parent: query.parent,
        rule: query.rule,
        since: instant("since", query.since.as_deref())?,
        until: instant("until", query.until.as_deref())?,
    };
    let executions = engine.store().list_executions(&filter).await?;
    Ok(shown(&executions))
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}",
    tag = "executions",
    params(("id" = i64, Path, description = "The execution's id")),
    responses((status = 200, description = "The execution with its status history", body = sluice_store::Execution))
)]
async fn get_execution(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    Ok(shown(&stored(&engine, id).await?))
}

/// Execution `id` from the store, or `404` naming it.
async fn stored(engine: &AppState, id: ExecutionId) -> Result<sluice_store::Execution, ApiError> {
    engine
        .store()
        .get_execution(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))
}

/// What the store holds, as callers see it: sealed secrets masked.
fn shown(value: &impl Serialize) -> Json<Value> {
    Json(sluice_core::secrets::masked(&json!(value)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateExecution {
    action: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[utoipa::path(
    post,
    path = "/api/v1/executions",
    tag = "executions",
    request_body = CreateExecution,
    responses((status = 201, description = "The execution as stored: `requested`, or already `scheduled` when its action had a free slot and nothing queued", body = sluice_store::Execution))
)]
async fn create_execution(
    State(engine): State<AppState>,
    Body(request): Body<CreateExecution>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = engine.submit(&request.action, request.parameters).await?;
    created(&engine, id).await
}

#[derive(Serialize)]
struct ActionView<'a> {
    #[serde(flatten)]
    action: &'a sluice_pack::Action,
    pack: &'a str,
}

#[utoipa::path(
    get,
    path = "/api/v1/actions",
    tag = "catalog",
    responses((status = 200, description = "Every action: parameters, runner, policy", body = Vec<Value>))
)]
async fn list_actions(State(engine): State<AppState>) -> Json<Value> {
    let catalog = engine.catalog();
    let actions: Vec<ActionView<'_>> = catalog
        .actions
        .values()
        .map(|action| ActionView {
            pack: action.action_ref.pack(),
            action,
        })
        .collect();
    Json(json!(actions))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    limit: Option<u32>,
}

/// Events, newest first: `trigger`, `status` (accepted or rejected), `since`, `until`,
/// `before` (the next page), `limit`, and at most one `payload.<path>=<value>`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(
        ("trigger" = Option<String>, Query, description = "Only this trigger's events"),
        ("status" = Option<String>, Query, description = "accepted or rejected"),
        ("since" = Option<String>, Query, description = "An RFC 3339 time, or a duration back from now (1h)"),
        ("until" = Option<String>, Query, description = "An RFC 3339 time, or a duration back from now"),
        ("before" = Option<i64>, Query, description = "The next page: events older than this id"),
        ("limit" = Option<i64>, Query, description = "At most this many (1 to 1000)"),
    ),
    responses((status = 200, description = "Events, newest first", body = Vec<sluice_store::Event>))
)]
async fn list_events(
    State(engine): State<AppState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let number = |name: &str| {
        query
            .get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("{name}={v:?} is not a number")))
            })
            .transpose()
    };
    let mut payload = None;
    for (key, value) in &query {
        match key.as_str() {
            "trigger" | "status" | "since" | "until" | "before" | "limit" => {}
            _ => {
                let path = key.strip_prefix("payload.").ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown filter {key:?} (known: trigger, status, since, until, before, limit, payload.<path>)"
                    ))
                })?;
                let well_formed = path.split('.').all(|segment| {
                    !segment.is_empty()
                        && segment
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                });
                if !well_formed || payload.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "{key}: one payload filter, a dotted path of letters, digits, _ and -"
                    )));
                }
                payload = Some((path.to_owned(), value.clone()));
            }
        }
    }
    let filter =
        sluice_store::EventFilter {
            trigger: query.get("trigger").cloned(),
            status: query.get("status").map(|s| s.parse()).transpose().map_err(
                |e: sluice_core::status::UnknownStatus| ApiError::BadRequest(e.to_string()),
            )?,
            limit: number("limit")?.map(|n| n.clamp(1, 1000) as u32),
            before: number("before")?,
            since: instant("since", query.get("since").map(String::as_str))?,
            until: instant("until", query.get("until").map(String::as_str))?,
            payload,
        };
    Ok(shown(&engine.store().find_events(&filter).await?))
}

/// One event, its enforcements, and how every rule on its trigger judges its payload now:
/// matched or not, and if not the first check that failed with the value it saw.
#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    tag = "events",
    params(("id" = i64, Path, description = "The event's id")),
    responses((status = 200, description = "The event, its enforcements, and how each rule on its trigger judges it", body = Value))
)]
async fn get_event(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = sluice_core::EventId(
        id.parse()
            .map_err(|_| ApiError::BadRequest(format!("event id {id:?} is not a number")))?,
    );
    let event = engine
        .store()
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    let enforcements = engine.store().enforcements_of(id).await?;
    let rules: Vec<Value> = match &event.payload {
        // A rejected event never reached the rules.
        None => Vec::new(),
        Some(payload) => engine
            .explain(&event.trigger, payload)
            .into_iter()
            .map(|verdict| {
                let execution = enforcements
                    .iter()
                    .find(|e| e.rule == verdict.rule)
                    .map(|e| e.execution_id);
                let mut shown = json!(verdict);
                shown["execution"] = json!(execution);
                shown
            })
            .collect(),
    };
    let mut body = json!(event);
    body["enforcements"] = json!(enforcements);
    body["rules"] = json!(rules);
    Ok(Json(sluice_core::secrets::masked(&body)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EnforcementQuery {
    rule: Option<String>,
    event: Option<i64>,
    limit: Option<u32>,
    before: Option<i64>,
}

/// Which rule fired on which event and the execution it requested, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/enforcements",
    tag = "events",
    params(EnforcementQuery),
    responses((status = 200, description = "Which rule fired on which event, newest first", body = Vec<sluice_store::Enforcement>))
)]
async fn list_enforcements(
    State(engine): State<AppState>,
    Query(query): Query<EnforcementQuery>,
) -> Result<Json<Value>, ApiError> {
    let found = engine
        .store()
        .list_enforcements(
            query.rule.as_deref(),
            query.event.map(sluice_core::EventId),
            query.limit.unwrap_or(50),
            query.before,
        )
        .await?;
    Ok(Json(json!(found)))
}

#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    tag = "engine",
    params(LimitQuery),
    responses((status = 200, description = "Messages given up on, with why", body = Vec<sluice_store::DeadLetterRecord>))
)]
async fn list_dead_letters(
    State(engine): State<AppState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        engine
            .store()
            .list_dead_letters(query.limit.unwrap_or(50))
            .await?
    )))
}

/// Counts that must add up: events, enforcements, executions by status, and any
/// execution whose history does not show exactly one end.
#[utoipa::path(
    get,
    path = "/api/v1/ledger",
    tag = "engine",
    responses((status = 200, description = "Counts that must add up", body = sluice_store::Ledger))
)]
async fn ledger(State(engine): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(engine.store().ledger().await?)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ActorsQuery {
    action: Option<String>,
}

/// The live actor tree; `?action=REF` keeps only that action's supervisor.
#[utoipa::path(
    get,
    path = "/api/v1/actors",
    tag = "engine",
    params(ActorsQuery),
    responses((status = 200, description = "The live actor tree", body = Value))
)]
async fn actors(
    State(engine): State<AppState>,
    Query(query): Query<ActorsQuery>,
) -> Result<Json<Value>, ApiError> {
    let tree = engine.actor_tree().await;
    let tree = match query.action {
        None => tree,
        Some(action) => {
            let action: sluice_core::ActionRef = action
                .parse()
                .map_err(|e| ApiError::BadRequest(format!("action {action:?}: {e}")))?;
            if engine.catalog().action(&action).is_none() {
                return Err(ApiError::NotFound(format!("no action {action}")));
            }
            tree.only_action(&action)
        }
    };
    Ok(Json(json!(tree)))
}

/// The API's OpenAPI 3.1 document, generated from the handlers' own annotations and types
/// (utoipa), never written by hand.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Sluice's HTTP API: executions, rules, events, packs, the datastore, tokens and the engine's own state. Every route but /healthz needs a token (Authorization: Bearer, or St2-Api-Key); errors are RFC 9457 problem details. See docs/api.md."
    ),
    paths(
        crate::list_executions,
        crate::create_execution,
        crate::get_execution,
        crate::cancel_executions,
        crate::cancel_execution,
        crate::rerun_execution,
        crate::execution_output,
        crate::workflow_tasks,
        crate::list_actions,
        crate::queue_stats,
        crate::workers,
        crate::timers,
        crate::list_events,
        crate::get_event,
        crate::list_enforcements,
        crate::list_dead_letters,
        crate::ledger,
        crate::actors,
        crate::list_tokens,
        crate::create_token,
        crate::revoke_token,
        crate::engine_metrics,
        crate::dashboard::session,
        crate::dashboard::live,
        crate::healthz,
        openapi_document,
        crate::rules::list,
        crate::rules::show,
        crate::rules::create,
        crate::rules::replace,
        crate::rules::remove,
        crate::rules::enable,
        crate::rules::disable,
        crate::rules::test,
        crate::keys::list,
        crate::keys::read,
        crate::keys::write,
        crate::keys::remove,
        crate::keys::rotate,
        crate::catalog::list_packs,
        crate::catalog::show_pack,
        crate::catalog::install_pack,
        crate::catalog::reload_pack,
        crate::catalog::remove_pack,
        crate::catalog::show_action,
        crate::catalog::list_triggers,
        crate::catalog::show_trigger,
        crate::webhooks::receive,
    ),
    components(schemas(error::Problem)),
    modifiers(&OpenApiSecurity, &OpenApiProblems),
    security(("bearer" = []), ("st2_api_key" = []))
)]
struct ApiDoc;

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "engine",
    responses((status = 200, description = "This document", body = Value))
)]
async fn openapi_document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

//! The Sluice engine: it turns trigger events into executions and shepherds each one to
//! the moment a worker takes it, then records what the worker reports.
//!
//! ```text
//! engine (root actor)
//!  ├─ ingestor             TRIGGERS consumer: event -> rules -> executions     (ingest.rs)
//!  ├─ completions          STATUS consumer: worker reports -> store -> supervisor (completion.rs)
//!  ├─ dead-letters         DEADLETTER consumer: given-up messages -> store     (deadletter.rs)
//!  ├─ workers              heartbeats: finds lost workers                      (monitor.rs)
//!  └─ action/<ref> ×N      admission gate and active set of one action       (supervisor.rs,
//!       │                                                                      gate.rs)
//!       └─ execution/<id>  one per admitted execution until it completes      (execution.rs)
//!            └─ workflow/<id>  a workflow execution's tasks, in order          (workflow.rs)
//! ```
//!
//! [`Engine::start`] rebuilds every queue and active set from the store before it consumes
//! anything, so a restart resumes where the last run stopped.

mod backend;
mod completion;
mod consumer;
mod context;
mod deadletter;
mod execution;
pub mod gate;
mod ingest;
mod monitor;
pub mod rules;
mod supervisor;
mod tree;
mod workflow;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Map, Value};
use sluice_bus::{Bus, Settle};
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_pack::{Catalog, params};
use sluice_store::Store;
use tracing::{Instrument as _, error, info, warn};

use crate::backend::{ActorContext, Live};
use crate::context::Shared;
use crate::execution::Phase;
use crate::supervisor::{ActionSupervisor, Pending, SupervisorArgs, SupervisorHandle};

pub use monitor::WorkerInfo;
pub use supervisor::{AdmittedExecution, CancelOutcome, KeyQueueStats, SupervisorStats};
pub use tree::{ActorNode, ExecutionView, WorkerView};

type Routes = Arc<HashMap<ActionRef, SupervisorHandle>>;

/// What the engine runs with.
pub struct EngineConfig {
    /// Prefix of the engine's actor names; unique within the process.
    pub name: String,
    pub catalog: Arc<Catalog>,
    pub store: Store,
    pub bus: Bus,
    /// Consume the TRIGGERS stream (switch off for an API-only engine).
    pub ingest_triggers: bool,
    /// A worker silent this long is lost: its executions end `abandoned` (or are retried).
    pub worker_loss_window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("failed to start actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Bus(#[from] sluice_bus::BusError),
}

/// Why a request for an execution was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown action {action} (known: {known})")]
    UnknownAction { action: String, known: String },
    #[error("action {0} is disabled")]
    Disabled(ActionRef),
    #[error(transparent)]
    InvalidParameters(#[from] params::ParamErrors),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
}

/// Why a cancel request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no execution {0}")]
    NotFound(ExecutionId),
    #[error("execution {0} already finished: {1}")]
    Finished(ExecutionId, ExecutionStatus),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Bus(sluice_bus::BusError),
}

/// A running engine. Dropping it leaves the actors running; call [`Engine::shutdown`].
pub struct Engine {
    shared: Arc<Shared>,
    routes: Routes,
    root: ActorRef<()>,
    ingestor: Option<ActorRef<()>>,
    completions: ActorRef<()>,
    dead_letters: ActorRef<()>,
    workers: monitor::Workers,
}

/// The root of the engine's actor tree. Its children are long-lived; one ending is logged,
/// never a reason to stop the engine (ractor's default would stop it).
struct EngineRoot;

impl Actor for EngineRoot {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(child, err) => {
                error!(actor = ?child.get_name(), error = %err, "engine actor failed")
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                info!(actor = ?child.get_name(), ?reason, "engine actor stopped")
            }
            _ => {}
        }
        Ok(())
    }
}

impl Engine {
    pub async fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            catalog: config.catalog,
            store: config.store,
            bus: config.bus,
            store_health: Default::default(),
        });
        let (root, _) = Actor::spawn(Some(config.name.clone()), EngineRoot, ()).await?;
        let actor_ctx = Arc::new(ActorContext {
            name: config.name.clone(),
            backend: Arc::new(Live {
                store: shared.store.clone(),
                bus: shared.bus.clone(),
            }),
            shared: Some(shared.clone()),
        });
        let mut routes = HashMap::new();
        for action in shared.catalog.actions.values() {
            let args = SupervisorArgs {
                ctx: actor_ctx.clone(),
                action: action.clone(),
            };
            routes.insert(
                action.action_ref.clone(),
                ActionSupervisor::spawn(args, root.get_cell()).await?,
            );
        }
        let routes: Routes = Arc::new(routes);
        let workers = monitor::Workers::default();
        rebuild(&shared, &routes, &workers).await?;

        let heartbeats = shared
            .bus
            .client()
            .subscribe(sluice_bus::HEARTBEAT_SUBJECTS)
            .await
            .map_err(|e| sluice_bus::BusError::Read {
                what: "heartbeats".into(),
                message: e.to_string(),
            })?;
        let (w, r, window) = (workers.clone(), routes.clone(), config.worker_loss_window);
        let client = shared.bus.client().clone();
        consumer::spawn_loop(
            format!("{}/workers", config.name),
            root.get_cell(),
            Box::new(move |cancel| {
                Box::pin(monitor::run(client, heartbeats, w, r, window, cancel))
            }),
        )
        .await?;

        let settle = |stream, label| {
            Settle::new(
                shared.bus.clone(),
                stream,
                "engine",
                label,
                config.name.clone(),
            )
        };

        let consumer = shared.bus.consumer("DEADLETTER", "engine").await?;
        let (s, settler) = (shared.clone(), settle("DEADLETTER", "dead_letters"));
        let dead_letters = consumer::spawn_loop(
            format!("{}/dead-letters", config.name),
            root.get_cell(),
            Box::new(move |cancel| {
                Box::pin(async move {
                    consumer::consume_batches(consumer, cancel, |batch| async {
                        for message in batch {
                            deadletter::handle_dead_letter(&s, &settler, message).await;
                        }
                    })
                    .await;
                })
            }),
        )
        .await?;

        let consumer = shared.bus.consumer("STATUS", "engine").await?;
        let (s, r, settler) = (shared.clone(), routes.clone(), settle("STATUS", "status"));
        let completions = consumer::spawn_loop(
            format!("{}/completions", config.name),
            root.get_cell(),
            Box::new(move |cancel| {
                Box::pin(async move {
                    consumer::consume_batches(consumer, cancel, |batch| {
                        completion::handle_statuses(&s, &r, &settler, batch)
                    })
                    .await;
                })
            }),
        )
        .await?;

        let ingestor = if config.ingest_triggers {
            let consumer = shared.bus.consumer("TRIGGERS", "engine").await?;
            let (s, r, settler) = (
                shared.clone(),
                routes.clone(),
                settle("TRIGGERS", "triggers"),
            );
            Some(
                consumer::spawn_loop(
                    format!("{}/ingestor", config.name),
                    root.get_cell(),
                    Box::new(move |cancel| {
                        Box::pin(async move {
                            consumer::consume_batches(consumer, cancel, |batch| {
                                ingest::handle_triggers(&s, &r, &settler, batch)
                            })
                            .await;
                        })
                    }),
                )
                .await?,
            )
        } else {
            None
        };
        info!(
            engine = config.name,
            actions = routes.len(),
            store = shared.store.backend_name(),
            "engine started"
        );
        Ok(Self {
            shared,
            routes,
            root,
            ingestor,
            completions,
            dead_letters,
            workers,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.shared.catalog
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Requests an execution directly (API, CLI): parameters are checked against the action,
    /// the execution is stored `requested` and joins its action's queue.
    pub async fn submit(
        &self,
        action: &str,
        given: Map<String, Value>,
    ) -> Result<ExecutionId, SubmitError> {
        let unknown = || SubmitError::UnknownAction {
            action: action.to_owned(),
            known: self
                .shared
                .catalog
                .actions
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let action_ref: ActionRef = action.parse().map_err(|_| unknown())?;
        let definition = self
            .shared
            .catalog
            .action(&action_ref)
            .ok_or_else(unknown)?;
        if !definition.enabled {
            return Err(SubmitError::Disabled(action_ref));
        }
        let parameters = params::resolve(definition, given)?;
        let requested = tracing::info_span!(
            "execution.requested",
            action = %action_ref,
            execution_id = tracing::field::Empty,
        );
        let trace = sluice_telemetry::trace_headers(&requested);
        let id = self
            .shared
            .store
            .create_execution(
                &action_ref,
                &params::redact(definition, &parameters),
                None,
                trace.get("traceparent").map(String::as_str),
            )
            .instrument(requested.clone())
            .await?;
        requested.record("execution_id", id.0);
        if let Some(supervisor) = self.routes.get(&action_ref) {
            supervisor.enqueue(Pending::new(
                id,
                1,
                &action_ref,
                parameters,
                Utc::now(),
                trace,
            ));
        }
        Ok(id)
    }

    /// Cancels an execution, following the ownership model: one not yet handed to a worker
    /// is cancelled here; one a worker holds is cancelled by that worker, which is asked.
    pub async fn cancel(&self, id: ExecutionId) -> Result<CancelOutcome, CancelError> {
        let execution = self
            .shared
            .store
            .get_execution(id)
            .await?
            .ok_or(CancelError::NotFound(id))?;
        if execution.status.is_terminal() {
            return Err(CancelError::Finished(id, execution.status));
        }
        let outcome = match self.routes.get(&execution.action) {
            Some(supervisor) => supervisor.cancel(id).await,
            None => CancelOutcome::NotHere,
        };
        if outcome != CancelOutcome::NotHere {
            return Ok(outcome);
        }
        // Not held by a supervisor (the engine is draining, or the action is gone): the
        // store and the workers are asked directly.
        let reason = "cancelled before it started";
        if self
            .shared
            .store
            .end_before_handoff(id, ExecutionStatus::Cancelled, reason)
            .await?
        {
            return Ok(CancelOutcome::Cancelled);
        }
        self.shared
            .bus
            .publish_cancel(id)
            .await
            .map_err(CancelError::Bus)?;
        Ok(CancelOutcome::Requested)
    }

    /// The queue figures of one action.
    pub async fn queue_stats(&self, action: &str) -> Option<SupervisorStats> {
        let action: ActionRef = action.parse().ok()?;
        self.routes.get(&action)?.stats().await
    }

    /// Workers the engine has heard from, with their last heartbeat.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers.snapshot()
    }

    /// Queue figures of every action supervisor, by action.
    pub async fn supervisor_stats(&self) -> Vec<SupervisorStats> {
        let mut stats = Vec::with_capacity(self.routes.len());
        for supervisor in self.routes.values() {
            stats.extend(supervisor.stats().await);
        }
        stats.sort_by(|a, b| a.action.cmp(&b.action));
        stats
    }

    /// The live actor tree, read from ractor's supervision links.
    pub async fn actor_tree(&self) -> ActorNode {
        let stats = self.supervisor_stats().await;
        let workers = self.workers.snapshot();
        tree::snapshot(
            &self.root.get_cell(),
            None,
            &self.shared.name,
            &stats,
            &workers,
        )
    }

    /// Stops taking triggers, lets executions already handed to workers finish (up to
    /// `drain`), then stops every actor. Queued executions stay `requested` in the store and
    /// run after the next start.
    pub async fn shutdown(self, drain: Duration) {
        if let Some(ingestor) = &self.ingestor {
            let _ = ingestor.stop_and_wait(Some("shutdown".into()), None).await;
        }
        for supervisor in self.routes.values() {
            supervisor.drain();
        }
        let deadline = Instant::now() + drain;
        loop {
            // A workflow ends only when its tasks do, and no new task is admitted now:
            // waiting for one would wait for the whole drain time.
            let catalog = &self.shared.catalog;
            let active: usize = self
                .supervisor_stats()
                .await
                .iter()
                .filter(|s| {
                    catalog
                        .action(&s.action)
                        .is_none_or(|a| !workflow::is_workflow(a))
                })
                .map(|s| s.active_count)
                .sum();
            if active == 0 {
                break;
            }
            if Instant::now() > deadline {
                warn!(
                    active,
                    "drain time is up; executions in flight resume on the next start"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for consumer in [&self.completions, &self.dead_letters] {
            let _ = consumer.stop_and_wait(Some("shutdown".into()), None).await;
        }
        let _ = self.root.stop_and_wait(Some("shutdown".into()), None).await;
        info!(engine = self.shared.name, "engine stopped");
    }
}

/// Puts every unfinished execution back where it belongs: `requested` ones in their queue in
/// request order, the rest as active children of their supervisor.
async fn rebuild(
    shared: &Arc<Shared>,
    routes: &Routes,
    workers: &monitor::Workers,
) -> Result<(), EngineError> {
    const PAGE: u32 = 10_000;
    let mut count = 0;
    let mut after = ExecutionId(0);
    loop {
        let page = shared
            .store
            .unfinished_executions_after(after, PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        count += page.len();
        for execution in page {
            resume_one(shared, routes, workers, execution).await?;
        }
    }
    if count > 0 {
        info!(
            executions = count,
            "resumed unfinished executions from the store"
        );
    }
    Ok(())
}

/// Puts one unfinished execution back where it belongs.
async fn resume_one(
    shared: &Arc<Shared>,
    routes: &Routes,
    workers: &monitor::Workers,
    execution: sluice_store::Execution,
) -> Result<(), EngineError> {
    let id = execution.id;
    let Some(supervisor) = routes.get(&execution.action) else {
        let reason = format!("action {} is no longer loaded", execution.action);
        if !shared.store.fail_before_handoff(id, &reason).await? {
            warn!(execution_id = %id, action = %execution.action, "execution of an unloaded action is still with a worker");
        }
        return Ok(());
    };
    let parameters = execution
        .parameters
        .as_object()
        .cloned()
        .unwrap_or_default();
    let lost_secrets = shared.catalog.action(&execution.action).is_some_and(|a| {
        a.secret_parameters()
            .iter()
            .any(|name| parameters.get(name).is_some_and(|v| v == params::REDACTED))
    });
    let trace = execution
        .traceparent
        .iter()
        .map(|tp| ("traceparent".to_owned(), tp.clone()))
        .collect();
    let mut pending = Pending::new(
        id,
        execution.attempt,
        &execution.action,
        parameters,
        execution.created_at,
        trace,
    );
    pending.parent = execution.parent_id;
    match execution.status {
        ExecutionStatus::Requested | ExecutionStatus::Scheduling if lost_secrets => {
            let reason = "its secret parameters are held in memory only and were lost when the engine stopped; request it again";
            shared.store.fail_before_handoff(id, reason).await?;
        }
        ExecutionStatus::Requested => supervisor.enqueue(pending),
        ExecutionStatus::Scheduling => supervisor.resume(pending, Phase::Dispatch, None),
        // Its run message may already be out; publishing it again with redacted secrets
        // would run it wrong, so wait for the worker instead.
        ExecutionStatus::Scheduled if lost_secrets => {
            supervisor.resume(pending, Phase::AwaitCompletion, None)
        }
        ExecutionStatus::Scheduled => supervisor.resume(pending, Phase::Dispatch, None),
        _ => {
            // Running: its worker has one loss window to show it is still alive.
            if let Some(worker) = &execution.worker {
                workers.expect(worker);
            }
            supervisor.resume(pending, Phase::AwaitCompletion, execution.worker.clone())
        }
    }
    Ok(())
}

//! How the engine's actors address each other, and what they say.
//!
//! Actors are spawned downward (engine → supervisor → execution → workflow), but some news
//! travels back up or across: a workflow queues its tasks at their actions' supervisors and
//! tells its own supervisor it has finished; a supervisor tells a workflow that one of its
//! tasks ended. All of that goes through the handles here, in the module every actor
//! imports and that imports none of them, so no actor module knows another's insides.
//!
//! An actor is addressed one way: through the [`Directory`], by a typed key (an
//! [`ActionRef`] or an [`ExecutionId`]). Names ([`ActorName`]) are only for people reading
//! logs and the actor tree.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{ActorId, ActorRef, RpcReplyPort};
use serde::Serialize;
use serde_json::{Map, Value};
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_telemetry::{KeyValue, TraceContext};
use tokio::sync::watch;
use tracing::error;

use crate::gate::Reservation;
use crate::routes::{Requested, Routes};

/// An execution waiting for, or holding, a slot.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) id: ExecutionId,
    pub(crate) attempt: u32,
    /// Parameters as they will run, secrets included.
    pub(crate) parameters: Map<String, Value>,
    pub(crate) enqueued_at: DateTime<Utc>,
    /// The trace the execution belongs to: the context of the span that requested it.
    pub(crate) trace: TraceContext,
    /// `execution.queued`, the wait from the request to admission, is still to be recorded:
    /// at admission, as a span that began at `enqueued_at`. No span is open while it waits.
    pub(crate) queued: bool,
    /// The workflow execution it is a task of, which hears when it ends.
    pub(crate) parent: Option<ExecutionId>,
}

impl Pending {
    pub(crate) fn new(
        id: ExecutionId,
        attempt: u32,
        parameters: Map<String, Value>,
        enqueued_at: DateTime<Utc>,
        trace: TraceContext,
    ) -> Self {
        Self {
            id,
            attempt,
            parameters,
            enqueued_at,
            trace,
            queued: true,
            parent: None,
        }
    }

    /// One requested earlier and kept elsewhere (the store, another engine's announcement):
    /// its trace comes back from the `traceparent` it was kept with.
    pub(crate) fn kept(
        id: ExecutionId,
        attempt: u32,
        parameters: Map<String, Value>,
        requested_at: DateTime<Utc>,
        traceparent: Option<String>,
        parent: Option<ExecutionId>,
    ) -> Self {
        let headers = traceparent
            .into_iter()
            .map(|tp| (sluice_telemetry::TRACEPARENT.to_owned(), tp))
            .collect();
        let mut pending = Self::new(
            id,
            attempt,
            parameters,
            requested_at,
            TraceContext::from_headers(&headers),
        );
        pending.parent = parent;
        pending
    }

    pub(crate) fn with_parent(mut self, parent: ExecutionId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// The execution's trace id, for log lines written outside its spans.
    pub(crate) fn trace_id(&self) -> Option<String> {
        self.trace.trace_id()
    }

    /// Admitted: records `execution.queued`, from the request until now, once.
    pub(crate) fn end_queued(&mut self, action: &ActionRef) {
        if !std::mem::take(&mut self.queued) {
            return;
        }
        let start = std::time::SystemTime::from(self.enqueued_at);
        sluice_telemetry::record_ended_span(
            "execution.queued",
            &self.trace,
            start,
            vec![
                KeyValue::new("execution_id", self.id.to_string()),
                KeyValue::new("action", action.to_string()),
                KeyValue::new("attempt", i64::from(self.attempt)),
            ],
        );
    }
}

/// A queued execution as its supervisor's gate holds it: a [`Pending`] packed small, since
/// one queue may hold a million. Its parameters wait as JSON text, its trace context as the
/// parsed ids.
#[derive(Debug)]
pub(crate) struct Waiting {
    id: ExecutionId,
    attempt: u32,
    parameters: Box<str>,
    enqueued_at: DateTime<Utc>,
    trace: TraceContext,
    queued: bool,
    pub(crate) parent: Option<ExecutionId>,
}

impl From<Pending> for Waiting {
    fn from(p: Pending) -> Self {
        Self {
            id: p.id,
            attempt: p.attempt,
            parameters: Value::Object(p.parameters).to_string().into_boxed_str(),
            enqueued_at: p.enqueued_at,
            trace: p.trace,
            queued: p.queued,
            parent: p.parent,
        }
    }
}

impl From<Waiting> for Pending {
    fn from(w: Waiting) -> Self {
        let parameters = serde_json::from_str(&w.parameters)
            .expect("parameters packed by `Waiting::from` parse back");
        Self {
            id: w.id,
            attempt: w.attempt,
            parameters,
            enqueued_at: w.enqueued_at,
            trace: w.trace,
            queued: w.queued,
            parent: w.parent,
        }
    }
}

/// Where a new execution actor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Move it to `scheduled` and publish its run message. Idempotent: on a restart the
    /// same run message id is published again and JetStream drops the repeat.
    Dispatch,
    /// Its supervisor recorded `scheduled` when it admitted it: publish the run message.
    Publish,
    /// A worker already reported it running; wait for its completion.
    AwaitCompletion,
}

/// Figures one supervisor reports about itself.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SupervisorStats {
    pub action: ActionRef,
    pub queue_length: usize,
    pub active_count: usize,
    pub max_concurrent: Option<usize>,
    pub oldest_queued_at: Option<DateTime<Utc>>,
    pub total_enqueued: u64,
    pub total_completed: u64,
    /// Per concurrency key, when the action has one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyQueueStats>,
    /// The admitted executions, one per live child (shown on the children in the tree);
    /// empty in the counts alone.
    #[serde(skip)]
    pub admitted: Vec<AdmittedExecution>,
    /// The supervisor's actor.
    #[serde(skip)]
    pub(crate) actor: Option<ActorId>,
}

/// What a supervisor knows of one of its live execution children.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdmittedExecution {
    pub execution_id: ExecutionId,
    pub attempt: u32,
    /// `scheduled` until a worker reports it `running`.
    pub status: ExecutionStatus,
    pub worker: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// The execution's actor.
    #[serde(skip)]
    pub(crate) actor: Option<ActorId>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyQueueStats {
    pub key: String,
    pub queue_length: usize,
    pub active_count: usize,
    pub oldest_queued_at: Option<DateTime<Utc>>,
    pub total_enqueued: u64,
    pub total_completed: u64,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It had not been handed to a worker: it is `cancelled` now.
    Cancelled,
    /// A worker holds it: the worker was asked and will report `cancelled`.
    Requested,
    /// This supervisor holds no such execution.
    NotHere,
}

/// What an action supervisor is told. Only [`SupervisorHandle`] builds these.
pub(crate) enum SupervisorMsg {
    /// A new `requested` execution joins the back of its queue.
    Enqueue(Pending),
    /// A `requested` execution from the store or another engine joins the back of its
    /// queue, unless it is held here already.
    Adopt(Pending),
    /// An execution found past admission when the engine started: it takes a slot at once.
    Resume {
        pending: Pending,
        phase: Phase,
        worker: Option<String>,
    },
    /// A worker reported it running.
    Running {
        id: ExecutionId,
        worker: String,
    },
    /// The execution reached a terminal status; its child ends and frees the slot.
    Finished(ExecutionId),
    /// An attempt failed and the action retries it: the child ends and frees the slot, and
    /// the next attempt goes to the head of the queue after `delay`.
    Retry {
        id: ExecutionId,
        delay: Duration,
    },
    /// A retry's delay is over.
    RetryDue(ExecutionId),
    Cancel(ExecutionId, RpcReplyPort<CancelOutcome>),
    /// These workers stopped sending heartbeats.
    WorkersLost(Vec<String>),
    /// What each live worker's heartbeats say it holds.
    Held(Arc<Held>),
    /// A free slot for an execution about to be stored, if one would be admitted now
    /// without passing anyone; `None` otherwise, or while the engine stops taking work.
    Reserve(String, RpcReplyPort<Option<Reservation>>),
    /// The execution a reserved slot was taken for is stored `scheduled`: it runs.
    Bind(Reservation, Pending),
    /// The execution a reserved slot was taken for was not stored.
    Unreserve(Reservation),
    /// The rate limit window moved on, or a burst of requests is queued.
    Admit,
    /// The action's definition from a pack installed or reloaded: executions admitted from
    /// now on run it; those admitted already keep the one they were admitted with.
    Define(Box<sluice_pack::Action>),
    /// The supervisor's figures; with each admitted execution when the flag is set (the
    /// actor tree's view), without them for the counts alone (`/metrics`, the dashboard).
    Stats(bool, RpcReplyPort<SupervisorStats>),
}

/// The executions each live worker's last heartbeat listed, sent to every supervisor at
/// each of the monitor's checks. An execution a supervisor has running on a live worker
/// that the worker has not listed for longer than `window`, while no status report is
/// waiting to be applied, lost its report: it ends `abandoned`, or runs again when its
/// action retries on worker loss.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) by_worker: HashMap<String, std::collections::HashSet<ExecutionId>>,
    /// The STATUS consumer had nothing waiting and nothing unacknowledged when this was
    /// taken: no report for a missing execution can still be on its way.
    pub(crate) reports_applied: bool,
    pub(crate) window: Duration,
}

/// A slot held for an execution while the transaction that stores it is written. It goes
/// to the execution with [`ReservedSlot::bind`] once that has committed; dropped unbound
/// (the write failed, or the message was a redelivery), it is freed.
pub(crate) struct ReservedSlot {
    supervisor: SupervisorHandle,
    reservation: Option<Reservation>,
}

impl ReservedSlot {
    /// The execution is stored `scheduled`: it takes the slot and runs.
    pub(crate) fn bind(mut self, pending: Pending) {
        if let Some(reservation) = self.reservation.take() {
            self.supervisor
                .send(SupervisorMsg::Bind(reservation, pending));
        }
    }
}

impl Drop for ReservedSlot {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.supervisor.send(SupervisorMsg::Unreserve(reservation));
        }
    }
}

/// The public face of an action supervisor.
#[derive(Clone)]
pub(crate) struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl SupervisorHandle {
    pub(crate) fn new(actor: ActorRef<SupervisorMsg>) -> Self {
        Self { actor }
    }

    fn send(&self, message: SupervisorMsg) {
        if self.actor.send_message(message).is_err() {
            error!(actor = ?self.actor.get_name(), "action supervisor is gone; its executions resume after a restart");
        }
    }

    pub(crate) fn enqueue(&self, pending: Pending) {
        self.send(SupervisorMsg::Enqueue(pending));
    }

    /// Queues a `requested` execution found in the store or announced by another engine,
    /// unless the supervisor holds it already.
    pub(crate) fn adopt(&self, pending: Pending) {
        self.send(SupervisorMsg::Adopt(pending));
    }

    pub(crate) fn resume(&self, pending: Pending, phase: Phase, worker: Option<String>) {
        self.send(SupervisorMsg::Resume {
            pending,
            phase,
            worker,
        });
    }

    pub(crate) fn running(&self, id: ExecutionId, worker: String) {
        self.send(SupervisorMsg::Running { id, worker });
    }

    pub(crate) fn finished(&self, id: ExecutionId) {
        self.send(SupervisorMsg::Finished(id));
    }

    /// An attempt of `id` ended and is to run again after `delay`.
    pub(crate) fn retry(&self, id: ExecutionId, delay: Duration) {
        self.send(SupervisorMsg::Retry { id, delay });
    }

    pub(crate) fn define(&self, action: sluice_pack::Action) {
        self.send(SupervisorMsg::Define(Box::new(action)));
    }

    pub(crate) fn held(&self, held: Arc<Held>) {
        self.send(SupervisorMsg::Held(held));
    }

    pub(crate) fn workers_lost(&self, workers: Vec<String>) {
        self.send(SupervisorMsg::WorkersLost(workers));
    }

    /// A slot of the concurrency key `key` taken now for an execution about to be stored,
    /// when the action has one free and nothing queued; see [`ReservedSlot`].
    pub(crate) async fn reserve(&self, key: String) -> Option<ReservedSlot> {
        let reservation = ractor::call!(self.actor, SupervisorMsg::Reserve, key).ok()??;
        Some(ReservedSlot {
            supervisor: self.clone(),
            reservation: Some(reservation),
        })
    }

    pub(crate) async fn cancel(&self, id: ExecutionId) -> CancelOutcome {
        ractor::call!(self.actor, SupervisorMsg::Cancel, id).unwrap_or(CancelOutcome::NotHere)
    }

    /// The supervisor's figures, with each admitted execution if `admitted`. A scrape needs
    /// the counts alone, read without walking every admitted execution while the supervisor
    /// waits.
    pub(crate) async fn stats(&self, admitted: bool) -> Option<SupervisorStats> {
        ractor::call!(self.actor, SupervisorMsg::Stats, admitted).ok()
    }
}

/// What a workflow actor is told. Only [`WorkflowHandle`] and the actor itself build these.
pub(crate) enum WorkflowMsg {
    /// Load the saved state (or take the first step) and catch up with children.
    Start,
    /// A child left its supervisor.
    ChildEnded(ExecutionId),
    /// A task item's retry delay is over.
    RetryDue {
        task: String,
        item: usize,
        attempt: u32,
    },
    /// A child ran past its task's `timeout`.
    TimedOut(ExecutionId),
    /// A step could not be saved; try again.
    Save,
    Cancel,
    /// Look up the ends of the tasks other engines run (see `partitions`).
    Reconcile,
}

/// The public face of a running workflow.
#[derive(Clone)]
pub(crate) struct WorkflowHandle {
    actor: ActorRef<WorkflowMsg>,
    /// Set the moment the workflow is asked to cancel, before any of its children is: a
    /// supervisor never admits a task of a cancelling workflow, so freeing one child's slot
    /// cannot start another.
    cancelling: Arc<AtomicBool>,
}

impl WorkflowHandle {
    /// One of its children left its supervisor (ended, most likely: the workflow reads the
    /// child's status to know).
    pub(crate) fn child_ended(&self, child: ExecutionId) {
        let _ = self.actor.send_message(WorkflowMsg::ChildEnded(child));
    }

    /// Asks it to cancel: nothing new is admitted from now on, its running children are
    /// cancelled, and it ends `cancelled` once they have ended.
    pub(crate) fn cancel(&self) -> bool {
        self.mark_cancelling();
        self.actor.send_message(WorkflowMsg::Cancel).is_ok()
    }

    /// From now on none of its queued tasks is admitted.
    pub(crate) fn mark_cancelling(&self) {
        self.cancelling.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cancelling(&self) -> bool {
        self.cancelling.load(Ordering::SeqCst)
    }

    /// Asks it to look up the ends of its tasks that other engines run, in case an
    /// announcement of one was lost.
    pub(crate) fn reconcile(&self) {
        let _ = self.actor.send_message(WorkflowMsg::Reconcile);
    }
}

/// Every addressable actor of one engine, by typed key.
pub(crate) struct Directory {
    engine: String,
    /// Every action's supervisor; a pack installed or reloaded adds those of its new actions.
    supervisors: RwLock<HashMap<ActionRef, SupervisorHandle>>,
    workflows: Mutex<HashMap<ExecutionId, WorkflowHandle>>,
    /// Executions admitted and not yet ended, workflows left out: what a drain waits for.
    in_flight: watch::Sender<usize>,
    /// When the engines run partitioned: how requests and news reach the other engines.
    routes: std::sync::OnceLock<Routes>,
}

impl Directory {
    pub(crate) fn new(engine: impl Into<String>) -> Self {
        Self {
            engine: engine.into(),
            supervisors: RwLock::default(),
            workflows: Mutex::default(),
            in_flight: watch::Sender::new(0),
            routes: std::sync::OnceLock::new(),
        }
    }

    /// Sends what is for other engines' supervisors and workflows through `routes`.
    pub(crate) fn route_through(&self, routes: Routes) {
        let _ = self.routes.set(routes);
    }

    /// Queues `pending` at its action's supervisor: here, or, for an action another engine
    /// owns, by announcing it to that engine. Returns whether it went anywhere.
    pub(crate) fn queue(&self, action: &ActionRef, pending: Pending) -> bool {
        if let Some(supervisor) = self.supervisor(action) {
            supervisor.enqueue(pending);
            return true;
        }
        match self.routes.get() {
            Some(routes) => {
                routes.requested(Requested {
                    execution_id: pending.id,
                    action: action.clone(),
                    attempt: pending.attempt,
                    requested_at: pending.enqueued_at,
                    traceparent: pending.trace.traceparent(),
                    parent: pending.parent,
                    parameters: pending.parameters,
                    sequence: None,
                });
                true
            }
            None => false,
        }
    }

    /// Tells workflow `parent` that its task `child` has ended: here, or, for a workflow
    /// another engine runs, by announcing it.
    pub(crate) fn tell_parent(&self, parent: ExecutionId, child: ExecutionId) {
        match self.workflow(parent) {
            Some(workflow) => workflow.child_ended(child),
            None => {
                if let Some(routes) = self.routes.get() {
                    routes.child_ended(parent, child);
                }
            }
        }
    }

    /// Whether the engines run partitioned, so some actions are other engines' to run.
    pub(crate) fn partitioned(&self) -> bool {
        self.routes.get().is_some()
    }

    /// A supervisor admitted an execution that a worker runs.
    pub(crate) fn run_started(&self) {
        self.in_flight.send_modify(|n| *n += 1);
    }

    /// One counted by [`Directory::run_started`] has ended.
    pub(crate) fn run_ended(&self) {
        self.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Waits until no execution that a worker runs is in flight, for at most `limit`;
    /// returns how many still are.
    pub(crate) async fn drained(&self, limit: Duration) -> usize {
        let mut in_flight = self.in_flight.subscribe();
        let _ = tokio::time::timeout(limit, in_flight.wait_for(|n| *n == 0)).await;
        *self.in_flight.borrow()
    }

    /// The engine's name: the prefix of its actors' names, unique within the process.
    pub(crate) fn engine(&self) -> &str {
        &self.engine
    }

    /// The process-wide name of one of this engine's actors.
    pub(crate) fn name(&self, actor: ActorName<'_>) -> String {
        format!("{}{actor}", self.engine)
    }

    fn supervisor_map(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<ActionRef, SupervisorHandle>> {
        self.supervisors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the supervisors of actions that had none.
    pub(crate) fn add_supervisors(&self, supervisors: HashMap<ActionRef, SupervisorHandle>) {
        let mut map = self
            .supervisors
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (action, supervisor) in supervisors {
            map.entry(action).or_insert(supervisor);
        }
    }

    pub(crate) fn supervisor(&self, action: &ActionRef) -> Option<SupervisorHandle> {
        self.supervisor_map().get(action).cloned()
    }

    pub(crate) fn supervisors(&self) -> Vec<SupervisorHandle> {
        self.supervisor_map().values().cloned().collect()
    }

    pub(crate) fn supervisor_count(&self) -> usize {
        self.supervisor_map().len()
    }

    fn workflow_map(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, WorkflowHandle>> {
        self.workflows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A workflow actor makes itself known when it starts.
    pub(crate) fn register_workflow(
        &self,
        id: ExecutionId,
        actor: ActorRef<WorkflowMsg>,
    ) -> WorkflowHandle {
        let handle = WorkflowHandle {
            actor,
            cancelling: Arc::default(),
        };
        self.workflow_map().insert(id, handle.clone());
        handle
    }

    pub(crate) fn unregister_workflow(&self, id: ExecutionId) {
        self.workflow_map().remove(&id);
    }

    /// Every workflow running here now.
    pub(crate) fn workflows(&self) -> Vec<WorkflowHandle> {
        self.workflow_map().values().cloned().collect()
    }

    /// Workflow `id`, if it runs here now.
    pub(crate) fn workflow(&self, id: ExecutionId) -> Option<WorkflowHandle> {
        self.workflow_map().get(&id).cloned()
    }
}

/// The name of one of an engine's actors, after the engine's own name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ActorName<'a> {
    Ingestor,
    Completions,
    DeadLetters,
    Workers,
    Datastore,
    Timers,
    /// The completion listener of one partition.
    PartitionCompletions(u32),
    /// What other engines announce for this engine's partitions.
    Partitions,
    Supervisor(&'a ActionRef),
    Execution(ExecutionId),
    Workflow(ExecutionId),
}

impl fmt::Display for ActorName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ingestor => f.write_str("/ingestor"),
            Self::Completions => f.write_str("/completions"),
            Self::DeadLetters => f.write_str("/dead-letters"),
            Self::Workers => f.write_str("/workers"),
            Self::Datastore => f.write_str("/datastore"),
            Self::Timers => f.write_str("/timers"),
            Self::PartitionCompletions(n) => write!(f, "/completions/p{n}"),
            Self::Partitions => f.write_str("/partitions"),
            Self::Supervisor(action) => write!(f, "/action/{action}"),
            Self::Execution(id) => write!(f, "/execution/{id}"),
            Self::Workflow(id) => write!(f, "/workflow/{id}"),
        }
    }
}

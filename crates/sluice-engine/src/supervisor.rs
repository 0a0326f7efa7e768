//! The action supervisor: one actor per action, holding its [`Gate`] (FIFO queues per
//! concurrency key, limits, rate limit) and one child [`ExecutionActor`] per admitted
//! execution.
//!
//! The active count is the number of live children, so a slot is released exactly once —
//! when the child ends — whatever messages arrive; a completion for an execution with no
//! child is a no-op. Nothing per execution exists before admission but its queue entry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_pack::Action;
use sluice_pack::model::OnFull;
use sluice_store::Transition;
use tracing::{error, info, warn};

use crate::context::Shared;
use crate::execution::{ExecutionActor, ExecutionArgs, ExecutionMsg, Phase};
use crate::gate::{Gate, GatePolicy, KeyStats, Next, Refusal};

/// An execution waiting for, or holding, a slot.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) id: ExecutionId,
    pub(crate) attempt: u32,
    /// Parameters as they will run, secrets included.
    pub(crate) parameters: Map<String, Value>,
    pub(crate) enqueued_at: DateTime<Utc>,
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

pub(crate) enum SupervisorMsg {
    /// A new `requested` execution joins the back of its queue.
    Enqueue(Pending),
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
    Cancel(ExecutionId, RpcReplyPort<CancelOutcome>),
    /// These workers stopped sending heartbeats.
    WorkersLost(Vec<String>),
    /// The rate limit window moved on.
    Admit,
    /// Stop admitting; queued executions stay `requested` in the store for the next start.
    Drain,
    Stats(RpcReplyPort<SupervisorStats>),
}

/// The public face of a supervisor; callers never build its messages.
#[derive(Clone)]
pub(crate) struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl SupervisorHandle {
    fn send(&self, message: SupervisorMsg) {
        if self.actor.send_message(message).is_err() {
            error!(actor = ?self.actor.get_name(), "action supervisor is gone; its executions resume after a restart");
        }
    }

    pub(crate) fn enqueue(&self, pending: Pending) {
        self.send(SupervisorMsg::Enqueue(pending));
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

    pub(crate) fn workers_lost(&self, workers: Vec<String>) {
        self.send(SupervisorMsg::WorkersLost(workers));
    }

    pub(crate) fn drain(&self) {
        self.send(SupervisorMsg::Drain);
    }

    pub(crate) async fn cancel(&self, id: ExecutionId) -> CancelOutcome {
        ractor::call!(self.actor, SupervisorMsg::Cancel, id).unwrap_or(CancelOutcome::NotHere)
    }

    pub(crate) async fn stats(&self) -> Option<SupervisorStats> {
        ractor::call!(self.actor, SupervisorMsg::Stats).ok()
    }
}

pub(crate) struct ActionSupervisor;

pub(crate) struct SupervisorArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) action: Action,
}

pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    action: Arc<Action>,
    gate: Gate<Pending>,
    /// Live children by execution id, and the reverse map for supervision events.
    children: HashMap<ExecutionId, ActorRef<ExecutionMsg>>,
    by_actor: HashMap<ActorId, ExecutionId>,
    /// What each admitted execution runs with, kept for a retry.
    admitted: HashMap<ExecutionId, Pending>,
    /// The worker that reported each execution running.
    running_on: HashMap<ExecutionId, String>,
    /// Executions to put back at the head of the queue once their child has ended.
    retry_when_stopped: HashSet<ExecutionId>,
    draining: bool,
    timer_armed: bool,
}

fn gate_policy(action: &Action) -> GatePolicy {
    let policy = &action.policy;
    GatePolicy {
        max_concurrent: policy.max_concurrent,
        max_concurrent_total: policy.max_concurrent_total,
        cancel_when_full: policy.on_full == OnFull::Cancel,
        max_queue: policy.max_queue,
        rate_limit: policy
            .rate_limit
            .map(|r| (r.count, std::time::Duration::from_secs_f64(r.per_seconds))),
    }
}

fn ago(elapsed: Option<std::time::Duration>) -> Option<DateTime<Utc>> {
    elapsed
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() - d)
}

impl SupervisorState {
    fn check_invariants(&self) {
        debug_assert_eq!(self.children.len(), self.by_actor.len());
        debug_assert_eq!(
            self.children.len(),
            self.gate.active_count(),
            "live children and gate slots disagree"
        );
        debug_assert!(
            self.children.keys().all(|id| !self.gate.is_queued(*id)),
            "an execution is both queued and active"
        );
    }

    fn stats(&self) -> SupervisorStats {
        let now = Instant::now();
        let keys = self.gate.key_stats(now);
        let oldest = keys.iter().filter_map(|k| k.oldest_queued_for).max();
        let key_view = |k: &KeyStats| KeyQueueStats {
            key: k.key.clone(),
            queue_length: k.queue_length,
            active_count: k.active_count,
            oldest_queued_at: ago(k.oldest_queued_for),
            total_enqueued: k.total_enqueued,
            total_completed: k.total_completed,
        };
        SupervisorStats {
            action: self.action.action_ref.clone(),
            queue_length: self.gate.queue_length(),
            active_count: self.children.len(),
            max_concurrent: self.action.policy.max_concurrent,
            oldest_queued_at: ago(oldest),
            total_enqueued: keys.iter().map(|k| k.total_enqueued).sum(),
            total_completed: keys.iter().map(|k| k.total_completed).sum(),
            keys: if self.action.policy.concurrency_key.is_empty() {
                Vec::new()
            } else {
                keys.iter().map(key_view).collect()
            },
        }
    }
}

impl ActionSupervisor {
    pub(crate) async fn spawn(
        args: SupervisorArgs,
        parent: ractor::ActorCell,
    ) -> Result<SupervisorHandle, ractor::SpawnErr> {
        let name = format!("{}/action/{}", args.shared.name, args.action.action_ref);
        let (actor, _) = Actor::spawn_linked(Some(name), ActionSupervisor, args, parent).await?;
        Ok(SupervisorHandle { actor })
    }

    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        pending: Pending,
        phase: Phase,
    ) {
        let id = pending.id;
        state.admitted.insert(id, pending.clone());
        let args = ExecutionArgs {
            shared: state.shared.clone(),
            action: state.action.clone(),
            pending,
            phase,
        };
        let name = format!("{}/execution/{id}", state.shared.name);
        match Actor::spawn_linked(Some(name), ExecutionActor, args, myself.get_cell()).await {
            Ok((child, _)) => {
                state.by_actor.insert(child.get_id(), id);
                state.children.insert(id, child);
            }
            Err(e) => {
                // The slot is not held: the execution stays in the store and resumes after a restart.
                error!(execution_id = %id, error = %e, "failed to start execution actor");
                state.gate.release(id);
                state.admitted.remove(&id);
            }
        }
    }

    async fn admit(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        while !state.draining {
            let now = Instant::now();
            match state.gate.next(now) {
                Next::Admit(id, pending) => {
                    // Admission is recorded here, in gate order, so the store's `scheduling`
                    // times show the order the gate admitted in.
                    let admitted = Transition::to(ExecutionStatus::Scheduling);
                    match state.shared.store.transition(id, &admitted).await {
                        Ok(true) => {
                            Self::start_child(myself, state, pending, Phase::Dispatch).await
                        }
                        Ok(false) => {
                            // Cancelled or ended meanwhile: nothing to run.
                            state.gate.release(id);
                        }
                        Err(e) => {
                            warn!(execution_id = %id, error = %e, "store unavailable; admission retried");
                            state.gate.release(id);
                            let key = state.action.concurrency_key(&pending.parameters);
                            state.gate.offer_front(id, key, pending, now);
                            if !state.timer_armed {
                                state.timer_armed = true;
                                myself.send_after(std::time::Duration::from_secs(1), || {
                                    SupervisorMsg::Admit
                                });
                            }
                            break;
                        }
                    }
                }
                Next::WaitUntil(at) => {
                    if !state.timer_armed {
                        state.timer_armed = true;
                        myself
                            .send_after(at.saturating_duration_since(now), || SupervisorMsg::Admit);
                    }
                    break;
                }
                Next::Idle => break,
            }
        }
        state.check_invariants();
    }

    async fn refuse(state: &SupervisorState, id: ExecutionId, refusal: Refusal) {
        let status = match refusal {
            Refusal::Full { .. } => ExecutionStatus::Cancelled,
            Refusal::QueueFull { .. } => ExecutionStatus::Failed,
        };
        let reason = refusal.to_string();
        info!(execution_id = %id, action = %state.action.action_ref, %status, reason, "execution refused by policy");
        if let Err(e) = state
            .shared
            .store
            .end_before_handoff(id, status, &reason)
            .await
        {
            error!(execution_id = %id, error = %e, "failed to record the refusal; it resumes after a restart");
        }
    }

    async fn cancel(
        state: &mut SupervisorState,
        id: ExecutionId,
    ) -> Result<CancelOutcome, ActorProcessingErr> {
        let store = &state.shared.store;
        if state.gate.remove_queued(id).is_some() {
            store
                .end_before_handoff(
                    id,
                    ExecutionStatus::Cancelled,
                    "cancelled before it started",
                )
                .await?;
            return Ok(CancelOutcome::Cancelled);
        }
        if !state.children.contains_key(&id) {
            return Ok(CancelOutcome::NotHere);
        }
        // Admitted but maybe not handed off: the engine still owns it, and its child stops
        // when it finds the status changed.
        if store
            .end_before_handoff(
                id,
                ExecutionStatus::Cancelled,
                "cancelled before it started",
            )
            .await?
        {
            return Ok(CancelOutcome::Cancelled);
        }
        state.shared.bus.publish_cancel(id).await?;
        Ok(CancelOutcome::Requested)
    }

    async fn workers_lost(state: &mut SupervisorState, lost: &[String]) {
        let victims: Vec<(ExecutionId, String)> = state
            .running_on
            .iter()
            .filter(|(_, worker)| lost.contains(worker))
            .map(|(id, w)| (*id, w.clone()))
            .collect();
        for (id, worker) in victims {
            let retry = state.action.policy.retry_on_worker_loss;
            let transition = if retry {
                Transition::to(ExecutionStatus::Requested)
            } else {
                let mut abandoned = Transition::to(ExecutionStatus::Abandoned);
                abandoned.result = Some(
                    json!({ "error": format!("worker {worker} stopped sending heartbeats while running it") }),
                );
                abandoned
            };
            match state.shared.store.transition(id, &transition).await {
                Ok(true) => {
                    warn!(execution_id = %id, worker, retry, "worker lost; execution {}", if retry { "requeued" } else { "abandoned" });
                    if retry {
                        state.retry_when_stopped.insert(id);
                    }
                    state.running_on.remove(&id);
                    if let Some(child) = state.children.get(&id) {
                        child.stop(Some("worker lost".into()));
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    error!(execution_id = %id, error = %e, "failed to record a lost worker; checked again at the next beat")
                }
            }
        }
    }

    fn release(state: &mut SupervisorState, child: ActorId) -> Option<ExecutionId> {
        let id = state.by_actor.remove(&child)?;
        state.children.remove(&id);
        state.running_on.remove(&id);
        state.gate.release(id);
        let pending = state.admitted.remove(&id);
        if state.retry_when_stopped.remove(&id)
            && let Some(mut pending) = pending
        {
            pending.attempt += 1;
            let key = state.action.concurrency_key(&pending.parameters);
            state.gate.offer_front(id, key, pending, Instant::now());
        }
        Some(id)
    }
}

impl Actor for ActionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            gate: Gate::new(gate_policy(&args.action)),
            shared: args.shared,
            action: Arc::new(args.action),
            children: HashMap::new(),
            by_actor: HashMap::new(),
            admitted: HashMap::new(),
            running_on: HashMap::new(),
            retry_when_stopped: HashSet::new(),
            draining: false,
            timer_armed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Enqueue(pending) => {
                let id = pending.id;
                if state.children.contains_key(&id) || state.gate.is_queued(id) {
                    warn!(execution_id = %id, "execution already known to its supervisor; ignored");
                    return Ok(());
                }
                let key = state.action.concurrency_key(&pending.parameters);
                // Queue age counts from the request, also across an engine restart.
                let now = Instant::now();
                let waited = (Utc::now() - pending.enqueued_at)
                    .to_std()
                    .unwrap_or_default();
                let enqueued = now.checked_sub(waited).unwrap_or(now);
                if let Err(refusal) = state.gate.offer(id, key, pending, enqueued) {
                    Self::refuse(state, id, refusal).await;
                }
                Self::admit(&myself, state).await;
            }
            SupervisorMsg::Resume {
                pending,
                phase,
                worker,
            } => {
                let id = pending.id;
                if !state.children.contains_key(&id) {
                    state
                        .gate
                        .resume(id, state.action.concurrency_key(&pending.parameters));
                    if let Some(worker) = worker.filter(|_| phase == Phase::AwaitCompletion) {
                        state.running_on.insert(id, worker);
                    }
                    Self::start_child(&myself, state, pending, phase).await;
                }
            }
            SupervisorMsg::Running { id, worker } => {
                if state.children.contains_key(&id) {
                    state.running_on.insert(id, worker);
                }
            }
            SupervisorMsg::Finished(id) => {
                // The child ends; its termination event releases the slot.
                if let Some(child) = state.children.get(&id) {
                    child.stop(Some("finished".into()));
                }
            }
            SupervisorMsg::Cancel(id, reply) => {
                let outcome = Self::cancel(state, id).await?;
                let _ = reply.send(outcome);
                Self::admit(&myself, state).await;
            }
            SupervisorMsg::WorkersLost(workers) => Self::workers_lost(state, &workers).await,
            SupervisorMsg::Admit => {
                state.timer_armed = false;
                Self::admit(&myself, state).await;
            }
            SupervisorMsg::Drain => state.draining = true,
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
        }
        Ok(())
    }

    /// ractor's default stops a supervisor when any child exits. Here a child exiting is
    /// the normal end of an execution: release its slot and admit the next in line.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(child, _, _) => {
                Self::release(state, child.get_id());
            }
            SupervisionEvent::ActorFailed(child, err) => {
                if let Some(id) = Self::release(state, child.get_id()) {
                    error!(execution_id = %id, action = %state.action.action_ref, error = %err, "execution actor failed");
                    let reason = format!("the engine failed while scheduling: {err}");
                    if let Err(e) = state.shared.store.fail_before_handoff(id, &reason).await {
                        error!(execution_id = %id, error = %e, "failed to record the failure");
                    }
                }
            }
            _ => {}
        }
        Self::admit(&myself, state).await;
        Ok(())
    }
}

//! The action supervisor: one actor per action, holding its [`Gate`] (FIFO queues per
//! concurrency key, limits, rate limit) and one child [`ExecutionActor`] per admitted
//! execution.
//!
//! The active count is the number of live children, so a slot is released exactly once —
//! when the child ends — whatever messages arrive; a completion for an execution with no
//! child is a no-op. Nothing per execution exists before admission but its queue entry.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::json;
use sluice_core::{ExecutionId, ExecutionStatus, StatusReport};
use sluice_pack::Action;
use sluice_pack::model::OnFull;
use sluice_store::Transition;
use tracing::{error, info, warn};

use crate::context::ActorContext;
use crate::execution::{ExecutionActor, ExecutionArgs, ExecutionMsg};
use crate::gate::{Gate, GatePolicy, Instant, KeyStats, Next, Refusal};
use crate::handles::{
    ActorName, AdmittedExecution, CancelOutcome, Held, KeyQueueStats, Pending, Phase,
    SupervisorHandle, SupervisorMsg, SupervisorStats, Waiting,
};
use crate::timing::STORE_RETRY;

pub(crate) struct ActionSupervisor;

/// A task of a workflow left its supervisor: the workflow hears of it, on another engine if
/// it runs there. A workflow not running anywhere finds out when it resumes.
fn tell_parent(state: &SupervisorState, id: ExecutionId, parent: Option<ExecutionId>) {
    if let Some(parent) = parent {
        state.ctx.directory.tell_parent(parent, id);
    }
}

/// The most admissions recorded in one transaction.
const ADMIT_BATCH: usize = 256;

pub(crate) struct SupervisorArgs {
    pub(crate) ctx: Arc<ActorContext>,
    pub(crate) action: Action,
}

pub(crate) struct SupervisorState {
    ctx: Arc<ActorContext>,
    action: Arc<Action>,
    gate: Gate<Waiting>,
    /// Live children by execution id, and the reverse map for supervision events.
    children: HashMap<ExecutionId, ActorRef<ExecutionMsg>>,
    by_actor: HashMap<ActorId, ExecutionId>,
    /// What each admitted execution runs with, kept for a retry.
    admitted: HashMap<ExecutionId, Pending>,
    /// The worker that reported each execution running.
    running_on: HashMap<ExecutionId, String>,
    /// Since when the worker an execution runs on has beaten without listing it.
    unlisted_since: HashMap<ExecutionId, Instant>,
    /// Executions to put back at the head of the queue once their child has ended, with
    /// the wait before (an attempt that failed, under the action's retry policy).
    retry_when_stopped: HashMap<ExecutionId, std::time::Duration>,
    /// Executions waiting out their retry delay, off the queue and holding no slot.
    delayed: HashMap<ExecutionId, Pending>,
    timer_armed: bool,
    /// An `Admit` is in the mailbox, behind the requests that arrived with it.
    admit_queued: bool,
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
    /// Whether `id` is queued, admitted, or waiting for a retry here.
    fn holds(&self, id: ExecutionId) -> bool {
        self.children.contains_key(&id)
            || self.gate.is_queued(id)
            || self.delayed.contains_key(&id)
            || self.retry_when_stopped.contains_key(&id)
    }

    fn check_invariants(&self) {
        debug_assert_eq!(self.children.len(), self.by_actor.len());
        debug_assert_eq!(
            self.children.len() + self.gate.reserved(),
            self.gate.active_count(),
            "live children, reservations and gate slots disagree"
        );
        debug_assert!(
            self.children.keys().all(|id| !self.gate.is_queued(*id)),
            "an execution is both queued and active"
        );
    }

    /// The figures, and each admitted execution if `admitted`.
    fn stats(&self, admitted: bool) -> SupervisorStats {
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
            admitted: if admitted {
                self.admitted
                    .values()
                    .map(|p| {
                        let worker = self.running_on.get(&p.id).cloned();
                        AdmittedExecution {
                            actor: self.children.get(&p.id).map(|c| c.get_id()),
                            execution_id: p.id,
                            attempt: p.attempt,
                            status: if worker.is_some() {
                                ExecutionStatus::Running
                            } else {
                                ExecutionStatus::Scheduled
                            },
                            worker,
                            requested_at: p.enqueued_at,
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            },
            actor: None,
        }
    }
}

impl ActionSupervisor {
    pub(crate) async fn spawn(
        args: SupervisorArgs,
        parent: ractor::ActorCell,
    ) -> Result<SupervisorHandle, ractor::SpawnErr> {
        let name = args
            .ctx
            .directory
            .name(ActorName::Supervisor(&args.action.action_ref));
        let (actor, _) = Actor::spawn_linked(Some(name), ActionSupervisor, args, parent).await?;
        Ok(SupervisorHandle::new(actor))
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
            ctx: state.ctx.clone(),
            action: state.action.clone(),
            pending,
            phase,
        };
        let name = state.ctx.directory.name(ActorName::Execution(id));
        match Actor::spawn_linked(Some(name), ExecutionActor, args, myself.get_cell()).await {
            Ok((child, _)) => {
                if !state.action.is_workflow() {
                    state.ctx.directory.run_started();
                }
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

    /// Admits what the gate lets through, in gate order. Each round takes up to
    /// [`ADMIT_BATCH`] admissions and records them in one statement: `scheduling` and then
    /// `scheduled` (the status the handoff happens from), both at the moment the gate let
    /// each through, so the store's times show the order the gate admitted in. The children
    /// then only publish their run messages.
    async fn admit(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        while !state.ctx.intake.is_cancelled() {
            let now = Instant::now();
            let mut admitted = Vec::new();
            let mut wait = None;
            while admitted.len() < ADMIT_BATCH {
                match state.gate.next(now) {
                    Next::Admit(id, waiting) if Self::parent_cancelling(state, waiting.parent) => {
                        // Its workflow is being cancelled: it must never start.
                        state.gate.release(id);
                        Self::refuse_orphan(state, id, waiting.parent).await;
                    }
                    Next::Admit(id, waiting) => {
                        admitted.push((id, Utc::now(), Pending::from(waiting)))
                    }
                    Next::WaitUntil(at) => {
                        wait = Some(at);
                        break;
                    }
                    Next::Idle => break,
                }
            }
            let full = admitted.len() == ADMIT_BATCH;
            if !admitted.is_empty() {
                let round: Vec<_> = admitted.iter().map(|(id, at, _)| (*id, *at)).collect();
                match state.ctx.backend.admit(&round).await {
                    Ok(changed) => {
                        for ((id, _, mut pending), moved) in admitted.into_iter().zip(changed) {
                            if moved {
                                // The wait is over: `execution.queued` ends here.
                                pending.end_queued(&state.action.action_ref);
                                let waited = (Utc::now() - pending.enqueued_at).as_seconds_f64();
                                sluice_telemetry::metrics()
                                    .admission_wait_seconds
                                    .observe([state.action.action_ref.as_str()], waited);
                                Self::start_child(myself, state, pending, Phase::Publish).await
                            } else {
                                // Cancelled or ended meanwhile: nothing to run.
                                state.gate.release(id);
                            }
                        }
                    }
                    Err(e) => {
                        warn!(executions = admitted.len(), error = %e, "store unavailable; admissions retried");
                        // Back to the head of their queues, in their order.
                        for (id, _, pending) in admitted.into_iter().rev() {
                            state.gate.release(id);
                            let key = state.action.concurrency_key(&pending.parameters);
                            state.gate.offer_front(id, key, pending.into(), now);
                        }
                        if !state.timer_armed {
                            state.timer_armed = true;
                            myself.send_after(STORE_RETRY, || SupervisorMsg::Admit);
                        }
                        break;
                    }
                }
            }
            if let Some(at) = wait {
                if !state.timer_armed {
                    state.timer_armed = true;
                    myself.send_after(at.saturating_duration_since(now), || SupervisorMsg::Admit);
                }
                break;
            }
            if !full {
                break;
            }
        }
        state.check_invariants();
    }

    fn parent_cancelling(state: &SupervisorState, parent: Option<ExecutionId>) -> bool {
        parent
            .and_then(|p| state.ctx.directory.workflow(p))
            .is_some_and(|w| w.is_cancelling())
    }

    /// Ends a queued task of a cancelling workflow, which hears of it.
    async fn refuse_orphan(state: &SupervisorState, id: ExecutionId, parent: Option<ExecutionId>) {
        let reason = "its workflow was cancelled before it started";
        if let Err(e) = state
            .ctx
            .backend
            .end_before_handoff(id, ExecutionStatus::Cancelled, reason)
            .await
        {
            error!(execution_id = %id, error = %e, "failed to record the cancel; it resumes after a restart");
        }
        tell_parent(state, id, parent);
    }

    async fn refuse(
        state: &SupervisorState,
        id: ExecutionId,
        trace_id: Option<String>,
        refusal: Refusal,
    ) {
        let status = match refusal {
            Refusal::Full { .. } => ExecutionStatus::Cancelled,
            Refusal::QueueFull { .. } => ExecutionStatus::Failed,
        };
        let reason = refusal.to_string();
        info!(execution_id = %id, trace_id, action = %state.action.action_ref, %status, reason, "execution refused by policy");
        if let Err(e) = state
            .ctx
            .backend
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
        let store = &state.ctx.backend;
        if let Some(pending) = state.delayed.remove(&id) {
            store
                .end_before_handoff(
                    id,
                    ExecutionStatus::Cancelled,
                    "cancelled while waiting to be retried",
                )
                .await?;
            tell_parent(state, id, pending.parent);
            return Ok(CancelOutcome::Cancelled);
        }
        if let Some(pending) = state.gate.remove_queued(id) {
            store
                .end_before_handoff(
                    id,
                    ExecutionStatus::Cancelled,
                    "cancelled before it started",
                )
                .await?;
            tell_parent(state, id, pending.parent);
            return Ok(CancelOutcome::Cancelled);
        }
        // Every child's execution is admitted, with its attempt.
        let Some(attempt) = state
            .children
            .get(&id)
            .and(state.admitted.get(&id))
            .map(|pending| pending.attempt)
        else {
            return Ok(CancelOutcome::NotHere);
        };
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
        if state.action.is_workflow() {
            // The engine runs a workflow: its actor cancels the tasks, then ends it.
            let workflow = state.ctx.directory.workflow(id);
            return Ok(if workflow.is_some_and(|w| w.cancel()) {
                CancelOutcome::Requested
            } else {
                CancelOutcome::NotHere
            });
        }
        let cancelled = StatusReport::cancelled_before_start(
            id,
            attempt,
            state.action.action_ref.clone(),
            state.ctx.partition_of(&state.action.action_ref),
        );
        // A claimed cancel ends the execution when its report is recorded, as a worker's.
        state.ctx.backend.cancel(cancelled).await?;
        Ok(CancelOutcome::Requested)
    }

    async fn workers_lost(state: &mut SupervisorState, lost: &[String]) {
        let victims: Vec<(ExecutionId, String, String)> = state
            .running_on
            .iter()
            .filter(|(_, worker)| lost.contains(worker))
            .map(|(id, w)| {
                let why = format!("worker {w} stopped sending heartbeats while running it");
                (*id, w.clone(), why)
            })
            .collect();
        Self::give_up(state, victims).await;
    }

    /// Executions running on a live worker whose heartbeats have not listed them for the
    /// loss window, while every status report has been applied: their reports were lost
    /// (a stream's retention, an engine down for longer than it keeps them).
    async fn reconcile(state: &mut SupervisorState, held: &Held) {
        let now = Instant::now();
        let mut victims = Vec::new();
        for (id, worker) in &state.running_on {
            match held.by_worker.get(worker) {
                Some(listed) if !listed.contains(id) => {
                    let since = *state.unlisted_since.entry(*id).or_insert(now);
                    let unlisted = now.duration_since(since);
                    if held.reports_applied && unlisted > held.window {
                        let why = format!(
                            "worker {worker} is alive but has not listed it as running for {:.1} s, and no report of its end arrived",
                            unlisted.as_secs_f64()
                        );
                        victims.push((*id, worker.clone(), why));
                    }
                }
                // Listed, or a worker not heard (its loss is judged by its silence).
                _ => {
                    state.unlisted_since.remove(id);
                }
            }
        }
        let running_on = &state.running_on;
        state
            .unlisted_since
            .retain(|id, _| running_on.contains_key(id));
        Self::give_up(state, victims).await;
    }

    /// Ends each execution `abandoned` with the reason, or queues it to run again when the
    /// action retries on worker loss.
    async fn give_up(state: &mut SupervisorState, victims: Vec<(ExecutionId, String, String)>) {
        for (id, worker, why) in victims {
            let retry = state.action.policy.retry_on_worker_loss;
            let transition = if retry {
                Transition::to(ExecutionStatus::Requested)
            } else {
                let mut abandoned = Transition::to(ExecutionStatus::Abandoned);
                abandoned.result = Some(json!({ "error": why }).into());
                abandoned
            };
            match state.ctx.backend.transition(id, &transition).await {
                Ok(true) => {
                    let trace_id = state.admitted.get(&id).and_then(Pending::trace_id);
                    warn!(execution_id = %id, trace_id, worker, retry, reason = why, "execution given up: {}", if retry { "requeued" } else { "abandoned" });
                    if retry {
                        state
                            .retry_when_stopped
                            .insert(id, std::time::Duration::ZERO);
                    }
                    state.running_on.remove(&id);
                    state.unlisted_since.remove(&id);
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

    /// Frees the slot of an ended child; returns its execution and, unless it was put back
    /// in the queue to run again, the workflow to tell.
    fn release(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        child: ActorId,
    ) -> Option<(ExecutionId, Option<ExecutionId>)> {
        let id = state.by_actor.remove(&child)?;
        state.children.remove(&id);
        if !state.action.is_workflow() {
            state.ctx.directory.run_ended();
        }
        state.running_on.remove(&id);
        state.gate.release(id);
        let pending = state.admitted.remove(&id);
        if let Some(delay) = state.retry_when_stopped.remove(&id)
            && let Some(mut pending) = pending
        {
            pending.attempt += 1;
            if delay.is_zero() {
                let key = state.action.concurrency_key(&pending.parameters);
                state
                    .gate
                    .offer_front(id, key, pending.into(), Instant::now());
            } else {
                state.delayed.insert(id, pending);
                myself.send_after(delay, move || SupervisorMsg::RetryDue(id));
            }
            return Some((id, None));
        }
        Some((id, pending.and_then(|p| p.parent)))
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
            ctx: args.ctx,
            action: Arc::new(args.action),
            children: HashMap::new(),
            by_actor: HashMap::new(),
            admitted: HashMap::new(),
            running_on: HashMap::new(),
            unlisted_since: HashMap::new(),
            retry_when_stopped: HashMap::new(),
            delayed: HashMap::new(),
            timer_armed: false,
            admit_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Enqueue(pending) if state.holds(pending.id) => {
                warn!(execution_id = %pending.id, "execution already known to its supervisor; ignored");
            }
            // Found in the store or announced again: held here already.
            SupervisorMsg::Adopt(pending) if state.holds(pending.id) => {}
            SupervisorMsg::Enqueue(pending) | SupervisorMsg::Adopt(pending) => {
                let id = pending.id;
                let key = state.action.concurrency_key(&pending.parameters);
                // Queue age counts from the request, also across an engine restart.
                let now = Instant::now();
                let waited = (Utc::now() - pending.enqueued_at)
                    .to_std()
                    .unwrap_or_default();
                let enqueued = now.checked_sub(waited).unwrap_or(now);
                let trace_id = pending.trace_id();
                let parent = pending.parent;
                if let Err(refusal) = state.gate.offer(id, key, pending.into(), enqueued) {
                    Self::refuse(state, id, trace_id, refusal).await;
                    tell_parent(state, id, parent);
                }
                if state.action.policy.on_full == OnFull::Cancel {
                    // A full gate refuses at once: admit now, so the next request sees it.
                    Self::admit(&myself, state).await;
                } else if !state.admit_queued {
                    // Admit after the requests already in the mailbox are queued too, so a
                    // burst is admitted, and recorded, as one batch.
                    state.admit_queued = true;
                    let _ = myself.send_message(SupervisorMsg::Admit);
                }
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
            SupervisorMsg::Retry { id, delay } => {
                // As Finished, then back to the queue once the wait is over.
                if let Some(child) = state.children.get(&id) {
                    state.retry_when_stopped.insert(id, delay);
                    child.stop(Some("attempt ended; retrying".into()));
                }
            }
            SupervisorMsg::RetryDue(id) => {
                if let Some(pending) = state.delayed.remove(&id) {
                    let key = state.action.concurrency_key(&pending.parameters);
                    state
                        .gate
                        .offer_front(id, key, pending.into(), Instant::now());
                    Self::admit(&myself, state).await;
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
            SupervisorMsg::Held(held) => Self::reconcile(state, &held).await,
            SupervisorMsg::Reserve(key, reply) => {
                let reservation = (!state.ctx.intake.is_cancelled())
                    .then(|| state.gate.reserve(key, Instant::now()))
                    .flatten();
                let _ = reply.send(reservation);
            }
            SupervisorMsg::Bind(reservation, mut pending) => {
                let id = pending.id;
                if !state.gate.bind(reservation, id) {
                    // Not held here any more: the execution is stored `scheduled` all the
                    // same, so it takes a slot as one found after a restart does.
                    let key = state.action.concurrency_key(&pending.parameters);
                    state.gate.resume(id, key);
                }
                pending.end_queued(&state.action.action_ref);
                sluice_telemetry::metrics()
                    .admission_wait_seconds
                    .observe([state.action.action_ref.as_str()], 0.0);
                Self::start_child(&myself, state, pending, Phase::Publish).await;
                state.check_invariants();
            }
            SupervisorMsg::Unreserve(reservation) => {
                if state.gate.unreserve(reservation) {
                    Self::admit(&myself, state).await;
                }
            }
            SupervisorMsg::Admit => {
                state.timer_armed = false;
                state.admit_queued = false;
                Self::admit(&myself, state).await;
            }
            SupervisorMsg::Define(action) => {
                state.gate.set_policy(gate_policy(&action));
                state.action = Arc::new(*action);
                Self::admit(&myself, state).await;
            }
            SupervisorMsg::Stats(admitted, reply) => {
                let mut stats = state.stats(admitted);
                stats.actor = Some(myself.get_id());
                let _ = reply.send(stats);
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
                if let Some((id, parent)) = Self::release(&myself, state, child.get_id()) {
                    tell_parent(state, id, parent);
                }
            }
            SupervisionEvent::ActorFailed(child, err) => {
                if let Some((id, parent)) = Self::release(&myself, state, child.get_id()) {
                    error!(execution_id = %id, action = %state.action.action_ref, error = %err, "execution actor failed");
                    let reason = format!("the engine failed while scheduling: {err}");
                    if let Err(e) = state
                        .ctx
                        .backend
                        .end_before_handoff(id, ExecutionStatus::Failed, &reason)
                        .await
                    {
                        error!(execution_id = %id, error = %e, "failed to record the failure");
                    }
                    tell_parent(state, id, parent);
                }
            }
            _ => {}
        }
        Self::admit(&myself, state).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor and its execution children in-process, against an in-memory store and
    //! bus that follow the same state machine, with tokio's clock paused.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::{Map, Value};
    use sluice_core::RunnerType;
    use sluice_pack::model::{Policy, RateLimit};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::handles::Directory;
    use crate::testing::{Fake, until};

    struct Harness {
        fake: Arc<Fake>,
        handle: SupervisorHandle,
        params: Map<String, Value>,
    }

    async fn start(name: &str, policy: Policy) -> Harness {
        let fake = Arc::new(Fake::default());
        let ctx = Arc::new(ActorContext {
            directory: Arc::new(Directory::new(format!("test-{name}"))),
            catalog: tokio::sync::watch::channel(Arc::default()).1,
            backend: fake.clone(),
            keyring: Arc::new(sluice_core::secrets::Keyring::ephemeral().unwrap()),
            kv: crate::testing::empty_datastore(),
            intake: CancellationToken::new(),
            action_api: None,
            partitions: None,
        });
        let key_param: sluice_pack::ParamSpec =
            serde_json::from_value(serde_json::json!({"type": "string"})).unwrap();
        let action = Action {
            action_ref: "t.a".parse().unwrap(),
            description: None,
            runner: RunnerType::Noop,
            entry_point: None,
            parameters: BTreeMap::from([("key".to_owned(), key_param)]),
            timeout_secs: None,
            limits: Default::default(),
            enabled: true,
            policy,
            workflow: None,
            pack_digest: None,
            config: None,
            file: "t/actions/a.yaml".into(),
        };
        let (actor, _) = Actor::spawn(
            Some(format!("test-{name}/action/t.a")),
            ActionSupervisor,
            SupervisorArgs { ctx, action },
        )
        .await
        .unwrap();
        Harness {
            fake,
            handle: SupervisorHandle::new(actor),
            params: Map::new(),
        }
    }

    impl Harness {
        fn enqueue(&self, id: i64) {
            self.enqueue_with(id, self.params.clone());
        }

        fn enqueue_with(&self, id: i64, parameters: Map<String, Value>) {
            self.fake.set(id, ExecutionStatus::Requested);
            self.handle.enqueue(Pending::new(
                ExecutionId(id),
                1,
                parameters,
                Utc::now(),
                Default::default(),
            ));
        }

        /// Completes an execution as its worker would, and tells the supervisor.
        fn complete(&self, id: i64) {
            self.fake.set(id, ExecutionStatus::Succeeded);
            self.handle.finished(ExecutionId(id));
        }

        async fn stats(&self) -> SupervisorStats {
            self.handle.stats(true).await.unwrap()
        }

        /// Waits until the supervisor's own figures satisfy `check`.
        async fn until_stats(
            &self,
            what: &str,
            check: impl Fn(&SupervisorStats) -> bool,
        ) -> SupervisorStats {
            for _ in 0..2000 {
                let stats = self.stats().await;
                if check(&stats) {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("never happened: {what}: {:?}", self.stats().await);
        }
    }

    fn limit(n: usize) -> Policy {
        Policy {
            max_concurrent: Some(n),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn admits_in_fifo_order_within_the_limit_and_releases_each_slot_once() {
        let h = start("fifo", limit(2)).await;
        for id in 1..=5 {
            h.enqueue(id);
        }
        until("two handed off", || h.fake.run_ids() == [1, 2]).await;
        let stats = h.stats().await;
        assert_eq!(
            (stats.active_count, stats.queue_length, stats.max_concurrent),
            (2, 3, Some(2))
        );
        assert_eq!(h.fake.status(3), Some(ExecutionStatus::Requested));

        h.complete(1);
        until("the third admitted", || h.fake.run_ids() == [1, 2, 3]).await;
        // A repeated completion, and one for an execution it never had, change nothing.
        h.handle.finished(ExecutionId(1));
        h.handle.finished(ExecutionId(99));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = h.stats().await;
        assert_eq!(
            (
                stats.active_count,
                stats.queue_length,
                stats.total_completed
            ),
            (2, 2, 1)
        );
        assert_eq!(h.fake.run_ids(), [1, 2, 3]);

        for id in 2..=5 {
            h.complete(id);
            until("the queue drains", || {
                h.fake.run_ids().len() == (id as usize + 2).min(5)
            })
            .await;
        }
        let stats = h.until_stats("all released", |s| s.active_count == 0).await;
        assert_eq!(
            (
                stats.queue_length,
                stats.total_completed,
                stats.total_enqueued
            ),
            (0, 5, 5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_waits_on_the_clock() {
        let policy = Policy {
            rate_limit: Some(RateLimit {
                count: 2,
                per_seconds: 1.0,
            }),
            ..Default::default()
        };
        let h = start("rate", policy).await;
        for id in 1..=5 {
            h.enqueue(id);
        }
        until("the first two", || h.fake.run_ids().len() == 2).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(h.fake.run_ids().len(), 2, "the window has not moved yet");
        tokio::time::sleep(Duration::from_millis(150)).await;
        until("two more after a second", || h.fake.run_ids().len() == 4).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        until("the last", || h.fake.run_ids() == [1, 2, 3, 4, 5]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_queues_run_side_by_side() {
        let h = start(
            "keys",
            Policy {
                concurrency_key: vec!["key".into()],
                ..limit(1)
            },
        )
        .await;
        let with_key = |k: &str| Map::from_iter([("key".to_owned(), json!(k))]);
        for (id, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
            h.enqueue_with(id, with_key(key));
        }
        until("one per key", || h.fake.run_ids() == [1, 3]).await;
        let stats = h.stats().await;
        assert_eq!(stats.keys.len(), 2);
        assert!(
            stats
                .keys
                .iter()
                .all(|k| k.active_count == 1 && k.queue_length == 1),
            "{stats:?}"
        );
        h.complete(3);
        until("b's next", || h.fake.run_ids() == [1, 3, 4]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_worker_s_execution_is_abandoned_and_the_queue_moves_on() {
        let h = start("lost", limit(1)).await;
        h.enqueue(1);
        h.enqueue(2);
        until("the first handed off", || h.fake.run_ids() == [1]).await;
        h.fake.set(1, ExecutionStatus::Running);
        h.handle.running(ExecutionId(1), "w1".into());
        h.handle.workers_lost(vec!["w2".into()]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            h.fake.status(1),
            Some(ExecutionStatus::Running),
            "another worker's loss is not its loss"
        );
        h.handle.workers_lost(vec!["w1".into()]);
        until("abandoned, next admitted", || {
            h.fake.status(1) == Some(ExecutionStatus::Abandoned) && h.fake.run_ids() == [1, 2]
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_worker_s_execution_is_retried_first_with_a_new_attempt() {
        let h = start(
            "retry",
            Policy {
                retry_on_worker_loss: true,
                ..limit(1)
            },
        )
        .await;
        h.enqueue(1);
        h.enqueue(2);
        until("the first handed off", || h.fake.runs() == [(1, 1)]).await;
        h.fake.set(1, ExecutionStatus::Running);
        h.handle.running(ExecutionId(1), "w1".into());
        h.handle.workers_lost(vec!["w1".into()]);
        until("retried ahead of 2", || h.fake.runs() == [(1, 1), (1, 2)]).await;
        h.complete(1);
        until("then 2", || h.fake.runs() == [(1, 1), (1, 2), (2, 1)]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_is_decided_by_who_owns_the_execution() {
        let h = start("cancel", limit(1)).await;
        h.enqueue(1);
        h.enqueue(2);
        until("the first handed off", || h.fake.run_ids() == [1]).await;
        assert_eq!(
            h.handle.cancel(ExecutionId(2)).await,
            CancelOutcome::Cancelled
        );
        assert_eq!(h.fake.status(2), Some(ExecutionStatus::Cancelled));
        assert_eq!(
            h.handle.cancel(ExecutionId(1)).await,
            CancelOutcome::Requested,
            "a worker holds it"
        );
        assert_eq!(h.fake.cancels(), [1]);
        assert_eq!(
            h.handle.cancel(ExecutionId(99)).await,
            CancelOutcome::NotHere
        );
        h.fake.set(1, ExecutionStatus::Cancelled);
        h.handle.finished(ExecutionId(1));
        let stats = h.until_stats("released", |s| s.active_count == 0).await;
        assert_eq!(stats.queue_length, 0);
        assert_eq!(h.fake.run_ids(), [1], "the cancelled one never ran");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_and_a_failed_handoff_end_executions_and_free_their_slot() {
        let h = start(
            "full",
            Policy {
                on_full: OnFull::Cancel,
                ..limit(1)
            },
        )
        .await;
        h.enqueue(1);
        h.enqueue(2);
        until("the second refused", || {
            h.fake.status(2) == Some(ExecutionStatus::Cancelled)
        })
        .await;
        assert_eq!(h.fake.run_ids(), [1]);

        let h = start("handoff", limit(1)).await;
        h.fake.refuse_publish.lock().unwrap().insert(1);
        h.enqueue(1);
        h.enqueue(2);
        until("failed, next admitted", || {
            h.fake.status(1) == Some(ExecutionStatus::Failed) && h.fake.run_ids() == [2]
        })
        .await;
    }
}

//! The workflow actor: the I/O around a workflow's [`Machine`]. It loads and saves the
//! state, reads how a child ended, queues children at their actions' supervisors, arms
//! timers and records the workflow's end; the machine decides everything else.

use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sluice_core::{ExecutionId, ExecutionStatus, StatusReport};
use sluice_pack::Action;
use sluice_store::{NewChild, StoreError, Transition, WorkflowSave};
use sluice_telemetry::TraceContext;
use tracing::{Instrument as _, debug, error, info, warn};

use super::machine::{Launch, Machine, Timer};
use crate::context::ActorContext;
use crate::handles::{Pending, WorkflowHandle, WorkflowMsg};
use crate::timing::STORE_RETRY;

pub(crate) struct WorkflowArgs {
    pub(crate) ctx: Arc<ActorContext>,
    pub(crate) action: Arc<Action>,
    pub(crate) pending: Pending,
}

pub(crate) struct WorkflowActor;

pub(crate) struct WorkflowState {
    ctx: Arc<ActorContext>,
    action: Arc<Action>,
    id: ExecutionId,
    trace: TraceContext,
    handle: WorkflowHandle,
    machine: Machine,
    ended: bool,
}

impl Actor for WorkflowActor {
    type Msg = WorkflowMsg;
    type State = WorkflowState;
    type Arguments = WorkflowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkflowArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let workflow =
            args.action.workflow.clone().ok_or_else(|| {
                format!("action {} has no workflow loaded", args.action.action_ref)
            })?;
        let id = args.pending.id;
        let machine = Machine::new(
            workflow,
            args.ctx.catalog.borrow().clone(),
            &args.action,
            args.ctx.keyring.clone(),
            &args.ctx.kv,
            args.pending.parameters,
            args.pending.trace.traceparent(),
        );
        let handle = args.ctx.directory.register_workflow(id, myself.clone());
        myself.send_message(WorkflowMsg::Start)?;
        Ok(WorkflowState {
            ctx: args.ctx,
            action: args.action,
            id,
            trace: args.pending.trace,
            handle,
            machine,
            ended: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.directory.unregister_workflow(state.id);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.ended {
            return Ok(());
        }
        // Each step is a span of the workflow's trace; its log lines carry the ids.
        let span = tracing::info_span!(
            "workflow.step",
            execution_id = %state.id,
            action = %state.action.action_ref,
            trace_id = tracing::field::Empty,
        );
        state.trace.continue_in(&span);
        Self::step(&myself, message, state).instrument(span).await
    }
}

impl WorkflowActor {
    async fn step(
        myself: &ActorRef<WorkflowMsg>,
        message: WorkflowMsg,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkflowMsg::Start => Self::load(myself, state).await,
            WorkflowMsg::ChildEnded(child) => Self::child_ended(myself, state, child).await,
            WorkflowMsg::RetryDue {
                task,
                item,
                attempt,
            } => {
                if state.machine.retry_due(&task, item, attempt) {
                    Self::save(myself, state).await?;
                }
                Ok(())
            }
            WorkflowMsg::TimedOut(child) => {
                if let Some((child, action)) = state.machine.timed_out(child) {
                    Self::cancel_child(state, child, &action).await;
                }
                Ok(())
            }
            WorkflowMsg::Save => Self::save(myself, state).await,
            WorkflowMsg::Cancel => Self::cancel(myself, state).await,
            WorkflowMsg::Reconcile => {
                // The tasks other engines run: their ends are announced, and looked up here
                // in case an announcement was lost.
                for (child, action) in state.machine.running_children() {
                    if state.ctx.directory.supervisor(&action).is_none() {
                        let _ = myself.send_message(WorkflowMsg::ChildEnded(child));
                    }
                }
                Ok(())
            }
        }
    }

    fn arm(myself: &ActorRef<WorkflowMsg>, timers: Vec<Timer>) {
        for timer in timers {
            match timer {
                Timer::Retry {
                    task,
                    item,
                    attempt,
                    after,
                } => myself.send_after(after, move || WorkflowMsg::RetryDue {
                    task,
                    item,
                    attempt,
                }),
                Timer::Timeout { child, after } => {
                    myself.send_after(after, move || WorkflowMsg::TimedOut(child))
                }
            };
        }
    }

    /// Loads the saved state, or takes the first step; then acts on every child that
    /// ended while nobody listened.
    async fn load(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let record = match state.ctx.backend.workflow(state.id).await {
            Ok(record) => record,
            Err(e) if e.is_transient() => {
                myself.send_after(STORE_RETRY, || WorkflowMsg::Start);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let Some(record) = record else {
            match state.machine.secrets_lost().map(str::to_owned) {
                Some(reason) => state.machine.fail(reason),
                None => state.machine.begin(),
            }
            return Self::save(myself, state).await;
        };
        let resumed =
            state
                .machine
                .resume(&record, Utc::now())
                .map_err(|e| StoreError::Corrupt {
                    table: "workflows",
                    message: e.to_string(),
                })?;
        if state.machine.is_cancelling() {
            state.handle.mark_cancelling();
        }
        Self::arm(myself, resumed.timers);
        info!(execution_id = %state.id, running = state.machine.running_count(), ended = resumed.ended.len(), "workflow resumed");
        for id in resumed.ended {
            let _ = myself.send_message(WorkflowMsg::ChildEnded(id));
        }
        if let Some(reason) = state.machine.secrets_lost().map(str::to_owned)
            && !state.machine.is_cancelling()
        {
            state.machine.fail(reason);
            return Self::cancel(myself, state).await;
        }
        if state.machine.idle() {
            Self::finish(myself, state).await?;
        }
        Ok(())
    }

    async fn child_ended(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
        child: ExecutionId,
    ) -> Result<(), ActorProcessingErr> {
        if !state.machine.waits_for(child) {
            return Ok(());
        }
        let ended = match state.ctx.backend.state(child).await {
            Ok(Some(ended)) => ended,
            Ok(None) => return Ok(()),
            Err(e) if e.is_transient() => {
                myself.send_after(STORE_RETRY, move || WorkflowMsg::ChildEnded(child));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let Some(timers) = state
            .machine
            .child_ended(child, ended.status, ended.result, Utc::now())
        else {
            return Ok(());
        };
        Self::arm(myself, timers);
        Self::save(myself, state).await
    }

    async fn cancel(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        // Before any child is cancelled: freeing a slot must not admit another task.
        state.handle.mark_cancelling();
        let Some(children) = state.machine.cancel() else {
            return Ok(());
        };
        for (child, action) in children {
            Self::cancel_child(state, child, &action).await;
        }
        Self::save(myself, state).await
    }

    async fn cancel_child(
        state: &WorkflowState,
        child: ExecutionId,
        action: &sluice_core::ActionRef,
    ) {
        match state.ctx.directory.supervisor(action) {
            Some(supervisor) => {
                supervisor.cancel(child).await;
            }
            None if state.ctx.directory.partitioned() => {
                // Another engine owns the task's action: a queued task is ended in the store
                // (its supervisor there finds it ended when it would admit it), and a running
                // one is cancelled by its worker.
                let backend = &state.ctx.backend;
                let reason = "its workflow cancelled it before it started";
                let cancelled = match backend
                    .end_before_handoff(child, ExecutionStatus::Cancelled, reason)
                    .await
                {
                    Ok(true) => {
                        state.ctx.directory.tell_parent(state.id, child);
                        Ok(())
                    }
                    Ok(false) => match backend.state(child).await {
                        Ok(Some(known)) if !known.status.is_terminal() => {
                            let cancelled = StatusReport::cancelled_before_start(
                                child,
                                known.attempt,
                                action.clone(),
                                state.ctx.partition_of(action),
                            );
                            backend
                                .cancel(cancelled)
                                .await
                                .map(drop)
                                .map_err(|e| e.to_string())
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = cancelled {
                    warn!(execution_id = %state.id, child = %child, error = e, "the task on another engine was not cancelled");
                }
            }
            None => {
                warn!(execution_id = %state.id, child = %child, "no supervisor to cancel the child")
            }
        }
    }

    /// Saves the step, then queues its children and arms their timeouts; when nothing is
    /// left to run, ends the workflow.
    async fn save(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let step = state.machine.take_step();
        let children: Vec<NewChild> = step.launches.iter().map(|l| l.child.clone()).collect();
        let saved = state
            .ctx
            .backend
            .workflow_step(
                state.id,
                &step.handled,
                WorkflowSave {
                    state: &state.machine.saved_json(),
                    parts: &step.parts,
                },
                &children,
            )
            .await;
        let created = match saved {
            Ok(Some(created)) => created,
            Ok(None) => {
                // Some child's end was acted on already: the store is ahead of this actor.
                warn!(execution_id = %state.id, "workflow step already taken; reloading its state");
                return Box::pin(Self::load(myself, state)).await;
            }
            Err(e) if e.is_transient() => {
                warn!(execution_id = %state.id, error = %e, "store unavailable; workflow step saved again shortly");
                state.machine.restore_step(step);
                myself.send_after(STORE_RETRY, || WorkflowMsg::Save);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for (launch, id) in step.launches.into_iter().zip(created) {
            let Some(id) = id else {
                warn!(execution_id = %state.id, task = launch.child.task, "task item attempt already started; not started again");
                continue;
            };
            Self::queue(myself, state, launch, id);
        }
        if state.machine.idle() {
            Self::finish(myself, state).await?;
        }
        Ok(())
    }

    fn queue(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
        launch: Launch,
        id: ExecutionId,
    ) {
        debug!(execution_id = %state.id, child = %id, task = launch.child.task, item = launch.item, attempt = launch.child.attempt, "task child queued");
        Self::arm(
            myself,
            state.machine.started(&launch, id).into_iter().collect(),
        );
        let pending = Pending::new(id, 1, launch.parameters, Utc::now(), state.trace.clone())
            .with_parent(state.id);
        if !state.ctx.directory.queue(&launch.child.action, pending) {
            error!(execution_id = %state.id, child = %id, "no supervisor for the task's action; it runs after a restart");
        }
    }

    /// Records the workflow's end and tells its supervisor, which stops this actor. A store
    /// outage only delays it.
    async fn finish(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let (status, result) = state.machine.outcome();
        let mut end = Transition::to(status);
        end.result = Some(result.into());
        match state.ctx.backend.transition(state.id, &end).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                warn!(execution_id = %state.id, error = %e, "store unavailable; the workflow's end is recorded shortly");
                myself.send_after(STORE_RETRY, || WorkflowMsg::Save);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        info!(execution_id = %state.id, action = %state.action.action_ref, %status, "workflow finished");
        state.ended = true;
        if let Some(supervisor) = state.ctx.directory.supervisor(&state.action.action_ref) {
            supervisor.finished(state.id);
        }
        Ok(())
    }
}

//! The execution actor: one child of its action's supervisor per admitted execution.
//!
//! Its supervisor has admitted it and recorded `scheduled` (after a restart, an execution
//! found `scheduling` is moved to `scheduled` here); it makes the handoff (publishes the
//! run message), then lives until its supervisor learns of the completion and stops it.
//! Its life is the execution's slot. A workflow execution has no handoff: its actor
//! starts the workflow actor as its child and lives as long as the workflow runs.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use sluice_core::{ExecutionStatus, RunMessage};
use sluice_pack::Action;
use sluice_store::Transition;
use tracing::{Instrument as _, debug, error, warn};

use crate::context::ActorContext;
use crate::handles::{ActorName, Pending, Phase};
use crate::timing::STORE_RETRY;
use crate::workflow::{WorkflowActor, WorkflowArgs};

pub(crate) enum ExecutionMsg {
    Dispatch,
}

pub(crate) struct ExecutionActor;

pub(crate) struct ExecutionArgs {
    pub(crate) ctx: Arc<ActorContext>,
    pub(crate) action: Arc<Action>,
    pub(crate) pending: Pending,
    pub(crate) phase: Phase,
}

pub(crate) struct ExecutionState {
    ctx: Arc<ActorContext>,
    action: Arc<Action>,
    pending: Pending,
    /// `scheduled` is recorded: what is left is the publish.
    scheduled: bool,
}

impl ExecutionActor {
    /// Records `scheduled` (the supervisor recorded `scheduling` when it admitted the
    /// execution) and returns the status to act on: `scheduled` means publish.
    async fn advance(
        state: &ExecutionState,
    ) -> Result<Option<ExecutionStatus>, sluice_store::StoreError> {
        let backend = &state.ctx.backend;
        let id = state.pending.id;
        if backend
            .transition(id, &Transition::to(ExecutionStatus::Scheduled))
            .await?
        {
            return Ok(Some(ExecutionStatus::Scheduled));
        }
        // Not moved: resumed after a restart (already scheduled), or cancelled meanwhile.
        backend.status(id).await
    }

    fn run_message(state: &ExecutionState) -> RunMessage {
        RunMessage {
            execution_id: state.pending.id,
            attempt: state.pending.attempt,
            action: state.action.action_ref.clone(),
            runner: state.action.runner,
            pack_digest: state.action.pack_digest.clone(),
            entry_point: state.action.entry_point.clone(),
            parameters: state.pending.parameters.clone(),
            secret_parameters: sluice_core::secrets::sealed_names(&state.pending.parameters),
            positional: state.action.positional_parameters(),
            timeout_secs: state.action.timeout_for(&state.pending.parameters),
            config: state.action.config.as_ref().and_then(|c| c.sealed.clone()),
            limits: state.action.limits,
            api: Self::action_api(state),
            partition: state.ctx.partition_of(&state.action.action_ref),
        }
    }

    /// The API and this attempt's token, sealed, when the engine serves an API and the
    /// runner starts a process that could use them. A runner of the worker's own (`noop`,
    /// `http-request`, …) is given no token.
    fn action_api(state: &ExecutionState) -> Option<sluice_core::ActionApi> {
        if !state.action.runner.starts_a_process() {
            return None;
        }
        let access = state.ctx.action_api.as_ref()?;
        let token = access.tokens.mint(state.pending.id, state.pending.attempt);
        match state.ctx.keyring.seal(&serde_json::Value::String(token)) {
            Ok(token) => Some(sluice_core::ActionApi {
                url: access.url.clone(),
                token,
            }),
            Err(e) => {
                warn!(execution_id = %state.pending.id, error = %e, "cannot seal the execution's API token; the action runs without one");
                None
            }
        }
    }
}

impl Actor for ExecutionActor {
    type Msg = ExecutionMsg;
    type State = ExecutionState;
    type Arguments = ExecutionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ExecutionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A workflow runs here, in the engine: its actor starts (or resumes) in any phase.
        if matches!(args.phase, Phase::Dispatch | Phase::Publish) || args.action.is_workflow() {
            myself.send_message(ExecutionMsg::Dispatch)?;
        }
        Ok(ExecutionState {
            ctx: args.ctx,
            action: args.action,
            pending: args.pending,
            scheduled: args.phase == Phase::Publish,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ExecutionMsg::Dispatch = message;
        let span = tracing::info_span!(
            "execution.dispatch",
            execution_id = %state.pending.id,
            action = %state.action.action_ref,
            attempt = state.pending.attempt,
            trace_id = tracing::field::Empty,
        );
        state.pending.trace.continue_in(&span);
        if state.action.is_workflow() {
            return Self::start_workflow(&myself, state).instrument(span).await;
        }
        Self::dispatch(&myself, state).instrument(span).await
    }

    /// The workflow actor, a child, is this execution's run: when it stops, so does this
    /// actor (and the slot is released); when it fails, the workflow has failed.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(_, err) => {
                let id = state.pending.id;
                error!(execution_id = %id, error = %err, "workflow actor failed");
                let mut failed = Transition::to(ExecutionStatus::Failed);
                failed.result = Some(
                    serde_json::json!({ "error": format!("the workflow failed in the engine: {err}") })
                        .into(),
                );
                if let Err(e) = state.ctx.backend.transition(id, &failed).await {
                    error!(execution_id = %id, error = %e, "failed to record the workflow's failure");
                }
                myself.stop(Some("workflow failed".into()));
            }
            SupervisionEvent::ActorTerminated(..) => myself.stop(Some("workflow ended".into())),
            _ => {}
        }
        Ok(())
    }
}

impl ExecutionActor {
    /// The status to act on, with `scheduled` recorded first if it is not yet. `None` when
    /// the store was busy: `Dispatch` comes back after a pause.
    async fn scheduled_status(
        myself: &ActorRef<ExecutionMsg>,
        state: &mut ExecutionState,
    ) -> Result<Option<Option<ExecutionStatus>>, ActorProcessingErr> {
        let recorded = if state.scheduled {
            Ok(Some(ExecutionStatus::Scheduled))
        } else {
            Self::advance(state).await
        };
        match recorded {
            Ok(status) => {
                state.scheduled = status == Some(ExecutionStatus::Scheduled);
                Ok(Some(status))
            }
            Err(e) if e.is_transient() => {
                warn!(execution_id = %state.pending.id, error = %e, "store busy; dispatch retried");
                myself.send_after(STORE_RETRY, || ExecutionMsg::Dispatch);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records `scheduled`, then `running` (the engine runs a workflow; there is no handoff
    /// to a worker), and starts the workflow actor, which resumes from the saved state
    /// after a restart.
    async fn start_workflow(
        myself: &ActorRef<ExecutionMsg>,
        state: &mut ExecutionState,
    ) -> Result<(), ActorProcessingErr> {
        let id = state.pending.id;
        let Some(status) = Self::scheduled_status(myself, state).await? else {
            return Ok(());
        };
        match status {
            Some(ExecutionStatus::Scheduled) => {
                state
                    .ctx
                    .backend
                    .transition(id, &Transition::to(ExecutionStatus::Running))
                    .await?;
            }
            Some(ExecutionStatus::Running) => {}
            status => {
                debug!(execution_id = %id, ?status, "workflow ended before it started");
                myself.stop(Some("already finished".into()));
                return Ok(());
            }
        }
        let args = WorkflowArgs {
            ctx: state.ctx.clone(),
            action: state.action.clone(),
            pending: state.pending.clone(),
        };
        let name = state.ctx.directory.name(ActorName::Workflow(id));
        Actor::spawn_linked(Some(name), WorkflowActor, args, myself.get_cell()).await?;
        Ok(())
    }
}

impl ExecutionActor {
    /// Records `scheduled` and publishes the run message (the handoff); the run message
    /// carries this span's trace context to the worker.
    async fn dispatch(
        myself: &ActorRef<ExecutionMsg>,
        state: &mut ExecutionState,
    ) -> Result<(), ActorProcessingErr> {
        let id = state.pending.id;
        let Some(status) = Self::scheduled_status(myself, state).await? else {
            return Ok(());
        };
        if status != Some(ExecutionStatus::Scheduled) {
            if status.is_none_or(ExecutionStatus::is_terminal) {
                debug!(execution_id = %id, ?status, "execution ended before dispatch");
                myself.stop(Some("already finished".into()));
            }
            return Ok(());
        }
        match state
            .ctx
            .backend
            .publish_run(&Self::run_message(state))
            .await
        {
            Ok(()) => debug!(execution_id = %id, "run message published"),
            Err(e) if e.is_transient() => {
                warn!(execution_id = %id, error = %e, "run message not acknowledged; publishing again");
                myself.send_after(STORE_RETRY, || ExecutionMsg::Dispatch);
            }
            Err(e) => {
                let mut failed = Transition::to(ExecutionStatus::Failed);
                failed.result = Some(
                    serde_json::json!({ "error": format!("failed to hand the execution to workers: {e}") })
                        .into(),
                );
                state.ctx.backend.transition(id, &failed).await?;
                myself.stop(Some("handoff failed".into()));
            }
        }
        Ok(())
    }
}

//! The action supervisor: one actor per action holding its FIFO queue and its active set.
//!
//! Each admitted execution is a child [`ExecutionActor`]; the active count is the number of
//! live children, so a slot is released exactly once — when the child ends — whatever
//! messages arrive. A completion for an execution with no child is a no-op.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use serde_json::{Map, Value};
use sluice_core::{ActionRef, ExecutionId};
use sluice_pack::Action;
use tracing::{error, info, warn};

use crate::context::Shared;
use crate::execution::{ExecutionActor, ExecutionArgs, ExecutionMsg, Phase};

/// An execution waiting for a slot.
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
}

pub(crate) enum SupervisorMsg {
    /// A new `requested` execution joins the back of the queue.
    Enqueue(Pending),
    /// An execution found past admission when the engine started: it takes a slot at once.
    Resume {
        pending: Pending,
        phase: Phase,
    },
    /// The execution reached a terminal status; its child ends and frees the slot.
    Finished(ExecutionId),
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
    pub(crate) fn enqueue(&self, pending: Pending) {
        if let Err(e) = self.actor.send_message(SupervisorMsg::Enqueue(pending)) {
            error!(error = %e, "action supervisor is gone; the execution stays requested until restart");
        }
    }

    pub(crate) fn resume(&self, pending: Pending, phase: Phase) {
        let _ = self
            .actor
            .send_message(SupervisorMsg::Resume { pending, phase });
    }

    pub(crate) fn finished(&self, id: ExecutionId) {
        let _ = self.actor.send_message(SupervisorMsg::Finished(id));
    }

    pub(crate) fn drain(&self) {
        let _ = self.actor.send_message(SupervisorMsg::Drain);
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
    max_concurrent: Option<usize>,
    queue: VecDeque<Pending>,
    /// Live children by execution id, and the reverse map for supervision events.
    active: HashMap<ExecutionId, ActorRef<ExecutionMsg>>,
    by_actor: HashMap<ActorId, ExecutionId>,
    draining: bool,
    total_enqueued: u64,
    total_completed: u64,
}

impl SupervisorState {
    fn check_invariants(&self) {
        debug_assert_eq!(self.active.len(), self.by_actor.len());
        debug_assert!(
            self.queue.iter().all(|p| !self.active.contains_key(&p.id)),
            "an execution is both queued and active"
        );
    }

    fn has_room(&self) -> bool {
        !self.draining
            && self
                .max_concurrent
                .is_none_or(|limit| self.active.len() < limit)
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
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        pending: Pending,
        phase: Phase,
    ) {
        let id = pending.id;
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
                state.active.insert(id, child);
            }
            Err(e) => error!(execution_id = %id, error = %e, "failed to start execution actor"),
        }
    }

    async fn admit(&self, myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
        while state.has_room() {
            let Some(pending) = state.queue.pop_front() else {
                break;
            };
            self.start_child(myself, state, pending, Phase::Dispatch)
                .await;
        }
        state.check_invariants();
        debug_assert!(
            state.draining
                || state
                    .max_concurrent
                    .is_none_or(|l| state.active.len() <= l || state.queue.is_empty())
        );
    }

    fn release(&self, state: &mut SupervisorState, child: ActorId) -> Option<ExecutionId> {
        let id = state.by_actor.remove(&child)?;
        state.active.remove(&id);
        state.total_completed += 1;
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
            shared: args.shared,
            action: Arc::new(args.action),
            max_concurrent: None,
            queue: VecDeque::new(),
            active: HashMap::new(),
            by_actor: HashMap::new(),
            draining: false,
            total_enqueued: 0,
            total_completed: 0,
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
                if state.active.contains_key(&pending.id)
                    || state.queue.iter().any(|p| p.id == pending.id)
                {
                    warn!(execution_id = %pending.id, "execution already known to its supervisor; ignored");
                    return Ok(());
                }
                state.total_enqueued += 1;
                state.queue.push_back(pending);
                self.admit(&myself, state).await;
            }
            SupervisorMsg::Resume { pending, phase } => {
                if !state.active.contains_key(&pending.id) {
                    state.total_enqueued += 1;
                    self.start_child(&myself, state, pending, phase).await;
                }
            }
            SupervisorMsg::Finished(id) => {
                // The child ends; its termination event releases the slot.
                if let Some(child) = state.active.get(&id) {
                    child.stop(Some("finished".into()));
                }
            }
            SupervisorMsg::Drain => state.draining = true,
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(SupervisorStats {
                    action: state.action.action_ref.clone(),
                    queue_length: state.queue.len(),
                    active_count: state.active.len(),
                    max_concurrent: state.max_concurrent,
                    oldest_queued_at: state.queue.front().map(|p| p.enqueued_at),
                    total_enqueued: state.total_enqueued,
                    total_completed: state.total_completed,
                });
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
                self.release(state, child.get_id());
            }
            SupervisionEvent::ActorFailed(child, err) => {
                if let Some(id) = self.release(state, child.get_id()) {
                    error!(execution_id = %id, action = %state.action.action_ref, error = %err, "execution actor failed");
                    let reason = format!("the engine failed while scheduling: {err}");
                    match state.shared.store.fail_before_handoff(id, &reason).await {
                        Ok(true) => {
                            info!(execution_id = %id, "execution marked failed before handoff")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            error!(execution_id = %id, error = %e, "failed to record the failure")
                        }
                    }
                }
            }
            _ => {}
        }
        self.admit(&myself, state).await;
        Ok(())
    }
}

//! What the engine's actors (supervisors, executions, workflows) need from outside the
//! process: a few store reads and updates and two publishes. Behind a trait so the actors
//! can be tested in-process against an in-memory fake with paused time;
//! [`Live`] is the store and the bus.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_bus::{Bus, BusError, CancelSent};
use sluice_core::{ExecutionId, ExecutionStatus, RunMessage, StatusReport};
use sluice_store::{NewChild, Store, StoreError, Transition, WorkflowRecord, WorkflowSave};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait Backend: Send + Sync + 'static {
    /// A conditional status change ([`Store::transition`]).
    fn transition<'a>(
        &'a self,
        id: ExecutionId,
        transition: &'a Transition,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Status changes in one transaction, in order ([`Store::transitions`]).
    fn transitions<'a>(
        &'a self,
        batch: &'a [(ExecutionId, Transition)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let mut changed = Vec::with_capacity(batch.len());
            for (id, transition) in batch {
                changed.push(self.transition(*id, transition).await?);
            }
            Ok(changed)
        })
    }
    /// Admits a round of `requested` executions: each to `scheduling`, then `scheduled`, at
    /// the time the gate admitted it ([`Store::admit`]); whether each was.
    fn admit<'a>(
        &'a self,
        round: &'a [(ExecutionId, DateTime<Utc>)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let writes: Vec<(ExecutionId, Transition)> = round
                .iter()
                .flat_map(|(id, at)| {
                    [ExecutionStatus::Scheduling, ExecutionStatus::Scheduled].map(|to| {
                        let mut transition = Transition::to(to);
                        transition.at = *at;
                        (*id, transition)
                    })
                })
                .collect();
            let changed = self.transitions(&writes).await?;
            Ok(changed
                .chunks(2)
                .map(|moved| moved.iter().all(|m| *m))
                .collect())
        })
    }

    /// Ends an execution the engine still owns ([`Store::end_before_handoff`]).
    fn end_before_handoff<'a>(
        &'a self,
        id: ExecutionId,
        status: ExecutionStatus,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The execution's current status and result.
    fn state(&self, id: ExecutionId) -> BoxFuture<'_, Result<Option<ExecutionState>, StoreError>>;
    /// The execution's current status.
    fn status(
        &self,
        id: ExecutionId,
    ) -> BoxFuture<'_, Result<Option<ExecutionStatus>, StoreError>> {
        Box::pin(async move { Ok(self.state(id).await?.map(|s| s.status)) })
    }
    /// A workflow's saved state and children ([`Store::workflow`]).
    fn workflow(
        &self,
        id: ExecutionId,
    ) -> BoxFuture<'_, Result<Option<WorkflowRecord>, StoreError>>;
    /// One workflow step in one transaction ([`Store::workflow_step`]).
    fn workflow_step<'a>(
        &'a self,
        id: ExecutionId,
        handled: &'a [ExecutionId],
        save: WorkflowSave<'a>,
        children: &'a [NewChild],
    ) -> BoxFuture<'a, Result<Option<Vec<Option<ExecutionId>>>, StoreError>>;
    /// The handoff: the run message to the workers.
    fn publish_run<'a>(&'a self, message: &'a RunMessage) -> BoxFuture<'a, Result<(), BusError>>;
    /// Cancels an attempt handed to the workers ([`Bus::cancel`](sluice_bus::Bus::cancel)):
    /// `cancelled` claims it if no worker has, else the worker holding it is asked to stop.
    fn cancel(&self, cancelled: StatusReport) -> BoxFuture<'_, Result<CancelSent, BusError>>;
}

/// The real store and bus.
pub(crate) struct Live {
    pub(crate) store: Store,
    pub(crate) bus: Bus,
}

impl Backend for Live {
    fn transition<'a>(
        &'a self,
        id: ExecutionId,
        transition: &'a Transition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.store.transition(id, transition))
    }

    fn transitions<'a>(
        &'a self,
        batch: &'a [(ExecutionId, Transition)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(self.store.transitions(batch))
    }

    fn admit<'a>(
        &'a self,
        round: &'a [(ExecutionId, DateTime<Utc>)],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(self.store.admit(round))
    }

    fn end_before_handoff<'a>(
        &'a self,
        id: ExecutionId,
        status: ExecutionStatus,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.store.end_before_handoff(id, status, reason))
    }

    fn state(&self, id: ExecutionId) -> BoxFuture<'_, Result<Option<ExecutionState>, StoreError>> {
        Box::pin(async move {
            Ok(self.store.get_execution(id).await?.map(|e| ExecutionState {
                status: e.status,
                attempt: e.attempt,
                result: e.result,
            }))
        })
    }

    fn workflow(
        &self,
        id: ExecutionId,
    ) -> BoxFuture<'_, Result<Option<WorkflowRecord>, StoreError>> {
        Box::pin(self.store.workflow(id))
    }

    fn workflow_step<'a>(
        &'a self,
        id: ExecutionId,
        handled: &'a [ExecutionId],
        save: WorkflowSave<'a>,
        children: &'a [NewChild],
    ) -> BoxFuture<'a, Result<Option<Vec<Option<ExecutionId>>>, StoreError>> {
        Box::pin(self.store.workflow_step(id, handled, save, children))
    }

    fn publish_run<'a>(&'a self, message: &'a RunMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move { self.bus.publish_run(message).await.map(drop) })
    }

    fn cancel(&self, cancelled: StatusReport) -> BoxFuture<'_, Result<CancelSent, BusError>> {
        Box::pin(async move { self.bus.cancel(&cancelled).await })
    }
}

/// How an execution stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExecutionState {
    pub(crate) status: ExecutionStatus,
    pub(crate) attempt: u32,
    pub(crate) result: Option<Value>,
}

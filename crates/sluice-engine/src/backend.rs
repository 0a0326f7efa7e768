//! What the action supervisors and execution actors need from outside the process: a few
//! store updates and two publishes. Behind a trait so the actors can be tested in-process
//! against an in-memory fake with paused time; [`Live`] is the store and the bus.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sluice_bus::{Bus, BusError};
use sluice_core::{ExecutionId, ExecutionStatus, RunMessage};
use sluice_store::{Store, StoreError, Transition};

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
    /// Ends an execution the engine still owns ([`Store::end_before_handoff`]).
    fn end_before_handoff<'a>(
        &'a self,
        id: ExecutionId,
        status: ExecutionStatus,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// The execution's current status.
    fn status(&self, id: ExecutionId)
    -> BoxFuture<'_, Result<Option<ExecutionStatus>, StoreError>>;
    /// The handoff: the run message to the workers.
    fn publish_run<'a>(&'a self, message: &'a RunMessage) -> BoxFuture<'a, Result<(), BusError>>;
    /// Asks the worker holding the execution to cancel it.
    fn publish_cancel(&self, id: ExecutionId) -> BoxFuture<'_, Result<(), BusError>>;
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

    fn end_before_handoff<'a>(
        &'a self,
        id: ExecutionId,
        status: ExecutionStatus,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.store.end_before_handoff(id, status, reason))
    }

    fn status(
        &self,
        id: ExecutionId,
    ) -> BoxFuture<'_, Result<Option<ExecutionStatus>, StoreError>> {
        Box::pin(async move { Ok(self.store.get_execution(id).await?.map(|e| e.status)) })
    }

    fn publish_run<'a>(&'a self, message: &'a RunMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move { self.bus.publish_run(message).await.map(drop) })
    }

    fn publish_cancel(&self, id: ExecutionId) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.bus.publish_cancel(id).await.map(drop) })
    }
}

/// What the supervisor and execution actors share.
pub(crate) struct ActorContext {
    /// Prefix of every actor name of this engine, unique within the process.
    pub(crate) name: String,
    pub(crate) backend: Arc<dyn Backend>,
    /// The engine's store and catalog, which workflow actors work with; `None` where the
    /// actors run against a fake (tests of the supervisor), which runs no workflows.
    pub(crate) shared: Option<Arc<crate::context::Shared>>,
}

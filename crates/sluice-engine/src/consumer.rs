//! Actors that own a long-running loop (the trigger ingestor, the completion listener, the
//! dead-letter recorder and the worker monitor). The loop runs as a task the actor owns,
//! until its token (a child of the engine's shutdown token) is cancelled — between batches,
//! never in the middle of one. Stopping the actor cancels the token and waits for the loop.

use std::future::Future;
use std::pin::Pin;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub(crate) type LoopFn = Box<dyn FnOnce(CancellationToken) -> BoxFuture + Send>;

pub(crate) struct LoopActor;

pub(crate) struct LoopState {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Actor for LoopActor {
    type Msg = ();
    type State = LoopState;
    type Arguments = (CancellationToken, LoopFn);

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        (cancel, run): (CancellationToken, LoopFn),
    ) -> Result<LoopState, ActorProcessingErr> {
        let task = tokio::spawn(run(cancel.clone()));
        Ok(LoopState {
            cancel,
            task: Some(task),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut LoopState,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel.cancel();
        if let Some(task) = state.task.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

pub(crate) async fn spawn_loop(
    name: String,
    parent: ActorCell,
    cancel: CancellationToken,
    run: LoopFn,
) -> Result<ActorRef<()>, ractor::SpawnErr> {
    Actor::spawn_linked(Some(name), LoopActor, (cancel, run), parent)
        .await
        .map(|(actor, _)| actor)
}

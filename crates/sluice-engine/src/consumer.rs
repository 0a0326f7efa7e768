//! Actors that own a JetStream consumer loop (the trigger ingestor, the completion
//! listener and the dead-letter recorder). The loop runs as a task the actor owns: stopping
//! the actor cancels the loop between batches — never in the middle of one — and waits for
//! it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

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
    type Arguments = LoopFn;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        run: LoopFn,
    ) -> Result<LoopState, ActorProcessingErr> {
        let cancel = CancellationToken::new();
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
    run: LoopFn,
) -> Result<ActorRef<()>, ractor::SpawnErr> {
    Actor::spawn_linked(Some(name), LoopActor, run, parent)
        .await
        .map(|(actor, _)| actor)
}

/// The most messages handed over as one batch.
const MAX_BATCH: usize = 256;

/// Feeds the messages of a durable consumer to `handle` in batches, until cancelled: each
/// batch is one message waited for plus whatever else has already arrived (at most
/// [`MAX_BATCH`]), so a busy stream is handled in groups and a quiet one without delay.
/// Reconnects the message stream when it ends or fails.
pub(crate) async fn consume_batches<F, Fut>(
    consumer: PullConsumer,
    cancel: CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<async_nats::jetstream::Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures::FutureExt as _;
    while !cancel.is_cancelled() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(MAX_BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) => {
                warn!(error = %e, "cannot pull messages; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        'stream: loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                next = messages.next() => next,
            };
            let mut batch = match first {
                Some(Ok(message)) => vec![message],
                Some(Err(e)) => {
                    warn!(error = %e, "consumer stream error");
                    continue;
                }
                None => break,
            };
            let mut ended = false;
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(e))) => warn!(error = %e, "consumer stream error"),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            handle(batch).await;
            if ended {
                break 'stream;
            }
        }
    }
}

//! The loops that read Sluice's durable consumers, with one way to recover from a failed
//! pull (wait [`PULL_RETRY`], pull again, stop at once when cancelled):
//!
//! - [`consume_batches`]: the engine's trigger ingestor, completion listener and dead-letter
//!   recorder. Messages come in batches, so each batch can be one group commit.
//! - [`consume_within`]: the worker's run consumer. It pulls no more messages than it has
//!   free slots, so nothing waits in a worker's hands while another worker is idle.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long to wait before pulling again after the server refused a pull.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// How long a pull request of [`consume_within`] waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// After a failed pull: waits [`PULL_RETRY`]; `false` when cancelled meanwhile.
async fn pause_after_failure(
    cancel: &CancellationToken,
    error: &(dyn std::fmt::Display + Sync),
) -> bool {
    warn!(error = %error, "cannot pull messages; retrying");
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(PULL_RETRY) => true,
    }
}

/// The most messages handed over as one batch.
const MAX_BATCH: usize = 256;

/// Feeds the messages of a durable consumer to `handle` in batches, until cancelled: each
/// batch is one message waited for plus whatever else has already arrived (at most
/// [`MAX_BATCH`]), so a busy stream is handled in groups and a quiet one without delay.
/// Reconnects the message stream when it ends or fails.
pub async fn consume_batches<F, Fut>(
    consumer: PullConsumer,
    cancel: CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    while !cancel.is_cancelled() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(MAX_BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(e) if pause_after_failure(&cancel, &e).await => continue,
            Err(_) => return,
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
                    Some(Some(Ok(message))) => {
                        // One allocation for a busy stream's batch, none for a quiet one's.
                        if batch.len() == 1 {
                            batch.reserve_exact(MAX_BATCH - 1);
                        }
                        batch.push(message);
                    }
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

/// Hands the messages of a durable consumer to `deliver`, each with a permit of `slots`,
/// until cancelled or until `deliver` returns `false`: each pull asks for as many messages
/// as there are free slots, and waits for a slot before pulling at all. A message is handed
/// over as soon as it arrives, together with those of the same pull that arrived with it,
/// so a group can be checked at once.
pub async fn consume_within<F>(
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    mut deliver: F,
) where
    F: FnMut(Vec<(Message, OwnedSemaphorePermit)>) -> bool,
{
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) if pause_after_failure(&cancel, &e).await => continue,
            Err(_) => return,
        };
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                next = batch.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    debug!(error = %e, "pull request ended");
                    break;
                }
                None => break,
            };
            let Some(permit) = permits.pop() else { break };
            let mut group = vec![(message, permit)];
            let mut ended = false;
            while !permits.is_empty() {
                match batch.next().now_or_never() {
                    Some(Some(Ok(message))) => {
                        group.push((message, permits.pop().expect("a permit is left")));
                    }
                    Some(Some(Err(e))) => {
                        debug!(error = %e, "pull request ended");
                        ended = true;
                        break;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if !deliver(group) {
                return;
            }
            if ended {
                break;
            }
        }
    }
}

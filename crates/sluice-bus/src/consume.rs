//! The one loop every durable consumer runs (the engine's trigger ingestor, completion
//! listener and dead-letter recorder, and the worker's run consumer): messages in batches,
//! so each batch can be handled as one group commit, and a reconnect when the message
//! stream ends or fails.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long to wait before pulling again after the server refused a pull.
const PULL_RETRY: Duration = Duration::from_secs(1);

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
            Err(e) => {
                warn!(error = %e, "cannot pull messages; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
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

//! Group commit, the one way the consumer loops write: a batch of received messages is
//! written in one store transaction, and each message is settled once that has committed.
//!
//! A transient failure (the store busy or unreachable) hands every message back with a
//! growing delay and rests the store; a batch the store refuses is written again one
//! message at a time, so only a message that fails alone is dead-lettered.

use async_nats::jetstream::Message;
use sluice_bus::Settle;
use sluice_store::StoreError;
use tracing::{Instrument as _, Span, error, warn};

use crate::context::Shared;

/// A decoded message waiting for its batch to be written.
pub(crate) trait Received {
    fn message(&self) -> &Message;
    /// The message's span: its log lines and settling belong to it.
    fn span(&self) -> &Span;
}

/// What a consumer writes and does after the commit.
pub(crate) trait Batch: Sync {
    type Item: Received + Send;
    type Outcome: Send;
    /// Names one message in logs and dead-letter reasons ("event", "report").
    const WHAT: &'static str;

    fn shared(&self) -> &Shared;
    fn settle(&self) -> &Settle;
    /// Writes the items in one transaction; one outcome per item, in order.
    fn write<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, StoreError>> + Send + 'a;
    /// After the commit: acts on one item's outcome and settles its message.
    fn after(&self, item: Self::Item, outcome: Self::Outcome) -> impl Future<Output = ()> + Send;
}

/// Writes `received` in one transaction, then calls [`Batch::after`] for each message in
/// order.
pub(crate) async fn group_commit<B: Batch>(batch: &B, received: Vec<B::Item>) {
    if received.is_empty() {
        return;
    }
    let (shared, settle, what) = (batch.shared(), batch.settle(), B::WHAT);
    match batch.write(&received).await {
        Ok(outcomes) => {
            shared.store_health.succeeded();
            for (r, outcome) in received.into_iter().zip(outcomes) {
                let span = r.span().clone();
                batch.after(r, outcome).instrument(span).await;
            }
        }
        Err(e) if e.is_transient() => {
            shared.store_health.failed();
            for r in received {
                warn!(parent: r.span(), error = %e, "store unavailable; the {what} will be redelivered");
                settle
                    .retry(r.message(), &e.to_string())
                    .instrument(r.span().clone())
                    .await;
            }
        }
        Err(e) if received.len() == 1 => {
            let r = &received[0];
            error!(parent: r.span(), error = %e, subject = %r.message().subject, "failed to record the {what}");
            settle
                .dead(r.message(), format!("the store refused the {what}: {e}"))
                .instrument(r.span().clone())
                .await;
        }
        Err(e) => {
            warn!(error = %e, messages = received.len(), "the store refused a batch; writing each {what} on its own");
            for r in received {
                Box::pin(group_commit(batch, vec![r])).await;
            }
        }
    }
}

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

/// The first step for every message of a batch: its span continues the publisher's trace,
/// it is counted as received, and while the store rests it is handed back at once. Returns
/// the message and its span when it is to be handled now.
pub(crate) async fn receive(
    shared: &Shared,
    settle: &Settle,
    message: Message,
    span: Span,
) -> Option<(Message, Span)> {
    sluice_bus::continue_trace(&span, &message);
    settle.received(&message);
    if shared.store_health.resting() {
        settle
            .retry(&message, "the store is unavailable")
            .instrument(span)
            .await;
        return None;
    }
    Some((message, span))
}

/// A decoded message waiting for its batch to be written, and how such a batch is written.
pub(crate) trait Received: Sized + Send {
    type Outcome: Send;
    /// Names one message in logs and dead-letter reasons ("event", "report").
    const WHAT: &'static str;

    fn message(&self) -> &Message;
    /// The message's span: its log lines and settling belong to it.
    fn span(&self) -> &Span;
    /// Writes the items in one transaction; one outcome per item, in order.
    fn write<'a>(
        shared: &'a Shared,
        items: &'a [Self],
    ) -> impl Future<Output = Result<Vec<Self::Outcome>, StoreError>> + Send + 'a;
    /// After the commit: acts on one item's outcome and settles its message.
    fn after(
        shared: &Shared,
        settle: &Settle,
        item: Self,
        outcome: Self::Outcome,
    ) -> impl Future<Output = ()> + Send;
}

/// Writes `received` in one transaction, then calls [`Received::after`] for each message in
/// order.
pub(crate) async fn group_commit<R: Received>(shared: &Shared, settle: &Settle, received: Vec<R>) {
    if received.is_empty() {
        return;
    }
    let what = R::WHAT;
    match R::write(shared, &received).await {
        Ok(outcomes) => {
            shared.store_health.succeeded();
            for (r, outcome) in received.into_iter().zip(outcomes) {
                let span = r.span().clone();
                R::after(shared, settle, r, outcome).instrument(span).await;
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
                Box::pin(group_commit(shared, settle, vec![r])).await;
            }
        }
    }
}

//! The trigger ingestor: TRIGGERS stream → event stored → rules matched → executions
//! requested and queued at their supervisors.
//!
//! Messages are handled in batches: each is decoded and matched on its own, then the batch
//! is stored in one transaction (group commit), and each message is acknowledged once that
//! has committed. A payload that can never be
//! accepted (not JSON or MessagePack, unknown trigger, schema mismatch) is stored as a
//! rejected event with the reason and acknowledged: it is never redelivered in a loop.
//! A store that is busy or unreachable gets the message nak'd with a growing delay; a
//! message the store refuses outright is dead-lettered.

use std::collections::HashSet;

use async_nats::jetstream::Message;
use chrono::Utc;
use serde_json::{Map, Value};
use sluice_bus::{Settle, decode_trigger};
use sluice_core::{ActionRef, EventStatus};
use sluice_pack::Catalog;
use sluice_store::{EventOutcome, Firing, NewEvent, StoreError};
use sluice_telemetry::{TraceContext, metrics};
use tracing::{Span, debug, info, info_span, warn};

use crate::commit::{self, group_commit};
use crate::context::Shared;
use crate::handles::{Directory, Pending, ReservedSlot};
use crate::rules;

/// One trigger message, decoded and matched, ready to be stored.
struct Received {
    message: Message,
    /// `trigger.received`: continues the publisher's trace when the message carries a
    /// `traceparent` header.
    span: Span,
    event: NewEvent,
    firings: Vec<Firing>,
    /// Per firing: the parameters as they will run (secret ones sealed) and its trace.
    parameters: Vec<(Map<String, Value>, TraceContext)>,
    /// Per firing: the slot its action's supervisor held for it, when the action had one
    /// free and nothing queued; such an execution is stored already `scheduled`.
    slots: Vec<Option<ReservedSlot>>,
    /// The payload may hold secret properties: once recorded, the message is erased from
    /// TRIGGERS, where it would otherwise stay in clear until the stream's age limit.
    erase: bool,
}

/// Handles a batch of trigger messages: each is decoded and matched in its own span, then
/// all are stored in one transaction (group commit) and acknowledged after the commit.
pub(crate) async fn handle_triggers(shared: &Shared, settle: &Settle, batch: Vec<Message>) {
    let mut received = Vec::with_capacity(batch.len());
    // One version of the catalog for the whole batch.
    let catalog = shared.catalog.current();
    for message in batch {
        let span = info_span!(
            "trigger.received",
            subject = %message.subject,
            event_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let Some((message, span)) = commit::receive(shared, settle, message, span).await else {
            continue;
        };
        received.push(span.in_scope(|| prepare(shared, &catalog, message, span.clone())));
    }
    // Actions that had no slot for an earlier firing of this batch: that firing will queue,
    // and a later one must not pass it.
    let mut queueing = HashSet::new();
    for r in &mut received {
        reserve(shared, &catalog, r, &mut queueing).await;
    }
    group_commit(shared, settle, received).await;
}

/// Asks each firing's supervisor for a slot now. An execution that gets one is stored
/// `scheduled` in its event's transaction, and its run message goes out after that commit:
/// one commit on its way to a worker instead of two.
async fn reserve(
    shared: &Shared,
    catalog: &Catalog,
    r: &mut Received,
    queueing: &mut HashSet<ActionRef>,
) {
    for (firing, (parameters, _)) in r.firings.iter_mut().zip(&r.parameters) {
        let supervisor = shared.directory.supervisor(&firing.action);
        let slot = match supervisor {
            Some(supervisor) if firing.failed.is_none() && !queueing.contains(&firing.action) => {
                let key = catalog
                    .action(&firing.action)
                    .map(|action| action.concurrency_key(parameters))
                    .unwrap_or_default();
                supervisor.reserve(key).await
            }
            _ => None,
        };
        if slot.is_none() && firing.failed.is_none() {
            queueing.insert(firing.action.clone());
        }
        firing.admitted = slot.is_some();
        r.slots.push(slot);
    }
}

/// Decodes, validates and matches one message: what its event and executions will be.
fn prepare(shared: &Shared, catalog: &Catalog, message: Message, span: Span) -> Received {
    let stream_seq = message.info().ok().map(|i| i.stream_sequence);
    let header = |name: &str| sluice_bus::header(&message, name);
    let subject = message.subject.to_string();
    let mut event = NewEvent {
        trigger: subject
            .strip_prefix(sluice_bus::TRIGGER_PREFIX)
            .unwrap_or(&subject)
            .to_owned(),
        subject: subject.clone(),
        payload: None,
        rejected: None,
        stream_seq,
        msg_id: header(sluice_bus::names::MSG_ID_HEADER),
    };
    let mut planned = Vec::new();
    let mut erase = false;
    match decode_trigger(
        &subject,
        header(sluice_bus::names::CONTENT_TYPE_HEADER).as_deref(),
        &message.payload,
    ) {
        Err(reason) => event.rejected = Some(reason),
        Ok(mut decoded) => {
            event.trigger = decoded.trigger;
            match catalog.triggers.get(&event.trigger) {
                None => {
                    let known = catalog
                        .triggers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ");
                    event.rejected = Some(format!(
                        "unknown trigger {:?} (known: {known})",
                        event.trigger
                    ));
                }
                Some(trigger) => {
                    let secret = trigger.secret_properties();
                    erase = !secret.is_empty();
                    if let Err(reason) = trigger.validate_payload(&decoded.payload) {
                        event.rejected = Some(reason);
                    } else {
                        let secrets = decoded
                            .payload
                            .as_object()
                            .map(|values| sluice_core::secrets::secret_texts(secret, values))
                            .unwrap_or_default();
                        planned = rules::plan(
                            catalog,
                            &shared.keyring,
                            &shared.kv,
                            &event.trigger,
                            &decoded.payload,
                            &secrets,
                        );
                    }
                    // The event keeps the payload with its secret properties masked.
                    if let Some(values) = decoded.payload.as_object_mut() {
                        for name in secret {
                            if let Some(value) = values.get_mut(name) {
                                *value = Value::String(sluice_core::secrets::MASK.to_owned());
                            }
                        }
                    }
                }
            }
            event.payload = Some(decoded.payload);
        }
    }
    // One `rule.matched` span per rule that fired; its context is the execution's trace.
    let (firings, parameters): (Vec<_>, Vec<_>) = planned
        .into_iter()
        .map(|mut p| {
            let matched =
                info_span!("rule.matched", rule = %p.firing.rule, action = %p.firing.action);
            let trace = TraceContext::of(&matched);
            p.firing.traceparent = trace.traceparent();
            (p.firing, (p.parameters, trace))
        })
        .unzip();
    Received {
        message,
        span,
        event,
        firings,
        parameters,
        erase,
        slots: Vec::new(),
    }
}

/// A batch of trigger messages is stored in one transaction: its events, enforcements and
/// executions; then each message's executions are queued and the message acknowledged.
impl commit::Received for Received {
    type Outcome = EventOutcome;
    const WHAT: &'static str = "event";

    fn message(&self) -> &Message {
        &self.message
    }

    fn span(&self) -> &Span {
        &self.span
    }

    async fn write(shared: &Shared, items: &[Self]) -> Result<Vec<EventOutcome>, StoreError> {
        let batch: Vec<(&NewEvent, &[Firing])> = items
            .iter()
            .map(|r| (&r.event, r.firings.as_slice()))
            .collect();
        shared.store.record_events(&batch).await
    }

    async fn after(shared: &Shared, settle: &Settle, item: Self, outcome: EventOutcome) {
        let erase = item
            .erase
            .then(|| item.message.info().map(|i| i.stream_sequence).ok())
            .flatten();
        accepted(&shared.directory, settle, item, outcome).await;
        if let Some(seq) = erase
            && let Err(e) = shared.bus.erase(sluice_bus::names::TRIGGERS, seq).await
        {
            warn!(stream_seq = seq, error = %e, "trigger message with secrets not erased");
        }
    }
}

/// After the commit: logs, queues the executions at their supervisors, acknowledges.
async fn accepted(directory: &Directory, settle: &Settle, r: Received, outcome: EventOutcome) {
    tracing::Span::current().record("event_id", outcome.event_id.0);
    if outcome.duplicate {
        metrics().duplicates_suppressed.inc(["trigger"]);
        debug!(event_id = %outcome.event_id, "trigger message redelivered; already recorded");
    } else if let Some(reason) = &r.event.rejected {
        metrics()
            .trigger_events
            .inc([EventStatus::Rejected.as_str()]);
        warn!(event_id = %outcome.event_id, subject = %r.event.subject, reason, "trigger rejected");
    } else {
        metrics()
            .trigger_events
            .inc([EventStatus::Accepted.as_str()]);
        info!(event_id = %outcome.event_id, trigger = r.event.trigger, rules = r.firings.len(), "trigger accepted");
    }
    // The store returns the executions it created in firing order, failed ones left out.
    let runnable = r
        .firings
        .iter()
        .zip(r.parameters.into_iter().zip(r.slots))
        .filter(|(firing, _)| firing.failed.is_none())
        .map(|(_, runnable)| runnable);
    for ((id, action), ((parameters, trace), slot)) in outcome.executions.into_iter().zip(runnable)
    {
        let pending = Pending::new(id, 1, parameters, Utc::now(), trace);
        match slot {
            Some(slot) => slot.bind(pending),
            None => {
                directory.queue(&action, pending);
            }
        }
    }
    for failed in r.firings.iter().filter_map(|f| f.failed.as_ref()) {
        warn!(
            reason = failed,
            "rule fired but its execution could not be requested"
        );
    }
    settle.ack(&r.message).await;
}

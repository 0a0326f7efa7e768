//! The dead-letter recorder: DEADLETTER stream → the store's `dead_letters` table, listed by
//! `GET /api/v1/dead-letters` and counted in `sluice_dead_letters_total`.
//!
//! It never publishes: a dead letter it cannot read is recorded from the message itself, and
//! one it cannot store after every allowed delivery stays in the DEADLETTER stream (kept 30
//! days) with an error in the log.

use async_nats::jetstream::Message;
use chrono::Utc;
use sluice_bus::{Settle, names};
use sluice_core::DeadLetter;
use sluice_telemetry::metrics;
use tracing::{error, warn};

use crate::context::Shared;

pub(crate) async fn handle_dead_letters(shared: &Shared, settle: &Settle, batch: Vec<Message>) {
    for message in batch {
        handle_dead_letter(shared, settle, message).await;
    }
}

async fn handle_dead_letter(shared: &Shared, settle: &Settle, message: Message) {
    settle.received(&message);
    let letter = match sluice_core::decode::<DeadLetter>(&message.payload) {
        Ok(letter) => letter,
        Err(e) => unreadable(shared, &message, &e.to_string()),
    };
    match shared.store.record_dead_letter(&letter).await {
        Ok(new) => {
            if new {
                metrics().dead_letters.inc();
            } else {
                metrics().duplicates_suppressed.inc(["dead_letter"]);
            }
            settle.ack(&message).await;
        }
        Err(e) if e.is_transient() && !settle.is_last_delivery(&message) => {
            warn!(error = %e, "store unavailable; dead letter will be redelivered");
            settle.nak(&message).await;
        }
        Err(e) => {
            error!(
                error = %e,
                stream = letter.stream,
                stream_seq = letter.stream_seq,
                reason = letter.reason,
                "dead letter not recorded; it stays in the DEADLETTER stream"
            );
            settle.term(&message).await;
        }
    }
}

/// A message on a dead-letter subject that no Sluice process wrote: recorded as a dead
/// letter of the DEADLETTER stream itself.
fn unreadable(shared: &Shared, message: &Message, error: &str) -> DeadLetter {
    let info = message.info().ok();
    DeadLetter {
        stream: names::DEADLETTER.into(),
        consumer: names::ENGINE_CONSUMER.into(),
        subject: message.subject.to_string(),
        stream_seq: info.as_ref().map_or(0, |i| i.stream_sequence),
        deliveries: sluice_bus::settle::deliveries(message),
        reason: format!("unreadable dead letter: {error}"),
        payload_size: message.payload.len() as u64,
        payload: Some(
            message.payload[..message.payload.len().min(DeadLetter::MAX_PAYLOAD)].to_vec(),
        ),
        by: shared.directory.engine().to_owned(),
        at: Utc::now(),
    }
}

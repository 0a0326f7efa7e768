//! How a consumer settles each message it is given:
//!
//! - **ack** once the message's effect is durable;
//! - **nak with a delay** on a transient failure, the delay doubling with each delivery
//!   ([`backoff`]), until the consumer's bounded `max_deliver` is reached;
//! - **term with a dead letter** when the message can never succeed, or when its last
//!   allowed delivery failed too. The dead letter is published to the DEADLETTER stream
//!   before the term, so a message is never given up without a record of why.
//!
//! Every outcome is counted in the process's metrics.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::Utc;
use sluice_core::DeadLetter;
use sluice_telemetry::metrics;
use tracing::{error, warn};

use crate::client::{Bus, Published};
use crate::error::BusError;

/// The delay before delivery `delivered + 1` after a nak: 250 ms doubling to 30 s.
pub fn backoff(delivered: u64) -> Duration {
    let exponent = delivered.saturating_sub(1).min(16) as u32;
    Duration::from_millis(250u64.saturating_mul(1 << exponent)).min(Duration::from_secs(30))
}

/// The settling rules of one durable consumer.
#[derive(Clone, Debug)]
pub struct Settle {
    bus: Bus,
    stream: &'static str,
    durable: &'static str,
    /// The `consumer` label of this consumer's metrics.
    label: &'static str,
    max_deliver: u64,
    /// Whether a dead letter may keep the payload (not for run messages: secrets).
    keep_payload: bool,
    by: String,
}

impl Settle {
    /// The rules for `durable` on `stream` as declared in `streams/`; `by` names this
    /// process in dead letters.
    pub fn new(
        bus: Bus,
        stream: &'static str,
        durable: &'static str,
        label: &'static str,
        by: impl Into<String>,
    ) -> Self {
        let max_deliver = crate::definitions()
            .into_iter()
            .filter(|d| d.stream.name == stream)
            .flat_map(|d| d.consumers)
            .find(|c| c.config.durable_name.as_deref() == Some(durable))
            .map(|c| c.config.max_deliver)
            .unwrap_or_else(|| panic!("streams/{stream}: no consumer {durable}"));
        Self {
            bus,
            stream,
            durable,
            label,
            max_deliver: u64::try_from(max_deliver).unwrap_or(u64::MAX),
            keep_payload: stream != crate::names::RUN,
            by: by.into(),
        }
    }

    /// Notes a delivery and returns how many times the message has been delivered.
    pub fn received(&self, message: &Message) -> u64 {
        let delivered = deliveries(message);
        if delivered > 1 {
            metrics().redeliveries.inc([self.label]);
        }
        delivered
    }

    /// Whether this is the last delivery the consumer allows.
    pub fn is_last_delivery(&self, message: &Message) -> bool {
        deliveries(message) >= self.max_deliver
    }

    /// The effect is durable.
    pub async fn ack(&self, message: &Message) {
        match message.ack().await {
            Ok(()) => metrics().acks.inc([self.label]),
            Err(e) => {
                warn!(subject = %message.subject, error = %e, "ack not sent; the redelivery will be recognised")
            }
        }
    }

    /// The effect is durable, and JetStream confirms it has the ack: for a worker's run
    /// message, whose redelivery would cost a claim check on another worker.
    pub async fn double_ack(&self, message: &Message) -> Result<(), BusError> {
        message
            .double_ack()
            .await
            .map_err(|e| BusError::read(format!("ack of {}", message.subject), e))?;
        metrics().acks.inc([self.label]);
        Ok(())
    }

    /// A transient failure: deliver the message again after a backoff, or, on its last
    /// allowed delivery, give it up with a dead letter naming `error`.
    pub async fn retry(&self, message: &Message, error: &str) {
        let delivered = deliveries(message);
        if delivered >= self.max_deliver {
            let reason = format!("still failing after {delivered} deliveries: {error}");
            self.dead(message, reason).await;
            return;
        }
        self.nak(message).await;
    }

    /// Asks for the message again after [`backoff`], whatever its delivery count.
    pub async fn nak(&self, message: &Message) {
        metrics().naks.inc([self.label]);
        let delay = backoff(deliveries(message));
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            warn!(subject = %message.subject, error = %e, "nak not sent; redelivered after ack_wait");
        }
    }

    /// Terminates the message without a dead letter: for the consumer of dead letters
    /// itself, which must never publish to the stream it reads.
    pub async fn term(&self, message: &Message) {
        metrics().terms.inc([self.label]);
        if let Err(e) = message.ack_with(AckKind::Term).await {
            warn!(subject = %message.subject, error = %e, "term not sent");
        }
    }

    /// The message can never succeed: record a dead letter, then terminate it. If the dead
    /// letter cannot be published, the message is nak'd instead and comes back for another
    /// try, so nothing is given up without its record.
    pub async fn dead(&self, message: &Message, reason: String) {
        match self.publish_dead_letter(message, &reason).await {
            Ok(_) => self.term(message).await,
            Err(e) => {
                error!(subject = %message.subject, reason, error = %e, "dead letter not stored; the message will come back");
                self.nak(message).await;
            }
        }
    }

    async fn publish_dead_letter(
        &self,
        message: &Message,
        reason: &str,
    ) -> Result<Published, BusError> {
        let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let payload = self.keep_payload.then(|| {
            message.payload[..message.payload.len().min(DeadLetter::MAX_PAYLOAD)].to_vec()
        });
        let letter = DeadLetter {
            stream: self.stream.to_owned(),
            consumer: self.durable.to_owned(),
            subject: message.subject.to_string(),
            stream_seq,
            deliveries: deliveries(message),
            reason: reason.to_owned(),
            payload_size: message.payload.len() as u64,
            payload,
            by: self.by.clone(),
            at: Utc::now(),
        };
        error!(
            stream = self.stream,
            subject = %message.subject,
            stream_seq,
            reason,
            "message dead-lettered"
        );
        self.bus.publish_dead_letter(&letter).await
    }
}

/// How many times JetStream has delivered the message (1 on the first delivery).
pub fn deliveries(message: &Message) -> u64 {
    message
        .info()
        .map(|i| u64::try_from(i.delivered).unwrap_or(1))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_quarter_second_to_thirty() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(5), Duration::from_secs(4));
        assert_eq!(backoff(8), Duration::from_secs(30));
        assert_eq!(backoff(u64::MAX), Duration::from_secs(30));
    }
}

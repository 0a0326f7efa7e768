//! The trigger ingestor: TRIGGERS stream → event stored → rules matched → executions
//! requested and queued at their supervisors.
//!
//! A message is acknowledged once its effect is committed. A payload that can never be
//! accepted (not JSON or MessagePack, unknown trigger, schema mismatch) is stored as a
//! rejected event with the reason and acknowledged: it is never redelivered in a loop.
//! A store that is busy or unreachable gets the message nak'd with a growing delay; a
//! message the store refuses outright is dead-lettered.

use std::sync::Arc;

use async_nats::jetstream::Message;
use chrono::Utc;
use sluice_bus::{Settle, decode_trigger};
use sluice_store::NewEvent;
use sluice_telemetry::metrics;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::rules;
use crate::supervisor::Pending;
use crate::{Routes, Shared};

/// Handles one trigger message inside a `trigger.received` span, which continues the
/// publisher's trace when the message carries a `traceparent` header.
pub(crate) async fn handle_trigger(
    shared: &Arc<Shared>,
    routes: &Routes,
    settle: &Settle,
    message: Message,
) {
    let span = info_span!(
        "trigger.received",
        subject = %message.subject,
        event_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    sluice_bus::continue_trace(&span, &message);
    if let Some(trace_id) = sluice_telemetry::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    receive(shared, routes, settle, message)
        .instrument(span)
        .await;
}

async fn receive(shared: &Arc<Shared>, routes: &Routes, settle: &Settle, message: Message) {
    settle.received(&message);
    if shared.store_health.resting() {
        settle.retry(&message, "the store is unavailable").await;
        return;
    }
    let stream_seq = message.info().ok().map(|i| i.stream_sequence);
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
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
        msg_id: header("Nats-Msg-Id"),
    };
    let mut planned = Vec::new();
    match decode_trigger(
        &subject,
        header("Content-Type").as_deref(),
        &message.payload,
    ) {
        Err(reason) => event.rejected = Some(reason),
        Ok(decoded) => {
            event.trigger = decoded.trigger;
            match shared.catalog.triggers.get(&event.trigger) {
                None => {
                    let known = shared
                        .catalog
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
                    if let Err(reason) = trigger.validate_payload(&decoded.payload) {
                        event.rejected = Some(reason);
                    } else {
                        planned = rules::plan(&shared.catalog, &event.trigger, &decoded.payload);
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
            let trace = sluice_telemetry::trace_headers(&matched);
            p.firing.traceparent = trace.get("traceparent").cloned();
            (p.firing, (p.parameters, trace))
        })
        .unzip();
    match shared.store.record_event(&event, &firings).await {
        Ok(outcome) => {
            shared.store_health.succeeded();
            tracing::Span::current().record("event_id", outcome.event_id.0);
            if outcome.duplicate {
                metrics().duplicates_suppressed.inc(["trigger"]);
                debug!(event_id = %outcome.event_id, "trigger message redelivered; already recorded");
            } else if let Some(reason) = &event.rejected {
                metrics().trigger_events.inc(["rejected"]);
                warn!(event_id = %outcome.event_id, subject, reason, "trigger rejected");
            } else {
                metrics().trigger_events.inc(["accepted"]);
                info!(event_id = %outcome.event_id, trigger = event.trigger, rules = firings.len(), "trigger accepted");
            }
            // The store returns the executions it created in firing order, failed ones left out.
            let runnable = firings
                .iter()
                .zip(parameters)
                .filter(|(firing, _)| firing.failed.is_none())
                .map(|(_, parameters)| parameters);
            for ((id, action), parameters) in outcome.executions.into_iter().zip(runnable) {
                if let Some(supervisor) = routes.get(&action) {
                    let (parameters, trace) = parameters;
                    supervisor.enqueue(Pending::new(id, 1, &action, parameters, Utc::now(), trace));
                }
            }
            for failed in firings.iter().filter_map(|f| f.failed.as_ref()) {
                warn!(
                    reason = failed,
                    "rule fired but its execution could not be requested"
                );
            }
            settle.ack(&message).await;
        }
        Err(e) if e.is_transient() => {
            shared.store_health.failed();
            warn!(error = %e, "store unavailable; trigger message will be redelivered");
            settle.retry(&message, &e.to_string()).await;
        }
        Err(e) => {
            error!(error = %e, subject, "failed to record trigger");
            settle
                .dead(&message, format!("the store refused the event: {e}"))
                .await;
        }
    }
}

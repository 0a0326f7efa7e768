//! The completion listener: STATUS stream → store → the action's supervisor.
//!
//! The engine only records what workers report. Every update is conditional on the status
//! and on the report's attempt, so a report that is stale or repeated changes nothing and
//! tells nobody; a change is passed to the action's supervisor.

use std::sync::Arc;

use async_nats::jetstream::Message;
use sluice_bus::Settle;
use sluice_core::{ExecutionStatus, StatusReport};
use sluice_store::Transition;
use sluice_telemetry::metrics;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{Routes, Shared};

/// Handles one report inside a `report.recorded` span, a child of the worker's
/// `execution.run` span by the message's trace context.
pub(crate) async fn handle_status(
    shared: &Arc<Shared>,
    routes: &Routes,
    settle: &Settle,
    message: Message,
) {
    let span = info_span!(
        "report.recorded",
        subject = %message.subject,
        execution_id = tracing::field::Empty,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    sluice_bus::continue_trace(&span, &message);
    if let Some(trace_id) = sluice_telemetry::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    record(shared, routes, settle, message)
        .instrument(span)
        .await;
}

async fn record(shared: &Arc<Shared>, routes: &Routes, settle: &Settle, message: Message) {
    settle.received(&message);
    let report: StatusReport = match sluice_core::decode(&message.payload) {
        Ok(report) => report,
        Err(e) => {
            settle
                .dead(&message, format!("unreadable status report: {e}"))
                .await;
            return;
        }
    };
    if shared.store_health.resting() {
        settle.retry(&message, "the store is unavailable").await;
        return;
    }
    let id = report.execution_id;
    let span = tracing::Span::current();
    span.record("execution_id", id.0);
    span.record("status", report.status.as_str());
    let terminal = report.status.is_terminal();
    if report.status != ExecutionStatus::Running && !terminal {
        let reason = format!(
            "status {} is set by the engine only; a worker cannot report it",
            report.status
        );
        settle.dead(&message, reason).await;
        return;
    }
    let transition = Transition {
        to: report.status,
        attempt: Some(report.attempt),
        result: terminal.then(|| report.result.clone()),
        worker: Some(report.worker.clone()),
        at: report.at,
    };
    match shared.store.transition(id, &transition).await {
        Ok(changed) => {
            shared.store_health.succeeded();
            if changed && terminal {
                metrics().completions.inc();
                info!(execution_id = %id, action = %report.action, status = %report.status, worker = report.worker, "execution finished");
            } else if !changed {
                metrics().stale_reports_ignored.inc();
                debug!(execution_id = %id, status = %report.status, "stale or repeated report ignored");
            }
            // Only a change is news: a stale report (a superseded attempt, a redelivery)
            // must not end the child of the attempt that is running now.
            if changed && let Some(supervisor) = routes.get(&report.action) {
                if terminal {
                    supervisor.finished(id);
                } else {
                    supervisor.running(id, report.worker.clone());
                }
            }
            settle.ack(&message).await;
        }
        Err(e) if e.is_transient() => {
            shared.store_health.failed();
            warn!(execution_id = %id, error = %e, "store unavailable; report will be redelivered");
            settle.retry(&message, &e.to_string()).await;
        }
        Err(e) => {
            error!(execution_id = %id, error = %e, "failed to record report");
            settle
                .dead(&message, format!("the store refused the report: {e}"))
                .await;
        }
    }
}

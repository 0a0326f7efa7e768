//! The completion listener: STATUS stream → store → the action's supervisor.
//!
//! The engine only records what workers report. Every update is conditional on the status
//! and on the report's attempt, so a report that is stale or repeated changes nothing and
//! tells nobody; a change is passed to the action's supervisor.
//!
//! Reports are handled in batches: the batch's updates are applied in order in one
//! transaction (group commit), and each report is acknowledged once that has committed.

use async_nats::jetstream::Message;
use sluice_bus::Settle;
use sluice_core::{ExecutionStatus, StatusReport};
use sluice_store::Transition;
use sluice_telemetry::metrics;
use tracing::{Instrument as _, Span, debug, error, info, info_span, warn};

use crate::context::Shared;
use crate::handles::Directory;

/// One readable report, with its `report.recorded` span: a child of the worker's
/// `execution.run` span by the message's trace context.
struct Received {
    message: Message,
    report: StatusReport,
    span: Span,
}

pub(crate) async fn handle_statuses(shared: &Shared, settle: &Settle, batch: Vec<Message>) {
    let mut received = Vec::with_capacity(batch.len());
    for message in batch {
        let span = info_span!(
            "report.recorded",
            subject = %message.subject,
            execution_id = tracing::field::Empty,
            status = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        sluice_bus::continue_trace(&span, &message);
        settle.received(&message);
        if shared.store_health.resting() {
            settle
                .retry(&message, "the store is unavailable")
                .instrument(span)
                .await;
            continue;
        }
        let report: StatusReport = match sluice_core::decode(&message.payload) {
            Ok(report) => report,
            Err(e) => {
                settle
                    .dead(&message, format!("unreadable status report: {e}"))
                    .instrument(span)
                    .await;
                continue;
            }
        };
        span.record("execution_id", report.execution_id.0);
        span.record("status", report.status.as_str());
        if report.status != ExecutionStatus::Running && !report.status.is_terminal() {
            let reason = format!(
                "status {} is set by the engine only; a worker cannot report it",
                report.status
            );
            settle.dead(&message, reason).instrument(span).await;
            continue;
        }
        received.push(Received {
            message,
            report,
            span,
        });
    }
    record(shared, settle, received).await;
}

fn transition(report: &StatusReport) -> Transition {
    let terminal = report.status.is_terminal();
    Transition {
        to: report.status,
        attempt: Some(report.attempt),
        result: terminal.then(|| report.result.clone()),
        worker: Some(report.worker.clone()),
        at: report.at,
    }
}

/// Applies the batch's updates in one transaction, then tells supervisors and acknowledges.
/// A transient failure hands every report back; a batch the store refuses is retried one
/// report at a time, so only a report that fails alone is dead-lettered.
async fn record(shared: &Shared, settle: &Settle, received: Vec<Received>) {
    if received.is_empty() {
        return;
    }
    let batch: Vec<_> = received
        .iter()
        .map(|r| (r.report.execution_id, transition(&r.report)))
        .collect();
    match shared.store.transitions(&batch).await {
        Ok(changed) => {
            shared.store_health.succeeded();
            for (r, changed) in received.into_iter().zip(changed) {
                let span = r.span.clone();
                applied(&shared.directory, settle, r, changed)
                    .instrument(span)
                    .await;
            }
        }
        Err(e) if e.is_transient() => {
            shared.store_health.failed();
            for r in received {
                warn!(parent: &r.span, execution_id = %r.report.execution_id, error = %e, "store unavailable; report will be redelivered");
                settle
                    .retry(&r.message, &e.to_string())
                    .instrument(r.span)
                    .await;
            }
        }
        Err(e) if received.len() == 1 => {
            let r = received.into_iter().next().expect("one report");
            error!(parent: &r.span, execution_id = %r.report.execution_id, error = %e, "failed to record report");
            settle
                .dead(&r.message, format!("the store refused the report: {e}"))
                .instrument(r.span)
                .await;
        }
        Err(e) => {
            warn!(error = %e, reports = received.len(), "the store refused a batch of reports; recording them one by one");
            for r in received {
                Box::pin(record(shared, settle, vec![r])).await;
            }
        }
    }
}

/// After the commit: counts, tells the action's supervisor of a change, acknowledges.
async fn applied(directory: &Directory, settle: &Settle, r: Received, changed: bool) {
    let report = &r.report;
    let id = report.execution_id;
    let terminal = report.status.is_terminal();
    if changed && terminal {
        metrics().completions.inc();
        info!(execution_id = %id, action = %report.action, status = %report.status, worker = report.worker, "execution finished");
    } else if !changed {
        metrics().stale_reports_ignored.inc();
        debug!(execution_id = %id, status = %report.status, "stale or repeated report ignored");
    }
    // Only a change is news: a stale report (a superseded attempt, a redelivery) must not
    // end the child of the attempt that is running now.
    if changed && let Some(supervisor) = directory.supervisor(&report.action) {
        if terminal {
            supervisor.finished(id);
        } else {
            supervisor.running(id, report.worker.clone());
        }
    }
    settle.ack(&r.message).await;
}

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
use sluice_store::{StoreError, Transition};
use sluice_telemetry::metrics;
use tracing::{Instrument as _, Span, debug, info, info_span};

use crate::commit::{self, group_commit};
use crate::context::Shared;
use crate::handles::Directory;

/// One readable report, with its `report.recorded` span: a child of the worker's
/// `execution.run` span by the message's trace context.
struct Received {
    message: Message,
    report: StatusReport,
    span: Span,
    /// The wait before the next attempt, when the action's retry policy runs this ended
    /// attempt again.
    retry: Option<std::time::Duration>,
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
        let Some((message, span)) = commit::receive(shared, settle, message, span).await else {
            continue;
        };
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
        let retry = retry_after(shared, &report);
        received.push(Received {
            message,
            report,
            span,
            retry,
        });
    }
    group_commit(shared, settle, received).await;
}

/// The wait before the next attempt when the action's retry policy retries how this
/// attempt ended.
fn retry_after(shared: &Shared, report: &StatusReport) -> Option<std::time::Duration> {
    let catalog = shared.catalog.current();
    let retry = catalog.action(&report.action)?.policy.retry.as_ref()?;
    if !retry.retries(report.status, report.attempt) {
        return None;
    }
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    let spread = f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0);
    Some(retry.delay_after(report.attempt, spread))
}

fn transition(r: &Received) -> Transition {
    let report = &r.report;
    if r.retry.is_some() {
        // Back to the queue as the next attempt, keeping this attempt's result to show.
        return Transition {
            to: ExecutionStatus::Requested,
            attempt: Some(report.attempt),
            result: Some(report.result.clone()),
            worker: None,
            at: report.at,
        };
    }
    let terminal = report.status.is_terminal();
    Transition {
        to: report.status,
        attempt: Some(report.attempt),
        result: terminal.then(|| report.result.clone()),
        worker: Some(report.worker.clone()),
        at: report.at,
    }
}

/// A batch of reports is applied in one transaction, in order; then each change is passed
/// to its supervisor and each report acknowledged.
impl commit::Received for Received {
    type Outcome = bool;
    const WHAT: &'static str = "report";

    fn message(&self) -> &Message {
        &self.message
    }

    fn span(&self) -> &Span {
        &self.span
    }

    async fn write(shared: &Shared, items: &[Self]) -> Result<Vec<bool>, StoreError> {
        let batch: Vec<_> = items
            .iter()
            .map(|r| (r.report.execution_id, transition(r)))
            .collect();
        shared.store.transitions(&batch).await
    }

    async fn after(shared: &Shared, settle: &Settle, item: Self, changed: bool) {
        applied(&shared.directory, settle, item, changed).await
    }
}

/// After the commit: counts, tells the action's supervisor of a change, acknowledges.
async fn applied(directory: &Directory, settle: &Settle, r: Received, changed: bool) {
    let report = &r.report;
    let id = report.execution_id;
    if let Some(delay) = r.retry {
        if changed {
            info!(execution_id = %id, action = %report.action, status = %report.status, attempt = report.attempt, delay_ms = delay.as_millis() as u64, "attempt ended; the action's policy runs it again");
            if let Some(supervisor) = directory.supervisor(&report.action) {
                supervisor.retry(id, delay);
            }
        } else {
            metrics().stale_reports_ignored.inc();
        }
        settle.ack(&r.message).await;
        return;
    }
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

//! The completion listener: STATUS stream → store → the action's supervisor.
//!
//! The engine only records what workers report. Every update is conditional on the status
//! and on the report's attempt, so a report that is stale or repeated changes nothing and
//! tells nobody; a change is passed to the action's supervisor.
//!
//! Reports are handled in batches: the batch's updates are applied in order in one
//! transaction (group commit), and each report is acknowledged once that has committed.
//!
//! A completion whose result was too large to travel inside it names an object in the
//! results bucket instead. Its JSON is read from there and written to the store as the
//! text it is, and the object is deleted once the completion is recorded.

use async_nats::jetstream::Message;
use serde_json::json;
use sluice_bus::Settle;
use sluice_bus::names::RESULTS_BUCKET;
use sluice_core::{ExecutionStatus, StatusReport};
use sluice_store::{ResultJson, StoreError, Transition};
use sluice_telemetry::metrics;
use tracing::{Instrument as _, Span, debug, info, info_span, warn};

use crate::commit::{self, group_commit};
use crate::context::Shared;
use crate::handles::Directory;

/// One readable report, with its `report.recorded` span: a child of the worker's
/// `execution.run` span by the message's trace context.
struct Received {
    message: Message,
    /// The report as received, its result moved out to `result`.
    report: StatusReport,
    result: ResultJson,
    /// The object in the results bucket the result was read from.
    object: Option<String>,
    span: Span,
    /// The wait before the next attempt, when the action's retry policy runs this ended
    /// attempt again.
    retry: Option<std::time::Duration>,
}

/// How many bytes of large results (read from the results bucket) one group commit holds
/// at most; a batch with more commits in several.
const RESULT_BYTES_PER_COMMIT: u64 = 64 * 1024 * 1024;

pub(crate) async fn handle_statuses(shared: &Shared, settle: &Settle, batch: Vec<Message>) {
    let mut received = Vec::with_capacity(batch.len());
    let mut held_bytes = 0u64;
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
        let mut report: StatusReport = match sluice_core::decode(&message.payload) {
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
        // Large results are held until their commit: rather than hold more than the
        // budget, commit the reports before this one first.
        let incoming = report.result_object.as_ref().map_or(0, |o| o.size);
        if incoming > 0 && held_bytes > 0 && held_bytes + incoming > RESULT_BYTES_PER_COMMIT {
            group_commit(shared, settle, std::mem::take(&mut received)).await;
            held_bytes = 0;
        }
        let (result, object) = match take_result(shared, &mut report).await {
            Ok(taken) => taken,
            Err(e) => {
                warn!(parent: &span, error = %e, "the result could not be read from the results bucket; the report will be redelivered");
                settle
                    .retry(&message, &e.to_string())
                    .instrument(span)
                    .await;
                continue;
            }
        };
        let retry = retry_after(shared, &report);
        held_bytes += incoming;
        received.push(Received {
            message,
            report,
            result,
            object,
            span,
            retry,
        });
    }
    group_commit(shared, settle, received).await;
}

/// The report's result, taken out of it: the value it carries, or the JSON text of the
/// object it names in the results bucket, with the object's name. An object that is gone
/// gives a result that says so: it outlived the bucket's `max_age`, or this is a repeat of
/// a report already recorded, whose object was deleted then (the store ignores the repeat).
async fn take_result(
    shared: &Shared,
    report: &mut StatusReport,
) -> Result<(ResultJson, Option<String>), sluice_bus::BusError> {
    let Some(object) = report.result_object.take() else {
        return Ok((std::mem::take(&mut report.result).into(), None));
    };
    let Some(bytes) = shared.results.fetch(&object.name).await? else {
        let error = format!(
            "the result ({} bytes) is no longer in the {RESULTS_BUCKET} bucket",
            object.size
        );
        return Ok((json!({ "error": error }).into(), None));
    };
    let result = String::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| ResultJson::from_text(text).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            let error = format!(
                "the result in {RESULTS_BUCKET}/{} is not JSON: {e}",
                object.name
            );
            json!({ "error": error }).into()
        });
    Ok((result, Some(object.name)))
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
            result: Some(r.result.clone()),
            worker: None,
            at: report.at,
        };
    }
    let terminal = report.status.is_terminal();
    Transition {
        to: report.status,
        attempt: Some(report.attempt),
        result: terminal.then(|| r.result.clone()),
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

    async fn after(shared: &Shared, settle: &Settle, mut item: Self, changed: bool) {
        let object = item.object.take();
        applied(&shared.directory, settle, item, changed).await;
        if let Some(name) = object {
            // Recorded (or a repeat): the object has done its work. One the delete misses
            // goes with the bucket's max_age.
            let results = shared.results.clone();
            tokio::spawn(async move {
                if let Err(e) = results.delete(&name).await {
                    warn!(object = %name, error = %e, "a stored result's object was not deleted; the bucket drops it after a day");
                }
            });
        }
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

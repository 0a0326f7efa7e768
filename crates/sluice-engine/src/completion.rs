//! The completion listener: STATUS stream → store → the action's supervisor.
//!
//! The engine records what workers report, and its own cancel of an attempt no worker had
//! claimed ([`sluice_bus::Bus::cancel`]), which travels the same way. Every update is
//! conditional on the status and on the report's attempt, so a report that is stale or
//! repeated changes nothing and tells nobody; a change is passed to the action's supervisor.
//!
//! Reports are handled in batches: the batch's updates are applied in order in one
//! transaction (group commit), and each report is acknowledged once that has committed. An
//! attempt's `running` report and its end in the same batch are one update.
//!
//! A completion whose result was too large to travel inside it names an object in the
//! results bucket instead. Its JSON is read from there and written to the store as the
//! text it is, and the object is deleted once the completion is recorded.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};
use serde_json::json;
use sluice_bus::Settle;
use sluice_bus::names::RESULTS_BUCKET;
use sluice_core::{ExecutionId, ExecutionStatus, StatusReport};
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
        if report.by_engine() && report.status != ExecutionStatus::Cancelled {
            let reason = format!(
                "a {} report must name its worker; only the engine's cancel names none",
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
            started: None,
        };
    }
    let terminal = report.status.is_terminal();
    Transition {
        to: report.status,
        attempt: Some(report.attempt),
        result: terminal.then(|| r.result.clone()),
        // The engine's cancel of an attempt no worker claimed names no worker.
        worker: (!report.by_engine()).then(|| report.worker.clone()),
        at: report.at,
        started: None,
    }
}

/// How a report of a batch is written.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fold {
    /// By its own update.
    Alone,
    /// A `running` report whose attempt's end comes later in the batch: the end's update,
    /// at the item with this index, records the start too.
    Into(usize),
    /// An end that records the start of its attempt, at this time, as well.
    EndOf(DateTime<Utc>),
}

/// Which reports of a batch are written together: a `running` report and the end of the
/// same attempt (one the action's retry policy does not run again) become one update,
/// which sets the start time and the end; the history keeps both statuses. A fast action's
/// two reports usually arrive in one batch, and this saves one update of the two.
fn folded_starts<'a>(reports: impl Iterator<Item = (&'a StatusReport, bool)>) -> Vec<Fold> {
    let mut folds = Vec::new();
    // Per attempt, its `running` reports so far (a repeat is folded too) and the first one's
    // time.
    let mut running: HashMap<(ExecutionId, u32), (Vec<usize>, DateTime<Utc>)> = HashMap::new();
    for (i, (report, retried)) in reports.enumerate() {
        folds.push(Fold::Alone);
        let key = (report.execution_id, report.attempt);
        if report.status == ExecutionStatus::Running {
            running
                .entry(key)
                .or_insert((Vec::new(), report.at))
                .0
                .push(i);
        } else if !retried && let Some((starts, started)) = running.remove(&key) {
            for start in starts {
                folds[start] = Fold::Into(i);
            }
            folds[i] = Fold::EndOf(started);
        }
    }
    folds
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
        let folds = folded_starts(items.iter().map(|r| (&r.report, r.retry.is_some())));
        let mut batch = Vec::with_capacity(items.len());
        // Per item, its own update's place in `batch` (none for a folded `running`).
        let mut update_of = Vec::with_capacity(items.len());
        for (r, fold) in items.iter().zip(&folds) {
            let started = match *fold {
                Fold::Into(_) => {
                    update_of.push(None);
                    continue;
                }
                Fold::Alone => None,
                Fold::EndOf(started) => Some(started),
            };
            let mut update = transition(r);
            update.started = started;
            update_of.push(Some(batch.len()));
            batch.push((r.report.execution_id, update));
        }
        let changed = shared.store.transitions(&batch).await?;
        Ok(folds
            .iter()
            .enumerate()
            .map(|(i, fold)| {
                // A folded `running` changed what its end's update changed.
                let item = match fold {
                    Fold::Into(end) => *end,
                    _ => i,
                };
                update_of[item].is_some_and(|u| changed[u])
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: i64, attempt: u32, status: ExecutionStatus, ms: i64) -> StatusReport {
        StatusReport {
            execution_id: ExecutionId(id),
            attempt,
            action: "core.noop".parse().unwrap(),
            worker: "w1".into(),
            status,
            result: serde_json::Value::Null,
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms),
            result_object: None,
            partition: None,
        }
    }

    #[test]
    fn a_start_is_folded_into_the_end_of_its_attempt_later_in_the_batch() {
        use ExecutionStatus::{Failed, Running, Succeeded};
        let reports = [
            (report(1, 1, Running, 10), false),
            (report(2, 1, Running, 11), false),
            (report(1, 1, Running, 10), false),   // a repeat
            (report(3, 1, Succeeded, 12), false), // its start was in an earlier batch
            (report(1, 1, Succeeded, 13), false),
            (report(2, 2, Succeeded, 14), false), // another attempt's end
            (report(4, 1, Running, 15), false),
            (report(4, 1, Failed, 16), true), // retried: it goes back to the queue
        ];
        let folds = folded_starts(reports.iter().map(|(r, retried)| (r, *retried)));
        let started = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(10);
        assert_eq!(
            folds,
            [
                Fold::Into(4),
                Fold::Alone,
                Fold::Into(4),
                Fold::Alone,
                Fold::EndOf(started),
                Fold::Alone,
                Fold::Alone,
                Fold::Alone,
            ]
        );
    }
}

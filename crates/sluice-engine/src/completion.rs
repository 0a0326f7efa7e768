//! The completion listener: STATUS stream → store → the action's supervisor.
//!
//! The engine only records what workers report. Every update is conditional on the status
//! and on the report's attempt, so a report that is stale or repeated changes nothing and
//! tells nobody; a change is passed to the action's supervisor.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use sluice_core::{ExecutionStatus, StatusReport};
use sluice_store::Transition;
use tracing::{debug, error, info, warn};

use crate::{Routes, Shared};

pub(crate) async fn handle_status(shared: &Arc<Shared>, routes: &Routes, message: Message) {
    let report: StatusReport = match sluice_core::decode(&message.payload) {
        Ok(report) => report,
        Err(e) => {
            error!(subject = %message.subject, error = %e, "unreadable status report; terminated");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let id = report.execution_id;
    let terminal = report.status.is_terminal();
    if report.status != ExecutionStatus::Running && !terminal {
        warn!(execution_id = %id, status = %report.status, "a worker reported a status only the engine sets; ignored");
        let _ = message.ack().await;
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
            if changed && terminal {
                info!(execution_id = %id, action = %report.action, status = %report.status, worker = report.worker, "execution finished");
            } else if !changed {
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
            let _ = message.ack().await;
        }
        Err(e) if e.is_transient() => {
            warn!(execution_id = %id, error = %e, "store unavailable; report will be redelivered");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
        Err(e) => {
            error!(execution_id = %id, error = %e, "failed to record report; terminated");
            let _ = message.ack_with(AckKind::Term).await;
        }
    }
}

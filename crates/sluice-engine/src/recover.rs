//! Restart recovery: before the engine consumes anything, every unfinished execution in
//! the store is put back where it belongs, so a restart resumes where the last run stopped.

use serde_json::Value;
use sluice_core::{ExecutionId, ExecutionStatus};
use sluice_pack::{Catalog, params};
use sluice_store::{Execution, Store};
use tracing::{info, warn};

use crate::error::EngineError;
use crate::handles::{Directory, Pending, Phase};
use crate::monitor::Workers;
use crate::routes::Partitioned;

/// Puts every unfinished execution back where it belongs: `requested` ones in their queue in
/// request order, the rest as active children of their supervisor. With `partitions`, only
/// the executions of the actions this engine owns: the others are their owners' to resume.
pub(crate) async fn rebuild(
    store: &Store,
    catalog: &Catalog,
    directory: &Directory,
    workers: &Workers,
    partitions: Option<&Partitioned>,
) -> Result<(), EngineError> {
    const PAGE: u32 = 10_000;
    let mut count = 0;
    let mut after = ExecutionId(0);
    loop {
        let page = store.unfinished_executions_after(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for execution in page {
            if partitions.is_some_and(|p| !p.owns(&execution.action)) {
                continue;
            }
            count += 1;
            resume_one(store, catalog, directory, workers, execution).await?;
        }
    }
    // Logged at every start, none resumed included: a start that stalls shows on which side
    // of the store's read it stopped.
    info!(
        executions = count,
        "resumed unfinished executions from the store"
    );
    Ok(())
}

/// Puts one unfinished execution back where it belongs.
async fn resume_one(
    store: &Store,
    catalog: &Catalog,
    directory: &Directory,
    workers: &Workers,
    execution: Execution,
) -> Result<(), EngineError> {
    let id = execution.id;
    let Some(supervisor) = directory.supervisor(&execution.action) else {
        let reason = format!("action {} is no longer loaded", execution.action);
        if !store.fail_before_handoff(id, &reason).await? {
            warn!(execution_id = %id, action = %execution.action, "execution of an unloaded action is still with a worker");
        }
        return Ok(());
    };
    if let Some(problem) = &execution.unreadable
        && matches!(
            execution.status,
            ExecutionStatus::Requested | ExecutionStatus::Scheduling
        )
    {
        let reason = format!("its stored {problem}; request it again");
        store.fail_before_handoff(id, &reason).await?;
        return Ok(());
    }
    let lost_secrets = catalog.action(&execution.action).is_some_and(|a| {
        a.secret_parameters().iter().any(|name| {
            execution
                .parameters
                .get(name)
                .is_some_and(|v: &Value| v == params::REDACTED)
        })
    });
    let pending = pending_of(&execution);
    match execution.status {
        ExecutionStatus::Requested | ExecutionStatus::Scheduling if lost_secrets => {
            let reason = "its secret parameters are held in memory only and were lost when the engine stopped; request it again";
            store.fail_before_handoff(id, reason).await?;
        }
        ExecutionStatus::Requested => supervisor.enqueue(pending),
        ExecutionStatus::Scheduling => supervisor.resume(pending, Phase::Dispatch, None),
        // Its run message may already be out; publishing it again with redacted secrets
        // would run it wrong, so wait for the worker instead.
        ExecutionStatus::Scheduled if lost_secrets => {
            supervisor.resume(pending, Phase::AwaitCompletion, None)
        }
        ExecutionStatus::Scheduled => supervisor.resume(pending, Phase::Dispatch, None),
        _ => {
            // Running: its worker has one loss window to show it is still alive.
            if let Some(worker) = &execution.worker {
                workers.expect(worker);
            }
            supervisor.resume(pending, Phase::AwaitCompletion, execution.worker.clone())
        }
    }
    Ok(())
}

/// What a stored execution is queued or resumed with.
pub(crate) fn pending_of(execution: &Execution) -> Pending {
    let parameters = execution
        .parameters
        .as_object()
        .cloned()
        .unwrap_or_default();
    Pending::kept(
        execution.id,
        execution.attempt,
        parameters,
        execution.created_at,
        execution.traceparent.clone(),
        execution.parent_id,
    )
}

//! An in-memory [`Backend`] for the actors' tests: executions follow the same status state
//! machine as the store's, workflow steps the same rules (a step whose child was already
//! handled writes nothing; a child's key is created once), and every run message and
//! cancel request is kept for the test to read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use sluice_bus::{BusError, CancelSent};
use sluice_core::{ExecutionId, ExecutionStatus, RunMessage, StatusReport};
use sluice_store::{NewChild, StoreError, Transition, WorkflowChild, WorkflowRecord, WorkflowSave};

use crate::backend::{Backend, BoxFuture, ExecutionState};

#[derive(Default)]
pub(crate) struct Fake {
    executions: Mutex<HashMap<ExecutionId, ExecutionState>>,
    /// (execution, attempt) of every run message, in publish order.
    runs: Mutex<Vec<(i64, u32)>>,
    cancels: Mutex<Vec<i64>>,
    /// Executions whose run message is refused for good.
    pub(crate) refuse_publish: Mutex<HashSet<i64>>,
    workflows: Mutex<HashMap<ExecutionId, (Value, Vec<WorkflowChild>)>>,
    workflow_parts: Mutex<HashMap<ExecutionId, Vec<(String, Value)>>>,
    next_id: Mutex<i64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fake {
    pub(crate) fn status(&self, id: i64) -> Option<ExecutionStatus> {
        lock(&self.executions)
            .get(&ExecutionId(id))
            .map(|e| e.status)
    }

    pub(crate) fn set(&self, id: i64, status: ExecutionStatus) {
        let mut executions = lock(&self.executions);
        let execution = executions.entry(ExecutionId(id)).or_insert(ExecutionState {
            status,
            attempt: 1,
            result: None,
        });
        execution.status = status;
    }

    pub(crate) fn runs(&self) -> Vec<(i64, u32)> {
        lock(&self.runs).clone()
    }

    pub(crate) fn run_ids(&self) -> Vec<i64> {
        self.runs().into_iter().map(|(id, _)| id).collect()
    }

    pub(crate) fn cancels(&self) -> Vec<i64> {
        lock(&self.cancels).clone()
    }
}

impl Backend for Fake {
    fn transition<'a>(
        &'a self,
        id: ExecutionId,
        transition: &'a Transition,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut executions = lock(&self.executions);
            let Some(execution) = executions.get_mut(&id) else {
                return Ok(false);
            };
            let allowed = transition.to.sources().contains(&execution.status);
            if allowed {
                execution.status = transition.to;
                if let Some(result) = &transition.result {
                    execution.result = Some(result.to_value());
                }
            }
            Ok(allowed)
        })
    }

    fn end_before_handoff<'a>(
        &'a self,
        id: ExecutionId,
        status: ExecutionStatus,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut executions = lock(&self.executions);
            let Some(execution) = executions.get_mut(&id) else {
                return Ok(false);
            };
            let engine_owned = matches!(
                execution.status,
                ExecutionStatus::Requested | ExecutionStatus::Scheduling
            );
            if engine_owned {
                execution.status = status;
            }
            Ok(engine_owned)
        })
    }

    fn state(&self, id: ExecutionId) -> BoxFuture<'_, Result<Option<ExecutionState>, StoreError>> {
        Box::pin(async move { Ok(lock(&self.executions).get(&id).cloned()) })
    }

    fn workflow(
        &self,
        id: ExecutionId,
    ) -> BoxFuture<'_, Result<Option<WorkflowRecord>, StoreError>> {
        Box::pin(async move {
            let executions = lock(&self.executions);
            Ok(lock(&self.workflows)
                .get(&id)
                .map(|(state, children)| WorkflowRecord {
                    state: state.clone(),
                    parts: lock(&self.workflow_parts)
                        .get(&id)
                        .cloned()
                        .unwrap_or_default(),
                    updated_at: chrono::Utc::now(),
                    children: children
                        .iter()
                        .map(|c| {
                            let now = executions.get(&c.execution_id);
                            WorkflowChild {
                                status: now.map_or(c.status, |e| e.status),
                                result: now.and_then(|e| e.result.clone()),
                                ..c.clone()
                            }
                        })
                        .collect(),
                }))
        })
    }

    fn workflow_step<'a>(
        &'a self,
        id: ExecutionId,
        handled: &'a [ExecutionId],
        save: WorkflowSave<'a>,
        children: &'a [NewChild],
    ) -> BoxFuture<'a, Result<Option<Vec<Option<ExecutionId>>>, StoreError>> {
        Box::pin(async move {
            let mut workflows = lock(&self.workflows);
            let (saved, known) = workflows.entry(id).or_insert((Value::Null, Vec::new()));
            let already = known
                .iter()
                .any(|c| c.handled && handled.contains(&c.execution_id));
            if already {
                return Ok(None);
            }
            for child in known.iter_mut() {
                if handled.contains(&child.execution_id) {
                    child.handled = true;
                }
            }
            *saved = save.state.clone();
            let mut parts = lock(&self.workflow_parts);
            let parts = parts.entry(id).or_default();
            for (key, value) in save.parts {
                match parts.iter_mut().find(|(k, _)| k == key) {
                    Some((_, old)) => *old = value.clone(),
                    None => parts.push((key.clone(), value.clone())),
                }
            }
            let mut created = Vec::with_capacity(children.len());
            for child in children {
                let exists = known.iter().any(|c| {
                    (c.task.as_str(), c.round, c.item, c.attempt)
                        == (child.task.as_str(), child.round, child.item, child.attempt)
                });
                if exists {
                    created.push(None);
                    continue;
                }
                let mut next = lock(&self.next_id);
                *next += 1;
                let child_id = ExecutionId(1_000_000 + *next);
                lock(&self.executions).insert(
                    child_id,
                    ExecutionState {
                        status: ExecutionStatus::Requested,
                        attempt: 1,
                        result: None,
                    },
                );
                known.push(WorkflowChild {
                    task: child.task.clone(),
                    round: child.round,
                    item: child.item,
                    attempt: child.attempt,
                    execution_id: child_id,
                    handled: false,
                    status: ExecutionStatus::Requested,
                    result: None,
                });
                created.push(Some(child_id));
            }
            Ok(Some(created))
        })
    }

    fn publish_run<'a>(&'a self, message: &'a RunMessage) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if lock(&self.refuse_publish).contains(&message.execution_id.0) {
                return Err(BusError::setup("RUN", "refused"));
            }
            lock(&self.runs).push((message.execution_id.0, message.attempt));
            Ok(())
        })
    }

    fn cancel(&self, cancelled: StatusReport) -> BoxFuture<'_, Result<CancelSent, BusError>> {
        Box::pin(async move {
            lock(&self.cancels).push(cancelled.execution_id.0);
            Ok(CancelSent::Requested)
        })
    }
}

/// Lets the actors run until `check` holds, under tokio's paused clock (sleeping costs
/// nothing); panics naming `what` when it never does.
pub(crate) async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

/// `st2kv` over an empty datastore.
pub(crate) fn empty_datastore() -> sluice_pack::datastore::Kv {
    let keyring = Arc::new(sluice_core::secrets::Keyring::ephemeral().unwrap());
    sluice_pack::datastore::Kv::new(Arc::new(crate::datastore::KeyCache::new(keyring)), None)
}

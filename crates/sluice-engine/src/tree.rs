//! A snapshot of the engine's live actor tree, read from ractor's supervision links.
//!
//! Each node is a running actor, found by walking `ActorCell::get_children` from the engine's
//! root: nothing here keeps a parallel list. An actor's kind comes from the type of message
//! it takes, or, for the engine's long-lived actors, from the engine itself. Nodes carry what their actor knows: action
//! supervisors their queue figures, execution actors their execution. Two kinds of node
//! are views rather than actors, and say so in their kind: `key-queue` nodes under a
//! supervisor (per-key queues live inside its gate) and `worker` / `run` nodes under the
//! worker monitor (workers are other processes, known here by their heartbeats).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use ractor::{ActorCell, ActorId};
use serde::Serialize;
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};

use crate::execution::ExecutionMsg;
use crate::handles::{KeyQueueStats, SupervisorMsg, SupervisorStats, WorkflowMsg};
use crate::monitor::WorkerInfo;

/// What an actor of the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActorKind {
    Engine,
    Ingestor,
    Completions,
    DeadLetters,
    WorkerMonitor,
    Datastore,
    Timers,
    Partitions,
    Supervisor,
    Execution,
    Workflow,
    Other,
}

impl ActorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Ingestor => "ingestor",
            Self::Completions => "completion-listener",
            Self::DeadLetters => "dead-letter-recorder",
            Self::WorkerMonitor => "worker-monitor",
            Self::Datastore => "datastore-follower",
            Self::Timers => "timer-scheduler",
            Self::Partitions => "partition-listener",
            Self::Supervisor => "action-supervisor",
            Self::Execution => "execution",
            Self::Workflow => "workflow",
            Self::Other => "actor",
        }
    }

    fn of(cell: &ActorCell, fixed: &HashMap<ActorId, ActorKind>) -> Self {
        if let Some(kind) = fixed.get(&cell.get_id()) {
            return *kind;
        }
        if cell.is_message_type_of::<SupervisorMsg>() == Some(true) {
            Self::Supervisor
        } else if cell.is_message_type_of::<ExecutionMsg>() == Some(true) {
            Self::Execution
        } else if cell.is_message_type_of::<WorkflowMsg>() == Some(true) {
            Self::Workflow
        } else {
            Self::Other
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub name: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Queue figures, on action supervisors.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SupervisorStats>,
    /// Queue figures of one concurrency key, on key queues.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyQueueStats>,
    /// The execution, on execution actors and runs.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionView>,
    /// The worker as its heartbeats describe it, on workers.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerView>,
    /// How far behind its stream the durable consumer is, on the loops that read one (the
    /// worker monitor shows the workers' RUN consumer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<sluice_bus::ConsumerLag>,
    pub children: Vec<ActorNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecutionView {
    pub execution_id: ExecutionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ExecutionStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Seconds since it was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub capacity: usize,
    pub in_flight: usize,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub lost: bool,
}

fn leaf(name: String, kind: &'static str, parent: &str) -> ActorNode {
    ActorNode {
        name,
        kind,
        parent: Some(parent.to_owned()),
        stats: None,
        key: None,
        execution: None,
        worker: None,
        consumer: None,
        children: Vec::new(),
    }
}

fn worker_nodes(workers: &[WorkerInfo], parent: &str) -> Vec<ActorNode> {
    workers
        .iter()
        .map(|w| {
            let mut node = leaf(w.name.clone(), "worker", parent);
            node.worker = Some(WorkerView {
                capacity: w.capacity,
                in_flight: w.running.len(),
                last_heartbeat_at: w.last_heartbeat_at,
                lost: w.lost,
            });
            node.children = w
                .running
                .iter()
                .map(|id| {
                    let mut run = leaf(format!("{}/run/{id}", w.name), "run", &w.name);
                    run.execution = Some(ExecutionView {
                        execution_id: *id,
                        attempt: None,
                        status: None,
                        worker: Some(w.name.clone()),
                        age_seconds: None,
                    });
                    run
                })
                .collect();
            node
        })
        .collect()
}

/// A concurrency key (a JSON array of parameter values) as a name: `db1` for `["db1"]`,
/// `db1,5` for `["db1",5]`.
fn readable(key: &str) -> String {
    match serde_json::from_str::<Vec<serde_json::Value>>(key) {
        Ok(values) => values
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => key.to_owned(),
    }
}

pub(crate) fn snapshot(
    cell: &ActorCell,
    parent: Option<&str>,
    fixed: &HashMap<ActorId, ActorKind>,
    stats: &[SupervisorStats],
    workers: &[WorkerInfo],
    lags: &[sluice_bus::ConsumerLag],
) -> ActorNode {
    let name = cell.get_name().unwrap_or_else(|| cell.get_id().to_string());
    let kind = ActorKind::of(cell, fixed);
    let own_stats = (kind == ActorKind::Supervisor)
        .then(|| stats.iter().find(|s| s.actor == Some(cell.get_id())))
        .flatten()
        .cloned();
    let mut children = Vec::new();
    let now = Utc::now();
    for child in cell.get_children() {
        let mut node = snapshot(&child, Some(&name), fixed, stats, workers, lags);
        let admitted = own_stats
            .iter()
            .flat_map(|s| &s.admitted)
            .find(|a| a.actor == Some(child.get_id()));
        if let Some(admitted) = admitted {
            node.execution = Some(ExecutionView {
                execution_id: admitted.execution_id,
                attempt: Some(admitted.attempt),
                status: Some(admitted.status),
                worker: admitted.worker.clone(),
                age_seconds: Some((now - admitted.requested_at).as_seconds_f64().max(0.0)),
            });
        }
        children.push(node);
    }
    if let Some(stats) = &own_stats {
        children.extend(stats.keys.iter().map(|k| {
            let mut node = leaf(
                format!("{name}/key/{}", readable(&k.key)),
                "key-queue",
                &name,
            );
            node.key = Some(k.clone());
            node
        }));
    }
    if kind == ActorKind::WorkerMonitor {
        children.extend(worker_nodes(workers, &name));
    }
    children.sort_by(|a, b| a.name.cmp(&b.name));
    let stream = match kind {
        ActorKind::Ingestor => Some(sluice_bus::names::TRIGGERS),
        ActorKind::Completions => Some(sluice_bus::names::STATUS),
        ActorKind::DeadLetters => Some(sluice_bus::names::DEADLETTER),
        ActorKind::WorkerMonitor => Some(sluice_bus::names::RUN),
        _ => None,
    };
    ActorNode {
        name,
        kind: kind.as_str(),
        parent: parent.map(str::to_owned),
        stats: own_stats,
        key: None,
        execution: None,
        worker: None,
        consumer: stream.and_then(|stream| lags.iter().find(|l| l.stream == stream).cloned()),
        children,
    }
}

impl ActorNode {
    /// Keeps only the supervisor of `action` (and everything that is not a supervisor).
    pub fn only_action(mut self, action: &ActionRef) -> Self {
        self.children.retain(|c| {
            c.kind != "action-supervisor" || c.stats.as_ref().is_some_and(|s| &s.action == action)
        });
        self.children = self
            .children
            .into_iter()
            .map(|c| c.only_action(action))
            .collect();
        self
    }
}

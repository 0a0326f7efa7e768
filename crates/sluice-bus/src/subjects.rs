//! Sluice's subjects: where each kind of message is published.

use sluice_core::ExecutionId;

/// Where triggers are published: `sluice.trigger.<pack>.<name>`.
pub const TRIGGER_PREFIX: &str = "sluice.trigger.";
/// The queue every action uses until actions can name their own.
pub const DEFAULT_QUEUE: &str = "default";

pub fn trigger_subject(trigger: &str) -> String {
    format!("{TRIGGER_PREFIX}{trigger}")
}

pub fn run_subject(queue: &str) -> String {
    format!("sluice.run.{queue}")
}

/// An execution's status subject: `sluice.status.<id>`, or `sluice.status.p<n>.<id>` for an
/// action of partition `n` when the engines run partitioned.
pub fn status_subject(partition: Option<u32>, id: ExecutionId) -> String {
    match partition {
        None => format!("sluice.status.{id}"),
        Some(n) => format!("sluice.status.p{n}.{id}"),
    }
}

/// Every status subject of partition `n`: what the completion listener of its owner takes.
pub fn partition_status_subjects(n: u32) -> String {
    format!("sluice.status.p{n}.*")
}

/// Where a dead letter about a message of `stream` is published.
pub fn dead_letter_subject(stream: &str) -> String {
    format!("sluice.deadletter.{}", stream.to_ascii_lowercase())
}

pub fn cancel_subject(id: ExecutionId) -> String {
    format!("sluice.cancel.{id}")
}

/// Where a running execution's output goes as the worker reads it: core NATS, not a
/// stream; whoever follows it live hears it, and the result keeps it all.
pub fn output_subject(id: ExecutionId) -> String {
    format!("sluice.output.{id}")
}

/// Every worker's heartbeats.
pub const HEARTBEAT_SUBJECTS: &str = "sluice.heartbeat.>";

/// A worker's heartbeat subject; characters NATS gives meaning to become `_`.
pub fn heartbeat_subject(worker: &str) -> String {
    let token: String = worker
        .chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>' | ' ' | '\t') {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("sluice.heartbeat.{token}")
}

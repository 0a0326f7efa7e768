//! The names of Sluice's streams, durable consumers and message headers, in one place.
//! `streams/` declares the same names; this crate's tests check that the two agree.

/// Trigger payloads: `sluice.trigger.>`.
pub const TRIGGERS: &str = "TRIGGERS";
/// Run messages to workers, a work queue: `sluice.run.<queue>`.
pub const RUN: &str = "RUN";
/// Cancel requests to the worker that claimed an attempt: `sluice.cancel.<id>`.
pub const CONTROL: &str = "CONTROL";
/// Executions' output, as workers read it.
pub const OUTPUT: &str = "OUTPUT";
/// Workers' status reports: `sluice.status.<id>`.
pub const STATUS: &str = "STATUS";
/// Messages given up, with the reason: `sluice.deadletter.<stream>`.
pub const DEADLETTER: &str = "DEADLETTER";

/// The datastore's key-value bucket (its stream is `KV_sluice-datastore`).
pub const DATASTORE_BUCKET: &str = "sluice-datastore";

/// The packs object store (its stream is `OBJ_sluice-packs`): pack versions by digest.
pub const PACKS_BUCKET: &str = "sluice-packs";

/// The results object store (its stream is `OBJ_sluice-results`): results too large for
/// their status report, until the engine has stored them.
pub const RESULTS_BUCKET: &str = "sluice-results";

/// The engine's durable consumer on TRIGGERS, STATUS and DEADLETTER.
pub const ENGINE_CONSUMER: &str = "engine";
/// The durable consumer `template` takes partition `partition`'s messages with, when the
/// engines run partitioned: `<template>-p<partition>`.
pub fn partition_durable(template: &str, partition: u32) -> String {
    format!("{template}-p{partition}")
}

/// The workers' shared durable consumer on RUN.
pub const WORKERS_CONSUMER: &str = "workers";

/// JetStream's deduplication id header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// The engine's signature of a run message (see the `signing` module).
pub const SIGNATURE_HEADER: &str = "Sluice-Signature";
/// How a payload is encoded (`application/msgpack` for Sluice's own messages).
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";

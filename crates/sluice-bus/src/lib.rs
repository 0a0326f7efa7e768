//! Sluice's adapter to NATS JetStream: the streams and consumers declared in `streams/`,
//! the subjects, and typed publishing and decoding of Sluice's messages.
//!
//! | stream   | subjects                 | carries                                  |
//! |----------|--------------------------|------------------------------------------|
//! | TRIGGERS | `sluice.trigger.<p>.<n>` | trigger payloads, JSON or MessagePack     |
//! | RUN      | `sluice.run.<queue>`     | [`RunMessage`]s, a work queue to workers  |
//! | CONTROL  | `sluice.cancel.<id>`     | cancel requests to a running attempt      |
//! | STATUS   | `sluice.status.<id>`     | [`StatusReport`]s: workers' claims and     |
//! |          |                          | ends, the engine's cancel of an unclaimed |
//! |          |                          | attempt                                   |
//!
//! The datastore is a key-value bucket, `sluice-datastore` ([`datastore`]); timers keep their
//! last tick in another, `sluice-timers` ([`timers`]). Pack versions are an object store,
//! `sluice-packs` ([`packs`]); results too large for their status report travel in
//! another, `sluice-results` ([`results`]). Which engine holds the execution core is a lease in
//! `sluice-leases` ([`lease`]); a duty cut into partitions is spread over engines by leases
//! in the same bucket ([`shares`]).
//!
//! Heartbeats ([`Heartbeat`]) travel on core NATS, `sluice.heartbeat.<worker>`: they
//! matter only while fresh, so they are not stored.
//!
//! Every publish carries a `Nats-Msg-Id`, so JetStream drops a repeat inside the stream's
//! duplicate window; every consumer acknowledges explicitly.

mod buckets;
mod client;
mod consume;
pub mod datastore;
mod error;
mod execution_token;
pub mod lease;
pub mod names;
pub mod packs;
pub mod results;
pub mod settle;
pub mod shares;
pub mod signing;
mod streams;
mod subjects;
pub mod timers;
mod trigger;
mod url;

pub use client::{
    Bus, CancelSent, ConsumerLag, LastStatus, NatsOptions, Published, connect_client,
    continue_trace, header,
};
pub use consume::{consume_batches, consume_within};
pub use error::{BusError, BusErrorKind};
pub use execution_token::ExecutionTokens;
pub use settle::Settle;
pub use signing::{RunSigner, RunVerifier};
pub use streams::{ConsumerDef, StreamDef, definitions};
pub use subjects::{
    DEFAULT_QUEUE, HEARTBEAT_SUBJECTS, TRIGGER_PREFIX, cancel_subject, dead_letter_subject,
    heartbeat_subject, output_subject, partition_status_subjects, run_subject, status_subject,
    trigger_subject,
};
pub use trigger::{TriggerMessage, decode_trigger};
pub use url::redact_url;

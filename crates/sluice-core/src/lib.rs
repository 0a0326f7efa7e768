//! Sluice's domain in plain data: identifiers, the execution state machine and the wire
//! messages that travel between the engine and workers. Nothing here talks to the network or the
//! store (the one file read is the secrets key file), so every other crate can share these types and the rules they encode.
//!
//! - [`id`] — newtype identifiers (`ExecutionId`, `ActionRef`, ...).
//! - [`status`] — execution statuses, which transitions are legal and who owns each stage.
//! - [`partition`] — which partition of the actions an action belongs to.
//! - [`message`] — `RunMessage` (engine → worker) and `StatusReport` (worker → engine),
//!   with their MessagePack encoding.
//! - [`runner`] — the runner types an action can name.
//! - [`auth`] — the scopes of API tokens.
//! - [`bounded`] — the one decoder, with limits, for values from outside.
//! - [`datastore`] — the datastore's key names and entries.
//! - [`secrets`] — sealing secret values, and the key file they are sealed with.

pub mod auth;
pub mod bounded;
pub mod datastore;
pub mod id;
pub mod message;
pub mod partition;
pub mod runner;
pub mod secrets;
pub mod status;

pub use auth::Scope;
pub use id::{ActionRef, EventId, ExecutionId, InvalidRef};
pub use message::{
    ActionApi, CodecError, DeadLetter, Heartbeat, INLINE_RESULT_BYTES, MSGPACK_CONTENT_TYPE,
    OutputChunk, ProcessLimits, ResultObject, RunMessage, StatusReport, decode, encode,
};
pub use runner::RunnerType;
pub use status::{EventStatus, ExecutionStatus, Owner};

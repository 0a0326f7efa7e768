//! What the engine's public calls can fail with.

use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_pack::params;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("failed to start actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Bus(#[from] sluice_bus::BusError),
    #[error("secrets key: {0}")]
    Secrets(String),
    #[error("packs: {0}")]
    Packs(String),
}

/// Why a request for an execution was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown action {action} (known: {known})")]
    UnknownAction { action: String, known: String },
    #[error("action {0} is disabled")]
    Disabled(ActionRef),
    #[error(transparent)]
    InvalidParameters(#[from] params::ParamErrors),
    #[error("{0}")]
    Sealing(String),
    #[error("{0}")]
    Default(String),
    #[error("no execution {0} to run again")]
    NoExecution(ExecutionId),
    #[error("execution {0} cannot be run again: its parameters cannot be read ({1})")]
    Unreadable(ExecutionId, String),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
}

/// Why a cancel request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no execution {0}")]
    NotFound(ExecutionId),
    #[error("execution {0} already finished: {1}")]
    Finished(ExecutionId, ExecutionStatus),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
    #[error(transparent)]
    Bus(sluice_bus::BusError),
}

/// Why a rule could not be switched, defined or deleted.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("unknown rule {0:?}")]
    Unknown(String),
    /// The definition has problems, each with its field.
    #[error("{0}")]
    Invalid(sluice_pack::LoadErrors),
    #[error("rule {0} is defined by a pack's file ({1}); change it there")]
    FromPack(String, String),
    #[error(transparent)]
    Store(#[from] sluice_store::StoreError),
}

//! Sluice's store: events, enforcements, executions and their status history, workflow
//! state, dead letters and API tokens, in SQLite (the embedded default) or PostgreSQL.
//!
//! Every query is written once with `$N` placeholders, which both backends accept, and
//! runs through [`Store`]'s backend dispatch. Status changes are conditional updates
//! guarded by the core state machine ([`ExecutionStatus::sources`]): a stale or repeated
//! status is not a write.

mod checkpoint;
mod direct;
mod error;
mod fence;
mod model;
mod reseal;
mod rules;
mod store;
mod tokens;
mod workflow;

pub use error::{StoreError, StoreErrorKind};
pub use model::{
    DeadLetterRecord, Enforcement, Event, EventFilter, EventOutcome, Execution, ExecutionFilter,
    Fence, Firing, HistoryEntry, Ledger, NewEvent, ResultJson, Transition,
};
pub use reseal::Resealed;
pub use rules::{ApiRule, RuleSwitch};
pub use store::Store;
pub use tokens::{NewToken, Token};
pub use workflow::{NewChild, WorkflowChild, WorkflowRecord, WorkflowSave};

pub use sluice_core::ExecutionStatus;

//! The Sluice engine: it turns trigger events into executions and shepherds each one to
//! the moment a worker takes it, then records what the worker reports.
//!
//! ```text
//! engine (root actor)                                                     (engine.rs)
//!  ├─ ingestor             TRIGGERS consumer: event -> rules -> executions     (ingest.rs, rules.rs)
//!  ├─ completions          STATUS consumer: worker reports -> store -> supervisor (completion.rs)
//!  │                       (partitioned: completions/p<n>, one per partition owned)
//!  ├─ partitions           partitioned only: what other engines announce        (partitions.rs)
//!  ├─ dead-letters         DEADLETTER consumer: given-up messages -> store     (deadletter.rs)
//!  ├─ workers              heartbeats: finds lost workers                      (monitor.rs)
//!  ├─ datastore            follows the datastore bucket, deletes expired keys  (datastore.rs)
//!  ├─ timers               fires timer rules' ticks, each nominal tick once     (timers.rs)
//!  └─ action/<ref> ×N      admission gate and active set of one action         (supervisor.rs, gate.rs)
//!       └─ execution/<id>  one per admitted execution until it completes       (execution.rs)
//!            └─ workflow/<id>  a workflow execution's tasks, in order          (workflow/)
//! ```
//!
//! Modules import downward only. At the bottom, what every actor shares: [`handles`] (how
//! actors address each other and what they say: the one way news travels back up),
//! `routes` (how that news reaches another engine when the engines run partitioned),
//! `context` (what actors and loops work with), `backend` (the store and bus behind a
//! trait), `timing`, and `error`. Above them the actors, each spawning only the next one
//! down (supervisor → execution → workflow), the consumer loops, `recover` (restart), `tree`
//! (the live actor tree) and at the top `engine`, which starts it all.
//!
//! [`Engine::start`] rebuilds every queue and active set from the store before it consumes
//! anything, so a restart resumes where the last run stopped.

mod backend;
mod commit;
mod completion;
mod consumer;
mod context;
pub mod datastore;
mod deadletter;
mod engine;
mod error;
mod execution;
pub mod gate;
mod handles;
mod ingest;
mod monitor;
pub mod packs;
mod partitions;
mod recover;
mod routes;
pub mod rules;
mod supervisor;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod timers;
mod timing;
mod tree;
mod workflow;

pub use engine::{Engine, EngineConfig};
pub use error::{CancelError, EngineError, RuleError, SubmitError};
pub use handles::{AdmittedExecution, CancelOutcome, KeyQueueStats, SupervisorStats};
pub use monitor::WorkerInfo;
pub use packs::{PackError, PackSource, PackSources};
pub use routes::Partitioned;
pub use timers::TimerView;
pub use tree::{ActorNode, ExecutionView, WorkerView};

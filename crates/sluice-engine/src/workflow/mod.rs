//! Workflows: one actor per running workflow execution, a child of that execution's actor,
//! named `<engine>/workflow/<id>`.
//!
//! Every task completion of the workflow arrives in this one mailbox, in order, so each
//! decision (publish into the context, which tasks come next, whether a join is complete)
//! is made once, by construction: two items of a `with` task that finish at the same
//! instant are two messages handled one after the other, and only the second sees the task
//! complete and starts its successor.
//!
//! - [`machine`]: the decisions, as a state machine with no I/O, tested on its own.
//! - [`actor`]: the I/O around it. Each step is one store transaction
//!   (`Store::workflow_step`): the child whose end it acts on is marked handled (a step is
//!   never taken twice), the state is saved, and the children it starts are created under
//!   the unique key (workflow, task, round, item, attempt). Only then are the children
//!   queued at their actions' supervisors, where they pass the FIFO gate like any other
//!   execution. After a restart the actor loads the saved state and acts on every child
//!   that ended meanwhile.

mod actor;
mod machine;
#[cfg(test)]
mod tests;

pub(crate) use actor::{WorkflowActor, WorkflowArgs};

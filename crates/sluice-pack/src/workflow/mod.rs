//! Workflow files (`runner_type: orquesta`), in the shape StackStorm's Orquesta uses:
//!
//! ```yaml
//! version: 1.0
//! input: [regions]
//! vars: {done: false}
//! tasks:
//!   each_region:
//!     action: examples.deploy
//!     with: {items: "{{ ctx().regions }}", concurrency: 2}
//!     input: {region: "{{ item() }}"}
//!     retry: {count: 2, delay: 1}
//!     next:
//!       - when: "{{ succeeded() }}"
//!         publish: [{done: true}]
//!         do: [report]
//!   report:
//!     action: core.echo
//!     input: {message: "done={{ ctx().done }}"}
//! output: [{done: "{{ ctx().done }}"}]
//! ```
//!
//! This module holds the checked form the engine runs; `workflow_file` reads and checks a
//! file into it, and [`crate::expressions`] gives templates their workflow functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use sluice_core::ActionRef;

use crate::template::ParamTemplate;

/// A checked workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub file: PathBuf,
    /// Names taken from the workflow execution's parameters into the context.
    pub input: Vec<String>,
    /// Variables set before the first task, rendered in order.
    pub vars: Vec<(String, ParamTemplate)>,
    pub tasks: BTreeMap<String, Task>,
    /// Rendered over the final context: the workflow's result.
    pub output: Vec<(String, ParamTemplate)>,
    /// Tasks no transition leads to: they run when the workflow starts.
    pub start: Vec<String>,
    /// The tasks with a transition to each task (what `join: all` waits for).
    pub inbound: BTreeMap<String, BTreeSet<String>>,
    pub limits: Limits,
}

/// How far a workflow may go before it is failed as a runaway: `limits:` in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Task executions (children) it may start in all.
    pub executions: u64,
    /// Times one task may run (a loop's rounds).
    pub rounds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            executions: 100_000,
            rounds: 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    /// `None`: the task runs nothing and succeeds at once (a join point, say).
    pub action: Option<ActionRef>,
    pub input: Vec<(String, ParamTemplate)>,
    pub with: Option<WithItems>,
    pub retry: Option<Retry>,
    /// Seconds an attempt may take; then it is cancelled and the attempt has failed.
    pub timeout: Option<f64>,
    pub next: Vec<Transition>,
    pub join: Option<Join>,
}

#[derive(Debug, Clone)]
pub struct WithItems {
    pub items: ParamTemplate,
    /// At most this many items at once; all at once without it.
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Attempts after the first.
    pub count: u32,
    /// Seconds before the first retry.
    pub delay: f64,
    /// Each further delay is the last one times this.
    pub backoff: f64,
}

impl Retry {
    /// The wait before attempt `attempt` (2 is the first retry).
    pub fn delay_before(&self, attempt: u32) -> f64 {
        let retries = attempt.saturating_sub(2);
        self.delay
            * self
                .backoff
                .powi(i32::try_from(retries).unwrap_or(i32::MAX))
    }
}

#[derive(Debug, Clone)]
pub struct Transition {
    /// Taken when this renders truthy; always without it.
    pub when: Option<ParamTemplate>,
    pub publish: Vec<(String, ParamTemplate)>,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Every task with a transition here must have ended and taken it.
    All,
    /// This many inbound transitions.
    Count(usize),
}

/// Whether a rendered `when` counts as true: not `false`, `null`, `0`, `""`, `[]` or `{}`.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && s != "False" && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

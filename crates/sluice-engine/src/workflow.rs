//! The workflow actor: one per running workflow execution, a child of that execution's
//! actor, named `<engine>/workflow/<id>`.
//!
//! Every task completion of the workflow arrives in this one mailbox, in order, so each
//! decision (publish into the context, which tasks come next, whether a join is complete)
//! is made once, by construction: two items of a `with` task that finish at the same
//! instant are two messages handled one after the other, and only the second sees the task
//! complete and starts its successor.
//!
//! Each step is one store transaction ([`Store::workflow_step`]): the child whose end it
//! acts on is marked handled (a step is never taken twice), the state is saved, and the
//! children it starts are created under the unique key (workflow, task, round, item,
//! attempt). Only then are the children queued at their actions' supervisors, where they
//! pass the FIFO gate like any other execution. After a restart the actor loads the saved
//! state and acts on every child that ended meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_core::{ExecutionId, ExecutionStatus};
use sluice_pack::Action;
use sluice_pack::params;
use sluice_pack::template::ParamTemplate;
use sluice_pack::workflow::{Join, Workflow, expressions::SCOPE, truthy};
use sluice_store::{NewChild, StoreError, Transition};
use sluice_telemetry::TraceHeaders;
use tracing::{Instrument as _, debug, error, info, warn};

use crate::context::Shared;
use crate::supervisor::{Pending, SupervisorHandle};

/// The name of a workflow execution's actor.
pub(crate) fn actor_name(engine: &str, id: ExecutionId) -> String {
    format!("{engine}/workflow/{id}")
}

fn lookup(engine: &str, id: ExecutionId) -> Option<ActorRef<WorkflowMsg>> {
    ractor::registry::where_is(actor_name(engine, id)).map(ActorRef::from)
}

/// Tells workflow `parent` that its child `child` left its supervisor (ended, most likely:
/// the workflow reads the child's status to know). A workflow not running here finds out
/// when it resumes.
pub(crate) fn child_ended(engine: &str, parent: ExecutionId, child: ExecutionId) {
    if let Some(workflow) = lookup(engine, parent) {
        let _ = workflow.send_message(WorkflowMsg::ChildEnded(child));
    }
}

/// Asks workflow `id` to cancel: its running children are cancelled, nothing new starts,
/// and it ends `cancelled` once they have ended. Returns whether the workflow was found.
pub(crate) fn cancel(engine: &str, id: ExecutionId) -> bool {
    lookup(engine, id).is_some_and(|w| w.send_message(WorkflowMsg::Cancel).is_ok())
}

pub(crate) enum WorkflowMsg {
    /// Load the saved state (or take the first step) and catch up with children.
    Start,
    /// A child left its supervisor.
    ChildEnded(ExecutionId),
    /// A task item's retry delay is over.
    RetryDue {
        task: String,
        item: usize,
        attempt: u32,
    },
    /// A child ran past its task's `timeout`.
    TimedOut(ExecutionId),
    /// A step could not be saved; try again.
    Save,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TaskStatus {
    Running,
    Succeeded,
    Failed,
}

impl TaskStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SlotState {
    /// Not started (an item beyond the task's concurrency).
    Waiting,
    Running,
    /// Failed; the next attempt starts at `retry_at`.
    RetryWait,
    Succeeded,
    Failed,
}

impl SlotState {
    fn ended(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// Holds one of the task's `concurrency` places.
    fn active(self) -> bool {
        matches!(self, Self::Running | Self::RetryWait)
    }
}

/// One item of a task (the only one without `with`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    attempt: u32,
    state: SlotState,
    #[serde(default)]
    result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_at: Option<DateTime<Utc>>,
    #[serde(default)]
    timed_out: bool,
}

impl Slot {
    fn new() -> Self {
        Self {
            attempt: 1,
            state: SlotState::Waiting,
            result: Value::Null,
            retry_at: None,
            timed_out: false,
        }
    }
}

/// A task's latest run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRun {
    /// Runs of this task before this one (a task in a loop runs again).
    round: u32,
    status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<Value>>,
    slots: Vec<Slot>,
    #[serde(default)]
    result: Value,
}

/// What is saved with every step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    ctx: Map<String, Value>,
    tasks: BTreeMap<String, TaskRun>,
    /// Inbound tasks that have arrived at each task waiting on a join.
    joins: BTreeMap<String, BTreeSet<String>>,
    /// Failures no transition handled; the workflow fails with them.
    errors: Vec<String>,
    cancelling: bool,
}

pub(crate) struct WorkflowArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) action: Arc<Action>,
    pub(crate) pending: Pending,
}

pub(crate) struct WorkflowActor;

pub(crate) struct WorkflowState {
    shared: Arc<Shared>,
    action: Arc<Action>,
    workflow: Arc<Workflow>,
    id: ExecutionId,
    parameters: Map<String, Value>,
    trace: TraceHeaders,
    saved: Saved,
    /// Children running now: execution → (task, item).
    running: HashMap<ExecutionId, (String, usize)>,
    /// Tasks to look at again within this step.
    todo: VecDeque<String>,
    /// Children this step starts, not yet saved.
    launches: Vec<Launch>,
    /// Children whose end this step acted on, not yet saved.
    handled: Vec<ExecutionId>,
    ended: bool,
}

/// A child to create and queue.
struct Launch {
    child: NewChild,
    item: usize,
    /// Parameters as they run, secrets included (the store gets them redacted).
    parameters: Map<String, Value>,
}

/// Steps one message may take before the workflow is failed as a runaway loop (tasks
/// without an action that keep leading to each other).
const MAX_STEPS: usize = 10_000;

const SAVE_RETRY: Duration = Duration::from_secs(1);

impl WorkflowState {
    /// The names templates see: `ctx()`, `task()` and what the caller adds.
    fn scope(&self, extra: &[(&str, Value)]) -> Value {
        let tasks: Map<String, Value> = self
            .saved
            .tasks
            .iter()
            .filter(|(_, run)| run.status != TaskStatus::Running)
            .map(|(name, run)| {
                (
                    name.clone(),
                    json!({"status": run.status.as_str(), "result": run.result}),
                )
            })
            .collect();
        let mut scope = Map::new();
        scope.insert("ctx".into(), Value::Object(self.saved.ctx.clone()));
        scope.insert("tasks".into(), Value::Object(tasks));
        for (name, value) in extra {
            scope.insert((*name).to_owned(), value.clone());
        }
        json!({ SCOPE: scope })
    }

    fn render(template: &ParamTemplate, scope: &Value) -> Result<Value, String> {
        template.render_in(scope)
    }

    /// The first step: the context from the input and `vars`, then the start tasks.
    fn begin(&mut self) {
        for name in &self.workflow.input {
            if let Some(value) = self.parameters.get(name) {
                self.saved.ctx.insert(name.clone(), value.clone());
            }
        }
        let workflow = self.workflow.clone();
        for (name, template) in &workflow.vars {
            match Self::render(template, &self.scope(&[])) {
                Ok(value) => {
                    self.saved.ctx.insert(name.clone(), value);
                }
                Err(e) => self.saved.errors.push(format!("vars.{name}: {e}")),
            }
        }
        if self.saved.errors.is_empty() {
            for name in &workflow.start {
                self.begin_task(name);
            }
        }
    }

    fn begin_task(&mut self, name: &str) {
        if self.saved.cancelling || !self.saved.errors.is_empty() {
            return;
        }
        let Some(task) = self.workflow.tasks.get(name) else {
            return;
        };
        let previous = self.saved.tasks.get(name);
        if previous.is_some_and(|run| run.status == TaskStatus::Running) {
            warn!(execution_id = %self.id, task = name, "task is still running; the transition to it is ignored");
            return;
        }
        let round = previous.map_or(0, |run| run.round + 1);
        let mut run = TaskRun {
            round,
            status: TaskStatus::Running,
            items: None,
            slots: vec![Slot::new()],
            result: Value::Null,
        };
        if let Some(with) = &task.with {
            match Self::render(&with.items, &self.scope(&[])) {
                Ok(Value::Array(items)) => {
                    run.slots = items.iter().map(|_| Slot::new()).collect();
                    run.items = Some(items);
                }
                Ok(other) => {
                    run.slots[0].state = SlotState::Failed;
                    run.slots[0].result =
                        json!({"error": format!("with.items gave {other}, not a list")});
                }
                Err(e) => {
                    run.slots[0].state = SlotState::Failed;
                    run.slots[0].result = json!({ "error": format!("with.items: {e}") });
                }
            }
        }
        if task.action.is_none() {
            // Nothing to run: it succeeds at once.
            for slot in &mut run.slots {
                if slot.state == SlotState::Waiting {
                    slot.state = SlotState::Succeeded;
                }
            }
        }
        self.saved.tasks.insert(name.to_owned(), run);
        self.todo.push_back(name.to_owned());
    }

    /// Starts what the task's concurrency allows, and ends the task once every item has.
    fn progress(&mut self, name: &str) {
        let workflow = self.workflow.clone();
        let Some(task) = workflow.tasks.get(name) else {
            return;
        };
        let limit = task
            .with
            .as_ref()
            .and_then(|w| w.concurrency)
            .unwrap_or(usize::MAX);
        let stop = self.saved.cancelling;
        let Some(run) = self.saved.tasks.get_mut(name) else {
            return;
        };
        if run.status != TaskStatus::Running {
            return;
        }
        let mut active = run.slots.iter().filter(|s| s.state.active()).count();
        let mut starts = Vec::new();
        for (i, slot) in run.slots.iter_mut().enumerate() {
            if slot.state != SlotState::Waiting {
                continue;
            }
            if stop {
                slot.state = SlotState::Failed;
                slot.result = json!({"error": "the workflow was cancelled before it started"});
            } else if active < limit {
                active += 1;
                starts.push(i);
            }
        }
        for i in starts {
            self.launch(name, i);
        }
        let run = &self.saved.tasks[name];
        if run.slots.iter().all(|s| s.state.ended()) {
            self.end_task(name);
        }
    }

    /// Renders a task item's input and queues its child; a render or parameter error
    /// fails the item at once.
    fn launch(&mut self, name: &str, item: usize) {
        let task = &self.workflow.tasks[name];
        let run = &self.saved.tasks[name];
        let mut extra = Vec::new();
        if let Some(items) = &run.items {
            extra.push(("item", items.get(item).cloned().unwrap_or(Value::Null)));
        }
        let scope = self.scope(&extra);
        let rendered: Result<Map<String, Value>, String> = task
            .input
            .iter()
            .map(|(key, template)| {
                Self::render(template, &scope)
                    .map(|v| (key.clone(), v))
                    .map_err(|e| format!("input.{key}: {e}"))
            })
            .collect();
        let action = task
            .action
            .as_ref()
            .and_then(|r| self.shared.catalog.action(r));
        let prepared = match (rendered, action) {
            (Ok(input), Some(action)) => params::resolve(action, input)
                .map(|p| (action.action_ref.clone(), p))
                .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e),
            (_, None) => Err("its action is no longer loaded".to_owned()),
        };
        let (round, attempt, with_items) =
            (run.round, run.slots[item].attempt, run.items.is_some());
        match prepared {
            Ok((action_ref, parameters)) => {
                let definition = self.shared.catalog.action(&action_ref);
                let stored = definition
                    .map_or_else(|| parameters.clone(), |a| params::redact(a, &parameters));
                self.launches.push(Launch {
                    child: NewChild {
                        task: name.to_owned(),
                        round,
                        item: if with_items { item as i64 } else { -1 },
                        attempt,
                        action: action_ref,
                        parameters: stored,
                        traceparent: self.trace.get("traceparent").cloned(),
                    },
                    item,
                    parameters,
                });
                if let Some(run) = self.saved.tasks.get_mut(name) {
                    run.slots[item].state = SlotState::Running;
                    run.slots[item].retry_at = None;
                    run.slots[item].timed_out = false;
                }
            }
            Err(e) => {
                if let Some(run) = self.saved.tasks.get_mut(name) {
                    run.slots[item].state = SlotState::Failed;
                    run.slots[item].result = json!({ "error": e });
                }
            }
        }
    }

    /// Every item has ended: the task's status and result, then its transitions.
    fn end_task(&mut self, name: &str) {
        let workflow = self.workflow.clone();
        let Some(task) = workflow.tasks.get(name) else {
            return;
        };
        let Some(run) = self.saved.tasks.get_mut(name) else {
            return;
        };
        let succeeded = run.slots.iter().all(|s| s.state == SlotState::Succeeded);
        run.status = if succeeded {
            TaskStatus::Succeeded
        } else {
            TaskStatus::Failed
        };
        run.result = if run.items.is_some() {
            Value::Array(run.slots.iter().map(|s| s.result.clone()).collect())
        } else {
            run.slots[0].result.clone()
        };
        let (status, result) = (run.status, run.result.clone());
        info!(execution_id = %self.id, task = name, status = status.as_str(), "workflow task ended");
        let mut taken = false;
        for (i, transition) in task.next.iter().enumerate() {
            let scope = self.scope(&[
                ("result", result.clone()),
                ("status", json!(status.as_str())),
            ]);
            let when = match &transition.when {
                None => true,
                Some(when) => match Self::render(when, &scope) {
                    Ok(value) => truthy(&value),
                    Err(e) => {
                        self.saved
                            .errors
                            .push(format!("tasks.{name}.next[{i}].when: {e}"));
                        continue;
                    }
                },
            };
            if !when {
                continue;
            }
            taken = true;
            for (key, template) in &transition.publish {
                let scope = self.scope(&[
                    ("result", result.clone()),
                    ("status", json!(status.as_str())),
                ]);
                match Self::render(template, &scope) {
                    Ok(value) => {
                        self.saved.ctx.insert(key.clone(), value);
                    }
                    Err(e) => self
                        .saved
                        .errors
                        .push(format!("tasks.{name}.next[{i}].publish.{key}: {e}")),
                }
            }
            for target in &transition.targets {
                self.arrive(target, name);
            }
        }
        if status == TaskStatus::Failed && !taken && !self.saved.cancelling {
            self.saved
                .errors
                .push(format!("task {name} failed: {}", summary(&result)));
        }
    }

    fn arrive(&mut self, target: &str, from: &str) {
        let join = self.workflow.tasks.get(target).and_then(|t| t.join);
        let Some(join) = join else {
            self.begin_task(target);
            return;
        };
        let need = match join {
            Join::All => self.workflow.inbound.get(target).map_or(0, BTreeSet::len),
            Join::Count(n) => n,
        };
        let arrived = self.saved.joins.entry(target.to_owned()).or_default();
        arrived.insert(from.to_owned());
        if arrived.len() >= need {
            self.saved.joins.remove(target);
            self.begin_task(target);
        }
    }

    /// Looks at every task the step touched, until nothing changes.
    fn run_todo(&mut self) {
        let mut steps = 0;
        while let Some(name) = self.todo.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                self.todo.clear();
                self.saved.errors.push(format!(
                    "more than {MAX_STEPS} task steps at once: a loop of tasks without actions never ends"
                ));
                break;
            }
            self.progress(&name);
        }
    }

    /// Whether nothing runs or waits any more.
    fn idle(&self) -> bool {
        self.saved
            .tasks
            .values()
            .all(|run| run.status != TaskStatus::Running)
    }

    /// The state as the store keeps it: secret inputs redacted.
    fn saved_json(&self) -> Value {
        let mut saved = self.saved.clone();
        for name in self.action.secret_parameters() {
            if let Some(value) = saved.ctx.get_mut(&name) {
                *value = json!(params::REDACTED);
            }
        }
        serde_json::to_value(&saved).unwrap_or(Value::Null)
    }
}

fn summary(result: &Value) -> String {
    match result.get("error").and_then(Value::as_str) {
        Some(error) => error.to_owned(),
        None => result.to_string(),
    }
}

impl WorkflowActor {
    /// Saves the step, then queues its children and arms their timeouts; when nothing is
    /// left to run, ends the workflow.
    async fn save(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let launches = std::mem::take(&mut state.launches);
        let children: Vec<NewChild> = launches.iter().map(|l| l.child.clone()).collect();
        let handled = std::mem::take(&mut state.handled);
        let step = state
            .shared
            .store
            .workflow_step(state.id, &handled, &state.saved_json(), &children)
            .await;
        let created = match step {
            Ok(Some(created)) => created,
            Ok(None) => {
                // Some child's end was acted on already: the store is ahead of this actor.
                warn!(execution_id = %state.id, "workflow step already taken; reloading its state");
                return Box::pin(Self::load(myself, state)).await;
            }
            Err(e) if e.is_transient() => {
                warn!(execution_id = %state.id, error = %e, "store unavailable; workflow step saved again shortly");
                state.launches = launches;
                state.handled = handled;
                myself.send_after(SAVE_RETRY, || WorkflowMsg::Save);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for (launch, id) in launches.into_iter().zip(created) {
            let Some(id) = id else {
                warn!(execution_id = %state.id, task = launch.child.task, "task item attempt already started; not started again");
                continue;
            };
            Self::queue(myself, state, launch, id);
        }
        if state.idle() {
            Self::finish(myself, state).await?;
        }
        Ok(())
    }

    fn queue(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
        launch: Launch,
        id: ExecutionId,
    ) {
        let task = &launch.child.task;
        debug!(execution_id = %state.id, child = %id, task, item = launch.item, attempt = launch.child.attempt, "task child queued");
        state.running.insert(id, (task.clone(), launch.item));
        if let Some(timeout) = state.workflow.tasks.get(task).and_then(|t| t.timeout) {
            myself.send_after(Duration::from_secs_f64(timeout), move || {
                WorkflowMsg::TimedOut(id)
            });
        }
        match SupervisorHandle::lookup(&state.shared.name, &launch.child.action) {
            Some(supervisor) => supervisor.enqueue(
                Pending::new(
                    id,
                    1,
                    &launch.child.action,
                    launch.parameters,
                    Utc::now(),
                    state.trace.clone(),
                )
                .with_parent(state.id),
            ),
            None => {
                error!(execution_id = %state.id, child = %id, "no supervisor for the task's action; it runs after a restart")
            }
        }
    }

    /// Records the workflow's end and tells its supervisor, which stops this actor. A store
    /// outage only delays it.
    async fn finish(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let scope = state.scope(&[]);
        let mut output = Map::new();
        let mut errors = state.saved.errors.clone();
        for (name, template) in &state.workflow.output {
            match WorkflowState::render(template, &scope) {
                Ok(value) => {
                    output.insert(name.clone(), value);
                }
                Err(e) => errors.push(format!("output.{name}: {e}")),
            }
        }
        let status = if state.saved.cancelling {
            ExecutionStatus::Cancelled
        } else if errors.is_empty() {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        let mut end = Transition::to(status);
        end.result = Some(if errors.is_empty() {
            json!({ "output": output })
        } else {
            json!({ "output": output, "errors": errors })
        });
        match state.shared.store.transition(state.id, &end).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                warn!(execution_id = %state.id, error = %e, "store unavailable; the workflow's end is recorded shortly");
                myself.send_after(SAVE_RETRY, || WorkflowMsg::Save);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        info!(execution_id = %state.id, action = %state.action.action_ref, %status, "workflow finished");
        state.ended = true;
        if let Some(supervisor) =
            SupervisorHandle::lookup(&state.shared.name, &state.action.action_ref)
        {
            supervisor.finished(state.id);
        }
        Ok(())
    }

    /// Loads the saved state, or takes the first step; then acts on every child that
    /// ended while nobody listened.
    async fn load(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let record = match state.shared.store.workflow(state.id).await {
            Ok(record) => record,
            Err(e) if e.is_transient() => {
                myself.send_after(SAVE_RETRY, || WorkflowMsg::Start);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        state.running.clear();
        state.launches.clear();
        state.handled.clear();
        let Some(record) = record else {
            state.begin();
            state.run_todo();
            return Self::save(myself, state).await;
        };
        state.saved = serde_json::from_value(record.state).map_err(|e| StoreError::Corrupt {
            table: "workflows",
            message: e.to_string(),
        })?;
        let lost_secrets = state.action.secret_parameters().iter().any(|name| {
            state
                .parameters
                .get(name)
                .is_some_and(|v| v == params::REDACTED)
        });
        let mut ended = Vec::new();
        for child in &record.children {
            let Some(run) = state.saved.tasks.get(&child.task) else {
                continue;
            };
            let item = usize::try_from(child.item).unwrap_or(0);
            let current = run.round == child.round
                && run
                    .slots
                    .get(item)
                    .is_some_and(|s| s.state == SlotState::Running && s.attempt == child.attempt);
            if child.handled || !current {
                continue;
            }
            state
                .running
                .insert(child.execution_id, (child.task.clone(), item));
            if child.status.is_terminal() {
                ended.push(child.execution_id);
            } else if let Some(timeout) = state.workflow.tasks[&child.task].timeout {
                let id = child.execution_id;
                myself.send_after(Duration::from_secs_f64(timeout), move || {
                    WorkflowMsg::TimedOut(id)
                });
            }
        }
        for (name, run) in &state.saved.tasks {
            for (item, slot) in run.slots.iter().enumerate() {
                if slot.state == SlotState::RetryWait {
                    let wait = slot
                        .retry_at
                        .and_then(|at| (at - Utc::now()).to_std().ok())
                        .unwrap_or_default();
                    let (task, attempt) = (name.clone(), slot.attempt);
                    myself.send_after(wait, move || WorkflowMsg::RetryDue {
                        task,
                        item,
                        attempt,
                    });
                }
            }
        }
        info!(execution_id = %state.id, running = state.running.len(), ended = ended.len(), "workflow resumed");
        for id in ended {
            let _ = myself.send_message(WorkflowMsg::ChildEnded(id));
        }
        if lost_secrets && !state.saved.cancelling {
            state.saved.errors.push(
                "its secret parameters are held in memory only and were lost when the engine stopped"
                    .to_owned(),
            );
            return Self::cancel(myself, state).await;
        }
        if state.idle() {
            Self::finish(myself, state).await?;
        }
        Ok(())
    }

    async fn child_ended(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
        child: ExecutionId,
    ) -> Result<(), ActorProcessingErr> {
        let Some((task, item)) = state.running.get(&child).cloned() else {
            return Ok(());
        };
        let execution = match state.shared.store.get_execution(child).await {
            Ok(Some(execution)) => execution,
            Ok(None) => return Ok(()),
            Err(e) if e.is_transient() => {
                myself.send_after(SAVE_RETRY, move || WorkflowMsg::ChildEnded(child));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if !execution.status.is_terminal() {
            // Queued again (a lost worker's execution retried): not ended.
            return Ok(());
        }
        state.running.remove(&child);
        let retry = state.workflow.tasks.get(&task).and_then(|t| t.retry);
        let cancelling = state.saved.cancelling;
        if let Some(run) = state.saved.tasks.get_mut(&task)
            && let Some(slot) = run.slots.get_mut(item)
        {
            let mut result = execution.result.clone().unwrap_or(Value::Null);
            if execution.status == ExecutionStatus::Succeeded {
                slot.state = SlotState::Succeeded;
            } else {
                if slot.timed_out {
                    let timeout = state.workflow.tasks[&task].timeout.unwrap_or_default();
                    result = json!({ "error": format!("timed out after {timeout}s"), "status": "timed_out" });
                } else if result.get("error").is_none() {
                    // The child's own result (a process's stdout, stderr, exit code) stays
                    // readable; the error says how it ended.
                    let error = json!(format!("ended {}", execution.status));
                    match &mut result {
                        Value::Object(map) => {
                            map.insert("error".into(), error);
                        }
                        other => *other = json!({ "error": error, "result": other.take() }),
                    }
                }
                match retry {
                    Some(retry) if slot.attempt <= retry.count && !cancelling => {
                        slot.attempt += 1;
                        let delay = retry.delay_before(slot.attempt);
                        slot.state = SlotState::RetryWait;
                        slot.retry_at = chrono::Duration::from_std(Duration::from_secs_f64(delay))
                            .ok()
                            .map(|d| Utc::now() + d);
                        let (name, attempt) = (task.clone(), slot.attempt);
                        info!(execution_id = %state.id, task, item, attempt, delay, "task item failed; retrying");
                        myself.send_after(Duration::from_secs_f64(delay), move || {
                            WorkflowMsg::RetryDue {
                                task: name,
                                item,
                                attempt,
                            }
                        });
                    }
                    _ => slot.state = SlotState::Failed,
                }
            }
            slot.result = result;
        }
        state.handled.push(child);
        state.todo.push_back(task);
        state.run_todo();
        Self::save(myself, state).await
    }

    async fn retry_due(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
        task: String,
        item: usize,
        attempt: u32,
    ) -> Result<(), ActorProcessingErr> {
        let due = state
            .saved
            .tasks
            .get(&task)
            .and_then(|run| run.slots.get(item))
            .is_some_and(|s| s.state == SlotState::RetryWait && s.attempt == attempt);
        if !due {
            return Ok(());
        }
        state.launch(&task, item);
        state.todo.push_back(task);
        state.run_todo();
        Self::save(myself, state).await
    }

    async fn timed_out(state: &mut WorkflowState, child: ExecutionId) {
        let Some((task, item)) = state.running.get(&child).cloned() else {
            return;
        };
        if let Some(slot) = state
            .saved
            .tasks
            .get_mut(&task)
            .and_then(|run| run.slots.get_mut(item))
        {
            slot.timed_out = true;
        }
        warn!(execution_id = %state.id, child = %child, task, "task timed out; cancelling it");
        Self::cancel_child(state, child).await;
    }

    async fn cancel_child(state: &WorkflowState, child: ExecutionId) {
        let Ok(Some(execution)) = state.shared.store.get_execution(child).await else {
            return;
        };
        match SupervisorHandle::lookup(&state.shared.name, &execution.action) {
            Some(supervisor) => {
                supervisor.cancel(child).await;
            }
            None => {
                warn!(execution_id = %state.id, child = %child, "no supervisor to cancel the child")
            }
        }
    }

    async fn cancel(
        myself: &ActorRef<WorkflowMsg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        if state.saved.cancelling {
            return Ok(());
        }
        state.saved.cancelling = true;
        info!(execution_id = %state.id, children = state.running.len(), "workflow cancelling");
        for run in state.saved.tasks.values_mut() {
            for slot in &mut run.slots {
                if matches!(slot.state, SlotState::RetryWait | SlotState::Waiting) {
                    slot.state = SlotState::Failed;
                    slot.result = json!({"error": "the workflow was cancelled"});
                }
            }
        }
        let names: Vec<String> = state.saved.tasks.keys().cloned().collect();
        state.todo.extend(names);
        state.run_todo();
        let children: Vec<ExecutionId> = state.running.keys().copied().collect();
        for child in children {
            Self::cancel_child(state, child).await;
        }
        Self::save(myself, state).await
    }
}

impl Actor for WorkflowActor {
    type Msg = WorkflowMsg;
    type State = WorkflowState;
    type Arguments = WorkflowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkflowArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let workflow =
            args.action.workflow.clone().ok_or_else(|| {
                format!("action {} has no workflow loaded", args.action.action_ref)
            })?;
        myself.send_message(WorkflowMsg::Start)?;
        Ok(WorkflowState {
            shared: args.shared,
            workflow,
            id: args.pending.id,
            parameters: args.pending.parameters,
            trace: args.pending.trace,
            action: args.action,
            saved: Saved::default(),
            running: HashMap::new(),
            todo: VecDeque::new(),
            launches: Vec::new(),
            handled: Vec::new(),
            ended: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.ended {
            return Ok(());
        }
        // Each step is a span of the workflow's trace; its log lines carry the ids.
        let span = tracing::info_span!(
            "workflow.step",
            execution_id = %state.id,
            action = %state.action.action_ref,
            trace_id = tracing::field::Empty,
        );
        let trace = state.trace.clone();
        sluice_telemetry::continue_trace(&span, |name| trace.get(name).cloned());
        Self::step(&myself, message, state).instrument(span).await
    }
}

impl WorkflowActor {
    async fn step(
        myself: &ActorRef<WorkflowMsg>,
        message: WorkflowMsg,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkflowMsg::Start => Self::load(myself, state).await,
            WorkflowMsg::ChildEnded(child) => Self::child_ended(myself, state, child).await,
            WorkflowMsg::RetryDue {
                task,
                item,
                attempt,
            } => Self::retry_due(myself, state, task, item, attempt).await,
            WorkflowMsg::TimedOut(child) => {
                Self::timed_out(state, child).await;
                Ok(())
            }
            WorkflowMsg::Save => Self::save(myself, state).await,
            WorkflowMsg::Cancel => Self::cancel(myself, state).await,
        }
    }
}

/// Whether an action is a workflow: the engine runs it, never a worker.
pub(crate) fn is_workflow(action: &Action) -> bool {
    action.runner == sluice_core::RunnerType::Orquesta
}

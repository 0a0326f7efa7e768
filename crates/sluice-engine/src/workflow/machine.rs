//! A workflow's decisions, with no I/O: given what happened (the workflow started, a child
//! ended, a retry delay passed, the workflow is cancelled), what the state becomes, which
//! children start, which timers to arm, and how the workflow ends.
//!
//! The workflow actor around it reads and writes the store, queues children at
//! their supervisors and arms timers; everything it decides, it asks this machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_core::secrets::{self, Keyring};
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_pack::datastore::{Kv, opened_during};
use sluice_pack::expressions::SCOPE;
use sluice_pack::template::ParamTemplate;
use sluice_pack::workflow::{Join, Workflow, truthy};
use sluice_pack::{Action, Catalog, params};
use sluice_store::{NewChild, WorkflowRecord};
use tracing::{info, warn};

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
///
/// Its items, slots and result grow with the task's work, so they are saved as parts of
/// their own, each only when it changes ([`Machine::take_step`]); the workflow's state
/// holds the rest. (States saved before parts existed hold them inline; they are read.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRun {
    /// Runs of this task before this one (a task in a loop runs again).
    round: u32,
    status: TaskStatus,
    /// How many slots it has: those without a saved part are new.
    #[serde(default)]
    len: usize,
    #[serde(default, skip_serializing)]
    items: Option<Vec<Value>>,
    #[serde(default, skip_serializing)]
    slots: Vec<Slot>,
    #[serde(default, skip_serializing)]
    result: Value,
}

/// The key of an item's slot among a workflow's saved parts.
fn slot_key(task: &str, round: u32, item: usize) -> String {
    format!("slot/{task}/{round}/{item}")
}

/// The key of a task run's items and result among a workflow's saved parts.
fn run_key(task: &str, round: u32) -> String {
    format!("run/{task}/{round}")
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
    /// Task executions started so far, for `limits.executions`.
    #[serde(default)]
    launched: u64,
}

/// A child to create and queue.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) child: NewChild,
    pub(crate) item: usize,
    /// Parameters as they are stored and run: secret ones sealed.
    pub(crate) parameters: Map<String, Value>,
}

/// What a step decided and the store has not saved yet.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// Children to create and queue.
    pub(crate) launches: Vec<Launch>,
    /// Children whose end the step acted on.
    pub(crate) handled: Vec<ExecutionId>,
    /// The parts of the state the step changed, by key.
    pub(crate) parts: Vec<(String, Value)>,
}

/// A child running now.
#[derive(Debug, Clone)]
struct Running {
    task: String,
    item: usize,
    action: ActionRef,
}

/// Something to be told later.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Timer {
    /// Call [`Machine::retry_due`] with these after `after`.
    Retry {
        task: String,
        item: usize,
        attempt: u32,
        after: Duration,
    },
    /// Call [`Machine::timed_out`] with this child after `after`.
    Timeout { child: ExecutionId, after: Duration },
}

/// What loading a saved workflow found.
#[derive(Debug, Default)]
pub(crate) struct Resumed {
    /// Children that ended while nobody listened: act on each as on a child's end.
    pub(crate) ended: Vec<ExecutionId>,
    pub(crate) timers: Vec<Timer>,
}

/// Steps one message may take before the workflow is failed as a runaway loop (tasks
/// without an action that keep leading to each other).
const MAX_STEPS: usize = 10_000;

/// The decisions of one workflow execution.
pub(crate) struct Machine {
    workflow: Arc<Workflow>,
    catalog: Arc<Catalog>,
    /// The workflow's secret inputs: sealed in the saved context.
    secret_inputs: Vec<String>,
    /// The workflow execution's parameters, secrets opened: held in memory only.
    parameters: Map<String, Value>,
    /// The text of each secret input: a child parameter or context value holding one is
    /// sealed too.
    secrets: Vec<String>,
    /// Texts of datastore secrets `decrypt_kv` opened while rendering: secret as well.
    opened: Mutex<Vec<String>>,
    /// Why the secret inputs could not be opened, if they could not.
    secrets_lost: Option<String>,
    keyring: Arc<Keyring>,
    /// `st2kv`, seen from the workflow's pack.
    kv: Kv,
    traceparent: Option<String>,
    saved: Saved,
    running: HashMap<ExecutionId, Running>,
    /// Tasks to look at again within this step.
    todo: VecDeque<String>,
    step: Step,
    /// What changed since the last step was taken: a task's slot (`Some(item)`) or its
    /// run's items and result (`None`).
    dirty: BTreeSet<(String, Option<usize>)>,
}

impl Machine {
    pub(crate) fn new(
        workflow: Arc<Workflow>,
        catalog: Arc<Catalog>,
        action: &Action,
        keyring: Arc<Keyring>,
        kv: &Kv,
        parameters: Map<String, Value>,
        traceparent: Option<String>,
    ) -> Self {
        let mut secret_inputs = action.secret_parameters();
        for name in secrets::sealed_names(&parameters) {
            if !secret_inputs.contains(&name) {
                secret_inputs.push(name);
            }
        }
        let redacted = secret_inputs
            .iter()
            .any(|name| parameters.get(name).is_some_and(|v| v == params::REDACTED));
        let (parameters, mut secrets_lost) = match keyring.unseal_all(&parameters) {
            Ok(open) => (open, None),
            Err((name, e)) => (
                parameters,
                Some(format!(
                    "its secret parameter {name:?} cannot be opened: {e}"
                )),
            ),
        };
        if redacted && secrets_lost.is_none() {
            secrets_lost = Some(
                "its secret parameters were held in memory only and were lost when the engine stopped"
                    .to_owned(),
            );
        }
        Self {
            workflow,
            catalog,
            secrets: secrets::secret_texts(&secret_inputs, &parameters),
            secret_inputs,
            parameters,
            secrets_lost,
            keyring,
            kv: kv.for_pack(action.action_ref.pack()),
            opened: Mutex::new(Vec::new()),
            traceparent,
            saved: Saved::default(),
            running: HashMap::new(),
            todo: VecDeque::new(),
            step: Step::default(),
            dirty: BTreeSet::new(),
        }
    }

    /// The first step: the context from the input and `vars`, then the start tasks.
    pub(crate) fn begin(&mut self) {
        self.reset();
        for name in &self.workflow.input {
            if let Some(value) = self.parameters.get(name) {
                self.saved.ctx.insert(name.clone(), value.clone());
            }
        }
        let workflow = self.workflow.clone();
        for (name, template) in &workflow.vars {
            match self.render(template, &self.scope(&[])) {
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
        self.run_todo();
    }

    /// Takes up a saved state: which children are still this workflow's to wait for, which
    /// of them ended meanwhile, and the timers to arm again.
    pub(crate) fn resume(
        &mut self,
        record: &WorkflowRecord,
        now: DateTime<Utc>,
    ) -> Result<Resumed, serde_json::Error> {
        self.reset();
        self.saved = serde_json::from_value(record.state.clone())?;
        self.take_up_parts(&record.parts)?;
        match self.keyring.unseal_all(&self.saved.ctx) {
            Ok(ctx) => self.saved.ctx = ctx,
            Err((name, e)) => {
                self.secrets_lost.get_or_insert_with(|| {
                    format!("its saved context value {name:?} cannot be opened: {e}")
                });
            }
        }
        let mut resumed = Resumed::default();
        for child in &record.children {
            let Some(run) = self.saved.tasks.get(&child.task) else {
                continue;
            };
            let item = usize::try_from(child.item).unwrap_or(0);
            let current = run.round == child.round
                && run
                    .slots
                    .get(item)
                    .is_some_and(|s| s.state == SlotState::Running && s.attempt == child.attempt);
            let Some(action) = self
                .workflow
                .tasks
                .get(&child.task)
                .and_then(|t| t.action.clone())
            else {
                continue;
            };
            if child.handled || !current {
                continue;
            }
            self.running.insert(
                child.execution_id,
                Running {
                    task: child.task.clone(),
                    item,
                    action,
                },
            );
            if child.status.is_terminal() {
                resumed.ended.push(child.execution_id);
            } else if let Some(timeout) = self.workflow.tasks[&child.task].timeout {
                resumed.timers.push(Timer::Timeout {
                    child: child.execution_id,
                    after: Duration::from_secs_f64(timeout),
                });
            }
        }
        for (name, run) in &self.saved.tasks {
            for (item, slot) in run.slots.iter().enumerate() {
                if slot.state == SlotState::RetryWait {
                    let after = slot
                        .retry_at
                        .and_then(|at| (at - now).to_std().ok())
                        .unwrap_or_default();
                    resumed.timers.push(Timer::Retry {
                        task: name.clone(),
                        item,
                        attempt: slot.attempt,
                        after,
                    });
                }
            }
        }
        Ok(resumed)
    }

    fn reset(&mut self) {
        self.running.clear();
        self.todo.clear();
        self.step = Step::default();
        self.dirty.clear();
    }

    /// Puts each task run's items, slots and result back from the saved parts.
    fn take_up_parts(&mut self, parts: &[(String, Value)]) -> Result<(), serde_json::Error> {
        let inline = self.saved.tasks.values().any(|run| !run.slots.is_empty());
        if inline {
            // Saved whole, before parts: the next step saves every part.
            for (name, run) in &mut self.saved.tasks {
                run.len = run.slots.len();
                self.dirty.insert((name.clone(), None));
                self.dirty
                    .extend((0..run.len).map(|item| (name.clone(), Some(item))));
            }
            return Ok(());
        }
        let parts: HashMap<&str, &Value> = parts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (name, run) in &mut self.saved.tasks {
            run.slots = (0..run.len)
                .map(
                    |item| match parts.get(slot_key(name, run.round, item).as_str()) {
                        Some(slot) => Slot::deserialize(*slot),
                        None => Ok(Slot::new()),
                    },
                )
                .collect::<Result<_, _>>()?;
            if let Some(part) = parts.get(run_key(name, run.round).as_str()) {
                run.items = Option::<Vec<Value>>::deserialize(&part["items"])?;
                run.result = part["result"].clone();
            }
        }
        Ok(())
    }

    /// How many children it waits for.
    pub(crate) fn running_count(&self) -> usize {
        self.running.len()
    }

    /// The children it waits for, with their actions, in the order they were requested.
    pub(crate) fn running_children(&self) -> Vec<(ExecutionId, ActionRef)> {
        let mut children: Vec<_> = self
            .running
            .iter()
            .map(|(id, r)| (*id, r.action.clone()))
            .collect();
        children.sort_by_key(|(id, _)| *id);
        children
    }

    /// Whether `child` is one it waits for.
    pub(crate) fn waits_for(&self, child: ExecutionId) -> bool {
        self.running.contains_key(&child)
    }

    /// Child `child` left its supervisor with `status` and `result`. Returns `None` when
    /// that changes nothing (not a child it waits for, or not ended: a lost worker's
    /// execution queued again), else the timers the step arms (a retry's delay).
    pub(crate) fn child_ended(
        &mut self,
        child: ExecutionId,
        status: ExecutionStatus,
        result: Option<Value>,
        now: DateTime<Utc>,
    ) -> Option<Vec<Timer>> {
        if !status.is_terminal() {
            return None;
        }
        let Running { task, item, .. } = self.running.remove(&child)?;
        let mut timers = Vec::new();
        let definition = self.workflow.tasks.get(&task);
        let retry = definition.and_then(|t| t.retry);
        let timeout = definition.and_then(|t| t.timeout).unwrap_or_default();
        let cancelling = self.saved.cancelling;
        if let Some(slot) = self
            .saved
            .tasks
            .get_mut(&task)
            .and_then(|run| run.slots.get_mut(item))
        {
            let mut result = result.unwrap_or(Value::Null);
            if status == ExecutionStatus::Succeeded {
                slot.state = SlotState::Succeeded;
            } else {
                if slot.timed_out {
                    result = json!({ "error": format!("timed out after {timeout}s"), "status": "timed_out" });
                } else if result.get("error").is_none() {
                    // The child's own result (a process's stdout, stderr, exit code) stays
                    // readable; the error says how it ended.
                    let error = json!(format!("ended {status}"));
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
                        let after = Duration::from_secs_f64(delay);
                        slot.retry_at = chrono::Duration::from_std(after).ok().map(|d| now + d);
                        info!(
                            task,
                            item,
                            attempt = slot.attempt,
                            delay,
                            "task item failed; retrying"
                        );
                        timers.push(Timer::Retry {
                            task: task.clone(),
                            item,
                            attempt: slot.attempt,
                            after,
                        });
                    }
                    _ => slot.state = SlotState::Failed,
                }
            }
            slot.result = result;
            self.dirty.insert((task.clone(), Some(item)));
        }
        self.step.handled.push(child);
        self.todo.push_back(task);
        self.run_todo();
        Some(timers)
    }

    /// A retry delay is over: starts the item's next attempt. Returns whether it was still
    /// due (nothing else started or ended it meanwhile).
    pub(crate) fn retry_due(&mut self, task: &str, item: usize, attempt: u32) -> bool {
        let due = self
            .saved
            .tasks
            .get(task)
            .and_then(|run| run.slots.get(item))
            .is_some_and(|s| s.state == SlotState::RetryWait && s.attempt == attempt);
        if due {
            self.launch(task, item);
            self.todo.push_back(task.to_owned());
            self.run_todo();
        }
        due
    }

    /// A child ran past its task's timeout: its attempt has failed once it ends. Returns the
    /// child to cancel, with its action.
    pub(crate) fn timed_out(&mut self, child: ExecutionId) -> Option<(ExecutionId, ActionRef)> {
        let Running { task, item, action } = self.running.get(&child)?.clone();
        if let Some(slot) = self
            .saved
            .tasks
            .get_mut(&task)
            .and_then(|run| run.slots.get_mut(item))
        {
            slot.timed_out = true;
            self.dirty.insert((task.clone(), Some(item)));
        }
        warn!(child = %child, task, "task timed out; cancelling it");
        Some((child, action))
    }

    /// Cancels the workflow: nothing new starts, items waiting to start or to retry fail,
    /// and it ends `cancelled` once its running children have. Returns the children to
    /// cancel, with their actions; `None` when it was cancelling already.
    pub(crate) fn cancel(&mut self) -> Option<Vec<(ExecutionId, ActionRef)>> {
        if self.saved.cancelling {
            return None;
        }
        self.saved.cancelling = true;
        info!(children = self.running.len(), "workflow cancelling");
        for (name, run) in &mut self.saved.tasks {
            for (item, slot) in run.slots.iter_mut().enumerate() {
                if matches!(slot.state, SlotState::RetryWait | SlotState::Waiting) {
                    slot.state = SlotState::Failed;
                    slot.result = json!({"error": "the workflow was cancelled"});
                    self.dirty.insert((name.clone(), Some(item)));
                }
            }
        }
        let names: Vec<String> = self.saved.tasks.keys().cloned().collect();
        self.todo.extend(names);
        self.run_todo();
        Some(self.running_children())
    }

    pub(crate) fn is_cancelling(&self) -> bool {
        self.saved.cancelling
    }

    /// Why the workflow cannot go on with its secret inputs, if it cannot: one sealed with
    /// a key this engine no longer has, or a row from before secrets were sealed.
    pub(crate) fn secrets_lost(&self) -> Option<&str> {
        self.secrets_lost.as_deref()
    }

    /// Records a failure no task caused; the workflow fails with it.
    pub(crate) fn fail(&mut self, error: impl Into<String>) {
        self.saved.errors.push(error.into());
    }

    /// What this step decided; the actor saves it.
    pub(crate) fn take_step(&mut self) -> Step {
        let mut step = std::mem::take(&mut self.step);
        for (name, item) in std::mem::take(&mut self.dirty) {
            let Some(run) = self.saved.tasks.get(&name) else {
                continue;
            };
            match item {
                Some(item) => {
                    if let Some(slot) = run.slots.get(item) {
                        step.parts.push((
                            slot_key(&name, run.round, item),
                            serde_json::to_value(slot).unwrap_or(Value::Null),
                        ));
                    }
                }
                None => step.parts.push((
                    run_key(&name, run.round),
                    json!({"items": run.items, "result": run.result}),
                )),
            }
        }
        step
    }

    /// A step the store could not save, to be saved with the next try.
    pub(crate) fn restore_step(&mut self, step: Step) {
        self.step = step;
    }

    /// The store created a launched child as `id`: it is waited for from now on. Returns
    /// its task's timeout, to arm.
    pub(crate) fn started(&mut self, launch: &Launch, id: ExecutionId) -> Option<Timer> {
        let task = &launch.child.task;
        self.running.insert(
            id,
            Running {
                task: task.clone(),
                item: launch.item,
                action: launch.child.action.clone(),
            },
        );
        let timeout = self.workflow.tasks.get(task).and_then(|t| t.timeout)?;
        Some(Timer::Timeout {
            child: id,
            after: Duration::from_secs_f64(timeout),
        })
    }

    /// Whether nothing runs or waits any more: the workflow has ended.
    pub(crate) fn idle(&self) -> bool {
        self.saved
            .tasks
            .values()
            .all(|run| run.status != TaskStatus::Running)
    }

    /// How the workflow ends: its status, and its result (the output, and the errors when
    /// it failed).
    pub(crate) fn outcome(&self) -> (ExecutionStatus, Value) {
        let scope = self.scope(&[]);
        let mut output = Map::new();
        let mut errors = self.saved.errors.clone();
        for (name, template) in &self.workflow.output {
            match self.render(template, &scope) {
                Ok(value) => {
                    output.insert(name.clone(), value);
                }
                Err(e) => errors.push(format!("output.{name}: {e}")),
            }
        }
        // An output rendered from a secret input is stored sealed, and shown masked.
        let tainted = secrets::tainted(&output, &self.secrets());
        if let Ok(sealed) = self.keyring.seal_named(&tainted, &output) {
            output = sealed;
        }
        let errors: Vec<String> = errors
            .iter()
            .map(|e| secrets::scrub(e, &self.secrets()))
            .collect();
        let status = if self.saved.cancelling {
            ExecutionStatus::Cancelled
        } else if errors.is_empty() {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        let result = if errors.is_empty() {
            json!({ "output": output })
        } else {
            json!({ "output": output, "errors": errors })
        };
        (status, result)
    }

    /// The state as the store keeps it: secret inputs, and context values rendered from
    /// them, sealed.
    pub(crate) fn saved_json(&self) -> Value {
        let saved = &self.saved;
        let mut names = self.secret_inputs.clone();
        names.extend(secrets::tainted(&saved.ctx, &self.secrets()));
        let ctx = self
            .keyring
            .seal_named(&names, &saved.ctx)
            .unwrap_or_else(|_| {
                let mut ctx = saved.ctx.clone();
                for name in &names {
                    ctx.insert(name.clone(), json!(params::REDACTED));
                }
                ctx
            });
        // The task runs without what their parts hold, and nothing else copied.
        json!({
            "ctx": ctx,
            "tasks": saved.tasks,
            "joins": saved.joins,
            "errors": saved.errors,
            "cancelling": saved.cancelling,
            "launched": saved.launched,
        })
    }

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

    fn begin_task(&mut self, name: &str) {
        if self.saved.cancelling || !self.saved.errors.is_empty() {
            return;
        }
        let Some(task) = self.workflow.tasks.get(name) else {
            return;
        };
        let previous = self.saved.tasks.get(name);
        if previous.is_some_and(|run| run.status == TaskStatus::Running) {
            warn!(
                task = name,
                "task is still running; the transition to it is ignored"
            );
            return;
        }
        let round = previous.map_or(0, |run| run.round + 1);
        let limit = self.workflow.limits.rounds;
        if round >= limit {
            self.saved.errors.push(format!(
                "task {name} would run a {}th time; a task may run {limit} times in one workflow (limits.rounds)",
                u64::from(round) + 1
            ));
            return;
        }
        let mut run = TaskRun {
            round,
            status: TaskStatus::Running,
            len: 1,
            items: None,
            slots: vec![Slot::new()],
            result: Value::Null,
        };
        if let Some(with) = &task.with {
            match self.render(&with.items, &self.scope(&[])) {
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
        run.len = run.slots.len();
        self.dirty.insert((name.to_owned(), None));
        for (item, slot) in run.slots.iter().enumerate() {
            if slot.state != SlotState::Waiting {
                self.dirty.insert((name.to_owned(), Some(item)));
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
                self.dirty.insert((name.to_owned(), Some(i)));
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

    /// Renders a task item's input and launches its child; a render or parameter error
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
                self.render(template, &scope)
                    .map(|v| (key.clone(), v))
                    .map_err(|e| format!("input.{key}: {e}"))
            })
            .collect();
        let action = task.action.as_ref().and_then(|r| self.catalog.action(r));
        let prepared = match (rendered, action) {
            (Ok(input), Some(action)) => self
                .defaults(action, input)
                .and_then(|input| params::resolve(action, input).map_err(|e| e.to_string()))
                .and_then(|p| params::seal(&self.keyring, action, &p, &self.secrets()))
                .map(|p| (action, p))
                .map_err(|e| secrets::scrub(&e, &self.secrets())),
            (Err(e), _) => Err(secrets::scrub(&e, &self.secrets())),
            (_, None) => Err("its action is no longer loaded".to_owned()),
        };
        let (round, attempt, with_items) =
            (run.round, run.slots[item].attempt, run.items.is_some());
        let Some(slot) = self
            .saved
            .tasks
            .get_mut(name)
            .and_then(|run| run.slots.get_mut(item))
        else {
            return;
        };
        let limit = self.workflow.limits.executions;
        let prepared = match prepared {
            Ok(_) if self.saved.launched >= limit => {
                let error = format!(
                    "the workflow has started {limit} task executions, as many as it may (limits.executions)"
                );
                self.saved.errors.push(error.clone());
                Err(error)
            }
            other => other,
        };
        match prepared {
            Ok((action, parameters)) => {
                self.saved.launched += 1;
                self.step.launches.push(Launch {
                    child: NewChild {
                        task: name.to_owned(),
                        round,
                        item: if with_items { item as i64 } else { -1 },
                        attempt,
                        action: action.action_ref.clone(),
                        parameters: parameters.clone(),
                        traceparent: self.traceparent.clone(),
                    },
                    item,
                    parameters,
                });
                slot.state = SlotState::Running;
                slot.retry_at = None;
                slot.timed_out = false;
            }
            Err(e) => {
                slot.state = SlotState::Failed;
                slot.result = json!({ "error": e });
            }
        }
        self.dirty.insert((name.to_owned(), Some(item)));
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
        self.dirty.insert((name.to_owned(), None));
        let (status, result) = (run.status, run.result.clone());
        info!(task = name, status = status.as_str(), "workflow task ended");
        let mut taken = false;
        for (i, transition) in task.next.iter().enumerate() {
            let scope = self.scope(&[
                ("result", result.clone()),
                ("status", json!(status.as_str())),
            ]);
            let when = match &transition.when {
                None => true,
                Some(when) => match self.render(when, &scope) {
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
                match self.render(template, &scope) {
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
}

impl Machine {
    /// Renders with `st2kv`; what `decrypt_kv` opened is remembered as secret.
    fn render(&self, template: &ParamTemplate, scope: &Value) -> Result<Value, String> {
        let (rendered, opened) = opened_during(|| template.render_in(scope, Some(&self.kv)));
        if !opened.is_empty() {
            self.opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(opened);
        }
        rendered
    }

    /// A child's input with its action's templated defaults rendered (seen from the
    /// child action's pack).
    fn defaults(
        &self,
        action: &Action,
        input: Map<String, Value>,
    ) -> Result<Map<String, Value>, String> {
        let kv = self.kv.for_pack(action.action_ref.pack());
        let (rendered, opened) = opened_during(|| params::render_defaults(action, input, &kv));
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(opened);
        rendered
    }

    /// The texts of every secret this workflow holds: its secret inputs and what
    /// `decrypt_kv` opened.
    fn secrets(&self) -> Vec<String> {
        let opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.secrets.iter().chain(opened.iter()).cloned().collect()
    }
}

fn summary(result: &Value) -> String {
    match result.get("error").and_then(Value::as_str) {
        Some(error) => error.to_owned(),
        None => result.to_string(),
    }
}

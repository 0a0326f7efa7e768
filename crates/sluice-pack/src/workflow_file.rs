//! Reading one workflow file (`runner_type: orquesta`) into a checked [`Workflow`]:
//! every task's action exists and takes the inputs given, every `do` names a task, every
//! template compiles, some task starts the workflow, and no cycle of tasks is without a way
//! out. Each problem names the file and the task.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use sluice_core::ActionRef;

use crate::error::LoadError;
use crate::model::{Action, Catalog};
use crate::template::ParamTemplate;
use crate::workflow::{Join, Limits, Retry, Task, Transition, WithItems, Workflow};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowFile {
    #[allow(dead_code)]
    version: Option<Value>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    input: Vec<Value>,
    #[serde(default)]
    vars: Option<Value>,
    #[serde(default)]
    tasks: BTreeMap<String, TaskFile>,
    #[serde(default)]
    output: Option<Value>,
    /// Sluice's bounds on a runaway workflow (not in Orquesta's format).
    #[serde(default)]
    limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    action: Option<String>,
    #[serde(default)]
    input: serde_json::Map<String, Value>,
    with: Option<WithFile>,
    retry: Option<RetryFile>,
    timeout: Option<f64>,
    #[serde(default)]
    next: Vec<NextFile>,
    join: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WithFile {
    Items(String),
    Full {
        items: String,
        concurrency: Option<usize>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    count: u32,
    #[serde(default)]
    delay: f64,
    #[serde(default = "one")]
    backoff: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextFile {
    when: Option<String>,
    publish: Option<Value>,
    #[serde(rename = "do")]
    targets: Option<Value>,
}

/// Collects the problems of one workflow file.
struct Check<'a> {
    file: &'a Path,
    errors: Vec<LoadError>,
}

impl Check<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(LoadError {
            file: self.file.to_owned(),
            field: Some(field.into()),
            message: message.into(),
        });
    }

    fn template(&mut self, field: &str, source: Value, shell: bool) -> Option<ParamTemplate> {
        match ParamTemplate::compile(source, shell) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(field, e);
                None
            }
        }
    }

    /// `[{a: x}, {b: y}]` or `{a: x, b: y}`: named values in order.
    fn named(&mut self, field: &str, value: Option<Value>) -> Vec<(String, ParamTemplate)> {
        let mut entries = Vec::new();
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => entries.extend(map),
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::Object(map) => entries.extend(map),
                        _ => self.error(format!("{field}[{i}]"), "expected a `name: value` map"),
                    }
                }
            }
            Some(_) => self.error(field, "expected a map or a list of `name: value` maps"),
        }
        entries
            .into_iter()
            .filter_map(|(name, source)| {
                let t = self.template(&format!("{field}.{name}"), source, false)?;
                Some((name, t))
            })
            .collect()
    }
}

/// Reads the workflow file of `action` and checks it against the catalog.
pub fn parse(file: &Path, action: &Action, catalog: &Catalog) -> Result<Workflow, Vec<LoadError>> {
    let whole = |message: String| {
        vec![LoadError {
            file: file.to_owned(),
            field: None,
            message,
        }]
    };
    let text = std::fs::read_to_string(file).map_err(|e| whole(format!("cannot read: {e}")))?;
    let raw: WorkflowFile = serde_yaml_ng::from_str(&text).map_err(|e| whole(e.to_string()))?;
    let doc_limits = raw.limits;
    let mut check = Check {
        file,
        errors: Vec::new(),
    };

    let mut input = Vec::new();
    for (i, entry) in raw.input.iter().enumerate() {
        let name = match entry {
            Value::String(name) => Some(name.clone()),
            Value::Object(map) if map.len() == 1 => map.keys().next().cloned(),
            _ => None,
        };
        match name {
            Some(name) if action.parameters.contains_key(&name) => input.push(name),
            Some(name) => check.error(
                format!("input[{i}]"),
                format!(
                    "{name:?} is not a parameter of action {} (declare it in {})",
                    action.action_ref,
                    action.file.display()
                ),
            ),
            None => check.error(format!("input[{i}]"), "expected a name"),
        }
    }
    let vars = check.named("vars", raw.vars);
    let output = check.named("output", raw.output);
    if raw.tasks.is_empty() {
        check.error("tasks", "a workflow needs at least one task");
    }

    let mut tasks = BTreeMap::new();
    for (name, task) in raw.tasks.iter() {
        let at = format!("tasks.{name}");
        let target = match &task.action {
            None => None,
            Some(text) => match text.parse::<ActionRef>() {
                Ok(r) => match catalog.action(&r) {
                    Some(a) => Some(a),
                    None => {
                        check.error(format!("{at}.action"), format!("unknown action {r}"));
                        None
                    }
                },
                Err(e) => {
                    check.error(format!("{at}.action"), e.to_string());
                    None
                }
            },
        };
        let mut task_input = Vec::new();
        for (key, source) in &task.input {
            let field = format!("{at}.input.{key}");
            if let Some(target) = target
                && !target.parameters.contains_key(key)
            {
                let known = target.parameters.keys().cloned().collect::<Vec<_>>();
                check.error(
                    &field,
                    format!(
                        "action {} has no parameter {key:?} (known: {})",
                        target.action_ref,
                        known.join(", ")
                    ),
                );
                continue;
            }
            let shell = target.is_some_and(|t| t.shell_reads(key));
            if let Some(t) = check.template(&field, source.clone(), shell) {
                task_input.push((key.clone(), t));
            }
        }
        if let Some(target) = target {
            for (key, spec) in &target.parameters {
                if spec.required && spec.default.is_none() && !task.input.contains_key(key) {
                    check.error(
                        format!("{at}.input"),
                        format!("action {} requires parameter {key:?}", target.action_ref),
                    );
                }
            }
        }
        let with = task.with.as_ref().and_then(|with| {
            let (items, concurrency) = match with {
                WithFile::Items(items) => (items, None),
                WithFile::Full { items, concurrency } => (items, *concurrency),
            };
            if concurrency == Some(0) {
                check.error(format!("{at}.with.concurrency"), "must be at least 1");
            }
            let items = check.template(
                &format!("{at}.with.items"),
                Value::String(items.clone()),
                false,
            )?;
            Some(WithItems { items, concurrency })
        });
        let retry = task.retry.as_ref().map(|r| Retry {
            count: r.count,
            delay: r.delay.max(0.0),
            backoff: r.backoff.max(1.0),
        });
        if task.timeout.is_some_and(|t| !t.is_finite() || t <= 0.0) {
            check.error(
                format!("{at}.timeout"),
                "must be a number of seconds above 0",
            );
        }
        let mut next = Vec::new();
        for (i, transition) in task.next.iter().enumerate() {
            let field = format!("{at}.next[{i}]");
            let when = transition.when.as_ref().and_then(|w| {
                check.template(&format!("{field}.when"), Value::String(w.clone()), false)
            });
            let publish = check.named(&format!("{field}.publish"), transition.publish.clone());
            let targets: Vec<String> = match &transition.targets {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s
                    .split(',')
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(_) => {
                    check.error(format!("{field}.do"), "expected a task name or a list");
                    Vec::new()
                }
            };
            for t in &targets {
                if !raw.tasks.contains_key(t) {
                    let known = raw.tasks.keys().cloned().collect::<Vec<_>>().join(", ");
                    check.error(
                        format!("{field}.do"),
                        format!("unknown task {t:?} (tasks: {known})"),
                    );
                }
            }
            next.push(Transition {
                when,
                publish,
                targets,
            });
        }
        let join = match &task.join {
            None => None,
            Some(Value::String(s)) if s == "all" => Some(Join::All),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
                Some(Join::Count(n.as_u64().unwrap_or(1) as usize))
            }
            Some(_) => {
                check.error(
                    format!("{at}.join"),
                    "expected `all` or a count of at least 1",
                );
                None
            }
        };
        tasks.insert(
            name.clone(),
            Task {
                action: target.map(|t| t.action_ref.clone()),
                input: task_input,
                with,
                retry,
                timeout: task.timeout,
                next,
                join,
            },
        );
    }

    let mut inbound: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, task) in &tasks {
        for t in task.next.iter().flat_map(|n| &n.targets) {
            inbound.entry(t.clone()).or_default().insert(name.clone());
        }
    }
    let start: Vec<String> = tasks
        .keys()
        .filter(|name| !inbound.contains_key(*name))
        .cloned()
        .collect();
    if start.is_empty() && !tasks.is_empty() {
        check.error(
            "tasks",
            "no task to start with: every task is the target of a transition",
        );
    }
    for (name, task) in &tasks {
        if let Some(Join::Count(n)) = task.join {
            let have = inbound.get(name).map_or(0, BTreeSet::len);
            if n > have {
                check.error(
                    format!("tasks.{name}.join"),
                    format!("waits for {n} inbound transitions but only {have} task(s) lead here"),
                );
            }
        }
    }
    for (cycle, first) in cycles_without_exit(&tasks) {
        check.error(
            format!("tasks.{first}"),
            format!(
                "the cycle {} has no way out: every task in it always goes on to another in it",
                cycle.join(" -> ")
            ),
        );
    }

    if !check.errors.is_empty() {
        return Err(check.errors);
    }
    Ok(Workflow {
        file: file.to_owned(),
        input,
        vars,
        tasks,
        output,
        start,
        inbound,
        limits: doc_limits,
    })
}

/// Cycles of tasks that can never end: every task in the cycle has a transition without a
/// `when` (always taken), and no transition leads out of the cycle. Each is given once, as
/// its tasks and the first of them.
fn cycles_without_exit(tasks: &BTreeMap<String, Task>) -> Vec<(Vec<String>, String)> {
    let edges = |name: &str| -> Vec<&String> {
        tasks
            .get(name)
            .map(|t| t.next.iter().flat_map(|n| &n.targets).collect())
            .unwrap_or_default()
    };
    let reachable = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges(from).into_iter().cloned().collect();
        while let Some(t) = stack.pop() {
            if seen.insert(t.clone()) {
                stack.extend(edges(&t).into_iter().cloned());
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        tasks.keys().map(|name| (name, reachable(name))).collect();
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for name in tasks.keys() {
        if !reach[name].contains(name) || reported.contains(name) {
            continue;
        }
        let component: Vec<String> = tasks
            .keys()
            .filter(|other| reach[name].contains(*other) && reach[*other].contains(name))
            .cloned()
            .collect();
        reported.extend(component.iter().cloned());
        let closed = component.iter().all(|t| {
            let task = &tasks[t];
            let leaves = edges(t).iter().any(|target| !component.contains(target));
            let always_goes_on = task
                .next
                .iter()
                .any(|n| n.when.is_none() && !n.targets.is_empty());
            !leaves && always_goes_on
        });
        if closed {
            found.push((component.clone(), component[0].clone()));
        }
    }
    found
}

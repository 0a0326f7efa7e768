//! The workflow state machine on its own: real pack files loaded by `sluice-pack`, children
//! "created" and "ended" by the test, no actor, no store, no clock.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value, json};
use sluice_core::secrets::Keyring;
use sluice_core::{ExecutionId, ExecutionStatus};
use sluice_pack::Catalog;
use sluice_store::{WorkflowChild, WorkflowRecord};

use super::machine::{Launch, Machine, Step, Timer};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A catalog with actions `t.work` (parameter `n`) and `t.wf`, the workflow in `yaml`.
fn catalog(yaml: &str) -> Arc<Catalog> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t/pack.yaml", "ref: t\n");
    write(
        dir.path(),
        "t/actions/work.yaml",
        "name: work\nrunner_type: noop\nparameters:\n  n: {type: integer}\n",
    );
    write(
        dir.path(),
        "t/actions/echo.yaml",
        "name: echo\nrunner_type: noop\nparameters:\n  text: {type: string}\n",
    );
    write(
        dir.path(),
        "t/actions/wf.yaml",
        "name: wf\nrunner_type: orquesta\nentry_point: workflows/wf.yaml\nparameters:\n  token: {type: string, secret: true}\n",
    );
    write(dir.path(), "t/actions/workflows/wf.yaml", yaml);
    Arc::new(sluice_pack::load_packs(&[dir.path().to_owned()]).unwrap())
}

/// A workflow under test: the machine and the children the test has "created".
struct Run {
    machine: Machine,
    keyring: Arc<Keyring>,
    /// The last launch, as debug text.
    last_launch: Option<String>,
    next_id: i64,
    /// Every child created, in order: (id, task, item, attempt).
    created: Vec<(ExecutionId, String, usize, u32)>,
    timers: Vec<Timer>,
    /// Every part the steps saved, in order (a later one replaces an earlier of its key).
    parts: Vec<(String, Value)>,
}

impl Run {
    /// The workflow is idle and failed, its first error naming `what`.
    fn ended_failed_on(&self, what: &str) {
        assert!(self.machine.idle());
        let (status, result) = self.machine.outcome();
        assert_eq!(status, ExecutionStatus::Failed);
        assert!(
            result["errors"][0].as_str().unwrap().contains(what),
            "{result}"
        );
    }

    fn start(yaml: &str, parameters: Value) -> Self {
        let catalog = catalog(yaml);
        let action = catalog.action(&"t.wf".parse().unwrap()).unwrap().clone();
        let workflow = action.workflow.clone().unwrap();
        let parameters: Map<String, Value> = parameters.as_object().cloned().unwrap_or_default();
        // As the engine hands them over: secret ones sealed.
        let keyring = Arc::new(Keyring::ephemeral().unwrap());
        let parameters = sluice_pack::params::seal(&keyring, &action, &parameters, &[]).unwrap();
        let mut run = Self {
            machine: Machine::new(
                workflow,
                catalog,
                &action,
                keyring.clone(),
                &crate::testing::empty_datastore(),
                parameters,
                None,
            ),
            keyring,
            last_launch: None,
            next_id: 100,
            created: Vec::new(),
            timers: Vec::new(),
            parts: Vec::new(),
        };
        run.machine.begin();
        run.save();
        run
    }

    /// What the actor does after a step: every launch is created and started.
    fn save(&mut self) -> Step {
        let step = self.machine.take_step();
        for launch in &step.launches {
            self.create(launch);
        }
        self.parts.extend(step.parts.iter().cloned());
        step
    }

    fn create(&mut self, launch: &Launch) {
        self.last_launch = Some(format!("{:?} {:?}", launch.child, launch.parameters));
        self.next_id += 1;
        let id = ExecutionId(self.next_id);
        self.timers.extend(self.machine.started(launch, id));
        self.created.push((
            id,
            launch.child.task.clone(),
            launch.item,
            launch.child.attempt,
        ));
    }

    fn id_of(&self, task: &str, item: usize, attempt: u32) -> ExecutionId {
        self.created
            .iter()
            .find(|(_, t, i, a)| t == task && *i == item && *a == attempt)
            .unwrap_or_else(|| panic!("no child {task}[{item}] attempt {attempt}"))
            .0
    }

    fn count(&self, task: &str) -> usize {
        self.created.iter().filter(|(_, t, ..)| t == task).count()
    }

    fn end(&mut self, id: ExecutionId, status: ExecutionStatus, result: Value) -> Step {
        let timers = self
            .machine
            .child_ended(id, status, Some(result), Utc::now())
            .expect("a child it waits for");
        self.timers.extend(timers);
        self.save()
    }

    fn succeed(&mut self, task: &str, item: usize) -> Step {
        let id = self.id_of(task, item, 1);
        self.end(id, ExecutionStatus::Succeeded, json!({"item": item}))
    }
}

const FAN_OUT: &str = "version: 1.0\ntasks:\n  each:\n    action: t.work\n    with: {items: \"{{ range(5) | list }}\", concurrency: 3}\n    input: {n: \"{{ item() }}\"}\n    next:\n      - when: \"{{ succeeded() }}\"\n        do: [after]\n  after:\n    action: t.work\n    input: {n: 99}\noutput:\n  - results: \"{{ task('each').result }}\"\n";

#[test]
fn items_finishing_together_dispatch_the_successor_exactly_once() {
    let mut run = Run::start(FAN_OUT, json!({}));
    assert_eq!(run.count("each"), 3, "concurrency 3 of 5 items");
    // The last two items start as places free up; then all five end in one burst, in
    // reverse order, as the mailbox would deliver them.
    run.succeed("each", 0);
    run.succeed("each", 1);
    assert_eq!(run.count("each"), 5);
    let mut successors = 0;
    for item in [4, 3, 2] {
        let step = run.succeed("each", item);
        successors += step
            .launches
            .iter()
            .filter(|l| l.child.task == "after")
            .count();
    }
    assert_eq!(successors, 1, "the successor starts once, on the last item");
    assert_eq!(run.count("after"), 1);
    // A repeated end of an item changes nothing and starts nothing.
    let first = run.id_of("each", 0, 1);
    assert!(
        run.machine
            .child_ended(first, ExecutionStatus::Succeeded, None, Utc::now())
            .is_none()
    );
    assert!(run.machine.take_step().launches.is_empty());
    assert!(!run.machine.idle());
    run.succeed("after", 0);
    assert!(run.machine.idle());
    let (status, result) = run.machine.outcome();
    assert_eq!(status, ExecutionStatus::Succeeded);
    assert_eq!(
        result["output"]["results"],
        json!([{"item": 0}, {"item": 1}, {"item": 2}, {"item": 3}, {"item": 4}]),
        "item results in item order"
    );
}

#[test]
fn a_with_task_never_runs_more_items_than_its_concurrency() {
    let mut run = Run::start(FAN_OUT, json!({}));
    for item in 0..5 {
        let running = run.machine.running_count();
        assert!(running <= 3, "{running} running");
        run.succeed("each", item);
    }
    assert_eq!(run.count("each"), 5);
}

#[test]
fn a_failed_item_is_retried_after_its_delay_then_the_failure_is_handled() {
    let yaml = "version: 1.0\ntasks:\n  flaky:\n    action: t.work\n    input: {n: 1}\n    retry: {count: 2, delay: 3, backoff: 2}\n    next:\n      - when: \"{{ failed() }}\"\n        publish: [{why: \"{{ result().error }}\"}]\noutput:\n  - why: \"{{ ctx().why }}\"\n";
    let mut run = Run::start(yaml, json!({}));
    let first = run.id_of("flaky", 0, 1);
    run.end(first, ExecutionStatus::Failed, json!({"exit_code": 1}));
    assert_eq!(
        run.timers.last(),
        Some(&Timer::Retry {
            task: "flaky".into(),
            item: 0,
            attempt: 2,
            after: Duration::from_secs(3)
        })
    );
    assert!(
        !run.machine.retry_due("flaky", 0, 3),
        "not that attempt's turn"
    );
    assert!(run.machine.retry_due("flaky", 0, 2));
    run.save();
    let second = run.id_of("flaky", 0, 2);
    run.end(second, ExecutionStatus::Failed, json!({}));
    assert!(matches!(
        run.timers.last(),
        Some(Timer::Retry { attempt: 3, after, .. }) if *after == Duration::from_secs(6)
    ));
    assert!(run.machine.retry_due("flaky", 0, 3));
    run.save();
    let third = run.id_of("flaky", 0, 3);
    run.end(third, ExecutionStatus::TimedOut, json!("late"));
    assert!(run.machine.idle(), "no retry is left");
    let (status, result) = run.machine.outcome();
    assert_eq!(
        status,
        ExecutionStatus::Succeeded,
        "the failure was handled"
    );
    assert_eq!(result["output"]["why"], json!("ended timed_out"));
}

#[test]
fn an_unhandled_failure_fails_the_workflow_and_names_the_task() {
    let yaml = "version: 1.0\ntasks:\n  one:\n    action: t.work\n    input: {n: 1}\n    next:\n      - do: [two]\n  two:\n    action: t.work\n    input: {n: 2}\n";
    let mut run = Run::start(yaml, json!({}));
    let one = run.id_of("one", 0, 1);
    run.end(one, ExecutionStatus::Failed, json!({"error": "boom"}));
    assert_eq!(
        run.count("two"),
        1,
        "`do` without `when` is taken on failure too"
    );
    let two = run.id_of("two", 0, 1);
    run.end(two, ExecutionStatus::Failed, json!({"error": "bang"}));
    let (status, result) = run.machine.outcome();
    assert_eq!(status, ExecutionStatus::Failed);
    assert_eq!(result["errors"], json!(["task two failed: bang"]));
}

#[test]
fn a_join_all_waits_for_every_inbound_task() {
    let yaml = "version: 1.0\ntasks:\n  a:\n    action: t.work\n    input: {n: 1}\n    next: [{do: [both]}]\n  b:\n    action: t.work\n    input: {n: 2}\n    next: [{do: [both]}]\n  both:\n    join: all\n    action: t.work\n    input: {n: 3}\n";
    let mut run = Run::start(yaml, json!({}));
    assert_eq!((run.count("a"), run.count("b")), (1, 1));
    run.succeed("a", 0);
    assert_eq!(run.count("both"), 0, "b has not arrived");
    run.succeed("b", 0);
    assert_eq!(run.count("both"), 1);
}

#[test]
fn cancelling_starts_nothing_and_lists_the_running_children() {
    let mut run = Run::start(FAN_OUT, json!({}));
    let running: Vec<ExecutionId> = (0..3).map(|i| run.id_of("each", i, 1)).collect();
    let to_cancel = run.machine.cancel().expect("first cancel");
    assert_eq!(
        to_cancel.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        running
    );
    assert!(run.machine.cancel().is_none(), "a second cancel is a no-op");
    assert!(run.machine.is_cancelling());
    for id in running {
        let step = run.end(id, ExecutionStatus::Cancelled, json!({}));
        assert!(step.launches.is_empty(), "no item starts while cancelling");
    }
    assert_eq!(run.count("each"), 3, "the two waiting items never started");
    assert_eq!(run.count("after"), 0);
    assert!(run.machine.idle());
    assert_eq!(run.machine.outcome().0, ExecutionStatus::Cancelled);
}

#[test]
fn a_timed_out_child_is_cancelled_and_its_failure_says_so() {
    let yaml =
        "version: 1.0\ntasks:\n  slow:\n    action: t.work\n    input: {n: 1}\n    timeout: 0.5\n";
    let mut run = Run::start(yaml, json!({}));
    let id = run.id_of("slow", 0, 1);
    assert_eq!(
        run.timers,
        [Timer::Timeout {
            child: id,
            after: Duration::from_millis(500)
        }]
    );
    let (child, action) = run.machine.timed_out(id).unwrap();
    assert_eq!((child, action.as_str()), (id, "t.work"));
    run.end(id, ExecutionStatus::Cancelled, json!({}));
    let (status, result) = run.machine.outcome();
    assert_eq!(status, ExecutionStatus::Failed);
    assert_eq!(
        result["errors"],
        json!(["task slow failed: timed out after 0.5s"])
    );
}

#[test]
fn a_saved_state_resumes_with_what_ended_meanwhile_and_secrets_sealed() {
    let mut run = Run::start(FAN_OUT, json!({"token": "hunter2"}));
    run.succeed("each", 0);
    let saved = run.machine.saved_json();
    assert!(!saved.to_string().contains("hunter2"));
    // The items' slots are parts of their own, each saved when it changed.
    assert!(saved["tasks"]["each"].get("slots").is_none(), "{saved}");
    assert_eq!(saved["tasks"]["each"]["len"], 5, "{saved}");
    let last = |key: &str| {
        run.parts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v["state"].clone())
    };
    assert_eq!(last("slot/each/0/0"), Some(json!("succeeded")));
    assert_eq!(last("slot/each/0/3"), Some(json!("running")));
    // The store's view: item 0 handled, 1 ended unhandled, 2 and 3 still running.
    let child = |item: usize, handled: bool, status| WorkflowChild {
        task: "each".into(),
        round: 0,
        item: item as i64,
        attempt: 1,
        execution_id: run.id_of("each", item, 1),
        handled,
        status,
        result: None,
    };
    let record = WorkflowRecord {
        state: saved,
        parts: run.parts.clone(),
        updated_at: Utc::now(),
        children: vec![
            child(0, true, ExecutionStatus::Succeeded),
            child(1, false, ExecutionStatus::Succeeded),
            child(2, false, ExecutionStatus::Running),
            child(3, false, ExecutionStatus::Requested),
        ],
    };
    let catalog = catalog(FAN_OUT);
    let action = catalog.action(&"t.wf".parse().unwrap()).unwrap().clone();
    let stored = run
        .keyring
        .seal_named(
            &["token".to_owned()],
            &Map::from_iter([("token".to_owned(), json!("hunter2"))]),
        )
        .unwrap();
    let mut resumed = Machine::new(
        action.workflow.clone().unwrap(),
        catalog.clone(),
        &action,
        run.keyring.clone(),
        &crate::testing::empty_datastore(),
        stored.clone(),
        None,
    );
    let found = resumed.resume(&record, Utc::now()).unwrap();
    assert_eq!(found.ended, [run.id_of("each", 1, 1)]);
    assert_eq!(resumed.running_count(), 3);
    assert_eq!(resumed.secrets_lost(), None, "the secret survives, sealed");

    // An engine without the key that sealed it cannot go on, and says why.
    let mut foreign = Machine::new(
        action.workflow.clone().unwrap(),
        catalog,
        &action,
        Arc::new(Keyring::ephemeral().unwrap()),
        &crate::testing::empty_datastore(),
        stored,
        None,
    );
    foreign.resume(&record, Utc::now()).unwrap();
    let reason = foreign.secrets_lost().expect("not opened");
    assert!(
        reason.contains("token") && reason.contains("not in this process"),
        "{reason}"
    );
}

#[test]
fn a_value_rendered_from_a_secret_input_is_sealed_in_the_child_state_and_output() {
    let yaml = "version: 1.0\ninput: [token]\nvars:\n  - header: \"Bearer {{ ctx().token }}\"\ntasks:\n  call:\n    action: t.echo\n    input: {text: \"{{ ctx().header }}\"}\noutput:\n  - used: \"{{ ctx().header }}\"\n  - plain: \"x\"\n";
    let mut run = Run::start(yaml, json!({"token": "hunter2-distinctive"}));
    let step_children: Vec<_> = run.created.clone();
    assert_eq!(step_children.len(), 1);
    let saved = run.machine.saved_json().to_string();
    assert!(!saved.contains("hunter2"), "{saved}");
    let launch_text = run.last_launch.as_ref().unwrap();
    assert!(!launch_text.contains("hunter2"), "{launch_text}");
    run.succeed("call", 0);
    let (status, result) = run.machine.outcome();
    assert_eq!(status, ExecutionStatus::Succeeded);
    assert!(!result.to_string().contains("hunter2"), "{result}");
    assert_eq!(result["output"]["plain"], json!("x"));
    assert_eq!(
        run.keyring
            .unseal(result["output"]["used"].as_str().unwrap())
            .unwrap(),
        json!("Bearer hunter2-distinctive")
    );
}

#[test]
fn a_loop_that_never_stops_is_failed_at_its_rounds_limit() {
    let yaml = "version: 1.0\nlimits: {rounds: 5}\ntasks:\n  first:\n    next: [{do: [again]}]\n  again:\n    action: t.work\n    input: {n: 1}\n    next:\n      - when: \"{{ succeeded() }}\"\n        do: [again]\n";
    let mut run = Run::start(yaml, json!({}));
    for _ in 0..10 {
        let Some((id, ..)) = run.created.last().cloned() else {
            break;
        };
        if run.machine.idle() {
            break;
        }
        run.end(id, ExecutionStatus::Succeeded, json!({}));
    }
    assert_eq!(run.count("again"), 5, "it ran exactly its 5 rounds");
    run.ended_failed_on("limits.rounds");
}

#[test]
fn a_workflow_stops_starting_tasks_at_its_executions_limit() {
    let yaml = "version: 1.0\nlimits: {executions: 4}\ntasks:\n  each:\n    action: t.work\n    with: {items: \"{{ range(10) | list }}\"}\n    input: {n: \"{{ item() }}\"}\n";
    let mut run = Run::start(yaml, json!({}));
    assert_eq!(run.count("each"), 4);
    for item in 0..4 {
        run.succeed("each", item);
    }
    run.ended_failed_on("limits.executions");
}

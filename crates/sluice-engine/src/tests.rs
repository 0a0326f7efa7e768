//! The actors together, in-process: action supervisors, their execution actors and a
//! workflow actor over the in-memory backend, with tokio's clock paused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::Actor;
use serde_json::Map;
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus};
use sluice_pack::Catalog;
use tokio_util::sync::CancellationToken;

use crate::context::ActorContext;
use crate::handles::{CancelOutcome, Directory, Pending, SupervisorHandle};
use crate::supervisor::{ActionSupervisor, SupervisorArgs};
use crate::testing::{Fake, until};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `t.work` (one at a time) and `t.wf`, a workflow running two items of `t.work` at once.
fn catalog() -> Catalog {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "t/pack.yaml", "ref: t\n");
    write(
        dir.path(),
        "t/actions/work.yaml",
        "name: work\nrunner_type: noop\nparameters:\n  n: {type: integer}\npolicy: {max_concurrent: 1}\n",
    );
    write(
        dir.path(),
        "t/actions/wf.yaml",
        "name: wf\nrunner_type: orquesta\nentry_point: workflows/wf.yaml\n",
    );
    write(
        dir.path(),
        "t/actions/workflows/wf.yaml",
        "version: 1.0\ntasks:\n  each:\n    action: t.work\n    with: {items: \"{{ range(2) | list }}\", concurrency: 2}\n    input: {n: \"{{ item() }}\"}\n",
    );
    sluice_pack::load_packs(&[dir.path().to_owned()]).unwrap()
}

struct World {
    fake: Arc<Fake>,
    directory: Arc<Directory>,
}

impl World {
    /// `name` keeps its actors' names apart from other tests' in ractor's process-wide
    /// registry.
    async fn start(name: &str) -> Self {
        let fake = Arc::new(Fake::default());
        let catalog = Arc::new(catalog());
        let directory = Arc::new(Directory::new(format!("test-{name}")));
        let ctx = Arc::new(ActorContext {
            directory: directory.clone(),
            catalog: tokio::sync::watch::channel(catalog.clone()).1,
            backend: fake.clone(),
            keyring: Arc::new(sluice_core::secrets::Keyring::ephemeral().unwrap()),
            kv: crate::testing::empty_datastore(),
            intake: CancellationToken::new(),
            action_api: None,
            partitions: None,
        });
        let mut supervisors = HashMap::new();
        for action in catalog.actions.values() {
            let args = SupervisorArgs {
                ctx: ctx.clone(),
                action: action.clone(),
            };
            let (actor, _) = Actor::spawn(None, ActionSupervisor, args).await.unwrap();
            supervisors.insert(action.action_ref.clone(), SupervisorHandle::new(actor));
        }
        directory.add_supervisors(supervisors);
        Self { fake, directory }
    }

    fn supervisor(&self, action: &str) -> SupervisorHandle {
        self.directory.supervisor(&action.parse().unwrap()).unwrap()
    }

    fn request(&self, id: i64, action: &str) {
        self.fake.set(id, ExecutionStatus::Requested);
        let action: ActionRef = action.parse().unwrap();
        self.supervisor(action.as_str()).enqueue(Pending::new(
            ExecutionId(id),
            1,
            Map::new(),
            Utc::now(),
            Default::default(),
        ));
    }
}

/// The fake's first child ids, in creation order.
const FIRST: i64 = 1_000_001;
const SECOND: i64 = 1_000_002;

#[tokio::test(start_paused = true)]
async fn a_task_of_a_cancelling_workflow_is_never_admitted_even_when_a_slot_frees_first() {
    let world = World::start("orphan").await;
    world.request(1, "t.wf");
    until("one item handed off, the other queued", || {
        world.fake.run_ids() == [FIRST]
            && world.fake.status(SECOND) == Some(ExecutionStatus::Requested)
    })
    .await;
    world.fake.set(FIRST, ExecutionStatus::Running);
    world
        .supervisor("t.work")
        .running(ExecutionId(FIRST), "w1".into());

    // The cancel arrives, and the running item's worker ends it before the workflow has
    // cancelled the queued one: its slot frees first.
    let workflow = world.directory.workflow(ExecutionId(1)).unwrap();
    assert!(workflow.cancel());
    world.fake.set(FIRST, ExecutionStatus::Cancelled);
    world.supervisor("t.work").finished(ExecutionId(FIRST));

    until("the workflow ended", || {
        world
            .fake
            .status(1)
            .is_some_and(ExecutionStatus::is_terminal)
    })
    .await;
    assert_eq!(world.fake.status(1), Some(ExecutionStatus::Cancelled));
    assert_eq!(world.fake.status(SECOND), Some(ExecutionStatus::Cancelled));
    assert_eq!(world.fake.run_ids(), [FIRST], "the queued item never ran");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(world.fake.run_ids(), [FIRST]);
}

#[tokio::test(start_paused = true)]
async fn a_workflow_runs_its_items_through_their_action_s_gate_and_finishes() {
    let world = World::start("items").await;
    world.request(1, "t.wf");
    until("the first item handed off", || {
        world.fake.run_ids() == [FIRST]
    })
    .await;
    assert_eq!(
        world
            .supervisor("t.work")
            .stats(false)
            .await
            .unwrap()
            .queue_length,
        1,
        "the second waits for t.work's one slot"
    );
    for id in [FIRST, SECOND] {
        until("handed off", || world.fake.run_ids().contains(&id)).await;
        world.fake.set(id, ExecutionStatus::Succeeded);
        world.supervisor("t.work").finished(ExecutionId(id));
    }
    until("the workflow succeeded", || {
        world.fake.status(1) == Some(ExecutionStatus::Succeeded)
    })
    .await;
    assert_eq!(world.fake.run_ids(), [FIRST, SECOND]);
    assert_eq!(
        world.supervisor("t.wf").cancel(ExecutionId(1)).await,
        CancelOutcome::NotHere,
        "an ended workflow holds no slot"
    );
}

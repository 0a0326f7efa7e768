//! Two engines active at once, each owning one of two partitions of the actions, over one
//! nats-server and one SQLite file, with a worker process. Triggers are taken by one engine
//! and fire rules for actions of both partitions; an API submission is made on the engine
//! that does not own its action; a workflow on one engine runs its tasks on the other. Then
//! one engine stops mid-run and another takes its partition over. Each test counts from the
//! actions' own log and the store: every execution ran once, each action admitted in
//! request order, no action ran more at once than its `max_concurrent`, and each action's
//! supervisor lived on its partition's owner only.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, json};
use sluice_core::partition::partition_of;
use sluice_core::{ActionRef, ExecutionStatus};
use sluice_engine::{Engine, EngineConfig, Partitioned};
use sluice_store::{ExecutionFilter, Fence, Store};
use sluice_testkit::{NatsServer, eventually};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const PARTITIONS: u32 = 2;

/// Two action names of pack `t`, the first in partition 0, the second in partition 1.
fn one_per_partition() -> [String; 2] {
    let names = [
        "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    let of = |n: &&str| partition_of(&format!("t.{n}").parse().unwrap(), PARTITIONS);
    let first = |p| names.iter().find(|n| of(n) == p).unwrap().to_string();
    [first(0), first(1)]
}

/// A workflow name of pack `t` in `partition`, other than `taken`.
fn workflow_in(partition: u32, taken: &[String]) -> String {
    (0..)
        .map(|i| format!("flow{i}"))
        .find(|n| {
            !taken.contains(n)
                && partition_of(&format!("t.{n}").parse().unwrap(), PARTITIONS) == partition
        })
        .unwrap()
}

/// Pack `t`: actions `x` (partition 0) and `y` (partition 1), each `max_concurrent: 1`, run
/// by a script that logs `start|end <action> <execution> <attempt> <n> <ns>` around a short
/// sleep; a rule from `t.tick` to each; and workflow `flow` (partition 0) running three
/// items of `y`.
fn write_pack(dir: &Path, x: &str, y: &str, flow: &str) {
    let action = |name: &str| {
        format!(
            "name: {name}\nrunner_type: local-shell-script\nentry_point: work.sh\nparameters:\n  n: {{type: integer, required: true}}\npolicy:\n  max_concurrent: 1\n"
        )
    };
    let rule = |name: &str| {
        format!(
            "name: to_{name}\ntrigger:\n  type: t.tick\naction:\n  ref: t.{name}\n  parameters:\n    n: \"{{{{ trigger.n }}}}\"\n"
        )
    };
    let files = [
        ("pack.yaml", "ref: t\n".to_owned()),
        (
            "actions/work.sh",
            format!(
                "#!/bin/sh\nlog={}\nline=\"$SLUICE_ACTION $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $SLUICE_PARAM_N\"\necho \"start $line $(date +%s%N)\" >> \"$log\"\nsleep 0.05\necho \"end $line $(date +%s%N)\" >> \"$log\"\n",
                dir.join("work.log").display()
            ),
        ),
        (&format!("actions/{x}.yaml"), action(x)),
        (&format!("actions/{y}.yaml"), action(y)),
        (
            &format!("actions/{flow}.yaml"),
            format!("name: {flow}\nrunner_type: orquesta\nentry_point: workflows/{flow}.yaml\n"),
        ),
        (
            &format!("actions/workflows/{flow}.yaml"),
            format!(
                "version: 1.0\ntasks:\n  each:\n    action: t.{y}\n    with: {{items: \"{{{{ range(3) | list }}}}\", concurrency: 2}}\n    input: {{n: \"{{{{ 1000 + item() }}}}\"}}\n"
            ),
        ),
        (
            "triggers/tick.yaml",
            "name: tick\npayload_schema:\n  type: object\n  required: [n]\n  properties:\n    n: {type: integer}\n".to_owned(),
        ),
        (&format!("rules/{x}.yaml"), rule(x)),
        (&format!("rules/{y}.yaml"), rule(y)),
    ];
    for (rel, text) in files {
        let path = dir.join("packs/t").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

struct World {
    dir: tempfile::TempDir,
    nats: NatsServer,
    store: Store,
    x: String,
    y: String,
    flow: String,
    worker: Option<Child>,
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let [x, y] = one_per_partition();
        let flow = workflow_in(0, &[x.clone(), y.clone()]);
        write_pack(dir.path(), &x, &y, &flow);
        let nats = NatsServer::start();
        let store = Store::connect(&dir.path().join("sluice.db").display().to_string())
            .await
            .unwrap();
        let world = Self {
            dir,
            nats,
            store,
            x,
            y,
            flow,
            worker: None,
        };
        // The keys every engine shares; the worker verifies run messages with the public half.
        sluice_bus::RunSigner::load_or_create(&world.path("run-signing.key")).unwrap();
        sluice_core::secrets::Keyring::load_or_create(&world.path("secrets.key")).unwrap();
        world
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts the worker process, once an engine has set up the streams.
    fn start_worker(&mut self) {
        let log = std::fs::File::create(self.path("worker.log")).unwrap();
        let child = Command::new(SLUICE)
            .args(["worker", "--worker-name", "w1", "--capacity", "4"])
            .args(["--heartbeat-interval", "0.2"])
            .arg("--nats-url")
            .arg(self.nats.url())
            .arg("--data-dir")
            .arg(self.path("w1"))
            .arg("--packs")
            .arg(self.path("packs"))
            .arg("--run-verify-key")
            .arg(self.path("run-signing.pub"))
            .arg("--secrets-key")
            .arg(self.path("secrets.key"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.worker = Some(child);
    }

    /// An engine named `name` owning `partitions`, each under fence token `token`; with
    /// `ingest`, it also takes the triggers.
    async fn engine(&self, name: &str, partitions: &[u32], token: i64, ingest: bool) -> Engine {
        let mut held = BTreeMap::new();
        for p in partitions {
            let fence = format!("partition.{p}");
            assert!(
                self.store.raise_fence(&fence, token, name).await.unwrap(),
                "{name} raised the fence of partition {p} to {token}"
            );
            held.insert(*p, Fence { name: fence, token });
        }
        let catalog = sluice_pack::load_packs(&[self.path("packs")]).unwrap();
        Engine::start(EngineConfig {
            name: name.into(),
            catalog: Arc::new(catalog),
            packs: Default::default(),
            store: self.store.clone(),
            bus: sluice_bus::Bus::connect(&self.nats.url(), name)
                .await
                .unwrap(),
            run_signer: Arc::new(
                sluice_bus::RunSigner::load_or_create(&self.path("run-signing.key")).unwrap(),
            ),
            keyring: Arc::new(
                sluice_core::secrets::Keyring::load_or_create(&self.path("secrets.key")).unwrap(),
            ),
            ingest_triggers: ingest,
            worker_loss_window: Duration::from_secs(10),
            api_url: None,
            partitions: Some(Partitioned {
                engine: name.into(),
                lease_ttl: Duration::from_secs(3),
                count: PARTITIONS,
                held,
            }),
        })
        .await
        .unwrap()
    }

    fn action(&self, name: &str) -> ActionRef {
        format!("t.{name}").parse().unwrap()
    }

    async fn tick(&self, engine: &Engine, n: u64) {
        let payload = serde_json::to_vec(&json!({ "n": n })).unwrap();
        engine
            .publish_trigger("t.tick", payload, Some(&format!("tick-{n}")))
            .await
            .unwrap();
    }

    async fn executions(&self) -> Vec<sluice_store::Execution> {
        let filter = ExecutionFilter {
            limit: Some(1000),
            ..Default::default()
        };
        self.store.list_executions(&filter).await.unwrap()
    }

    /// Waits until `count` executions exist and every one of them has ended; if they do not
    /// within a minute, fails with what the store and the worker say.
    async fn all_ended(&self, count: usize) -> Vec<sluice_store::Execution> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.executions().await;
            if all.len() == count && all.iter().all(|e| e.status.is_terminal()) {
                return all;
            }
            if std::time::Instant::now() > deadline {
                let states: Vec<String> = all
                    .iter()
                    .map(|e| format!("{} {} {}", e.id, e.action, e.status))
                    .collect();
                panic!(
                    "{count} executions did not all end within a minute; the store holds {}:\n{}\nworker log:\n{}",
                    all.len(),
                    states.join("\n"),
                    std::fs::read_to_string(self.path("worker.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The actions' own log: per line, `(start?, action, execution, attempt, n, ns)`.
    fn log(&self) -> Vec<(bool, String, i64, u32, i64, u128)> {
        let text = std::fs::read_to_string(self.path("work.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (
                    f[0] == "start",
                    f[1].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                )
            })
            .collect()
    }

    /// Checks what the actions logged: each execution ran once, with one start and one end;
    /// each action's runs never overlapped (`max_concurrent: 1`); and each action started
    /// its trigger-made executions (`n` below 1000) in request order.
    fn check_runs(&self, executions: &[sluice_store::Execution]) {
        let log = self.log();
        let mut starts: HashMap<i64, usize> = HashMap::new();
        let mut ends: HashMap<i64, usize> = HashMap::new();
        for (start, _, id, _, _, _) in &log {
            *(if *start { &mut starts } else { &mut ends })
                .entry(*id)
                .or_default() += 1;
        }
        let ran: Vec<_> = executions
            .iter()
            .filter(|e| e.action.name() != self.flow)
            .collect();
        for e in &ran {
            assert_eq!(
                (starts.get(&e.id.0), ends.get(&e.id.0)),
                (Some(&1), Some(&1)),
                "execution {} ({}) ran exactly once",
                e.id,
                e.action
            );
        }
        assert_eq!(
            starts.len(),
            ran.len(),
            "nothing ran that the store does not hold"
        );
        for action in [&self.x, &self.y] {
            let full = format!("t.{action}");
            let mut running = 0;
            let mut order = Vec::new();
            for (start, a, id, _, n, _) in &log {
                if a != &full {
                    continue;
                }
                running += if *start { 1 } else { -1 };
                assert!(running <= 1, "{full} never ran two at once");
                if *start && *n < 1000 {
                    order.push(*id);
                }
            }
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                order, sorted,
                "{full} started its executions in request order"
            );
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

/// Each engine holds the supervisors of its own partition's actions only, and requests,
/// completions and a workflow's tasks cross between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_each_own_their_partition_and_run_everything_once() {
    let mut world = World::start().await;
    let (x, y) = (world.action(&world.x), world.action(&world.y));
    let a = world.engine("pa", &[0], 1, true).await;
    let b = world.engine("pb", &[1], 1, false).await;
    world.start_worker();

    assert!(a.queue_stats(x.as_str()).await.is_some(), "a owns {x}");
    assert!(
        a.queue_stats(y.as_str()).await.is_none(),
        "a has no supervisor of {y}"
    );
    assert!(b.queue_stats(y.as_str()).await.is_some(), "b owns {y}");
    assert!(
        b.queue_stats(x.as_str()).await.is_none(),
        "b has no supervisor of {x}"
    );

    const TICKS: u64 = 20;
    for n in 0..TICKS {
        world.tick(&a, n).await;
    }
    // Submitted on the engine that does not own the action: stored there, run by the owner.
    let submitted = b
        .submit(x.as_str(), Map::from_iter([("n".into(), json!(2000))]))
        .await
        .unwrap();
    let flow = a
        .submit(&format!("t.{}", world.flow), Map::new())
        .await
        .unwrap();

    // Two executions a tick, the submission, the workflow and its three tasks.
    let all = world.all_ended(TICKS as usize * 2 + 5).await;
    for e in &all {
        assert_eq!(
            e.status,
            ExecutionStatus::Succeeded,
            "execution {} ({}) succeeded: {:?}",
            e.id,
            e.action,
            e.result
        );
    }
    let children = all.iter().filter(|e| e.parent_id == Some(flow)).count();
    assert_eq!(
        children, 3,
        "the workflow's three tasks ran on the other engine"
    );
    assert!(all.iter().any(|e| e.id == submitted && e.action == x));
    world.check_runs(&all);

    // Each completion freed its slot on the engine that owns the action.
    for (engine, action) in [(&a, &x), (&b, &y)] {
        let stats = engine.queue_stats(action.as_str()).await.unwrap();
        assert_eq!(
            (stats.active_count, stats.queue_length),
            (0, 0),
            "{action}'s supervisor holds nothing once all ended"
        );
        assert!(
            stats.total_completed > 0,
            "{action}'s completions reached its owner"
        );
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// An engine that stops mid-run leaves its partition's queue in the store; the engine that
/// takes the partition over, under a newer fence, rebuilds it and runs each execution once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_taken_over_mid_run_loses_and_doubles_nothing() {
    let mut world = World::start().await;
    let y = world.action(&world.y);
    let a = world.engine("qa", &[0], 1, true).await;
    let b = world.engine("qb", &[1], 1, false).await;
    world.start_worker();

    const TICKS: u64 = 30;
    for n in 0..TICKS {
        world.tick(&a, n).await;
    }
    // A few of y's executions have run: b stops without draining, the rest still queued.
    eventually(
        "some of y's executions ran",
        Duration::from_secs(30),
        || async {
            let ran = world
                .log()
                .iter()
                .filter(|l| !l.0 && l.1 == y.as_str())
                .count();
            (ran >= 3).then_some(())
        },
    )
    .await;
    b.shutdown(Duration::ZERO).await;
    // The old owner's fence is raised: whatever it still holds can write nothing more.
    let successor = world.engine("qc", &[1], 2, false).await;
    let stale = world
        .store
        .clone()
        .fenced(Fence {
            name: "partition.1".into(),
            token: 1,
        })
        .fail_before_handoff(sluice_core::ExecutionId(1), "stale")
        .await;
    assert!(stale.is_err(), "a write under the old fence is refused");

    let all = world.all_ended(TICKS as usize * 2).await;
    for e in &all {
        assert_eq!(
            e.status,
            ExecutionStatus::Succeeded,
            "execution {} succeeded",
            e.id
        );
    }
    world.check_runs(&all);
    a.shutdown(Duration::from_secs(5)).await;
    successor.shutdown(Duration::from_secs(5)).await;
}

//! Workflows with real processes: one `sluice engine`, three `sluice worker` processes and
//! a nats-server. Each action writes a line to a log file when it runs, so "ran once" is
//! read from what the workers did, not from what the engine believes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use serde_json::{Value, json};

const PACK: &[(&str, &str)] = &[
    ("pack.yaml", "ref: t\n"),
    (
        "actions/item.yaml",
        "name: item\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'echo \"item $SLUICE_PARAM_TAG $SLUICE_PARAM_N\" >> \"$SLUICE_PARAM_LOG\"; sleep \"$SLUICE_PARAM_SECONDS\"'}\n  log: {type: string, required: true}\n  tag: {type: integer, required: true}\n  n: {type: integer, required: true}\n  seconds: {type: number, default: 0.05}\n",
    ),
    (
        "actions/after.yaml",
        "name: after\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'echo \"after $SLUICE_PARAM_TAG\" >> \"$SLUICE_PARAM_LOG\"'}\n  log: {type: string, required: true}\n  tag: {type: integer, required: true}\n",
    ),
    (
        "actions/fanout.yaml",
        "name: fanout\nrunner_type: orquesta\nentry_point: workflows/fanout.yaml\nparameters:\n  log: {type: string, required: true}\n  tag: {type: integer, required: true}\n  items: {type: integer, default: 5}\n  seconds: {type: number, default: 0.05}\n",
    ),
    (
        "actions/workflows/fanout.yaml",
        r#"version: 1.0
input: [log, tag, items, seconds]
tasks:
  each:
    action: t.item
    with: {items: "{{ range(ctx().items) | list }}", concurrency: 3}
    input: {log: "{{ ctx().log }}", tag: "{{ ctx().tag }}", n: "{{ item() }}", seconds: "{{ ctx().seconds }}"}
    next:
      - when: "{{ succeeded() }}"
        do: [after]
  after:
    action: t.after
    input: {log: "{{ ctx().log }}", tag: "{{ ctx().tag }}"}
output:
  - items: "{{ task('each').result | length }}"
"#,
    ),
];

/// How many times each log line was written.
fn lines(log: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

/// Every line expected once for workflows `0..workflows` of `items` items each.
fn expected(workflows: i64, items: i64) -> BTreeMap<String, usize> {
    let mut expected = BTreeMap::new();
    for tag in 0..workflows {
        for n in 0..items {
            expected.insert(format!("item {tag} {n}"), 1);
        }
        expected.insert(format!("after {tag}"), 1);
    }
    expected
}

async fn children(cluster: &Cluster, id: i64) -> Vec<Value> {
    cluster.client().children(id).await
}

/// The seed race: items that finish at the same instant on three workers. Their ends
/// reach the workflow's one actor one after the other, so the successor starts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_successor_of_items_finishing_together_runs_once_in_200_workflows() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    for name in ["w1", "w2", "w3"] {
        cluster.start_worker(name, 4);
    }
    let log = cluster.log();
    let mut ids = Vec::new();
    for tag in 0..200 {
        ids.push(
            cluster
                .submit(
                    "t.fanout",
                    json!({ "log": log, "tag": tag, "seconds": 0.05 }),
                )
                .await,
        );
    }
    let workflows = cluster
        .wait_all("t.fanout", 200, "succeeded", Duration::from_secs(240))
        .await;
    assert!(
        workflows
            .iter()
            .all(|w| w["result"]["output"]["items"] == 5)
    );
    assert_eq!(
        lines(&log),
        expected(200, 5),
        "some action ran twice or never"
    );
    for id in ids {
        let kids = children(&cluster, id).await;
        let after = kids.iter().filter(|c| c["action"] == "t.after").count();
        assert_eq!(
            after, 1,
            "workflow {id} started its successor {after} times"
        );
        assert_eq!(kids.len(), 6, "workflow {id}: {kids:?}");
    }
    // Items of one workflow did finish together on different workers.
    let items = cluster
        .wait_all("t.item", 1000, "succeeded", Duration::from_secs(10))
        .await;
    let workers: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|e| e["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
}

/// The engine killed with workflows in flight, and started again: every workflow
/// completes, and no task item and no successor runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_workflow_resumes_and_runs_no_task_twice() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    for name in ["w1", "w2"] {
        cluster.start_worker(name, 4);
    }
    let log = cluster.log();
    for tag in 0..20 {
        cluster
            .submit(
                "t.fanout",
                json!({ "log": log, "tag": tag, "items": 6, "seconds": 0.3 }),
            )
            .await;
    }
    // Kill it while items run and more wait.
    sluice_testkit::eventually("items running", Duration::from_secs(30), || async {
        (lines(&log).values().sum::<usize>() >= 10).then_some(())
    })
    .await;
    cluster.kill_engine();
    let ran_before = lines(&log).values().sum::<usize>();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_engine().await;
    cluster
        .wait_all("t.fanout", 20, "succeeded", Duration::from_secs(120))
        .await;
    let counts = lines(&log);
    assert_eq!(counts, expected(20, 6), "some action ran twice or never");
    assert!(
        ran_before < counts.values().sum::<usize>(),
        "the kill came before the end: {ran_before} lines before it"
    );
    let ledger = cluster.get("/api/v1/ledger").await;
    assert_eq!(ledger["unfinished"], 0, "{ledger}");
    assert_eq!(
        ledger["ended_other_than_once"],
        json!([]),
        "every execution ended exactly once: {ledger}"
    );
}

//! The admission gate, proven with real processes: one `sluice engine`, several
//! `sluice worker` processes, a real nats-server. Actions log their own start and finish
//! times (nanoseconds) to a file, so overlaps and order are read from what workers did.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::books;
use common::cluster::Cluster;
use serde_json::{Value, json};

const PACK: &[(&str, &str)] = &[
    ("pack.yaml", "ref: t\n"),
    (
        "actions/step.sh",
        "#!/bin/sh\necho \"start $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $(date +%s%N) $SLUICE_PARAM_KEY\" >> \"$SLUICE_PARAM_LOG\"\nsleep \"$SLUICE_PARAM_SECONDS\"\necho \"end $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $(date +%s%N) $SLUICE_PARAM_KEY\" >> \"$SLUICE_PARAM_LOG\"\n",
    ),
    (
        "actions/limited.yaml",
        "name: limited\nrunner_type: local-shell-script\nentry_point: step.sh\nparameters:\n  log: {type: string, required: true}\n  seconds: {type: number, default: 0.003}\n  key: {type: string, default: none}\npolicy:\n  max_concurrent: 3\n",
    ),
    (
        "actions/single.yaml",
        "name: single\nrunner_type: local-shell-script\nentry_point: step.sh\nparameters:\n  log: {type: string, required: true}\n  seconds: {type: number, default: 0.005}\n  key: {type: string, default: none}\npolicy:\n  max_concurrent: 1\n",
    ),
    (
        "actions/keyed.yaml",
        "name: keyed\nrunner_type: local-shell-script\nentry_point: step.sh\nparameters:\n  log: {type: string, required: true}\n  seconds: {type: number, default: 0.3}\n  key: {type: string, required: true}\npolicy:\n  max_concurrent: 1\n  concurrency_key: [key]\n",
    ),
    (
        "actions/long.yaml",
        "name: long\nrunner_type: local-shell-script\nentry_point: step.sh\nparameters:\n  log: {type: string, required: true}\n  seconds: {type: number, default: 60}\n  key: {type: string, default: none}\npolicy:\n  max_concurrent: 2\n",
    ),
    (
        "actions/retried.sh",
        "#!/bin/sh\necho \"start $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $(date +%s%N) -\" >> \"$SLUICE_PARAM_LOG\"\n[ \"$SLUICE_ATTEMPT\" = 1 ] && sleep 60\necho \"end $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $(date +%s%N) -\" >> \"$SLUICE_PARAM_LOG\"\n",
    ),
    (
        "actions/retried.yaml",
        "name: retried\nrunner_type: local-shell-script\nentry_point: retried.sh\nparameters:\n  log: {type: string, required: true}\npolicy:\n  max_concurrent: 2\n  retry_on_worker_loss: true\n",
    ),
    (
        "actions/paced.yaml",
        "name: paced\nrunner_type: noop\npolicy:\n  rate_limit: {count: 10, per_seconds: 1}\n",
    ),
];

#[derive(Debug, Clone)]
struct Event {
    start: bool,
    id: i64,
    attempt: u32,
    at: u128,
    key: String,
}

fn read_log(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            Event {
                start: parts[0] == "start",
                id: parts[1].parse().unwrap(),
                attempt: parts[2].parse().unwrap(),
                at: parts[3].parse().unwrap(),
                key: parts.get(4).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// The most executions running at once, from their own start and finish times.
fn max_overlap(events: &[Event]) -> usize {
    let mut points: Vec<(u128, i32)> = events
        .iter()
        .map(|e| (e.at, if e.start { 1 } else { -1 }))
        .collect();
    // At a tie, count the finish first: it happened no later than the start.
    points.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, delta) in points {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

fn starts_per_execution(events: &[Event]) -> BTreeMap<i64, usize> {
    let mut starts = BTreeMap::new();
    for e in events.iter().filter(|e| e.start) {
        *starts.entry(e.id).or_default() += 1;
    }
    starts
}

fn admitted_at(execution: &Value) -> String {
    let history = execution["history"].as_array().unwrap();
    history
        .iter()
        .find(|h| h["status"] == "scheduling")
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_executions_through_max_concurrent_3_on_3_workers() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    for name in ["w1", "w2", "w3"] {
        cluster.start_worker(name, 4);
    }
    let log = cluster.log();
    let mut ids = Vec::new();
    for _ in 0..1000 {
        ids.push(cluster.submit("t.limited", json!({ "log": log })).await);
    }
    let executions = cluster
        .wait_all("t.limited", 1000, "succeeded", Duration::from_secs(240))
        .await;
    let executions = cluster.full(&executions).await;

    let events = read_log(&log);
    let starts = starts_per_execution(&events);
    assert_eq!(starts.len(), 1000, "every execution ran");
    assert!(starts.values().all(|&n| n == 1), "an execution ran twice");
    let overlap = max_overlap(&events);
    assert!(overlap <= 3, "{overlap} ran at once with max_concurrent: 3");
    assert_eq!(overlap, 3, "the limit is used, not just respected");

    // Admission order is request order, exactly.
    let mut by_admission: Vec<(String, i64)> = executions
        .iter()
        .map(|e| (admitted_at(e), e["id"].as_i64().unwrap()))
        .collect();
    by_admission.sort();
    assert_eq!(
        by_admission.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        ids,
        "admitted out of request order"
    );
    // On the workers, no process starts before the gate admitted its execution. (Three in
    // flight together may begin in any order among themselves: the order that is guaranteed
    // is admission; start order is strict at max_concurrent: 1, tested below.)
    let admitted: HashMap<i64, u128> = by_admission
        .iter()
        .map(|(at, id)| {
            let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
            (*id, at.timestamp_nanos_opt().unwrap() as u128)
        })
        .collect();
    for start in events.iter().filter(|e| e.start) {
        assert!(
            start.at >= admitted[&start.id],
            "execution {} started before it was admitted",
            start.id
        );
    }

    // Exactly one completion per execution reached the STATUS stream; workers shared the work.
    let js = async_nats::jetstream::new(async_nats::connect(cluster.nats.url()).await.unwrap());
    let mut status = js.get_stream("STATUS").await.unwrap();
    assert_eq!(
        status.info().await.unwrap().state.messages,
        2000,
        "one running report and one completion each"
    );
    let workers: std::collections::BTreeSet<&str> = executions
        .iter()
        .map(|e| e["worker"].as_str().unwrap())
        .collect();
    assert_eq!(
        workers.len(),
        3,
        "all three workers ran executions: {workers:?}"
    );
    let stats = cluster.get("/api/v1/actions/t.limited/queue-stats").await;
    assert_eq!(
        (
            stats["active_count"].as_u64(),
            stats["queue_length"].as_u64()
        ),
        (Some(0), Some(0)),
        "{stats}"
    );
    assert_eq!(
        (
            stats["total_enqueued"].as_u64(),
            stats["total_completed"].as_u64()
        ),
        (Some(1000), Some(1000)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_run_in_parallel_each_in_its_own_order() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w1", 8);
    let log = cluster.log();
    for n in 0..4 {
        for key in ["a", "b"] {
            cluster
                .submit(
                    "t.keyed",
                    json!({ "log": log, "key": key, "seconds": 0.2 + f64::from(n) * 0.0 }),
                )
                .await;
        }
    }
    let stats = cluster.get("/api/v1/actions/t.keyed/queue-stats").await;
    let keys = stats["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{stats}");
    assert!(
        keys.iter()
            .all(|k| k["active_count"].as_u64().unwrap() <= 1),
        "{stats}"
    );

    cluster
        .wait_all("t.keyed", 8, "succeeded", Duration::from_secs(60))
        .await;
    let events = read_log(&log);
    for key in ["a", "b"] {
        let own: Vec<Event> = events.iter().filter(|e| e.key == key).cloned().collect();
        assert_eq!(max_overlap(&own), 1, "key {key} ran two at once");
        let mut starts: Vec<&Event> = own.iter().filter(|e| e.start).collect();
        starts.sort_by_key(|e| e.at);
        let order: Vec<i64> = starts.iter().map(|e| e.id).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "key {key} ran out of order");
    }
    assert_eq!(max_overlap(&events), 2, "the two keys ran in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_with_500_queued_runs_them_all_once_in_order_after_restart() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w1", 4);
    let log = cluster.log();
    let mut ids = Vec::new();
    for _ in 0..500 {
        ids.push(cluster.submit("t.single", json!({ "log": log })).await);
    }
    // Let some run, then kill the engine mid-queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while starts_per_execution(&read_log(&log)).len() < 20 {
        assert!(Instant::now() < deadline, "nothing ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_engine();
    let ran_before = starts_per_execution(&read_log(&log)).len();
    assert!(
        ran_before < 500,
        "all ran before the kill; the test proves nothing"
    );
    cluster.start_engine().await;
    cluster
        .wait_all("t.single", 500, "succeeded", Duration::from_secs(180))
        .await;

    let events = read_log(&log);
    let starts = starts_per_execution(&events);
    assert_eq!(starts.len(), 500);
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert_eq!(max_overlap(&events), 1);
    let mut by_start: Vec<&Event> = events.iter().filter(|e| e.start).collect();
    by_start.sort_by_key(|e| e.at);
    assert_eq!(
        by_start.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids,
        "not in request order across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_executions_are_abandoned_or_retried_elsewhere() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("doomed", 4);
    let log = cluster.log();
    let long: Vec<i64> =
        futures::future::join_all((0..2).map(|_| cluster.submit("t.long", json!({ "log": log }))))
            .await;
    let retried: Vec<i64> = futures::future::join_all(
        (0..2).map(|_| cluster.submit("t.retried", json!({ "log": log }))),
    )
    .await;
    let queued = cluster
        .submit("t.long", json!({ "log": log, "seconds": 0.01 }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while starts_per_execution(&read_log(&log)).len() < 4 {
        assert!(Instant::now() < deadline, "the executions did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in long.iter().chain(&retried) {
        assert_eq!(cluster.execution(*id).await["status"], "running");
    }
    assert_eq!(
        cluster.execution(queued).await["status"],
        "requested",
        "max_concurrent: 2 holds it back"
    );

    let killed_at = Instant::now();
    cluster.kill_worker("doomed");
    cluster.start_worker("rescuer", 4);
    for id in &long {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let e = cluster.execution(*id).await;
            if e["status"] == "abandoned" {
                assert!(
                    e["result"]["error"].as_str().unwrap().contains("doomed"),
                    "{e}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "not abandoned: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let noticed = killed_at.elapsed();
    assert!(
        noticed < Duration::from_secs(10),
        "a 2 s window took {noticed:?}"
    );
    // The queue moved on: the held-back execution ran on the new worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = cluster.execution(queued).await;
        if e["status"] == "succeeded" {
            assert_eq!(e["worker"], "worker/rescuer");
            break;
        }
        assert!(Instant::now() < deadline, "the queue did not move on: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &retried {
        let deadline = Instant::now() + Duration::from_secs(30);
        let e = loop {
            let e = cluster.execution(*id).await;
            if e["status"] == "succeeded" {
                break e;
            }
            assert!(Instant::now() < deadline, "not retried: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (e["attempt"].as_u64(), e["worker"].as_str()),
            (Some(2), Some("worker/rescuer")),
            "{e}"
        );
    }
    // Nothing else ran twice: each retried execution started once per attempt, the rest once.
    let events = read_log(&log);
    for e in events.iter().filter(|e| e.start) {
        let same = events
            .iter()
            .filter(|o| o.start && o.id == e.id && o.attempt == e.attempt)
            .count();
        assert_eq!(
            same, 1,
            "execution {} attempt {} started {same} times",
            e.id, e.attempt
        );
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.start && long.contains(&e.id))
            .count(),
        2,
        "abandoned executions never ran again"
    );
    let books = books::balance(
        &cluster.http,
        &cluster.api(),
        &cluster.nats.url(),
        5,
        &["t.long", "t.retried"],
    )
    .await;
    assert_eq!((books.count("abandoned"), books.count("succeeded")), (2, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_admissions_and_rejects_nothing() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w1", 16);
    for _ in 0..50 {
        cluster.submit("t.paced", json!({})).await;
    }
    let executions = cluster
        .wait_all("t.paced", 50, "succeeded", Duration::from_secs(60))
        .await;
    let executions = cluster.full(&executions).await;
    let mut admitted: Vec<chrono::DateTime<chrono::Utc>> = executions
        .iter()
        .map(|e| admitted_at(e).parse().unwrap())
        .collect();
    admitted.sort();
    let span = (admitted[49] - admitted[0]).as_seconds_f64();
    assert!(span >= 4.0, "50 admissions at 10/s took {span:.2}s");
    for window in admitted.windows(11) {
        let within = (window[10] - window[0]).as_seconds_f64();
        // Timestamps are taken as the admissions are written; allow for that jitter.
        assert!(within >= 0.95, "11 admissions within {within:.3}s");
    }
}

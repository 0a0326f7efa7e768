//! Exactly once under faults. Each test breaks something real — kills a process with
//! SIGKILL, restarts nats-server, stops PostgreSQL, feeds poison — and closes the books:
//! executions lost = 0, executions run twice = 0, completions counted twice = 0, no queue
//! slot leaked (see `common/books.rs`).
//!
//! The `t.record` action appends `<execution id> <attempt> <n>` to `runs.log` in its pack
//! each time it runs, so "ran once" is read from what the actions did.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::books::{self, events_recorded, metric, series, wait_settled};
use common::cluster::Cluster;
use common::{Sluice, StoreKind, is_terminal, statuses, test_pack};
use serde_json::{Value, json};
use sluice_testkit::eventually;

const PACK: &[(&str, &str)] = &[
    ("pack.yaml", "ref: t\n"),
    (
        "actions/record.sh",
        "#!/bin/sh\necho \"$SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $SLUICE_PARAM_N\" >> \"$(dirname \"$0\")/../runs.log\"\n",
    ),
    (
        "actions/record.yaml",
        "name: record\nrunner_type: local-shell-script\nentry_point: record.sh\nparameters:\n  n: {type: integer, required: true}\npolicy:\n  max_concurrent: 8\n",
    ),
    (
        "actions/slow.sh",
        "#!/bin/sh\nlog=\"$(dirname \"$0\")/../slow.log\"\necho \"start $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT\" >> \"$log\"\nsleep 3\necho \"end $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT\" >> \"$log\"\n",
    ),
    (
        "actions/slow.yaml",
        "name: slow\nrunner_type: local-shell-script\nentry_point: slow.sh\npolicy:\n  max_concurrent: 4\n  retry_on_worker_loss: true\n",
    ),
    (
        "actions/pause.yaml",
        "name: pause\nrunner_type: local-shell-script\nentry_point: slow.sh\n",
    ),
    (
        "triggers/tick.yaml",
        "name: tick\npayload_schema:\n  type: object\n  required: [n]\n  properties:\n    n: {type: integer}\n",
    ),
    (
        "rules/on_tick.yaml",
        "name: on_tick\ntrigger:\n  type: t.tick\naction:\n  ref: t.record\n  parameters:\n    n: \"{{ trigger.n }}\"\n",
    ),
];

/// [`PACK`] for an engine in this process. Its worker runs the pack version it fetched, from
/// its own cache, so the scripts log to the pack's source directory by its absolute path.
fn logging_pack() -> tempfile::TempDir {
    let pack = test_pack(&PACK[1..]);
    let dir = pack.path().join("t");
    for script in ["actions/record.sh", "actions/slow.sh"] {
        let path = dir.join(script);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("$(dirname \"$0\")/..", &dir.display().to_string());
        std::fs::write(&path, text).unwrap();
    }
    pack
}

/// `runs.log`: how many times each execution ran, and each tick number's runs.
struct Runs {
    per_execution: BTreeMap<i64, usize>,
    per_tick: BTreeMap<u64, usize>,
}

impl Runs {
    fn read(log: &Path) -> Self {
        let mut runs = Runs {
            per_execution: BTreeMap::new(),
            per_tick: BTreeMap::new(),
        };
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            *runs
                .per_execution
                .entry(parts[0].parse().unwrap())
                .or_default() += 1;
            *runs.per_tick.entry(parts[2].parse().unwrap()).or_default() += 1;
        }
        runs
    }

    /// Asserts every one of `count` ticks ran exactly once.
    fn assert_each_once(&self, count: u64) {
        let twice: Vec<_> = self.per_execution.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "executions run twice: {twice:?}");
        let ticks_twice: Vec<_> = self.per_tick.iter().filter(|(_, n)| **n > 1).collect();
        assert!(ticks_twice.is_empty(), "ticks run twice: {ticks_twice:?}");
        let missing: Vec<u64> = (0..count)
            .filter(|n| !self.per_tick.contains_key(n))
            .collect();
        assert!(missing.is_empty(), "ticks never run: {missing:?}");
        assert_eq!(self.per_execution.len() as u64, count);
    }
}

/// Publishes ticks `range` to TRIGGERS with `Nats-Msg-Id: tick-<n>`, 256 in flight at a
/// time; a publish that fails (the server is down) is sent again with the same id until
/// JetStream acknowledges it, as a careful publisher does.
async fn publish_ticks(nats_url: String, range: std::ops::Range<u64>) {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&nats_url)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let ticks: Vec<u64> = range.collect();
    for chunk in ticks.chunks(256) {
        let mut pending: Vec<u64> = chunk.to_vec();
        while !pending.is_empty() {
            let mut acks = Vec::new();
            for &n in &pending {
                let message = async_nats::jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(json!({ "n": n }).to_string()))
                    .message_id(format!("tick-{n}"));
                acks.push((n, js.send_publish("sluice.trigger.t.tick", message).await));
            }
            let mut failed = Vec::new();
            for (n, ack) in acks {
                let stored = match ack {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if !stored {
                    failed.push(n);
                }
            }
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pending = failed;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_while_5000_triggers_arrive_loses_and_repeats_nothing() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w1", 8);
    cluster.start_worker("w2", 8);
    let publisher = tokio::spawn(publish_ticks(cluster.nats.url(), 0..5000));
    let api = cluster.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_recorded(&cluster.http, &api).await < 1000 {
        assert!(Instant::now() < deadline, "triggers are not being recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_engine();
    let at_kill = Runs::read(&cluster.dir.path().join("packs/t/runs.log"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_engine().await;
    publisher.await.unwrap();
    wait_settled(&cluster.http, &api, 5000, Duration::from_secs(240)).await;

    assert!(
        at_kill.per_execution.len() < 5000,
        "everything ran before the kill; the test proves nothing"
    );
    let books = books::balance(
        &cluster.http,
        &api,
        &cluster.nats.url(),
        5000,
        &["t.record"],
    )
    .await;
    books.report(
        "engine killed under 5,000 triggers",
        &cluster.metrics().await,
    );
    assert_eq!(books.count("succeeded"), 5000, "{}", books.ledger);
    assert_eq!(
        (
            books.ledger["events"].as_i64(),
            books.ledger["enforcements"].as_i64()
        ),
        (Some(5000), Some(5000))
    );
    Runs::read(&cluster.dir.path().join("packs/t/runs.log")).assert_each_once(5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_3_s_actions_has_them_retried_and_nothing_else_runs_twice() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("doomed", 2);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(cluster.submit("t.slow", json!({})).await);
    }
    let log = cluster.dir.path().join("packs/t/slow.log");
    let read = || -> Vec<(String, i64, u32)> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.split(' ').collect();
                (
                    p[0].to_owned(),
                    p[1].parse().unwrap(),
                    p[2].parse().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while read().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the doomed worker started nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both 3 s actions are running on `doomed`; the others arrive for the survivor.
    cluster.start_worker("survivor", 2);
    for _ in 0..6 {
        ids.push(cluster.submit("t.slow", json!({})).await);
    }
    cluster.kill_worker("doomed");
    cluster
        .wait_all("t.slow", 8, "succeeded", Duration::from_secs(90))
        .await;

    let lines = read();
    let mut starts: BTreeMap<(i64, u32), usize> = BTreeMap::new();
    for (kind, id, attempt) in &lines {
        if kind == "start" {
            *starts.entry((*id, *attempt)).or_default() += 1;
        }
    }
    assert!(
        starts.values().all(|n| *n == 1),
        "an attempt started twice: {starts:?}"
    );
    let retried: Vec<i64> = starts
        .keys()
        .filter(|(_, a)| *a == 2)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        retried,
        ids[..2],
        "exactly the two lost executions ran again"
    );
    for id in &ids[2..] {
        assert_eq!(starts.get(&(*id, 1)), Some(&1), "execution {id}");
    }
    for id in &ids[..2] {
        let e = cluster.execution(*id).await;
        assert_eq!(
            (e["attempt"].as_u64(), e["worker"].as_str()),
            (Some(2), Some("worker/survivor"))
        );
    }
    let books = books::balance(
        &cluster.http,
        &cluster.api(),
        &cluster.nats.url(),
        8,
        &["t.slow"],
    )
    .await;
    books.report("worker killed during 3 s actions", &cluster.metrics().await);
    assert_eq!(books.count("succeeded"), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_under_load_loses_and_repeats_nothing() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w1", 8);
    let publisher = tokio::spawn(publish_ticks(cluster.nats.url(), 0..1000));
    let api = cluster.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_recorded(&cluster.http, &api).await < 300 {
        assert!(Instant::now() < deadline, "triggers are not being recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.nats.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nats.restart();
    publisher.await.unwrap();
    wait_settled(&cluster.http, &api, 1000, Duration::from_secs(180)).await;

    let books = books::balance(
        &cluster.http,
        &api,
        &cluster.nats.url(),
        1000,
        &["t.record"],
    )
    .await;
    books.report("nats-server restarted under load", &cluster.metrics().await);
    assert_eq!(books.count("succeeded"), 1000, "{}", books.ledger);
    Runs::read(&cluster.dir.path().join("packs/t/runs.log")).assert_each_once(1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_waited_out_and_every_execution_completes_once() {
    let pack = logging_pack();
    let sluice = Sluice::start(StoreKind::Postgres, &[pack.path().to_owned()]).await;
    let log = pack.path().join("t/runs.log");
    publish_ticks(sluice.nats.url(), 0..20).await;
    wait_settled(&sluice.http, &sluice.api, 20, Duration::from_secs(30)).await;

    let postgres = sluice.postgres.as_ref().unwrap();
    postgres.stop();
    publish_ticks(sluice.nats.url(), 20..70).await;
    // Longer than a query waits for a connection: the engine must see the failures.
    tokio::time::sleep(Duration::from_secs(8)).await;
    postgres.start_again();
    wait_settled(&sluice.http, &sluice.api, 70, Duration::from_secs(120)).await;

    let books = books::balance(
        &sluice.http,
        &sluice.api,
        &sluice.nats.url(),
        70,
        &["t.record"],
    )
    .await;
    let metrics = sluice.metrics().await;
    books.report("store outage", &metrics);
    assert_eq!(books.count("succeeded"), 70, "{}", books.ledger);
    Runs::read(&log).assert_each_once(70);
    assert!(metric(&metrics, "sluice_naks_total") > 0, "{metrics}");
    assert!(
        series(&metrics, "sluice_redeliveries_total{consumer=\"triggers\"}") > 0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sluice_dead_letters_total"),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "sluice_completions_total"),
        70,
        "{metrics}"
    );
}

#[tokio::test]
async fn one_nats_msg_id_is_one_event_and_no_id_is_one_event_per_publish() {
    let pack = logging_pack();
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let js = async_nats::jetstream::new(sluice.nats_client().await);
    for _ in 0..2 {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from_static(br#"{"n": 1}"#))
            .message_id("the-one-tick");
        let ack = js
            .send_publish("sluice.trigger.t.tick", message)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, 1, "the repeat is acknowledged as the first");
    }
    for _ in 0..2 {
        js.publish("sluice.trigger.t.tick", Bytes::from_static(br#"{"n": 2}"#))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_settled(&sluice.http, &sluice.api, 3, Duration::from_secs(30)).await;
    let books = books::balance(
        &sluice.http,
        &sluice.api,
        &sluice.nats.url(),
        3,
        &["t.record"],
    )
    .await;
    books.report(
        "one Nats-Msg-Id twice, no id twice",
        &sluice.metrics().await,
    );
    assert_eq!(books.count("succeeded"), 3);
    let runs = Runs::read(&pack.path().join("t/runs.log"));
    assert_eq!(runs.per_tick, BTreeMap::from([(1, 1), (2, 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_run_message_on_two_workers_run_the_action_once() {
    let pack = logging_pack();
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let second = sluice_worker::Worker::start(sluice_worker::WorkerConfig {
        name: "worker/second".into(),
        bus: sluice_bus::Bus::connect(&sluice.nats.url(), "second")
            .await
            .unwrap(),
        actions_dirs: [("t".to_owned(), pack.path().join("t/actions"))].into(),
        capacity: 4,
        heartbeat_interval: Duration::from_millis(200),
        run_verifier: sluice_bus::RunVerifier::load(&[sluice
            .data_dir
            .path()
            .join("run-signing.pub")])
        .unwrap(),
        runner: Default::default(),
        pack_cache: sluice.data_dir.path().join("second-pack-cache"),
        keyring: std::sync::Arc::new(
            sluice_core::secrets::Keyring::load(&sluice.data_dir.path().join("secrets.key"))
                .unwrap(),
        ),
    })
    .await
    .unwrap();
    let (_, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "t.record", "parameters": {"n": 7}}),
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    let (_, action) = sluice.get("/api/v1/actions/t.record").await;
    // What an engine restarted after the deduplication window, or a redelivery racing a
    // slow worker, would leave in RUN: more copies of the same attempt.
    let copy = sluice_core::RunMessage {
        execution_id: sluice_core::ExecutionId(id),
        attempt: 1,
        action: "t.record".parse().unwrap(),
        runner: sluice_core::RunnerType::LocalShellScript,
        pack_digest: action["pack_digest"].as_str().map(str::to_owned),
        entry_point: Some("record.sh".into()),
        parameters: json!({"n": 7}).as_object().unwrap().clone(),
        secret_parameters: vec![],
        positional: vec![],
        config: None,
        timeout_secs: None,
        limits: Default::default(),
        api: None,
        partition: None,
    };
    let js = async_nats::jetstream::new(sluice.nats_client().await);
    // Signed with the engine's own key, as the engine's copies would be.
    let signer =
        sluice_bus::RunSigner::load_or_create(&sluice.data_dir.path().join("run-signing.key"))
            .unwrap();
    let payload = sluice_core::encode(&copy).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        sluice_bus::names::SIGNATURE_HEADER,
        signer.sign(&payload).as_str(),
    );
    for i in 0..5 {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload.clone()))
            .headers(headers.clone())
            .message_id(format!("copy-{i}"));
        js.send_publish("sluice.run.default", message)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let done = sluice.wait_execution(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("RUN")
        .await
        .unwrap()
        .get_consumer("workers")
        .await
        .unwrap();
    eventually("every copy settled", Duration::from_secs(30), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    let _ = consumer.info().await;
    let runs = Runs::read(&pack.path().join("t/runs.log"));
    assert_eq!(
        runs.per_execution,
        BTreeMap::from([(id, 1)]),
        "the action ran more than once"
    );
    let metrics = sluice.metrics().await;
    assert_eq!(
        series(&metrics, "sluice_duplicates_suppressed_total{kind=\"run\"}"),
        5,
        "{metrics}"
    );
    let books = books::balance(
        &sluice.http,
        &sluice.api,
        &sluice.nats.url(),
        1,
        &["t.record"],
    )
    .await;
    books.report("six copies of one run message on two workers", &metrics);
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn poison_on_every_subject_is_rejected_or_dead_lettered_once_and_nothing_stops() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let client = sluice.nats_client().await;
    let js = async_nats::jetstream::new(client.clone());
    let publish = |subject: &'static str, payload: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let not_msgpack = b"\xc1 not a message".to_vec();
    let json_shaped = br#"{"execution_id": 1, "status": "succeeded"}"#.to_vec();
    let wrong_type = rmp_serde::to_vec(&7u32).unwrap();
    let report_by = |id: i64, status: &str, worker: &str| {
        rmp_serde::to_vec_named(&json!({
            "execution_id": id, "attempt": 1, "action": "core.noop", "worker": worker,
            "status": status, "result": null, "at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    };
    let report = |id: i64, status: &str| report_by(id, status, "worker/evil");

    // Triggers: each is a rejected event with its reason.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    js.publish_with_headers(
        "sluice.trigger.examples.alert",
        headers,
        wrong_type.clone().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish("sluice.trigger.examples.alert", not_msgpack.clone()).await;
    let nearly_a_mebibyte = format!("{{\"blob\": \"{}\"}}", "x".repeat(1_000_000));
    publish("sluice.trigger.t.unknown", nearly_a_mebibyte.into_bytes()).await;
    // Run messages, status reports and dead letters no Sluice process wrote. The run
    // messages carry the engine's signature, so it is their content that is refused (an
    // unsigned one is refused before that: tests/auth.rs).
    let engine_key =
        sluice_bus::RunSigner::load_or_create(&sluice.data_dir.path().join("run-signing.key"))
            .unwrap();
    for payload in [&not_msgpack, &json_shaped, &wrong_type] {
        let mut signed = async_nats::HeaderMap::new();
        signed.insert(
            sluice_bus::names::SIGNATURE_HEADER,
            engine_key.sign(payload).as_str(),
        );
        js.publish_with_headers("sluice.run.default", signed, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for payload in [&not_msgpack, &json_shaped, &wrong_type] {
        publish("sluice.status.999", payload.clone()).await;
    }
    publish("sluice.status.998", report(998, "scheduled")).await;
    publish("sluice.status.997", report(997, "succeeded")).await;
    // Only the engine's cancel of an unclaimed attempt names no worker.
    publish("sluice.status.996", report_by(996, "succeeded", "")).await;
    publish("sluice.deadletter.run", not_msgpack.clone()).await;
    // Core NATS subjects: heartbeats and cancel requests.
    for subject in [
        "sluice.heartbeat.evil",
        "sluice.cancel.nope",
        "sluice.cancel.424242",
    ] {
        client
            .publish(subject, not_msgpack.clone().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // Over the server's payload limit: refused at the door, with the reason.
    let two_mib = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    for subject in [
        "sluice.trigger.examples.alert",
        "sluice.run.default",
        "sluice.status.1",
    ] {
        let refused = match js.publish(subject, two_mib.clone()).await {
            Err(e) => e.to_string(),
            Ok(ack) => ack
                .await
                .expect_err("a 2 MiB message was stored")
                .to_string(),
        };
        assert!(refused.contains("payload"), "{subject}: {refused}");
    }

    let dead = eventually("nine dead letters", Duration::from_secs(30), || async {
        let (_, list) = sluice.get("/api/v1/dead-letters").await;
        let list = list.as_array().unwrap().clone();
        (list.len() >= 9).then_some(list)
    })
    .await;
    let by_stream =
        |stream: &str| -> Vec<&Value> { dead.iter().filter(|d| d["stream"] == stream).collect() };
    let run = by_stream("RUN");
    assert_eq!(run.len(), 3, "{dead:#?}");
    for d in &run {
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .starts_with("unreadable run message"),
            "{d}"
        );
        assert_eq!(d["payload"], Value::Null, "run messages may carry secrets");
        assert!(
            d["given_up_by"].as_str().unwrap().starts_with("worker/"),
            "{d}"
        );
    }
    let status = by_stream("STATUS");
    assert_eq!(status.len(), 5, "{dead:#?}");
    let reasons: Vec<&str> = status
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("unreadable status report"))
            .count(),
        3,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("status scheduled is set by the engine only")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("a succeeded report must name its worker")),
        "{reasons:?}"
    );
    assert!(
        status
            .iter()
            .all(|d| d["payload_size"].as_u64().unwrap() > 0)
    );
    let unreadable = by_stream("DEADLETTER");
    assert_eq!(unreadable.len(), 1, "{dead:#?}");
    assert!(
        unreadable[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unreadable dead letter")
    );
    assert_eq!(dead.len(), 9, "{dead:#?}");

    let (_, events) = sluice.get("/api/v1/events").await;
    let reasons: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("accepted"))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().all(|r| *r != "accepted"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unknown trigger \"t.unknown\"")),
        "{reasons:?}"
    );

    // Every consumer acknowledged each message once; nothing waits to come back.
    for (stream, consumer) in [
        ("TRIGGERS", "engine"),
        ("RUN", "workers"),
        ("STATUS", "engine"),
        ("DEADLETTER", "engine"),
    ] {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_consumer(consumer)
            .await
            .unwrap();
        let info = eventually(
            &format!("{stream} drained"),
            Duration::from_secs(20),
            || {
                let mut consumer = consumer.clone();
                async move {
                    let info = consumer.info().await.ok()?.clone();
                    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
                }
            },
        )
        .await;
        assert_eq!(
            info.num_redelivered, 0,
            "{stream}: a poison message came back"
        );
        let _ = consumer.info().await;
    }
    let metrics = sluice.metrics().await;
    assert_eq!(
        metric(&metrics, "sluice_dead_letters_total"),
        9,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "sluice_terms_total"), 8, "{metrics}");
    assert_eq!(metric(&metrics, "sluice_naks_total"), 0, "{metrics}");
    assert!(
        metric(&metrics, "sluice_stale_reports_ignored_total") >= 1,
        "{metrics}"
    );

    // And it keeps serving: the real worker is the only one known, and work still runs.
    let (_, workers) = sluice.get("/api/v1/workers").await;
    let names: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["worker/test"]);
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web1","severity":"info"}"#,
        )
        .await;
    let (_, created) = sluice
        .post("/api/v1/executions", &json!({"action": "core.noop"}))
        .await;
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    let all = books::all_executions(&sluice.http, &sluice.api).await;
    let expected = all.len();
    assert!(expected >= 2, "the alert ran no rule: {all:#?}");
    eventually("all executions ended", Duration::from_secs(30), || async {
        books::all_executions(&sluice.http, &sluice.api)
            .await
            .iter()
            .all(common::is_terminal)
            .then_some(())
    })
    .await;
    let books = books::balance(
        &sluice.http,
        &sluice.api,
        &sluice.nats.url(),
        expected,
        &["core.noop"],
    )
    .await;
    books.report("poison on every subject", &sluice.metrics().await);
}

/// An engine and worker `w`, and a `t.pause` execution that started on `w` and is
/// recorded `running`.
async fn a_pause_running_on_w() -> (Cluster, i64) {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    cluster.start_worker("w", 2);
    let id = cluster.submit("t.pause", json!({})).await;
    let log = cluster.dir.path().join("packs/t/slow.log");
    eventually("the action to start", Duration::from_secs(20), || async {
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        lines.contains(&format!("start {id} 1")).then_some(())
    })
    .await;
    eventually(
        "the worker's running report",
        Duration::from_secs(20),
        || async { (cluster.execution(id).await["status"] == "running").then_some(()) },
    )
    .await;
    (cluster, id)
}

/// Execution `id` once it has ended, waited for up to 30 s.
async fn ended(cluster: &Cluster, what: &str, id: i64) -> Value {
    eventually(what, Duration::from_secs(30), || async {
        let e = cluster.execution(id).await;
        is_terminal(&e).then_some(e)
    })
    .await
}

/// Submits one more `t.pause` and checks it succeeds: the worker and the queue went on.
async fn a_next_pause_succeeds(cluster: &Cluster) -> i64 {
    let next = cluster.submit("t.pause", json!({})).await;
    let done = ended(cluster, "the next execution", next).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    next
}

/// How many terminal statuses an execution's history holds.
fn ends(execution: &Value) -> usize {
    statuses(execution)
        .iter()
        .filter(|s| {
            ["succeeded", "failed", "abandoned", "cancelled", "timed_out"].contains(&s.as_str())
        })
        .count()
}

/// The run message is out and no worker has it when the cancel comes. The engine claims
/// the attempt with its cancel; the worker that takes the message later finds its claim
/// refused, and the attempt ends `cancelled` without its process ever starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_cancelled_before_any_worker_took_it_ends_cancelled_and_never_runs() {
    let mut cluster = Cluster::new(PACK);
    cluster.start_engine().await;
    let id = cluster.submit("t.pause", json!({})).await;
    eventually(
        "the run message to go out",
        Duration::from_secs(20),
        || async { (cluster.execution(id).await["status"] == "scheduled").then_some(()) },
    )
    .await;
    let (status, answer) = cluster
        .client()
        .post(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["cancel"], "requested",
        "a handed-off execution's cancel is recorded from its report: {answer}"
    );
    cluster.start_worker("w", 2);
    let ended = ended(&cluster, "the cancel to end it", id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["result"]["error"], "cancelled before it started");
    assert_eq!(ends(&ended), 1, "one end: {ended}");
    assert!(ended["worker"].is_null(), "no worker took it: {ended}");
    let history = statuses(&ended);
    assert!(
        !history.iter().any(|s| s == "running"),
        "never claimed: {history:?}"
    );
    // The worker goes on: the next execution runs there, and the cancelled one never did.
    let next = a_next_pause_succeeds(&cluster).await;
    let log = std::fs::read_to_string(cluster.dir.path().join("packs/t/slow.log")).unwrap();
    assert!(!log.contains(&format!("start {id} ")), "it ran: {log}");
    assert!(log.contains(&format!("start {next} 1")), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_report_was_lost_ends_abandoned_and_never_runs_again() {
    let (mut cluster, id) = a_pause_running_on_w().await;
    let log = cluster.dir.path().join("packs/t/slow.log");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    // The engine is down while the action ends, and the report of its end is gone before
    // it is back: what a STATUS stream past its retention does.
    cluster.kill_engine();
    eventually("the action to end", Duration::from_secs(20), || async {
        lines().contains(&format!("end {id} 1")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.nats.url()).await.unwrap());
    js.get_stream("STATUS")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    cluster.start_engine().await;

    // Its worker beats on without listing it, and nothing is left to apply: given up.
    let ended = ended(&cluster, "the execution to be given up", id).await;
    assert_eq!(ended["status"], "abandoned", "{ended}");
    let reason = ended["result"]["error"].as_str().unwrap();
    assert!(
        reason.contains("worker/w") && reason.contains("has not listed it"),
        "{reason}"
    );
    assert_eq!(ends(&ended), 1, "one end: {ended}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        lines().matches(&format!("start {id} ")).count(),
        1,
        "ran once: {}",
        lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_at_once_under_its_own_name_has_the_execution_it_forgot_abandoned_and_run_once()
 {
    let (mut cluster, id) = a_pause_running_on_w().await;
    let log = cluster.dir.path().join("packs/t/slow.log");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    // The worker dies with the execution and is back under the same name at once: its
    // heartbeats go on, listing nothing, and no report of the execution's end will come.
    cluster.kill_worker("w");
    let restarted = Instant::now();
    cluster.start_worker("w", 2);
    let ended = ended(&cluster, "the forgotten execution to be given up", id).await;
    eprintln!(
        "[forgotten] ended {} {:.1} s after the worker came back (loss window 2 s): {}",
        ended["status"],
        restarted.elapsed().as_secs_f64(),
        ended["result"]["error"]
    );
    assert_eq!(ended["status"], "abandoned", "{ended}");
    // Given up because the worker beats without listing it; on a machine slow enough that
    // the worker took longer than the window to come back, because it was silent.
    let reason = ended["result"]["error"].as_str().unwrap();
    assert!(reason.contains("worker/w"), "{reason}");
    assert_eq!(ends(&ended), 1, "one end: {ended}");
    // The queue moved on: the next execution runs on the worker that came back.
    a_next_pause_succeeds(&cluster).await;
    assert_eq!(
        lines().matches(&format!("start {id} ")).count(),
        1,
        "ran once: {}",
        lines()
    );
}

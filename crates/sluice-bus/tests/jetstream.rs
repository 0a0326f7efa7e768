//! The bus against a real nats-server.

mod common;

use chrono::Utc;
use common::run_message;
use futures::StreamExt as _;
use sluice_bus::{Bus, CancelSent, LastStatus, Published};
use sluice_core::{ExecutionId, ExecutionStatus, StatusReport};
use sluice_testkit::NatsServer;

#[tokio::test]
async fn streams_are_applied_idempotently_and_publishes_deduplicated() {
    let nats = NatsServer::start();
    let signer = std::sync::Arc::new(sluice_bus::RunSigner::generate().unwrap());
    let bus = Bus::connect(&nats.url(), "test")
        .await
        .unwrap()
        .with_run_signer(signer);
    bus.ensure_streams()
        .await
        .expect("applying the same definitions again is a no-op");
    Bus::connect(&nats.url(), "second")
        .await
        .expect("a second process applies them too");

    assert!(matches!(
        bus.publish_run(&run_message(1, 1)).await.unwrap(),
        Published::Stored { .. }
    ));
    assert_eq!(
        bus.publish_run(&run_message(1, 1)).await.unwrap(),
        Published::Duplicate
    );
    assert!(
        matches!(
            bus.publish_run(&run_message(1, 2)).await.unwrap(),
            Published::Stored { .. }
        ),
        "a new attempt is a new message"
    );

    let mut run = bus.jetstream().get_stream("RUN").await.unwrap();
    assert_eq!(run.info().await.unwrap().state.messages, 2);
}

#[tokio::test]
async fn a_server_short_of_storage_is_named_with_what_to_change() {
    // TRIGGERS reserves 1 GiB; a server that may reserve only 100 MB refuses it.
    let nats = NatsServer::start_with_file_store("100MB");
    let Err(error) = Bus::connect(&nats.url(), "test").await else {
        panic!("the streams cannot be reserved");
    };
    let error = error.to_string();
    assert!(error.contains("stream TRIGGERS"), "{error}");
    assert!(error.contains("max_file_store"), "{error}");
    assert!(
        error.contains("insufficient storage"),
        "the server's own words stay: {error}"
    );
}

#[tokio::test]
async fn the_last_status_of_an_execution_can_be_read_back() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    assert!(
        bus.last_status(ExecutionId(5), None)
            .await
            .unwrap()
            .is_none()
    );
    let mut report = StatusReport {
        execution_id: ExecutionId(5),
        attempt: 1,
        action: "core.noop".parse().unwrap(),
        worker: "w".into(),
        status: ExecutionStatus::Running,
        result: serde_json::Value::Null,
        at: Utc::now(),
        result_object: None,
        partition: None,
    };
    bus.publish_status(&report).await.unwrap();
    report.status = ExecutionStatus::Succeeded;
    bus.publish_status(&report).await.unwrap();
    assert_eq!(
        bus.publish_status(&report).await.unwrap(),
        Published::Duplicate,
        "one completion per execution"
    );
    let last = last_of(&bus, 5).await;
    assert_eq!(last.report.unwrap().status, ExecutionStatus::Succeeded);
    assert_eq!(last.sequence, 2);
}

/// A report for an action of partition 3 travels on that partition's status subjects and
/// reaches that partition's consumer only; the engine-wide consumer sees every report.
#[tokio::test]
async fn a_partition_s_reports_reach_its_own_consumer() {
    use futures::StreamExt as _;
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let report = |id: i64, partition: Option<u32>| StatusReport {
        execution_id: ExecutionId(id),
        attempt: 1,
        action: "core.noop".parse().unwrap(),
        worker: "w".into(),
        status: ExecutionStatus::Succeeded,
        result: serde_json::Value::Null,
        at: Utc::now(),
        result_object: None,
        partition,
    };
    bus.publish_status(&report(1, Some(3))).await.unwrap();
    bus.publish_status(&report(2, Some(1))).await.unwrap();
    bus.publish_status(&report(3, None)).await.unwrap();
    assert!(
        bus.last_status(ExecutionId(1), None)
            .await
            .unwrap()
            .is_none(),
        "partition 3's report is not on the unpartitioned subject"
    );
    let last = bus.last_status(ExecutionId(1), Some(3)).await.unwrap();
    assert_eq!(last.unwrap().report.unwrap().execution_id, ExecutionId(1));

    let consumer = bus
        .partition_consumer(
            "STATUS",
            "engine",
            3,
            sluice_bus::partition_status_subjects(3),
        )
        .await
        .unwrap();
    assert_eq!(
        consumer.cached_info().config.durable_name.as_deref(),
        Some("engine-p3")
    );
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut subjects = Vec::new();
    while let Some(message) = messages.next().await {
        subjects.push(message.unwrap().subject.to_string());
    }
    assert_eq!(subjects, ["sluice.status.p3.1"]);
    let again = bus
        .partition_consumer(
            "STATUS",
            "engine",
            3,
            sluice_bus::partition_status_subjects(3),
        )
        .await
        .expect("the partition's consumer is found again by whoever owns the partition next");
    assert_eq!(
        again.cached_info().config.filter_subject,
        "sluice.status.p3.*"
    );
    let mut all = bus.consumer("STATUS", "engine").await.unwrap();
    assert_eq!(
        all.info().await.unwrap().num_pending,
        3,
        "the engine-wide consumer sees all three"
    );
}

/// The last message on execution `id`'s status subject, which must exist.
async fn last_of(bus: &Bus, id: i64) -> LastStatus {
    bus.last_status(ExecutionId(id), None)
        .await
        .unwrap()
        .expect("a message on the status subject")
}

fn claim_of(id: i64, attempt: u32, worker: &str) -> StatusReport {
    StatusReport {
        execution_id: ExecutionId(id),
        attempt,
        action: "core.noop".parse().unwrap(),
        worker: worker.into(),
        status: ExecutionStatus::Running,
        result: serde_json::Value::Null,
        at: Utc::now(),
        result_object: None,
        partition: None,
    }
}

fn cancel_of(id: i64, attempt: u32) -> StatusReport {
    StatusReport::cancelled_before_start(
        ExecutionId(id),
        attempt,
        "core.noop".parse().unwrap(),
        None,
    )
}

#[tokio::test]
async fn of_two_workers_claiming_one_attempt_exactly_one_wins() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let claim = |worker: &str| claim_of(8, 1, worker);
    // Both read an empty subject, then both claim against it.
    assert!(bus.claim(&claim("a"), 0).await.unwrap());
    assert!(
        !bus.claim(&claim("b"), 0).await.unwrap(),
        "b must stand down"
    );
    // A's second try (a second copy of the run message reaching it, after the first had
    // run there) is no duplicate of the first: the condition decides, and refuses it.
    assert!(
        !bus.claim(&claim("a"), 0).await.unwrap(),
        "a's second try must not pass as its first"
    );
    let last = last_of(&bus, 8).await;
    assert_eq!(last.report.unwrap().worker, "a");
    // A claim against the current last sequence goes through (a retry after a lost worker).
    let mut retry = claim("b");
    retry.attempt = 2;
    assert!(bus.claim(&retry, last.sequence).await.unwrap());
}

#[tokio::test]
async fn the_engine_s_cancel_and_a_worker_s_claim_exclude_each_other() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut requests = client.subscribe("sluice.cancel.>").await.unwrap();
    client.flush().await.unwrap();

    // Unclaimed: the cancel takes the subject, and a worker's claim is refused.
    assert_eq!(
        bus.cancel(&cancel_of(9, 1)).await.unwrap(),
        CancelSent::Claimed
    );
    assert!(
        !bus.claim(&claim_of(9, 1, "a"), 0).await.unwrap(),
        "a cancelled attempt is claimed"
    );
    let last = last_of(&bus, 9).await;
    let last = last.report.unwrap();
    assert!(last.by_engine());
    assert_eq!(last.status, ExecutionStatus::Cancelled);
    // Asked again, it knows its own claim.
    assert_eq!(
        bus.cancel(&cancel_of(9, 1)).await.unwrap(),
        CancelSent::Claimed
    );

    // Claimed by a worker first: the worker is asked to stop, and the subject keeps its claim.
    assert!(bus.claim(&claim_of(10, 1, "a"), 0).await.unwrap());
    assert_eq!(
        bus.cancel(&cancel_of(10, 1)).await.unwrap(),
        CancelSent::Requested
    );
    let request = tokio::time::timeout(std::time::Duration::from_secs(5), requests.next())
        .await
        .expect("a cancel request for the running attempt")
        .unwrap();
    assert_eq!(request.subject.as_str(), "sluice.cancel.10");
    let last = last_of(&bus, 10).await;
    assert_eq!(last.report.unwrap().worker, "a");

    // Ended: nothing to do, and nobody is asked.
    let mut done = claim_of(11, 1, "a");
    done.status = ExecutionStatus::Succeeded;
    bus.publish_status(&done).await.unwrap();
    assert_eq!(
        bus.cancel(&cancel_of(11, 1)).await.unwrap(),
        CancelSent::Ended
    );

    // A second attempt, its first one's end still last on the subject: claimed over it, and
    // a worker's claim against that end (read before the cancel) is refused.
    let mut failed = claim_of(12, 1, "a");
    failed.status = ExecutionStatus::Failed;
    bus.publish_status(&failed).await.unwrap();
    let first = last_of(&bus, 12).await;
    assert_eq!(
        bus.cancel(&cancel_of(12, 2)).await.unwrap(),
        CancelSent::Claimed
    );
    assert!(
        !bus.claim(&claim_of(12, 2, "b"), first.sequence)
            .await
            .unwrap()
    );

    // Only execution 10's request went out.
    client.flush().await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), requests.next())
            .await
            .is_err(),
        "no other cancel request"
    );
}

#[tokio::test]
async fn a_result_of_many_chunks_is_read_back_whole_and_deleted() {
    use sluice_bus::results::{ResultStore, object_name};
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let engine = ResultStore::create(&bus).await.unwrap();
    let worker = ResultStore::open(&bus).await.unwrap();
    // Eight 128 KiB chunks and a bit, each byte telling where it is.
    let json: Vec<u8> = (0..1_100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let name = object_name(ExecutionId(9), 2);
    assert_eq!(name, "9.2");
    worker.put(&name, &json).await.unwrap();
    assert_eq!(
        engine.fetch(&name).await.unwrap().as_deref(),
        Some(&json[..])
    );
    // Put again (a worker retrying after a lost acknowledgement): replaced, not appended.
    worker.put(&name, &json[..1000]).await.unwrap();
    assert_eq!(
        engine.fetch(&name).await.unwrap().as_deref(),
        Some(&json[..1000])
    );
    engine.delete(&name).await.unwrap();
    assert_eq!(engine.fetch(&name).await.unwrap(), None);
    engine.delete(&name).await.unwrap();
}

#[tokio::test]
async fn an_object_bucket_that_kept_one_message_per_subject_keeps_every_chunk_after_a_start() {
    use async_nats::jetstream::stream;
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let js = bus.jetstream();
    // The packs bucket as earlier engines declared it.
    js.create_stream(stream::Config {
        name: "OBJ_sluice-packs".into(),
        subjects: vec!["$O.sluice-packs.C.>".into(), "$O.sluice-packs.M.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let packs = sluice_bus::packs::PackStore::create(&bus).await.unwrap();
    let bundle: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert!(packs.publish("big", "sha256:00", &bundle).await.unwrap());
    assert_eq!(
        packs.fetch("big", "sha256:00").await.unwrap().as_deref(),
        Some(&bundle[..])
    );
}

#[tokio::test]
async fn a_stream_of_another_name_on_sluice_s_subjects_is_refused_at_once() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["sluice.run.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let bus = Bus::attach(&nats.url(), "test", &Default::default())
        .await
        .unwrap();
    let refused = bus.ensure_streams().await.unwrap_err();
    assert!(!refused.is_transient(), "not worth waiting for: {refused}");
    assert!(
        refused
            .to_string()
            .contains("stream RUN: its subjects are taken by stream OTHER"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_pack_keeps_its_newest_versions_and_the_others_are_deleted() {
    use sluice_bus::packs::{KEPT_VERSIONS, PackStore};
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let packs = PackStore::create(&bus).await.unwrap();
    assert!(packs.publish("other", "sha256:o", b"o").await.unwrap());
    let digests: Vec<String> = (0..KEPT_VERSIONS + 3)
        .map(|i| format!("sha256:{i:02}"))
        .collect();
    for digest in &digests {
        assert!(packs.publish("p", digest, digest.as_bytes()).await.unwrap());
        assert!(
            !packs.publish("p", digest, digest.as_bytes()).await.unwrap(),
            "a version held already is not stored again"
        );
    }
    let kept = &digests[3..];
    assert_eq!(packs.versions("p").await.unwrap(), kept, "oldest first");
    for digest in &digests[..3] {
        assert_eq!(packs.fetch("p", digest).await.unwrap(), None, "{digest}");
    }
    assert_eq!(
        packs.fetch("p", &kept[0]).await.unwrap().as_deref(),
        Some(kept[0].as_bytes())
    );
    assert_eq!(packs.versions("other").await.unwrap(), ["sha256:o"]);
    assert_eq!(packs.versions("none").await.unwrap(), Vec::<String>::new());
}

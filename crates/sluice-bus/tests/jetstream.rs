//! The bus against a real nats-server.

mod common;

use chrono::Utc;
use common::run_message;
use sluice_bus::{Bus, Published};
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
    assert!(bus.last_status(ExecutionId(5)).await.unwrap().is_none());
    let mut report = StatusReport {
        execution_id: ExecutionId(5),
        attempt: 1,
        action: "core.noop".parse().unwrap(),
        worker: "w".into(),
        status: ExecutionStatus::Running,
        result: serde_json::Value::Null,
        at: Utc::now(),
    };
    bus.publish_status(&report).await.unwrap();
    report.status = ExecutionStatus::Succeeded;
    bus.publish_status(&report).await.unwrap();
    assert_eq!(
        bus.publish_status(&report).await.unwrap(),
        Published::Duplicate,
        "one completion per execution"
    );
    let last = bus.last_status(ExecutionId(5)).await.unwrap().unwrap();
    assert_eq!(last.report.unwrap().status, ExecutionStatus::Succeeded);
    assert_eq!(last.sequence, 2);
}

#[tokio::test]
async fn of_two_workers_claiming_one_attempt_exactly_one_wins() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    let claim = |worker: &str| StatusReport {
        execution_id: ExecutionId(8),
        attempt: 1,
        action: "core.noop".parse().unwrap(),
        worker: worker.into(),
        status: ExecutionStatus::Running,
        result: serde_json::Value::Null,
        at: Utc::now(),
    };
    // Both read an empty subject, then both claim against it.
    assert!(bus.claim(&claim("a"), 0).await.unwrap());
    assert!(
        !bus.claim(&claim("b"), 0).await.unwrap(),
        "b must stand down"
    );
    assert!(
        bus.claim(&claim("a"), 0).await.unwrap(),
        "a's own repeat is a duplicate, still a's claim"
    );
    let last = bus.last_status(ExecutionId(8)).await.unwrap().unwrap();
    assert_eq!(last.report.unwrap().worker, "a");
    // A claim against the current last sequence goes through (a retry after a lost worker).
    let mut retry = claim("b");
    retry.attempt = 2;
    assert!(bus.claim(&retry, last.sequence).await.unwrap());
}

#[tokio::test]
async fn a_cancel_request_is_kept_until_a_worker_looks() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    assert!(!bus.cancel_requested(ExecutionId(9)).await.unwrap());
    assert!(matches!(
        bus.publish_cancel(ExecutionId(9)).await.unwrap(),
        Published::Stored { .. }
    ));
    assert_eq!(
        bus.publish_cancel(ExecutionId(9)).await.unwrap(),
        Published::Duplicate
    );
    assert!(bus.cancel_requested(ExecutionId(9)).await.unwrap());
    assert!(!bus.cancel_requested(ExecutionId(10)).await.unwrap());
}

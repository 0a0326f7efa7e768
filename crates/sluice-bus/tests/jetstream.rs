//! The bus against a real nats-server.

use chrono::Utc;
use sluice_bus::{Bus, Published};
use sluice_core::{ExecutionId, ExecutionStatus, RunMessage, RunnerType, StatusReport};
use sluice_testkit::NatsServer;

fn run_message(id: i64, attempt: u32) -> RunMessage {
    RunMessage {
        execution_id: ExecutionId(id),
        attempt,
        action: "core.noop".parse().unwrap(),
        runner: RunnerType::Noop,
        entry_point: None,
        parameters: Default::default(),
        secret_parameters: vec![],
        timeout_secs: None,
    }
}

#[tokio::test]
async fn streams_are_applied_idempotently_and_publishes_deduplicated() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
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
async fn the_last_status_of_an_execution_can_be_read_back() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "test").await.unwrap();
    assert_eq!(bus.last_status(ExecutionId(5)).await.unwrap(), None);
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
    assert_eq!(
        bus.last_status(ExecutionId(5))
            .await
            .unwrap()
            .unwrap()
            .status,
        ExecutionStatus::Succeeded
    );
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

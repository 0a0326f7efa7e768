//! The bus against a real three-server NATS cluster: streams and buckets kept in three
//! copies, and what is published survives the loss of a server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::run_message;
use sluice_bus::datastore::Datastore;
use sluice_bus::{Bus, CancelSent, Published, RunSigner, definitions, names};
use sluice_core::{ExecutionId, ExecutionStatus, StatusReport};
use sluice_testkit::{NatsCluster, eventually};

#[tokio::test]
async fn streams_kept_in_three_copies_lose_nothing_when_a_server_dies() {
    let mut cluster = NatsCluster::start();
    let url = cluster.nodes[0].url();
    let signer = Arc::new(RunSigner::generate().unwrap());
    // The servers elect a JetStream leader a moment after they start.
    let bus = eventually(
        "the cluster to take the streams",
        Duration::from_secs(30),
        || {
            let (url, signer) = (url.clone(), signer.clone());
            async move {
                let bus = Bus::attach(&url, "test", &Default::default())
                    .await
                    .ok()?
                    .with_stream_replicas(3)
                    .with_run_signer(signer);
                bus.ensure_streams().await.ok()?;
                Some(bus)
            }
        },
    )
    .await;
    Datastore::create(&bus).await.unwrap();

    let mut streams: Vec<String> = definitions().into_iter().map(|d| d.stream.name).collect();
    streams.push(format!("KV_{}", names::DATASTORE_BUCKET));
    for name in &streams {
        let copies = eventually(
            &format!("{name}'s followers to catch up"),
            Duration::from_secs(30),
            || {
                let (js, name) = (bus.jetstream().clone(), name.clone());
                async move {
                    let info = js.get_stream(&name).await.ok()?.info().await.ok()?.clone();
                    let cluster = info.cluster?;
                    let current = cluster.replicas.iter().filter(|p| p.current).count();
                    (cluster.leader.is_some() && current == 2).then_some(info.config.num_replicas)
                }
            },
        )
        .await;
        assert_eq!(copies, 3, "{name} keeps three copies");
    }

    // With three copies, the engine's cancel and a worker's claim still exclude each other:
    // the condition is checked by STATUS's leader, whichever copy a read came from.
    let cancelled =
        StatusReport::cancelled_before_start(ExecutionId(7), 1, "core.noop".parse().unwrap(), None);
    assert_eq!(bus.cancel(&cancelled).await.unwrap(), CancelSent::Claimed);
    let mut claim = cancelled.clone();
    claim.worker = "a".into();
    claim.status = ExecutionStatus::Running;
    assert!(!bus.claim(&claim, 0).await.unwrap());
    claim.execution_id = ExecutionId(8);
    assert!(bus.claim(&claim, 0).await.unwrap());
    let mut cancelled = cancelled;
    cancelled.execution_id = ExecutionId(8);
    assert_eq!(bus.cancel(&cancelled).await.unwrap(), CancelSent::Requested);

    assert!(matches!(
        bus.publish_run(&run_message(1, 1)).await.unwrap(),
        Published::Stored { .. }
    ));
    // The test talks to the first server; the third dies, leader of RUN or not.
    cluster.nodes[2].kill();
    eventually(
        "a run message stored with a server down",
        Duration::from_secs(30),
        || {
            let bus = bus.clone();
            async move {
                matches!(
                    bus.publish_run(&run_message(2, 1)).await.ok()?,
                    Published::Stored { .. }
                )
                .then_some(())
            }
        },
    )
    .await;
    let messages = eventually("RUN to answer", Duration::from_secs(30), || {
        let js = bus.jetstream().clone();
        async move {
            let mut run = js.get_stream(names::RUN).await.ok()?;
            Some(run.info().await.ok()?.state.messages)
        }
    })
    .await;
    assert_eq!(messages, 2, "both run messages kept, neither twice");
}

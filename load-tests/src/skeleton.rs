//! The JetStream skeleton of an execution, measured in the same run as `throughput`,
//! `latency` and `shell`: the four durable messages every execution crosses JetStream
//! with, sent, consumed and acknowledged the way Sluice does it, and nothing else: no
//! store, no signature, no rule, no actor. What it reaches is as far as any execution path
//! that keeps those four crossings can go on this machine.
//!
//! Each execution is:
//!
//! 1. its **trigger**, published by the code that publishes the scenario's own triggers
//!    ([`crate::triggers::publish_ticks`]: pipelined with 2,000 acks in flight);
//! 2. the **run message**: an "engine" pulls triggers in batches (Sluice's own
//!    [`sluice_bus::consume_batches`]), publishes one run message for each with a
//!    `Nats-Msg-Id`, waits for their acks and then acks the batch's triggers;
//! 3. the **claim**: a "worker" pulls run messages within 64 slots (Sluice's own
//!    [`sluice_bus::consume_within`]) and publishes a `running` report on the execution's
//!    status subject only if the subject is still empty (`Nats-Expected-Last-Subject-Sequence:
//!    0`), waiting for its ack;
//! 4. the **end**: the worker publishes the final report on the same subject, waits for its
//!    ack, then acks the run message; the "engine" pulls both reports in batches and acks
//!    them.
//!
//! At a fixed rate (`latency`, `shell`), the triggers are published at that rate instead,
//! and each execution's time from its trigger's publish to the worker holding its claim,
//! where a noop action's run would end, is what the scenario's trip is compared with.
//!
//! The streams and consumers are copies of TRIGGERS, RUN and STATUS and their consumers as
//! `streams/` declares them (retention, storage, windows, ack waits), under other names.
//! The publisher, the "engine" and the "worker" have a connection each, as they have in a
//! deployment. The CPU each execution costs is counted for nats-server and for this process,
//! which holds all three clients.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::report::Percentiles;

/// The skeleton's stream names start with this; the cost counters leave such streams out.
const PREFIX: &str = "BENCH_SKELETON_";

/// A worker's slots, as `sluice-load` starts its worker processes (`--capacity`).
const SLOTS: usize = 64;

/// What the skeleton reached.
pub struct Skeleton {
    pub executions_per_s: f64,
    /// From each trigger's publish to its claim held.
    pub latency: Percentiles,
    /// The fixed rate it ran at, if not pipelined.
    pub rate: Option<u64>,
    /// nats-server's CPU per execution, when the scenario started the server.
    pub nats_cpu_us: Option<f64>,
    /// This process's CPU per execution: the publisher, the "engine" and the "worker".
    pub clients_cpu_us: f64,
}

/// The subject prefix of a copied stream: `bench.skeleton.<name>`.
fn subject_of(name: &str) -> String {
    format!("bench.skeleton.{}", name.to_lowercase())
}

/// The streams the skeleton copies, each with its one consumer.
const COPIED: [&str; 3] = [
    sluice_bus::names::TRIGGERS,
    sluice_bus::names::RUN,
    sluice_bus::names::STATUS,
];

/// A copy of the stream `name` and its consumer as `streams/` declares them, under the
/// skeleton's names; its consumer.
async fn copy_of(js: &jetstream::Context, name: &str) -> anyhow::Result<consumer::PullConsumer> {
    let def = sluice_bus::definitions()
        .into_iter()
        .find(|d| d.stream.name == name)
        .ok_or_else(|| anyhow::anyhow!("streams/: no {name}"))?;
    let subjects = format!("{}.>", subject_of(name));
    let copy = stream::Config {
        name: format!("{PREFIX}{name}"),
        subjects: vec![subjects.clone()],
        ..def.stream
    };
    let _ = js.delete_stream(&copy.name).await;
    let created = js
        .create_stream(copy)
        .await
        .map_err(|e| anyhow::anyhow!("stream {PREFIX}{name}: {e}"))?;
    let config = def
        .consumers
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("streams/{name}: no consumer"))?
        .config;
    created
        .create_consumer(consumer::pull::Config {
            filter_subject: subjects,
            ..config
        })
        .await
        .map_err(|e| anyhow::anyhow!("consumer on {PREFIX}{name}: {e}"))
}

/// The tick a skeleton message carries: `{"n":N}` in a trigger, `N` and padding in a run
/// message.
fn tick_of(payload: &[u8]) -> u64 {
    let digits: String = payload
        .iter()
        .map(|&b| char::from(b))
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

async fn jetstream(nats_url: &str, name: &str) -> anyhow::Result<jetstream::Context> {
    let client = sluice_bus::connect_client(nats_url, name, &Default::default()).await?;
    Ok(jetstream::new(client))
}

/// Publishes `payload` with a deduplication id, and `expected_last` as the subject's last
/// sequence when given; the ack still to come.
async fn publish(
    js: &jetstream::Context,
    subject: String,
    id: String,
    payload: Bytes,
    expected_last: Option<u64>,
) -> anyhow::Result<PublishAckFuture> {
    let mut message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(id);
    if let Some(sequence) = expected_last {
        message = message.expected_last_subject_sequence(sequence);
    }
    Ok(js.send_publish(subject, message).await?)
}

/// Runs `executions` through the skeleton against the server at `nats_url` (`nats_pid`:
/// its process, to count its CPU), pipelined or at `rate` a second, and tears its streams
/// down.
pub async fn measure(
    nats_url: &str,
    nats_pid: Option<u32>,
    executions: u64,
    rate: Option<u64>,
) -> anyhow::Result<Skeleton> {
    let setup = jetstream(nats_url, "sluice-load-skeleton").await?;
    let engine = jetstream(nats_url, "sluice-load-skeleton-engine").await?;
    let worker = jetstream(nats_url, "sluice-load-skeleton-worker").await?;
    let [triggers, runs, reports] = COPIED;
    let triggers = copy_of(&setup, triggers).await?;
    let runs = copy_of(&setup, runs).await?;
    let reports = copy_of(&setup, reports).await?;
    let run_subject = format!("{}.default", subject_of(sluice_bus::names::RUN));
    let status_prefix = subject_of(sluice_bus::names::STATUS);
    let cancel = CancellationToken::new();
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let fail = {
        let failed = failed.clone();
        let cancel = cancel.clone();
        move |what: &str, e: &dyn std::fmt::Display| {
            failed
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| format!("{what}: {e}"));
            cancel.cancel();
        }
    };

    // The "engine": a run message for each trigger, then the triggers acked.
    let ingest = tokio::spawn({
        let (js, cancel, fail) = (engine.clone(), cancel.clone(), fail.clone());
        sluice_bus::consume_batches(triggers, cancel, move |batch| {
            let (js, fail) = (js.clone(), fail.clone());
            let subject = run_subject.clone();
            async move {
                let mut acks = FuturesUnordered::new();
                for message in &batch {
                    // The tick, padded to about a run message's size.
                    let n = tick_of(&message.payload);
                    let payload = Bytes::from(format!("{n:<512}"));
                    match publish(&js, subject.clone(), format!("{n}.1"), payload, None).await {
                        Ok(ack) => acks.push(ack.into_future()),
                        Err(e) => return fail("run message", &e),
                    }
                }
                while let Some(ack) = acks.next().await {
                    if let Err(e) = ack {
                        return fail("run message's ack", &e);
                    }
                }
                for message in &batch {
                    let _ = message.ack().await;
                }
            }
        })
    });

    // When each tick's claim was held.
    let claimed = Arc::new(std::sync::Mutex::new(vec![
        None::<DateTime<Utc>>;
        executions as usize
    ]));

    // The "worker": the claim and the end on the execution's status subject.
    let work = tokio::spawn({
        let (js, cancel, fail) = (worker.clone(), cancel.clone(), fail.clone());
        let claimed = claimed.clone();
        let report = Bytes::from(vec![b's'; 256]);
        sluice_bus::consume_within(
            runs,
            Arc::new(Semaphore::new(SLOTS)),
            cancel,
            move |group| {
                for (message, permit) in group {
                    let (js, fail, report) = (js.clone(), fail.clone(), report.clone());
                    let claimed = claimed.clone();
                    let n = tick_of(&message.payload);
                    let subject = format!("{status_prefix}.{n}");
                    tokio::spawn(async move {
                        let steps = async {
                            let claim = publish(
                                &js,
                                subject.clone(),
                                format!("{subject}.claim"),
                                report.clone(),
                                Some(0),
                            );
                            claim.await?.await?;
                            if let Some(at) = claimed
                                .lock()
                                .expect("not poisoned")
                                .get_mut(usize::try_from(n).unwrap_or(usize::MAX))
                            {
                                *at = Some(Utc::now());
                            }
                            let end = publish(
                                &js,
                                subject.clone(),
                                format!("{subject}.end"),
                                report,
                                None,
                            );
                            end.await?.await?;
                            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                            anyhow::Ok(())
                        };
                        if let Err(e) = steps.await {
                            fail("claim or end", &e);
                        }
                        drop(permit);
                    });
                }
                true
            },
        )
    });

    // The "engine" again: both reports acked and counted.
    let reported = Arc::new(AtomicU64::new(0));
    let all_ended = Arc::new(Notify::new());
    let listen = tokio::spawn({
        let (cancel, reported, all_ended) = (cancel.clone(), reported.clone(), all_ended.clone());
        sluice_bus::consume_batches(reports, cancel, move |batch| {
            let (reported, all_ended) = (reported.clone(), all_ended.clone());
            async move {
                for message in &batch {
                    let _ = message.ack().await;
                }
                let count = batch.len() as u64;
                if reported.fetch_add(count, Ordering::Relaxed) + count >= 2 * executions {
                    all_ended.notify_one();
                }
            }
        })
    });

    let nats_before = nats_pid.map(crate::process::cpu_time);
    let clients_before = crate::process::cpu_time(std::process::id());
    let started = Instant::now();
    let trigger_subject = format!("{}.load", subject_of(sluice_bus::names::TRIGGERS));
    let published =
        crate::triggers::publish_ticks(nats_url, &trigger_subject, executions, rate).await?;
    let waited = tokio::select! {
        _ = all_ended.notified() => Ok(()),
        _ = cancel.cancelled() => Err(anyhow::anyhow!("skeleton stopped")),
        _ = tokio::time::sleep(Duration::from_secs(120)) => Err(anyhow::anyhow!(
            "{} of {} skeleton reports in 120 s",
            reported.load(Ordering::Relaxed),
            2 * executions
        )),
    };
    let elapsed = started.elapsed();
    let nats_cpu = nats_pid
        .zip(nats_before)
        .map(|(pid, before)| crate::process::cpu_time(pid).saturating_sub(before));
    let clients_cpu = crate::process::cpu_time(std::process::id()).saturating_sub(clients_before);
    cancel.cancel();
    for task in [ingest, work, listen] {
        let _ = task.await;
    }
    if let Some(failure) = failed.lock().expect("not poisoned").take() {
        anyhow::bail!("skeleton: {failure}");
    }
    waited?;
    for name in COPIED {
        let _ = setup.delete_stream(format!("{PREFIX}{name}")).await;
    }
    let per_execution = |cpu: Duration| cpu.as_secs_f64() * 1e6 / executions as f64;
    let mut trips = crate::report::histogram();
    for (sent, claimed) in published
        .iter()
        .zip(claimed.lock().expect("not poisoned").iter())
    {
        if let Some(claimed) = claimed {
            crate::report::record(&mut trips, (*claimed - *sent).to_std().unwrap_or_default());
        }
    }
    let latency = Percentiles::of(&trips);
    Ok(Skeleton {
        executions_per_s: executions as f64 / elapsed.as_secs_f64(),
        latency,
        rate,
        nats_cpu_us: nats_cpu.map(per_execution),
        clients_cpu_us: per_execution(clients_cpu),
    })
}

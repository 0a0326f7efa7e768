//! Scenarios that publish triggers as a plain NATS client would (JSON on
//! `sluice.trigger.load.tick`) and measure trigger → completion through a real engine and
//! worker: a nats-server, a store, and one rule to `core.noop`.
//!
//! Latency is read back from the store: each event's payload carries its tick number, so an
//! execution's `finished_at` is matched with the moment its trigger was published.

use std::future::IntoFuture as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sluice_bus::Bus;
use sluice_engine::{Engine, EngineConfig};
use sluice_store::Store;
use sluice_testkit::{NatsServer, Postgres};
use sluice_worker::{Worker, WorkerConfig};

use crate::baseline::{self, Baseline};
use crate::report::{self, Percentiles, Summary};

/// What every trigger scenario accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// A PostgreSQL URL; default a fresh SQLite file. `--database-url start` starts a
    /// throwaway PostgreSQL cluster for the run.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Actions the worker runs at once.
    #[arg(long, default_value_t = 64)]
    pub capacity: usize,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Round trips the baseline measures.
    #[arg(long, default_value_t = 2_000)]
    pub baseline_roundtrips: u64,
    /// Messages the baseline's throughput pass publishes.
    #[arg(long, default_value_t = 50_000)]
    pub baseline_messages: u64,
}

const PACK: &[(&str, &str)] = &[
    ("pack.yaml", "ref: load\n"),
    ("triggers/tick.yaml", "name: tick\n"),
    (
        "rules/on_tick.yaml",
        "name: on_tick\ntrigger:\n  type: load.tick\naction:\n  ref: core.noop\n",
    ),
];

struct Harness {
    nats: NatsServer,
    store: Store,
    store_kind: &'static str,
    engine: Engine,
    worker: Worker,
    _postgres: Option<Postgres>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(options: &Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        for (rel, text) in PACK {
            let path = dir.path().join("packs/load").join(rel);
            std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))?;
            std::fs::write(path, text)?;
        }
        let bundled = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../packs"));
        let catalog = Arc::new(
            sluice_pack::load_packs(&[bundled, dir.path().join("packs")])
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let nats = NatsServer::start();
        let (postgres, url) = match options.database_url.as_deref() {
            Some("start") => {
                let pg = Postgres::start();
                let url = pg.url();
                (Some(pg), url)
            }
            Some(url) => (None, url.to_owned()),
            None => (None, dir.path().join("sluice.db").display().to_string()),
        };
        let store = Store::connect(&url).await?;
        let store_kind = store.backend_name();
        let engine = Engine::start(EngineConfig {
            name: "engine".into(),
            catalog: catalog.clone(),
            store: store.clone(),
            bus: Bus::connect(&nats.url(), "load-engine").await?,
            ingest_triggers: true,
            worker_loss_window: Duration::from_secs(10),
        })
        .await?;
        let worker = Worker::start(WorkerConfig {
            name: "worker/load".into(),
            bus: Bus::connect(&nats.url(), "load-worker").await?,
            actions_dirs: catalog
                .packs
                .iter()
                .map(|(name, pack)| (name.clone(), pack.dir.join("actions")))
                .collect(),
            capacity: options.capacity,
            heartbeat_interval: Duration::from_secs(2),
        })
        .await?;
        Ok(Self {
            nats,
            store,
            store_kind,
            engine,
            worker,
            _postgres: postgres,
            _dir: dir,
        })
    }

    async fn baseline(&self, options: &Options) -> anyhow::Result<Baseline> {
        baseline::measure(
            &self.nats.url(),
            options.baseline_roundtrips,
            options.baseline_messages,
        )
        .await
    }

    /// Waits until `count` executions exist and every one has ended.
    async fn wait_settled(&self, count: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let ledger = self.store.ledger().await?;
            let executions: i64 = ledger.executions.values().sum();
            if executions as u64 == count && ledger.unfinished == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "not settled after {timeout:?}: {executions} executions, {} unfinished",
                ledger.unfinished
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each execution's tick number and when it finished.
    async fn finished(&self) -> anyhow::Result<Vec<(i64, DateTime<Utc>)>> {
        Ok(self.store.finished_by_event_field("n").await?)
    }

    async fn stop(self) {
        self.engine.shutdown(Duration::from_secs(5)).await;
        self.worker.shutdown(Duration::from_secs(5)).await;
        self.store.close().await;
    }
}

/// Publishes tick `n` and returns when it was published.
fn tick(n: u64) -> (String, Bytes) {
    (
        "sluice.trigger.load.tick".to_owned(),
        Bytes::from(format!("{{\"n\":{n}}}")),
    )
}

/// Trigger → completion for each tick, from when it was published.
fn latencies(
    published: &[DateTime<Utc>],
    finished: &[(i64, DateTime<Utc>)],
) -> anyhow::Result<(Percentiles, DateTime<Utc>)> {
    let mut histogram = report::histogram();
    let mut last = published.first().copied().unwrap_or_else(Utc::now);
    for (n, at) in finished {
        let sent = published
            .get(usize::try_from(*n).unwrap_or(usize::MAX))
            .ok_or_else(|| anyhow::anyhow!("an execution for unknown tick {n}"))?;
        report::record(&mut histogram, (*at - *sent).to_std().unwrap_or_default());
        last = last.max(*at);
    }
    Ok((Percentiles::of(&histogram), last))
}

/// `throughput`: N triggers published pipelined (at most 2,000 unacknowledged), then the
/// time to the last completion recorded in the store.
pub async fn throughput(executions: u64, options: Options) -> anyhow::Result<()> {
    let harness = Harness::start(&options).await?;
    let baseline = harness.baseline(&options).await?;
    let js = async_nats::jetstream::new(async_nats::connect(harness.nats.url()).await?);
    let mut published = Vec::with_capacity(executions as usize);
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..executions {
        let (subject, payload) = tick(n);
        published.push(Utc::now());
        acks.push(js.publish(subject, payload).await?.into_future());
        while acks.len() >= 2_000 {
            if let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let timeout = Duration::from_secs(60 + executions / 200);
    harness.wait_settled(executions, timeout).await?;
    let finished = harness.finished().await?;
    let (latency, last) = latencies(&published, &finished)?;
    let span = (last - published[0]).as_seconds_f64();
    let summary = Summary::new(
        "throughput",
        harness.store_kind,
        executions,
        executions as f64 / span,
        latency,
        &baseline,
    );
    harness.stop().await;
    summary.emit(options.json.as_deref())
}

/// `latency`: triggers at a fixed low rate for a while, each timed to its completion.
pub async fn latency(rate: u64, duration: u64, options: Options) -> anyhow::Result<()> {
    let harness = Harness::start(&options).await?;
    let baseline = harness.baseline(&options).await?;
    let js = async_nats::jetstream::new(async_nats::connect(harness.nats.url()).await?);
    let executions = rate * duration;
    let mut published = Vec::with_capacity(executions as usize);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..executions {
        ticks.tick().await;
        let (subject, payload) = tick(n);
        published.push(Utc::now());
        acks.push(js.publish(subject, payload).await?.into_future());
        while let Some(Some(ack)) = futures::FutureExt::now_or_never(acks.next()) {
            ack?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    harness
        .wait_settled(executions, Duration::from_secs(120))
        .await?;
    let finished = harness.finished().await?;
    let (latency, last) = latencies(&published, &finished)?;
    let span = (last - published[0]).as_seconds_f64();
    let summary = Summary::new(
        &format!("latency ({rate}/s for {duration}s)"),
        harness.store_kind,
        executions,
        executions as f64 / span,
        latency,
        &baseline,
    );
    harness.stop().await;
    summary.emit(options.json.as_deref())
}

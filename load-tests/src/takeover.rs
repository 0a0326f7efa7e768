//! `takeover`: two `sluice engine` processes on one nats-server and a PostgreSQL, one
//! worker, and a trigger to `load.noop` every 20 ms. The primary is killed (`kill -9`)
//! `--kills` times. Each kill measures how long until the standby holds the execution core
//! (its `/healthz` says `primary`) and how long until it records a completion (the ledger's
//! `succeeded` count moves: a dead engine records nothing). The killed engine is then
//! started again and waits as the next standby. Kills land at varying points of the lease's
//! renewal cycle, which is what spreads the figures.
//!
//! The baseline, in the same run on the same deployment: a clean handover, where the
//! primary is stopped with SIGTERM, drains, and gives its lease back. It is the cost of a
//! takeover without waiting for a lease to expire.
//!
//! With `--partitions N`, both engines are active, sharing N partitions of the actions. Each
//! kill takes the engine that owns partition 0 (and so takes the triggers); it measures how
//! long until the other engine owns every partition, and how long until it records a
//! trigger again (the ledger's `events` count moves). The baseline is again a clean
//! handover: the owner stopped with SIGTERM gives its partitions back as it leaves.
//!
//! At the end the books must balance: every trigger made one execution, none is
//! unfinished, and none ended more than once.
//!
//! Needs the `sluice` binary beside this one: `cargo build --release -p sluice -p sluice-load`.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_testkit::{NatsServer, Postgres, free_port};

use crate::process::{get_json, health, sluice_binary, sluice_command, terminate};
use crate::report::{self, Percentiles};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// How many times the primary is killed.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// The engines' `--lease-ttl`, in seconds.
    #[arg(long, default_value_t = 6.0)]
    pub lease_ttl: f64,
    /// Run both engines active at once, sharing this many partitions of the actions.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Engines {
    sluice: PathBuf,
    dir: PathBuf,
    nats_url: String,
    database_url: String,
    lease_ttl: f64,
    partitions: Option<u32>,
    ports: [u16; 2],
    children: [Option<Child>; 2],
    http: reqwest::Client,
}

impl Engines {
    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("e{i}.log")))?;
        let name = format!("e{i}");
        let mut command = sluice_command(&self.sluice, "engine", &self.dir, &name);
        command
            .args(["--engine-name", &name])
            .args(["--http", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--lease-ttl", &self.lease_ttl.to_string()])
            .args(["--nats-url", &self.nats_url])
            .args(["--database-url", &self.database_url])
            .stderr(log);
        if let Some(partitions) = self.partitions {
            command.args(["--partitions", &partitions.to_string()]);
        }
        let child = command.spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// The partitions engine `i` owns, as its `/healthz` says; `None` while it does not
    /// answer.
    async fn owned(&self, i: usize) -> Option<Vec<u64>> {
        let health = health(&self.http, &self.api(i)).await?;
        let owned = health["partitions"].as_array()?;
        Some(owned.iter().filter_map(Value::as_u64).collect())
    }

    /// Waits until engine `i` holds the role the kills take over: the execution core, or,
    /// with partitions, every partition.
    async fn wait_sole(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let Some(count) = self.partitions else {
            return self.wait_role(i, "primary", within).await;
        };
        let started = Instant::now();
        while self.owned(i).await.map_or(0, |p| p.len()) != count as usize {
            anyhow::ensure!(
                started.elapsed() < within,
                "engine e{i} did not own every partition within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until engine `i`, started again, takes its part: a standby, or the owner of
    /// its share of the partitions.
    async fn wait_joined(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let Some(count) = self.partitions else {
            return self.wait_role(i, "standby", within).await;
        };
        let started = Instant::now();
        while self.owned(i).await.map_or(0, |p| p.len()) < count as usize / 2 {
            anyhow::ensure!(
                started.elapsed() < within,
                "engine e{i} did not take its share of the partitions within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The engine the next kill takes: the primary, or the owner of partition 0.
    async fn victim(&self) -> anyhow::Result<usize> {
        if self.partitions.is_none() {
            for i in 0..2 {
                if self.role(i).await.as_deref() == Some("primary") {
                    return Ok(i);
                }
            }
            anyhow::bail!("no engine is primary");
        }
        for i in 0..2 {
            if self.owned(i).await.is_some_and(|p| p.contains(&0)) {
                return Ok(i);
            }
        }
        anyhow::bail!("no engine owns partition 0")
    }

    /// What moves when the engine that took over works: completions recorded, or, with
    /// partitions, triggers recorded (the other engine's own partitions never stopped).
    async fn progress(&self, i: usize, token: &str) -> Option<i64> {
        let ledger = self.ledger(i, token).await.ok()?;
        match self.partitions {
            None => ledger["executions"]["succeeded"].as_i64(),
            Some(_) => ledger["events"].as_i64(),
        }
    }

    /// `primary`, `standby`, or `None` while it does not answer.
    async fn role(&self, i: usize) -> Option<String> {
        let health = health(&self.http, &self.api(i)).await?;
        health["role"].as_str().map(str::to_owned)
    }

    async fn wait_role(&self, i: usize, role: &str, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.role(i).await.as_deref() != Some(role) {
            anyhow::ensure!(
                started.elapsed() < within,
                "engine e{i} was not {role} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn ledger(&self, i: usize, token: &str) -> anyhow::Result<Value> {
        get_json(&self.http, &format!("{}/api/v1/ledger", self.api(i)), token).await
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[i].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn terminate(&mut self, i: usize) -> anyhow::Result<Child> {
        let child = self.children[i]
            .take()
            .ok_or_else(|| anyhow::anyhow!("engine e{i} is not running"))?;
        terminate(&child)?;
        Ok(child)
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes a `load.noop` trigger every 20 ms until `stop`, each with its own
/// `Nats-Msg-Id`, retried until JetStream stores it; how many it published.
async fn publish_until(nats_url: String, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let client = async_nats::connect(nats_url)
        .await
        .expect("the publisher connects");
    let js = async_nats::jetstream::new(client);
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let mut n = 0;
    while !*stop.borrow() {
        every.tick().await;
        loop {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(Bytes::from(json!({ "n": n }).to_string()))
                .message_id(format!("takeover-{n}"));
            let stored = match js.send_publish("sluice.trigger.load.noop", message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
    }
    n
}

fn seconds(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
    let ms = Percentiles::of(histogram);
    Percentiles {
        p50: ms.p50 / 1000.0,
        p90: ms.p90 / 1000.0,
        p99: ms.p99 / 1000.0,
        p999: ms.p999 / 1000.0,
        max: ms.max / 1000.0,
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let sluice = sluice_binary()?;
    let nats = NatsServer::start();
    let postgres = Postgres::start();
    let dir = tempfile::tempdir()?;
    let mut engines = Engines {
        sluice: sluice.clone(),
        dir: dir.path().to_owned(),
        nats_url: nats.url(),
        database_url: postgres.url(),
        lease_ttl: options.lease_ttl,
        partitions: options.partitions,
        ports: [free_port(), free_port()],
        children: [None, None],
        http: reqwest::Client::new(),
    };
    engines.start(0)?;
    engines.wait_sole(0, Duration::from_secs(60)).await?;
    engines.start(1)?;
    engines.wait_joined(1, Duration::from_secs(60)).await?;
    let token = std::fs::read_to_string(dir.path().join("e0/admin.token"))?
        .trim()
        .to_owned();
    let mut worker = sluice_command(&sluice, "worker", dir.path(), "w0")
        .args(["--worker-name", "w0", "--nats-url", &nats.url()])
        .stderr(Stdio::null())
        .spawn()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(publish_until(nats.url(), stopped));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let shape = match options.partitions {
        None => "one primary, one standby".to_owned(),
        Some(n) => format!("both active, {n} partitions"),
    };
    println!(
        "takeover: 2 engines ({shape}; lease {} s), 1 worker, PostgreSQL, a trigger every 20 ms",
        options.lease_ttl
    );
    // The baseline: a clean handover, three times.
    let mut handover = report::histogram();
    for _ in 0..3 {
        let primary = engines.victim().await?;
        let standby = 1 - primary;
        let started = Instant::now();
        let mut stopping = engines.terminate(primary)?;
        engines.wait_sole(standby, Duration::from_secs(120)).await?;
        report::record(&mut handover, started.elapsed());
        stopping.wait()?;
        engines.start(primary)?;
        engines
            .wait_joined(primary, Duration::from_secs(60))
            .await?;
    }
    let mut to_primary = report::histogram();
    let mut to_completion = report::histogram();
    for kill in 0..options.kills {
        let primary = engines.victim().await?;
        let standby = 1 - primary;
        // Land the kill at a different point of the renewal cycle each time.
        let quarter = options.lease_ttl / 4.0;
        let offset = quarter * ((kill * 7) % 10) as f64 / 10.0;
        tokio::time::sleep(Duration::from_secs_f64(offset)).await;
        let before = engines.progress(primary, &token).await.unwrap_or(0);
        let killed = Instant::now();
        engines.kill(primary)?;
        engines.wait_sole(standby, Duration::from_secs(120)).await?;
        report::record(&mut to_primary, killed.elapsed());
        loop {
            if engines
                .progress(standby, &token)
                .await
                .is_some_and(|now| now > before)
            {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "no completion within 2 minutes of kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        report::record(&mut to_completion, killed.elapsed());
        engines.start(primary)?;
        engines
            .wait_joined(primary, Duration::from_secs(60))
            .await?;
    }
    let _ = stop.send(true);
    let published = publisher.await?;

    // The books: every trigger one execution, each ended once.
    let settled = Instant::now();
    let answering = engines.victim().await?;
    let ledger = loop {
        let ledger = engines.ledger(answering, &token).await?;
        let executions: i64 = ledger["executions"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_i64).sum())
            .unwrap_or(0);
        if ledger["events"] == published
            && executions == published as i64
            && ledger["unfinished"] == 0
        {
            break ledger;
        }
        anyhow::ensure!(
            settled.elapsed() < Duration::from_secs(120),
            "not settled two minutes after the last trigger: {ledger}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let doubled = ledger["ended_other_than_once"]
        .as_array()
        .map_or(0, Vec::len);
    anyhow::ensure!(doubled == 0, "executions ended more than once: {ledger}");
    let _ = worker.kill();
    let _ = worker.wait();

    println!(
        "  seconds after the stop or kill     {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max"
    );
    let handover = seconds(&handover);
    let (to_primary, to_completion) = (seconds(&to_primary), seconds(&to_completion));
    handover.print_row("baseline: clean handover (SIGTERM)", 34);
    if options.partitions.is_some() {
        to_primary.print_row("kill -9: the other owns them all", 34);
        to_completion.print_row("kill -9: its first trigger", 34);
    } else {
        to_primary.print_row("kill -9: the standby is primary", 34);
        to_completion.print_row("kill -9: its first completion", 34);
    }
    println!(
        "  {} kills; {published} triggers, {published} executions, 0 lost, 0 ended twice; lease {} s",
        options.kills, options.lease_ttl
    );
    if let Some(path) = &options.json {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&json!({
                "scenario": "takeover",
                "kills": options.kills,
                "lease_ttl_s": options.lease_ttl,
                "partitions": options.partitions,
                "handover_s": handover,
                "kill_to_primary_s": to_primary,
                "kill_to_completion_s": to_completion,
                "triggers": published,
            }))?,
        )?;
    }
    Ok(())
}

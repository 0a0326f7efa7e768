//! `engines`: throughput on PostgreSQL with 1, 2 and 3 `sluice engine --partitions 6`
//! processes active at once, each run on a fresh nats-server and PostgreSQL with the same
//! worker processes. N triggers are published pipelined to `load.spread`, whose six rules
//! send each to one of six noop actions, one in each of the six partitions, so the
//! supervisors' work spreads evenly over the engines. Executions per second count from the
//! first publish to the last completion the ledger shows.
//!
//! The baseline, in the same run: one `sluice engine` without `--partitions` (one engine
//! owns every action, as by default), the same triggers.
//!
//! At the end of each run the books must balance: every trigger made one execution, none
//! is unfinished, none ended more than once.
//!
//! Needs the `sluice` binary beside this one: `cargo build --release -p sluice -p sluice-load`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_testkit::{NatsServer, Postgres, free_port};

use crate::process::{cpu_time, get_json, health, sluice_binary, sluice_command};

/// The partitions the engines share; `load.spread`'s six actions fall one in each.
const PARTITIONS: u32 = 6;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Triggers (and so executions) per run.
    #[arg(long, default_value_t = 10_000)]
    pub executions: u64,
    /// The numbers of engines to run, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub engine_counts: Vec<usize>,
    /// Worker processes in every run.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One run's figures.
#[derive(Debug, serde::Serialize)]
struct Figures {
    engines: usize,
    partitioned: bool,
    executions: u64,
    seconds: f64,
    executions_per_s: f64,
    /// CPU time of every engine, worker, nats-server and postgres process, per execution.
    cpu_us_per_execution: f64,
}

/// A deployment of one run: its processes end when it is dropped.
struct Run {
    _nats: NatsServer,
    postgres: Postgres,
    nats_url: String,
    _dir: tempfile::TempDir,
    engines: Vec<(Child, u16)>,
    workers: Vec<Child>,
    token: String,
    http: reqwest::Client,
}

impl Drop for Run {
    fn drop(&mut self) {
        for child in self
            .engines
            .iter_mut()
            .map(|(c, _)| c)
            .chain(self.workers.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Run {
    async fn start(
        sluice: &Path,
        engines: usize,
        partitioned: bool,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let nats = NatsServer::start();
        let postgres = Postgres::start();
        let dir = tempfile::tempdir()?;
        let keygen = std::process::Command::new(sluice)
            .arg("keygen")
            .arg(dir.path().join("keys"))
            .output()?;
        anyhow::ensure!(keygen.status.success(), "sluice keygen: {keygen:?}");
        let mut run = Self {
            nats_url: nats.url(),
            _nats: nats,
            postgres,
            _dir: dir,
            engines: Vec::new(),
            workers: Vec::new(),
            token: String::new(),
            http: reqwest::Client::new(),
        };
        let dir = run._dir.path().to_owned();
        for i in 0..engines {
            let name = format!("e{i}");
            let port = free_port();
            let mut command = sluice_command(sluice, "engine", &dir, &name);
            command
                .args(["--engine-name", &name])
                .args(["--http", &format!("127.0.0.1:{port}")])
                .args(["--nats-url", &run.nats_url])
                .args(["--database-url", &run.postgres.url()])
                .stderr(Stdio::null());
            if partitioned {
                command.args(["--partitions", &PARTITIONS.to_string()]);
            }
            run.engines.push((command.spawn()?, port));
            // The first engine sets the store up before the others start.
            if i == 0 {
                run.wait_until(Duration::from_secs(60), "e0 answers", async |run| {
                    run.health(0).await.is_some()
                })
                .await?;
                run.token = std::fs::read_to_string(dir.join("e0/admin.token"))?
                    .trim()
                    .to_owned();
            }
        }
        if partitioned {
            run.wait_until(
                Duration::from_secs(60),
                "every engine owns its share of the partitions",
                async |run| run.shared_out().await,
            )
            .await?;
        }
        for i in 0..workers {
            let name = format!("w{i}");
            run.workers.push(
                sluice_command(sluice, "worker", &dir, &name)
                    .args(["--worker-name", &name, "--nats-url", &run.nats_url])
                    .args(["--capacity", "64"])
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        run.wait_until(
            Duration::from_secs(60),
            "the workers' heartbeats",
            async |run| {
                let workers: Value = match run.get(0, "/api/v1/workers").await {
                    Ok(workers) => workers,
                    Err(_) => return false,
                };
                workers.as_array().map_or(0, Vec::len) >= run.workers.len()
            },
        )
        .await?;
        Ok(run)
    }

    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.engines[i].1)
    }

    async fn get(&self, i: usize, path: &str) -> anyhow::Result<Value> {
        get_json(&self.http, &format!("{}{path}", self.api(i)), &self.token).await
    }

    async fn health(&self, i: usize) -> Option<Value> {
        health(&self.http, &self.api(i)).await
    }

    /// Whether the engines own every partition between them, each its fair share.
    async fn shared_out(&self) -> bool {
        let mut owned = Vec::new();
        let share = PARTITIONS as usize / self.engines.len();
        for i in 0..self.engines.len() {
            let Some(health) = self.health(i).await else {
                return false;
            };
            let mine = health["partitions"].as_array().cloned().unwrap_or_default();
            if mine.len() < share {
                return false;
            }
            owned.extend(mine.iter().filter_map(Value::as_u64));
        }
        owned.sort_unstable();
        owned == (0..u64::from(PARTITIONS)).collect::<Vec<_>>()
    }

    async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        check: impl AsyncFn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        while !check(self).await {
            anyhow::ensure!(started.elapsed() < within, "no {what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Every process of the deployment, for their CPU time.
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.engines.iter().map(|(c, _)| c.id()).collect();
        pids.extend(self.workers.iter().map(Child::id));
        pids.extend(self._nats.pid());
        pids.extend(self.postgres.pids());
        pids
    }

    /// Publishes `count` triggers pipelined and waits until the ledger shows every one's
    /// execution succeeded; the seconds from the first publish.
    async fn measure(&self, count: u64) -> anyhow::Result<f64> {
        let client = async_nats::connect(&self.nats_url).await?;
        let js = async_nats::jetstream::new(client);
        let started = Instant::now();
        let mut acks = Vec::with_capacity(1024);
        for n in 0..count {
            let payload = Bytes::from(json!({ "n": n, "k": n % 6 }).to_string());
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(format!("spread-{n}"));
            acks.push(
                js.send_publish("sluice.trigger.load.spread", message)
                    .await?,
            );
            if acks.len() == 1024 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        loop {
            let ledger = self.get(0, "/api/v1/ledger").await?;
            let succeeded = ledger["executions"]["succeeded"].as_u64().unwrap_or(0);
            if succeeded >= count {
                let seconds = started.elapsed().as_secs_f64();
                anyhow::ensure!(
                    ledger["events"] == count
                        && ledger["unfinished"] == 0
                        && ledger["ended_other_than_once"]
                            .as_array()
                            .is_none_or(Vec::is_empty),
                    "the books do not balance: {ledger}"
                );
                return Ok(seconds);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "not settled within 10 minutes: {ledger}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn one_run(
    sluice: &Path,
    engines: usize,
    partitioned: bool,
    options: &Options,
) -> anyhow::Result<Figures> {
    let run = Run::start(sluice, engines, partitioned, options.workers).await?;
    let pids = run.pids();
    let cpu_before: Duration = pids.iter().map(|p| cpu_time(*p)).sum();
    let seconds = run.measure(options.executions).await?;
    let cpu: Duration = pids.iter().map(|p| cpu_time(*p)).sum::<Duration>() - cpu_before;
    Ok(Figures {
        engines,
        partitioned,
        executions: options.executions,
        seconds,
        executions_per_s: options.executions as f64 / seconds,
        cpu_us_per_execution: cpu.as_secs_f64() * 1e6 / options.executions as f64,
    })
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let sluice = sluice_binary()?;
    println!(
        "engines: {} triggers pipelined to six noop actions, one per partition; PostgreSQL, {} worker(s)",
        options.executions, options.workers
    );
    let baseline = one_run(&sluice, 1, false, &options).await?;
    let mut all = vec![];
    for &count in &options.engine_counts {
        all.push(one_run(&sluice, count, true, &options).await?);
    }
    println!(
        "  {:<44} {:>12} {:>10} {:>14}",
        "", "executions/s", "ratio", "CPU µs / exec"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "  {name:<44} {:>12.0} {:>10.2} {:>14.0}",
            f.executions_per_s,
            f.executions_per_s / baseline.executions_per_s,
            f.cpu_us_per_execution
        );
    };
    row("baseline: 1 engine, no --partitions", &baseline);
    for f in &all {
        row(
            &format!("{} engine(s), --partitions {PARTITIONS}", f.engines),
            f,
        );
    }
    println!(
        "  {} cores on this machine: engines, workers, nats-server and postgres share them",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    if let Some(path) = &options.json {
        crate::report::write_json(
            path,
            &json!({
                "scenario": "engines",
                "commit": crate::report::commit(),
                "partitions": PARTITIONS,
                "baseline": baseline,
                "runs": all,
            }),
        )?;
    }
    Ok(())
}

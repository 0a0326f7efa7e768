//! Engine memory with a long queue, queued as users queue: N triggers published to NATS,
//! matched by the `load.serial` rule, each an execution of `load.serial`
//! (`max_concurrent: 1`), with no worker, so one is admitted and the rest wait. The engine
//! is a `sluice engine` process (SQLite, logs at their default level) and its resident
//! memory is read from `/proc`: idle with the pack loaded (the baseline), with the queue
//! built by the triggers, and after a restart that rebuilt the queue from the store.
//!
//! Needs the `sluice` binary beside this one: `cargo build --release -p sluice -p sluice-load`.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::{NatsServer, free_port};

use crate::process::{Memory, sluice_binary, sluice_command, terminate};

const ACTION: &str = "load.serial";

struct EngineProcess {
    child: Child,
    api: String,
}

impl EngineProcess {
    fn start(sluice: &Path, dir: &Path, nats_url: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("engine.log"))?;
        let child = sluice_command(sluice, "engine", dir, "engine")
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(["--nats-url", nats_url])
            // The level an operator runs at: spans and `info` lines as in production.
            .env_remove("RUST_LOG")
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            api: format!("http://127.0.0.1:{port}"),
        })
    }

    fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.child.id())
    }

    /// SIGTERM, then wait for the drain to finish.
    fn stop(mut self) -> anyhow::Result<()> {
        terminate(&self.child)?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `load.serial`'s queue as the engine reports it, once it answers.
async fn queue(http: &reqwest::Client, engine: &EngineProcess, token: &str) -> Option<(u64, u64)> {
    let stats: Value = http
        .get(format!(
            "{}/api/v1/actions/{ACTION}/queue-stats",
            engine.api
        ))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    Some((
        stats["queue_length"].as_u64()?,
        stats["active_count"].as_u64()?,
    ))
}

/// Waits until the queue holds `queued` behind one admitted, and for the memory to settle.
async fn wait_queued(
    http: &reqwest::Client,
    engine: &EngineProcess,
    token: &str,
    queued: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if queue(http, engine, token).await == Some((queued, 1)) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "{queued} not queued at {ACTION} after 30 minutes: {:?}",
            queue(http, engine, token).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    // Let the last batches' buffers be freed before RSS is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(took)
}

pub async fn run(executions: u64, json: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(executions >= 2, "--executions must be at least 2");
    let sluice = sluice_binary()?;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::new();

    let engine = EngineProcess::start(&sluice, dir.path(), &nats.url())?;
    let token_file = dir.path().join("engine/admin.token");
    let started = Instant::now();
    let token = loop {
        if let Ok(token) = std::fs::read_to_string(&token_file)
            && queue(&http, &engine, token.trim()).await == Some((0, 0))
        {
            break token.trim().to_owned();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the engine did not serve {ACTION}'s queue within a minute (see {})",
            dir.path().join("engine.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = engine.memory()?;

    let published = Instant::now();
    crate::triggers::publish_to(&nats.url(), "serial", executions, None).await?;
    let publish_time = published.elapsed();
    let ingest_time = publish_time + wait_queued(&http, &engine, &token, executions - 1).await?;
    let queued = engine.memory()?;
    engine.stop()?;

    // From the spawn: the process's start, the store's read, the queue's rebuild.
    let engine = EngineProcess::start(&sluice, dir.path(), &nats.url())?;
    let rebuild_time = wait_queued(&http, &engine, &token, executions - 1).await?;
    let rebuilt = engine.memory()?;
    drop(engine);

    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let per = |m: Memory| m.rss.saturating_sub(idle.rss) as f64 / (executions - 1) as f64;
    println!(
        "scenario: queue-memory ({executions} triggers to {ACTION}, max_concurrent 1, no worker; a `sluice engine` process, SQLite)"
    );
    println!(
        "  published in {:.1}s, all queued after {:.1}s; after a restart the queue was rebuilt in {:.1}s",
        publish_time.as_secs_f64(),
        ingest_time.as_secs_f64(),
        rebuild_time.as_secs_f64()
    );
    println!(
        "  {:<44} {:>10} {:>10} {:>22}",
        "engine", "RSS", "peak RSS", "per queued execution"
    );
    println!(
        "  {:<44} {:>7.1} MB {:>7.1} MB {:>22}",
        "baseline: idle, the pack loaded",
        mb(idle.rss),
        mb(idle.peak),
        ""
    );
    println!(
        "  {:<44} {:>7.1} MB {:>7.1} MB {:>16.0} bytes",
        format!("{} queued by triggers, 1 admitted", executions - 1),
        mb(queued.rss),
        mb(queued.peak),
        per(queued)
    );
    println!(
        "  {:<44} {:>7.1} MB {:>7.1} MB {:>16.0} bytes",
        "the same after a restart rebuilt the queue",
        mb(rebuilt.rss),
        mb(rebuilt.peak),
        per(rebuilt)
    );
    println!("  aim: at most 300 bytes per queued execution (1,000,000 queued within 400 MB)");
    if let Some(path) = json {
        crate::report::write_json(
            path,
            &json!({
                "scenario": "queue-memory",
                "store": "sqlite",
                "executions": executions,
                "baseline_rss_mb": mb(idle.rss),
                "queued_rss_mb": mb(queued.rss),
                "queued_peak_rss_mb": mb(queued.peak),
                "queued_bytes_per_execution": per(queued),
                "rebuilt_rss_mb": mb(rebuilt.rss),
                "rebuilt_peak_rss_mb": mb(rebuilt.peak),
                "rebuilt_bytes_per_execution": per(rebuilt),
                "ingest_s": ingest_time.as_secs_f64(),
                "rebuild_s": rebuild_time.as_secs_f64(),
                "commit": crate::report::commit(),
            }),
        )?;
    }
    Ok(())
}

//! Engine memory with a long queue: N `requested` executions behind `max_concurrent: 1`
//! and no worker. They are written to a fresh SQLite store in one statement; the engine
//! then starts, rebuilds its queue from the store, and the process's resident memory is
//! read before and after. The baseline is the same process before the engine starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_bus::Bus;
use sluice_engine::{Engine, EngineConfig};
use sluice_store::Store;
use sluice_testkit::NatsServer;

use crate::rss_bytes;

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub async fn run(executions: u64, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pack = dir.path().join("packs/q");
    std::fs::create_dir_all(pack.join("actions"))?;
    std::fs::write(pack.join("pack.yaml"), "ref: q\n")?;
    std::fs::write(
        pack.join("actions/hold.yaml"),
        "name: hold\nrunner_type: noop\npolicy: {max_concurrent: 1}\n",
    )?;
    let catalog = Arc::new(
        sluice_pack::load_packs(&[dir.path().join("packs")]).map_err(|e| anyhow::anyhow!("{e}"))?,
    );

    let db = dir.path().join("sluice.db");
    let store = Store::connect(db.to_str().unwrap_or_default()).await?;
    let filled = Instant::now();
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
        let now = chrono::Utc::now().to_rfc3339();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             INSERT INTO executions (action, status, parameters, attempt, created_at, updated_at) \
             SELECT 'q.hold', 'requested', '{}', 1, $2, $2 FROM n",
        )
        .bind(executions as i64)
        .bind(&now)
        .execute(&pool)
        .await?;
        pool.close().await;
    }
    let fill_time = filled.elapsed();

    let nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "queue-memory").await?;
    let before = rss_bytes();
    let started = Instant::now();
    let engine = Engine::start(EngineConfig {
        name: "engine".into(),
        catalog,
        packs: Default::default(),
        store,
        bus,
        run_signer: std::sync::Arc::new(sluice_bus::RunSigner::generate()?),
        keyring: std::sync::Arc::new(sluice_core::secrets::Keyring::ephemeral()?),
        ingest_triggers: false,
        worker_loss_window: Duration::from_secs(10),
        api_url: None,
    })
    .await?;
    let queued = loop {
        let stats = engine
            .queue_stats("q.hold")
            .await
            .ok_or_else(|| anyhow::anyhow!("no supervisor for q.hold"))?;
        if stats.queue_length as u64 + stats.active_count as u64 == executions {
            break stats.queue_length;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "queue not rebuilt after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rebuild_time = started.elapsed();
    let after = rss_bytes();
    let peak = peak_rss_bytes();
    engine.shutdown(Duration::from_secs(1)).await;

    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("scenario: queue-memory ({executions} executions behind max_concurrent 1, no worker)");
    println!(
        "  store filled in {:.1}s; engine rebuilt its queue in {:.1}s ({queued} queued, 1 admitted)",
        fill_time.as_secs_f64(),
        rebuild_time.as_secs_f64()
    );
    println!(
        "  baseline: process before the engine  {:>8.1} MB RSS",
        mb(before)
    );
    println!(
        "  engine with the queue                {:>8.1} MB RSS  (+{:.1} MB, {:.0} bytes per queued execution)",
        mb(after),
        mb(after.saturating_sub(before)),
        after.saturating_sub(before) as f64 / executions as f64
    );
    println!(
        "  peak during the rebuild              {:>8.1} MB RSS",
        mb(peak)
    );
    if let Some(path) = json {
        crate::report::write_json(
            path,
            &serde_json::json!({
                "scenario": "queue-memory",
                "store": "sqlite",
                "executions": executions,
                "baseline_rss_mb": mb(before),
                "rss_mb": mb(after),
                "peak_rss_mb": mb(peak),
                "bytes_per_queued": after.saturating_sub(before) as f64 / executions as f64,
                "rebuild_s": rebuild_time.as_secs_f64(),
                "commit": crate::report::commit(),
            }),
        )?;
    }
    Ok(())
}

//! `results`: N executions at once, all printing a result of `--size-kib` to stdout at the
//! same moment, so that every result is on its way from the worker to the store at the same
//! time. For the worker process and for the engine (which runs inside
//! `sluice-load`) it prints the peak resident memory (`VmHWM`, reset through
//! `/proc/<pid>/clear_refs` before each round), its growth during the round, and what that
//! growth is in copies of the N results.
//!
//! The baseline, in the same run on the same deployment, is the same N executions printing
//! nothing: its growth is what running N executions costs without their results, and is
//! taken off before counting copies.

use std::time::Duration;

use serde_json::{Value, json};

use crate::deployment::{Deployment, Target};
use crate::process::Memory;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Executions running at once.
    #[arg(long, default_value_t = 100)]
    pub executions: u64,
    /// The size of each result's stdout, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub size_kib: u64,
    #[command(flatten)]
    pub target: Target,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The `results` pack. `big` and `quiet` each mark themselves ready in the directory named
/// by `dir`, wait there for the file `go`, then `big` prints `bytes` of `x` and `quiet`
/// nothing; so every execution's result is made, reported and stored at the same moment.
fn write_pack(root: &std::path::Path, dir: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    let pack = root.join("results");
    std::fs::create_dir_all(pack.join("actions"))?;
    std::fs::write(pack.join("pack.yaml"), "ref: results\n")?;
    let dir = dir.display();
    let wait = format!("touch {dir}/ready.$$; while [ ! -e {dir}/go ]; do sleep 0.1; done");
    std::fs::write(
        pack.join("actions/big.yaml"),
        format!(
            "name: big\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {{type: string, default: '{wait}; head -c {bytes} /dev/zero | tr \"\\\\0\" x'}}\n"
        ),
    )?;
    std::fs::write(
        pack.join("actions/quiet.yaml"),
        format!(
            "name: quiet\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {{type: string, default: '{wait}'}}\n"
        ),
    )?;
    Ok(())
}

/// Resets a process's peak resident memory to its current one.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| anyhow::anyhow!("resetting the peak memory of process {pid}: {e}"))
}

/// How many executions have marked themselves ready in `gate`.
fn ready(gate: &std::path::Path) -> anyhow::Result<u64> {
    let mut count = 0;
    for entry in std::fs::read_dir(gate)? {
        count += u64::from(entry?.file_name().to_string_lossy().starts_with("ready."));
    }
    Ok(count)
}

/// The peak resident memory, in bytes, of each process in `pids` while `executions` of
/// `action` ran, and its growth over the memory the process held when they started.
async fn round(
    deployment: &Deployment,
    pids: &[u32],
    action: &str,
    executions: u64,
    gate: &std::path::Path,
) -> anyhow::Result<(Vec<(u64, u64)>, Vec<i64>)> {
    // Let the previous round's memory be given back before measuring from here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut before = Vec::with_capacity(pids.len());
    for &pid in pids {
        reset_peak(pid)?;
        before.push(Memory::of(pid)?.rss);
    }
    let mut ids = Vec::with_capacity(executions as usize);
    for _ in 0..executions {
        let created: Value = deployment
            .http()
            .post(format!("{}/api/v1/executions", deployment.api()))
            .json(&json!({ "action": action }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(
            created["id"]
                .as_i64()
                .ok_or_else(|| anyhow::anyhow!("no execution id in {created}"))?,
        );
    }
    // Every execution running and waiting, then all let go at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ready(gate)? < executions {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {} of {executions} executions of {action} started within 120 s",
            ready(gate)?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(gate.join("go"), "")?;
    deployment
        .wait_settled(executions, Duration::from_secs(300))
        .await?;
    for entry in std::fs::read_dir(gate)? {
        std::fs::remove_file(entry?.path())?;
    }
    let mut peaks = Vec::with_capacity(pids.len());
    for (&pid, rss) in pids.iter().zip(before) {
        let peak = Memory::of(pid)?.peak;
        peaks.push((peak, peak.saturating_sub(rss)));
    }
    Ok((peaks, ids))
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.target.nats_url.is_none(),
        "results measures the memory of processes it starts itself; it takes no --nats-url"
    );
    let bytes = options.size_kib * 1024;
    let dir = tempfile::tempdir()?;
    let gate = dir.path().join("gate");
    std::fs::create_dir(&gate)?;
    write_pack(dir.path(), &gate, bytes)?;
    let mut target = options.target.clone();
    target.capacity.get_or_insert(options.executions as usize);
    let mut deployment = Deployment::start_with(&target, &[dir.path().to_owned()]).await?;
    let mut pids = vec![std::process::id()];
    pids.extend(deployment.worker_pids());
    println!(
        "results: {} executions at once, each printing {} KiB of stdout at the same moment (store {}, commit {})",
        options.executions,
        options.size_kib,
        deployment.store,
        crate::report::commit()
    );
    deployment.count_from_now().await?;
    let (quiet, _) = round(
        &deployment,
        &pids,
        "results.quiet",
        options.executions,
        &gate,
    )
    .await?;
    deployment.count_from_now().await?;
    let (big, ids) = round(&deployment, &pids, "results.big", options.executions, &gate).await?;
    for id in ids {
        let execution = deployment.execution(id).await?;
        let kept = execution["result"]["stdout"].as_str().map_or(0, str::len) as u64;
        anyhow::ensure!(
            execution["status"] == "succeeded" && kept == bytes,
            "execution {id} ended {} with {kept} of {bytes} bytes of stdout",
            execution["status"]
        );
    }
    let all = (options.executions * bytes) as f64;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "  {:<22} {:>18} {:>18} {:>18} {:>18} {:>8}",
        "MiB", "quiet: peak RSS", "quiet: growth", "results: peak RSS", "results: growth", "copies"
    );
    let mut figures = serde_json::Map::new();
    let names = std::iter::once("engine (sluice-load)".to_owned())
        .chain((1..pids.len()).map(|i| format!("worker process {i}")));
    for (name, (&(q_peak, q), &(b_peak, b))) in names.zip(quiet.iter().zip(&big)) {
        let copies = (b as f64 - q as f64) / all;
        println!(
            "  {name:<22} {:>18.1} {:>18.1} {:>18.1} {:>18.1} {:>8.2}",
            mib(q_peak),
            mib(q),
            mib(b_peak),
            mib(b),
            copies
        );
        figures.insert(
            name,
            json!({
                "quiet_peak_rss_bytes": q_peak,
                "quiet_growth_bytes": q,
                "results_peak_rss_bytes": b_peak,
                "results_growth_bytes": b,
                "copies": copies,
            }),
        );
    }
    println!(
        "  every result was stored whole: {} executions × {} KiB of stdout read back",
        options.executions, options.size_kib
    );
    if let Some(path) = &options.json {
        crate::report::write_json(
            path,
            &json!({
                "scenario": "results",
                "commit": crate::report::commit(),
                "store": deployment.store,
                "executions": options.executions,
                "size_bytes": bytes,
                "processes": figures,
            }),
        )?;
    }
    deployment.stop().await;
    Ok(())
}

//! `sluice` processes a scenario starts as an operator would (`sluice engine`, `sluice
//! worker`), and what they hold in memory.
//!
//! Needs the `sluice` binary beside `sluice-load`: `cargo build --release -p sluice -p sluice-load`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `sluice ROLE` as every process of a deployment runs: its data directory
/// `<dir>/<name>`, the shared keys in `<dir>/keys` (the engine signs with them, the worker
/// verifies), the `load` pack, as many threads as this process, warnings only.
pub fn sluice_command(sluice: &Path, role: &str, dir: &Path, name: &str) -> Command {
    let keys = dir.join("keys");
    let (signing, key) = match role {
        "engine" => ("--run-signing-key", "run-signing.key"),
        _ => ("--run-verify-key", "run-signing.pub"),
    };
    let mut command = Command::new(sluice);
    command
        .arg(role)
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg(signing)
        .arg(keys.join(key))
        .arg("--secrets-key")
        .arg(keys.join("secrets.key"))
        .arg("--packs")
        .arg(packs_dir())
        .arg("--threads")
        .arg(crate::deployment::runtime_threads().to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

/// What an engine's `/healthz` at `api` says; `None` while it does not answer within half
/// a second.
pub async fn health(http: &reqwest::Client, api: &str) -> Option<serde_json::Value> {
    let answer = http
        .get(format!("{api}/healthz"))
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    answer.json().await.ok()
}

/// The JSON an engine's API answers `url` with, asked with `token`.
pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(url)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The `load` pack's directory (`load-tests/pack`).
pub fn packs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pack")
}

/// The `sluice` binary beside this one.
pub fn sluice_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let sluice = exe
        .parent()
        .map(|dir| dir.join("sluice"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no sluice binary beside {}: cargo build --release -p sluice -p sluice-load",
                exe.display()
            )
        })?;
    Ok(sluice)
}

/// User plus system CPU time process `pid` has used, from `/proc/<pid>/stat`; zero for a
/// process that is gone.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    stat_cpu(&format!("/proc/{pid}/stat")).1
}

/// The CPU time each thread of this process has used, by the thread's name (`comm`, at
/// most 15 characters), threads of one name summed.
pub fn thread_cpu_times() -> std::collections::BTreeMap<String, std::time::Duration> {
    let mut times = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(entry) = entry else { continue };
        let (name, used) = stat_cpu(&entry.path().join("stat").display().to_string());
        *times.entry(name).or_default() += used;
    }
    times
}

/// The command name and user plus system CPU time in a `stat` file of `/proc` (its times
/// are in the kernel's `USER_HZ` ticks, 100 a second).
fn stat_cpu(path: &str) -> (String, std::time::Duration) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name is in parentheses and may hold spaces; the fields follow it.
    let (head, rest) = stat.rsplit_once(')').unwrap_or_default();
    let name = head.split_once('(').map_or("", |(_, name)| name).to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after the name.
    (
        name,
        std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10),
    )
}

/// A process's resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM`).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }
}

/// Sends `child` SIGTERM: a `sluice` process drains what it holds and exits.
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -TERM {}", child.id());
    Ok(())
}

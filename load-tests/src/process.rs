//! `sluice` processes a scenario starts as an operator would (`sluice engine`, `sluice
//! worker`), and what they hold in memory.
//!
//! Needs the `sluice` binary beside `sluice-load`: `cargo build --release -p sluice -p sluice-load`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `sluice ROLE` as every process of a deployment runs: its data directory
/// `<dir>/<name>`, the shared keys in `<dir>/keys` (the engine signs with them, the worker
/// verifies), the `load` pack, warnings only.
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
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
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

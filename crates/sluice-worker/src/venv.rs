//! Per-pack virtualenvs: a pack's `requirements.txt` installed into a virtualenv of its
//! own, which its python actions run in.
//!
//! A virtualenv is named by its pack and the SHA-256 of the requirements
//! (`<venvs>/<pack>-<hash>`), so every version of a pack with the same requirements shares
//! one, and a change of requirements gets a new one. It is built once, however many
//! executions need it at the same moment: the first builds, the others wait for it. It is
//! built beside its place and renamed into it when pip succeeded, so a half-built one is
//! never used. A build that fails fails the executions that needed it with pip's own error,
//! and is tried again by the next one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sha2::{Digest, Sha256};
use sluice_telemetry::metrics;
use tokio::process::Command;
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// How much of pip's output an error keeps (its end, where pip says what failed).
const PIP_ERROR_TAIL: usize = 4 * 1024;

/// The virtualenvs of one worker.
#[derive(Debug)]
pub struct Venvs {
    dir: PathBuf,
    building: Mutex<HashMap<PathBuf, Arc<OnceCell<PathBuf>>>>,
}

impl Venvs {
    /// Virtualenvs kept under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            building: Mutex::default(),
        }
    }

    /// The python interpreter to run pack `pack`'s actions with: its virtualenv's when
    /// `pack_dir` has a `requirements.txt` (built first if need be), else `None`.
    pub async fn python_for(&self, pack: &str, pack_dir: &Path) -> Result<Option<PathBuf>, String> {
        let requirements = pack_dir.join("requirements.txt");
        let text = match std::fs::read(&requirements) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", requirements.display())),
        };
        let hash = hex::encode(Sha256::digest(&text));
        let place = self.dir.join(format!("{pack}-{}", &hash[..16]));
        let python = place.join("bin").join("python");
        if python.is_file() {
            return Ok(Some(python));
        }
        let cell = self
            .building
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(place.clone())
            .or_default()
            .clone();
        let built = cell
            .get_or_try_init(|| build(pack, &requirements, &place))
            .await?;
        Ok(Some(built.join("bin").join("python")))
    }
}

/// Builds the virtualenv for `requirements` at `place`; returns `place`.
async fn build(pack: &str, requirements: &Path, place: &Path) -> Result<PathBuf, String> {
    if place.join("bin").join("python").is_file() {
        return Ok(place.to_owned());
    }
    let parent = place.parent().unwrap_or(place);
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a directory in {}: {e}", parent.display()))?;
    let started = Instant::now();
    info!(pack, requirements = %requirements.display(), "building the pack's virtualenv");
    let venv = staging.path().join("venv");
    let outcome = async {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .await
            .map_err(|e| format!("python3 -m venv failed: {e}"))?;
        run(Command::new(venv.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .arg("-r")
            .arg(requirements))
        .await
        .map_err(|e| format!("pip could not install {}: {e}", requirements.display()))
    }
    .await;
    if let Err(e) = outcome {
        metrics().virtualenv_builds.inc(["failed"]);
        warn!(pack, error = %e, "the pack's virtualenv could not be built");
        return Err(format!("the virtualenv of pack {pack}: {e}"));
    }
    // Another worker sharing the directory may have finished first: then its is used.
    if let Err(e) = std::fs::rename(&venv, place)
        && !place.join("bin").join("python").is_file()
    {
        metrics().virtualenv_builds.inc(["failed"]);
        return Err(format!(
            "cannot move the virtualenv into {}: {e}",
            place.display()
        ));
    }
    metrics().virtualenv_builds.inc(["built"]);
    info!(pack, place = %place.display(), elapsed_ms = started.elapsed().as_millis() as u64, "pack virtualenv built");
    Ok(place.to_owned())
}

/// Runs a command to its end; the error is the end of what it printed.
async fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    let text = text.trim();
    let cut = text.len().saturating_sub(PIP_ERROR_TAIL);
    let cut = (cut..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    Err(format!("{} ({})", &text[cut..], output.status))
}

//! Packs at run time: each version published to the packs object store under its digest,
//! and packs installed, reloaded and removed without a restart.
//!
//! A change is put in force whole or not at all. The packs are loaded again from their
//! directories; if a pack in force would be left out, nothing changes and every problem is
//! returned. Otherwise each pack's bundle is published, every action's supervisor is given
//! its new definition (its queue and its order stay; executions admitted already keep the
//! definition, and the pack version, they were admitted with), supervisors start for new
//! actions, and the new catalog replaces the old.
//!
//! Installed packs live in one directory (`<data dir>/packs` for `sluice up`), loaded after
//! the `--packs` directories; a pack is installed by staging its files beside that
//! directory's packs, loading them as they would be loaded, and renaming them into place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_bus::packs::PackStore;
use sluice_pack::bundle::{self, Bundle};
use sluice_pack::{BrokenPack, Catalog, LoadError};
use tracing::{info, warn};

/// Where the engine's packs come from.
#[derive(Debug, Clone, Default)]
pub struct PackSources {
    /// Directories of packs, or single packs (`--packs`).
    pub roots: Vec<PathBuf>,
    /// Where packs installed through the API go; loaded after `roots`. Without it, packs
    /// can be reloaded but not installed or removed.
    pub installed: Option<PathBuf>,
    /// Where pack configurations are: `<configs>/<pack>.yaml` (`--configs`).
    pub configs: Option<PathBuf>,
}

impl PackSources {
    /// Every root to load, the installed directory last.
    pub fn all_roots(&self) -> Vec<PathBuf> {
        self.roots.iter().chain(&self.installed).cloned().collect()
    }
}

/// What a pack is installed from.
#[derive(Debug, Clone)]
pub enum PackSource {
    /// A directory on the engine's host, copied.
    Dir(PathBuf),
    /// A `.tar.gz` holding the pack at its top or in one top-level directory.
    Archive(Vec<u8>),
    /// A git repository, cloned (`reference`: a branch or tag).
    Git {
        url: String,
        reference: Option<String>,
    },
}

/// Why a pack change was not made.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0}")]
    NotFound(String),
    /// Packs that would not load; nothing changed.
    #[error("{}", broken_summary(.0))]
    Broken(Vec<BrokenPack>),
    #[error("{0}")]
    Conflict(String),
    /// The source cannot be installed (not a pack, not an archive, a clone that failed).
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Internal(String),
}

fn broken_summary(broken: &[BrokenPack]) -> String {
    let problems: Vec<String> = broken
        .iter()
        .flat_map(|b| {
            b.errors
                .iter()
                .map(move |e| format!("pack {}: {e}", b.name))
        })
        .collect();
    format!(
        "nothing changed: {} problem(s): {}",
        problems.len(),
        problems.join("; ")
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> PackError {
    PackError::Internal(format!("{what}: {e}"))
}

/// Publishes every pack's bundle and records its digest in the catalog.
pub(crate) async fn publish(store: &PackStore, catalog: &mut Catalog) -> Result<(), PackError> {
    let dirs: Vec<(String, PathBuf)> = catalog
        .packs
        .values()
        .map(|p| (p.name.clone(), p.dir.clone()))
        .collect();
    for (name, dir) in dirs {
        let bundle = tokio::task::spawn_blocking(move || Bundle::of_dir(&dir))
            .await
            .map_err(|e| internal("bundling a pack", e))?
            .map_err(|e| internal(&format!("bundling pack {name}"), e))?;
        let stored = store
            .publish(&name, &bundle.digest, &bundle.bytes)
            .await
            .map_err(|e| internal(&format!("publishing pack {name}"), e))?;
        if stored {
            info!(pack = %name, digest = %bundle.digest, bytes = bundle.bytes.len(), "pack version published");
        }
        catalog.set_pack_digest(&name, &bundle.digest);
    }
    Ok(())
}

/// Loads the packs of `roots` with their configurations from `configs`, off the async
/// threads.
pub(crate) async fn load(
    roots: Vec<PathBuf>,
    configs: Option<PathBuf>,
) -> Result<Catalog, PackError> {
    tokio::task::spawn_blocking(move || {
        sluice_pack::load_packs_with_configs(&roots, configs.as_deref())
    })
    .await
    .map_err(|e| internal("loading packs", e))
}

/// The packs in force in `current` that `loaded` leaves out.
pub(crate) fn newly_broken(current: &Catalog, loaded: &Catalog) -> Vec<BrokenPack> {
    loaded
        .broken
        .iter()
        .filter(|b| current.packs.contains_key(&b.name))
        .cloned()
        .collect()
}

/// A directory beside the installed packs, which loading passes over (no `pack.yaml`).
fn scratch(installed: &Path, purpose: &str) -> Result<PathBuf, PackError> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| internal("randomness", e))?;
    Ok(installed.join(format!(".{purpose}-{}", hex::encode(bytes))))
}

/// Removes a directory, logging rather than failing: it is out of the way already.
pub(crate) fn discard(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), error = %e, "could not remove a directory left by a pack change");
    }
}

/// A pack staged for installing: its files, in a scratch directory of their own.
pub(crate) struct Staged {
    /// The scratch directory; removed when the install ends either way.
    pub(crate) scratch: PathBuf,
    /// The pack's directory inside it.
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
}

/// Puts the files of `source` in a scratch directory under `installed`.
pub(crate) async fn stage(installed: &Path, source: PackSource) -> Result<Staged, PackError> {
    std::fs::create_dir_all(installed)
        .map_err(|e| internal(&format!("creating {}", installed.display()), e))?;
    let scratch = scratch(installed, "staging")?;
    let staged = stage_into(&scratch, source).await;
    let dir = match staged {
        Ok(dir) => dir,
        Err(e) => {
            if scratch.exists() {
                discard(&scratch);
            }
            return Err(e);
        }
    };
    match sluice_pack::pack_name(&dir) {
        Ok(name) => Ok(Staged { scratch, dir, name }),
        Err(e) => {
            discard(&scratch);
            Err(PackError::Broken(vec![BrokenPack {
                name: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                dir,
                errors: vec![e],
            }]))
        }
    }
}

async fn stage_into(scratch: &Path, source: PackSource) -> Result<PathBuf, PackError> {
    match source {
        PackSource::Dir(from) => {
            if !from.join("pack.yaml").is_file() {
                return Err(PackError::Source(format!(
                    "{} is not a pack: it has no pack.yaml",
                    from.display()
                )));
            }
            let to = scratch.join("pack");
            tokio::task::spawn_blocking(move || bundle::copy_dir(&from, &to).map(|()| to))
                .await
                .map_err(|e| internal("copying a pack", e))?
                .map_err(|e| PackError::Source(format!("cannot copy the pack: {e}")))
        }
        PackSource::Archive(bytes) => {
            let into = scratch.join("archive");
            let at = into.clone();
            tokio::task::spawn_blocking(move || bundle::extract(&bytes, &at))
                .await
                .map_err(|e| internal("unpacking an archive", e))?
                .map_err(|e| PackError::Source(format!("the upload: {e}")))?;
            pack_root(&into)
        }
        PackSource::Git { url, reference } => {
            let into = scratch.join("git");
            clone(&url, reference.as_deref(), &into).await?;
            let _ = std::fs::remove_dir_all(into.join(".git"));
            pack_root(&into)
        }
    }
}

/// The pack in an unpacked archive or clone: at its top, or in its one top-level directory.
fn pack_root(dir: &Path) -> Result<PathBuf, PackError> {
    if dir.join("pack.yaml").is_file() {
        return Ok(dir.to_owned());
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| internal("reading an unpacked pack", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [one] if one.join("pack.yaml").is_file() => Ok(one.clone()),
        _ => Err(PackError::Source(
            "no pack.yaml at the top of the source or in its one top-level directory".into(),
        )),
    }
}

/// How long a clone may take.
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

/// `git clone --depth 1` of a URL given by an API caller: passed as an argument, never to a
/// shell, after `--`; only network and file transports, no prompts.
async fn clone(url: &str, reference: Option<&str>, into: &Path) -> Result<(), PackError> {
    let transports = ["https://", "http://", "ssh://", "git://", "file://"];
    let scp_like = url.contains('@') && url.contains(':') && !url.contains("::");
    if url.starts_with('-') || !(transports.iter().any(|t| url.starts_with(t)) || scp_like) {
        return Err(PackError::Source(format!(
            "git: {url:?} is not a repository URL this engine clones (https://, http://, ssh://, git://, file:// or user@host:path)"
        )));
    }
    if reference.is_some_and(|r| r.starts_with('-') || r.is_empty()) {
        return Err(PackError::Source(
            "git: `ref` must name a branch or tag".into(),
        ));
    }
    let mut command = tokio::process::Command::new("git");
    command
        .args([
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "protocol.fd.allow=never",
        ])
        .args(["clone", "--quiet", "--depth", "1"]);
    if let Some(reference) = reference {
        command.args(["--branch", reference]);
    }
    command
        .arg("--")
        .arg(url)
        .arg(into)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(CLONE_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(PackError::Source(format!(
                "git clone of {url} took longer than {} s",
                CLONE_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackError::Source(
                "git is not installed on the engine's host".into(),
            ));
        }
        Ok(Err(e)) => return Err(internal("starting git", e)),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(PackError::Source(format!(
            "git clone of {url} failed: {}",
            stderr.trim()
        )));
    }
    Ok(())
}

/// The roots to load with `replacing` in place of the installed pack `name`: the `--packs`
/// roots, every installed pack but `name`, and `replacing` if given.
pub(crate) fn roots_with(
    sources: &PackSources,
    installed: &Path,
    name: &str,
    replacing: Option<&Path>,
) -> Result<Vec<PathBuf>, PackError> {
    let mut roots = sources.roots.clone();
    if installed.is_dir() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(installed)
            .map_err(|e| internal(&format!("reading {}", installed.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("pack.yaml").is_file() && !p.ends_with(name))
            .collect();
        dirs.sort();
        roots.extend(dirs);
    }
    roots.extend(replacing.map(Path::to_owned));
    Ok(roots)
}

/// The problems of a staged pack, with their files named where they will be installed.
pub(crate) fn as_installed(mut broken: BrokenPack, staged: &Path, target: &Path) -> BrokenPack {
    let relocate = |file: &Path| {
        file.strip_prefix(staged)
            .map_or_else(|_| file.to_owned(), |rest| target.join(rest))
    };
    broken.errors = broken
        .errors
        .into_iter()
        .map(|e| LoadError {
            file: relocate(&e.file),
            ..e
        })
        .collect();
    broken.dir = target.to_owned();
    broken
}

/// Moves `from` to `to`, replacing it; what was at `to` is moved aside and returned.
pub(crate) fn swap_in(
    installed: &Path,
    from: &Path,
    to: &Path,
) -> Result<Option<PathBuf>, PackError> {
    let aside = if to.exists() {
        let aside = scratch(installed, "replaced")?;
        std::fs::rename(to, &aside)
            .map_err(|e| internal(&format!("moving {} aside", to.display()), e))?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(from, to) {
        if let Some(aside) = &aside {
            let _ = std::fs::rename(aside, to);
        }
        return Err(internal(&format!("moving the pack to {}", to.display()), e));
    }
    Ok(aside)
}

/// Whether `dir` is a pack installed through the API (it is in `installed`).
pub(crate) fn is_installed(installed: &Path, dir: &Path) -> bool {
    let installed = installed
        .canonicalize()
        .unwrap_or_else(|_| installed.to_owned());
    dir.parent().is_some_and(|parent| parent == installed)
}

/// Shared for the engine's one pack change at a time.
pub(crate) type Lock = Arc<tokio::sync::Mutex<()>>;

//! The pack versions a worker has fetched from the packs object store, unpacked under its
//! cache directory as `<pack>/<digest>/`.
//!
//! A version is fetched once, however many executions of it arrive together: the first
//! fetches, the others wait for it. Its bytes are checked against the digest the run
//! message names before they are unpacked, and a version appears in the cache only whole
//! (unpacked beside it, then renamed into place), so a worker killed mid-fetch leaves
//! nothing half-written to be run later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_bus::packs::PackStore;
use sluice_bus::{Bus, BusError};
use tokio::sync::OnceCell;
use tracing::info;

/// Why a version could not be had.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// NATS did not answer: worth trying again.
    Bus(BusError),
    /// The version cannot be used as it is.
    Unusable(String),
}

pub(crate) struct PackCache {
    bus: Bus,
    dir: PathBuf,
    store: OnceCell<PackStore>,
    versions: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
}

impl PackCache {
    pub(crate) fn new(bus: Bus, dir: PathBuf) -> Self {
        Self {
            bus,
            dir,
            store: OnceCell::new(),
            versions: Mutex::default(),
        }
    }

    /// The `actions/` directory of a pack version, fetched first if need be.
    pub(crate) async fn actions_dir(
        &self,
        pack: &str,
        digest: &str,
    ) -> Result<PathBuf, FetchError> {
        let cell = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{pack}/{digest}"))
            .or_default()
            .clone();
        let dir = cell.get_or_try_init(|| self.fetch(pack, digest)).await?;
        Ok(dir.join("actions"))
    }

    async fn fetch(&self, pack: &str, digest: &str) -> Result<PathBuf, FetchError> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
        };
        if !safe(pack) || !safe(digest) {
            return Err(FetchError::Unusable(format!(
                "pack {pack:?} version {digest:?} is not a name this worker caches"
            )));
        }
        let target = self.dir.join(pack).join(digest.replace(':', "-"));
        if target.is_dir() {
            return Ok(target);
        }
        let store = self
            .store
            .get_or_try_init(|| PackStore::open(&self.bus))
            .await
            .map_err(FetchError::Bus)?;
        let bytes = store
            .fetch(pack, digest)
            .await
            .map_err(FetchError::Bus)?
            .ok_or_else(|| {
                FetchError::Unusable(format!(
                    "pack {pack} version {digest} is not in the packs object store (removed, or more than {} versions old)",
                    sluice_bus::packs::KEPT_VERSIONS
                ))
            })?;
        let (digest_owned, target_owned) = (digest.to_owned(), target.clone());
        let size = bytes.len();
        tokio::task::spawn_blocking(move || unpack_into(&bytes, &digest_owned, &target_owned))
            .await
            .map_err(|e| FetchError::Unusable(format!("unpacking pack {pack}: {e}")))?
            .map_err(|e| FetchError::Unusable(format!("pack {pack} version {digest}: {e}")))?;
        info!(pack, digest, bytes = size, dir = %target.display(), "pack version fetched");
        Ok(target)
    }
}

/// Unpacks beside `target`, then renames into place.
fn unpack_into(bytes: &[u8], digest: &str, target: &Path) -> Result<(), String> {
    let parent = target
        .parent()
        .ok_or_else(|| format!("{} has no parent", target.display()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot create a directory in {}: {e}", parent.display()))?;
    let unpacked = scratch.path().join("pack");
    sluice_pack::bundle::unpack(bytes, digest, &unpacked)?;
    match std::fs::rename(&unpacked, target) {
        Ok(()) => Ok(()),
        // Another worker process sharing the cache put the same version there first.
        Err(_) if target.is_dir() => Ok(()),
        Err(e) => Err(format!("cannot move the pack to {}: {e}", target.display())),
    }
}

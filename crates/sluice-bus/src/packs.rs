//! The packs object store, `sluice-packs`: every version of every pack the engine has put
//! in force, as its bundle (see `sluice_pack::bundle`), under `<pack>/<digest>`. The engine
//! publishes; workers fetch the version a run message names, so they need no pack on disk.
//!
//! A version stays until [`KEPT_VERSIONS`] newer ones of the same pack are published, so an
//! execution admitted before a few reloads still finds the files it was admitted with.

use async_nats::jetstream::{object_store, stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use futures::StreamExt;

use crate::Bus;
use crate::buckets::write_error;
use crate::error::BusError;
use crate::names::PACKS_BUCKET;

/// Versions of each pack kept in the bucket, the one in force included.
pub const KEPT_VERSIONS: usize = 10;

/// When a version was published (RFC 3339), in its object's metadata.
const PUBLISHED: &str = "published";

/// The packs bucket.
#[derive(Clone)]
pub struct PackStore {
    store: object_store::ObjectStore,
    /// The bucket's stream, whose metadata subjects name the objects it holds.
    stream: stream::Stream<()>,
}

fn object_name(pack: &str, digest: &str) -> String {
    format!("{pack}/{digest}")
}

impl PackStore {
    /// The bucket, created if missing (the engine).
    pub async fn create(bus: &Bus) -> Result<Self, BusError> {
        let store = crate::buckets::create(
            bus,
            PACKS_BUCKET,
            "Sluice: pack versions, as bundles by digest",
            std::time::Duration::ZERO,
        )
        .await?;
        Self::with_stream(bus, store).await
    }

    async fn with_stream(bus: &Bus, store: object_store::ObjectStore) -> Result<Self, BusError> {
        let stream = bus
            .jetstream()
            .get_stream_no_info(format!("OBJ_{PACKS_BUCKET}"))
            .await
            .map_err(|e| BusError::setup(format!("the {PACKS_BUCKET} object store"), e))?;
        Ok(Self { store, stream })
    }

    /// The bucket the engine made (a worker).
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let store = crate::buckets::open(bus, PACKS_BUCKET).await?;
        Self::with_stream(bus, store).await
    }

    /// Stores a version unless it is there already; `true` if it was stored now. Older
    /// versions of the pack past [`KEPT_VERSIONS`] are deleted.
    pub async fn publish(&self, pack: &str, digest: &str, bytes: &[u8]) -> Result<bool, BusError> {
        let name = object_name(pack, digest);
        if self.store.info(&name).await.is_ok_and(|info| !info.deleted) {
            return Ok(false);
        }
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!("pack {pack}")),
            metadata: [(PUBLISHED.to_owned(), chrono::Utc::now().to_rfc3339())].into(),
            ..Default::default()
        };
        let mut data = bytes;
        self.store
            .put(meta, &mut data)
            .await
            .map_err(|e| write_error(PACKS_BUCKET, &name, e))?;
        self.prune(pack, digest).await?;
        Ok(true)
    }

    /// The bundle of one version; `None` if the bucket does not hold it.
    pub async fn fetch(&self, pack: &str, digest: &str) -> Result<Option<Vec<u8>>, BusError> {
        crate::buckets::fetch(&self.store, PACKS_BUCKET, &object_name(pack, digest)).await
    }

    /// The digests of a pack's versions held, oldest first.
    ///
    /// Read from the stream's metadata subjects, which carry each object's name (base64),
    /// and the last message on each of this pack's, every one a request with a time limit.
    /// The object store's own listing is not used: it follows an ordered consumer until the
    /// server says nothing is pending, and nats-server 2.9 may count as pending messages
    /// that never come, so that listing can wait forever.
    pub async fn versions(&self, pack: &str) -> Result<Vec<String>, BusError> {
        let what = || format!("the {PACKS_BUCKET} object store's objects");
        let prefix = format!("{pack}/");
        let meta = format!("$O.{PACKS_BUCKET}.M.");
        let mut subjects = self
            .stream
            .info_with_subjects(format!("{meta}>"))
            .await
            .map_err(|e| BusError::read(what(), e))?;
        let mut found = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| BusError::read(what(), e))?;
            let of_pack = subject
                .strip_prefix(&meta)
                .and_then(|name| URL_SAFE.decode(name).ok())
                .is_some_and(|name| name.starts_with(prefix.as_bytes()));
            if !of_pack {
                continue;
            }
            let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(last) => last,
                // Deleted since the subjects were read.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(BusError::read(what(), e)),
            };
            let info: object_store::ObjectInfo = serde_json::from_slice(&last.payload)
                .map_err(|e| BusError::read(format!("{} on {subject}", what()), e))?;
            if info.deleted {
                continue;
            }
            if let Some(digest) = info.name.strip_prefix(&prefix) {
                let published = info.metadata.get(PUBLISHED).cloned().unwrap_or_default();
                found.push((published, digest.to_owned()));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, digest)| digest).collect())
    }

    /// Deletes the pack's versions older than the newest [`KEPT_VERSIONS`], never `current`.
    async fn prune(&self, pack: &str, current: &str) -> Result<(), BusError> {
        let versions = self.versions(pack).await?;
        let excess = versions.len().saturating_sub(KEPT_VERSIONS);
        for digest in versions.iter().take(excess).filter(|d| *d != current) {
            let name = object_name(pack, digest);
            self.store
                .delete(&name)
                .await
                .map_err(|e| write_error(PACKS_BUCKET, &name, e))?;
        }
        Ok(())
    }
}

//! The datastore's JetStream key-value bucket, `sluice-datastore`: one entry per key,
//! its revision the bucket's, so a write can be made conditional on the revision read.
//! The engine creates the bucket; anyone with read access to it (workers) can read it.

use async_nats::jetstream::{kv, stream};
use futures::StreamExt;
use sluice_core::datastore::{KeyEntry, KeyName};

use crate::Bus;
use crate::error::BusError;
use crate::names::DATASTORE_BUCKET;

/// An entry with the bucket revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub key: KeyName,
    pub entry: KeyEntry,
    pub revision: u64,
}

/// A change seen by [`Datastore::watch`].
#[derive(Debug, Clone)]
pub enum Change {
    Put(Stored),
    Deleted(KeyName),
}

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{key} is at revision {found}, not {expected}")]
    Conflict {
        key: KeyName,
        expected: u64,
        found: u64,
    },
    #[error("{0} already exists")]
    Exists(KeyName),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The datastore bucket.
#[derive(Clone)]
pub struct Datastore {
    kv: kv::Store,
}

fn read_error(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::read(format!("datastore key {key}"), e)
}

fn decode(key: &str, value: &[u8]) -> Result<KeyEntry, BusError> {
    serde_json::from_slice(value).map_err(|e| read_error(key, e))
}

/// A key-value bucket keeping one value per key, created if missing. Its stream is declared
/// directly, as a key-value bucket's is, so servers from 2.9 on take it (async-nats'
/// `create_key_value` sends settings 2.9 does not answer in a shape the client reads).
pub(crate) async fn create_bucket(
    bus: &Bus,
    bucket: &str,
    description: &str,
    max_value_size: i32,
) -> Result<kv::Store, BusError> {
    let js = bus.jetstream();
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let what = || format!("the {bucket} bucket");
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_message_size: max_value_size,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: bus.stream_replicas(),
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::setup(what(), e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| BusError::setup(what(), e))
}

impl Datastore {
    /// Creates the bucket if it is missing (the engine's connection). The bucket's stream
    /// is declared directly, as a key-value bucket's is, so servers from 2.9 on take it.
    pub async fn create(bus: &Bus) -> Result<Self, BusError> {
        let kv = create_bucket(
            bus,
            DATASTORE_BUCKET,
            "Sluice's datastore (st2kv): keys and sealed secrets",
            1024 * 1024,
        )
        .await?;
        Ok(Self { kv })
    }

    /// The entry of `key`, expired or not; `None` if there is none.
    pub async fn get(&self, key: &KeyName) -> Result<Option<Stored>, BusError> {
        let name = key.to_string();
        let Some(entry) = self
            .kv
            .entry(name.clone())
            .await
            .map_err(|e| read_error(&name, e))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        Ok(Some(Stored {
            key: key.clone(),
            entry: decode(&name, &entry.value)?,
            revision: entry.revision,
        }))
    }

    /// Writes `entry`: unconditionally (`expected: None`), only if the key does not exist
    /// (`Some(0)`), or only if it is at revision `n` (`Some(n)`). Returns the new revision.
    pub async fn put(
        &self,
        key: &KeyName,
        entry: &KeyEntry,
        expected: Option<u64>,
    ) -> Result<u64, WriteError> {
        let name = key.to_string();
        let value: bytes::Bytes = serde_json::to_vec(entry)
            .map_err(|e| read_error(&name, e))?
            .into();
        let publish = |e: Box<dyn std::error::Error + Send + Sync>| BusError::Publish {
            subject: format!("datastore key {name}"),
            source: e,
            transient: true,
        };
        match expected {
            None => Ok(self
                .kv
                .put(&name, value)
                .await
                .map_err(|e| publish(e.into()))?),
            Some(0) => match self.kv.create(&name, value).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(WriteError::Exists(key.clone()))
                }
                Err(e) => Err(publish(e.into()).into()),
            },
            Some(revision) => match self.kv.update(&name, value, revision).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    let found = self.get(key).await?.map_or(0, |s| s.revision);
                    Err(WriteError::Conflict {
                        key: key.clone(),
                        expected: revision,
                        found,
                    })
                }
                Err(e) => Err(publish(e.into()).into()),
            },
        }
    }

    /// Deletes `key`; only at revision `expected` when given.
    pub async fn delete(&self, key: &KeyName, expected: Option<u64>) -> Result<(), WriteError> {
        let name = key.to_string();
        let result = match expected {
            None => self.kv.purge(&name).await.map_err(|e| e.to_string()),
            Some(revision) => self
                .kv
                .purge_expect_revision(&name, Some(revision))
                .await
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(_) if expected.is_some() => {
                let found = self.get(key).await?.map_or(0, |s| s.revision);
                Err(WriteError::Conflict {
                    key: key.clone(),
                    expected: expected.unwrap_or_default(),
                    found,
                })
            }
            Err(e) => Err(BusError::Publish {
                subject: format!("datastore key {name}"),
                source: e.into(),
                transient: true,
            }
            .into()),
        }
    }

    /// Every entry now in the bucket, expired ones included, by key.
    pub async fn list(&self) -> Result<Vec<Stored>, BusError> {
        let mut keys = self.kv.keys().await.map_err(|e| read_error("(all)", e))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| read_error("(all)", e))?);
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Ok(key) = name.parse::<KeyName>() else {
                continue;
            };
            if let Some(stored) = self.get(&key).await? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    /// Every entry now, then every change, as they happen.
    pub async fn watch(
        &self,
    ) -> Result<futures::stream::BoxStream<'static, Result<Change, BusError>>, BusError> {
        let watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| BusError::setup("a watch on the datastore", e))?;
        Ok(watch
            .filter_map(|entry| async move {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Some(Err(read_error("(watch)", e))),
                };
                let key = entry.key.parse::<KeyName>().ok()?;
                Some(match entry.operation {
                    kv::Operation::Put => decode(&entry.key, &entry.value).map(|e| {
                        Change::Put(Stored {
                            key,
                            entry: e,
                            revision: entry.revision,
                        })
                    }),
                    kv::Operation::Delete | kv::Operation::Purge => Ok(Change::Deleted(key)),
                })
            })
            .boxed())
    }
}

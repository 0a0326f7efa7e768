//! The datastore as the engine serves it: writes and reads for the API (secret values
//! sealed on the way in, masked on the way out), a live copy of every key for templates,
//! and the removal of expired keys.
//!
//! The copy follows the bucket with a watch, so a key set through any engine's API, or
//! straight into the bucket, is seen by the next template that renders.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
pub use sluice_bus::datastore::WriteError;
use sluice_bus::datastore::{Change, Datastore, Stored};
use sluice_core::datastore::{
    KeyEntry, KeyName, ServiceEntry, ServiceOp, ServiceReply, ServiceRequest,
};
use sluice_core::secrets::{self, Keyring};
use sluice_pack::datastore::KeyLookup;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::timing::STORE_RETRY;

/// How often expired keys are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The engine's copy of the datastore.
pub(crate) struct KeyCache {
    entries: RwLock<HashMap<KeyName, Stored>>,
    keyring: Arc<Keyring>,
}

impl KeyCache {
    pub(crate) fn new(keyring: Arc<Keyring>) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            keyring,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyName, Stored>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `stored` unless the copy holds a later revision of its key already: the
    /// engine's own writes land at once, and the watch catching up changes nothing.
    fn put(&self, stored: Stored) {
        let mut entries = self.write();
        match entries.get(&stored.key) {
            Some(held) if held.revision > stored.revision => {}
            _ => {
                entries.insert(stored.key.clone(), stored);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyName, Stored>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, now: DateTime<Utc>) -> Vec<Stored> {
        self.read()
            .values()
            .filter(|s| !s.entry.is_live(now))
            .cloned()
            .collect()
    }
}

impl KeyLookup for KeyCache {
    fn value(&self, key: &KeyName) -> Option<Value> {
        self.read()
            .get(key)
            .filter(|s| s.entry.is_live(Utc::now()))
            .map(|s| s.entry.value.clone())
    }

    fn open(&self, sealed: &str) -> Result<Value, String> {
        self.keyring.unseal(sealed).map_err(|e| e.to_string())
    }
}

/// Follows the bucket and deletes expired keys, until `cancel`.
pub(crate) async fn run(
    keys: Keys,
    cache: Arc<KeyCache>,
    requests: async_nats::Subscriber,
    client: async_nats::Client,
    cancel: CancellationToken,
) {
    let store = keys.store.clone();
    tokio::join!(
        follow(store.clone(), cache.clone(), cancel.clone()),
        sweep(store, cache, cancel.clone()),
        serve(keys, requests, client, cancel)
    );
}

/// Answers the datastore requests of running actions (StackStorm's `action_service`),
/// which their workers send: reads, writes, deletes and listings, a secret value sealed
/// both ways. Every write is logged with the execution that made it.
async fn serve(
    keys: Keys,
    mut requests: async_nats::Subscriber,
    client: async_nats::Client,
    cancel: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            message = requests.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let reply = match serde_json::from_slice::<ServiceRequest>(&message.payload) {
            Ok(request) => keys.serve(request).await,
            Err(e) => ServiceReply::Error(format!("unreadable datastore request: {e}")),
        };
        let payload = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = client.publish(reply_to, payload.into()).await {
            warn!(error = %e, "a datastore answer could not be sent");
        }
    }
}

/// Keeps `cache` equal to the bucket until `cancel`; a broken watch is set up again.
async fn follow(store: Datastore, cache: Arc<KeyCache>, cancel: CancellationToken) {
    loop {
        let mut changes = match store.watch().await {
            Ok(changes) => changes,
            Err(e) => {
                warn!(error = %e, "cannot watch the datastore; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(STORE_RETRY) => continue,
                }
            }
        };
        cache.write().clear();
        loop {
            let change = tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.next() => change,
            };
            match change {
                Some(Ok(Change::Put(stored))) => cache.put(stored),
                Some(Ok(Change::Deleted(key))) => {
                    cache.write().remove(&key);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "datastore watch failed; watching again");
                    break;
                }
                None => break,
            }
        }
    }
}

/// Deletes keys whose time is up (only at the revision that expired, so a key set again
/// meanwhile stays).
async fn sweep(store: Datastore, cache: Arc<KeyCache>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for stored in cache.expired(Utc::now()) {
            match store.delete(&stored.key, Some(stored.revision)).await {
                Ok(()) => debug!(key = %stored.key, "expired datastore key deleted"),
                Err(WriteError::Conflict { .. }) => {}
                Err(e) => warn!(key = %stored.key, error = %e, "expired key not deleted yet"),
            }
        }
    }
}

/// A key as the API shows it: a secret value masked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyView {
    pub key: String,
    pub scope: String,
    pub name: String,
    pub value: Value,
    pub secret: bool,
    pub revision: u64,
    pub expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl KeyView {
    fn of(stored: &Stored, value: Value) -> Self {
        Self {
            key: stored.key.to_string(),
            scope: match &stored.key.scope {
                sluice_core::datastore::KeyScope::System => "system".into(),
                sluice_core::datastore::KeyScope::Pack(_) => "pack".into(),
            },
            name: stored.key.name.clone(),
            value,
            secret: stored.entry.secret,
            revision: stored.revision,
            expires_at: stored.entry.expires_at,
            updated_at: stored.entry.updated_at,
            updated_by: stored.entry.updated_by.clone(),
        }
    }

    fn masked(stored: &Stored) -> Self {
        Self::of(stored, secrets::masked(&stored.entry.value))
    }
}

/// Why a datastore request was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key {0}")]
    NotFound(KeyName),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Secrets(String),
    #[error(transparent)]
    Bus(#[from] sluice_bus::BusError),
}

/// A value to write.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub value: Value,
    pub secret: bool,
    pub ttl: Option<Duration>,
    /// Write only if the key is at this revision (0: only if it does not exist).
    pub revision: Option<u64>,
}

/// The datastore operations the API offers.
#[derive(Clone)]
pub struct Keys {
    pub(crate) store: Datastore,
    pub(crate) keyring: Arc<Keyring>,
    /// The engine's copy, which its own writes reach at once: a key set through the API is
    /// seen by the next template, without waiting for the watch.
    pub(crate) cache: Arc<KeyCache>,
}

impl Keys {
    /// Sets `key`; a secret value is sealed before it leaves the engine.
    pub async fn set(&self, key: &KeyName, new: NewKey, by: &str) -> Result<KeyView, KeyError> {
        // A value sealed already (an action's, sealed by its worker) is kept as it is.
        let value = if new.secret && !secrets::is_sealed(&new.value) {
            Value::String(
                self.keyring
                    .seal(&new.value)
                    .map_err(|e| KeyError::Secrets(e.to_string()))?,
            )
        } else {
            new.value
        };
        let now = Utc::now();
        let entry = KeyEntry {
            value,
            secret: new.secret,
            expires_at: new
                .ttl
                .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
                .map(|ttl| now + ttl),
            updated_at: now,
            updated_by: by.to_owned(),
        };
        let revision = self.store.put(key, &entry, new.revision).await?;
        info!(key = %key, secret = entry.secret, by, revision, "datastore key set");
        let stored = Stored {
            key: key.clone(),
            entry,
            revision,
        };
        let view = KeyView::masked(&stored);
        self.cache.put(stored);
        Ok(view)
    }

    async fn live(&self, key: &KeyName) -> Result<Stored, KeyError> {
        self.store
            .get(key)
            .await?
            .filter(|s| s.entry.is_live(Utc::now()))
            .ok_or_else(|| KeyError::NotFound(key.clone()))
    }

    /// A key, its secret value masked.
    pub async fn get(&self, key: &KeyName) -> Result<KeyView, KeyError> {
        Ok(KeyView::masked(&self.live(key).await?))
    }

    /// A key with its secret value in clear; recorded in the log (who, which key — never
    /// the value).
    pub async fn open(&self, key: &KeyName, by: &str) -> Result<KeyView, KeyError> {
        let stored = self.live(key).await?;
        let value = if stored.entry.secret {
            info!(key = %key, by, "datastore secret read in clear");
            match &stored.entry.value {
                Value::String(sealed) => self
                    .keyring
                    .unseal(sealed)
                    .map_err(|e| KeyError::Secrets(format!("{key}: {e}")))?,
                other => other.clone(),
            }
        } else {
            stored.entry.value.clone()
        };
        Ok(KeyView::of(&stored, value))
    }

    /// A live key's value in clear, for the engine's own use (a webhook's shared secret):
    /// not logged as a person's read.
    pub async fn value_for_engine(&self, key: &KeyName) -> Result<Option<Value>, KeyError> {
        let Some(stored) = self
            .store
            .get(key)
            .await?
            .filter(|s| s.entry.is_live(Utc::now()))
        else {
            return Ok(None);
        };
        match &stored.entry.value {
            Value::String(sealed) if stored.entry.secret => self
                .keyring
                .unseal(sealed)
                .map(Some)
                .map_err(|e| KeyError::Secrets(format!("{key}: {e}"))),
            other => Ok(Some(other.clone())),
        }
    }

    /// Every live key, secret values masked; those whose full name starts with `prefix`.
    pub async fn list(&self, prefix: Option<&str>) -> Result<Vec<KeyView>, KeyError> {
        let now = Utc::now();
        Ok(self
            .store
            .list()
            .await?
            .iter()
            .filter(|s| s.entry.is_live(now))
            .filter(|s| prefix.is_none_or(|p| s.key.to_string().starts_with(p)))
            .map(KeyView::masked)
            .collect())
    }

    pub async fn delete(
        &self,
        key: &KeyName,
        revision: Option<u64>,
        by: &str,
    ) -> Result<(), KeyError> {
        self.live(key).await?;
        self.store.delete(key, revision).await?;
        self.cache.write().remove(key);
        info!(key = %key, by, "datastore key deleted");
        Ok(())
    }

    /// One request of a running action.
    async fn serve(&self, request: ServiceRequest) -> ServiceReply {
        let by = request.caller.clone();
        let key = |name: &str| name.parse::<KeyName>().map_err(|e| e.to_string());
        let entry = |stored: &Stored| ServiceEntry {
            key: stored.key.to_string(),
            value: stored.entry.value.clone(),
            secret: stored.entry.secret,
        };
        let outcome: Result<ServiceReply, String> = async {
            Ok(match request.op {
                ServiceOp::Get { key: name } => match self.live(&key(&name)?).await {
                    Ok(stored) => ServiceReply::Entry(Some(entry(&stored))),
                    Err(KeyError::NotFound(_)) => ServiceReply::Entry(None),
                    Err(e) => return Err(e.to_string()),
                },
                ServiceOp::Set {
                    key: name,
                    value,
                    secret,
                    ttl_secs,
                } => {
                    if secret && !secrets::is_sealed(&value) {
                        return Err("a secret value must arrive sealed".into());
                    }
                    let new = NewKey {
                        value,
                        secret,
                        ttl: ttl_secs.map(Duration::from_secs),
                        revision: None,
                    };
                    self.set(&key(&name)?, new, &by)
                        .await
                        .map_err(|e| e.to_string())?;
                    ServiceReply::Done(true)
                }
                ServiceOp::Delete { key: name } => match self.delete(&key(&name)?, None, &by).await
                {
                    Ok(()) => ServiceReply::Done(true),
                    Err(KeyError::NotFound(_)) => ServiceReply::Done(false),
                    Err(e) => return Err(e.to_string()),
                },
                ServiceOp::List { prefix } => {
                    let now = Utc::now();
                    let entries = self
                        .store
                        .list()
                        .await
                        .map_err(|e| e.to_string())?
                        .iter()
                        .filter(|s| s.entry.is_live(now) && s.key.to_string().starts_with(&prefix))
                        .map(entry)
                        .collect();
                    ServiceReply::Entries(entries)
                }
            })
        }
        .await;
        outcome.unwrap_or_else(ServiceReply::Error)
    }

    /// Seals every secret entry again with the newest key; how many it rewrote.
    pub(crate) async fn reseal(&self) -> Result<u64, KeyError> {
        let mut count = 0;
        for mut stored in self.store.list().await? {
            if !stored.entry.secret {
                continue;
            }
            let changed = self
                .keyring
                .reseal_all(&mut stored.entry.value)
                .map_err(|e| KeyError::Secrets(format!("{}: {e}", stored.key)))?;
            if changed {
                match self
                    .store
                    .put(&stored.key, &stored.entry, Some(stored.revision))
                    .await
                {
                    // Written meanwhile, sealed with the newest key by that write.
                    Ok(_) | Err(WriteError::Conflict { .. }) => count += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(count)
    }
}

//! Leases: which of several engines holds a duty that must be held once (`engine`: the
//! execution core with its supervisors, consumers, timers, sensors and worker monitor).
//!
//! A lease is a key in the key-value bucket `sluice-leases`, whose values live `ttl`
//! (the bucket's `max_age`). An engine takes a lease by creating its key — which fails while
//! another engine's value is there — and keeps it by updating the key, conditional on the
//! revision it last wrote, every quarter of `ttl`. An engine that dies stops renewing, the
//! value expires and a standby's next `create` takes it. The revision the key was created at
//! is the lease's fencing token: JetStream gives every write a higher one, so each new
//! owner's token is higher than every earlier owner's, and the store refuses writes made
//! under an older one ([`sluice_store::Fence`] there).
//!
//! An owner counts its lease from the moment it *sent* its last successful renewal: the
//! server stored that value no earlier, so it expires no earlier than `sent + ttl`. An owner
//! that has not renewed by then gives the lease up itself.

use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Bus;
use crate::error::BusError;

pub const LEASE_BUCKET: &str = "sluice-leases";

/// The lease of the execution core: one engine at a time runs it.
pub const ENGINE_LEASE: &str = "engine";

/// With several engines active at once, the duty they share out (see `shares`): the
/// lease of partition `n` of the actions is `partition.<n>`, and so is its fence in the
/// store.
pub const PARTITION_DUTY: &str = "partition";

/// The lease (and the store fence) of partition `partition` of the actions.
pub fn partition_lease(partition: u32) -> String {
    format!("{PARTITION_DUTY}.{partition}")
}

/// Who holds a lease: what the key's value says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The engine's name (`--engine-name`; the host name by default).
    pub engine: String,
    /// Where its HTTP API is reached, for engines that forward to it.
    pub api_url: Option<String>,
    pub since: DateTime<Utc>,
}

/// The bucket of leases.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

/// Why an owner no longer holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Another value is on the key: another engine took it after this one's expired.
    Taken,
    /// No renewal went through within `ttl` (NATS unreachable, or this process paused):
    /// another engine may hold it now.
    Expired { silent_for: Duration },
    /// Given back on shutdown.
    Released,
}

impl std::fmt::Display for LeaseEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Taken => write!(f, "another engine holds it"),
            Self::Expired { silent_for } => write!(
                f,
                "no renewal went through for {:.1} s, longer than the lease lives",
                silent_for.as_secs_f64()
            ),
            Self::Released => write!(f, "it was given back"),
        }
    }
}

/// Who holds lease `name` now, if anyone, read without opening the bucket for leasing
/// (its settings stay as the engines set them).
pub async fn holder_of(bus: &Bus, name: &str) -> Result<Option<Holder>, BusError> {
    let kv = bus
        .jetstream()
        .get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| BusError::read(format!("the {LEASE_BUCKET} bucket"), e))?;
    holder_in(&kv, name).await
}

/// Who holds lease `name` in `kv`, if anyone.
async fn holder_in(kv: &kv::Store, name: &str) -> Result<Option<Holder>, BusError> {
    let entry = kv
        .entry(name)
        .await
        .map_err(|e| BusError::read(format!("lease {name}"), e))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}

impl Leases {
    /// Opens the bucket, creating it with values that live `ttl`; an existing bucket with
    /// another `ttl` is changed to this one (every engine is meant to run with the same).
    pub async fn open(bus: &Bus, ttl: Duration) -> Result<Self, BusError> {
        let js = bus.jetstream();
        let what = || format!("the {LEASE_BUCKET} bucket");
        let config = stream::Config {
            name: format!("KV_{LEASE_BUCKET}"),
            description: Some("Sluice's leases: which engine holds each duty".into()),
            subjects: vec![format!("$KV.{LEASE_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_message_size: 4096,
            max_age: ttl,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: bus.stream_replicas(),
            ..Default::default()
        };
        let mut existing = js.get_or_create_stream(config.clone()).await.map_err(|e| {
            if crate::client::stream_setup_unavailable(&e) {
                BusError::setup_unavailable(what(), e)
            } else {
                BusError::setup(what(), e)
            }
        })?;
        let info = existing
            .info()
            .await
            .map_err(|e| BusError::setup(what(), e))?;
        if info.config.max_age != ttl {
            tracing::warn!(
                was_s = info.config.max_age.as_secs_f64(),
                now_s = ttl.as_secs_f64(),
                "the leases' lifetime differs from this engine's --lease-ttl; setting it to this engine's"
            );
            js.update_stream(config)
                .await
                .map_err(|e| BusError::setup(what(), e))?;
        }
        let kv = js
            .get_key_value(LEASE_BUCKET)
            .await
            .map_err(|e| BusError::setup(what(), e))?;
        Ok(Self { kv, ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// Who holds `name` now, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<Holder>, BusError> {
        holder_in(&self.kv, name).await
    }

    /// Takes `name` for `holder` if no one holds it; `None` if someone does.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &Holder,
    ) -> Result<Option<Lease>, BusError> {
        let value: bytes::Bytes = serde_json::to_vec(holder)
            .expect("a holder serialises")
            .into();
        let sent = Instant::now();
        match self.kv.create(name, value.clone()).await {
            Ok(revision) => Ok(Some(Lease {
                kv: self.kv.clone(),
                name: name.to_owned(),
                token: revision,
                revision,
                value,
                ttl: self.ttl,
                renewed: sent,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(BusError::Publish {
                subject: format!("lease {name}"),
                source: e.into(),
                transient: true,
            }),
        }
    }

    /// Waits until `name` is taken for `holder`, trying every `every`; between tries,
    /// `waiting` hears who holds it (when that could be read).
    pub async fn acquire(
        &self,
        name: &str,
        holder: &Holder,
        every: Duration,
        mut waiting: impl FnMut(Option<Holder>),
    ) -> Lease {
        loop {
            match self.try_acquire(name, holder).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => match self.holder(name).await {
                    Ok(now) => waiting(now),
                    Err(e) => {
                        tracing::warn!(lease = name, error = %e, "could not read who holds the lease")
                    }
                },
                Err(e) => tracing::warn!(lease = name, error = %e, "could not try for the lease"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// A lease this process holds.
pub struct Lease {
    kv: kv::Store,
    name: String,
    token: u64,
    revision: u64,
    value: bytes::Bytes,
    ttl: Duration,
    /// When the last renewal that went through was sent.
    renewed: Instant,
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token: the revision the key was created at.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Until when it is surely this process's.
    pub fn held_until(&self) -> Instant {
        self.renewed + self.ttl
    }

    /// Writes the value again, conditional on the last revision this process wrote.
    pub async fn renew(&mut self) -> Result<(), Option<LeaseEnd>> {
        let sent = Instant::now();
        match self
            .kv
            .update(&self.name, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(Some(LeaseEnd::Taken))
            }
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "could not renew the lease");
                Err(None)
            }
        }
    }

    /// Renews every quarter of the lease's life until it is lost or `stop` resolves (then
    /// it is given back); why it ended.
    pub async fn keep(mut self, stop: impl Future<Output = ()>) -> LeaseEnd {
        let mut stop = std::pin::pin!(stop);
        loop {
            let next = (Instant::now() + self.ttl / 4).min(self.held_until());
            tokio::select! {
                _ = &mut stop => {
                    self.release().await;
                    return LeaseEnd::Released;
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            if let Err(end) = self.renew_in_time().await {
                return end;
            }
        }
    }

    /// Renews unless the lease's life ran out first; why it is no longer this process's if
    /// it is not. A renewal that failed otherwise leaves it held until [`Self::held_until`].
    pub async fn renew_in_time(&mut self) -> Result<(), LeaseEnd> {
        let expired = |lease: &Self| LeaseEnd::Expired {
            silent_for: lease.renewed.elapsed(),
        };
        if Instant::now() >= self.held_until() {
            return Err(expired(self));
        }
        match tokio::time::timeout_at(self.held_until().into(), self.renew()).await {
            Ok(Ok(())) | Ok(Err(None)) => Ok(()),
            Ok(Err(Some(end))) => Err(end),
            Err(_) => Err(expired(self)),
        }
    }

    /// Deletes the key if it is still this process's value, so a standby takes over at
    /// once instead of when the value would expire.
    pub async fn release(&self) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(&self.name, Some(self.revision))
            .await
        {
            tracing::warn!(lease = %self.name, error = %e, "could not give the lease back; it expires on its own");
        }
    }
}

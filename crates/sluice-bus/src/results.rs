//! The results object store, `sluice-results`: results too large to travel inside their
//! status report (more than [`sluice_core::INLINE_RESULT_BYTES`] of JSON). The worker puts
//! the result's JSON under `<execution id>.<attempt>` before it publishes the completion
//! that names it ([`sluice_core::ResultObject`]); the engine reads it, writes it to the
//! store as it came, and deletes it once the completion is recorded.
//!
//! Objects the engine never deleted (it was down, or the delete failed) are dropped after
//! [`results_max_age`], as long as STATUS keeps the reports that name them.

use std::time::Duration;

use async_nats::jetstream::object_store;
use sluice_core::ExecutionId;

use crate::Bus;
use crate::buckets::write_error;
use crate::error::BusError;
use crate::names::RESULTS_BUCKET;

/// How long an object stays if nobody deletes it: as long as STATUS keeps the report that
/// names it (its `max_age` in `streams/`).
pub fn results_max_age() -> Duration {
    crate::definitions()
        .into_iter()
        .find(|def| def.stream.name == crate::names::STATUS)
        .map(|def| def.stream.max_age)
        .expect("streams/ declares STATUS")
}

/// The name of an attempt's result in the bucket.
pub fn object_name(id: ExecutionId, attempt: u32) -> String {
    format!("{id}.{attempt}")
}

/// The results bucket.
#[derive(Clone)]
pub struct ResultStore {
    store: object_store::ObjectStore,
}

impl ResultStore {
    /// The bucket, created if missing (the engine).
    pub async fn create(bus: &Bus) -> Result<Self, BusError> {
        let store = crate::buckets::create(
            bus,
            RESULTS_BUCKET,
            "Sluice: results too large for their status report, until the engine stores them",
            results_max_age(),
        )
        .await?;
        Ok(Self { store })
    }

    /// The bucket the engine made (a worker).
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let store = crate::buckets::open(bus, RESULTS_BUCKET).await?;
        Ok(Self { store })
    }

    /// Stores `json` under `name`, replacing what was there. It is read in chunks as it is
    /// sent, never copied whole.
    pub async fn put(&self, name: &str, json: &[u8]) -> Result<(), BusError> {
        let mut data = json;
        self.store
            .put(name, &mut data)
            .await
            .map_err(|e| write_error(RESULTS_BUCKET, name, e))?;
        Ok(())
    }

    /// The JSON stored under `name`; `None` if the bucket does not hold it.
    pub async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, BusError> {
        crate::buckets::fetch(&self.store, RESULTS_BUCKET, name).await
    }

    /// Deletes the object `name`; deleting one that is gone is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), BusError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(write_error(RESULTS_BUCKET, name, e)),
        }
    }
}

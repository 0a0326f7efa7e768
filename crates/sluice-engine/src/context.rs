//! What the engine's actors and consumer loops share.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_bus::Bus;
use sluice_core::secrets::Keyring;
use sluice_pack::Catalog;
use sluice_pack::datastore::Kv;
use sluice_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::handles::Directory;
use crate::timing::MAX_STORE_REST;

/// What the actors (supervisors, executions, workflows) work with.
pub(crate) struct ActorContext {
    pub(crate) directory: Arc<Directory>,
    /// The catalog in force; a workflow keeps the one it started with.
    pub(crate) catalog: watch::Receiver<Arc<Catalog>>,
    pub(crate) backend: Arc<dyn Backend>,
    /// Seals secret parameters; opens a workflow's secret inputs.
    pub(crate) keyring: Arc<Keyring>,
    /// `st2kv` for workflow templates.
    pub(crate) kv: Kv,
    /// Cancelled when the engine shuts down: supervisors admit nothing more, and queued
    /// executions stay `requested` in the store for the next start.
    pub(crate) intake: CancellationToken,
    /// The API actions are given, when the engine serves one.
    pub(crate) action_api: Option<ActionApiAccess>,
    /// How many partitions the actions are cut into, when the engines run partitioned.
    pub(crate) partitions: Option<u32>,
}

impl ActorContext {
    /// The partition of `action`, when the engines run partitioned.
    pub(crate) fn partition_of(&self, action: &sluice_core::ActionRef) -> Option<u32> {
        self.partitions
            .map(|count| sluice_core::partition::partition_of(action, count))
    }
}

/// What run messages tell actions about the API: where it is, and the token of each
/// execution's attempt.
pub(crate) struct ActionApiAccess {
    pub(crate) url: String,
    pub(crate) tokens: sluice_bus::ExecutionTokens,
}

/// The catalog in force. Switching a rule replaces it whole, so whoever reads it holds one
/// consistent version for as long as it needs; the timer loop watches it for switches.
pub(crate) struct LiveCatalog(watch::Sender<Arc<Catalog>>);

impl LiveCatalog {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Self {
        Self(watch::Sender::new(catalog))
    }

    pub(crate) fn current(&self) -> Arc<Catalog> {
        self.0.borrow().clone()
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.0.subscribe()
    }

    /// Puts `catalog` in force.
    pub(crate) fn replace(&self, catalog: Arc<Catalog>) {
        self.0.send_replace(catalog);
    }

    /// Puts in force a copy of the catalog that `change` made; `change` returns whether it
    /// changed anything, and nothing is replaced if it did not.
    pub(crate) fn change(&self, change: impl FnOnce(&mut Catalog) -> bool) -> bool {
        self.0.send_if_modified(|current| {
            let mut next = Catalog::clone(current);
            let changed = change(&mut next);
            if changed {
                *current = Arc::new(next);
            }
            changed
        })
    }
}

/// What the consumer loops (ingestor, completions, dead letters) work with.
pub(crate) struct Shared {
    pub(crate) directory: Arc<Directory>,
    pub(crate) catalog: Arc<LiveCatalog>,
    pub(crate) store: Store,
    pub(crate) bus: Bus,
    /// Seals secret parameters before they are stored or sent.
    pub(crate) keyring: Arc<Keyring>,
    /// `st2kv` for rule templates.
    pub(crate) kv: Kv,
    pub(crate) store_health: StoreHealth,
    /// Results too large for their reports, until they are stored.
    pub(crate) results: sluice_bus::results::ResultStore,
}

impl Shared {
    /// The same, writing to `store` (a partition's, checked against its fence), with a
    /// health of its own.
    pub(crate) fn with_store(&self, store: Store) -> Self {
        Self {
            directory: self.directory.clone(),
            catalog: self.catalog.clone(),
            store,
            bus: self.bus.clone(),
            keyring: self.keyring.clone(),
            kv: self.kv.clone(),
            store_health: StoreHealth::default(),
            results: self.results.clone(),
        }
    }
}

/// What the consumers know of the store's health. After a transient failure they hand
/// messages back (nak with a delay) without touching the store until a pause has passed,
/// the pause growing with each failure in a row (up to 5 s); then one message tries again.
/// So a store outage costs one slow query per pause, not one per message, and the
/// messages waiting in a consumer's batch go back to JetStream instead of outliving
/// `ack_wait` in the batch.
#[derive(Default)]
pub(crate) struct StoreHealth {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    failures_in_a_row: u32,
    down_until: Option<Instant>,
}

impl StoreHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the store failed so recently that it should not be tried yet.
    pub(crate) fn resting(&self) -> bool {
        self.lock()
            .down_until
            .is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn failed(&self) {
        let mut state = self.lock();
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        let pause =
            sluice_bus::settle::backoff(u64::from(state.failures_in_a_row)).min(MAX_STORE_REST);
        state.down_until = Some(Instant::now() + pause);
    }

    pub(crate) fn succeeded(&self) {
        let mut state = self.lock();
        state.failures_in_a_row = 0;
        state.down_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_rests_the_store_and_a_success_ends_the_rest() {
        let health = StoreHealth::default();
        assert!(!health.resting());
        health.failed();
        assert!(health.resting());
        health.succeeded();
        assert!(!health.resting());
    }
}

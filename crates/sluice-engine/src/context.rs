//! What the engine's actors and loops share.

use std::sync::Arc;

use sluice_bus::Bus;
use sluice_pack::Catalog;
use sluice_store::Store;

pub(crate) struct Shared {
    /// Prefix of every actor name of this engine, unique within the process.
    pub(crate) name: String,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) store: Store,
    pub(crate) bus: Bus,
}

//! How what is for another engine's supervisors and workflows reaches it when the engines
//! run partitioned (see `partitions`): announcements on core NATS, which the store backs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_core::partition::partition_of;
use sluice_core::{ActionRef, ExecutionId};
use sluice_store::Fence;
use tracing::warn;

/// Which actions an engine owns when the engines run partitioned.
#[derive(Debug, Clone)]
pub struct Partitioned {
    /// This engine's name among the engines, as its leases name it.
    pub engine: String,
    /// How long a partition's lease lives unrenewed: the longest a partition whose owner
    /// died stays unowned.
    pub lease_ttl: std::time::Duration,
    /// How many partitions the actions are cut into: the same on every engine.
    pub count: u32,
    /// The partitions this engine owns, each with the fence its writes are checked
    /// against (raised in the store by whoever took the partition's lease).
    pub held: BTreeMap<u32, Fence>,
}

impl Partitioned {
    /// Whether this engine owns `action`.
    pub fn owns(&self, action: &ActionRef) -> bool {
        self.held.contains_key(&partition_of(action, self.count))
    }
}

/// Where the ends of workflows' tasks are announced, to every engine.
pub(crate) const CHILD_ENDED_SUBJECT: &str = "sluice.partition.child-ended";

/// Where the requests for partition `partition`'s actions are announced.
pub(crate) fn requested_subject(partition: u32) -> String {
    format!("sluice.partition.{partition}.requested")
}

/// An execution stored `requested` for an action another engine owns, with what its
/// supervisor queues it with (the parameters as stored: secret ones sealed), so the owner
/// queues it without reading it back.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Requested {
    pub(crate) execution_id: ExecutionId,
    pub(crate) action: ActionRef,
    pub(crate) attempt: u32,
    pub(crate) parameters: serde_json::Map<String, serde_json::Value>,
    pub(crate) requested_at: chrono::DateTime<chrono::Utc>,
    pub(crate) traceparent: Option<String>,
    pub(crate) parent: Option<ExecutionId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildEnded {
    pub(crate) parent: ExecutionId,
    pub(crate) child: ExecutionId,
}

/// Announces to other engines what their supervisors and workflows must hear, in the order
/// it is asked to: one task publishes them all, so a partition's owner hears of its requests
/// in the order they were stored here.
#[derive(Clone)]
pub(crate) struct Routes {
    outbox: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
    count: u32,
}

impl Routes {
    /// Announces through `client` until every clone of the returned value is dropped.
    pub(crate) fn new(client: async_nats::Client, count: u32) -> Self {
        let (outbox, mut announcements) =
            tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((subject, payload)) = announcements.recv().await {
                if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                    warn!(subject, error = %e, "announcement not sent; its owner finds it in the store");
                }
            }
        });
        Self { outbox, count }
    }

    fn announce(&self, subject: String, payload: Vec<u8>) {
        if self.outbox.send((subject, payload)).is_err() {
            warn!("announcements stopped; the owners find what was requested in the store");
        }
    }

    /// `message`'s execution, stored `requested`, is for an action another engine owns.
    pub(crate) fn requested(&self, message: &Requested) {
        let (id, action) = (message.execution_id, &message.action);
        match sluice_core::encode(&message) {
            Ok(payload) => {
                self.announce(requested_subject(partition_of(action, self.count)), payload)
            }
            Err(e) => warn!(execution_id = %id, error = %e, "announcement not encoded"),
        }
    }

    /// `child`, a task of workflow `parent` that another engine runs, has ended.
    pub(crate) fn child_ended(&self, parent: ExecutionId, child: ExecutionId) {
        match sluice_core::encode(&ChildEnded { parent, child }) {
            Ok(payload) => self.announce(CHILD_ENDED_SUBJECT.to_owned(), payload),
            Err(e) => warn!(execution_id = %child, error = %e, "announcement not encoded"),
        }
    }
}

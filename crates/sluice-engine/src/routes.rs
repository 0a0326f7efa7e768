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
    /// The partition `action` belongs to.
    pub fn partition_of(&self, action: &ActionRef) -> u32 {
        partition_of(action, self.count)
    }

    /// Whether this engine owns `action`.
    pub fn owns(&self, action: &ActionRef) -> bool {
        self.held.contains_key(&self.partition_of(action))
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
    /// Where this announcement stands among its sender's announcements for the partition;
    /// none from an engine that does not number them.
    #[serde(default)]
    pub(crate) sequence: Option<Sequence>,
}

/// An announcement's place among those one sender made for one partition: `number` counts
/// from 1 for each `sender`, a value drawn at random when the sender's routes start. An
/// owner that hears a sender for the first time, or finds a number skipped, may have missed
/// a request stored before this one, and looks in the store first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sequence {
    pub(crate) sender: u64,
    pub(crate) number: u64,
}

/// Numbers one sender's announcements, per partition.
struct Numbering {
    sender: u64,
    last: std::collections::HashMap<u32, u64>,
}

impl Numbering {
    fn new(sender: u64) -> Self {
        Self {
            sender,
            last: Default::default(),
        }
    }

    fn next(&mut self, partition: u32) -> Sequence {
        let number = self.last.entry(partition).or_default();
        *number += 1;
        Sequence {
            sender: self.sender,
            number: *number,
        }
    }
}

/// What the announcing task sends: a request, numbered as it goes out, or a message
/// encoded already.
enum Outgoing {
    Requested(u32, Box<Requested>),
    Encoded(String, Vec<u8>),
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
    outbox: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    count: u32,
}

impl Routes {
    /// Announces through `client` until every clone of the returned value is dropped.
    pub(crate) fn new(client: async_nats::Client, count: u32) -> Self {
        let (outbox, mut announcements) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let sender = getrandom::u64().unwrap_or_else(|e| {
            warn!(error = %e, "no randomness for this engine's announcements; numbered from the clock");
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64
        });
        let mut numbering = Numbering::new(sender);
        tokio::spawn(async move {
            while let Some(outgoing) = announcements.recv().await {
                let (subject, payload) = match outgoing {
                    Outgoing::Requested(partition, mut request) => {
                        request.sequence = Some(numbering.next(partition));
                        match sluice_core::encode(&request) {
                            Ok(payload) => (requested_subject(partition), payload),
                            Err(e) => {
                                warn!(execution_id = %request.execution_id, error = %e, "announcement not encoded");
                                continue;
                            }
                        }
                    }
                    Outgoing::Encoded(subject, payload) => (subject, payload),
                };
                if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                    warn!(subject, error = %e, "announcement not sent; its owner finds it in the store");
                }
            }
        });
        Self { outbox, count }
    }

    fn announce(&self, outgoing: Outgoing) {
        if self.outbox.send(outgoing).is_err() {
            warn!("announcements stopped; the owners find what was requested in the store");
        }
    }

    /// `message`'s execution, stored `requested`, is for an action another engine owns.
    pub(crate) fn requested(&self, message: Requested) {
        let partition = partition_of(&message.action, self.count);
        self.announce(Outgoing::Requested(partition, Box::new(message)));
    }

    /// `child`, a task of workflow `parent` that another engine runs, has ended.
    pub(crate) fn child_ended(&self, parent: ExecutionId, child: ExecutionId) {
        match sluice_core::encode(&ChildEnded { parent, child }) {
            Ok(payload) => {
                self.announce(Outgoing::Encoded(CHILD_ENDED_SUBJECT.to_owned(), payload))
            }
            Err(e) => warn!(execution_id = %child, error = %e, "announcement not encoded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_s_announcements_are_numbered_from_one_by_their_sender() {
        let mut numbering = Numbering::new(7);
        let numbers: Vec<(u32, u64)> = [0, 0, 3, 0, 3]
            .into_iter()
            .map(|partition| (partition, numbering.next(partition).number))
            .collect();
        assert_eq!(numbers, [(0, 1), (0, 2), (3, 1), (0, 3), (3, 2)]);
        assert_eq!(numbering.next(1).sender, 7);
    }
}

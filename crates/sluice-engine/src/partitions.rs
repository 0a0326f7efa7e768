//! Partitioned engines: several engines active at once, each owning some partitions of the
//! actions ([`sluice_core::partition`]). An engine starts the supervisors of the actions in
//! the partitions it holds, and only those. Each partition's writes are checked against its
//! own fence, and its workers' reports arrive on its own status subjects, taken by its own
//! durable consumer (`engine-p<n>` on STATUS), so a completion reaches the engine that owns
//! the action whichever engine requested it.
//!
//! What one engine cannot hand to a supervisor of its own travels to the owner:
//!
//! - an execution requested here (a trigger's, an API submission, a workflow's task) for an
//!   action another engine owns is stored `requested`, then announced on
//!   `sluice.partition.<n>.requested` with what the owner's supervisor queues it with;
//! - the end of a workflow's task whose workflow another engine runs is announced on
//!   `sluice.partition.child-ended`, and the engine running the workflow reads it from the
//!   store and goes on.
//!
//! The announcements are core NATS messages: quick, and allowed to be lost, because the
//! store says the same. Every [`RECONCILE`] the owner queues any `requested` execution of
//! its actions stored since its last look that it does not hold yet, and each workflow it
//! runs looks up the ends of its tasks that other engines run. An engine rebuilds a partition's queues from the store
//! after it listens for the partition's announcements, so none falls between the two.
//!
//! A lost announcement must not let a later request of the same action be queued ahead of
//! it. Each sender numbers its announcements per partition ([`Sequence`]); when the owner
//! hears a sender for the first time (it may have started after another engine stored
//! requests and stopped before announcing them) or finds a number skipped, it looks in the
//! store first and queues what it finds there, oldest first, before the announced request.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use sluice_core::ExecutionStatus;
use sluice_store::ExecutionFilter;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::context::Shared;
use crate::handles::Pending;
use crate::recover;
use crate::routes::{CHILD_ENDED_SUBJECT, ChildEnded, Requested, Sequence, requested_subject};

/// How often an owner looks in the store for what its announcements may have missed.
pub(crate) const RECONCILE: Duration = Duration::from_secs(5);

/// What an owner listens to: the requests for its partitions and the ends of tasks.
pub(crate) struct Listening {
    requested: futures::stream::SelectAll<async_nats::Subscriber>,
    ended: async_nats::Subscriber,
}

/// Subscribes to the announcements for `partitions`; done before their queues are rebuilt
/// from the store, so every request stored after the rebuild's read is heard.
pub(crate) async fn listen(
    client: &async_nats::Client,
    partitions: impl IntoIterator<Item = u32>,
) -> Result<Listening, sluice_bus::BusError> {
    let mut requested = Vec::new();
    for partition in partitions {
        let subject = requested_subject(partition);
        requested.push(
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| sluice_bus::BusError::setup(subject, e))?,
        );
    }
    let ended = client
        .subscribe(CHILD_ENDED_SUBJECT)
        .await
        .map_err(|e| sluice_bus::BusError::setup(CHILD_ENDED_SUBJECT, e))?;
    Ok(Listening {
        requested: futures::stream::select_all(requested),
        ended,
    })
}

/// The owner's loop: queues announced requests, passes on announced ends, and reconciles
/// with the store every [`RECONCILE`].
pub(crate) async fn run(shared: Arc<Shared>, mut listening: Listening, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(RECONCILE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    // Each round looks at what was requested since the last round's window, less one
    // [`RECONCILE`] for transactions still open then and clocks a little apart; what was
    // requested before this engine listened is in its rebuild. The newest [`RECONCILE`] is
    // left to the announcements still on their way.
    let lag = chrono::Duration::from_std(RECONCILE).unwrap_or_default();
    let mut since = Utc::now() - lag - lag;
    let mut heard = Heard::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(message) = listening.requested.next() => {
                match sluice_core::decode::<Requested>(&message.payload) {
                    Ok(request) => {
                        if heard.may_have_missed(message.subject.as_str(), request.sequence) {
                            // What was stored before it is queued before it.
                            adopt_requested(&shared, (since, Utc::now())).await;
                        }
                        if let Some(supervisor) = shared.directory.supervisor(&request.action) {
                            supervisor.adopt(pending_of(request));
                        }
                    }
                    Err(e) => warn!(subject = %message.subject, error = %e, "unreadable announcement ignored"),
                }
            }
            Some(message) = listening.ended.next() => {
                match sluice_core::decode::<ChildEnded>(&message.payload) {
                    Ok(ended) => {
                        if let Some(workflow) = shared.directory.workflow(ended.parent) {
                            workflow.child_ended(ended.child);
                        }
                    }
                    Err(e) => warn!(subject = %message.subject, error = %e, "unreadable announcement ignored"),
                }
            }
            _ = ticks.tick() => {
                let until = Utc::now() - lag;
                if reconcile(&shared, (since, until)).await {
                    since = until - lag;
                }
            }
        }
    }
}

/// The highest announcement number heard from each sender on each subject.
#[derive(Default)]
struct Heard {
    last: std::collections::HashMap<(String, u64), u64>,
}

impl Heard {
    /// Records `sequence`, heard on `subject`; whether an announcement of that sender may
    /// have been lost before it: the sender is heard for the first time, or a number was
    /// skipped. An announcement that carries no number is taken as it comes.
    fn may_have_missed(&mut self, subject: &str, sequence: Option<Sequence>) -> bool {
        let Some(Sequence { sender, number }) = sequence else {
            return false;
        };
        match self.last.entry((subject.to_owned(), sender)) {
            std::collections::hash_map::Entry::Vacant(first) => {
                first.insert(number);
                true
            }
            std::collections::hash_map::Entry::Occupied(mut last) => {
                let skipped = number > *last.get() + 1;
                if number > *last.get() {
                    last.insert(number);
                }
                skipped
            }
        }
    }
}

/// What the owner's supervisor queues an announced execution with.
fn pending_of(request: Requested) -> Pending {
    Pending::kept(
        request.execution_id,
        request.attempt,
        request.parameters,
        request.requested_at,
        request.traceparent,
        request.parent,
    )
}

/// Queues `requested` `execution` at its supervisor here, if it is readable and of an
/// action this engine owns; one its supervisor holds already is left as it is. An
/// unreadable one is failed by its owner's next rebuild.
fn adopt_stored(shared: &Shared, execution: &sluice_store::Execution) {
    if execution.unreadable.is_some() {
        return;
    }
    if let Some(supervisor) = shared.directory.supervisor(&execution.action) {
        supervisor.adopt(recover::pending_of(execution));
    }
}

/// Queues every `requested` execution of this engine's actions, stored in `window`, that its
/// supervisor does not hold yet, and has every workflow look up the ends of its tasks on
/// other engines. Returns whether the store answered.
async fn reconcile(shared: &Shared, window: (DateTime<Utc>, DateTime<Utc>)) -> bool {
    if !adopt_requested(shared, window).await {
        return false;
    }
    for workflow in shared.directory.workflows() {
        workflow.reconcile();
    }
    true
}

/// Queues every `requested` execution of this engine's actions, stored in `window`, that its
/// supervisor does not hold yet, oldest first. Returns whether the store answered.
async fn adopt_requested(shared: &Shared, window: (DateTime<Utc>, DateTime<Utc>)) -> bool {
    const PAGE: u32 = 1_000;
    let mut found = Vec::new();
    let mut before = None;
    loop {
        let filter = ExecutionFilter {
            status: Some(ExecutionStatus::Requested),
            since: Some(window.0),
            until: Some(window.1),
            limit: Some(PAGE),
            before,
            ..Default::default()
        };
        let page = match shared.store.list_executions(&filter).await {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, "reconciliation with the store failed; tried again shortly");
                return false;
            }
        };
        let full = page.len() == PAGE as usize;
        before = page.last().map(|e| e.id.0);
        found.extend(page);
        if !full {
            break;
        }
    }
    // Oldest first: in the order they were requested.
    for execution in found.iter().rev() {
        adopt_stored(shared, execution);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_sender_or_a_skipped_number_sends_the_owner_to_the_store_first() {
        let mut heard = Heard::default();
        let a = |number| Some(Sequence { sender: 1, number });
        let b = |number| Some(Sequence { sender: 2, number });
        let p0 = "sluice.partition.0.requested";
        let p1 = "sluice.partition.1.requested";
        let looks: Vec<bool> = [
            (p0, a(1)),
            (p0, a(2)),
            (p0, a(3)),
            // 4 lost
            (p0, a(5)),
            (p0, a(6)),
            // another sender, started after the first had stored requests it never announced
            (p0, b(1)),
            (p0, b(2)),
            // each partition is numbered on its own
            (p1, a(1)),
            (p1, a(2)),
            // out of order: a number already passed is taken as it comes
            (p0, a(8)),
            (p0, a(7)),
            (p0, a(9)),
            (p0, None),
        ]
        .into_iter()
        .map(|(subject, sequence)| heard.may_have_missed(subject, sequence))
        .collect();
        assert_eq!(
            looks,
            [
                true, false, false, true, false, true, false, true, false, true, false, false,
                false
            ]
        );
    }
}

//! The worker monitor: listens to worker heartbeats and declares a worker lost when it has
//! been silent longer than the loss window. Its executions are then ended `abandoned`, or
//! requeued when their action retries on worker loss — by their supervisors.
//!
//! At each check it also tells every supervisor what each live worker's last heartbeat
//! listed ([`Held`]): an execution a live worker has stopped listing, with no status report
//! left to apply, lost its report, and its supervisor gives it up the same way.
//!
//! Silence only counts while the engine itself can hear: when its own NATS connection is
//! down, no heartbeat could arrive, so nobody is declared lost, and once it is back every
//! worker gets a fresh window to be heard again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sluice_core::{ExecutionId, Heartbeat};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::handles::{Directory, Held};

/// What the engine knows of one worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub capacity: usize,
    pub running: Vec<ExecutionId>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub lost: bool,
    #[serde(skip)]
    seen: Instant,
}

/// Workers by name; shared with the API.
#[derive(Clone, Default)]
pub(crate) struct Workers(Arc<Mutex<BTreeMap<String, WorkerInfo>>>);

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerInfo>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the clock on a worker known from the store or a report, so one that never
    /// beats again is found lost one window from now.
    pub(crate) fn expect(&self, name: &str) {
        self.lock()
            .entry(name.to_owned())
            .or_insert_with(|| WorkerInfo {
                name: name.to_owned(),
                capacity: 0,
                running: Vec::new(),
                last_heartbeat_at: None,
                lost: false,
                seen: Instant::now(),
            });
    }

    fn beat(&self, heartbeat: Heartbeat) {
        let mut workers = self.lock();
        let info = workers
            .entry(heartbeat.worker.clone())
            .or_insert_with(|| WorkerInfo {
                name: heartbeat.worker.clone(),
                capacity: 0,
                running: Vec::new(),
                last_heartbeat_at: None,
                lost: false,
                seen: Instant::now(),
            });
        if info.lost {
            info!(worker = info.name, "worker is back");
        }
        info.capacity = heartbeat.capacity;
        info.running = heartbeat.running;
        info.last_heartbeat_at = Some(heartbeat.at);
        info.lost = false;
        info.seen = Instant::now();
    }

    /// Workers silent for longer than `window`, newly lost.
    fn newly_lost(&self, window: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut lost = Vec::new();
        for info in self.lock().values_mut() {
            if !info.lost && now.duration_since(info.seen) > window {
                info.lost = true;
                lost.push(info.name.clone());
            }
        }
        lost
    }

    /// Restarts every live worker's window: after the engine could not hear anyone.
    fn grace(&self) {
        let now = Instant::now();
        for info in self.lock().values_mut().filter(|i| !i.lost) {
            info.seen = now;
        }
    }

    /// What each live worker that has beaten listed in its last heartbeat.
    fn held(&self) -> std::collections::HashMap<String, std::collections::HashSet<ExecutionId>> {
        self.lock()
            .values()
            .filter(|info| !info.lost && info.last_heartbeat_at.is_some())
            .map(|info| (info.name.clone(), info.running.iter().copied().collect()))
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Vec<WorkerInfo> {
        self.lock().values().cloned().collect()
    }
}

/// Whether every status report stored so far has been applied: each of the engine's STATUS
/// consumers has nothing waiting and nothing unacknowledged.
async fn reports_applied(status: &[async_nats::jetstream::consumer::PullConsumer]) -> bool {
    for consumer in status {
        let idle = consumer
            .get_info()
            .await
            .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0);
        if !idle {
            return false;
        }
    }
    true
}

pub(crate) async fn run(
    client: async_nats::Client,
    status: Vec<async_nats::jetstream::consumer::PullConsumer>,
    subscriber: async_nats::Subscriber,
    workers: Workers,
    directory: Arc<Directory>,
    window: Duration,
    cancel: CancellationToken,
) {
    let mut subscriber = subscriber;
    let mut ticks = tokio::time::interval((window / 4).max(Duration::from_millis(100)));
    let mut deaf = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            message = subscriber.next() => match message {
                Some(message) => match sluice_core::decode::<Heartbeat>(&message.payload) {
                    Ok(heartbeat) => workers.beat(heartbeat),
                    Err(e) => warn!(subject = %message.subject, error = %e, "unreadable heartbeat ignored"),
                },
                None => return,
            },
            _ = ticks.tick() => {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                if !connected {
                    if !deaf {
                        warn!("engine disconnected from NATS; worker loss detection paused");
                    }
                    deaf = true;
                    continue;
                }
                if deaf {
                    info!("engine reconnected to NATS; every worker has a fresh window to be heard");
                    workers.grace();
                    deaf = false;
                }
                let lost = workers.newly_lost(window);
                if !lost.is_empty() {
                    warn!(workers = ?lost, window_secs = window.as_secs_f64(), "workers stopped sending heartbeats");
                    for supervisor in directory.supervisors() {
                        supervisor.workers_lost(lost.clone());
                    }
                }
                let held = Arc::new(Held {
                    by_worker: workers.held(),
                    reports_applied: reports_applied(&status).await,
                    window,
                });
                for supervisor in directory.supervisors() {
                    supervisor.held(held.clone());
                }
            }
        }
    }
}

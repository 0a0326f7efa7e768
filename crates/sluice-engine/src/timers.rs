//! The timer loop: fires each enabled timer rule's ticks as trigger events.
//!
//! A tick is published to TRIGGERS with the deduplication id `timer:<rule>:<nominal time>`,
//! then recorded as the rule's last tick in the `sluice-timers` bucket. A restart reads the
//! last tick back and goes on after it; a crash between the two steps publishes the same
//! tick again, which JetStream drops. Ticks missed while the engine was down are handled by
//! the timer's `catchup` policy, within its `catchup_window`; a date timer that never fired
//! and whose date passed fires once on start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sluice_bus::timers::TimerState;
use sluice_pack::timer::{Catchup, MAX_CATCHUP, Overlap, Schedule, Timer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Shared;

/// A timer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TimerView {
    pub rule: String,
    pub trigger: String,
    pub schedule: Value,
    pub catchup: &'static str,
    pub next_fire: Option<DateTime<Utc>>,
    pub last_fire: Option<DateTime<Utc>>,
}

/// The timers' state, shared with the API.
#[derive(Clone, Default)]
pub(crate) struct Timers(Arc<Mutex<BTreeMap<String, TimerView>>>);

impl Timers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TimerView>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn list(&self) -> Vec<TimerView> {
        self.lock().values().cloned().collect()
    }
}

struct Running {
    rule: String,
    timer: Timer,
    next: Option<DateTime<Utc>>,
    /// A tick held back by `overlap: queue_one` until the rule's executions end.
    pending: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

impl Running {
    /// When the next tick is to fire: its nominal time plus the timer's jitter for it.
    fn due(&self) -> Option<DateTime<Utc>> {
        self.next
            .map(|n| n + jitter_for(&self.rule, n, self.timer.jitter))
    }
}

/// A spread in `[0, jitter)` that depends only on the rule and the tick, so a tick's
/// firing time is the same whoever computes it.
fn jitter_for(rule: &str, nominal: DateTime<Utc>, jitter: Duration) -> chrono::Duration {
    use std::hash::{Hash, Hasher};
    let millis = jitter.as_millis() as u64;
    if millis == 0 {
        return chrono::Duration::zero();
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (rule, nominal.timestamp_millis()).hash(&mut hasher);
    chrono::Duration::milliseconds((hasher.finish() % millis) as i64)
}

/// Whether executions the rule requested on earlier ticks still run.
async fn still_running(shared: &Shared, rule: &str) -> bool {
    match shared.store.unfinished_for_rule(rule).await {
        Ok(n) => n > 0,
        Err(e) => {
            warn!(rule, error = %e, "cannot count the rule's unfinished executions; firing");
            false
        }
    }
}

/// The nominal ticks after `last` and up to `now` that `timer` missed, oldest first, within
/// its catch-up window and [`MAX_CATCHUP`].
fn missed(timer: &Timer, last: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let window = chrono::Duration::from_std(timer.catchup_window).unwrap_or_default();
    let mut ticks = Vec::new();
    let mut at = last.max(now - window);
    while let Some(next) = timer.next_after(at) {
        if next > now {
            break;
        }
        ticks.push(next);
        at = next;
        if ticks.len() > MAX_CATCHUP {
            ticks.remove(0);
        }
    }
    ticks
}

/// Fires one tick: publish (deduplicated by its nominal time), then record it.
async fn fire(
    shared: &Shared,
    state: &TimerState,
    rule: &str,
    timer: &Timer,
    nominal: DateTime<Utc>,
    catchup: bool,
) -> bool {
    let payload = json!({
        "executed_at": Utc::now().to_rfc3339(),
        "schedule": timer.parameters,
        "nominal_time": nominal.to_rfc3339(),
        "timer": rule,
        "catchup": catchup,
    });
    let id = format!("timer:{rule}:{}", nominal.to_rfc3339());
    let bytes = serde_json::to_vec(&payload).unwrap_or_default();
    if let Err(e) = shared
        .bus
        .publish_trigger(timer.kind, bytes, Some(&id))
        .await
    {
        warn!(rule, nominal = %nominal, error = %e, "timer tick not published; trying again");
        return false;
    }
    if let Err(e) = state.record(rule, nominal).await {
        // The tick is out; a restart before the next one publishes it again, and
        // JetStream drops the copy.
        warn!(rule, nominal = %nominal, error = %e, "timer tick not recorded");
    }
    true
}

fn view(
    rule: &str,
    timer: &Timer,
    next: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
) -> TimerView {
    TimerView {
        rule: rule.to_owned(),
        trigger: timer.kind.to_owned(),
        schedule: timer.parameters.clone(),
        catchup: match timer.catchup {
            Catchup::None => "none",
            Catchup::Latest => "latest",
            Catchup::All => "all",
        },
        next_fire: next,
        last_fire: last,
    }
}

/// Runs every enabled timer rule's schedule until `cancel`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    state: TimerState,
    timers: Timers,
    cancel: CancellationToken,
) {
    let mut running = Vec::new();
    for rule in shared.catalog.rules.iter().filter(|r| r.enabled) {
        let Some(timer) = rule.timer.clone() else {
            continue;
        };
        let last = loop {
            match state.last(&rule.rule_ref).await {
                Ok(last) => break last,
                Err(e) => {
                    warn!(rule = %rule.rule_ref, error = %e, "cannot read the timer's last tick; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let now = Utc::now();
        let catchups = match (last, &timer.schedule) {
            // A date that passed while nobody listened fires once, unless it already did.
            (None, Schedule::Date(at)) if *at <= now => vec![*at],
            (None, _) => Vec::new(),
            (Some(last), _) => {
                let missed = missed(&timer, last, now);
                match timer.catchup {
                    Catchup::None => Vec::new(),
                    Catchup::Latest => missed.last().copied().into_iter().collect(),
                    Catchup::All => missed,
                }
            }
        };
        let mut last_fire = last;
        for nominal in catchups {
            info!(rule = %rule.rule_ref, nominal = %nominal, "firing a missed timer tick");
            if fire(&shared, &state, &rule.rule_ref, &timer, nominal, true).await {
                last_fire = Some(nominal);
            }
        }
        let from = last_fire.map_or(now, |l| l.max(now));
        let next = timer.next_after(from);
        timers.lock().insert(
            rule.rule_ref.clone(),
            view(&rule.rule_ref, &timer, next, last_fire),
        );
        running.push(Running {
            rule: rule.rule_ref.clone(),
            timer,
            next,
            pending: None,
            last: last_fire,
        });
    }
    if running.is_empty() {
        // Nothing to fire; stays in the actor tree until shutdown like the other loops.
        cancel.cancelled().await;
        return;
    }
    info!(timers = running.len(), "timers running");
    loop {
        let Some(due) = running.iter().filter_map(Running::due).min() else {
            cancel.cancelled().await;
            return;
        };
        let mut wait = (due - Utc::now()).to_std().unwrap_or_default();
        if running.iter().any(|r| r.pending.is_some()) {
            wait = wait.min(Duration::from_millis(250));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        for r in running.iter_mut() {
            if let Some(pending) = r.pending
                && !still_running(&shared, &r.rule).await
                && fire(&shared, &state, &r.rule, &r.timer, pending, false).await
            {
                r.pending = None;
                r.last = r.last.max(Some(pending));
            }
            let Some(nominal) = r.next.filter(|_| r.due().is_some_and(|d| d <= now)) else {
                continue;
            };
            let busy = r.timer.overlap != Overlap::Allow && still_running(&shared, &r.rule).await;
            let fired = if busy && (r.timer.overlap == Overlap::Skip || r.pending.is_some()) {
                info!(rule = %r.rule, nominal = %nominal, "timer tick dropped: the rule's executions from an earlier tick still run (overlap)");
                if let Err(e) = state.record(&r.rule, nominal).await {
                    warn!(rule = %r.rule, error = %e, "dropped timer tick not recorded");
                }
                r.last = r.last.max(Some(nominal));
                true
            } else if busy {
                r.pending = Some(nominal);
                true
            } else if fire(&shared, &state, &r.rule, &r.timer, nominal, false).await {
                r.last = r.last.max(Some(nominal));
                true
            } else {
                false
            };
            if fired {
                r.next = r.timer.next_after(nominal);
                timers
                    .lock()
                    .insert(r.rule.clone(), view(&r.rule, &r.timer, r.next, r.last));
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

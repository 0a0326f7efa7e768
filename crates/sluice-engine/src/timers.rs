//! The timer loop: fires each enabled timer rule's ticks as trigger events.
//!
//! A tick is published to TRIGGERS with the deduplication id `timer:<rule>:<nominal time>`,
//! then recorded as the rule's last tick in the `sluice-timers` bucket. A restart reads the
//! last tick back and goes on after it; a crash between the two steps publishes the same
//! tick again, which JetStream drops. Ticks missed while the engine was down are handled by
//! the timer's `catchup` policy, within its `catchup_window`; a date timer that never fired
//! and whose date passed fires once on start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_bus::timers::TimerState;
use sluice_pack::Catalog;
use sluice_pack::timer::{Catchup, MAX_CATCHUP, Overlap, Schedule, Timer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Shared;
use crate::timing::STORE_RETRY;

/// A timer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TimerView {
    pub rule: String,
    pub trigger: String,
    pub schedule: Value,
    pub catchup: &'static str,
    /// Whether its rule is enabled; a disabled rule's timer is paused and has no next fire.
    pub enabled: bool,
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

/// How many key-value writes recording ticks (or timers' turns under an overlap policy)
/// are in flight at once.
const RECORD_AT_ONCE: usize = 4096;

/// How many timers read their last tick at once when the loop starts.
const READ_AT_ONCE: usize = 256;

/// How long the loop sleeps when no timer is due (all paused, or all dates past): it
/// wakes sooner for a rule switch or shutdown.
const IDLE: Duration = Duration::from_secs(3600);

/// How long a tick that could not be published waits before it is tried again.
const FIRE_RETRY: Duration = Duration::from_millis(200);

struct Running {
    rule: String,
    timer: Timer,
    next: Option<DateTime<Utc>>,
    /// When `next` is to fire: its nominal time plus the timer's jitter for it.
    due: Option<DateTime<Utc>>,
    /// A tick held back by `overlap: queue_one` until the rule's executions end.
    pending: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// Its rule is disabled: no tick fires, none is held.
    paused: bool,
}

impl Running {
    fn new(rule: String, timer: Timer, last: Option<DateTime<Utc>>) -> Self {
        Self {
            rule,
            timer,
            next: None,
            due: None,
            pending: None,
            last,
            paused: false,
        }
    }

    fn set_next(&mut self, next: Option<DateTime<Utc>>) {
        self.next = next;
        self.due = next.map(|n| n + jitter_for(&self.rule, n, self.timer.jitter));
    }

    /// Whether the loop has something to do for this timer at `now`.
    fn wants_turn(&self, now: DateTime<Utc>) -> bool {
        self.pending.is_some() || self.due.is_some_and(|d| d <= now)
    }

    /// Pauses or resumes the timer as its rule was switched; whether anything changed. A
    /// resumed timer goes on with the first tick after `now`: what it missed while paused
    /// does not fire.
    fn switch(&mut self, enabled: bool, now: DateTime<Utc>) -> bool {
        if enabled != self.paused {
            return false;
        }
        self.paused = !enabled;
        self.pending = None;
        let next = if enabled {
            self.timer.next_after(self.last.map_or(now, |l| l.max(now)))
        } else {
            None
        };
        self.set_next(next);
        let state = if enabled { "resumed" } else { "paused" };
        info!(rule = %self.rule, next = ?self.next, "timer {state}");
        true
    }

    fn view(&self) -> TimerView {
        TimerView {
            rule: self.rule.clone(),
            trigger: self.timer.kind.to_owned(),
            schedule: self.timer.parameters.clone(),
            catchup: match self.timer.catchup {
                Catchup::None => "none",
                Catchup::Latest => "latest",
                Catchup::All => "all",
            },
            enabled: !self.paused,
            next_fire: self.next,
            last_fire: self.last,
        }
    }
}

/// What a timer's turn changed.
struct Turn {
    next: Option<DateTime<Utc>>,
    pending: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// A tick could not be published and is to be tried again.
    failed: bool,
}

impl Turn {
    /// Nothing changed, and the tick is to be tried again.
    fn failed(r: &Running) -> Self {
        Self {
            next: r.next,
            pending: r.pending,
            last: r.last,
            failed: true,
        }
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

/// A tick's payload (StackStorm's `executed_at` and `schedule`, and Sluice's nominal time)
/// and its deduplication id.
fn tick_message(
    rule: &str,
    timer: &Timer,
    nominal: DateTime<Utc>,
    catchup: bool,
) -> (Vec<u8>, String) {
    let payload = json!({
        "executed_at": Utc::now().to_rfc3339(),
        "schedule": timer.parameters,
        "nominal_time": nominal.to_rfc3339(),
        "timer": rule,
        "catchup": catchup,
    });
    let id = format!("timer:{rule}:{}", nominal.to_rfc3339());
    (serde_json::to_vec(&payload).unwrap_or_default(), id)
}

/// Fires one tick: publishes it, deduplicated by its nominal time. The caller records it
/// as the timer's last tick once it is out.
async fn fire(
    shared: &Shared,
    rule: &str,
    timer: &Timer,
    nominal: DateTime<Utc>,
    catchup: bool,
) -> bool {
    let (payload, id) = tick_message(rule, timer, nominal, catchup);
    if let Err(e) = shared
        .bus
        .publish_trigger(timer.kind, payload, Some(&id))
        .await
    {
        warn!(rule, nominal = %nominal, error = %e, "timer tick not published; trying again");
        return false;
    }
    true
}

/// The due ticks of timers that fire whatever still runs (`overlap: allow`): all sent in
/// a row, then their acknowledgements awaited, so thousands are out within milliseconds of
/// their time.
async fn fire_all(shared: &Shared, running: &[Running], due: &[usize]) -> Vec<(usize, Turn)> {
    let mut turns = Vec::with_capacity(due.len());
    let mut sent = Vec::with_capacity(due.len());
    for &i in due {
        let r = &running[i];
        let Some(nominal) = r.next else { continue };
        let (payload, id) = tick_message(&r.rule, &r.timer, nominal, false);
        match shared
            .bus
            .send_trigger(r.timer.kind, payload, Some(&id))
            .await
        {
            Ok(ack) => sent.push(async move { (i, nominal, ack.await) }),
            Err(e) => {
                warn!(rule = %r.rule, nominal = %nominal, error = %e, "timer tick not published; trying again");
                turns.push((i, Turn::failed(r)));
            }
        }
    }
    for (i, nominal, acked) in futures::future::join_all(sent).await {
        let r = &running[i];
        let turn = match acked {
            Ok(_) => Turn {
                next: r.timer.next_after(nominal),
                pending: None,
                last: r.last.max(Some(nominal)),
                failed: false,
            },
            Err(e) => {
                warn!(rule = %r.rule, nominal = %nominal, error = %e, "timer tick not published; trying again");
                Turn::failed(r)
            }
        };
        turns.push((i, turn));
    }
    turns
}

/// Records `nominal` as the last tick `rule` fired (or dropped by its overlap policy).
async fn record(state: &TimerState, rule: &str, nominal: DateTime<Utc>) {
    if let Err(e) = state.record(rule, nominal).await {
        // The tick is out; a restart before the next one publishes it again, and
        // JetStream drops the copy.
        warn!(rule, nominal = %nominal, error = %e, "timer tick not recorded");
    }
}

/// A timer's turn when the loop wakes at `now`: a held tick fires once the rule's
/// executions have ended, and a due tick fires, is held or is dropped by its overlap policy.
async fn turn(shared: &Shared, r: &Running, now: DateTime<Utc>) -> Turn {
    let mut t = Turn {
        next: r.next,
        pending: r.pending,
        last: r.last,
        failed: false,
    };
    if let Some(pending) = t.pending
        && !still_running(shared, &r.rule).await
        && fire(shared, &r.rule, &r.timer, pending, false).await
    {
        t.pending = None;
        t.last = t.last.max(Some(pending));
    }
    let Some(nominal) = r.next.filter(|_| r.due.is_some_and(|d| d <= now)) else {
        return t;
    };
    let busy = r.timer.overlap != Overlap::Allow && still_running(shared, &r.rule).await;
    if busy && (r.timer.overlap == Overlap::Skip || t.pending.is_some()) {
        info!(rule = %r.rule, nominal = %nominal, "timer tick dropped: the rule's executions from an earlier tick still run (overlap)");
        t.last = t.last.max(Some(nominal));
    } else if busy {
        t.pending = Some(nominal);
    } else if fire(shared, &r.rule, &r.timer, nominal, false).await {
        t.last = t.last.max(Some(nominal));
    } else {
        t.failed = true;
        return t;
    }
    t.next = r.timer.next_after(nominal);
    t
}

/// Reads a timer's last tick, fires the ticks its catch-up policy asks for (when the engine
/// starts, not for a timer defined or changed while it runs), and returns it ready to run
/// (paused if its rule is disabled); `None` if `cancel` came first.
async fn start(
    shared: &Shared,
    state: &TimerState,
    rule: &str,
    timer: Timer,
    enabled: bool,
    catch_up: bool,
    cancel: &CancellationToken,
) -> Option<Running> {
    let last = loop {
        match state.last(rule).await {
            Ok(last) => break last,
            Err(e) => {
                warn!(rule, error = %e, "cannot read the timer's last tick; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
        }
    };
    if !enabled {
        let mut paused = Running::new(rule.to_owned(), timer, last);
        paused.paused = true;
        return Some(paused);
    }
    let now = Utc::now();
    let catchups = match (last, &timer.schedule) {
        _ if !catch_up => Vec::new(),
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
        info!(rule, nominal = %nominal, "firing a missed timer tick");
        if fire(shared, rule, &timer, nominal, true).await {
            record(state, rule, nominal).await;
            last_fire = Some(nominal);
        }
    }
    let from = last_fire.map_or(now, |l| l.max(now));
    let next = timer.next_after(from);
    let mut running = Running::new(rule.to_owned(), timer, last_fire);
    running.set_next(next);
    Some(running)
}

/// Brings the running timers in line with `catalog` after a change: a switched rule's timer
/// pauses or resumes, a deleted rule's timer stops, a new or rescheduled one starts from
/// the next tick, and one whose policies changed keeps its schedule under the new ones.
async fn follow(
    shared: &Shared,
    state: &TimerState,
    timers: &Timers,
    running: &mut Vec<Running>,
    catalog: &Catalog,
    cancel: &CancellationToken,
) {
    let wanted: HashMap<&str, (&Timer, bool)> = catalog
        .rules()
        .iter()
        .filter_map(|r| Some((r.rule_ref.as_str(), (r.timer.as_ref()?, r.enabled))))
        .collect();
    let now = Utc::now();
    running.retain(|r| {
        let kept = wanted.get(r.rule.as_str()).is_some_and(|(timer, _)| {
            timer.kind == r.timer.kind && timer.parameters == r.timer.parameters
        });
        if !kept {
            info!(rule = %r.rule, "timer stopped: its rule was deleted or changed");
            timers.lock().remove(&r.rule);
        }
        kept
    });
    for r in running.iter_mut() {
        let Some((timer, enabled)) = wanted.get(r.rule.as_str()) else {
            continue;
        };
        // Same schedule; its policies (catch-up, overlap, jitter) as the rule now says.
        r.timer = (*timer).clone();
        r.set_next(r.next);
        r.switch(*enabled, now);
        timers.lock().insert(r.rule.clone(), r.view());
    }
    for (rule, (timer, enabled)) in wanted {
        if running.iter().any(|r| r.rule == rule) {
            continue;
        }
        let Some(started) = start(shared, state, rule, timer.clone(), enabled, false, cancel).await
        else {
            return;
        };
        info!(rule, next = ?started.next, "timer started");
        timers.lock().insert(started.rule.clone(), started.view());
        running.push(started);
    }
}

/// The timers of the rules in force, each started from its last tick, and the catalog
/// they were read from, whose changes [`run`] follows.
pub(crate) struct Started {
    catalog: watch::Receiver<Arc<Catalog>>,
    running: Vec<Running>,
}

/// Starts the timer of every timer rule in force and lists it in `timers`: done before the
/// engine answers, so that the API lists every timer from its first request. `None` if
/// `cancel` came first.
pub(crate) async fn start_all(
    shared: &Shared,
    state: &TimerState,
    timers: &Timers,
    cancel: &CancellationToken,
) -> Option<Started> {
    let mut catalog = shared.catalog.watch();
    let rules: Vec<(String, Timer, bool)> = catalog
        .borrow_and_update()
        .rules()
        .iter()
        .filter_map(|r| Some((r.rule_ref.clone(), r.timer.clone()?, r.enabled)))
        .collect();
    // Futures gathered first: a closure inside the stream would borrow in a way the
    // loop's `Send` bound cannot name.
    let starting: Vec<_> = rules
        .iter()
        .map(|(rule, timer, enabled)| {
            start(shared, state, rule, timer.clone(), *enabled, true, cancel)
        })
        .collect();
    let started: Vec<Option<Running>> = futures::stream::iter(starting)
        .buffered(READ_AT_ONCE)
        .collect()
        .await;
    let running = started.into_iter().collect::<Option<Vec<Running>>>()?;
    timers
        .lock()
        .extend(running.iter().map(|r| (r.rule.clone(), r.view())));
    info!(timers = running.len(), "timers running");
    Some(Started { catalog, running })
}

/// Runs every timer rule's schedule from where [`start_all`] left them until `cancel`,
/// pausing the timers of disabled rules.
pub(crate) async fn run(
    shared: Arc<Shared>,
    state: TimerState,
    timers: Timers,
    started: Started,
    cancel: CancellationToken,
) {
    let Started {
        mut catalog,
        mut running,
    } = started;
    loop {
        let mut wait = running
            .iter()
            .filter_map(|r| r.due)
            .min()
            .map_or(IDLE, |due| (due - Utc::now()).to_std().unwrap_or_default());
        if running.iter().any(|r| r.pending.is_some()) {
            wait = wait.min(Duration::from_millis(250));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = catalog.changed() => {
                if changed.is_err() {
                    cancel.cancelled().await;
                    return;
                }
                let current = catalog.borrow_and_update().clone();
                follow(&shared, &state, &timers, &mut running, &current, &cancel).await;
                continue;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        let (plain, policed): (Vec<usize>, Vec<usize>) = running
            .iter()
            .enumerate()
            .filter(|(_, r)| r.wants_turn(now))
            .map(|(i, _)| i)
            .partition(|&i| running[i].timer.overlap == Overlap::Allow);
        let mut turns = fire_all(&shared, &running, &plain).await;
        // Timers with an overlap policy first ask the store whether their rule's
        // executions still run.
        let turning: Vec<_> = policed
            .into_iter()
            .map(|i| {
                let (shared, r) = (&shared, &running[i]);
                async move { (i, turn(shared, r, now).await) }
            })
            .collect();
        turns.extend(
            futures::stream::iter(turning)
                .buffer_unordered(RECORD_AT_ONCE)
                .collect::<Vec<_>>()
                .await,
        );
        let mut failed = false;
        let mut fired = Vec::new();
        {
            let mut views = timers.lock();
            for (i, t) in turns {
                let r = &mut running[i];
                failed |= t.failed;
                r.pending = t.pending;
                if t.next != r.next || t.last != r.last {
                    if let Some(last) = t.last.filter(|l| r.last < Some(*l)) {
                        fired.push(i);
                        r.last = Some(last);
                    }
                    r.set_next(t.next);
                    if let Some(view) = views.get_mut(&r.rule) {
                        view.next_fire = r.next;
                        view.last_fire = r.last;
                    }
                }
            }
        }
        // Recorded once every tick of this round is out, so that recording never holds
        // back a tick.
        let recording: Vec<_> = fired
            .iter()
            .filter_map(|&i| {
                let r = &running[i];
                Some(record(&state, &r.rule, r.last?))
            })
            .collect();
        futures::stream::iter(recording)
            .buffer_unordered(RECORD_AT_ONCE)
            .collect::<()>()
            .await;
        if failed {
            tokio::time::sleep(FIRE_RETRY).await;
        }
    }
}

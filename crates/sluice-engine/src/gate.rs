//! The admission gate of one action: FIFO queues (one per concurrency key), concurrency
//! limits, a rate limit and a bounded queue. Plain data and no I/O: the action supervisor
//! owns one and asks it what to admit; tests and benchmarks drive it directly.
//!
//! - Within a key, executions are admitted strictly in the order they were offered.
//! - With `max_concurrent_total`, keys with work waiting take turns (round robin), so one
//!   busy key cannot starve the others.
//! - A rate limit delays admissions (sliding window); it never rejects.

use std::collections::VecDeque;
use std::time::Duration;

// foldhash rather than SipHash: every admission and release hashes ids and keys several
// times, and the ids are the engine's own. Its seed is random per process.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

// Tokio's clock, so tests with paused time drive the rate limit window too.
pub use tokio::time::Instant;

use sluice_core::ExecutionId;

/// What the gate enforces; built from an action's policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatePolicy {
    /// Limit per key (the whole action when there is no key).
    pub max_concurrent: Option<usize>,
    /// Limit across all keys.
    pub max_concurrent_total: Option<usize>,
    /// Reject instead of queueing when the key is at its limit.
    pub cancel_when_full: bool,
    /// Queued executions beyond which new ones are rejected.
    pub max_queue: Option<usize>,
    /// At most `count` admissions in any window of `per`.
    pub rate_limit: Option<(u32, Duration)>,
}

/// Why the gate refused an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `on_full: cancel` and the key is at its limit.
    Full { limit: usize },
    /// `max_queue` reached.
    QueueFull { limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full { limit } => write!(
                f,
                "cancelled by policy: {limit} already running and on_full is cancel"
            ),
            Self::QueueFull { limit } => write!(
                f,
                "rejected by policy: the queue already holds max_queue = {limit}"
            ),
        }
    }
}

/// What to do next.
#[derive(Debug, PartialEq)]
pub enum Next<T> {
    Admit(ExecutionId, T),
    /// Nothing can be admitted before this instant (rate limit).
    WaitUntil(Instant),
    /// Nothing can be admitted until an execution ends or a new one arrives.
    Idle,
}

struct Queued<T> {
    id: ExecutionId,
    item: T,
    enqueued_at: Instant,
}

struct KeyState<T> {
    key: String,
    queue: VecDeque<Queued<T>>,
    /// Slots of this key held now; which executions hold them is in [`Gate::active`].
    active: usize,
    total_enqueued: u64,
    total_completed: u64,
}

impl<T> KeyState<T> {
    fn new(key: String) -> Self {
        Self {
            key,
            queue: VecDeque::new(),
            active: 0,
            total_enqueued: 0,
            total_completed: 0,
        }
    }
}

/// Figures for one key (or the whole action).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStats {
    pub key: String,
    pub queue_length: usize,
    pub active_count: usize,
    pub total_enqueued: u64,
    pub total_completed: u64,
    /// How long the oldest queued execution has waited.
    #[serde(skip)]
    pub oldest_queued_for: Option<Duration>,
}

/// A key's place in [`Gate::keys`]: a key is looked up by its text once, when an execution
/// is offered, and by this index from then on.
type KeyIndex = usize;

/// A slot taken for an execution not stored yet (see [`Gate::reserve`]); it stands in the
/// active set under a placeholder id below zero until the execution has its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation(ExecutionId);

pub struct Gate<T> {
    policy: GatePolicy,
    /// Slots held by reservations, and the last placeholder id given out.
    reserved: usize,
    last_placeholder: i64,
    /// Every key seen, in the order first seen; a key's figures outlive its queue.
    keys: Vec<KeyState<T>>,
    key_index: HashMap<String, KeyIndex>,
    /// Keys with executions waiting, in turn order.
    turns: VecDeque<KeyIndex>,
    /// Which key each active execution holds a slot of.
    active: HashMap<ExecutionId, KeyIndex>,
    /// Every queued execution, so membership is not a scan of the queues.
    queued_ids: HashSet<ExecutionId>,
    queued: usize,
    admitted_at: VecDeque<Instant>,
}

impl<T> Gate<T> {
    pub fn new(policy: GatePolicy) -> Self {
        Self {
            policy,
            reserved: 0,
            last_placeholder: 0,
            keys: Vec::new(),
            key_index: HashMap::new(),
            turns: VecDeque::new(),
            active: HashMap::new(),
            queued_ids: HashSet::new(),
            queued: 0,
            admitted_at: VecDeque::new(),
        }
    }

    /// A new policy, in force from the next admission; queues and slots stay as they are.
    pub fn set_policy(&mut self, policy: GatePolicy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> &GatePolicy {
        &self.policy
    }

    pub fn queue_length(&self) -> usize {
        self.queued
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    pub fn is_active(&self, id: ExecutionId) -> bool {
        self.active.contains_key(&id)
    }

    /// Slots held by reservations not yet bound to an execution.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// The index of `key`, known from now on.
    fn key(&mut self, key: String) -> KeyIndex {
        if let Some(&index) = self.key_index.get(&key) {
            return index;
        }
        let index = self.keys.len();
        self.key_index.insert(key.clone(), index);
        self.keys.push(KeyState::new(key));
        index
    }

    fn key_full(&self, key: KeyIndex) -> bool {
        self.policy
            .max_concurrent
            .is_some_and(|limit| self.keys[key].active >= limit)
    }

    fn total_full(&self) -> bool {
        self.policy
            .max_concurrent_total
            .is_some_and(|limit| self.active.len() >= limit)
    }

    /// Offers a new execution; it joins the back of its key's queue unless the policy
    /// refuses it.
    pub fn offer(
        &mut self,
        id: ExecutionId,
        key: String,
        item: T,
        now: Instant,
    ) -> Result<(), Refusal> {
        // A key is known from its first accepted execution, not from a refused one.
        let known = self.key_index.get(&key).copied();
        let held = known.map_or(0, |k| self.keys[k].active);
        let key_full = self
            .policy
            .max_concurrent
            .is_some_and(|limit| held >= limit);
        if self.policy.cancel_when_full && (key_full || self.total_full()) {
            let limit = self
                .policy
                .max_concurrent
                .or(self.policy.max_concurrent_total)
                .unwrap_or(0);
            return Err(Refusal::Full { limit });
        }
        if let Some(limit) = self.policy.max_queue
            && self.queued >= limit
        {
            return Err(Refusal::QueueFull { limit });
        }
        let key = known.unwrap_or_else(|| self.key(key));
        let state = &mut self.keys[key];
        if state.queue.is_empty() {
            self.turns.push_back(key);
        }
        state.queue.push_back(Queued {
            id,
            item,
            enqueued_at: now,
        });
        state.total_enqueued += 1;
        self.queued += 1;
        self.queued_ids.insert(id);
        Ok(())
    }

    /// Puts an execution back at the head of its key's queue (a retry after its worker was
    /// lost): it goes before everything that was waiting behind it. Limits on queueing do
    /// not apply; it was already accepted once.
    pub fn offer_front(&mut self, id: ExecutionId, key: String, item: T, now: Instant) {
        let key = self.key(key);
        let state = &mut self.keys[key];
        if state.queue.is_empty() {
            self.turns.push_front(key);
        }
        state.queue.push_front(Queued {
            id,
            item,
            enqueued_at: now,
        });
        self.queued += 1;
        self.queued_ids.insert(id);
        self.check();
    }

    /// Counts an execution found past admission (after a restart) as active at once.
    pub fn resume(&mut self, id: ExecutionId, key: String) {
        if self.active.contains_key(&id) {
            return;
        }
        let key = self.key(key);
        let state = &mut self.keys[key];
        state.active += 1;
        state.total_enqueued += 1;
        self.active.insert(id, key);
    }

    /// `Err(when)` while the rate limit lets nothing through before `when`.
    fn rate_allows(&mut self, now: Instant) -> Result<(), Instant> {
        if let Some((count, per)) = self.policy.rate_limit {
            while self
                .admitted_at
                .front()
                .is_some_and(|t| now.duration_since(*t) >= per)
            {
                self.admitted_at.pop_front();
            }
            if self.admitted_at.len() >= count as usize {
                return Err(self.admitted_at[0] + per);
            }
        }
        Ok(())
    }

    /// Takes a slot of `key` at once for an execution about to be stored, when one would
    /// be admitted now without passing anyone: nothing queued, the limits and the rate
    /// limit allowing. The slot is held until [`Gate::bind`] gives it its execution or
    /// [`Gate::unreserve`] frees it.
    pub fn reserve(&mut self, key: String, now: Instant) -> Option<Reservation> {
        if self.queued > 0 || self.total_full() || self.rate_allows(now).is_err() {
            return None;
        }
        let known = self.key_index.get(&key).copied();
        let held = known.map_or(0, |k| self.keys[k].active);
        if self
            .policy
            .max_concurrent
            .is_some_and(|limit| held >= limit)
        {
            return None;
        }
        let key = known.unwrap_or_else(|| self.key(key));
        self.last_placeholder -= 1;
        let placeholder = ExecutionId(self.last_placeholder);
        let state = &mut self.keys[key];
        state.active += 1;
        state.total_enqueued += 1;
        self.active.insert(placeholder, key);
        self.reserved += 1;
        if self.policy.rate_limit.is_some() {
            self.admitted_at.push_back(now);
        }
        self.check();
        Some(Reservation(placeholder))
    }

    /// Gives a reserved slot its execution, stored now; false if the reservation is not
    /// held here.
    pub fn bind(&mut self, reservation: Reservation, id: ExecutionId) -> bool {
        let Some(key) = self.active.remove(&reservation.0) else {
            return false;
        };
        self.active.insert(id, key);
        self.reserved -= 1;
        self.check();
        true
    }

    /// Frees a reserved slot whose execution was not stored, as if it had never been
    /// taken (the rate limit still counts it).
    pub fn unreserve(&mut self, reservation: Reservation) -> bool {
        let Some(key) = self.active.remove(&reservation.0) else {
            return false;
        };
        let state = &mut self.keys[key];
        state.active -= 1;
        state.total_enqueued -= 1;
        self.reserved -= 1;
        self.check();
        true
    }

    /// The next execution to admit, if the limits allow one now.
    pub fn next(&mut self, now: Instant) -> Next<T> {
        if self.queued == 0 || self.total_full() {
            return Next::Idle;
        }
        if let Err(at) = self.rate_allows(now) {
            return Next::WaitUntil(at);
        }
        // Take turns: the first key in turn order with room goes; it then goes to the back.
        for _ in 0..self.turns.len() {
            let key = self.turns.pop_front().expect("turns is not empty");
            if self.key_full(key) {
                self.turns.push_back(key);
                continue;
            }
            let state = &mut self.keys[key];
            let queued = state
                .queue
                .pop_front()
                .expect("a key in turns has work queued");
            state.active += 1;
            if !state.queue.is_empty() {
                self.turns.push_back(key);
            }
            self.queued -= 1;
            self.queued_ids.remove(&queued.id);
            self.active.insert(queued.id, key);
            if self.policy.rate_limit.is_some() {
                self.admitted_at.push_back(now);
            }
            self.check();
            return Next::Admit(queued.id, queued.item);
        }
        Next::Idle
    }

    /// Frees the slot an execution held. Returns false if it held none: a slot is released
    /// at most once.
    pub fn release(&mut self, id: ExecutionId) -> bool {
        let Some(key) = self.active.remove(&id) else {
            return false;
        };
        let state = &mut self.keys[key];
        state.active -= 1;
        state.total_completed += 1;
        self.check();
        true
    }

    /// Takes a queued execution out of its queue (cancellation before admission).
    pub fn remove_queued(&mut self, id: ExecutionId) -> Option<T> {
        if !self.queued_ids.remove(&id) {
            return None;
        }
        let (key, index) = self.keys.iter().enumerate().find_map(|(key, s)| {
            let index = s.queue.iter().position(|q| q.id == id)?;
            Some((key, index))
        })?;
        let state = &mut self.keys[key];
        let queued = state.queue.remove(index)?;
        if state.queue.is_empty() {
            self.turns.retain(|k| *k != key);
        }
        self.queued -= 1;
        self.check();
        Some(queued.item)
    }

    /// Whether `id` is waiting in a queue.
    pub fn is_queued(&self, id: ExecutionId) -> bool {
        self.queued_ids.contains(&id)
    }

    /// Figures per key, sorted by key.
    pub fn key_stats(&self, now: Instant) -> Vec<KeyStats> {
        let mut stats: Vec<KeyStats> = self
            .keys
            .iter()
            .map(|s| KeyStats {
                key: s.key.clone(),
                queue_length: s.queue.len(),
                active_count: s.active,
                total_enqueued: s.total_enqueued,
                total_completed: s.total_completed,
                oldest_queued_for: s.queue.front().map(|q| now.duration_since(q.enqueued_at)),
            })
            .collect();
        stats.sort_by(|a, b| a.key.cmp(&b.key));
        stats
    }

    fn check(&self) {
        if cfg!(debug_assertions) {
            let mut holding = vec![0; self.keys.len()];
            for key in self.active.values() {
                holding[*key] += 1;
            }
            for (state, held) in self.keys.iter().zip(holding) {
                debug_assert_eq!(state.active, held, "slots of key {:?} disagree", state.key);
            }
            debug_assert_eq!(self.key_index.len(), self.keys.len());
            debug_assert_eq!(
                self.keys.iter().map(|s| s.queue.len()).sum::<usize>(),
                self.queued
            );
            debug_assert_eq!(self.queued_ids.len(), self.queued);
            debug_assert_eq!(
                self.active.keys().filter(|id| id.0 < 0).count(),
                self.reserved,
                "reservations and placeholders disagree"
            );
            debug_assert!(
                self.queued_ids
                    .iter()
                    .all(|id| !self.active.contains_key(id)),
                "an execution is both queued and active"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> ExecutionId {
        ExecutionId(n)
    }

    fn admit_all(gate: &mut Gate<()>, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        while let Next::Admit(id, ()) = gate.next(now) {
            out.push(id.0);
        }
        out
    }

    #[test]
    fn a_reservation_takes_a_free_slot_only_when_no_one_waits() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(2),
            ..Default::default()
        });
        let first = gate.reserve(String::new(), now).expect("a free slot");
        assert_eq!((gate.active_count(), gate.reserved()), (1, 1));
        assert!(gate.bind(first, id(1)));
        assert!(!gate.bind(first, id(1)), "a reservation is bound once");
        assert!(gate.is_active(id(1)));
        let second = gate.reserve(String::new(), now).expect("the second slot");
        assert_eq!(gate.reserve(String::new(), now), None, "both slots held");
        assert!(gate.unreserve(second));
        assert_eq!((gate.active_count(), gate.reserved()), (1, 0));
        // Someone waiting goes first: no reservation jumps the queue.
        gate.offer(id(2), String::new(), (), now).unwrap();
        gate.offer(id(3), String::new(), (), now).unwrap();
        assert_eq!(gate.reserve(String::new(), now), None);
        assert_eq!(admit_all(&mut gate, now), [2]);
        assert!(gate.release(id(1)));
        assert_eq!(gate.reserve(String::new(), now), None, "3 still waits");
        assert_eq!(admit_all(&mut gate, now), [3]);
        let stats = &gate.key_stats(now)[0];
        assert_eq!((stats.total_enqueued, stats.total_completed), (3, 1));
    }

    #[test]
    fn a_reservation_counts_against_the_rate_limit() {
        let now = Instant::now();
        let mut gate: Gate<()> = Gate::new(GatePolicy {
            rate_limit: Some((1, Duration::from_secs(60))),
            ..Default::default()
        });
        let taken = gate.reserve(String::new(), now).expect("within the rate");
        assert!(gate.bind(taken, id(1)));
        assert_eq!(gate.reserve(String::new(), now), None, "the rate is spent");
    }

    #[test]
    fn fifo_within_the_limit() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(3),
            ..Default::default()
        });
        for n in 1..=10 {
            gate.offer(id(n), String::new(), (), now).unwrap();
        }
        assert_eq!(admit_all(&mut gate, now), [1, 2, 3]);
        assert!(gate.release(id(2)));
        assert!(!gate.release(id(2)), "a slot is released once");
        assert!(!gate.release(id(99)), "an unknown execution frees nothing");
        assert_eq!(admit_all(&mut gate, now), [4]);
        for n in [1, 3, 4] {
            gate.release(id(n));
        }
        assert_eq!(admit_all(&mut gate, now), [5, 6, 7]);
        assert_eq!((gate.active_count(), gate.queue_length()), (3, 3));
    }

    #[test]
    fn no_limit_admits_everything() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy::default());
        for n in 1..=5 {
            gate.offer(id(n), String::new(), (), now).unwrap();
        }
        assert_eq!(admit_all(&mut gate, now), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn keys_have_their_own_queue_and_limit() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(1),
            ..Default::default()
        });
        for (n, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "a")] {
            gate.offer(id(n), key.into(), (), now).unwrap();
        }
        assert_eq!(
            admit_all(&mut gate, now),
            [1, 3],
            "one per key, in parallel"
        );
        gate.release(id(3));
        assert_eq!(admit_all(&mut gate, now), [4]);
        gate.release(id(1));
        assert_eq!(admit_all(&mut gate, now), [2]);
        gate.release(id(2));
        assert_eq!(admit_all(&mut gate, now), [5]);
    }

    #[test]
    fn keys_share_a_total_by_taking_turns() {
        let now = Instant::now();
        let policy = GatePolicy {
            max_concurrent: Some(10),
            max_concurrent_total: Some(2),
            ..Default::default()
        };
        let mut gate = Gate::new(policy);
        for n in 1..=6 {
            gate.offer(id(n), "busy".into(), (), now).unwrap();
        }
        gate.offer(id(7), "quiet".into(), (), now).unwrap();
        assert_eq!(
            admit_all(&mut gate, now),
            [1, 7],
            "the quiet key is not starved"
        );
        gate.release(id(1));
        assert_eq!(admit_all(&mut gate, now), [2]);
        gate.release(id(7));
        assert_eq!(admit_all(&mut gate, now), [3]);
    }

    #[test]
    fn on_full_cancel_and_max_queue_refuse() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(1),
            cancel_when_full: true,
            ..Default::default()
        });
        gate.offer(id(1), String::new(), (), now).unwrap();
        assert_eq!(admit_all(&mut gate, now), [1]);
        assert_eq!(
            gate.offer(id(2), String::new(), (), now),
            Err(Refusal::Full { limit: 1 })
        );

        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(1),
            max_queue: Some(2),
            ..Default::default()
        });
        gate.offer(id(1), String::new(), (), now).unwrap();
        assert_eq!(
            admit_all(&mut gate, now),
            [1],
            "admitted at once: not queued"
        );
        gate.offer(id(2), String::new(), (), now).unwrap();
        gate.offer(id(3), String::new(), (), now).unwrap();
        assert_eq!(
            gate.offer(id(4), String::new(), (), now),
            Err(Refusal::QueueFull { limit: 2 })
        );
        assert!(
            Refusal::QueueFull { limit: 2 }
                .to_string()
                .contains("max_queue = 2")
        );
    }

    #[test]
    fn the_rate_limit_delays_admissions() {
        let start = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            rate_limit: Some((2, Duration::from_secs(1))),
            ..Default::default()
        });
        for n in 1..=5 {
            gate.offer(id(n), String::new(), (), start).unwrap();
        }
        assert_eq!(admit_all(&mut gate, start), [1, 2]);
        assert_eq!(
            gate.next(start),
            Next::WaitUntil(start + Duration::from_secs(1))
        );
        let later = start + Duration::from_millis(1000);
        assert_eq!(admit_all(&mut gate, later), [3, 4]);
        assert_eq!(
            admit_all(&mut gate, later + Duration::from_millis(999)),
            Vec::<i64>::new()
        );
        assert_eq!(admit_all(&mut gate, later + Duration::from_secs(1)), [5]);
    }

    #[test]
    fn cancelling_a_queued_execution_keeps_the_order_of_the_rest() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(1),
            ..Default::default()
        });
        for n in 1..=4 {
            gate.offer(id(n), String::new(), (), now).unwrap();
        }
        assert!(gate.is_queued(id(3)));
        assert_eq!(gate.remove_queued(id(3)), Some(()));
        assert_eq!(gate.remove_queued(id(3)), None);
        let mut order = Vec::new();
        while let Next::Admit(admitted, ()) = gate.next(now) {
            order.push(admitted.0);
            gate.release(admitted);
        }
        assert_eq!(order, [1, 2, 4]);
    }

    #[test]
    fn a_retry_goes_to_the_head_of_the_queue() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(1),
            max_queue: Some(1),
            ..Default::default()
        });
        gate.offer(id(1), String::new(), (), now).unwrap();
        assert_eq!(admit_all(&mut gate, now), [1]);
        gate.offer(id(2), String::new(), (), now).unwrap();
        assert!(gate.release(id(1)));
        gate.offer_front(id(1), String::new(), (), now);
        assert_eq!(admit_all(&mut gate, now), [1]);
    }

    #[test]
    fn resumed_executions_hold_slots() {
        let now = Instant::now();
        let mut gate = Gate::new(GatePolicy {
            max_concurrent: Some(2),
            ..Default::default()
        });
        gate.resume(id(1), String::new());
        gate.resume(id(2), String::new());
        gate.offer(id(3), String::new(), (), now).unwrap();
        assert_eq!(gate.next(now), Next::Idle);
        gate.release(id(1));
        assert_eq!(admit_all(&mut gate, now), [3]);
    }
}

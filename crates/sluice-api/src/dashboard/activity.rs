//! What the overview charts: executions ended per minute by status over the last hour, and
//! today's rejected events and dead letters.
//!
//! Both are read from the engine's own counters (the ones `/metrics` exports), sampled
//! every ten seconds by a task that lives as long as the engine, so drawing the chart costs
//! the store nothing however many executions run. The minutes cover the time since the
//! engine started, up to an hour; today's counts are read from the store once, when the
//! engine starts, and counted on from there.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, DurationRound as _, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use sluice_core::{EventStatus, ExecutionStatus};
use sluice_engine::Engine;
use sluice_store::EventFilter;
use sluice_telemetry::metrics;

/// Minutes kept for the chart.
const MINUTES: usize = 60;

/// How many of today's rejected events or dead letters are counted from the store at
/// start; past this, the count says it is at least that.
const SEEDED_AT_MOST: u32 = 1000;

/// Executions ended, by terminal status.
pub(crate) type Ended = BTreeMap<&'static str, u64>;

/// One minute of the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Minute {
    pub(crate) at: DateTime<Utc>,
    pub(crate) ended: Ended,
}

/// Today's counts for the overview.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Today {
    pub(crate) rejected_events: u64,
    pub(crate) dead_letters: u64,
    /// The store held more than could be counted at start: the counts are at least these.
    pub(crate) at_least: bool,
}

#[derive(Default)]
pub(crate) struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    minutes: VecDeque<Minute>,
    /// The minute being counted and the totals when it began.
    mark: Option<(DateTime<Utc>, Ended)>,
    today: Option<Day>,
}

/// Today's counts: what the store held at start (or zero on a new day), and the counters'
/// readings then.
struct Day {
    date: NaiveDate,
    rejected: u64,
    dead: u64,
    rejected_counter: u64,
    dead_counter: u64,
    at_least: bool,
}

fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

fn since(now: &Ended, then: &Ended) -> Ended {
    now.iter()
        .map(|(status, n)| (*status, n - then.get(status).copied().unwrap_or(0).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn counters() -> (u64, u64) {
    let m = metrics();
    (
        m.trigger_events.get([EventStatus::Rejected.as_str()]),
        m.dead_letters.get(),
    )
}

/// Executions ended since the engine started, by status, from its counters.
pub(crate) fn totals(engine: &Engine) -> Ended {
    let catalog = engine.catalog();
    let ended = &metrics().executions_ended;
    ExecutionStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|status| {
            let n = catalog
                .actions
                .keys()
                .map(|action| ended.get([action.as_str(), status.as_str()]))
                .sum();
            (status.as_str(), n)
        })
        .collect()
}

impl Activity {
    /// Samples `engine` every ten seconds for as long as it exists.
    pub(crate) fn watch(self: &std::sync::Arc<Self>, engine: Weak<Engine>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let activity = self.clone();
        runtime.spawn(async move {
            if let Some(engine) = engine.upgrade() {
                activity.seed(&engine, Utc::now()).await;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                activity.observe(Utc::now(), totals(&engine));
            }
        });
    }

    /// Counts today's rejected events and dead letters in the store.
    async fn seed(&self, engine: &Engine, now: DateTime<Utc>) {
        let midnight = now.date_naive().and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        let counters = counters();
        let store = engine.store();
        let rejected = store
            .find_events(&EventFilter {
                status: Some(EventStatus::Rejected),
                since: midnight,
                limit: Some(SEEDED_AT_MOST),
                ..EventFilter::default()
            })
            .await
            .map(|found| found.len())
            .unwrap_or(0);
        let dead = store
            .list_dead_letters(SEEDED_AT_MOST)
            .await
            .map(|found| {
                found
                    .iter()
                    .filter(|d| midnight.is_none_or(|m| d.created_at >= m))
                    .count()
            })
            .unwrap_or(0);
        let at_least = [rejected, dead]
            .iter()
            .any(|n| *n >= SEEDED_AT_MOST as usize);
        self.inner.lock().expect("activity lock").today = Some(Day {
            date: now.date_naive(),
            rejected: rejected as u64,
            dead: dead as u64,
            rejected_counter: counters.0,
            dead_counter: counters.1,
            at_least,
        });
    }

    /// Takes a reading of the totals: closes the minute being counted once it is over.
    pub(crate) fn observe(&self, now: DateTime<Utc>, totals: Ended) {
        let minute = minute_of(now);
        let mut inner = self.inner.lock().expect("activity lock");
        match inner.mark.take() {
            Some((at, then)) if at < minute => {
                let ended = since(&totals, &then);
                inner.minutes.push_back(Minute { at, ended });
                while inner.minutes.len() > MINUTES {
                    inner.minutes.pop_front();
                }
                inner.mark = Some((minute, totals));
            }
            Some(mark) => inner.mark = Some(mark),
            None => inner.mark = Some((minute, totals)),
        }
        let today = now.date_naive();
        if let Some(day) = inner.today.as_mut()
            && day.date != today
        {
            let counters = counters();
            *day = Day {
                date: today,
                rejected: 0,
                dead: 0,
                rejected_counter: counters.0,
                dead_counter: counters.1,
                at_least: false,
            };
        }
    }

    /// The last hour's minutes, the one under way included (counted up to `totals`).
    pub(crate) fn minutes(&self, now: DateTime<Utc>, totals: &Ended) -> Vec<Minute> {
        let inner = self.inner.lock().expect("activity lock");
        let oldest = minute_of(now) - TimeDelta::minutes(MINUTES as i64 - 1);
        let mut minutes: Vec<Minute> = inner
            .minutes
            .iter()
            .filter(|m| m.at >= oldest)
            .cloned()
            .collect();
        if let Some((at, then)) = &inner.mark {
            minutes.push(Minute {
                at: *at,
                ended: since(totals, then),
            });
        }
        minutes
    }

    /// Today's rejected events and dead letters, once the store has been read.
    pub(crate) fn today(&self) -> Option<Today> {
        let inner = self.inner.lock().expect("activity lock");
        let day = inner.today.as_ref()?;
        let (rejected, dead) = counters();
        Some(Today {
            rejected_events: day.rejected + rejected.saturating_sub(day.rejected_counter),
            dead_letters: day.dead + dead.saturating_sub(day.dead_counter),
            at_least: day.at_least,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn ended(pairs: &[(&'static str, u64)]) -> Ended {
        pairs.iter().copied().collect()
    }

    #[test]
    fn each_minute_counts_what_ended_in_it() {
        let activity = Activity::default();
        activity.observe(at("2026-12-03T10:00:05Z"), ended(&[("succeeded", 10)]));
        activity.observe(
            at("2026-12-03T10:00:45Z"),
            ended(&[("succeeded", 40), ("failed", 1)]),
        );
        activity.observe(
            at("2026-12-03T10:01:02Z"),
            ended(&[("succeeded", 70), ("failed", 2)]),
        );
        let now = at("2026-12-03T10:01:30Z");
        let minutes = activity.minutes(now, &ended(&[("succeeded", 75), ("failed", 2)]));
        assert_eq!(
            minutes,
            vec![
                Minute {
                    at: at("2026-12-03T10:00:00Z"),
                    ended: ended(&[("succeeded", 60), ("failed", 2)]),
                },
                Minute {
                    at: at("2026-12-03T10:01:00Z"),
                    ended: ended(&[("succeeded", 5)]),
                },
            ]
        );
    }

    #[test]
    fn only_the_last_hour_is_kept() {
        let activity = Activity::default();
        let start = at("2026-12-03T10:00:00Z");
        for minute in 0..90 {
            let n = minute as u64;
            activity.observe(
                start + TimeDelta::minutes(minute),
                ended(&[("succeeded", n)]),
            );
        }
        let now = start + TimeDelta::minutes(89);
        let minutes = activity.minutes(now, &ended(&[("succeeded", 89)]));
        assert_eq!(minutes.len(), MINUTES);
        assert_eq!(minutes[0].at, start + TimeDelta::minutes(30));
        assert_eq!(minutes.last().unwrap().at, now);
    }
}

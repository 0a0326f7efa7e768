//! Timers: StackStorm's `core.st2.IntervalTimer`, `core.st2.CronTimer` and
//! `core.st2.DateTimer`, written in rules exactly as StackStorm users write them:
//!
//! ```yaml
//! trigger:
//!   type: core.st2.IntervalTimer
//!   parameters: {unit: seconds, delta: 30}
//! ```
//!
//! Each tick has a *nominal* time, the instant it is for: interval ticks fall on multiples
//! of the interval since the Unix epoch (so they are the same whoever computes them), cron
//! ticks where the pattern matches in the timer's zone, a date timer's on its date. The
//! engine fires each nominal tick once ([`crate::timer`]'s users keep the last one fired).
//!
//! `CronTimer` takes APScheduler's fields (`year` is not supported; `week` neither) with
//! its meaning: `day_of_week` 0 is Monday; fields more significant than the least
//! significant one given default to `*`, less significant ones to their minimum (so
//! `{hour: 5}` is 05:00:00 every day). Or `cron: "*/5 * * * *"` (5 fields, or 6 with
//! seconds first). Patterns are evaluated by `croner` in the timer's `timezone` (default
//! UTC): a time that does not exist on a DST day fires at the first valid instant after, a
//! repeated one fires once.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::Value;

pub const INTERVAL: &str = "core.st2.IntervalTimer";
pub const CRON: &str = "core.st2.CronTimer";
pub const DATE: &str = "core.st2.DateTimer";

/// The timer triggers, with what their payload holds.
pub const TRIGGERS: [(&str, &str); 3] = [
    (
        INTERVAL,
        "Fires every `delta` `unit`s: {executed_at, schedule, nominal_time, timer}",
    ),
    (
        CRON,
        "Fires when the cron fields match: {executed_at, schedule, nominal_time, timer}",
    ),
    (
        DATE,
        "Fires once, on `date`: {executed_at, schedule, nominal_time, timer}",
    ),
];

/// What happens to ticks missed while the engine was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Skipped.
    None,
    /// The most recent one fires, once.
    Latest,
    /// Every one fires, oldest first (at most [`MAX_CATCHUP`]).
    All,
}

/// The most ticks `catchup: all` fires after an outage.
pub const MAX_CATCHUP: usize = 1000;

#[derive(Debug, Clone)]
pub enum Schedule {
    Interval(Duration),
    Cron { cron: Box<Cron>, zone: Tz },
    Date(DateTime<Utc>),
}

/// Whether a tick fires while executions from the rule's earlier ticks still run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// It fires (the action's own queue and `max_concurrent` still apply).
    Allow,
    /// It is dropped.
    Skip,
    /// It waits until they end; while one waits, later ones are dropped.
    QueueOne,
}

/// One timer: a rule's schedule and what to do with missed ticks.
#[derive(Debug, Clone)]
pub struct Timer {
    /// The trigger type (`core.st2.IntervalTimer`, ...).
    pub kind: &'static str,
    pub schedule: Schedule,
    /// The rule's `trigger.parameters`, as StackStorm's payload `schedule` shows them.
    pub parameters: Value,
    pub catchup: Catchup,
    /// Missed ticks older than this are never caught up.
    pub catchup_window: Duration,
    pub overlap: Overlap,
    /// Each tick fires up to this long after its nominal time, at random, so many timers
    /// on one schedule do not all fire at once.
    pub jitter: Duration,
}

impl Timer {
    /// Reads a timer rule's `trigger.parameters`; the error names the field.
    pub fn from_parameters(kind: &str, parameters: &Value) -> Result<Self, (String, String)> {
        let field = |name: &str| format!("trigger.parameters.{name}");
        let empty = serde_json::Map::new();
        let p = parameters.as_object().unwrap_or(&empty);
        let text = |name: &str| {
            p.get(name).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let mut parameters = p.clone();
        let catchup = match parameters
            .remove("catchup")
            .as_ref()
            .and_then(Value::as_str)
        {
            None | Some("latest") => Catchup::Latest,
            Some("none") => Catchup::None,
            Some("all") => Catchup::All,
            Some(other) => {
                return Err((
                    field("catchup"),
                    format!("{other:?} is not none, latest or all"),
                ));
            }
        };
        let overlap = match parameters
            .remove("overlap")
            .as_ref()
            .and_then(Value::as_str)
        {
            None | Some("allow") => Overlap::Allow,
            Some("skip") => Overlap::Skip,
            Some("queue_one") => Overlap::QueueOne,
            Some(other) => {
                return Err((
                    field("overlap"),
                    format!("{other:?} is not allow, skip or queue_one"),
                ));
            }
        };
        let jitter = match parameters.remove("jitter") {
            None => Duration::ZERO,
            Some(v) => v
                .as_str()
                .and_then(|s| humantime::parse_duration(s).ok())
                .ok_or_else(|| {
                    (
                        field("jitter"),
                        format!("{v} is not a duration such as 500ms or 5s"),
                    )
                })?,
        };
        let catchup_window = match parameters.remove("catchup_window") {
            None => Duration::from_secs(3600),
            Some(v) => v
                .as_str()
                .and_then(|s| humantime::parse_duration(s).ok())
                .ok_or_else(|| {
                    (
                        field("catchup_window"),
                        format!("{v} is not a duration such as 10m or 2h"),
                    )
                })?,
        };
        let (kind, schedule) = match kind {
            INTERVAL => {
                let unit = text("unit").unwrap_or_default();
                let seconds = match unit.as_str() {
                    "seconds" => 1,
                    "minutes" => 60,
                    "hours" => 3600,
                    "days" => 86_400,
                    "weeks" => 604_800,
                    other => {
                        return Err((
                            field("unit"),
                            format!("{other:?} is not seconds, minutes, hours, days or weeks"),
                        ));
                    }
                };
                let delta = p
                    .get("delta")
                    .and_then(Value::as_u64)
                    .filter(|d| *d > 0)
                    .ok_or_else(|| {
                        (
                            field("delta"),
                            "a whole number above 0 is needed".to_owned(),
                        )
                    })?;
                (
                    INTERVAL,
                    Schedule::Interval(Duration::from_secs(delta.saturating_mul(seconds))),
                )
            }
            CRON => {
                let zone = zone(text("timezone").as_deref()).map_err(|e| (field("timezone"), e))?;
                let pattern = match text("cron") {
                    Some(pattern) => {
                        let fields = pattern.split_whitespace().count();
                        if !(fields == 5 || fields == 6) {
                            return Err((
                                field("cron"),
                                format!(
                                    "{pattern:?} has {fields} fields; give 5 (minute first) or 6 (second first)"
                                ),
                            ));
                        }
                        pattern
                    }
                    None => aps_pattern(p).map_err(|(name, e)| (field(&name), e))?,
                };
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(&pattern)
                    .map_err(|e| {
                        (
                            field(if p.contains_key("cron") {
                                "cron"
                            } else {
                                "second"
                            }),
                            format!("{pattern:?}: {e}"),
                        )
                    })?;
                (
                    CRON,
                    Schedule::Cron {
                        cron: Box::new(cron),
                        zone,
                    },
                )
            }
            DATE => {
                let zone = zone(text("timezone").as_deref()).map_err(|e| (field("timezone"), e))?;
                let date = text("date").ok_or_else(|| {
                    (
                        field("date"),
                        "a date is needed, such as 2026-12-24 18:00:00".to_owned(),
                    )
                })?;
                let at = parse_date(&date, zone).ok_or_else(|| {
                    (
                        field("date"),
                        format!(
                            "{date:?} is not a date such as 2026-12-24 18:00:00 or an RFC 3339 time"
                        ),
                    )
                })?;
                (DATE, Schedule::Date(at))
            }
            other => return Err(("trigger.type".into(), format!("{other} is not a timer"))),
        };
        Ok(Self {
            kind,
            schedule,
            parameters: Value::Object(parameters),
            catchup,
            catchup_window,
            overlap,
            jitter,
        })
    }

    /// The first nominal tick strictly after `after`; `None` when there is none (a date
    /// timer past its date).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.schedule {
            Schedule::Interval(every) => {
                let every = every.as_millis().max(1) as i64;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(every) + 1) * every;
                DateTime::from_timestamp_millis(next)
            }
            Schedule::Cron { cron, zone } => cron
                .find_next_occurrence(&after.with_timezone(zone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Date(at) => (*at > after).then_some(*at),
        }
    }
}

fn zone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(name) => name.parse().map_err(|_| {
            format!("{name:?} is not a time zone (use IANA names such as Europe/London)")
        }),
    }
}

fn parse_date(text: &str, zone: Tz) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ]
    .into_iter()
    .find_map(|format| {
        NaiveDateTime::parse_from_str(text, format)
            .ok()
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(text, format)
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
    })
    .and_then(|naive| zone.from_local_datetime(&naive).earliest())
    .map(|at| at.with_timezone(&Utc))
}

/// APScheduler's cron fields as a 6-field pattern (seconds first).
fn aps_pattern(p: &serde_json::Map<String, Value>) -> Result<String, (String, String)> {
    for unsupported in ["year", "week", "start_date", "end_date"] {
        if p.contains_key(unsupported) {
            return Err((
                unsupported.into(),
                "not supported; use the other fields or `cron`".into(),
            ));
        }
    }
    // Most significant first; (name, minimum).
    let order = [
        ("month", "1"),
        ("day", "1"),
        ("day_of_week", "*"),
        ("hour", "0"),
        ("minute", "0"),
        ("second", "0"),
    ];
    let least = order.iter().rposition(|(name, _)| p.contains_key(*name)).ok_or_else(|| {
        ("second".to_owned(), "a CronTimer needs at least one of month, day, day_of_week, hour, minute, second, or `cron`".to_owned())
    })?;
    let value = |i: usize| -> Result<String, (String, String)> {
        let (name, minimum) = order[i];
        match p.get(name) {
            Some(v) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if name == "day_of_week" {
                    Ok(monday_first_to_cron(&text))
                } else {
                    Ok(text)
                }
            }
            None if i < least || name == "day_of_week" => Ok("*".into()),
            None => Ok(minimum.into()),
        }
    };
    // croner: second minute hour day-of-month month day-of-week
    Ok(format!(
        "{} {} {} {} {} {}",
        value(5)?,
        value(4)?,
        value(3)?,
        value(1)?,
        value(0)?,
        value(2)?
    ))
}

/// APScheduler numbers weekdays from Monday (0) to Sunday (6); cron from Sunday (0).
fn monday_first_to_cron(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if let Ok(n) = digits.parse::<u32>() {
            out.push_str(&((n + 1) % 7).to_string());
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    let mut after_slash = false;
    for c in text.chars() {
        if c.is_ascii_digit() && !after_slash {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out);
        after_slash = c == '/' || (after_slash && c.is_ascii_digit());
        out.push(c);
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn interval_ticks_fall_on_multiples_of_the_interval() {
        let t = Timer::from_parameters(INTERVAL, &json!({"unit": "seconds", "delta": 30})).unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:10Z")),
            Some(at("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:30Z")),
            Some(at("2026-01-01T00:01:00Z"))
        );
        assert_eq!(t.catchup, Catchup::Latest);
    }

    #[test]
    fn aps_fields_mean_what_apscheduler_means() {
        // {hour: 5}: 05:00:00 every day.
        let t = Timer::from_parameters(CRON, &json!({"hour": 5})).unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T06:00:00Z")),
            Some(at("2026-01-02T05:00:00Z"))
        );
        // day_of_week 0 is Monday: 2026-01-05 is a Monday.
        let t = Timer::from_parameters(CRON, &json!({"day_of_week": 0, "hour": 9, "minute": 30}))
            .unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-05T09:30:00Z"))
        );
        let t = Timer::from_parameters(CRON, &json!({"second": "*/10"})).unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:01Z")),
            Some(at("2026-01-01T00:00:10Z"))
        );
        let t = Timer::from_parameters(
            CRON,
            &json!({"cron": "*/5 * * * *", "timezone": "Europe/London"}),
        )
        .unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T00:01:00Z")),
            Some(at("2026-01-01T00:05:00Z"))
        );
    }

    #[test]
    fn a_dst_gap_fires_at_the_first_valid_instant_and_an_overlap_once() {
        // Europe/London springs forward at 01:00 UTC on 2026-03-29: 01:30 local does not exist.
        let t = Timer::from_parameters(
            CRON,
            &json!({"hour": 1, "minute": 30, "timezone": "Europe/London"}),
        )
        .unwrap();
        let fired = t.next_after(at("2026-03-29T00:00:00Z")).unwrap();
        assert_eq!(
            fired,
            at("2026-03-29T01:00:00Z"),
            "02:00 BST, the first valid instant after"
        );
        // America/New_York falls back at 06:00 UTC on 2026-11-01: 01:30 local happens twice.
        let t = Timer::from_parameters(
            CRON,
            &json!({"hour": 1, "minute": 30, "timezone": "America/New_York"}),
        )
        .unwrap();
        let first = t.next_after(at("2026-11-01T04:00:00Z")).unwrap();
        let second = t.next_after(first).unwrap();
        assert_eq!(first, at("2026-11-01T05:30:00Z"));
        assert!(
            second >= at("2026-11-02T00:00:00Z"),
            "fired once: then {second}"
        );
    }

    #[test]
    fn date_timers_fire_once() {
        let t = Timer::from_parameters(
            DATE,
            &json!({"date": "2026-12-24 18:00:00", "timezone": "Europe/Paris"}),
        )
        .unwrap();
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-12-24T17:00:00Z"))
        );
        assert_eq!(t.next_after(at("2026-12-24T17:00:00Z")), None);
    }

    #[test]
    fn bad_parameters_name_the_field() {
        for (kind, parameters, field) in [
            (
                INTERVAL,
                json!({"unit": "fortnights", "delta": 1}),
                "trigger.parameters.unit",
            ),
            (
                INTERVAL,
                json!({"unit": "seconds", "delta": 0}),
                "trigger.parameters.delta",
            ),
            (
                CRON,
                json!({"cron": "* * * * * * *"}),
                "trigger.parameters.cron",
            ),
            (
                CRON,
                json!({"hour": 5, "timezone": "Mars/Olympus"}),
                "trigger.parameters.timezone",
            ),
            (CRON, json!({"year": 2027}), "trigger.parameters.year"),
            (
                DATE,
                json!({"date": "next tuesday"}),
                "trigger.parameters.date",
            ),
            (
                INTERVAL,
                json!({"unit": "seconds", "delta": 5, "catchup": "some"}),
                "trigger.parameters.catchup",
            ),
        ] {
            let Err((found, _)) = Timer::from_parameters(kind, &parameters) else {
                panic!("{parameters} was taken");
            };
            assert_eq!(found, field, "{parameters}");
        }
    }
}

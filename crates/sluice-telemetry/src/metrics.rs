//! Process-wide counters in the Prometheus text format, served at `GET /metrics`.
//!
//! Every Sluice part in a process (engine, worker, store, bus) counts into the one
//! [`metrics()`] registry. Label values are static strings from small fixed sets, so a
//! counter is found by a short scan under a read lock and incremented atomically.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, RwLock};

/// A counter without labels.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help);
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// A counter with `N` labels; each distinct set of label values is its own series.
pub struct CounterVec<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: RwLock<Vec<([&'static str; N], AtomicU64)>>,
}

impl<const N: usize> CounterVec<N> {
    fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            series: RwLock::new(Vec::new()),
        }
    }

    pub fn inc(&self, values: [&'static str; N]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: [&'static str; N], n: u64) {
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, value)) = series.iter().find(|(v, _)| *v == values) {
                value.fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        match series.iter().find(|(v, _)| *v == values) {
            Some((_, value)) => {
                value.fetch_add(n, Ordering::Relaxed);
            }
            None => series.push((values, AtomicU64::new(n))),
        }
    }

    /// The value of one series (0 if it was never incremented).
    pub fn get(&self, values: [&'static str; N]) -> u64 {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .find(|(v, _)| *v == values)
            .map_or(0, |(_, value)| value.load(Ordering::Relaxed))
    }

    /// The sum over every series.
    pub fn total(&self) -> u64 {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        series.iter().map(|(_, v)| v.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help);
        let mut series: Vec<_> = {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            series
                .iter()
                .map(|(v, n)| (*v, n.load(Ordering::Relaxed)))
                .collect()
        };
        series.sort();
        for (values, n) in series {
            let _ = write!(out, "{}{{", self.name);
            for (i, (label, value)) in self.labels.iter().zip(values).enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{label}=\"{}\"", escape(value));
            }
            let _ = writeln!(out, "}} {n}");
        }
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every counter Sluice keeps.
pub struct Metrics {
    /// Messages JetStream stored, by kind: `run`, `running`, `completed`, `cancel`,
    /// `dead_letter`.
    pub messages_published: CounterVec<1>,
    /// Publishes or deliveries recognised as repeats and dropped, by kind.
    pub duplicates_suppressed: CounterVec<1>,
    /// Messages delivered more than once, by consumer.
    pub redeliveries: CounterVec<1>,
    pub naks: Counter,
    pub terms: Counter,
    pub dead_letters: Counter,
    /// Rows inserted or updated, by table and kind (`insert`, `update`).
    pub store_writes: CounterVec<2>,
    pub completions: Counter,
    pub stale_reports_ignored: Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            messages_published: CounterVec::new(
                "sluice_messages_published_total",
                "Messages stored by JetStream, by kind.",
                ["kind"],
            ),
            duplicates_suppressed: CounterVec::new(
                "sluice_duplicates_suppressed_total",
                "Repeated publishes or deliveries recognised and dropped, by kind.",
                ["kind"],
            ),
            redeliveries: CounterVec::new(
                "sluice_redeliveries_total",
                "Messages delivered more than once, by consumer.",
                ["consumer"],
            ),
            naks: Counter::new(
                "sluice_naks_total",
                "Messages handed back for a later redelivery after a transient failure.",
            ),
            terms: Counter::new(
                "sluice_terms_total",
                "Messages terminated because they can never succeed.",
            ),
            dead_letters: Counter::new("sluice_dead_letters_total", "Dead-letter records stored."),
            store_writes: CounterVec::new(
                "sluice_store_writes_total",
                "Rows written to the store, by table and kind.",
                ["table", "kind"],
            ),
            completions: Counter::new(
                "sluice_completions_total",
                "Completion reports applied to an execution.",
            ),
            stale_reports_ignored: Counter::new(
                "sluice_stale_reports_ignored_total",
                "Status reports that were repeated or stale and changed nothing.",
            ),
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        self.messages_published.render(&mut out);
        self.duplicates_suppressed.render(&mut out);
        self.redeliveries.render(&mut out);
        self.naks.render(&mut out);
        self.terms.render(&mut out);
        self.dead_letters.render(&mut out);
        self.store_writes.render(&mut out);
        self.completions.render(&mut out);
        self.stale_reports_ignored.render(&mut out);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_each_series() {
        let m = Metrics::new();
        m.messages_published.inc(["run"]);
        m.messages_published.add(["completed"], 3);
        m.messages_published.inc(["run"]);
        m.store_writes.inc(["executions", "update"]);
        m.naks.inc();
        let text = m.render();
        assert!(text.contains("# TYPE sluice_messages_published_total counter\n"));
        assert!(text.contains("sluice_messages_published_total{kind=\"completed\"} 3\n"));
        assert!(text.contains("sluice_messages_published_total{kind=\"run\"} 2\n"));
        assert!(
            text.contains("sluice_store_writes_total{table=\"executions\",kind=\"update\"} 1\n")
        );
        assert!(text.contains("sluice_naks_total 1\n"));
        assert!(text.contains("sluice_terms_total 0\n"));
        assert_eq!(m.messages_published.get(["run"]), 2);
        assert_eq!(m.messages_published.total(), 5);
        assert_eq!(m.redeliveries.get(["status"]), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

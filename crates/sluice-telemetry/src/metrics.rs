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
        header(out, self.name, self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// A series' label values, owned so that any text (an action name) can be one.
type Labels<const N: usize> = [Box<str>; N];

fn same<const N: usize>(stored: &Labels<N>, values: &[&str; N]) -> bool {
    stored.iter().zip(values).all(|(a, b)| &**a == *b)
}

fn owned<const N: usize>(values: &[&str; N]) -> Labels<N> {
    values.map(Box::from)
}

fn write_labels(out: &mut String, names: &[&str], values: &[&str], extra: Option<(&str, &str)>) {
    let pairs = names.iter().zip(values).map(|(n, v)| (*n, *v)).chain(extra);
    let mut first = true;
    for (name, value) in pairs {
        let _ = write!(
            out,
            "{}{name}=\"{}\"",
            if first { "{" } else { "," },
            escape(value)
        );
        first = false;
    }
    if !first {
        out.push('}');
    }
}

/// The series of a labelled metric, one `T` per distinct set of label values: found by a
/// short scan under a read lock, created under the write lock the first time.
struct Series<const N: usize, T>(RwLock<Vec<(Labels<N>, T)>>);

impl<const N: usize, T> Series<N, T> {
    fn new() -> Self {
        Self(RwLock::new(Vec::new()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Labels<N>, T)>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the series for `values`, created with `make` if it is new.
    fn update(&self, values: &[&str; N], make: impl FnOnce() -> T, f: impl FnOnce(&T)) {
        if let Some((_, t)) = self.read().iter().find(|(v, _)| same(v, values)) {
            f(t);
            return;
        }
        let mut series = self.0.write().unwrap_or_else(|e| e.into_inner());
        let i = match series.iter().position(|(v, _)| same(v, values)) {
            Some(i) => i,
            None => {
                series.push((owned(values), make()));
                series.len() - 1
            }
        };
        f(&series[i].1);
    }

    /// `f` of the series for `values`, if it exists.
    fn get<R>(&self, values: &[&str; N], f: impl FnOnce(&T) -> R) -> Option<R> {
        self.read()
            .iter()
            .find(|(v, _)| same(v, values))
            .map(|(_, t)| f(t))
    }
}

/// A counter with `N` labels; each distinct set of label values is its own series.
pub struct CounterVec<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: Series<N, AtomicU64>,
}

impl<const N: usize> CounterVec<N> {
    fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            series: Series::new(),
        }
    }

    pub fn inc(&self, values: [&str; N]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: [&str; N], n: u64) {
        self.series.update(
            &values,
            || AtomicU64::new(0),
            |value| {
                value.fetch_add(n, Ordering::Relaxed);
            },
        );
    }

    /// The value of one series (0 if it was never incremented).
    pub fn get(&self, values: [&str; N]) -> u64 {
        self.series
            .get(&values, |value| value.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The sum over every series.
    pub fn total(&self) -> u64 {
        self.series
            .read()
            .iter()
            .map(|(_, v)| v.load(Ordering::Relaxed))
            .sum()
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let mut series: Vec<(Labels<N>, u64)> = self
            .series
            .read()
            .iter()
            .map(|(v, n)| (v.clone(), n.load(Ordering::Relaxed)))
            .collect();
        series.sort();
        for (values, n) in series {
            out.push_str(self.name);
            let values: Vec<&str> = values.iter().map(|v| &**v).collect();
            write_labels(out, &self.labels, &values, None);
            let _ = writeln!(out, " {n}");
        }
    }
}

/// Upper bounds (seconds) of the histogram buckets: from a millisecond to five minutes.
const BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

struct HistogramSeries {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// The sum in microseconds.
    sum_micros: AtomicU64,
}

impl HistogramSeries {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// A histogram of durations in seconds, with `N` labels.
pub struct HistogramVec<const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: Series<N, HistogramSeries>,
}

impl<const N: usize> HistogramVec<N> {
    fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Self {
            name,
            help,
            labels,
            series: Series::new(),
        }
    }

    pub fn observe(&self, values: [&str; N], seconds: f64) {
        self.series
            .update(&values, HistogramSeries::new, |h| h.observe(seconds));
    }

    /// How many observations one series has.
    pub fn count(&self, values: [&str; N]) -> u64 {
        self.series
            .get(&values, |h| h.count.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let series = self.series.read();
        let mut order: Vec<usize> = (0..series.len()).collect();
        order.sort_by(|a, b| series[*a].0.cmp(&series[*b].0));
        for i in order {
            let (values, h) = &series[i];
            let values: Vec<&str> = values.iter().map(|v| &**v).collect();
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = write!(out, "{}_bucket", self.name);
                write_labels(out, &self.labels, &values, Some(("le", &bound.to_string())));
                let _ = writeln!(out, " {cumulative}");
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = write!(out, "{}_bucket", self.name);
            write_labels(out, &self.labels, &values, Some(("le", "+Inf")));
            let _ = writeln!(out, " {count}");
            let _ = write!(out, "{}_sum", self.name);
            write_labels(out, &self.labels, &values, None);
            let _ = writeln!(
                out,
                " {}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = write!(out, "{}_count", self.name);
            write_labels(out, &self.labels, &values, None);
            let _ = writeln!(out, " {count}");
        }
    }
}

/// Writes one gauge family measured at scrape time: `series` are (label values, value).
pub fn render_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[&str],
    series: &[(Vec<String>, f64)],
) {
    header(out, name, help, "gauge");
    for (values, value) in series {
        out.push_str(name);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        write_labels(out, labels, &values, None);
        let _ = writeln!(out, " {value}");
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
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
    /// Messages acknowledged, by consumer.
    pub acks: CounterVec<1>,
    /// Messages handed back for a later delivery, by consumer.
    pub naks: CounterVec<1>,
    /// Messages given up, by consumer.
    pub terms: CounterVec<1>,
    pub dead_letters: Counter,
    /// Rows inserted or updated, by table and kind (`insert`, `update`).
    pub store_writes: CounterVec<2>,
    /// How long store writes take, by operation.
    pub store_write_seconds: HistogramVec<1>,
    pub completions: Counter,
    pub stale_reports_ignored: Counter,
    /// Trigger events recorded, by status (`accepted`, `rejected`).
    pub trigger_events: CounterVec<1>,
    /// Executions that ended, by action and terminal status.
    pub executions_ended: CounterVec<2>,
    /// From request to admission, by action.
    pub admission_wait_seconds: HistogramVec<1>,
    /// From the start of the action's process to its end, on the worker, by action.
    pub run_seconds: HistogramVec<1>,
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
            acks: CounterVec::new(
                "sluice_acks_total",
                "Messages acknowledged, by consumer.",
                ["consumer"],
            ),
            naks: CounterVec::new(
                "sluice_naks_total",
                "Messages handed back for a later redelivery after a transient failure, by consumer.",
                ["consumer"],
            ),
            terms: CounterVec::new(
                "sluice_terms_total",
                "Messages terminated because they can never succeed, by consumer.",
                ["consumer"],
            ),
            dead_letters: Counter::new("sluice_dead_letters_total", "Dead-letter records stored."),
            store_writes: CounterVec::new(
                "sluice_store_writes_total",
                "Rows written to the store, by table and kind.",
                ["table", "kind"],
            ),
            store_write_seconds: HistogramVec::new(
                "sluice_store_write_seconds",
                "How long store writes take, by operation.",
                ["op"],
            ),
            trigger_events: CounterVec::new(
                "sluice_trigger_events_total",
                "Trigger events recorded, by status.",
                ["status"],
            ),
            executions_ended: CounterVec::new(
                "sluice_executions_total",
                "Executions that ended, by action and terminal status.",
                ["action", "status"],
            ),
            admission_wait_seconds: HistogramVec::new(
                "sluice_admission_wait_seconds",
                "Time from an execution's request to its admission by the action's gate.",
                ["action"],
            ),
            run_seconds: HistogramVec::new(
                "sluice_run_seconds",
                "Time an action ran on a worker.",
                ["action"],
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
        self.acks.render(&mut out);
        self.naks.render(&mut out);
        self.terms.render(&mut out);
        self.dead_letters.render(&mut out);
        self.store_writes.render(&mut out);
        self.store_write_seconds.render(&mut out);
        self.completions.render(&mut out);
        self.stale_reports_ignored.render(&mut out);
        self.trigger_events.render(&mut out);
        self.executions_ended.render(&mut out);
        self.admission_wait_seconds.render(&mut out);
        self.run_seconds.render(&mut out);
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
        m.naks.inc(["status"]);
        let action = String::from("examples.diagnose");
        m.executions_ended.inc([action.as_str(), "succeeded"]);
        m.admission_wait_seconds.observe([action.as_str()], 0.3);
        m.admission_wait_seconds.observe([action.as_str()], 7.0);
        let text = m.render();
        assert!(text.contains("# TYPE sluice_messages_published_total counter\n"));
        assert!(text.contains("sluice_messages_published_total{kind=\"completed\"} 3\n"));
        assert!(text.contains("sluice_messages_published_total{kind=\"run\"} 2\n"));
        assert!(
            text.contains("sluice_store_writes_total{table=\"executions\",kind=\"update\"} 1\n")
        );
        assert!(text.contains("sluice_naks_total{consumer=\"status\"} 1\n"));
        assert!(text.contains("# TYPE sluice_terms_total counter\n"));
        assert!(text.contains(
            "sluice_executions_total{action=\"examples.diagnose\",status=\"succeeded\"} 1\n"
        ));
        assert!(text.contains("# TYPE sluice_admission_wait_seconds histogram\n"));
        let bucket = |le: &str, n: u64| {
            format!(
                "sluice_admission_wait_seconds_bucket{{action=\"examples.diagnose\",le=\"{le}\"}} {n}\n"
            )
        };
        assert!(text.contains(&bucket("0.25", 0)), "{text}");
        assert!(text.contains(&bucket("0.5", 1)), "{text}");
        assert!(text.contains(&bucket("+Inf", 2)), "{text}");
        assert!(
            text.contains("sluice_admission_wait_seconds_sum{action=\"examples.diagnose\"} 7.3\n")
        );
        assert!(
            text.contains("sluice_admission_wait_seconds_count{action=\"examples.diagnose\"} 2\n")
        );
        assert_eq!(m.messages_published.get(["run"]), 2);
        assert_eq!(m.messages_published.total(), 5);
        assert_eq!(m.redeliveries.get(["status"]), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

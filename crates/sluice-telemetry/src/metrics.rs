//! Process-wide metrics through the Prometheus project's Rust client (`prometheus-client`),
//! served at `GET /metrics` in the OpenMetrics text format, which Prometheus scrapes.
//!
//! Every Sluice part in a process (engine, worker, store, bus) counts into the one
//! [`metrics()`] registry. The wrappers here fix each metric's label names where it is
//! declared, so a call site passes only the values (`metrics().acks.inc(["status"])`).
//! Gauges measured at scrape time (queues, workers) are added per scrape with [`Gauges`].

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter as RawCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A series' labels, in the order the metric declares them.
type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(names: &[&'static str; N], values: [&str; N]) -> Labels {
    names
        .iter()
        .zip(values)
        .map(|(name, value)| (*name, value.to_owned()))
        .collect()
}

/// The name a counter is registered under: the client adds `_total` to its samples.
fn counter_name(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// A counter without labels.
pub struct Counter(RawCounter);

impl Counter {
    fn new(registry: &mut Registry, name: &'static str, help: &'static str) -> Self {
        let counter = RawCounter::default();
        registry.register(counter_name(name), help, counter.clone());
        Self(counter)
    }

    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A counter with `N` labels.
pub struct CounterVec<const N: usize> {
    labels: [&'static str; N],
    family: Family<Labels, RawCounter>,
}

impl<const N: usize> CounterVec<N> {
    fn new(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        let family = Family::default();
        registry.register(counter_name(name), help, family.clone());
        Self { labels, family }
    }

    pub fn inc(&self, values: [&str; N]) {
        self.add(values, 1);
    }

    pub fn add(&self, values: [&str; N], n: u64) {
        self.family
            .get_or_create(&labels(&self.labels, values))
            .inc_by(n);
    }

    /// One series' count.
    pub fn get(&self, values: [&str; N]) -> u64 {
        self.family
            .get(&labels(&self.labels, values))
            .map_or(0, |c| c.get())
    }
}

/// Upper bounds (seconds) of the histogram buckets: from a millisecond to five minutes.
const BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn seconds_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A histogram of durations in seconds, with `N` labels.
pub struct HistogramVec<const N: usize> {
    labels: [&'static str; N],
    family: Family<Labels, Histogram, fn() -> Histogram>,
}

impl<const N: usize> HistogramVec<N> {
    fn new(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> Self {
        let family: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(seconds_histogram);
        registry.register(name, help, family.clone());
        Self { labels, family }
    }

    pub fn observe(&self, values: [&str; N], seconds: f64) {
        self.family
            .get_or_create(&labels(&self.labels, values))
            .observe(seconds.max(0.0));
    }
}

/// Gauges measured at scrape time, rendered after the process's metrics.
#[derive(Default)]
pub struct Gauges {
    registry: Registry,
}

impl Gauges {
    /// One gauge family: `series` are (label values in the order of `labels`, value).
    pub fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[&'static str],
        series: &[(Vec<String>, f64)],
    ) {
        let family: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        for (values, value) in series {
            let set: Labels = labels.iter().copied().zip(values.iter().cloned()).collect();
            family.get_or_create(&set).set(*value);
        }
        self.registry.register(name, help, family);
    }
}

pub struct Metrics {
    registry: Registry,
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
    /// Bytes of JSON documents written to the store, by table (workflow state and parts).
    pub store_json_bytes: CounterVec<1>,
    /// How long store writes take, by operation.
    pub store_write_seconds: HistogramVec<1>,
    pub completions: Counter,
    pub stale_reports_ignored: Counter,
    /// Run messages a worker refused because the engine did not sign them.
    pub forged_run_messages: Counter,
    /// Signatures the engine made for run messages: one for each group signed together.
    pub run_signatures: Counter,
    /// Trigger events recorded, by status (`accepted`, `rejected`).
    pub trigger_events: CounterVec<1>,
    /// Webhook calls refused before they became events, by reason (`unauthorized`,
    /// `forbidden`).
    pub webhook_refusals: CounterVec<1>,
    /// Executions that ended, by action and terminal status.
    pub executions_ended: CounterVec<2>,
    /// From request to admission, by action.
    pub admission_wait_seconds: HistogramVec<1>,
    /// From the start of the action's process to its end, on the worker, by action.
    pub run_seconds: HistogramVec<1>,
    /// Pack virtualenvs a worker built, by outcome (`built`, `failed`).
    pub virtualenv_builds: CounterVec<1>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        Self {
            messages_published: CounterVec::new(
                r,
                "sluice_messages_published_total",
                "Messages stored by JetStream, by kind.",
                ["kind"],
            ),
            duplicates_suppressed: CounterVec::new(
                r,
                "sluice_duplicates_suppressed_total",
                "Repeated publishes or deliveries recognised and dropped, by kind.",
                ["kind"],
            ),
            redeliveries: CounterVec::new(
                r,
                "sluice_redeliveries_total",
                "Messages delivered more than once, by consumer.",
                ["consumer"],
            ),
            acks: CounterVec::new(
                r,
                "sluice_acks_total",
                "Messages acknowledged, by consumer.",
                ["consumer"],
            ),
            naks: CounterVec::new(
                r,
                "sluice_naks_total",
                "Messages handed back for a later redelivery after a transient failure, by consumer.",
                ["consumer"],
            ),
            terms: CounterVec::new(
                r,
                "sluice_terms_total",
                "Messages terminated because they can never succeed, by consumer.",
                ["consumer"],
            ),
            dead_letters: Counter::new(
                r,
                "sluice_dead_letters_total",
                "Dead-letter records stored.",
            ),
            store_writes: CounterVec::new(
                r,
                "sluice_store_writes_total",
                "Rows written to the store, by table and kind.",
                ["table", "kind"],
            ),
            store_json_bytes: CounterVec::new(
                r,
                "sluice_store_json_bytes_total",
                "Bytes of JSON documents written to the store, by table.",
                ["table"],
            ),
            store_write_seconds: HistogramVec::new(
                r,
                "sluice_store_write_seconds",
                "How long store writes take, by operation.",
                ["op"],
            ),
            trigger_events: CounterVec::new(
                r,
                "sluice_trigger_events_total",
                "Trigger events recorded, by status.",
                ["status"],
            ),
            webhook_refusals: CounterVec::new(
                r,
                "sluice_webhook_refusals_total",
                "Webhook calls refused for their credentials or signature, by reason.",
                ["reason"],
            ),
            executions_ended: CounterVec::new(
                r,
                "sluice_executions_total",
                "Executions that ended, by action and terminal status.",
                ["action", "status"],
            ),
            admission_wait_seconds: HistogramVec::new(
                r,
                "sluice_admission_wait_seconds",
                "Time from an execution's request to its admission by the action's gate.",
                ["action"],
            ),
            run_seconds: HistogramVec::new(
                r,
                "sluice_run_seconds",
                "Time an action ran on a worker.",
                ["action"],
            ),
            virtualenv_builds: CounterVec::new(
                r,
                "sluice_virtualenv_builds_total",
                "Pack virtualenvs built from a requirements.txt, by outcome.",
                ["outcome"],
            ),
            completions: Counter::new(
                r,
                "sluice_completions_total",
                "Completion reports applied to an execution.",
            ),
            stale_reports_ignored: Counter::new(
                r,
                "sluice_stale_reports_ignored_total",
                "Status reports that were repeated or stale and changed nothing.",
            ),
            forged_run_messages: Counter::new(
                r,
                "sluice_forged_run_messages_total",
                "Run messages a worker refused: not signed by the engine's key.",
            ),
            run_signatures: Counter::new(
                r,
                "sluice_run_signatures_total",
                "Signatures the engine made for run messages, one per group signed together.",
            ),
            registry,
        }
    }

    /// The OpenMetrics text of every metric of the process.
    pub fn render(&self) -> String {
        self.render_with(&Gauges::default())
    }

    /// The OpenMetrics text of every metric of the process, then `gauges`.
    pub fn render_with(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &gauges.registry);
        let _ = encode_registry(&mut out, &runtime_gauges().registry);
        let _ = encode_eof(&mut out);
        out
    }
}

/// The gauges of the async runtime rendering the metrics, if one is: its threads.
fn runtime_gauges() -> Gauges {
    let mut gauges = Gauges::default();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        gauges.add(
            "sluice_runtime_threads",
            "Threads that run the process's tasks (--threads).",
            &[],
            &[(Vec::new(), runtime.metrics().num_workers() as f64)],
        );
    }
    gauges
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_series_with_its_labels() {
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
        let mut gauges = Gauges::default();
        gauges.add(
            "sluice_queue_length",
            "Executions waiting at an action's gate.",
            &["action"],
            &[(vec![action.clone()], 4.0)],
        );
        let text = m.render_with(&gauges);
        assert!(
            text.contains("# TYPE sluice_messages_published counter\n"),
            "{text}"
        );
        assert!(text.contains("sluice_messages_published_total{kind=\"completed\"} 3\n"));
        assert!(text.contains("sluice_messages_published_total{kind=\"run\"} 2\n"));
        assert!(
            text.contains("sluice_store_writes_total{table=\"executions\",kind=\"update\"} 1\n")
        );
        assert!(text.contains("sluice_naks_total{consumer=\"status\"} 1\n"));
        assert!(
            text.contains("# TYPE sluice_dead_letters counter\nsluice_dead_letters_total 0\n"),
            "{text}"
        );
        assert!(text.contains(
            "sluice_executions_total{action=\"examples.diagnose\",status=\"succeeded\"} 1\n"
        ));
        assert!(text.contains("# TYPE sluice_admission_wait_seconds histogram\n"));
        let bucket = |le: &str, n: u64| {
            format!(
                "sluice_admission_wait_seconds_bucket{{le=\"{le}\",action=\"examples.diagnose\"}} {n}\n"
            )
        };
        assert!(text.contains(&bucket("0.25", 0)), "{text}");
        assert!(text.contains(&bucket("0.5", 1)), "{text}");
        assert!(text.contains(&bucket("+Inf", 2)), "{text}");
        assert!(
            text.contains("sluice_admission_wait_seconds_sum{action=\"examples.diagnose\"} 7.3\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_admission_wait_seconds_count{action=\"examples.diagnose\"} 2\n")
        );
        assert!(
            text.contains("sluice_queue_length{action=\"examples.diagnose\"} 4.0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.messages_published.get(["run"]), 2);
        assert_eq!(m.redeliveries.get(["status"]), 0);
    }

    #[test]
    fn the_runtime_rendering_the_metrics_gives_its_threads() {
        let m = Metrics::new();
        assert!(!m.render().contains("sluice_runtime_threads"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        let text = runtime.block_on(async { m.render() });
        assert!(
            text.contains("# TYPE sluice_runtime_threads gauge\nsluice_runtime_threads 3.0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.executions_ended.inc(["a\"b\\c\nd", "failed"]);
        assert!(
            m.render()
                .contains(r#"sluice_executions_total{action="a\"b\\c\nd",status="failed"} 1"#),
            "{}",
            m.render()
        );
    }
}

//! Figures as a human table and as flat JSON (`--json FILE`), each Sluice figure next to
//! its ratio to the baseline measured in the same run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microsecond resolution, up to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
    let _ = histogram.record(micros);
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// One row of a latency table: `name` in a column `width` wide, then the figures.
    pub fn print_row(&self, name: &str, width: usize) {
        println!(
            "  {name:<width$} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            self.p50, self.p90, self.p99, self.p999, self.max
        );
    }

    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One scenario's figures, with flat keys.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub store: String,
    /// Threads that run the tasks of the engine's process and of each worker process.
    pub threads: usize,
    pub executions: u64,
    pub executions_per_s: f64,
    pub latency_ms: Percentiles,
    pub baseline_roundtrip_ms: Percentiles,
    pub baseline_msgs_per_s: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// At a fixed rate: the baseline's round trips at that rate, and the ratios to them.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub paced: Option<Paced>,
    pub throughput_ratio: f64,
    /// `throughput`, `latency`, `shell`: the JetStream skeleton of an execution, and the
    /// ratios to it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub skeleton: Option<SkeletonFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    pub commit: String,
    /// What each execution cost in store and JetStream work; its totals are flat keys.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cost: Option<crate::cost::Cost>,
    /// What only this scenario measures, as further flat keys.
    #[serde(flatten)]
    pub figures: BTreeMap<String, f64>,
}

/// The baseline's round trips at a scenario's fixed rate, and the latency's ratios to them.
#[derive(Debug, Serialize)]
pub struct Paced {
    pub baseline_paced_per_s: u64,
    pub baseline_paced_roundtrip_ms: Percentiles,
    pub paced_p50_ratio: f64,
    pub paced_p99_ratio: f64,
}

/// What the JetStream skeleton of an execution reached in the same run
/// ([`crate::skeleton`]), and Sluice's executions a second as a share of it.
#[derive(Debug, Serialize)]
pub struct SkeletonFigures {
    pub skeleton_executions_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skeleton_nats_cpu_us: Option<f64>,
    pub skeleton_clients_cpu_us: f64,
    pub skeleton_ratio: f64,
    /// At a fixed rate: each skeleton execution's trip, and the scenario's ratios to it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub trip: Option<SkeletonTrip>,
}

/// The skeleton's trips at a scenario's fixed rate, and the latency's ratios to them.
#[derive(Debug, Serialize)]
pub struct SkeletonTrip {
    pub skeleton_latency_ms: Percentiles,
    pub skeleton_p50_ratio: f64,
    pub skeleton_p99_ratio: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl Summary {
    pub fn new(
        scenario: &str,
        store: &str,
        executions: u64,
        executions_per_s: f64,
        latency: Percentiles,
        baseline: &crate::baseline::Baseline,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            store: store.to_owned(),
            threads: crate::deployment::runtime_threads(),
            executions,
            executions_per_s,
            latency_ms: latency,
            baseline_roundtrip_ms: baseline.roundtrip,
            baseline_msgs_per_s: baseline.msgs_per_s,
            p50_ratio: ratio(latency.p50, baseline.roundtrip.p50),
            p99_ratio: ratio(latency.p99, baseline.roundtrip.p99),
            paced: baseline.paced.map(|(rate, paced)| Paced {
                baseline_paced_per_s: rate,
                baseline_paced_roundtrip_ms: paced,
                paced_p50_ratio: ratio(latency.p50, paced.p50),
                paced_p99_ratio: ratio(latency.p99, paced.p99),
            }),
            throughput_ratio: ratio(executions_per_s, baseline.msgs_per_s),
            skeleton: None,
            rss_mb: None,
            commit: commit(),
            cost: None,
            figures: BTreeMap::new(),
        }
    }

    /// Adds what each execution cost.
    pub fn cost(&mut self, cost: crate::cost::Cost) {
        self.cost = Some(cost);
    }

    /// Adds what the JetStream skeleton of an execution reached in the same run.
    pub fn skeleton(&mut self, skeleton: &crate::skeleton::Skeleton) {
        self.skeleton = Some(SkeletonFigures {
            skeleton_executions_per_s: skeleton.executions_per_s,
            skeleton_nats_cpu_us: skeleton.nats_cpu_us,
            skeleton_clients_cpu_us: skeleton.clients_cpu_us,
            skeleton_ratio: ratio(self.executions_per_s, skeleton.executions_per_s),
            trip: skeleton.rate.map(|_| SkeletonTrip {
                skeleton_latency_ms: skeleton.latency,
                skeleton_p50_ratio: ratio(self.latency_ms.p50, skeleton.latency.p50),
                skeleton_p99_ratio: ratio(self.latency_ms.p99, skeleton.latency.p99),
            }),
        });
    }

    /// Adds a figure only this scenario measures.
    pub fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.to_owned(), value);
    }

    /// Prints the table, and writes the JSON when asked to.
    pub fn emit(&self, json: Option<&Path>) -> anyhow::Result<()> {
        let row = |name: &str, p: &Percentiles| p.print_row(name, 26);
        println!(
            "scenario: {} ({} executions, store {}, {} thread{} a process, commit {})",
            self.scenario,
            self.executions,
            self.store,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.commit
        );
        println!(
            "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        row("trigger -> completion", &self.latency_ms);
        row("baseline JetStream 2-hop", &self.baseline_roundtrip_ms);
        if let Some(paced) = &self.paced {
            let rate = paced.baseline_paced_per_s;
            row(
                &format!("baseline 2-hop at {rate}/s"),
                &paced.baseline_paced_roundtrip_ms,
            );
        }
        let trip = self.skeleton.as_ref().and_then(|s| s.trip.as_ref());
        if let Some(trip) = trip {
            row("skeleton, trigger -> claim", &trip.skeleton_latency_ms);
        }
        println!(
            "  ratio to baseline          p50 {:.1}x   p99 {:.1}x",
            self.p50_ratio, self.p99_ratio
        );
        if let Some(paced) = &self.paced {
            println!(
                "  {:<26} p50 {:.1}x   p99 {:.1}x",
                format!("ratio to 2-hop at {}/s", paced.baseline_paced_per_s),
                paced.paced_p50_ratio,
                paced.paced_p99_ratio
            );
        }
        if let Some(trip) = trip {
            println!(
                "  ratio to skeleton          p50 {:.1}x   p99 {:.1}x",
                trip.skeleton_p50_ratio, trip.skeleton_p99_ratio
            );
        }
        println!(
            "  throughput                 {:>9.0} executions/s   baseline {:.0} msgs/s   ratio {:.3}",
            self.executions_per_s, self.baseline_msgs_per_s, self.throughput_ratio
        );
        if let Some(skeleton) = &self.skeleton {
            let nats = skeleton
                .skeleton_nats_cpu_us
                .map_or(String::new(), |us| format!("nats-server {us:.0}, "));
            println!(
                "  skeleton of an execution   {:>9.0} executions/s   ratio {:.3}   CPU µs per execution: {nats}clients {:.0}",
                skeleton.skeleton_executions_per_s,
                skeleton.skeleton_ratio,
                skeleton.skeleton_clients_cpu_us
            );
        }
        for (key, value) in &self.figures {
            println!("  {key:<26} {value:>9.2}");
        }
        if let Some(cost) = &self.cost {
            cost.print();
        }
        if let Some(path) = json {
            write_json(path, self)?;
        }
        Ok(())
    }
}

/// Writes a summary as pretty JSON.
pub fn write_json(path: &Path, summary: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(summary)?)?;
    println!("  JSON summary written to {}", path.display());
    Ok(())
}

/// The commit this binary was built from (`unknown` outside a git checkout).
pub fn commit() -> String {
    env!("SLUICE_LOAD_COMMIT").to_owned()
}

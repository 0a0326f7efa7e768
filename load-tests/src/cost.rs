//! What one execution costs, counted rather than timed: store transactions, rows written
//! and run message signatures (the engine's own counters, read from its `/metrics`), and
//! JetStream messages stored in
//! each stream and delivered to each durable consumer (read from the server). Two readings,
//! one just before a scenario publishes and one once every execution has ended; their
//! difference divided by the executions is the budget each one spent.
//!
//! The same two readings take the CPU time (user and system) of each process the scenario
//! started, so a change's effect on the work per execution shows even when the machine's
//! noise hides it in executions a second.
//!
//! Core NATS messages (heartbeats, live output pieces) are not JetStream messages and are
//! not counted; nor are the baseline's streams.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::deployment::Deployment;

/// Streams the baseline creates on the same server; not Sluice's.
const BASELINE_PREFIX: &str = "BENCH_";

/// Running totals at one moment, by what they count.
#[derive(Debug, Default)]
pub struct Reading {
    /// Store transactions by operation (`sluice_store_write_seconds_count`).
    transactions: BTreeMap<String, f64>,
    /// Seconds spent in store transactions by operation (`sluice_store_write_seconds_sum`).
    transaction_seconds: BTreeMap<String, f64>,
    /// Rows written by table (`sluice_store_writes_total`).
    rows: BTreeMap<String, f64>,
    /// Signatures made for run messages (`sluice_run_signatures_total`).
    signatures: f64,
    /// Messages ever stored, by stream (its last sequence).
    stored: BTreeMap<String, f64>,
    /// Messages ever delivered, by `stream/durable` (the consumer sequence).
    delivered: BTreeMap<String, f64>,
    /// CPU time used, in microseconds, by process kind.
    cpu: BTreeMap<String, f64>,
}

impl Reading {
    pub async fn take(deployment: &Deployment) -> anyhow::Result<Self> {
        let mut reading = Self::default();
        for (kind, pids) in deployment.processes() {
            if pids == [std::process::id()] {
                // This process: the store's own thread (SQLite's) apart from the rest.
                for (thread, used) in crate::process::thread_cpu_times() {
                    let kind = if thread.starts_with("sqlx-sqlite") {
                        "engine sqlite"
                    } else {
                        kind
                    };
                    *reading.cpu.entry(kind.to_owned()).or_default() += used.as_secs_f64() * 1e6;
                }
                continue;
            }
            let used: std::time::Duration = pids.into_iter().map(crate::process::cpu_time).sum();
            reading
                .cpu
                .insert(kind.to_owned(), used.as_secs_f64() * 1e6);
        }
        let text = deployment.metrics_text().await?;
        for (name, labels, value) in samples(&text) {
            match name {
                "sluice_store_write_seconds_count" => {
                    *reading
                        .transactions
                        .entry(label(labels, "op").to_owned())
                        .or_default() += value;
                }
                "sluice_store_write_seconds_sum" => {
                    *reading
                        .transaction_seconds
                        .entry(label(labels, "op").to_owned())
                        .or_default() += value;
                }
                "sluice_store_writes_total" => {
                    *reading
                        .rows
                        .entry(label(labels, "table").to_owned())
                        .or_default() += value;
                }
                "sluice_run_signatures_total" => reading.signatures += value,
                _ => {}
            }
        }
        let client =
            sluice_bus::connect_client(&deployment.nats_url, "sluice-load", &Default::default())
                .await?;
        let js = async_nats::jetstream::new(client);
        let mut streams = js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| anyhow::anyhow!("listing JetStream streams: {e}"))?;
            let name = info.config.name.clone();
            if name.starts_with(BASELINE_PREFIX) {
                continue;
            }
            reading
                .stored
                .insert(name.clone(), info.state.last_sequence as f64);
            let stream = js
                .get_stream(&name)
                .await
                .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
            let mut consumers = stream.consumers();
            while let Some(consumer) = consumers.next().await {
                let consumer =
                    consumer.map_err(|e| anyhow::anyhow!("listing consumers of {name}: {e}"))?;
                if let Some(durable) = &consumer.config.durable_name {
                    reading.delivered.insert(
                        format!("{name}/{durable}"),
                        consumer.delivered.consumer_sequence as f64,
                    );
                }
            }
        }
        Ok(reading)
    }
}

/// `(name, labels, value)` of each sample in Prometheus / OpenMetrics text.
pub(crate) fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name, labels, value))
        })
}

/// The value of label `key` in `a="x",b="y"`, or `""`.
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map_or("", |(_, v)| v.trim_matches('"'))
}

/// One part of the budget: its total per execution and what it is made of.
#[derive(Debug, Default)]
pub struct Part {
    pub total: f64,
    pub by: BTreeMap<String, f64>,
}

impl Part {
    fn between(
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
        executions: f64,
    ) -> Self {
        let mut part = Self::default();
        for (key, &value) in after {
            let was = before.get(key).copied().unwrap_or_default();
            let spent = (value - was) / executions;
            if spent > 0.0 {
                part.total += spent;
                part.by.insert(key.clone(), spent);
            }
        }
        part
    }

    /// The total and its parts, with `decimals` digits after the point.
    fn line(&self, decimals: usize) -> String {
        format!(
            "{:>7.decimals$}   ({})",
            self.total,
            listed(&self.by, decimals)
        )
    }
}

/// `key value, key value, …`, each value with `decimals` digits after the point.
fn listed(values: &BTreeMap<String, f64>, decimals: usize) -> String {
    values
        .iter()
        .map(|(key, value)| format!("{key} {value:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What each execution cost between two readings; as JSON, its four totals as flat keys.
#[derive(Debug)]
pub struct Cost {
    pub store_transactions: Part,
    /// The mean time of one store transaction, in microseconds, by operation: from asking
    /// for the store's connection to the commit's return.
    pub transaction_us: BTreeMap<String, f64>,
    pub store_rows: Part,
    pub jetstream_stored: Part,
    pub jetstream_delivered: Part,
    /// Signatures the engine made for run messages.
    pub run_signatures: f64,
    /// Microseconds of CPU, by process.
    pub cpu: Part,
}

impl Cost {
    pub fn between(before: &Reading, after: &Reading, executions: u64) -> Self {
        let n = executions.max(1) as f64;
        Self {
            store_transactions: Part::between(&before.transactions, &after.transactions, n),
            transaction_us: {
                let spent =
                    Part::between(&before.transaction_seconds, &after.transaction_seconds, 1.0);
                let count = Part::between(&before.transactions, &after.transactions, 1.0);
                spent
                    .by
                    .into_iter()
                    .filter_map(|(op, seconds)| {
                        let each = seconds / count.by.get(&op)?;
                        Some((op, each * 1e6))
                    })
                    .collect()
            },
            store_rows: Part::between(&before.rows, &after.rows, n),
            jetstream_stored: Part::between(&before.stored, &after.stored, n),
            jetstream_delivered: Part::between(&before.delivered, &after.delivered, n),
            run_signatures: (after.signatures - before.signatures) / n,
            cpu: Part::between(&before.cpu, &after.cpu, n),
        }
    }

    /// The totals, under their JSON keys.
    pub fn figures(&self) -> [(&'static str, f64); 6] {
        [
            (
                "store_transactions_per_execution",
                self.store_transactions.total,
            ),
            ("store_rows_per_execution", self.store_rows.total),
            (
                "jetstream_messages_stored_per_execution",
                self.jetstream_stored.total,
            ),
            (
                "jetstream_deliveries_per_execution",
                self.jetstream_delivered.total,
            ),
            ("run_signatures_per_execution", self.run_signatures),
            ("cpu_us_per_execution", self.cpu.total),
        ]
    }

    pub fn print(&self) {
        println!("  cost per execution");
        println!(
            "    store transactions      {}",
            self.store_transactions.line(3)
        );
        if !self.transaction_us.is_empty() {
            println!(
                "    µs per transaction      mean: {}",
                listed(&self.transaction_us, 0)
            );
        }
        println!("    store rows written      {}", self.store_rows.line(3));
        println!(
            "    JetStream msgs stored   {}",
            self.jetstream_stored.line(3)
        );
        println!(
            "    JetStream deliveries    {}",
            self.jetstream_delivered.line(3)
        );
        if self.run_signatures > 0.0 {
            let run_messages = self.jetstream_stored.by.get("RUN").copied().unwrap_or(0.0);
            println!(
                "    run signatures          {:>7.3}   ({:.1} run messages each)",
                self.run_signatures,
                run_messages / self.run_signatures
            );
        }
        if self.cpu.total > 0.0 {
            println!("    CPU µs                  {}", self.cpu.line(0));
        }
    }
}

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let figures = self.figures();
        let mut map = serializer.serialize_map(Some(figures.len()))?;
        for (key, value) in figures {
            map.serialize_entry(key, &value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_labels_are_read_from_openmetrics_text() {
        let text = "# HELP sluice_store_writes Rows written.\n\
                    # TYPE sluice_store_writes counter\n\
                    sluice_store_writes_total{table=\"executions\",kind=\"insert\"} 12\n\
                    sluice_store_write_seconds_count{op=\"transition\"} 3\n\
                    sluice_up 1\n\
                    # EOF\n";
        let read: Vec<_> = samples(text).collect();
        assert_eq!(
            read,
            [
                (
                    "sluice_store_writes_total",
                    "table=\"executions\",kind=\"insert\"",
                    12.0
                ),
                ("sluice_store_write_seconds_count", "op=\"transition\"", 3.0),
                ("sluice_up", "", 1.0),
            ]
        );
        assert_eq!(label(read[0].1, "kind"), "insert");
        assert_eq!(label(read[0].1, "table"), "executions");
        assert_eq!(label(read[0].1, "missing"), "");
    }

    #[test]
    fn the_cost_is_the_difference_per_execution() {
        let mut before = Reading::default();
        before.transactions.insert("transition".into(), 10.0);
        before.stored.insert("RUN".into(), 100.0);
        let mut after = Reading::default();
        after.transactions.insert("transition".into(), 30.0);
        after.transactions.insert("record_event".into(), 5.0);
        before.transaction_seconds.insert("transition".into(), 1.0);
        after.transaction_seconds.insert("transition".into(), 1.004);
        after
            .transaction_seconds
            .insert("record_event".into(), 0.001);
        after.stored.insert("RUN".into(), 110.0);
        after.stored.insert("TRIGGERS".into(), 10.0);
        before.signatures = 4.0;
        after.signatures = 6.0;
        let cost = Cost::between(&before, &after, 10);
        assert_eq!(cost.run_signatures, 0.2);
        assert_eq!(cost.store_transactions.total, 2.5);
        assert_eq!(cost.store_transactions.by["transition"], 2.0);
        assert_eq!(cost.jetstream_stored.total, 2.0);
        assert_eq!(cost.jetstream_stored.by["TRIGGERS"], 1.0);
        assert_eq!(cost.store_rows.total, 0.0);
        assert!((cost.transaction_us["transition"] - 200.0).abs() < 1e-6);
        assert!((cost.transaction_us["record_event"] - 200.0).abs() < 1e-6);
    }
}

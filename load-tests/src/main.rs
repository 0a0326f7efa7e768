//! `sluice-load`: benchmark scenarios. Each prints its figures next to a baseline measured
//! in the same run on the same machine, because absolute numbers on a shared machine drift.
//!
//! ```text
//! cargo run -p sluice-load --release -- throughput [--executions N] [--database-url URL|start] [--json FILE]
//! cargo run -p sluice-load --release -- latency [--rate R] [--duration S] [--database-url URL|start] [--json FILE]
//! cargo run -p sluice-load --release -- gate [--operations N]
//! cargo run -p sluice-load --release -- queue-memory [--executions N]
//! ```

#![allow(clippy::print_stdout)]

mod baseline;
mod gate;
mod queue_memory;
mod report;
mod triggers;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-load", about = "Sluice benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N triggers published pipelined, one rule to core.noop: executions per second from
    /// the first publish to the last completion, and trigger -> completion latency.
    Throughput {
        #[arg(long, default_value_t = 100_000)]
        executions: u64,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// Triggers at a fixed low rate; trigger -> completion latency against the JetStream
    /// round trip.
    Latency {
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        duration: u64,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// Admit + release operations per second through one action's gate and supervisor
    /// mailbox, in process, against raw ractor messaging.
    Gate {
        #[arg(long, default_value_t = 1_000_000)]
        operations: u64,
    },
    /// Engine memory with N executions queued behind `max_concurrent: 1` and no worker.
    QueueMemory {
        #[arg(long, default_value_t = 1_000_000)]
        executions: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Throughput {
            executions,
            options,
        } => triggers::throughput(executions, options).await,
        Scenario::Latency {
            rate,
            duration,
            options,
        } => triggers::latency(rate, duration, options).await,
        Scenario::Gate { operations } => gate::run(operations).await,
        Scenario::QueueMemory { executions } => queue_memory::run(executions).await,
    }
}

/// Resident memory of this process, from /proc.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

//! `sluice-load`: benchmark scenarios. Each prints its figures next to a baseline measured
//! in the same run on the same machine, because absolute numbers on a shared machine drift.
//!
//! ```text
//! cargo run -p sluice-load --release -- throughput [--executions N]
//! cargo run -p sluice-load --release -- latency [--rate R] [--duration S]
//! cargo run -p sluice-load --release -- fifo [--executions N]
//! cargo run -p sluice-load --release -- shell [--rate R] [--duration S]
//! cargo run -p sluice-load --release -- python [--rate R] [--duration S] [--burst N]
//! cargo run -p sluice-load --release -- scale [--executions N] [--worker-counts 1,2,4]
//! cargo run -p sluice-load --release -- gate [--operations N]
//! cargo run -p sluice-load --release -- signatures [--messages N]
//! cargo build --release -p sluice -p sluice-load && ./target/release/sluice-load queue-memory [--executions N]
//! cargo run -p sluice-load --release -- timers [--timers N] [--duration S]
//! cargo run -p sluice-load --release -- webhooks [--requests N] [--connections C] [--rate R]
//! cargo build --release -p sluice -p sluice-load && ./target/release/sluice-load takeover [--kills N] [--lease-ttl S]
//! cargo build --release -p sluice -p sluice-load && ./target/release/sluice-load engines [--executions N] [--engine-counts 1,2,3]
//! cargo run -p sluice-load --release -- workflows [--items 1000,10000] [--concurrency C]
//! cargo run -p sluice-load --release -- results [--executions N] [--size-kib K]
//! ```
//!
//! The trigger scenarios take `--database-url URL|start`, `--workers N`, `--capacity N`,
//! `--json FILE`, and `--nats-url URL --api URL` to run against a deployment.

#![allow(clippy::print_stdout)]

/// The allocator `sluice` runs with: the engine and workers run in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod baseline;
mod cost;
mod dashboard;
mod deployment;
mod engines;
mod gate;
mod process;
mod queue_memory;
mod report;
mod results;
mod signatures;
mod skeleton;
mod takeover;
mod timers;
mod triggers;
mod webhooks;
mod workflows;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice-load", about = "Sluice benchmark scenarios")]
struct Cli {
    /// Threads that run the tasks of each Sluice process a scenario starts, as `sluice
    /// --threads`: this one (the engine, its API, the publisher, the baselines) and each
    /// worker process [default: one per core].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
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
    /// N triggers pipelined to an action with `max_concurrent: 1`: admission order checked
    /// against publish order, and executions per second through one slot.
    Fifo {
        #[arg(long, default_value_t = 10_000)]
        executions: u64,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// `true` in a shell (`local-shell-cmd`) at a fixed rate: trigger -> completion with a
    /// process started per execution.
    Shell {
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// A python action that returns at once, at a fixed rate, then a pipelined burst:
    /// trigger -> completion and python actions per second, beside `python3 -c pass`.
    Python {
        #[arg(long, default_value_t = 20)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 500)]
        burst: u64,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// Triggers at a fixed rate with nobody watching, then with clients holding the
    /// dashboard's live stream: trigger -> completion for both, and how regularly and how
    /// fresh the snapshots arrive.
    Dashboard {
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        watchers: usize,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// A burst of triggers to a 20 ms action with 1, 2 and 4 worker processes: executions
    /// per second for each, against linear scaling from one.
    Scale {
        #[arg(long, default_value_t = 4_000)]
        executions: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        worker_counts: Vec<usize>,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// Admit + release operations per second through one action's gate and supervisor
    /// mailbox, in process, against raw ractor messaging.
    Gate {
        #[arg(long, default_value_t = 1_000_000)]
        operations: u64,
    },
    /// Signing and checking run messages each alone, against signing them in groups and
    /// checking them in pulls of the same size, in process.
    Signatures {
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
    },
    /// Engine memory with N triggers queued behind `max_concurrent: 1` and no worker, and
    /// again after a restart rebuilt the queue.
    QueueMemory {
        #[arg(long, default_value_t = 1_000_000)]
        executions: u64,
        /// Write the summary as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// N interval timers of one second each: every tick fired once, lateness against a
    /// bare publishing loop, and CPU per 1,000 ticks.
    Timers {
        #[command(flatten)]
        options: timers::Options,
    },
    /// Throughput on PostgreSQL with 1, 2 and 3 engines active at once (`--partitions`),
    /// against one engine without partitions, each run on a fresh deployment.
    Engines {
        #[command(flatten)]
        options: engines::Options,
    },
    /// Two engines with a trigger load: the primary killed N times; seconds until the
    /// standby holds the execution core and records a completion, against a clean handover.
    Takeover {
        #[command(flatten)]
        options: takeover::Options,
    },
    /// One workflow with a `with` task of N items for each N: time and what its steps wrote
    /// to the store, against the smallest N.
    Workflows {
        #[command(flatten)]
        options: workflows::Options,
    },
    /// N executions at once, each with a result of K KiB: the peak memory of the worker and
    /// the engine, in copies of the results, against the same executions without output.
    Results {
        #[command(flatten)]
        options: results::Options,
    },
    /// Webhook deliveries to a rule running a `noop` action: requests/s from concurrent
    /// clients, then POST -> completion at a fixed rate against the JetStream round trip.
    Webhooks {
        #[command(flatten)]
        load: webhooks::Load,
        #[command(flatten)]
        options: triggers::Options,
    },
    /// A worker process of a deployment a scenario started (not run by hand).
    #[command(hide = true)]
    WorkerProcess {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        capacity: usize,
        /// The engine's public run signing key.
        #[arg(long)]
        run_verify_key: std::path::PathBuf,
        /// The engine's secrets key file.
        #[arg(long)]
        secrets_key: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(usize::from(threads));
    }
    runtime.build()?.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    // The engine's and workers' warnings and errors, as they happen (`RUST_LOG` for more).
    sluice_telemetry::init_logs(sluice_telemetry::LogFormat::Human);
    match scenario {
        Scenario::Throughput {
            executions,
            options,
        } => triggers::throughput(executions, options).await,
        Scenario::Latency {
            rate,
            duration,
            options,
        } => triggers::latency("noop", rate, duration, options).await,
        Scenario::Fifo {
            executions,
            options,
        } => triggers::fifo(executions, options).await,
        Scenario::Shell {
            rate,
            duration,
            options,
        } => triggers::latency("shell", rate, duration, options).await,
        Scenario::Python {
            rate,
            duration,
            burst,
            options,
        } => triggers::python(rate, duration, burst, options).await,
        Scenario::Dashboard {
            rate,
            duration,
            watchers,
            options,
        } => dashboard::run(rate, duration, watchers, options).await,
        Scenario::Scale {
            executions,
            worker_counts,
            options,
        } => triggers::scale(executions, &worker_counts, options).await,
        Scenario::Gate { operations } => gate::run(operations).await,
        Scenario::Signatures { messages } => signatures::run(messages).await,
        Scenario::QueueMemory { executions, json } => {
            queue_memory::run(executions, json.as_deref()).await
        }
        Scenario::Timers { options } => timers::run(options).await,
        Scenario::Takeover { options } => takeover::run(options).await,
        Scenario::Engines { options } => engines::run(options).await,
        Scenario::Webhooks { load, options } => webhooks::run(load, options).await,
        Scenario::Workflows { options } => workflows::run(options).await,
        Scenario::Results { options } => results::run(options).await,
        Scenario::WorkerProcess {
            nats_url,
            name,
            capacity,
            run_verify_key,
            secrets_key,
        } => {
            deployment::worker_process(&nats_url, &name, capacity, &run_verify_key, &secrets_key)
                .await
        }
    }
}

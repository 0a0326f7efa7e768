//! Scenarios that publish triggers as a plain NATS client would (JSON `{"n": tick}` on
//! `sluice.trigger.load.<scenario>`) and measure trigger → completion through a real
//! engine and real workers. The `load` pack's rules pass the tick number to the action, so
//! each execution's `finished_at`, read back through the HTTP API, is matched with the
//! moment its trigger was published.

use std::future::IntoFuture as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::baseline::{self, Baseline};
use crate::cost::{Cost, Reading};
use crate::deployment::{Deployment, Run, Target};
use crate::report::{self, Percentiles, Summary};
use crate::skeleton;

/// What every trigger scenario accepts.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    #[command(flatten)]
    pub target: Target,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Round trips the baseline measures.
    #[arg(long, default_value_t = 2_000)]
    pub baseline_roundtrips: u64,
    /// Messages the baseline's throughput pass publishes.
    #[arg(long, default_value_t = 50_000)]
    pub baseline_messages: u64,
}

/// Unacknowledged publishes a pipelined publisher keeps in flight.
const IN_FLIGHT: usize = 2_000;

/// The baseline against `deployment`'s nats-server; with `rate`, its round trips are also
/// measured at that rate, the scenario's own.
pub(crate) async fn baseline(
    deployment: &Deployment,
    options: &Options,
    rate: Option<u64>,
) -> anyhow::Result<Baseline> {
    baseline::measure(
        &deployment.nats_url,
        options.baseline_roundtrips,
        options.baseline_messages,
        rate,
    )
    .await
}

/// The skeleton of an execution against `deployment`'s nats-server: `executions` of them
/// pipelined, or at `rate` for as many as five seconds hold (at most `executions`).
async fn skeleton(
    deployment: &Deployment,
    executions: u64,
    rate: Option<u64>,
) -> anyhow::Result<skeleton::Skeleton> {
    let nats_pid = deployment
        .processes()
        .into_iter()
        .find(|(kind, _)| *kind == "nats-server")
        .and_then(|(_, pids)| pids.first().copied());
    let count = rate.map_or(executions, |rate| executions.min(rate.max(1) * 5));
    skeleton::measure(&deployment.nats_url, nats_pid, count, rate).await
}

fn tick(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

/// Publishes ticks `0..count` to `load.<action>`, pipelined when `rate` is `None`, else at
/// that many per second; returns when each was published.
async fn publish(
    deployment: &Deployment,
    action: &str,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    publish_to(&deployment.nats_url, action, count, rate).await
}

/// [`publish`] to the NATS server at `nats_url`.
pub(crate) async fn publish_to(
    nats_url: &str,
    action: &str,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    publish_ticks(
        nats_url,
        &format!("sluice.trigger.load.{action}"),
        count,
        rate,
    )
    .await
}

/// Publishes ticks `0..count` to `subject` on the NATS server at `nats_url`, as
/// [`publish`] does.
pub(crate) async fn publish_ticks(
    nats_url: &str,
    subject: &str,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let client = sluice_bus::connect_client(nats_url, "sluice-load", &Default::default()).await?;
    let js = async_nats::jetstream::new(client);
    let subject = subject.to_owned();
    let mut published = Vec::with_capacity(count as usize);
    let mut ticks = rate.map(|rate| {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut acks = FuturesUnordered::new();
    for n in 0..count {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        published.push(Utc::now());
        acks.push(js.publish(subject.clone(), tick(n)).await?.into_future());
        if ticks.is_some() {
            // At a fixed rate, collect the acks that are in without waiting for any.
            while let Some(Some(ack)) = futures::FutureExt::now_or_never(acks.next()) {
                ack?;
            }
        } else {
            while acks.len() >= IN_FLIGHT {
                if let Some(ack) = acks.next().await {
                    ack?;
                }
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(published)
}

/// What one run of a scenario's triggers gave.
pub(crate) struct Outcome {
    /// When each tick was published.
    pub(crate) published: Vec<DateTime<Utc>>,
    pub(crate) runs: Vec<Run>,
    pub(crate) cost: Cost,
}

/// Publishes, waits for every execution to end, and reads them back with what they cost.
pub(crate) async fn run(
    deployment: &Deployment,
    action: &str,
    count: u64,
    rate: Option<u64>,
) -> anyhow::Result<Outcome> {
    let before = Reading::take(deployment).await?;
    let published = publish(deployment, action, count, rate).await?;
    let timeout = Duration::from_secs(120 + count / 100);
    deployment.wait_settled(count, timeout).await?;
    let cost = Cost::between(&before, &Reading::take(deployment).await?, count);
    let runs = deployment.runs(&format!("load.{action}")).await?;
    anyhow::ensure!(
        runs.len() as u64 == count,
        "{} executions of load.{action} for {count} triggers",
        runs.len()
    );
    let failed = runs.iter().filter(|run| run.status != "succeeded").count();
    anyhow::ensure!(
        failed == 0,
        "{failed} executions of load.{action} did not succeed"
    );
    Ok(Outcome {
        published,
        runs,
        cost,
    })
}

/// Trigger → completion for each tick, and executions per second from the first publish
/// to the last completion.
pub(crate) fn measure(
    published: &[DateTime<Utc>],
    runs: &[Run],
) -> anyhow::Result<(Percentiles, f64)> {
    let mut histogram = report::histogram();
    let first = published.first().copied().unwrap_or_else(Utc::now);
    let mut last = first;
    for run in runs {
        let n = run.tick()?;
        let sent = published
            .get(usize::try_from(n).unwrap_or(usize::MAX))
            .ok_or_else(|| anyhow::anyhow!("an execution for unknown tick {n}"))?;
        let finished = run
            .finished_at
            .ok_or_else(|| anyhow::anyhow!("execution {} has no finished_at", run.id))?;
        report::record(
            &mut histogram,
            (finished - *sent).to_std().unwrap_or_default(),
        );
        last = last.max(finished);
    }
    let span = (last - first).as_seconds_f64().max(f64::EPSILON);
    Ok((Percentiles::of(&histogram), runs.len() as f64 / span))
}

/// `throughput`: N triggers published pipelined, one rule to a `noop` action.
pub async fn throughput(executions: u64, options: Options) -> anyhow::Result<()> {
    let deployment = Deployment::start(&options.target).await?;
    let baseline = baseline(&deployment, &options, None).await?;
    let skeleton = skeleton(&deployment, executions, None).await?;
    let outcome = run(&deployment, "noop", executions, None).await?;
    let (latency, per_s) = measure(&outcome.published, &outcome.runs)?;
    let mut summary = Summary::new(
        "throughput",
        &deployment.store,
        executions,
        per_s,
        latency,
        &baseline,
    );
    summary.skeleton(&skeleton);
    summary.cost(outcome.cost);
    deployment.stop().await;
    summary.emit(options.json.as_deref())
}

/// `latency` and `shell`: triggers at a fixed low rate for a while, each timed to its
/// completion.
pub async fn latency(
    action: &str,
    rate: u64,
    duration: u64,
    options: Options,
) -> anyhow::Result<()> {
    let deployment = Deployment::start(&options.target).await?;
    let baseline = baseline(&deployment, &options, Some(rate)).await?;
    let executions = rate * duration;
    let skeleton = skeleton(&deployment, executions, Some(rate)).await?;
    let outcome = run(&deployment, action, executions, Some(rate)).await?;
    let (latency, per_s) = measure(&outcome.published, &outcome.runs)?;
    let scenario = match action {
        "noop" => "latency",
        other => other,
    };
    let mut summary = Summary::new(
        &format!("{scenario} ({rate}/s for {duration}s)"),
        &deployment.store,
        executions,
        per_s,
        latency,
        &baseline,
    );
    summary.skeleton(&skeleton);
    summary.cost(outcome.cost);
    let stages = stages(&deployment, &outcome.published, &outcome.runs).await?;
    for (stage, percentiles) in &stages {
        summary.figure(&format!("stage_{stage}_p50_ms"), percentiles.p50);
        summary.figure(&format!("stage_{stage}_p99_ms"), percentiles.p99);
    }
    deployment.stop().await;
    summary.emit(options.json.as_deref())?;
    println!(
        "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stages (ms)", "p50", "p90", "p99", "p99.9", "max"
    );
    for (stage, percentiles) in &stages {
        percentiles.print_row(stage, 26);
    }
    Ok(())
}

/// The stages of every tenth execution's trip, from its status history: `ingest`, the
/// trigger's publish to `requested` (decoded, matched, about to be recorded); `admission`,
/// to `scheduled`; `handoff`, to `running` (the run message published, taken by a worker
/// and claimed); `run`, to the end the worker reported. Each time is taken where the
/// status is decided, before it is committed, so a stage includes the commit before it.
async fn stages(
    deployment: &Deployment,
    published: &[DateTime<Utc>],
    runs: &[Run],
) -> anyhow::Result<Vec<(&'static str, Percentiles)>> {
    const STAGES: [(&str, &str); 4] = [
        ("ingest", "requested"),
        ("admission", "scheduled"),
        ("handoff", "running"),
        ("run", "succeeded"),
    ];
    let mut histograms: Vec<_> = STAGES.iter().map(|_| report::histogram()).collect();
    for run in runs.iter().step_by(10) {
        let sent = published
            .get(usize::try_from(run.tick()?).unwrap_or(usize::MAX))
            .ok_or_else(|| anyhow::anyhow!("execution {} has an unknown tick", run.id))?;
        let execution = deployment.execution(run.id).await?;
        let history = execution["history"].as_array().cloned().unwrap_or_default();
        let mut from = *sent;
        for ((_, status), histogram) in STAGES.iter().zip(&mut histograms) {
            let at = history
                .iter()
                .find(|entry| entry["status"] == *status)
                .and_then(|entry| entry["at"].as_str())
                .and_then(|at| at.parse::<DateTime<Utc>>().ok())
                .ok_or_else(|| anyhow::anyhow!("execution {} was never {status}", run.id))?;
            report::record(histogram, (at - from).to_std().unwrap_or_default());
            from = at;
        }
    }
    Ok(STAGES
        .iter()
        .zip(&histograms)
        .map(|((stage, _), histogram)| (*stage, Percentiles::of(histogram)))
        .collect())
}

/// `python`: a python action that returns at once (a StackStorm `Action` class, through
/// Sluice's wrapper), trigger → completion at a low fixed rate; then python actions per
/// second for a pipelined burst; beside both, a bare `python3 -c pass` started in the same
/// run, the floor any process-per-execution runner stands on.
pub async fn python(rate: u64, duration: u64, burst: u64, options: Options) -> anyhow::Result<()> {
    let bare = bare_python(50).await?;
    let deployment = Deployment::start(&options.target).await?;
    let baseline = baseline(&deployment, &options, Some(rate)).await?;
    let executions = rate * duration;
    let outcome = run(&deployment, "python", executions, Some(rate)).await?;
    let (latency, _) = measure(&outcome.published, &outcome.runs)?;
    let store = deployment.store.clone();
    deployment.stop().await;
    let deployment = Deployment::start(&options.target).await?;
    let burst_outcome = run(&deployment, "python", burst, None).await?;
    let (burst_latency, per_s) = measure(&burst_outcome.published, &burst_outcome.runs)?;
    deployment.stop().await;
    let mut summary = Summary::new(
        &format!("python ({rate}/s for {duration}s; burst of {burst})"),
        &store,
        executions,
        per_s,
        latency,
        &baseline,
    );
    summary.cost(outcome.cost);
    summary.figure("bare_python_p50_ms", bare.p50);
    summary.figure("bare_python_p99_ms", bare.p99);
    summary.figure("burst_executions", burst as f64);
    summary.figure("burst_latency_p50_ms", burst_latency.p50);
    summary.emit(options.json.as_deref())
}

/// `python3 -c pass`, `count` times one after another: how long starting an interpreter
/// takes on this machine.
async fn bare_python(count: u32) -> anyhow::Result<Percentiles> {
    let mut histogram = report::histogram();
    for _ in 0..count {
        let started = std::time::Instant::now();
        let status = tokio::process::Command::new("python3")
            .args(["-c", "pass"])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "python3 -c pass failed: {status}");
        report::record(&mut histogram, started.elapsed());
    }
    Ok(Percentiles::of(&histogram))
}

/// `fifo`: N triggers pipelined to an action with `max_concurrent: 1`; the order in which
/// executions were admitted (each starts only after the one before it ended) must be the
/// order their triggers were published in.
pub async fn fifo(executions: u64, options: Options) -> anyhow::Result<()> {
    let deployment = Deployment::start(&options.target).await?;
    let baseline = baseline(&deployment, &options, None).await?;
    let Outcome {
        published,
        mut runs,
        cost,
    } = run(&deployment, "serial", executions, None).await?;
    let (latency, per_s) = measure(&published, &runs)?;
    runs.sort_by_key(|run| (run.started_at, run.id));
    let order = runs
        .iter()
        .map(Run::tick)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out_of_order = order.windows(2).filter(|pair| pair[0] > pair[1]).count();
    let overlapping = runs
        .windows(2)
        .filter(|pair| match (pair[0].finished_at, pair[1].started_at) {
            (Some(ended), Some(started)) => started < ended,
            _ => true,
        })
        .count();
    let mut summary = Summary::new(
        "fifo (max_concurrent 1)",
        &deployment.store,
        executions,
        per_s,
        latency,
        &baseline,
    );
    summary.cost(cost);
    summary.figure("admitted_out_of_order", out_of_order as f64);
    summary.figure("ran_overlapping", overlapping as f64);
    deployment.stop().await;
    summary.emit(options.json.as_deref())?;
    anyhow::ensure!(
        out_of_order == 0 && overlapping == 0,
        "{out_of_order} admissions out of trigger order, {overlapping} overlapping runs"
    );
    Ok(())
}

/// `scale`: the same burst against 1, 2 and 4 worker processes running a 20 ms action;
/// executions per second for each and the ratio to linear scaling from one worker.
pub async fn scale(
    executions: u64,
    worker_counts: &[usize],
    mut options: Options,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.target.nats_url.is_none(),
        "scale starts its own deployments (it varies the worker count); drop --nats-url"
    );
    let capacity = *options.target.capacity.get_or_insert(8);
    let mut figures = Vec::new();
    let mut last = None;
    for &workers in worker_counts {
        options.target.workers = workers;
        let deployment = Deployment::start(&options.target).await?;
        let baseline = baseline(&deployment, &options, None).await?;
        let outcome = run(&deployment, "sleep", executions, None).await?;
        let (latency, per_s) = measure(&outcome.published, &outcome.runs)?;
        let store = deployment.store.clone();
        deployment.stop().await;
        println!("  {workers} worker(s): {per_s:.0} executions/s");
        figures.push((workers, per_s));
        let mut summary = Summary::new(
            "scale (20 ms action)",
            &store,
            executions,
            per_s,
            latency,
            &baseline,
        );
        summary.cost(outcome.cost);
        last = Some(summary);
    }
    let mut summary = last.ok_or_else(|| anyhow::anyhow!("no worker counts given"))?;
    let (one, one_per_s) = figures[0];
    let ideal = capacity as f64 / 0.020;
    println!("  each worker runs {capacity} at once: at most {ideal:.0} executions/s per worker");
    for &(workers, per_s) in &figures {
        let linear = one_per_s * workers as f64 / one as f64;
        let ratio = per_s / linear;
        println!(
            "  {workers} worker(s) {per_s:>9.0} executions/s   linear {linear:>9.0}   ratio {ratio:.2}"
        );
        summary.figure(&format!("workers_{workers}_executions_per_s"), per_s);
        summary.figure(&format!("workers_{workers}_linear_ratio"), ratio);
    }
    summary.emit(options.json.as_deref())
}

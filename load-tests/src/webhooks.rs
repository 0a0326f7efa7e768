//! `webhooks`: HTTP deliveries to a `core.st2.webhook` rule (`load/hook`, authenticated
//! with a run token as StackStorm's webhooks are by default) whose action is `load.noop`.
//!
//! Two passes, as a load generator such as wrk would make them:
//! - **closed loop**: `--connections` clients each POST the next delivery as soon as the
//!   last one was answered, for `--requests` deliveries: requests/s accepted (202, the
//!   event durable in TRIGGERS), POST → 202 latency, and executions/s from the first POST
//!   to the last completion;
//! - **fixed rate**: `--rate` deliveries a second for `--duration` seconds, each timed from
//!   its POST to its execution's completion, against the JetStream 2-hop round trip
//!   measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::deployment::{Deployment, Run};
use crate::report::{self, Percentiles, Summary};
use crate::triggers::{Options, baseline, measure};

#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Deliveries in the closed-loop pass.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Clients posting at once in the closed-loop pass.
    #[arg(long, default_value_t = 32)]
    pub connections: u64,
    /// Deliveries a second in the fixed-rate pass.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds of the fixed-rate pass.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

/// POSTs delivery `n`; returns when it was sent and how long the answer took.
async fn deliver(deployment: &Deployment, n: u64) -> anyhow::Result<(DateTime<Utc>, Duration)> {
    let url = format!("{}/api/v1/webhooks/load/hook", deployment.api());
    let sent = Utc::now();
    let started = Instant::now();
    let response = deployment
        .http()
        .post(&url)
        .header("Idempotency-Key", format!("load-{n}"))
        .json(&json!({ "n": n }))
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status == reqwest::StatusCode::ACCEPTED,
        "POST {url}: {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok((sent, started.elapsed()))
}

/// Deliveries `from..from + count` from `connections` clients, each posting its next as
/// soon as the last was answered.
async fn closed_loop(
    deployment: &Arc<Deployment>,
    from: u64,
    count: u64,
    connections: u64,
) -> anyhow::Result<(Vec<DateTime<Utc>>, Histogram<u64>, Duration)> {
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (deployment, next) = (deployment.clone(), next.clone());
        clients.spawn(async move {
            let mut sent = Vec::new();
            let mut answers = report::histogram();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= from + count {
                    return anyhow::Ok((sent, answers));
                }
                let (at, took) = deliver(&deployment, n).await?;
                sent.push((n, at));
                report::record(&mut answers, took);
            }
        });
    }
    let mut sent = vec![Utc::now(); count as usize];
    let mut answers = report::histogram();
    while let Some(client) = clients.join_next().await {
        let (times, histogram) = client??;
        for (n, at) in times {
            sent[(n - from) as usize] = at;
        }
        answers.add(histogram)?;
    }
    Ok((sent, answers, started.elapsed()))
}

/// Deliveries `from..from + count` at `rate` a second, each in its own task.
async fn fixed_rate(
    deployment: &Arc<Deployment>,
    from: u64,
    count: u64,
    rate: u64,
) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries = tokio::task::JoinSet::new();
    for n in from..from + count {
        ticks.tick().await;
        let deployment = deployment.clone();
        deliveries.spawn(async move { deliver(&deployment, n).await.map(|(at, _)| (n, at)) });
    }
    let mut sent = vec![Utc::now(); count as usize];
    while let Some(delivery) = deliveries.join_next().await {
        let (n, at) = delivery??;
        sent[(n - from) as usize] = at;
    }
    Ok(sent)
}

/// Waits until `count` more executions ended and returns those of the deliveries
/// `from..from + count`, each checked to have succeeded.
async fn completed(
    deployment: &Deployment,
    from: u64,
    count: u64,
    total: u64,
) -> anyhow::Result<Vec<Run>> {
    deployment
        .wait_settled(total, Duration::from_secs(120 + total / 100))
        .await?;
    let mut runs = Vec::new();
    for run in deployment.runs("load.noop").await? {
        let n = run.tick()?;
        if (from..from + count).contains(&n) {
            anyhow::ensure!(
                run.status == "succeeded",
                "execution {} ended {}",
                run.id,
                run.status
            );
            runs.push(run);
        }
    }
    anyhow::ensure!(
        runs.len() as u64 == count,
        "{} executions for {count} deliveries",
        runs.len()
    );
    Ok(runs)
}

/// Re-bases executions' tick numbers so `measure` finds them in a pass's own list.
fn rebased(runs: Vec<Run>, from: u64) -> Vec<Run> {
    runs.into_iter()
        .map(|mut run| {
            let n = run.parameters["n"].as_u64().unwrap_or_default();
            run.parameters["n"] = json!(n - from);
            run
        })
        .collect()
}

pub async fn run(load: Load, options: Options) -> anyhow::Result<()> {
    let deployment = Arc::new(Deployment::start(&options.target).await?);
    let baseline = baseline(&deployment, &options, Some(load.rate)).await?;

    let (sent, answers, took) =
        closed_loop(&deployment, 0, load.requests, load.connections).await?;
    let runs = completed(&deployment, 0, load.requests, load.requests).await?;
    let (queued, executions_per_s) = measure(&sent, &runs)?;
    let requests_per_s = load.requests as f64 / took.as_secs_f64();
    let answered = Percentiles::of(&answers);

    let fixed = load.rate * load.duration;
    let sent = fixed_rate(&deployment, load.requests, fixed, load.rate).await?;
    let runs = completed(&deployment, load.requests, fixed, load.requests + fixed).await?;
    let (latency, _) = measure(&sent, &rebased(runs, load.requests))?;

    let mut summary = Summary::new(
        &format!(
            "webhooks ({} connections; then {}/s for {}s)",
            load.connections, load.rate, load.duration
        ),
        &deployment.store,
        load.requests + fixed,
        executions_per_s,
        latency,
        &baseline,
    );
    summary.figure("requests_per_s", requests_per_s);
    summary.figure("answer_p50_ms", answered.p50);
    summary.figure("answer_p99_ms", answered.p99);
    summary.figure("closed_loop_completion_p50_ms", queued.p50);
    summary.figure("closed_loop_completion_p99_ms", queued.p99);
    println!(
        "  closed loop: {requests_per_s:.0} deliveries/s accepted (202), answered in p50 {:.2} ms, p99 {:.2} ms",
        answered.p50, answered.p99
    );
    println!("  fixed rate: POST -> completion below, against the JetStream 2-hop round trip");
    match Arc::try_unwrap(deployment) {
        Ok(deployment) => deployment.stop().await,
        Err(_) => anyhow::bail!("a delivery task outlived its pass"),
    }
    summary.emit(options.json.as_deref())
}

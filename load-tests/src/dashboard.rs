//! `dashboard`: what watching costs. Triggers at a fixed rate (1,000/s by default) twice in
//! one deployment: first with nobody watching, then with `--watchers` clients each holding
//! the dashboard's live stream (`GET /api/v1/live?window=50`, what the executions page
//! opens). Prints trigger → completion for both, and for the stream: the gap between
//! snapshots (one a second when nothing falls behind), how old each is when it arrives,
//! its size, and the rate of ended executions it reports against the rate measured from
//! the store.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::deployment::Deployment;
use crate::report::{self, Percentiles};
use crate::triggers::{self, Options};

/// What one watcher saw.
#[derive(Default)]
struct Seen {
    gaps: Vec<Duration>,
    ages: Vec<Duration>,
    bytes: Vec<usize>,
    /// (server time, executions ended since the engine started), per snapshot.
    ended: Vec<(DateTime<Utc>, u64)>,
}

async fn watch_live(
    http: reqwest::Client,
    url: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Seen> {
    let mut response = http.get(&url).send().await?.error_for_status()?;
    let mut seen = Seen::default();
    let mut text = String::new();
    let mut last: Option<Instant> = None;
    loop {
        let chunk = tokio::select! {
            _ = stop.changed() => return Ok(seen),
            chunk = response.chunk() => chunk?,
        };
        let Some(chunk) = chunk else {
            anyhow::bail!("the live stream ended");
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let now = Instant::now();
            if let Some(last) = last {
                seen.gaps.push(now - last);
            }
            last = Some(now);
            let snapshot: serde_json::Value = serde_json::from_str(data)?;
            let at: DateTime<Utc> = snapshot["at"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("a snapshot without `at`"))?
                .parse()?;
            seen.ages
                .push((Utc::now() - at).to_std().unwrap_or_default());
            seen.bytes.push(data.len());
            let ended = snapshot["ended"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            seen.ended.push((at, ended));
        }
    }
}

fn percentiles(values: impl IntoIterator<Item = Duration>) -> Percentiles {
    let mut histogram = report::histogram();
    for value in values {
        report::record(&mut histogram, value);
    }
    Percentiles::of(&histogram)
}

#[derive(Serialize)]
struct Figures {
    scenario: String,
    commit: String,
    store: String,
    rate: u64,
    duration_s: u64,
    watchers: usize,
    alone_latency_ms: Percentiles,
    alone_executions_per_s: f64,
    watched_latency_ms: Percentiles,
    watched_executions_per_s: f64,
    snapshots: usize,
    snapshot_gap_ms: Percentiles,
    snapshot_age_ms: Percentiles,
    snapshot_bytes_mean: f64,
    reported_ended_per_s: f64,
}

pub async fn run(
    rate: u64,
    duration: u64,
    watchers: usize,
    options: Options,
) -> anyhow::Result<()> {
    let mut deployment = Deployment::start(&options.target).await?;
    let count = rate * duration;

    let alone = triggers::run(&deployment, "noop", count, Some(rate)).await?;
    let (alone_latency, alone_per_s) = triggers::measure(&alone.published, &alone.runs)?;

    deployment.count_from_now().await?;
    let (stop, stopped) = watch::channel(false);
    let url = format!("{}/api/v1/live?window=50", deployment.api());
    let readers: Vec<_> = (0..watchers)
        .map(|_| {
            tokio::spawn(watch_live(
                deployment.http().clone(),
                url.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    // Each watcher's first snapshot arrives before the load starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let watched = triggers::run(&deployment, "noop", count, Some(rate)).await?;
    let (watched_latency, watched_per_s) = triggers::measure(&watched.published, &watched.runs)?;
    let _ = stop.send(true);
    let mut seen = Vec::new();
    for reader in readers {
        seen.push(reader.await??);
    }
    let store = deployment.store.clone();
    deployment.stop().await;

    let snapshots: usize = seen.iter().map(|s| s.bytes.len()).sum();
    anyhow::ensure!(snapshots > 0, "no snapshot arrived");
    let gaps = percentiles(seen.iter().flat_map(|s| s.gaps.iter().copied()));
    let ages = percentiles(seen.iter().flat_map(|s| s.ages.iter().copied()));
    let bytes_mean =
        seen.iter().flat_map(|s| s.bytes.iter()).sum::<usize>() as f64 / snapshots as f64;
    // The rate the first watcher's snapshots show over the busiest stretch: from the last
    // snapshot before the first execution ended to the first after the last ended.
    let first_end = watched
        .runs
        .iter()
        .filter_map(|r| r.finished_at)
        .min()
        .unwrap_or_else(Utc::now);
    let last_end = watched
        .runs
        .iter()
        .filter_map(|r| r.finished_at)
        .max()
        .unwrap_or_else(Utc::now);
    let ended = &seen[0].ended;
    let from = ended
        .iter()
        .rev()
        .find(|(at, _)| *at <= first_end)
        .or(ended.first());
    let to = ended
        .iter()
        .find(|(at, _)| *at >= last_end)
        .or(ended.last());
    let reported = match (from, to) {
        (Some((a, x)), Some((b, y))) if b > a => {
            (y - x) as f64 / (*b - *a).as_seconds_f64().max(f64::EPSILON)
        }
        _ => 0.0,
    };

    let figures = Figures {
        scenario: format!("dashboard ({rate}/s for {duration}s, {watchers} watching)"),
        commit: report::commit(),
        store,
        rate,
        duration_s: duration,
        watchers,
        alone_latency_ms: alone_latency,
        alone_executions_per_s: alone_per_s,
        watched_latency_ms: watched_latency,
        watched_executions_per_s: watched_per_s,
        snapshots,
        snapshot_gap_ms: gaps,
        snapshot_age_ms: ages,
        snapshot_bytes_mean: bytes_mean,
        reported_ended_per_s: reported,
    };
    let row = |name: &str, p: &Percentiles| p.print_row(name, 30);
    println!(
        "scenario: {} ({count} executions per pass, store {}, commit {})",
        figures.scenario, figures.store, figures.commit
    );
    println!(
        "  {:<30} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "(ms)", "p50", "p90", "p99", "p99.9", "max"
    );
    row("trigger -> completion, alone", &figures.alone_latency_ms);
    row(
        "trigger -> completion, watched",
        &figures.watched_latency_ms,
    );
    row("gap between snapshots", &figures.snapshot_gap_ms);
    row("snapshot age on arrival", &figures.snapshot_age_ms);
    println!(
        "  executions/s                   alone {:.0}   watched {:.0}",
        figures.alone_executions_per_s, figures.watched_executions_per_s
    );
    println!(
        "  snapshots                      {} received, {:.0} bytes each on average",
        figures.snapshots, figures.snapshot_bytes_mean
    );
    println!(
        "  ended/s the snapshots show     {:.0}   (measured from the store: {:.0})",
        figures.reported_ended_per_s, figures.watched_executions_per_s
    );
    if let Some(path) = options.json.as_deref() {
        report::write_json(path, &figures)?;
    }
    Ok(())
}

//! `workflows`: one workflow with a `with` task of N items at `concurrency: 100`, each item
//! a `load.noop` child, for each N given (1,000 and 10,000 by default), one after the other
//! on one deployment. For each it prints the time from the request to the workflow's end and
//! what the workflow's own steps wrote to the store: rows of `workflows` and
//! `workflow_parts`, and the bytes of JSON in them (the engine's
//! `sluice_store_writes_total` and `sluice_store_json_bytes_total`, read before and after).
//!
//! The baseline is the smallest N, in the same run: each larger N is printed with its ratio
//! to it next to the ratio of the item counts. Linear growth keeps the two equal; a step
//! that saved the whole state would make the bytes grow with the square.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deployment::{Deployment, Target};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Item counts, one workflow each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub items: Vec<usize>,
    /// The task's `concurrency`.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    #[command(flatten)]
    pub target: Target,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn write_pack(root: &std::path::Path, concurrency: usize) -> anyhow::Result<()> {
    let pack = root.join("wfload");
    std::fs::create_dir_all(pack.join("actions/workflows"))?;
    std::fs::write(pack.join("pack.yaml"), "ref: wfload\n")?;
    std::fs::write(
        pack.join("actions/each.yaml"),
        "name: each\nrunner_type: orquesta\nentry_point: workflows/each.yaml\nparameters:\n  n: {type: integer, required: true}\n",
    )?;
    std::fs::write(
        pack.join("actions/workflows/each.yaml"),
        format!(
            "version: 1.0\ninput: [n]\ntasks:\n  each:\n    action: load.noop\n    with: {{items: \"{{{{ range(ctx().n) | list }}}}\", concurrency: {concurrency}}}\n    input: {{n: \"{{{{ item() }}}}\"}}\noutput:\n  - items: \"{{{{ task('each').result | length }}}}\"\n"
        ),
    )?;
    Ok(())
}

/// The value of a counter series in Prometheus text, 0 when absent.
fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Figures {
    items: usize,
    seconds: f64,
    rows: f64,
    bytes: f64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(!options.items.is_empty(), "--items names no item count");
    let dir = tempfile::tempdir()?;
    write_pack(dir.path(), options.concurrency)?;
    let deployment = Deployment::start_with(&options.target, &[dir.path().to_owned()]).await?;
    println!(
        "workflows: one `with` task of N items, concurrency {}, load.noop children (store {}, commit {})",
        options.concurrency,
        deployment.store,
        crate::report::commit()
    );
    let mut figures = Vec::new();
    for &items in &options.items {
        let before = deployment.metrics_text().await?;
        let started = Instant::now();
        let answer = deployment
            .http()
            .post(format!("{}/api/v1/executions", deployment.api()))
            .json(&json!({"action": "wfload.each", "parameters": {"n": items}}))
            .send()
            .await?
            .error_for_status()?;
        let created: Value = answer.json().await?;
        let id = created["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no execution id in {created}"))?;
        let deadline = started + Duration::from_secs(1800);
        let ended = loop {
            let execution = deployment.execution(id).await?;
            let status = execution["status"].as_str().unwrap_or_default().to_owned();
            if ["succeeded", "failed", "cancelled", "timed_out", "abandoned"]
                .contains(&status.as_str())
            {
                break execution;
            }
            anyhow::ensure!(Instant::now() < deadline, "workflow {id} still {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            ended["status"] == "succeeded" && ended["result"]["output"]["items"] == items,
            "the workflow of {items} items did not end with every item: {ended}"
        );
        let after = deployment.metrics_text().await?;
        let delta = |series: &str| counter(&after, series) - counter(&before, series);
        let rows = delta("sluice_store_writes_total{table=\"workflows\",kind=\"upsert\"}")
            + delta("sluice_store_writes_total{table=\"workflow_parts\",kind=\"upsert\"}");
        let bytes = delta("sluice_store_json_bytes_total{table=\"workflows\"}")
            + delta("sluice_store_json_bytes_total{table=\"workflow_parts\"}");
        figures.push(Figures {
            items,
            seconds,
            rows,
            bytes,
        });
    }
    let base = &figures[0];
    println!(
        "  {:>8} {:>10} {:>14} {:>16} {:>10} {:>10} {:>10}",
        "items", "seconds", "rows written", "JSON bytes", "items ×", "time ×", "bytes ×"
    );
    for f in &figures {
        println!(
            "  {:>8} {:>10.2} {:>14.0} {:>16.0} {:>10.1} {:>10.1} {:>10.1}",
            f.items,
            f.seconds,
            f.rows,
            f.bytes,
            f.items as f64 / base.items as f64,
            f.seconds / base.seconds,
            f.bytes / base.bytes
        );
    }
    if let Some(path) = &options.json {
        let rows: Vec<Value> = figures
            .iter()
            .map(|f| json!({"items": f.items, "seconds": f.seconds, "rows": f.rows, "json_bytes": f.bytes}))
            .collect();
        crate::report::write_json(
            path,
            &json!({"scenario": "workflows", "commit": crate::report::commit(), "runs": rows}),
        )?;
    }
    deployment.stop().await;
    Ok(())
}

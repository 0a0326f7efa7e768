//! The books every fault test closes: read from the store (through the API) and from the
//! STATUS stream, they must balance.
//!
//! - no execution is left unfinished, and each ended exactly once (its history holds one
//!   terminal status);
//! - JetStream holds at most one completion per execution attempt, and every execution a
//!   worker finished has exactly that one completion, matching its stored status;
//! - every action's supervisor is back to an empty queue and no active slots.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sluice_core::StatusReport;

use super::api::Api;

pub struct Books {
    pub ledger: Value,
    /// Every execution, oldest first.
    pub executions: Vec<Value>,
    /// Completion reports in STATUS, by (execution id, attempt).
    pub completions: BTreeMap<(i64, u32), Vec<StatusReport>>,
}

impl Books {
    /// One line of figures for the test's output (`cargo nextest run --no-capture`).
    pub fn report(&self, scenario: &str, metrics: &str) {
        let completions: usize = self.completions.values().map(Vec::len).sum();
        eprintln!(
            "[{scenario}] executions {} (succeeded {}, abandoned {}), unfinished {}, \
             completions in STATUS {completions}, engine counters since its last start: \
             completions {}, stale reports {}, redeliveries {}, naks {}, terms {}, \
             dead letters {}, duplicates suppressed {}",
            self.executions.len(),
            self.count("succeeded"),
            self.count("abandoned"),
            self.ledger["unfinished"],
            metric(metrics, "sluice_completions_total"),
            metric(metrics, "sluice_stale_reports_ignored_total"),
            metric(metrics, "sluice_redeliveries_total"),
            metric(metrics, "sluice_naks_total"),
            metric(metrics, "sluice_terms_total"),
            metric(metrics, "sluice_dead_letters_total"),
            metric(metrics, "sluice_duplicates_suppressed_total"),
        );
    }

    pub fn count(&self, status: &str) -> usize {
        self.executions
            .iter()
            .filter(|e| e["status"] == status)
            .count()
    }
}

/// GETs `url`; a `503` (the engine that answers is moving, and says to retry) is asked
/// again for up to 30 s, as a client following `Retry-After` does.
async fn get(http: &reqwest::Client, url: String) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let response = http.get(&url).send().await.unwrap();
        let status = response.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {url}: {status} {body}");
        return serde_json::from_str(&body).unwrap();
    }
}

/// Every execution, through the API's pages, oldest first.
pub async fn all_executions(http: &reqwest::Client, api: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = get(
            http,
            format!("{api}/api/v1/executions?limit=1000&before={before}"),
        )
        .await;
        let page = page.as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        before = last["id"].as_i64().unwrap();
        all.extend(page);
    }
    all.reverse();
    all
}

/// Every completion report stored in STATUS, read with an ephemeral consumer.
pub async fn completions(nats_url: &str) -> BTreeMap<(i64, u32), Vec<StatusReport>> {
    use async_nats::jetstream::consumer;
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("STATUS").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = reader.messages().await.unwrap().take(stored as usize);
    let mut completions: BTreeMap<(i64, u32), Vec<StatusReport>> = BTreeMap::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let Ok(report) = sluice_core::decode::<StatusReport>(&message.payload) else {
            continue; // poison a test published itself
        };
        if report.status.is_terminal() {
            completions
                .entry((report.execution_id.0, report.attempt))
                .or_default()
                .push(report);
        }
    }
    completions
}

/// Reads the books and asserts they balance for `expected` executions of `actions`.
pub async fn balance(
    http: &reqwest::Client,
    api: &str,
    nats_url: &str,
    expected: usize,
    actions: &[&str],
) -> Books {
    let ledger = get(http, format!("{api}/api/v1/ledger")).await;
    let executions = all_executions(http, api).await;
    assert_eq!(
        executions.len(),
        expected,
        "executions stored; ledger {ledger}"
    );
    assert_eq!(
        ledger["unfinished"], 0,
        "executions left unfinished: {ledger}"
    );
    assert_eq!(
        ledger["ended_other_than_once"],
        serde_json::json!([]),
        "executions that did not end exactly once"
    );
    let completions = completions(nats_url).await;
    for ((id, attempt), reports) in &completions {
        assert_eq!(
            reports.len(),
            1,
            "execution {id} attempt {attempt}: {} completions in STATUS",
            reports.len()
        );
    }
    for e in &executions {
        let worker_decided = matches!(
            e["status"].as_str(),
            Some("succeeded" | "failed" | "timed_out")
        );
        if worker_decided {
            let key = (
                e["id"].as_i64().unwrap(),
                e["attempt"].as_u64().unwrap() as u32,
            );
            let reports = completions.get(&key).map_or(&[][..], Vec::as_slice);
            assert_eq!(
                reports.len(),
                1,
                "execution {key:?} ended without its completion: {e}"
            );
            assert_eq!(
                reports[0].status.as_str(),
                e["status"].as_str().unwrap(),
                "{e}"
            );
        }
    }
    for action in actions {
        let stats = get(http, format!("{api}/api/v1/actions/{action}/queue-stats")).await;
        assert_eq!(
            (
                stats["queue_length"].as_u64(),
                stats["active_count"].as_u64()
            ),
            (Some(0), Some(0)),
            "{action}: a queue slot leaked: {stats}"
        );
    }
    Books {
        ledger,
        executions,
        completions,
    }
}

/// One counter's value from a Prometheus text exposition (the sum over its series).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// One series of a counter, e.g. `series(text, "sluice_redeliveries_total{consumer=\"status\"}")`.
pub fn series(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn ledger_of(http: &reqwest::Client, api: &str) -> Api {
    Api {
        http: http.clone(),
        base: api.to_owned(),
    }
}

/// Waits until the store holds `count` events and as many executions, all ended.
pub async fn wait_settled(http: &reqwest::Client, api: &str, count: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ledger) = ledger_of(http, api).ledger().await {
            let executions: i64 = ledger["executions"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n.as_i64().unwrap())
                .sum();
            if ledger["events"] == count && executions == count && ledger["unfinished"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after {timeout:?}: {ledger}"
            );
        }
        assert!(Instant::now() < deadline, "the API did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn events_recorded(http: &reqwest::Client, api: &str) -> i64 {
    match ledger_of(http, api).ledger().await {
        Some(ledger) => ledger["events"].as_i64().unwrap(),
        None => 0,
    }
}

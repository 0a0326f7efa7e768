//! One trace per trigger, across processes: a `sluice engine` exporting over OTLP/gRPC and
//! a separate `sluice worker` exporting over OTLP/HTTP, both to a receiver in this test.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::Value;
use sluice_testkit::{OtlpReceiver, ReceivedSpan};

const PACK: &[(&str, &str)] = &[
    ("pack.yaml", "ref: t\n"),
    (
        "actions/hold.yaml",
        "name: hold\nrunner_type: local-shell-cmd\nparameters:\n  seconds: {type: number, required: true}\n  cmd: {type: string, default: 'sleep \"$SLUICE_PARAM_SECONDS\"'}\npolicy:\n  max_concurrent: 1\n",
    ),
    (
        "triggers/go.yaml",
        "name: go\npayload_schema:\n  type: object\n  required: [seconds]\n",
    ),
    (
        "rules/on_go.yaml",
        "name: on_go\ntrigger:\n  type: t.go\naction:\n  ref: t.hold\n  parameters:\n    seconds: \"{{ trigger.seconds }}\"\n",
    ),
];

const PUBLISHER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "{name}: {found:#?}");
    found[0]
}

fn history_at(execution: &Value, status: &str) -> chrono::DateTime<chrono::Utc> {
    execution["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["status"] == status)
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_is_one_trace_from_publisher_to_completion_across_processes() {
    let receiver = OtlpReceiver::start().await;
    let mut cluster = Cluster::new(PACK);
    let otel = |endpoint: String, protocol: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    };
    cluster
        .start_engine_with(&otel(receiver.grpc_endpoint(), "grpc"))
        .await;
    cluster.start_worker_with("w1", 2, &otel(receiver.http_endpoint(), "http/protobuf"));

    let client = async_nats::connect(cluster.nats.url()).await.unwrap();
    // A peer that holds the only slot for 1.5 s, then the traced trigger behind it.
    client
        .publish("sluice.trigger.t.go", r#"{"seconds": 1.5}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{PUBLISHER_TRACE}-{PUBLISHER_SPAN}-01").as_str(),
    );
    client
        .publish_with_headers("sluice.trigger.t.go", headers, r#"{"seconds": 0}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let executions = cluster
        .wait_all("t.hold", 2, "succeeded", Duration::from_secs(30))
        .await;
    let traced = executions
        .iter()
        .find(|e| e["parameters"]["seconds"] == 0)
        .unwrap();
    let traced = cluster.execution(traced["id"].as_i64().unwrap()).await;
    assert_eq!(traced["trace_id"], PUBLISHER_TRACE, "{traced}");
    let waited = (history_at(&traced, "scheduling") - history_at(&traced, "requested"))
        .to_std()
        .unwrap();
    assert!(
        waited >= Duration::from_millis(1000),
        "it did not wait: {waited:?}"
    );

    // Wait for both processes' exports, up to the completion's report.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == PUBLISHER_TRACE)
            .collect();
        let completed = spans.iter().any(|s| {
            s.name == "report.recorded"
                && s.attributes.get("status").is_some_and(|v| v == "succeeded")
        });
        if completed && spans.iter().any(|s| s.name == "process") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace so far: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let received = one(&spans, "trigger.received");
    let matched = one(&spans, "rule.matched");
    let queued = one(&spans, "execution.queued");
    let dispatch = one(&spans, "execution.dispatch");
    let run = one(&spans, "execution.run");
    let process = one(&spans, "process");
    let reports: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "report.recorded")
        .collect();
    assert_eq!(
        reports.len(),
        2,
        "a running report and a completion: {reports:#?}"
    );

    assert_eq!(
        received.parent_span_id, PUBLISHER_SPAN,
        "joins the publisher's trace"
    );
    assert_eq!(matched.parent_span_id, received.span_id);
    assert_eq!(queued.parent_span_id, matched.span_id);
    assert_eq!(dispatch.parent_span_id, matched.span_id);
    assert_eq!(
        run.parent_span_id, dispatch.span_id,
        "the worker continues the engine's span"
    );
    assert_eq!(process.parent_span_id, run.span_id);
    for report in &reports {
        assert_eq!(
            report.parent_span_id, run.span_id,
            "reports come back from the run"
        );
        assert_eq!(report.service, "sluice-engine");
    }
    for span in [received, matched, queued, dispatch] {
        assert_eq!(span.service, "sluice-engine", "{span:?}");
    }
    for span in [run, process] {
        assert_eq!(span.service, "sluice-worker", "{span:?}");
    }
    let id = traced["id"].as_i64().unwrap().to_string();
    for span in [queued, dispatch, run] {
        assert_eq!(span.attributes.get("execution_id"), Some(&id), "{span:?}");
    }
    assert!(
        queued.duration() + Duration::from_millis(20) >= waited,
        "queue-wait span {:?} shorter than the wait {waited:?}",
        queued.duration()
    );
    assert!(queued.end_unix_nano <= dispatch.start_unix_nano + 1_000_000);
    assert!(run.start_unix_nano >= dispatch.start_unix_nano);

    // The peer, published without a traceparent, is a trace of its own.
    let peer_roots: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.name == "trigger.received" && s.trace_id != PUBLISHER_TRACE)
        .collect();
    assert_eq!(peer_roots.len(), 1);
    assert!(
        peer_roots[0].parent_span_id.is_empty(),
        "{:?}",
        peer_roots[0]
    );

    let mut sample: Vec<&ReceivedSpan> = spans.iter().collect();
    sample.sort_by_key(|s| s.start_unix_nano);
    let origin = sample[0].start_unix_nano;
    for span in sample {
        eprintln!(
            "[trace {PUBLISHER_TRACE}] {:>8.1} ms +{:>8.1} ms  {:<14} {:<20} {}",
            (span.start_unix_nano - origin) as f64 / 1e6,
            span.duration().as_secs_f64() * 1e3,
            span.service,
            span.name,
            span.attributes
                .get("status")
                .map(String::as_str)
                .unwrap_or(""),
        );
    }
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses as Prometheus text")
}

/// The value of the sample `metric` whose labels include every `(name, value)` given.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// The bucket counts of a histogram sample, by upper bound.
fn buckets(
    scrape: &prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => {
                b.iter().map(|b| (b.less_than, b.count)).collect()
            }
            other => panic!("{metric} is not a histogram: {other:?}"),
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_queues_waits_runs_and_outcomes() {
    use common::{Sluice, StoreKind, test_pack};
    use serde_json::json;
    let pack = test_pack(&PACK[1..]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    for seconds in [1.0, 0.0, 0.0] {
        sluice
            .post(
                "/api/v1/executions",
                &json!({"action": "t.hold", "parameters": {"seconds": seconds}}),
            )
            .await;
    }
    let held =
        sluice_testkit::eventually("two queued behind one", Duration::from_secs(20), || async {
            let scrape = scrape(&sluice.metrics().await);
            let queued = sample(&scrape, "sluice_queue_length", &[("action", "t.hold")])?;
            (queued == 2.0).then_some(scrape)
        })
        .await;
    assert_eq!(
        sample(&held, "sluice_active_executions", &[("action", "t.hold")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&held, "sluice_max_concurrent", &[("action", "t.hold")]),
        Some(1.0)
    );
    assert!(
        sample(
            &held,
            "sluice_oldest_queued_seconds",
            &[("action", "t.hold")]
        )
        .unwrap()
            >= 0.0
    );
    assert_eq!(
        sample(&held, "sluice_workers", &[("state", "live")]),
        Some(1.0)
    );

    sluice
        .publish("sluice.trigger.t.go", br#"{"seconds": 0}"#)
        .await;
    sluice
        .publish("sluice.trigger.t.go", br#"{"no": "seconds"}"#)
        .await;
    sluice.wait_finished(4).await;

    let done = scrape(&sluice.metrics().await);
    let hold = [("action", "t.hold")];
    assert_eq!(
        sample(
            &done,
            "sluice_executions_total",
            &[("action", "t.hold"), ("status", "succeeded")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &done,
            "sluice_trigger_events_total",
            &[("status", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &done,
            "sluice_trigger_events_total",
            &[("status", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&done, "sluice_queue_length", &hold), Some(0.0));
    assert_eq!(sample(&done, "sluice_active_executions", &hold), Some(0.0));
    // Two executions waited behind the 1 s one: the wait histogram shows it.
    let waits = buckets(&done, "sluice_admission_wait_seconds", &hold);
    let within = |bound: f64| waits.iter().find(|(le, _)| *le == bound).map(|(_, n)| *n);
    assert_eq!(within(f64::INFINITY), Some(4.0), "{waits:?}");
    assert!(within(0.5).unwrap() <= 2.0, "{waits:?}");
    assert_eq!(
        sample(&done, "sluice_admission_wait_seconds_count", &hold),
        Some(4.0)
    );
    let runs = buckets(&done, "sluice_run_seconds", &hold);
    assert_eq!(runs.last().map(|(_, n)| *n), Some(4.0), "{runs:?}");
    assert!(
        runs.iter().find(|(le, _)| *le == 0.5).unwrap().1 <= 3.0,
        "the 1 s run: {runs:?}"
    );
    assert!(
        sample(
            &done,
            "sluice_store_write_seconds_count",
            &[("op", "transition")]
        )
        .unwrap()
            >= 1.0
    );
    // Four executions, each updated once to running and once to succeeded. The first found
    // its slot free and was stored `scheduled` as it arrived; the three queued behind it
    // were each updated once to scheduled too (their history entering scheduling as well).
    assert_eq!(
        sample(
            &done,
            "sluice_store_writes_total",
            &[("table", "executions"), ("kind", "update")]
        ),
        Some(11.0)
    );
    assert!(sample(&done, "sluice_acks_total", &[("consumer", "status")]).unwrap() >= 8.0);
    assert!(sample(&done, "sluice_acks_total", &[("consumer", "triggers")]).unwrap() >= 2.0);
    assert_eq!(sample(&done, "sluice_completions_total", &[]), Some(4.0));
}

fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|child| find(child, name))
}

/// Every node's `parent` names the node it sits under.
fn assert_parents(node: &Value) {
    for child in node["children"].as_array().unwrap() {
        assert_eq!(child["parent"], node["name"], "{child}");
        assert_parents(child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_tree_shows_queues_executions_and_workers() {
    use common::{Sluice, StoreKind, test_pack};
    use serde_json::json;
    let pack = test_pack(&[(
        "actions/keyed.yaml",
        "name: keyed\nrunner_type: local-shell-cmd\nparameters:\n  host: {type: string, required: true}\n  cmd: {type: string, default: sleep 30}\npolicy:\n  max_concurrent: 1\n  concurrency_key: [host]\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let mut ids = Vec::new();
    for host in ["db1", "db1", "web1"] {
        let (_, created) = sluice
            .post(
                "/api/v1/executions",
                &json!({"action": "t.keyed", "parameters": {"host": host}}),
            )
            .await;
        ids.push(created["id"].as_i64().unwrap());
    }
    let tree = sluice_testkit::eventually(
        "two running, one queued",
        Duration::from_secs(20),
        || async {
            let (_, tree) = sluice.get("/api/v1/actors?action=t.keyed").await;
            let supervisor = find(&tree, "engine/action/t.keyed")?.clone();
            let running = supervisor["children"]
                .as_array()?
                .iter()
                .filter(|c| c["status"] == "running")
                .count();
            let beating = find(&tree, "worker/test").is_some_and(|w| w["in_flight"] == 2);
            (running == 2 && beating).then_some(tree)
        },
    )
    .await;
    assert_parents(&tree);
    let supervisors: Vec<&Value> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "action-supervisor")
        .collect();
    assert_eq!(
        supervisors.len(),
        1,
        "?action narrows the tree to one supervisor"
    );
    let supervisor = supervisors[0];
    assert_eq!(
        (
            supervisor["queue_length"].as_u64(),
            supervisor["active_count"].as_u64(),
            supervisor["max_concurrent"].as_u64()
        ),
        (Some(1), Some(2), Some(1))
    );
    assert!(supervisor["oldest_queued_at"].is_string(), "{supervisor}");
    for id in &ids[..1] {
        let execution = find(&tree, &format!("engine/execution/{id}")).unwrap();
        assert_eq!(execution["kind"], "execution");
        assert_eq!(execution["execution_id"], *id);
        assert_eq!(execution["worker"], "worker/test");
        assert!(execution["age_seconds"].as_f64().unwrap() >= 0.0);
    }
    let db1 = find(&tree, "engine/action/t.keyed/key/db1").expect("a key queue per host");
    assert_eq!(
        (db1["kind"].as_str(), db1["queue_length"].as_u64()),
        (Some("key-queue"), Some(1))
    );
    let worker = find(&tree, "worker/test").unwrap();
    assert_eq!(worker["kind"], "worker");
    assert_eq!(worker["capacity"], 8);
    assert!(worker["last_heartbeat_at"].is_string());
    assert_eq!(worker["parent"], "engine/workers");
    let runs: Vec<i64> = worker["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["execution_id"].as_i64().unwrap())
        .collect();
    assert!(runs.contains(&ids[0]) && runs.contains(&ids[2]), "{runs:?}");
    let (status, _) = sluice.get("/api/v1/actors?action=t.nope").await;
    assert_eq!(status, 404);

    // `sluice actors` prints the same tree, indented.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["actors", "--api", &sluice.api])
        .env("SLUICE_TOKEN", &sluice.token)
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    eprintln!("{printed}");
    assert!(printed.starts_with("engine [engine]\n"), "{printed}");
    assert!(
        printed
            .contains("  engine/action/t.keyed [action-supervisor] queued=1 active=2 (1 per key)"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "    engine/execution/{} [execution] running",
            ids[0]
        )),
        "{printed}"
    );
    assert!(
        printed.contains("    worker/test [worker] running=2/8"),
        "{printed}"
    );
    let json_out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "actors",
            "--json",
            "--action",
            "t.keyed",
            "--api",
            &sluice.api,
        ])
        .env("SLUICE_TOKEN", &sluice.token)
        .output()
        .unwrap();
    let parsed: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(parsed["kind"], "engine");
    for id in ids {
        sluice
            .post(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
            .await;
    }
}

/// A field of a JSON log line: the event's own, or its span's.
fn log_field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get(name)
        .or_else(|| line.get("span").and_then(|s| s.get(name)))
        .filter(|v| !v.is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_about_an_execution_carry_its_id_and_trace_id() {
    let mut cluster = Cluster::new(PACK);
    cluster.capture_logs = true;
    let json_logs = vec![
        ("SLUICE_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    cluster.start_engine_with(&json_logs).await;
    cluster.start_worker_with("w1", 2, &json_logs);
    let client = async_nats::connect(cluster.nats.url()).await.unwrap();
    client
        .publish("sluice.trigger.t.go", r#"{"seconds": 0}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    cluster
        .submit("t.hold", serde_json::json!({"seconds": 0}))
        .await;
    let executions = cluster
        .wait_all("t.hold", 2, "succeeded", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut about_executions = 0;
    for process in ["engine", "w1"] {
        let text = std::fs::read_to_string(cluster.log_file(process)).unwrap();
        eprintln!(
            "{process}: {}",
            text.lines()
                .find(|l| l.contains("execution_id"))
                .unwrap_or("")
        );
        for raw in text.lines() {
            let line: Value = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("{process}: not a JSON line ({e}): {raw}"));
            assert!(
                line["level"].is_string() && line["timestamp"].is_string(),
                "{raw}"
            );
            let Some(id) = log_field(&line, "execution_id") else {
                continue;
            };
            about_executions += 1;
            let trace_id = log_field(&line, "trace_id").unwrap_or_else(|| {
                panic!("{process}: a line about execution {id} without trace_id: {raw}")
            });
            let execution = executions
                .iter()
                .find(|e| {
                    let id = match id {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    e["id"].as_i64().map(|n| n.to_string()) == Some(id)
                })
                .unwrap_or_else(|| panic!("unknown execution {id}: {raw}"));
            let stored = cluster.execution(execution["id"].as_i64().unwrap()).await;
            assert_eq!(stored["trace_id"], *trace_id, "{raw}");
        }
    }
    eprintln!("{about_executions} lines about executions, each with its trace id");
    assert!(
        about_executions >= 4,
        "only {about_executions} lines about executions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_blocks_nothing() {
    let mut cluster = Cluster::new(PACK);
    let nowhere = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", sluice_testkit::free_port()),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    cluster.start_engine_with(&nowhere).await;
    cluster.start_worker_with("w1", 2, &nowhere);
    for _ in 0..20 {
        cluster
            .submit("t.hold", serde_json::json!({"seconds": 0}))
            .await;
    }
    cluster
        .wait_all("t.hold", 20, "succeeded", Duration::from_secs(30))
        .await;
}

/// The value of one series in Prometheus text, if it is there.
fn gauge(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_waiting_for_a_consumer_shows_in_metrics_and_the_actor_tree_and_drains() {
    let mut cluster = Cluster::new(&[]);
    cluster.start_engine().await;
    for _ in 0..3 {
        cluster.submit("core.noop", serde_json::json!({})).await;
    }
    // No worker yet: the run messages wait in RUN.
    let run = r#"{stream="RUN",consumer="workers"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = cluster.metrics().await;
        if gauge(&metrics, &format!("sluice_consumer_pending{run}")) == Some(3.0) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let metrics_later = cluster.metrics().await;
    let age = gauge(
        &metrics_later,
        &format!("sluice_consumer_oldest_unprocessed_seconds{run}"),
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        age >= 1.0,
        "the oldest run message has waited a second: {age}"
    );
    assert_eq!(
        gauge(
            &metrics,
            r#"sluice_consumer_pending{stream="STATUS",consumer="engine"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
    let tree = cluster.get("/api/v1/actors").await;
    let monitor = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "worker-monitor")
        .unwrap();
    assert_eq!(monitor["consumer"]["stream"], "RUN", "{monitor}");
    assert_eq!(monitor["consumer"]["pending"], 3, "{monitor}");
    assert!(
        monitor["consumer"]["oldest_unprocessed_at"].is_string(),
        "{monitor}"
    );

    cluster.start_worker("w", 4);
    cluster
        .wait_all("core.noop", 3, "succeeded", Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = cluster.metrics().await;
        let drained = gauge(&metrics, &format!("sluice_consumer_pending{run}")) == Some(0.0)
            && gauge(
                &metrics,
                &format!("sluice_consumer_oldest_unprocessed_seconds{run}"),
            ) == Some(0.0);
        if drained {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

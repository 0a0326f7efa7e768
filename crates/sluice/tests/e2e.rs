//! From a trigger published by a plain NATS client to a stored result, through a real
//! nats-server, the engine, a worker and a real store.

mod common;

use std::time::Duration;

use common::{Sluice, StoreKind, statuses, test_pack};
use serde_json::{Value, json};
use sluice_testkit::eventually;

async fn a_published_alert_runs_every_matching_rule_once(store: StoreKind) {
    let sluice = Sluice::start(store, &[]).await;
    let client = sluice.nats_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "alert-1");
    let payload = br#"{"host":"db1","severity":"critical"}"#;
    for _ in 0..2 {
        // The same message id twice: JetStream keeps one.
        client
            .publish_with_headers(
                "sluice.trigger.examples.alert",
                headers.clone(),
                payload.to_vec().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let executions = sluice.wait_finished(3).await;
    let by_action = |action: &str| {
        executions
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action}: {executions:#?}"))
    };
    for e in &executions {
        assert_eq!(e["status"], "succeeded", "{e:#}");
    }
    let diagnose = by_action("examples.diagnose");
    assert!(
        diagnose["result"]["stdout"]
            .as_str()
            .unwrap()
            .starts_with("diagnosing host db1 (severity critical)")
    );
    assert_eq!(diagnose["rule"], "examples.diagnose_critical");
    let summary = by_action("examples.summarise");
    assert_eq!(summary["result"]["result"]["page_oncall"], json!(true));
    assert_eq!(
        by_action("core.local")["result"]["stdout"],
        "alert: db1 is critical\n"
    );

    let id = diagnose["id"].as_i64().unwrap();
    let (_, full) = sluice.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(
        statuses(&full),
        [
            "requested",
            "scheduling",
            "scheduled",
            "running",
            "succeeded"
        ]
    );
    // Each action had a free slot, so each execution was stored `scheduled` with its event:
    // after the insert, only the worker's reports updated it (at most `running` and its
    // end), never an admission.
    let metrics = sluice.metrics().await;
    let updates: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sluice_store_writes_total{")
                && l.contains(r#"table="executions""#)
                && l.contains(r#"kind="update""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(updates <= 6.0, "{updates} updates of 3 executions");
    assert_eq!(
        full["parameters"],
        json!({"host": "db1", "severity": "critical"})
    );
    assert_eq!(full["worker"], "worker/test");

    // A different alert afterwards: one more event, one more execution (only log_alert
    // matches), so the duplicate above really was dropped rather than still in flight.
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web1","severity":"info"}"#,
        )
        .await;
    let executions = sluice.wait_finished(4).await;
    assert_eq!(executions[3]["action"], "core.local");
    let (_, events) = sluice.get("/api/v1/events").await;
    assert_eq!(events.as_array().unwrap().len(), 2, "{events:#}");
}

#[tokio::test]
async fn a_published_alert_runs_every_matching_rule_once_on_sqlite() {
    a_published_alert_runs_every_matching_rule_once(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn a_published_alert_runs_every_matching_rule_once_on_postgres() {
    a_published_alert_runs_every_matching_rule_once(StoreKind::Postgres).await;
}

async fn direct_runs_and_msgpack_triggers(store: StoreKind) {
    let sluice = Sluice::start(store, &[]).await;
    let (status, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "core.local", "parameters": {"cmd": "uname -s"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["action"], "core.local");
    assert_eq!(
        common::statuses(&created)[0],
        "requested",
        "the execution is already on its way: {created}"
    );
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"]["stdout"], "Linux\n");

    let client = sluice.nats_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    let packed = rmp_serde::to_vec_named(&json!({"host": "db9", "severity": "warning"})).unwrap();
    client
        .publish_with_headers("sluice.trigger.examples.alert", headers, packed.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let executions = sluice.wait_finished(3).await;
    let summary = executions
        .iter()
        .find(|e| e["action"] == "examples.summarise")
        .unwrap();
    assert_eq!(
        summary["result"]["result"]["text"],
        "WARNING on db9: no message"
    );
}

#[tokio::test]
async fn direct_runs_and_msgpack_triggers_on_sqlite() {
    direct_runs_and_msgpack_triggers(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn direct_runs_and_msgpack_triggers_on_postgres() {
    direct_runs_and_msgpack_triggers(StoreKind::Postgres).await;
}

#[tokio::test]
async fn bad_trigger_payloads_are_rejected_acknowledged_and_never_redelivered() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    sluice
        .publish("sluice.trigger.examples.alert", b"not json")
        .await;
    sluice
        .publish("sluice.trigger.examples.alert", b"[1, 2]")
        .await;
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"db1","severity":"apocalyptic"}"#,
        )
        .await;
    sluice
        .publish("sluice.trigger.examples.nope", br#"{"host":"db1"}"#)
        .await;
    let events = eventually("four rejected events", Duration::from_secs(20), || async {
        let (_, events) = sluice.get("/api/v1/events").await;
        let events = events.as_array().unwrap().clone();
        (events.len() == 4).then_some(events)
    })
    .await;
    let reasons: Vec<&str> = events
        .iter()
        .rev()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(events.iter().all(|e| e["status"] == "rejected"));
    assert!(
        reasons[0].starts_with("payload is not valid JSON"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("must be a JSON object, found an array"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("/severity") && reasons[2].contains("apocalyptic"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("unknown trigger \"examples.nope\""),
        "{reasons:?}"
    );
    assert_eq!(
        events[1]["payload"],
        json!({"host": "db1", "severity": "apocalyptic"}),
        "a readable payload is kept"
    );
    assert!(sluice.executions().await.is_empty());

    let js = async_nats::jetstream::new(sluice.nats_client().await);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("TRIGGERS")
        .await
        .unwrap()
        .get_consumer("engine")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.num_pending, info.num_redelivered),
        (0, 0, 0),
        "every bad message acknowledged once"
    );

    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web1","severity":"info"}"#,
        )
        .await;
    assert_eq!(
        sluice.wait_finished(1).await[0]["status"],
        "succeeded",
        "the engine keeps serving"
    );
}

#[tokio::test]
async fn trigger_values_templated_into_a_shell_command_stay_text() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let marker = sluice.data_dir.path().join("pwned");
    let host = format!("db1; touch {0} $(touch {0}) `touch {0}`", marker.display());
    let payload = json!({"host": host, "severity": "info"}).to_string();
    sluice
        .publish("sluice.trigger.examples.alert", payload.as_bytes())
        .await;
    let executions = sluice.wait_finished(1).await;
    assert_eq!(executions[0]["status"], "succeeded", "{:#}", executions[0]);
    assert_eq!(
        executions[0]["result"]["stdout"],
        json!(format!("alert: {host} is info\n"))
    );
    assert!(!marker.exists(), "the payload ran as a command");
}

#[tokio::test]
async fn api_errors_name_what_is_wrong() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let (status, body) = sluice
        .post("/api/v1/executions", &json!({"action": "core.nope"}))
        .await;
    assert_eq!(status, 404);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown action core.nope (known: core.echo"),
        "{body}"
    );
    let (status, body) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "core.sleep", "parameters": {"seconds": "soon"}}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"],
        "invalid parameters for core.sleep: parameter \"seconds\" must be number, found the string \"soon\""
    );
    assert_eq!(
        body["errors"],
        json!([{"field": "parameters.seconds", "message": "parameter \"seconds\" must be number, found the string \"soon\""}]),
        "each problem at its field"
    );
    let (status, body) = sluice
        .post("/api/v1/executions", &json!({"parameters": {}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("action"),
        "{body}"
    );
    assert_eq!(sluice.get("/api/v1/executions/999").await.0, 404);
    assert_eq!(sluice.get("/api/v1/executions/abc").await.0, 400);
    let (status, body) = sluice.get("/api/v1/executions?status=done").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "unknown execution status \"done\"",
        }),
        "RFC 9457 problem details"
    );
    let response = sluice
        .http
        .get(format!("{}/api/v1/nowhere", sluice.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("/api/v1/nowhere"),
        "{body}"
    );
    let response = sluice
        .http
        .delete(format!("{}/api/v1/executions", sluice.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 405, "{body}");
    let (_, actions) = sluice.get("/api/v1/actions").await;
    let http = actions
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ref"] == "core.http")
        .unwrap();
    assert_eq!(http["parameters"]["auth_token"]["secret"], json!(true));
    assert_eq!(http["runner"], "http-request");
}

#[tokio::test]
async fn secrets_are_redacted_in_the_store_and_reach_the_action() {
    let pack = test_pack(&[(
        "actions/login.yaml",
        "name: login\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, required: true}\n  password: {type: string, secret: true, required: true}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let (status, created) = sluice.post("/api/v1/executions", &json!({"action": "t.login", "parameters": {"cmd": "test \"$SLUICE_PARAM_PASSWORD\" = \"$(echo aHVudGVyMg== | base64 -d)\"", "password": "hunter2"}})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["parameters"]["password"], "********");
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(
        done["status"], "succeeded",
        "the action saw the real secret: {done:#}"
    );
    let db = std::fs::read(sluice.data_dir.path().join("sluice.db")).unwrap();
    let wal = std::fs::read(sluice.data_dir.path().join("sluice.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "the secret reached the store in clear"
        );
    }
}

#[tokio::test]
async fn timeouts_end_as_timed_out_and_the_actor_tree_shows_live_work() {
    let pack = test_pack(&[(
        "actions/slow.yaml",
        "name: slow\nrunner_type: local-shell-cmd\ntimeout: 1\nparameters:\n  cmd: {type: string, default: sleep 30}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let (_, created) = sluice
        .post("/api/v1/executions", &json!({"action": "t.slow"}))
        .await;
    let id = created["id"].as_i64().unwrap();
    let (_, tree) = sluice.get("/api/v1/actors").await;
    assert_eq!(tree["kind"], "engine");
    let slow = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "engine/action/t.slow")
        .expect("supervisor in tree");
    assert_eq!(slow["kind"], "action-supervisor");
    assert_eq!(slow["active_count"], 1, "{slow:#}");
    assert_eq!(
        slow["children"][0]["name"],
        format!("engine/execution/{id}")
    );
    assert!(
        tree["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "ingestor")
    );

    let done = sluice.wait_execution(id).await;
    assert_eq!(done["status"], "timed_out", "{done:#}");
    assert_eq!(done["result"]["error"], "timed out after 1s");
    let (_, tree) = sluice.get("/api/v1/actors").await;
    let slow = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "engine/action/t.slow")
        .unwrap();
    assert_eq!(
        (
            slow["active_count"].as_u64(),
            slow["total_completed"].as_u64()
        ),
        (Some(0), Some(1)),
        "the slot was released once"
    );
}

#[tokio::test]
async fn a_restart_runs_what_was_requested_while_down() {
    let mut sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    sluice.shutdown().await;
    // Requested while the engine was down, straight into the store.
    let store = sluice_store::Store::connect(sluice.config.database_url().as_str())
        .await
        .unwrap();
    let params = json!({"message": "hello"}).as_object().unwrap().clone();
    let id = store
        .create_execution(&"core.echo".parse().unwrap(), &params, None, None)
        .await
        .unwrap();
    store.close().await;
    sluice.boot().await;
    let done = sluice.wait_execution(id.0).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"message": "hello"}));
    sluice.shutdown().await;
}

#[tokio::test]
async fn cancel_follows_ownership_queued_by_the_engine_running_by_the_worker() {
    let pack = test_pack(&[(
        "actions/hold.yaml",
        "name: hold\nrunner_type: local-shell-cmd\npolicy: {max_concurrent: 1}\nparameters:\n  cmd: {type: string, default: \"echo $$ > $SLUICE_PARAM_PIDFILE; sleep 30\"}\n  pidfile: {type: string, required: true}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let pidfile = sluice.data_dir.path().join("pid");
    let submit =
        |pidfile: &std::path::Path| json!({"action": "t.hold", "parameters": {"pidfile": pidfile}});
    let (_, running) = sluice.post("/api/v1/executions", &submit(&pidfile)).await;
    let (_, queued) = sluice
        .post(
            "/api/v1/executions",
            &submit(&sluice.data_dir.path().join("pid2")),
        )
        .await;
    let (running, queued) = (
        running["id"].as_i64().unwrap(),
        queued["id"].as_i64().unwrap(),
    );
    eventually(
        "the first execution to start",
        Duration::from_secs(20),
        || async { pidfile.exists().then_some(()) },
    )
    .await;

    let (status, answer) = sluice
        .post(&format!("/api/v1/executions/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        (answer["cancel"].as_str(), answer["status"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "the engine cancels what it holds"
    );
    let (_, stats) = sluice.get("/api/v1/actions/t.hold/queue-stats").await;
    assert_eq!(
        (
            stats["queue_length"].as_u64(),
            stats["active_count"].as_u64()
        ),
        (Some(0), Some(1)),
        "{stats}"
    );

    let (status, answer) = sluice
        .post(&format!("/api/v1/executions/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["cancel"], "requested",
        "the worker cancels what it runs"
    );
    let done = sluice.wait_execution(running).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    let shell = std::fs::read_to_string(&pidfile).unwrap();
    let alive = std::fs::read_to_string(format!("/proc/{}/stat", shell.trim()))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "the action's process outlived the cancel");
    assert!(
        !sluice.data_dir.path().join("pid2").exists(),
        "the cancelled queued execution never ran"
    );

    let (status, answer) = sluice
        .post(&format!("/api/v1/executions/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("already finished: cancelled"),
        "{answer}"
    );
    assert_eq!(
        sluice
            .post("/api/v1/executions/999/cancel", &json!({}))
            .await
            .0,
        404
    );
    let (_, stats) = sluice.get("/api/v1/actions/t.hold/queue-stats").await;
    assert_eq!(stats["active_count"], 0, "the slot was released: {stats}");
}

#[tokio::test]
async fn shutting_down_drains_executions_in_flight() {
    let mut sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let (_, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "core.local", "parameters": {"cmd": "sleep 1; echo drained"}}),
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    eventually(
        "the action to be running",
        Duration::from_secs(20),
        || async {
            (sluice.get(&format!("/api/v1/executions/{id}")).await.1["status"] == "running")
                .then_some(())
        },
    )
    .await;
    sluice.shutdown().await;
    let store = sluice_store::Store::connect(sluice.config.database_url().as_str())
        .await
        .unwrap();
    let execution = store
        .get_execution(sluice_core::ExecutionId(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        execution.status,
        sluice_core::ExecutionStatus::Succeeded,
        "stopped without draining"
    );
    assert_eq!(execution.result.unwrap()["stdout"], "drained\n");
}

#[tokio::test]
async fn each_execution_is_one_run_message_one_running_report_and_one_completion() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    for _ in 0..20 {
        sluice
            .post("/api/v1/executions", &json!({"action": "core.noop"}))
            .await;
    }
    let executions = sluice.wait_finished(20).await;
    assert!(executions.iter().all(|e| e["status"] == "succeeded"));
    let js = async_nats::jetstream::new(sluice.nats_client().await);
    // RUN is a work queue (acked messages are gone), so count what it ever stored.
    let mut run = js.get_stream("RUN").await.unwrap();
    let run = run.info().await.unwrap().state.clone();
    assert_eq!(
        (run.last_sequence, run.messages),
        (20, 0),
        "one run message each, all acknowledged"
    );
    let mut status = js.get_stream("STATUS").await.unwrap();
    let status = status.info().await.unwrap().state.clone();
    assert_eq!(
        (status.last_sequence, status.messages),
        (40, 40),
        "one running report and one completion each"
    );
}

#[tokio::test]
async fn megabytes_of_output_keep_the_real_status_cut_to_the_cap_and_marked() {
    let pack = test_pack(&[(
        "actions/loud.yaml",
        "name: loud\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'head -c 2000000 /dev/zero | tr \"\\\\0\" x; head -c 2000000 /dev/zero | tr \"\\\\0\" y >&2'}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let (status, created) = sluice
        .post("/api/v1/executions", &json!({"action": "t.loud"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{}", done["result"]["error"]);
    let cap = sluice_worker::runner::OUTPUT_CAP;
    assert_eq!(done["result"]["stdout"].as_str().unwrap().len(), cap);
    assert_eq!(done["result"]["stderr"].as_str().unwrap().len(), cap);
    assert_eq!(done["result"]["truncated"], json!(["stdout", "stderr"]));

    // Two MiB of result travelled in the results bucket, in chunks, and the object was
    // deleted once the completion was recorded: only its deletion marker is left.
    let js = async_nats::jetstream::new(sluice.nats_client().await);
    let mut stream = js.get_stream("OBJ_sluice-results").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = stream.info().await.unwrap().state.clone();
        assert!(state.last_sequence > 16, "{state:?}");
        if state.messages == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the result's object is still held: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_completion_naming_a_result_the_bucket_does_not_hold_ends_with_an_error_saying_so() {
    let pack = test_pack(&[(
        "actions/slow.yaml",
        "name: slow\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'sleep 3'}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let (status, created) = sluice
        .post("/api/v1/executions", &json!({"action": "t.slow"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let running = eventually("the execution running", Duration::from_secs(10), || async {
        let (_, e) = sluice.get(&format!("/api/v1/executions/{id}")).await;
        (e["status"] == "running").then_some(e)
    })
    .await;
    // A completion for the running attempt whose result object is not in the bucket: the
    // worker's own completion, two seconds later, is then a duplicate of it.
    let report = sluice_core::StatusReport {
        execution_id: sluice_core::ExecutionId(id),
        attempt: 1,
        action: "t.slow".parse().unwrap(),
        worker: running["worker"].as_str().unwrap().to_owned(),
        status: sluice_core::ExecutionStatus::Succeeded,
        result: Value::Null,
        at: chrono::Utc::now(),
        result_object: Some(sluice_core::ResultObject {
            name: format!("{id}.1"),
            size: 123_456,
        }),
        partition: None,
    };
    let bus = sluice_bus::Bus::connect(&sluice.nats.url(), "test")
        .await
        .unwrap();
    bus.publish_status(&report).await.unwrap();
    let done = sluice.wait_execution(id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(
        done["result"]["error"],
        "the result (123456 bytes) is no longer in the sluice-results bucket"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, after) = sluice.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(
        after["result"], done["result"],
        "one completion per attempt"
    );
}

#[tokio::test]
async fn values_past_the_decoders_limits_are_refused_with_a_reason_and_nothing_breaks() {
    let mut sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let mut deep = json!({"host": "db1", "severity": "info"});
    let mut nested = json!(1);
    for _ in 0..200 {
        nested = json!([nested]);
    }
    deep["extra"] = nested;
    let client = sluice.nats_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/msgpack");
    client
        .publish_with_headers(
            "sluice.trigger.examples.alert",
            headers,
            rmp_serde::to_vec(&deep).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host": "db1", "severity": "info", "host": "db2"}"#,
        )
        .await;
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host": "db1", "severity": "info", "n": 123456789012345678901234567890}"#,
        )
        .await;
    let events = eventually("three rejected events", Duration::from_secs(20), || async {
        let (_, events) = sluice.get("/api/v1/events").await;
        let rejected: Vec<String> = events
            .as_array()?
            .iter()
            .filter(|e| e["status"] == "rejected")
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect();
        (rejected.len() == 3).then_some(rejected)
    })
    .await;
    for expected in [
        "nested more than 64 levels deep",
        "duplicate key \"host\"",
        "integer 123456789012345678901234567890 does not fit in 64 bits",
    ] {
        assert!(
            events.iter().any(|r| r.contains(expected)),
            "{expected}: {events:#?}"
        );
    }
    // The same limits on the API's bodies, with a 400 that says what is wrong.
    let response = sluice
        .http
        .post(format!("{}/api/v1/executions", sluice.api))
        .header("Content-Type", "application/json")
        .body(r#"{"action": "core.noop", "action": "core.local"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("duplicate key \"action\""),
        "{body}"
    );
    // And the engine starts again over what it recorded.
    sluice.shutdown().await;
    sluice.boot().await;
    let (status, _) = sluice.get("/api/v1/events").await;
    assert_eq!(status, 200);
}

/// A rule disabled through the API matches no event until it is enabled again; the switch
/// is kept in the store (both kinds) and shown with the rule.
async fn a_disabled_rule_matches_nothing_until_enabled(store: StoreKind) {
    let sluice = Sluice::start(store, &[]).await;
    let (code, rule) = sluice
        .post("/api/v1/rules/examples.log_alert/disable", &json!({}))
        .await;
    assert_eq!(code, 200, "{rule}");
    assert_eq!(rule["enabled"], false, "{rule}");
    let file = rule["file"].as_str().unwrap();
    assert!(file.ends_with("rules/log_alert.yaml"), "{rule}");

    // Only log_alert matches an info alert: with it disabled the event starts nothing.
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web1","severity":"info"}"#,
        )
        .await;
    eventually("the event", Duration::from_secs(10), || async {
        let (_, events) = sluice.get("/api/v1/events").await;
        (events.as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sluice.executions().await.is_empty());

    let (_, rules) = sluice.get("/api/v1/rules").await;
    let listed = rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ref"] == "examples.log_alert")
        .unwrap();
    assert_eq!(listed["enabled"], false, "{listed}");
    assert_eq!(listed["switched"]["enabled"], false, "{listed}");
    assert!(listed["switched"]["changed_by"].is_string(), "{listed}");
    assert_eq!(listed["trigger"]["type"], "examples.alert", "{listed}");

    let (code, rule) = sluice
        .post("/api/v1/rules/examples.log_alert/enable", &json!({}))
        .await;
    assert_eq!(code, 200, "{rule}");
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web2","severity":"info"}"#,
        )
        .await;
    let executions = sluice.wait_finished(1).await;
    assert_eq!(executions[0]["rule"], "examples.log_alert");
    assert_eq!(executions[0]["result"]["stdout"], "alert: web2 is info\n");
}

#[tokio::test]
async fn a_disabled_rule_matches_nothing_until_enabled_on_sqlite() {
    a_disabled_rule_matches_nothing_until_enabled(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn a_disabled_rule_matches_nothing_until_enabled_on_postgres() {
    a_disabled_rule_matches_nothing_until_enabled(StoreKind::Postgres).await;
}

/// An event shows, for every rule on its trigger, whether it matched and if not the first
/// criterion that failed with the value it saw; the rule tester says the same of any payload
/// and fires nothing.
#[tokio::test]
async fn events_explain_each_rule_and_the_rule_tester_fires_nothing() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    sluice
        .publish(
            "sluice.trigger.examples.alert",
            br#"{"host":"web1","severity":"info"}"#,
        )
        .await;
    let executions = sluice.wait_finished(1).await;
    let (_, events) = sluice.get("/api/v1/events").await;
    let id = events[0]["id"].as_i64().unwrap();

    let (code, event) = sluice.get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(code, 200, "{event}");
    let verdict = |rule: &str| {
        event["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .cloned()
            .unwrap_or_else(|| panic!("no verdict for {rule}: {event:#}"))
    };
    let fired = verdict("examples.log_alert");
    assert_eq!(fired["matched"], true, "{fired}");
    assert_eq!(fired["execution"], executions[0]["id"], "{fired}");
    assert_eq!(
        verdict("examples.diagnose_critical")["mismatch"],
        json!({"key": "trigger.severity", "type": "equals", "pattern": "critical", "seen": "info"})
    );
    assert_eq!(
        verdict("examples.summarise_warnings")["mismatch"],
        json!({"key": "trigger.host", "type": "matchwildcard", "pattern": "db*", "seen": "web1"})
    );
    assert_eq!(
        event["enforcements"].as_array().unwrap().len(),
        1,
        "{event}"
    );

    let test = |payload: Value| {
        let sluice = &sluice;
        async move {
            sluice
                .post(
                    "/api/v1/rules/examples.diagnose_critical/test",
                    &json!({ "payload": payload }),
                )
                .await
        }
    };
    let (code, matched) = test(json!({"host": "db1", "severity": "critical"})).await;
    assert_eq!(code, 200, "{matched}");
    assert_eq!(matched["matched"], true, "{matched}");
    assert_eq!(matched["action"], "examples.diagnose", "{matched}");
    assert_eq!(matched["parameters"]["host"], "db1", "{matched}");
    let (_, missed) = test(json!({"host": "db1", "severity": "warning"})).await;
    assert_eq!(missed["matched"], false, "{missed}");
    assert_eq!(missed["mismatch"]["seen"], "warning", "{missed}");
    let (_, invalid) = test(json!({"severity": "critical"})).await;
    assert!(
        invalid["payload_error"].as_str().unwrap().contains("host"),
        "{invalid}"
    );
    let (code, unknown) = sluice
        .post("/api/v1/rules/examples.nope/test", &json!({"payload": {}}))
        .await;
    assert_eq!(code, 404, "{unknown}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, events) = sluice.get("/api/v1/events").await;
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "the tester fired: {events:#}"
    );
    assert_eq!(sluice.executions().await.len(), 1);
    let (code, none) = sluice.get("/api/v1/events/999").await;
    assert_eq!(code, 404, "{none}");

    let (_, enforcements) = sluice
        .get("/api/v1/enforcements?rule=examples.log_alert")
        .await;
    assert_eq!(enforcements[0]["event_id"], id, "{enforcements}");
    assert_eq!(
        enforcements[0]["execution_id"], executions[0]["id"],
        "{enforcements}"
    );
    let (_, none) = sluice
        .get("/api/v1/enforcements?rule=examples.diagnose_critical")
        .await;
    assert_eq!(none, json!([]));

    // Filters: by a payload value, time, rule; a bad filter says what to write instead.
    let count = |path: &'static str| {
        let sluice = &sluice;
        async move {
            let (code, list) = sluice.get(path).await;
            assert_eq!(code, 200, "{path}: {list}");
            list.as_array().unwrap().len()
        }
    };
    assert_eq!(count("/api/v1/events?payload.host=web1").await, 1);
    assert_eq!(count("/api/v1/events?payload.host=db9").await, 0);
    assert_eq!(
        count("/api/v1/events?trigger=examples.alert&status=accepted&since=1h").await,
        1
    );
    assert_eq!(count("/api/v1/events?until=1h").await, 0);
    assert_eq!(
        count("/api/v1/executions?rule=examples.log_alert&since=10m").await,
        1
    );
    assert_eq!(
        count("/api/v1/executions?rule=examples.diagnose_critical").await,
        0
    );
    for bad in [
        "/api/v1/events?since=yesterday",
        "/api/v1/events?payload.a'b=1",
        "/api/v1/events?colour=red",
        "/api/v1/executions?until=soon",
    ] {
        let (code, body) = sluice.get(bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body["detail"].is_string(), "{bad}: {body}");
    }

    // What is loaded, by trigger, action and pack.
    let (_, trigger) = sluice.get("/api/v1/triggers/examples.alert").await;
    assert_eq!(
        trigger["subject"], "sluice.trigger.examples.alert",
        "{trigger}"
    );
    assert!(
        trigger["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("examples.log_alert"))
    );
    let (_, action) = sluice.get("/api/v1/actions/core.local").await;
    assert_eq!(action["runner"], "local-shell-cmd", "{action}");
    assert!(
        action["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("examples.log_alert"))
    );
    let (_, pack) = sluice.get("/api/v1/packs/examples").await;
    assert_eq!(pack["loaded"], true, "{pack}");
    assert!(
        pack["rules"]
            .as_array()
            .unwrap()
            .contains(&json!("examples.log_alert"))
    );
    let (_, triggers) = sluice.get("/api/v1/triggers").await;
    assert!(
        triggers
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["ref"] == "core.st2.IntervalTimer"),
        "{triggers}"
    );
    for missing in [
        "/api/v1/triggers/x.y",
        "/api/v1/actions/x.y",
        "/api/v1/packs/nope",
    ] {
        let (code, body) = sluice.get(missing).await;
        assert_eq!(code, 404, "{missing}: {body}");
    }
}

/// A failed execution re-run with a parameter changed: a new execution that names the one
/// it re-runs; unknown executions and bad parameters are refused with what to fix.
#[tokio::test]
async fn a_failed_execution_is_re_run_with_a_parameter_changed() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let first = sluice
        .client()
        .submit("core.local", json!({"cmd": "echo first; exit 3"}))
        .await;
    let failed = sluice.wait_execution(first).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let id = failed["id"].as_i64().unwrap();

    let (code, rerun) = sluice
        .post(
            &format!("/api/v1/executions/{id}/re-run"),
            &json!({"parameters": {"cmd": "echo again"}}),
        )
        .await;
    assert_eq!(code, 201, "{rerun}");
    assert_eq!(rerun["rerun_of"], id, "{rerun}");
    let again = sluice.wait_execution(rerun["id"].as_i64().unwrap()).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["result"]["stdout"], "again\n", "{again}");
    assert_eq!(again["action"], "core.local");

    // The same parameters when none are given.
    let (_, same) = sluice
        .post(&format!("/api/v1/executions/{id}/re-run"), &json!({}))
        .await;
    assert_eq!(same["parameters"]["cmd"], "echo first; exit 3", "{same}");

    let (code, missing) = sluice
        .post("/api/v1/executions/99999/re-run", &json!({}))
        .await;
    assert_eq!(code, 404, "{missing}");
    let (code, bad) = sluice
        .post(
            &format!("/api/v1/executions/{id}/re-run"),
            &json!({"parameters": {"nope": 1}}),
        )
        .await;
    assert_eq!(code, 422, "{bad}");
    assert!(bad["detail"].as_str().unwrap().contains("nope"), "{bad}");
}

/// Rules defined through the API: checked as rule files are, in force at once, replaced,
/// deleted, and kept across a restart; rules from packs' files are changed in their files.
#[tokio::test]
async fn rules_defined_through_the_api_fire_change_survive_a_restart_and_go() {
    let mut sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let rule = |message: &str| {
        json!({
            "pack": "examples",
            "name": "echo_web9",
            "description": "defined through the API",
            "trigger": {"type": "examples.alert"},
            "criteria": {"trigger.host": {"type": "equals", "pattern": "web9"}},
            "action": {"ref": "core.echo", "parameters": {"message": message}},
        })
    };
    let (code, created) = sluice
        .post("/api/v1/rules", &rule("first {{ trigger.host }}"))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["ref"], "examples.echo_web9", "{created}");
    assert_eq!(created["origin"], "api", "{created}");
    let (code, again) = sluice.post("/api/v1/rules", &rule("x")).await;
    assert_eq!(code, 409, "{again}");

    let alert = br#"{"host":"web9","severity":"info"}"#;
    sluice.publish("sluice.trigger.examples.alert", alert).await;
    let done = sluice.wait_finished(2).await;
    let echoed = |done: &[Value]| {
        done.iter()
            .filter(|e| e["rule"] == "examples.echo_web9")
            .map(|e| e["result"]["message"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(echoed(&done), ["first web9"]);

    let (code, replaced) = sluice
        .client()
        .put(
            "/api/v1/rules/examples.echo_web9",
            &rule("second {{ trigger.host }}"),
        )
        .await;
    assert_eq!(code, 200, "{replaced}");
    sluice.shutdown().await;
    sluice.boot().await;
    let (_, kept) = sluice.get("/api/v1/rules/examples.echo_web9").await;
    assert_eq!(kept["origin"], "api", "kept across a restart: {kept}");
    sluice.publish("sluice.trigger.examples.alert", alert).await;
    let done = sluice.wait_finished(4).await;
    assert_eq!(echoed(&done), ["first web9", "second web9"]);

    // Checked as a rule file is, every problem with its field.
    let mut broken = rule("x");
    broken["action"]["ref"] = json!("core.nope");
    broken["trigger"]["type"] = json!("examples.nothing");
    let (code, refused) = sluice
        .client()
        .put("/api/v1/rules/examples.echo_web9", &broken)
        .await;
    assert_eq!(code, 422, "{refused}");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("action.ref: unknown action core.nope"),
        "{detail}"
    );
    assert!(detail.contains("trigger.type: unknown trigger"), "{detail}");
    let fields: Vec<&str> = refused["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"action.ref") && fields.contains(&"trigger.type"),
        "{refused}"
    );
    let (code, file_rule) = sluice
        .client()
        .delete("/api/v1/rules/examples.log_alert")
        .await;
    assert_eq!(code, 409, "{file_rule}");
    let mut clash = rule("x");
    clash["name"] = json!("log_alert");
    let (code, clash) = sluice.post("/api/v1/rules", &clash).await;
    assert!(code == 409 || code == 422, "{code} {clash}");

    let (code, deleted) = sluice
        .client()
        .delete("/api/v1/rules/examples.echo_web9")
        .await;
    assert_eq!(code, 200, "{deleted}");
    sluice.publish("sluice.trigger.examples.alert", alert).await;
    let done = sluice.wait_finished(5).await;
    assert_eq!(echoed(&done).len(), 2, "a deleted rule fires nothing");
    let (code, _) = sluice.get("/api/v1/rules/examples.echo_web9").await;
    assert_eq!(code, 404);
}

/// A bulk cancel takes every unfinished execution the filter names, queued and running,
/// and leaves the rest; without a filter it is refused.
#[tokio::test]
async fn a_bulk_cancel_takes_every_unfinished_execution_it_names() {
    let pack = test_pack(&[(
        "actions/slow.yaml",
        "name: slow\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'sleep 30'}\npolicy: {max_concurrent: 1}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let api = sluice.client();
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(api.submit("t.slow", json!({})).await);
    }
    let other = api.submit("core.echo", json!({"message": "stays"})).await;
    eventually(
        "the first slow one running",
        Duration::from_secs(20),
        || async {
            let (_, e) = sluice.get(&format!("/api/v1/executions/{}", slow[0])).await;
            (e["status"] == "running").then_some(())
        },
    )
    .await;

    let (code, refused) = sluice.post("/api/v1/executions/cancel", &json!({})).await;
    assert_eq!(code, 400, "{refused}");
    let (code, cancelled) = sluice
        .post("/api/v1/executions/cancel", &json!({"action": "t.slow"}))
        .await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["matched"], 4, "{cancelled}");
    for id in &slow {
        let done = sluice.wait_execution(*id).await;
        assert_eq!(done["status"], "cancelled", "{done}");
    }
    assert_eq!(sluice.wait_execution(other).await["status"], "succeeded");
}

/// Reads Server-Sent Events until `end`: (event, data) in order.
async fn sse_events(mut response: reqwest::Response, mut each: impl FnMut(&str, &str)) {
    let mut pending = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(bytes) = response.chunk().await.unwrap() {
        pending.extend_from_slice(&bytes);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let line = String::from_utf8(line).unwrap();
            let line = line.trim_end();
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = v.trim_start().to_owned();
            } else if line.is_empty() && !event.is_empty() {
                each(&event, &data);
                if event == "end" {
                    return;
                }
                event.clear();
                data.clear();
            }
        }
    }
    panic!("the stream closed before `end`");
}

/// A running execution's output arrives in pieces before it ends; afterwards the same
/// request gives what the result kept.
#[tokio::test]
async fn live_output_arrives_in_pieces_before_the_execution_ends() {
    let pack = test_pack(&[(
        "actions/chatty.yaml",
        "name: chatty\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'for i in 1 2 3; do echo tick $i; sleep 0.7; done; echo done >&2'}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let id = sluice.client().submit("t.chatty", json!({})).await;
    let url = format!("{}/api/v1/executions/{id}/output?follow=true", sluice.api);
    let response = sluice.http.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut first_seen = None;
    let mut ended = String::new();
    sse_events(response, |event, data| {
        let text: String = serde_json::from_str(data).unwrap_or_default();
        match event {
            "stdout" => {
                if first_seen.is_none() {
                    first_seen = Some(std::time::Instant::now());
                }
                stdout.push_str(&text);
            }
            "stderr" => stderr.push_str(&text),
            "end" => ended = data.to_owned(),
            other => panic!("unexpected event {other}"),
        }
    })
    .await;
    let ended_at = std::time::Instant::now();
    assert_eq!(stdout, "tick 1\ntick 2\ntick 3\n");
    assert_eq!(stderr, "done\n");
    assert_eq!(ended, "succeeded");
    let early = ended_at - first_seen.unwrap();
    assert!(
        early >= Duration::from_millis(1000),
        "the first piece came only {early:?} before the end: not live"
    );

    // Afterwards: what the result kept, as SSE and as JSON.
    let response = sluice.http.get(&url).send().await.unwrap();
    let mut replay = Vec::new();
    sse_events(response, |event, data| {
        replay.push((event.to_owned(), data.to_owned()))
    })
    .await;
    assert_eq!(
        replay[0],
        (
            "stdout".to_owned(),
            json!("tick 1\ntick 2\ntick 3\n").to_string()
        )
    );
    assert_eq!(replay.last().unwrap().1, "succeeded");
    let (_, kept) = sluice.get(&format!("/api/v1/executions/{id}/output")).await;
    assert_eq!(kept["stdout"], "tick 1\ntick 2\ntick 3\n", "{kept}");
    let (code, _) = sluice
        .get("/api/v1/executions/99999/output?follow=true")
        .await;
    assert_eq!(code, 404);
}

/// Every route docs/api.md lists, as `(method, path)` with parameters written `{}`.
fn documented_routes() -> std::collections::BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let mut routes = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        for span in line.split('`').skip(1).step_by(2) {
            let Some((methods, path)) = span.split_once(' ') else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            let path = path.split(['?', '[', ' ']).next().unwrap();
            for method in methods.split('/') {
                if ["GET", "POST", "PUT", "DELETE"].contains(&method) {
                    routes.insert((method.to_owned(), normalized(path)));
                }
            }
        }
    }
    routes
}

fn normalized(path: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => {
                inside = true;
                out.push_str("{}");
            }
            '}' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_is_served_to_a_token_and_lists_every_documented_route() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let anonymous = reqwest::get(format!("{}/api/v1/openapi.json", sluice.api))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let (status, document) = sluice.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let mut operations = std::collections::BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete"] {
            if let Some(operation) = item.get(method) {
                assert!(
                    operation["responses"]["default"]["content"]["application/problem+json"]
                        .is_object(),
                    "{method} {path} documents its problems"
                );
                operations.insert((method.to_uppercase(), normalized(path)));
            }
        }
    }
    let documented = documented_routes();
    let (webhook_st2, webhook) = (
        ("POST".to_owned(), "/api/v1/webhooks/st2".to_owned()),
        ("POST".to_owned(), "/api/v1/webhooks/{}".to_owned()),
    );
    let undocumented: Vec<_> = operations.difference(&documented).collect();
    let missing: Vec<_> = documented
        .iter()
        .filter(|route| **route != webhook_st2 || !operations.contains(&webhook))
        .filter(|route| !operations.contains(route))
        .collect();
    assert!(
        undocumented.is_empty(),
        "in the OpenAPI document, not in docs/api.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in docs/api.md, not in the OpenAPI document: {missing:?}"
    );
    assert!(operations.len() >= 45, "{}", operations.len());

    let execution = &document["components"]["schemas"]["Execution"];
    assert_eq!(
        execution["properties"]["status"]["$ref"],
        "#/components/schemas/ExecutionStatus"
    );
    assert!(
        document["paths"]["/api/v1/executions"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["$ref"]
            .as_str()
            .is_some_and(|r| r.ends_with("CreateExecution")),
        "{}",
        document["paths"]["/api/v1/executions"]["post"]
    );
}

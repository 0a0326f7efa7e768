//! No secret at rest, on the wire or in a log in clear. Distinctive secrets go in through a
//! trigger payload, `POST /api/v1/executions`, a workflow input, a wrong-type value, the
//! datastore and a queued execution that outlives a `kill -9` of the engine; the action gets
//! each one; then every byte of the store (the SQLite files, or a PostgreSQL dump), the
//! NATS store directory, the engine's and the worker's logs (human and JSON, at debug) and
//! every exported span is searched for them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::{Value, json};
use sluice_testkit::{OtlpReceiver, Postgres};

const TRIGGER: &str = "zq-trigger-secret-5c1e";
const TRIGGER_BAD_TYPE: &str = "zq-trigger-badtype-77aa";
const RUN: &str = "zq-run-secret-a9f0";
const FLOW: &str = "zq-flow-secret-31d2";
const WRONG_TYPE: &str = "zq-wrongtype-secret-0b4c";
const DATASTORE: &str = "zq-datastore-secret-e6d8";
const HOLD: &str = "zq-hold-secret-42ab";
const QUEUED: &str = "zq-queued-secret-9c3f";

const ALL: [&str; 8] = [
    TRIGGER,
    TRIGGER_BAD_TYPE,
    RUN,
    FLOW,
    WRONG_TYPE,
    DATASTORE,
    HOLD,
    QUEUED,
];

fn pack(dir: &Path) -> Vec<(&'static str, String)> {
    let received = dir.join("received.txt");
    let release = dir.join("release");
    let record = |name: &str, extra: &str| {
        format!(
            "name: {name}\nrunner_type: local-shell-cmd\ntimeout: 120\n{extra}parameters:\n  password: {{type: string, secret: true, required: true}}\n  note: {{type: string, default: '-'}}\n  file: {{type: string, default: '{}'}}\n  release: {{type: string, default: '{}'}}\n  cmd: {{type: string, default: 'while [ ! -e \"$SLUICE_PARAM_RELEASE\" ]; do sleep 0.1; done; printf \"%s\\n\" \"$SLUICE_PARAM_PASSWORD\" >> \"$SLUICE_PARAM_FILE\"'}}\n",
            received.display(),
            release.display()
        )
    };
    vec![
        ("pack.yaml", "ref: t\n".to_owned()),
        ("actions/login.yaml", record("login", "")),
        (
            "actions/gate.yaml",
            record("gate", "policy:\n  max_concurrent: 1\n"),
        ),
        (
            "actions/pin.yaml",
            "name: pin\nrunner_type: noop\nparameters:\n  pin: {type: integer, secret: true}\n"
                .to_owned(),
        ),
        (
            "actions/flow.yaml",
            "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\nparameters:\n  token: {type: string, secret: true, required: true}\n".to_owned(),
        ),
        (
            "actions/workflows/flow.yaml",
            "version: 1.0\ninput: [token]\nvars:\n  - header: \"Bearer {{ ctx().token }}\"\ntasks:\n  call:\n    action: t.login\n    input: {password: \"{{ ctx().token }}\", note: \"{{ ctx().header }}\"}\noutput:\n  - header: \"{{ ctx().header }}\"\n".to_owned(),
        ),
        (
            "triggers/login_event.yaml",
            "name: login_event\npayload_schema:\n  type: object\n  required: [user, password]\n  properties:\n    user: {type: string}\n    password: {type: string, secret: true}\n".to_owned(),
        ),
        ("triggers/kv_event.yaml", "name: kv_event\n".to_owned()),
        (
            "actions/env.yaml",
            "name: env\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: env}\n".to_owned(),
        ),
        (
            "rules/on_login.yaml",
            "name: on_login\ntrigger:\n  type: t.login_event\naction:\n  ref: t.login\n  parameters:\n    password: \"{{ trigger.password }}\"\n    note: \"user {{ trigger.user }} said {{ trigger.password }}\"\n".to_owned(),
        ),
        (
            "rules/on_kv.yaml",
            "name: on_kv\ntrigger:\n  type: t.kv_event\naction:\n  ref: t.login\n  parameters:\n    password: \"{{ st2kv.system.db_password | decrypt_kv }}\"\n".to_owned(),
        ),
    ]
}

/// Every file under `dir`, with the secrets each holds.
fn search_dir(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            search_dir(&path, found);
        } else if let Ok(bytes) = std::fs::read(&path) {
            search(&path.display().to_string(), &bytes, found);
        }
    }
}

fn search(place: &str, bytes: &[u8], found: &mut Vec<String>) {
    for secret in ALL {
        if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            found.push(format!("{secret} in {place}"));
        }
    }
}

async fn wait_for(cluster: &Cluster, what: &str, check: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let executions = cluster.get("/api/v1/executions?limit=100").await;
        let list = executions.as_array().cloned().unwrap_or_default();
        if check(&list) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(list: &[Value], action: &str, status: &str) -> usize {
    list.iter()
        .filter(|e| e["action"] == action && e["status"] == status)
        .count()
}

async fn secrets_never_rest_travel_or_show_in_clear(postgres: Option<&Postgres>, log_format: &str) {
    let receiver = OtlpReceiver::start().await;
    let outside = tempfile::tempdir().unwrap();
    let files = pack(outside.path());
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let mut cluster = Cluster::new(&files);
    cluster.capture_logs = true;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("SLUICE_LOG_FORMAT", log_format.to_owned()),
        (
            "RUST_LOG",
            "info,sluice=debug,sluice_engine=debug,sluice_worker=debug,sluice_bus=debug,sluice_api=debug,sqlx=debug".to_owned(),
        ),
    ];
    if let Some(postgres) = postgres {
        env.push(("SLUICE_DATABASE_URL", postgres.url()));
    }
    cluster.start_engine_with(&env).await;
    cluster.start_worker_with("w1", 4, &env);
    let api = cluster.client();
    let release = outside.path().join("release");

    // A queued execution with a secret, behind one holding the only slot.
    let hold = cluster.submit("t.gate", json!({"password": HOLD})).await;
    let queued = cluster.submit("t.gate", json!({"password": QUEUED})).await;
    wait_for(&cluster, "the first gate running", |l| {
        count(l, "t.gate", "running") == 1 && count(l, "t.gate", "requested") == 1
    })
    .await;
    // Killed as a crash kills it; what NATS holds meanwhile is searched at the end too.
    cluster.kill_engine();
    let mut found = Vec::new();
    search_dir(cluster.nats.store_dir(), &mut found);
    cluster.start_engine_with(&env).await;

    std::fs::write(&release, "").unwrap();
    let (status, body) = api
        .put(
            "/api/v1/keys/system.db_password",
            &json!({"value": DATASTORE, "secret": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "********");
    let listed = cluster.get("/api/v1/keys").await;
    assert_eq!(listed[0]["value"], "********", "{listed}");

    let nats = async_nats::connect(cluster.nats.url()).await.unwrap();
    for (subject, payload) in [
        (
            "sluice.trigger.t.login_event",
            json!({"user": "ann", "password": TRIGGER}),
        ),
        (
            "sluice.trigger.t.login_event",
            json!({"user": "bob", "password": [TRIGGER_BAD_TYPE]}),
        ),
        ("sluice.trigger.t.kv_event", json!({})),
    ] {
        nats.publish(subject, payload.to_string().into())
            .await
            .unwrap();
    }
    nats.flush().await.unwrap();
    let run = cluster.submit("t.login", json!({"password": RUN})).await;
    let flow = cluster.submit("t.flow", json!({"token": FLOW})).await;
    let (status, refused) = api
        .post(
            "/api/v1/executions",
            &json!({"action": "t.pin", "parameters": {"pin": WRONG_TYPE}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("\"pin\""),
        "{refused}"
    );

    // Every one reached its action, in clear; the queued one after the engine's restart.
    wait_for(&cluster, "every execution succeeded", |l| {
        count(l, "t.gate", "succeeded") == 2
            && count(l, "t.login", "succeeded") == 4
            && count(l, "t.flow", "succeeded") == 1
    })
    .await;
    let received = std::fs::read_to_string(outside.path().join("received.txt")).unwrap();
    let mut got: Vec<&str> = received.lines().collect();
    got.sort_unstable();
    let mut expected = vec![TRIGGER, RUN, FLOW, DATASTORE, HOLD, QUEUED];
    expected.sort_unstable();
    assert_eq!(got, expected, "what the actions received");

    // A re-run carries the secret again: sealed on its way, in clear to the action only.
    let (status, rerun) = api
        .post(&format!("/api/v1/executions/{run}/re-run"), &json!({}))
        .await;
    assert_eq!(status, 201, "{rerun}");
    assert_eq!(rerun["rerun_of"], run, "{rerun}");
    assert_eq!(rerun["parameters"]["password"], "********", "{rerun}");
    wait_for(&cluster, "the re-run succeeded", |l| {
        count(l, "t.login", "succeeded") == 5
    })
    .await;
    let received = std::fs::read_to_string(outside.path().join("received.txt")).unwrap();
    assert_eq!(
        received.lines().filter(|l| *l == RUN).count(),
        2,
        "{received}"
    );

    // An action sees its own SLUICE_* variables, none of the worker's configuration.
    let env = cluster.submit("t.env", json!({})).await;
    wait_for(&cluster, "env ran", |l| count(l, "t.env", "succeeded") == 1).await;
    let env = cluster.execution(env).await;
    let env = env["result"]["stdout"].as_str().unwrap();
    assert!(env.contains("SLUICE_EXECUTION_ID="), "{env}");
    assert!(
        !env.contains("SLUICE_LOG_FORMAT"),
        "the worker's configuration leaked: {env}"
    );

    // Shown masked wherever the API shows them.
    for id in [hold, queued, run] {
        let e = cluster.execution(id).await;
        assert_eq!(e["parameters"]["password"], "********", "{e}");
    }
    let workflow = cluster.execution(flow).await;
    assert_eq!(workflow["parameters"]["token"], "********", "{workflow}");
    assert_eq!(
        workflow["result"]["output"]["header"], "********",
        "{workflow}"
    );
    let events = cluster.get("/api/v1/events").await;
    let rejected = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "rejected")
        .expect("the wrong-type payload is rejected");
    assert!(
        rejected["reason"].as_str().unwrap().contains("/password"),
        "{rejected}"
    );
    let by_rule = cluster
        .get("/api/v1/executions?action=t.login&limit=10")
        .await;
    let from_trigger = by_rule
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["rule"] == "t.on_login")
        .unwrap();
    assert_eq!(
        from_trigger["parameters"]["note"], "********",
        "rendered from a secret"
    );
    let everything = format!(
        "{events}{by_rule}{}{}",
        cluster.get("/api/v1/executions?limit=100").await,
        cluster.get("/api/v1/keys").await
    );
    search("the API's answers", everything.as_bytes(), &mut found);

    // Now every byte the system wrote.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill_engine();
    cluster.kill_worker("w1");
    search_dir(&cluster.dir.path().join("data"), &mut found);
    search_dir(cluster.nats.store_dir(), &mut found);
    for process in ["engine", "w1"] {
        let log = std::fs::read(cluster.log_file(process)).unwrap();
        assert!(
            log.len() > 1000,
            "{process} logged little: {} bytes",
            log.len()
        );
        search(&format!("the {process} log"), &log, &mut found);
    }
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|s| s.name == "execution.run"),
        "no spans arrived"
    );
    for span in &spans {
        search(
            &format!("span {}", span.name),
            format!("{} {:?}", span.name, span.attributes).as_bytes(),
            &mut found,
        );
    }
    if let Some(postgres) = postgres {
        search("the PostgreSQL dump", &postgres.dump(), &mut found);
    }
    assert!(found.is_empty(), "secrets found in clear: {found:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_found_in_sqlite_nats_human_logs_or_spans() {
    secrets_never_rest_travel_or_show_in_clear(None, "human").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_found_in_a_postgresql_dump_nats_json_logs_or_spans() {
    let postgres = Postgres::start();
    secrets_never_rest_travel_or_show_in_clear(Some(&postgres), "json").await;
}

//! Workflows end to end in one `sluice up` process (engine and worker) against a real
//! nats-server and SQLite: tasks as child executions, transitions, published variables,
//! `with` items, joins, retries, nesting and cancellation.

mod common;

use std::time::Duration;

use common::{Sluice, StoreKind, test_pack};
use serde_json::{Value, json};
use sluice_testkit::eventually;

const ACTIONS: &[(&str, &str)] = &[
    (
        "actions/work.yaml",
        "name: work\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'sleep \"$SLUICE_PARAM_DELAY\"; echo \"$SLUICE_PARAM_NAME\"'}\n  name: {type: string, required: true}\n  delay: {type: number, default: 0}\n",
    ),
    (
        // Fails until its `pass_at`-th run, counting runs in a file.
        "actions/flaky.yaml",
        "name: flaky\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'n=$(cat \"$SLUICE_PARAM_FILE\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$SLUICE_PARAM_FILE\"; [ $n -ge \"$SLUICE_PARAM_PASS_AT\" ]'}\n  file: {type: string, required: true}\n  pass_at: {type: integer, default: 1}\n",
    ),
    (
        "actions/one.yaml",
        "name: one\nrunner_type: local-shell-cmd\npolicy: {max_concurrent: 1}\nparameters:\n  cmd: {type: string, default: 'sleep 30'}\n  n: {type: integer}\n",
    ),
    (
        "actions/fail.yaml",
        "name: fail\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'echo broken >&2; exit 3'}\n",
    ),
];

/// The workflow test pack: the actions above plus `(name, parameters, workflow file)`.
fn pack(workflows: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let mut files: Vec<(String, String)> = ACTIONS
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    for (name, parameters, flow) in workflows {
        files.push((
            format!("actions/{name}.yaml"),
            format!(
                "name: {name}\nrunner_type: orquesta\nentry_point: workflows/{name}.yaml\nparameters:\n{parameters}"
            ),
        ));
        files.push((format!("actions/workflows/{name}.yaml"), (*flow).to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    test_pack(&refs)
}

async fn run(sluice: &Sluice, action: &str, parameters: Value) -> Value {
    let (code, body) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    sluice.wait_execution(id).await
}

/// The children of a workflow execution, oldest first.
async fn children(sluice: &Sluice, id: i64) -> Vec<Value> {
    sluice.client().children(id).await
}

fn of_action<'a>(children: &'a [Value], action: &str) -> Vec<&'a Value> {
    children.iter().filter(|c| c["action"] == action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_run_as_children_and_results_keep_item_order() {
    let dir = pack(&[(
        "fanout",
        "  names: {type: array, required: true}\n",
        r#"version: 1.0
input: [names]
vars: {done: false}
tasks:
  each:
    action: t.work
    with: {items: "{{ ctx().names }}", concurrency: 2}
    input: {name: "{{ item().name }}", delay: "{{ item().delay }}"}
    next:
      - when: "{{ succeeded() }}"
        publish:
          - done: true
          - said: "{{ result() | map(attribute='stdout') | map('trim') | list }}"
        do: [report]
  report:
    action: core.echo
    input: {message: "done={{ ctx().done }} first={{ ctx().said[0] }}"}
output:
  - said: "{{ ctx().said }}"
  - report: "{{ task('report').result.message }}"
"#,
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[dir.path().to_owned()]).await;
    // The first item sleeps longest, so the items finish in reverse order.
    let names = json!([
        {"name": "a", "delay": 0.6},
        {"name": "b", "delay": 0.3},
        {"name": "c", "delay": 0.0},
    ]);
    let wf = run(&sluice, "t.fanout", json!({ "names": names })).await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(
        wf["result"]["output"]["said"],
        json!(["a", "b", "c"]),
        "{wf}"
    );
    assert_eq!(
        wf["result"]["output"]["report"],
        json!("done=True first=a"),
        "{wf}"
    );

    let id = wf["id"].as_i64().unwrap();
    let kids = children(&sluice, id).await;
    let work = of_action(&kids, "t.work");
    assert_eq!(work.len(), 3, "one child per item: {kids:?}");
    assert!(
        work.iter()
            .all(|c| c["parent_id"] == id && c["status"] == "succeeded")
    );
    assert_eq!(of_action(&kids, "core.echo").len(), 1);
    // At most two items at once: the third started only after one of the first two ended.
    let started = |c: &Value| c["started_at"].as_str().unwrap().to_owned();
    let finished = |c: &Value| c["finished_at"].as_str().unwrap().to_owned();
    let third = work
        .iter()
        .find(|c| c["parameters"]["name"] == "c")
        .unwrap();
    let first_end = work
        .iter()
        .filter(|c| c["parameters"]["name"] != "c")
        .map(|c| finished(c))
        .min()
        .unwrap();
    assert!(
        started(third) >= first_end,
        "the third item started before a place was free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_branch_on_failure_retries_run_again_and_joins_wait_for_all() {
    let dir = pack(&[
        (
            "branches",
            "  file: {type: string, required: true}\n",
            r#"version: 1.0
input: [file]
tasks:
  start:
    action: core.noop
    next:
      - do: [flaky, broken]
  flaky:
    action: t.flaky
    input: {file: "{{ ctx().file }}", pass_at: 3}
    retry: {count: 2, delay: 0.1, backoff: 2}
    next:
      - when: "{{ succeeded() }}"
        publish: [{flaky_ok: true}]
        do: [joined]
  broken:
    action: t.fail
    next:
      - when: "{{ failed() }}"
        publish: [{error: "{{ result().stderr | trim }}"}]
        do: [recover]
      - when: "{{ succeeded() }}"
        do: [never]
  recover:
    action: core.echo
    input: {message: "recovered from {{ ctx().error }}"}
    next:
      - do: [joined]
  never:
    action: core.noop
  joined:
    join: all
    action: core.echo
    input: {message: "flaky_ok={{ ctx().flaky_ok }}"}
output:
  - joined: "{{ task('joined').result.message }}"
  - recover: "{{ task('recover').result.message }}"
"#,
        ),
        (
            "unhandled",
            "",
            "version: 1.0\ntasks:\n  boom:\n    action: t.fail\n    next:\n      - when: \"{{ succeeded() }}\"\n        do: [after]\n  after:\n    action: core.noop\n",
        ),
    ]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[dir.path().to_owned()]).await;
    let counter = sluice.data_dir.path().join("flaky-count");
    let wf = run(
        &sluice,
        "t.branches",
        json!({ "file": counter.display().to_string() }),
    )
    .await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(wf["result"]["output"]["joined"], json!("flaky_ok=True"));
    assert_eq!(
        wf["result"]["output"]["recover"],
        json!("recovered from broken")
    );
    let kids = children(&sluice, wf["id"].as_i64().unwrap()).await;
    let flaky = of_action(&kids, "t.flaky");
    assert_eq!(
        flaky
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["failed", "failed", "succeeded"],
        "two retries, each a new child"
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    // The join ran once, after both branches; the branch not taken never ran.
    let echoes = of_action(&kids, "core.echo");
    assert_eq!(echoes.len(), 2, "recover and joined, once each: {echoes:?}");
    assert_eq!(of_action(&kids, "core.noop").len(), 1, "only `start`");

    // A failure no transition handles fails the workflow, and says which task.
    let wf = run(&sluice, "t.unhandled", json!({})).await;
    assert_eq!(wf["status"], "failed", "{wf}");
    let errors = wf["result"]["errors"].to_string();
    assert!(errors.contains("task boom failed"), "{errors}");
    let kids = children(&sluice, wf["id"].as_i64().unwrap()).await;
    assert_eq!(kids.len(), 1, "`after` never started: {kids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_task_can_be_a_workflow() {
    let dir = pack(&[
        (
            "inner",
            "  who: {type: string, required: true}\n",
            "version: 1.0\ninput: [who]\ntasks:\n  greet:\n    action: core.echo\n    input: {message: \"hello {{ ctx().who }}\"}\n    next:\n      - publish: [{greeting: \"{{ result().message }}\"}]\noutput:\n  - greeting: \"{{ ctx().greeting }}\"\n",
        ),
        (
            "outer",
            "",
            "version: 1.0\ntasks:\n  call:\n    action: t.inner\n    with: {items: \"{{ ['ann', 'bob'] }}\"}\n    input: {who: \"{{ item() }}\"}\n    next:\n      - publish: [{all: \"{{ result() | map(attribute='output') | map(attribute='greeting') | list }}\"}]\noutput:\n  - all: \"{{ ctx().all }}\"\n",
        ),
    ]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[dir.path().to_owned()]).await;
    let wf = run(&sluice, "t.outer", json!({})).await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(
        wf["result"]["output"]["all"],
        json!(["hello ann", "hello bob"])
    );
    let kids = children(&sluice, wf["id"].as_i64().unwrap()).await;
    assert_eq!(kids.len(), 2);
    for inner in &kids {
        assert_eq!(inner["action"], "t.inner");
        let grandchildren = children(&sluice, inner["id"].as_i64().unwrap()).await;
        assert_eq!(
            grandchildren.len(),
            1,
            "each inner workflow ran its one task"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_workflow_cancels_its_running_and_queued_children() {
    let dir = pack(&[(
        "slow",
        "",
        "version: 1.0\ntasks:\n  wait:\n    action: t.one\n    with: {items: \"{{ range(4) | list }}\", concurrency: 2}\n    input: {n: \"{{ item() }}\"}\n    next:\n      - do: [after]\n  after:\n    action: core.noop\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[dir.path().to_owned()]).await;
    let (_, body) = sluice
        .post("/api/v1/executions", &json!({"action": "t.slow"}))
        .await;
    let id = body["id"].as_i64().unwrap();
    // Two items started: one runs, the other waits in t.one's queue (max_concurrent: 1).
    eventually(
        "one item running, one queued",
        Duration::from_secs(20),
        || async {
            let kids = children(&sluice, id).await;
            let running = kids.iter().filter(|c| c["status"] == "running").count();
            let queued = kids.iter().filter(|c| c["status"] == "requested").count();
            (running == 1 && queued == 1).then_some(())
        },
    )
    .await;
    // The live tree shows the workflow actor under its execution's actor.
    let (_, tree) = sluice.get("/api/v1/actors?action=t.slow").await;
    let text = tree.to_string();
    assert!(
        text.contains(&format!("\"engine/workflow/{id}\""))
            && text.contains("\"kind\":\"workflow\""),
        "{tree}"
    );
    let (code, answer) = sluice
        .post(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 202, "{answer}");
    let wf = sluice.wait_execution(id).await;
    assert_eq!(wf["status"], "cancelled", "{wf}");
    let kids = children(&sluice, id).await;
    assert_eq!(
        kids.len(),
        2,
        "the items beyond the concurrency never started"
    );
    assert!(
        kids.iter().all(|c| c["status"] == "cancelled"),
        "the running child (by its worker) and the queued one (before it started) were cancelled: {kids:?}"
    );
    let histories: Vec<Vec<String>> = histories_of(&sluice, &kids).await;
    assert!(histories.iter().any(|h| h.contains(&"running".to_owned())));
    assert!(
        histories.iter().any(|h| h == &["requested", "cancelled"]),
        "{histories:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_timeout_cancels_the_attempt_and_fails_the_task() {
    let dir = pack(&[(
        "late",
        "",
        "version: 1.0\ntasks:\n  wait:\n    action: t.work\n    input: {name: x, delay: 30}\n    timeout: 0.5\n    next:\n      - when: \"{{ failed() }}\"\n        publish: [{why: \"{{ result().error }}\"}]\noutput:\n  - why: \"{{ ctx().why }}\"\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[dir.path().to_owned()]).await;
    let wf = run(&sluice, "t.late", json!({})).await;
    assert_eq!(wf["status"], "succeeded", "the failure was handled: {wf}");
    assert_eq!(wf["result"]["output"]["why"], json!("timed out after 0.5s"));
    let kids = children(&sluice, wf["id"].as_i64().unwrap()).await;
    assert_eq!(kids[0]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_workflow_deploys_every_region_and_reports() {
    the_example_workflow_on(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_workflow_runs_on_postgresql() {
    the_example_workflow_on(StoreKind::Postgres).await;
}

async fn the_example_workflow_on(store: StoreKind) {
    let sluice = Sluice::start(store, &[]).await;
    let wf = run(&sluice, "examples.deploy_all", json!({})).await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(
        wf["result"]["output"],
        json!({"done": true, "deployed": ["deployed to eu-west", "deployed to us-east", "deployed to ap-south"]})
    );
    let kids = children(&sluice, wf["id"].as_i64().unwrap()).await;
    assert_eq!(of_action(&kids, "examples.deploy").len(), 3);
    assert_eq!(
        of_action(&kids, "core.echo")[0]["result"]["message"],
        json!("done=True")
    );
}

async fn histories_of(sluice: &Sluice, executions: &[Value]) -> Vec<Vec<String>> {
    let mut histories = Vec::new();
    for e in executions {
        let (_, full) = sluice.get(&format!("/api/v1/executions/{}", e["id"])).await;
        histories.push(common::statuses(&full));
    }
    histories
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_mid_workflow_is_waited_out() {
    let dir = pack(&[(
        "steady",
        "",
        "version: 1.0\ntasks:\n  each:\n    action: t.work\n    with: {items: \"{{ range(6) | list }}\", concurrency: 2}\n    input: {name: \"{{ item() }}\", delay: 0.5}\n    next:\n      - do: [after]\n  after:\n    action: core.echo\n    input: {message: done}\noutput:\n  - names: \"{{ task('each').result | map(attribute='stdout') | map('trim') | list }}\"\n",
    )]);
    let sluice = Sluice::start(StoreKind::Postgres, &[dir.path().to_owned()]).await;
    let (_, body) = sluice
        .post("/api/v1/executions", &json!({"action": "t.steady"}))
        .await;
    let id = body["id"].as_i64().unwrap();
    eventually("items running", Duration::from_secs(20), || async {
        let kids = children(&sluice, id).await;
        kids.iter().any(|c| c["status"] == "running").then_some(())
    })
    .await;
    let postgres = sluice.postgres.as_ref().unwrap();
    postgres.stop();
    // Items finish while the store is down; their reports wait, and so does the workflow.
    tokio::time::sleep(Duration::from_secs(5)).await;
    postgres.start_again();
    let wf = sluice.wait_execution(id).await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(
        wf["result"]["output"]["names"],
        json!(["0", "1", "2", "3", "4", "5"])
    );
    let kids = children(&sluice, id).await;
    assert_eq!(kids.len(), 7, "six items and `after`, each once: {kids:?}");
    assert!(kids.iter().all(|c| c["status"] == "succeeded"), "{kids:?}");
    let (_, ledger) = sluice.get("/api/v1/ledger").await;
    assert_eq!(ledger["ended_other_than_once"], json!([]), "{ledger}");
    assert_eq!(ledger["unfinished"], 0, "{ledger}");
}

#[tokio::test]
async fn a_runaway_loop_is_failed_at_its_limit_with_the_reason() {
    let flow = r#"version: 1.0
limits: {rounds: 5}
tasks:
  first:
    next: [{do: [again]}]
  again:
    action: t.work
    input: {name: "round"}
    next:
      - when: "{{ succeeded() }}"
        do: [again]
"#;
    let pack = pack(&[("forever", "  {}\n", flow)]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let done = run(&sluice, "t.forever", json!({})).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert!(
        done["result"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("limits.rounds"),
        "{done:#}"
    );
    let id = done["id"].as_i64().unwrap();
    assert_eq!(children(&sluice, id).await.len(), 5);
}

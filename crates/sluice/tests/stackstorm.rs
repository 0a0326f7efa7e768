//! A pack written the way StackStorm Exchange packs are — a `lib/` base class, a
//! configuration schema with a secret, python actions reading `self.config`, a shell script
//! with positional and named parameters — run unmodified by a real engine and worker.

mod common;

use std::path::Path;

use common::{Sluice, StoreKind};
use futures::StreamExt as _;
use serde_json::{Value, json};

const SCHEMA: &str = "---
api_key:
  description: Key of the monitoring service
  type: string
  secret: true
  required: true
region:
  type: string
  default: eu-west-1
retries:
  type: integer
  default: 3
  minimum: 0
";

const BASE: &str = "
from st2common.runners.base_action import Action


class MonitorBase(Action):
    def __init__(self, config):
        super(MonitorBase, self).__init__(config=config)
        self.region = self.config['region']
";

const CHECK: &str = "
from lib.base import MonitorBase


class Check(MonitorBase):
    def run(self, host, expect_key):
        if self.config['api_key'] != expect_key:
            return (False, {'error': 'the configuration holds another key'})
        return {'host': host, 'region': self.region, 'retries': self.config['retries']}
";

const REMEMBER: &str = "
from st2common.runners.base_action import Action


class Remember(Action):
    def run(self, token):
        s = self.action_service
        s.set_value('last_host', 'db1')
        s.set_value('token', token, encrypt=True)
        s.set_value('shared', {'n': 1}, local=False, ttl=3600)
        sealed = s.get_value('token')
        opened = s.get_value('token', decrypt=True)
        names = sorted(kv.name for kv in s.list_values())
        deleted = [s.delete_value('last_host'), s.delete_value('last_host')]
        try:
            s.get_value('x', scope='user')
            user = 'allowed'
        except ValueError:
            user = 'refused'
        return {
            'sealed_differs': sealed != token,
            'opened': opened == token,
            'names': names,
            'missing': s.get_value('nope'),
            'deleted': deleted,
            'shared': s.get_value('shared', local=False),
            'user': user,
        }
";

const REPORT: &str = "#!/bin/sh
for a in \"$@\"; do printf '[%s]' \"$a\"; done
";

/// The pack `mon`, in a directory of its own.
fn monitoring_pack(root: &Path) {
    let pack = root.join("mon");
    let files = [
        ("pack.yaml", "ref: mon\nname: mon\nversion: 0.1.0\n"),
        ("config.schema.yaml", SCHEMA),
        ("actions/lib/__init__.py", ""),
        ("actions/lib/base.py", BASE),
        ("actions/check.py", CHECK),
        (
            "actions/check.yaml",
            "---\nname: check\nrunner_type: python-script\nentry_point: check.py\nparameters:\n  host: {type: string, required: true}\n  expect_key: {type: string, secret: true, required: true}\n",
        ),
        ("actions/report.sh", REPORT),
        ("actions/remember.py", REMEMBER),
        (
            "actions/remember.yaml",
            "---\nname: remember\nrunner_type: python-script\nentry_point: remember.py\nparameters:\n  token: {type: string, secret: true, required: true}\n",
        ),
        (
            "actions/report.yaml",
            "---\nname: report\nrunner_type: local-shell-script\nentry_point: report.sh\nparameters:\n  target: {type: string, position: 0, required: true}\n  region: {type: string, default: '{{ config_context.region }}'}\n  verbose: {type: boolean, default: true}\n  sudo: {type: boolean, default: false, immutable: true}\n",
        ),
        (
            "actions/leak.yaml",
            "---\nname: leak\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'test -n \"$SLUICE_PARAM_KEY\"'}\n  key: {type: string, default: '{{ config_context.api_key }}'}\n",
        ),
    ];
    for (rel, text) in files {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        pack.join("actions/report.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

async fn run(sluice: &Sluice, action: &str, parameters: Value) -> Value {
    let (status, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    sluice.wait_execution(created["id"].as_i64().unwrap()).await
}

fn broken<'a>(packs: &'a Value, name: &str) -> Option<&'a Value> {
    packs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["loaded"] == false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_style_pack_runs_unmodified_with_its_configuration() {
    let packs = tempfile::tempdir().unwrap();
    monitoring_pack(packs.path());
    let sluice = Sluice::start(StoreKind::Sqlite, &[packs.path().to_owned()]).await;
    let configs = sluice.data_dir.path().join("configs");

    // No configuration yet: the required key is missing, and the pack is left out, named
    // where its configuration belongs. The other packs run.
    let (_, listed) = sluice.get("/api/v1/packs").await;
    let left_out = broken(&listed, "mon").unwrap_or_else(|| panic!("{listed}"));
    let problems = left_out["errors"].to_string();
    assert!(
        problems.contains("configs/mon.yaml") && problems.contains("api_key"),
        "{problems}"
    );
    assert!(broken(&listed, "examples").is_none(), "{listed}");

    // A value of the wrong type is named by file and key, and changes nothing.
    std::fs::create_dir_all(&configs).unwrap();
    std::fs::write(configs.join("mon.yaml"), "api_key: k-7\nretries: -2\n").unwrap();
    let (status, refused) = sluice.post("/api/v1/packs/mon/reload", &json!({})).await;
    assert_eq!(status, 422, "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("mon.yaml") && text.contains("retries") && text.contains("-2"),
        "{text}"
    );

    std::fs::write(configs.join("mon.yaml"), "api_key: k-7\n").unwrap();
    let (status, reloaded) = sluice.post("/api/v1/packs/mon/reload", &json!({})).await;
    assert_eq!(status, 200, "{reloaded}");

    let (_, shown) = sluice.get("/api/v1/packs/mon").await;
    assert_eq!(
        shown["config"],
        json!({"api_key": "********", "region": "eu-west-1", "retries": 3}),
        "{shown}"
    );

    // self.config, through the pack's own lib/ base class: defaults filled in, the secret
    // in clear for the action alone.
    let done = run(
        &sluice,
        "mon.check",
        json!({"host": "db1", "expect_key": "k-7"}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["result"],
        json!({"host": "db1", "region": "eu-west-1", "retries": 3})
    );
    let done = run(
        &sluice,
        "mon.check",
        json!({"host": "db1", "expect_key": "other"}),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");

    // StackStorm's arguments: named ones first, then positional; the default read from the
    // configuration.
    let done = run(&sluice, "mon.report", json!({"target": "web 1"})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["stdout"],
        json!("[--region=eu-west-1][--verbose][web 1]")
    );
    assert_eq!(done["parameters"]["region"], json!("eu-west-1"));
    let (status, refused) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "mon.report", "parameters": {"target": "x", "sudo": true}}),
        )
        .await;
    assert!(
        (400..500).contains(&status),
        "an immutable parameter is refused: {refused}"
    );
    assert!(refused.to_string().contains("immutable"), "{refused}");

    // self.action_service: the datastore through the worker, secrets sealed on the way.
    let done = run(&sluice, "mon.remember", json!({"token": "tok-31337"})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["result"],
        json!({
            "sealed_differs": true, "opened": true, "names": ["last_host", "token"],
            "missing": null, "deleted": [true, false], "shared": {"n": 1}, "user": "refused",
        }),
        "{done}"
    );
    let (_, keys) = sluice.get("/api/v1/keys").await;
    let key = |name: &str| {
        keys.as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {keys}"))
    };
    assert_eq!(key("pack.mon.token")["secret"], true);
    assert_eq!(key("pack.mon.token")["value"], "********");
    assert_eq!(key("system.shared")["value"], json!({"n": 1}));
    assert!(key("system.shared")["expires_at"].is_string(), "{keys}");
    assert!(!keys.to_string().contains("tok-31337"));

    // A default that reads a secret of the configuration is sealed like one.
    let done = run(&sluice, "mon.leak", json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["parameters"]["key"], json!("********"), "{done}");
    let (_, listed) = sluice.get("/api/v1/executions?limit=100").await;
    assert!(
        !listed.to_string().contains("k-7"),
        "the secret is never shown"
    );
}

const VERSION: &str = "
import sys

import six
from st2common.runners.base_action import Action


class Version(Action):
    def run(self):
        return {'six': six.__version__, 'prefix': sys.prefix}
";

/// A pack `name` whose `version` action imports what `requirements` installs.
fn pack_with_requirements(root: &Path, name: &str, requirements: &str) {
    let pack = root.join(name);
    let files = [
        ("pack.yaml".to_owned(), format!("ref: {name}\n")),
        ("requirements.txt".to_owned(), requirements.to_owned()),
        ("actions/version.py".to_owned(), VERSION.to_owned()),
        (
            "actions/version.yaml".to_owned(),
            "name: version\nrunner_type: python-script\nentry_point: version.py\n".to_owned(),
        ),
    ];
    for (rel, text) in files {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_s_requirements_are_installed_once_into_a_virtualenv_of_its_own() {
    let packs = tempfile::tempdir().unwrap();
    pack_with_requirements(packs.path(), "deps", "six==1.17.0\n");
    pack_with_requirements(
        packs.path(),
        "nodeps",
        "sluice-test-no-such-distribution==0.0.1\n",
    );
    let sluice = Sluice::start(StoreKind::Sqlite, &[packs.path().to_owned()]).await;

    // Four at once: one build, which all four wait for.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, created) = sluice
            .post(
                "/api/v1/executions",
                &json!({"action": "deps.version", "parameters": {}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_i64().unwrap());
    }
    let venvs = sluice.data_dir.path().join("venvs");
    for id in ids {
        let done = sluice.wait_execution(id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["result"]["six"], json!("1.17.0"), "{done}");
        let prefix = done["result"]["result"]["prefix"].as_str().unwrap();
        assert!(
            Path::new(prefix).starts_with(venvs.canonicalize().unwrap())
                || Path::new(prefix).starts_with(&venvs),
            "runs in the pack's virtualenv: {prefix}"
        );
    }
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_virtualenv_builds_total{outcome=\"built\"} 1\n"),
        "{metrics}"
    );

    // Requirements pip cannot install fail the execution with pip's own words.
    let done = run(&sluice, "nodeps.version", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["result"]["error"].as_str().unwrap();
    assert!(
        error.contains("pack nodeps") && error.contains("sluice-test-no-such-distribution"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_retry_policy_runs_failed_attempts_again_each_a_new_attempt() {
    let packs = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let count = state.path().join("count");
    let pack = packs.path().join("flaky");
    let files = [
        ("pack.yaml".to_owned(), "ref: flaky\n".to_owned()),
        // Fails until its third run.
        (
            "actions/third.sh".to_owned(),
            format!(
                "#!/bin/sh\nn=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}\necho run $n\n[ $n -ge 3 ]\n",
                count.display()
            ),
        ),
        (
            "actions/third.yaml".to_owned(),
            "name: third\nrunner_type: local-shell-script\nentry_point: third.sh\n".to_owned(),
        ),
        (
            "policies/third.yaml".to_owned(),
            "name: third.retry\nresource_ref: flaky.third\npolicy_type: action.retry\nparameters:\n  retry_on: failure\n  max_retry_count: 3\n  delay: 0.2\n".to_owned(),
        ),
        (
            "actions/never.yaml".to_owned(),
            "name: never\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'exit 3'}\npolicy:\n  retry: {on: [failure], max_retries: 2, delay: 0.05, backoff: 2, max_delay: 1, jitter: 0.5}\n".to_owned(),
        ),
        (
            "actions/slow.yaml".to_owned(),
            "name: slow\nrunner_type: local-shell-cmd\ntimeout: 1\nparameters:\n  cmd: {type: string, default: 'sleep 5'}\npolicy:\n  retry: {on: [failure], max_retries: 3}\n".to_owned(),
        ),
    ];
    for (rel, text) in files {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        pack.join("actions/third.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let sluice = Sluice::start(StoreKind::Sqlite, &[packs.path().to_owned()]).await;

    let attempts = |done: &Value| -> Vec<(u64, String)> {
        done["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] == "requested" || common::is_terminal(h))
            .map(|h| {
                (
                    h["attempt"].as_u64().unwrap(),
                    h["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    // StackStorm's policy file: two failed attempts, then a success.
    let done = run(&sluice, "flaky.third", json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 3, "{done}");
    assert_eq!(done["result"]["stdout"], "run 3\n");
    assert_eq!(
        attempts(&done),
        [
            (1, "requested".into()),
            (2, "requested".into()),
            (3, "requested".into()),
            (3, "succeeded".into())
        ],
        "each retry is a new attempt, and the execution ends once"
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");

    // Retries run out: the last attempt's failure stands.
    let done = run(&sluice, "flaky.never", json!({})).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempt"], 3, "one attempt and two retries: {done}");
    assert_eq!(done["result"]["exit_code"], 3);

    // A timeout is not a failure to a policy that retries failures.
    let done = run(&sluice, "flaky.slow", json!({})).await;
    assert_eq!(done["status"], "timed_out", "{done}");
    assert_eq!(done["attempt"], 1, "{done}");
}

/// A polling sensor counting to 6, one trigger per poll, each tagged with its number. It
/// notes its pid, each dispatch (and whether JetStream took it as new), and lingers after
/// dispatching 3 before it counts it: a kill then makes it dispatch 3 again.
fn counting_sensor(state: &Path) -> String {
    format!(
        r#"
import os
import time

from st2reactor.sensor.base import PollingSensor

STATE = {state:?}


def note(name, text=""):
    with open(os.path.join(STATE, name), "a") as out:
        out.write(text)


class Counter(PollingSensor):
    def setup(self):
        note("pids", "%d\n" % os.getpid())
        self.log = self.sensor_service.get_logger("counter")

    def add_trigger(self, trigger):
        note("added", "%s %s %s\n" % (os.getpid(), trigger["ref"], trigger["parameters"]))

    def update_trigger(self, trigger):
        note("updated", "%s %s %s\n" % (os.getpid(), trigger["ref"], trigger["parameters"]))

    def remove_trigger(self, trigger):
        note("removed", "%s %s\n" % (os.getpid(), trigger["ref"]))

    def poll(self):
        path = os.path.join(STATE, "count")
        n = int(open(path).read()) if os.path.exists(path) else 0
        if n >= 6:
            return
        n += 1
        stored = self.sensor_service.dispatch("watch.tick", {{"n": n}}, trace_tag=str(n))
        note("dispatched", "%d %s\n" % (n, "new" if stored else "duplicate"))
        self.log.info("dispatched tick %d", n)
        if n == 3 and not os.path.exists(os.path.join(STATE, "lingered")):
            note("lingered")
            time.sleep(30)
        with open(path, "w") as out:
            out.write(str(n))
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_sensor_dispatches_triggers_and_a_killed_one_comes_back_losing_and_doubling_nothing()
{
    let packs = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("ticks.log");
    let pack = packs.path().join("watch");
    let files = [
        ("pack.yaml".to_owned(), "ref: watch\n".to_owned()),
        ("sensors/counter.py".to_owned(), counting_sensor(state.path())),
        (
            "sensors/counter.yaml".to_owned(),
            "class_name: Counter\nentry_point: counter.py\npoll_interval: 0.1\ntrigger_types:\n  - name: tick\n    payload_schema: {type: object, properties: {n: {type: integer}}, required: [n]}\n".to_owned(),
        ),
        (
            "actions/record.yaml".to_owned(),
            format!(
                "name: record\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {{type: string, default: 'echo \"$SLUICE_PARAM_N\" >> {}'}}\n  n: {{type: integer, required: true}}\n",
                log.display()
            ),
        ),
        (
            "rules/record.yaml".to_owned(),
            "name: record\ntrigger: {type: watch.tick, parameters: {every: 1}}\naction: {ref: watch.record, parameters: {n: '{{ trigger.n }}'}}\n".to_owned(),
        ),
    ];
    for (rel, text) in files {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let sluice = Sluice::start(StoreKind::Sqlite, &[packs.path().to_owned()]).await;
    let read = |name: &str| std::fs::read_to_string(state.path().join(name)).unwrap_or_default();

    // Killed between dispatching 3 and counting it.
    sluice_testkit::eventually(
        "tick 3 dispatched",
        std::time::Duration::from_secs(30),
        || async { read("dispatched").contains("3 new").then_some(()) },
    )
    .await;
    let first: i32 = read("pids").lines().next().unwrap().parse().unwrap();
    // As a crash would.
    let status = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // It comes back, dispatches 3 again — stored once — and counts on to 6.
    let done = sluice.wait_finished(6).await;
    assert!(done.iter().all(|e| e["status"] == "succeeded"), "{done:?}");
    sluice_testkit::eventually(
        "the sensor to count to 6",
        std::time::Duration::from_secs(30),
        || async { read("dispatched").contains("6 new").then_some(()) },
    )
    .await;
    let pids = read("pids");
    assert_eq!(pids.lines().count(), 2, "started again once: {pids}");
    let dispatched = read("dispatched");
    assert!(dispatched.contains("3 duplicate"), "{dispatched}");
    let mut ticks: Vec<i64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    ticks.sort();
    assert_eq!(
        ticks,
        [1, 2, 3, 4, 5, 6],
        "each tick ran once: {dispatched}"
    );
    let (_, events) = sluice.get("/api/v1/events?limit=100").await;
    assert_eq!(events.as_array().unwrap().len(), 6, "{events}");

    // Each start hands the sensor the rules on its triggers; while it runs, it is told of
    // each rule that comes, changes or goes, in the same process.
    let added = read("added");
    assert!(
        added.contains(&format!("{first} watch.record {{'every': 1}}")),
        "{added}"
    );
    let pid = read("pids").lines().last().unwrap().to_owned();
    let rule = |every: u64| json!({"pack": "watch", "name": "second", "trigger": {"type": "watch.tick", "parameters": {"every": every}}, "action": {"ref": "core.noop"}});
    let (status, created) = sluice.post("/api/v1/rules", &rule(2)).await;
    assert!(status == 200 || status == 201, "{created}");
    let told = |file: &'static str, text: String| {
        let read = &read;
        async move {
            sluice_testkit::eventually(
                &format!("the sensor to hear {text}"),
                std::time::Duration::from_secs(20),
                || async { read(file).contains(&text).then_some(()) },
            )
            .await
        }
    };
    told("added", format!("{pid} watch.second {{'every': 2}}")).await;
    let (status, replaced) = sluice
        .client()
        .put("/api/v1/rules/watch.second", &rule(5))
        .await;
    assert_eq!(status, 200, "{replaced}");
    told("updated", format!("{pid} watch.second {{'every': 5}}")).await;
    let (status, disabled) = sluice
        .post("/api/v1/rules/watch.second/disable", &json!({}))
        .await;
    assert_eq!(status, 200, "{disabled}");
    told("removed", format!("{pid} watch.second")).await;
    assert_eq!(
        read("pids").lines().last().unwrap(),
        pid,
        "the sensor was told, not started again"
    );
}

const CALLER: &str = r#"
import json
import os
import urllib.error
import urllib.request

from st2common.runners.base_action import Action


class Caller(Action):
    def call(self, method, path, body=None, header='X-Auth-Token'):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            os.environ['ST2_ACTION_API_URL'] + path, data=data, method=method)
        request.add_header(header, os.environ['ST2_ACTION_AUTH_TOKEN'])
        if data is not None:
            request.add_header('Content-Type', 'application/json')
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.loads(answer.read() or b'null')
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b'null')

    def run(self, keep):
        with open(keep, 'w') as f:
            f.write(os.environ['ST2_ACTION_AUTH_TOKEN'])
        me = os.environ['ST2_ACTION_EXECUTION_ID']
        read, mine = self.call('GET', '/executions/' + me)
        started, child = self.call(
            'POST', '/executions', {'action': 'core.noop', 'parameters': {}},
            header='St2-Api-Key')
        tokens, _ = self.call('GET', '/tokens')
        return {
            'read': [read, mine.get('status') if read == 200 else mine],
            'started': [started, child.get('action')],
            'tokens': tokens,
            'pack': os.environ['ST2_ACTION_PACK_NAME'],
            'url': os.environ['ST2_ACTION_API_URL'],
        }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_calls_the_api_with_its_execution_s_token_which_ends_with_the_execution() {
    let packs = tempfile::tempdir().unwrap();
    let pack = packs.path().join("apicall");
    for (rel, text) in [
        ("pack.yaml", "ref: apicall\nname: apicall\nversion: 0.1.0\n"),
        ("actions/caller.py", CALLER),
        (
            "actions/caller.yaml",
            "---\nname: caller\nrunner_type: python-script\nentry_point: caller.py\nparameters:\n  keep: {type: string, required: true}\n",
        ),
        (
            "actions/curl.yaml",
            "---\nname: curl\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {type: string, default: 'curl -s -o /dev/stderr -w %{http_code} -H \"Authorization: Bearer $ST2_ACTION_AUTH_TOKEN\" \"$ST2_ACTION_API_URL/executions/$ST2_ACTION_EXECUTION_ID\"'}\n",
        ),
    ] {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let sluice = Sluice::start(StoreKind::Sqlite, &[packs.path().to_owned()]).await;
    let mut runs = sluice
        .nats_client()
        .await
        .subscribe("sluice.run.>")
        .await
        .unwrap();

    let keep = packs.path().join("token");
    let done = run(
        &sluice,
        "apicall.caller",
        json!({"keep": keep.display().to_string()}),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let result = &done["result"]["result"];
    assert_eq!(result["read"], json!([200, "running"]), "{done}");
    assert_eq!(result["started"], json!([201, "core.noop"]), "{done}");
    assert_eq!(result["tokens"], json!(403), "the run scope only: {done}");
    assert_eq!(result["pack"], "apicall");
    assert!(
        result["url"].as_str().unwrap().ends_with("/api/v1"),
        "{done}"
    );

    // The token reached the action and nothing else: not the run message, not the record.
    let token = std::fs::read_to_string(&keep).unwrap();
    assert!(token.starts_with("slx_"), "{token}");
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), runs.next())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&message.payload);
    assert!(text.contains("sluice-sealed:"), "{text}");
    assert!(!text.contains(&token), "the token crossed NATS in clear");
    assert!(!done.to_string().contains(&token));
    let caller: sluice_core::RunMessage = sluice_core::decode(&message.payload).unwrap();
    assert!(caller.api.is_some(), "a python action is given the API");
    // The execution it started runs `noop`, which starts no process: no token is made.
    let started = tokio::time::timeout(std::time::Duration::from_secs(5), runs.next())
        .await
        .unwrap()
        .unwrap();
    let started: sluice_core::RunMessage = sluice_core::decode(&started.payload).unwrap();
    assert_eq!(started.action.as_str(), "core.noop");
    assert_eq!(
        started.api, None,
        "a runner of the worker's own is given no token"
    );

    // Once the execution has ended, its token opens nothing, on any route.
    let ended = common::client_with_token(&token);
    let answer = ended
        .get(format!("{}/api/v1/executions", sluice.api))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem.to_string().contains("ended with that attempt"),
        "{problem}"
    );
    // Nor does one moved to another execution or made with another key.
    let id = done["id"].as_i64().unwrap();
    for forged in [
        token.replacen(&format!("slx_{id}_"), &format!("slx_{}_", id + 1), 1),
        format!("slx_{id}_1_AAAA"),
    ] {
        let answer = common::client_with_token(&forged)
            .get(format!("{}/api/v1/executions/{id}", sluice.api))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{forged}");
    }

    // A shell action gets the same, as StackStorm's local runners do.
    let done = run(&sluice, "apicall.curl", json!({})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["stdout"], json!("200"), "{done}");
}

/// A polling sensor that notes its pid when it starts and then polls, dispatching nothing.
const PID_SENSOR: &str = r#"
import os

from st2reactor.sensor.base import PollingSensor


class Pid(PollingSensor):
    def setup(self):
        with open(os.environ["PIDS_FILE"], "a") as out:
            out.write("%d\n" % os.getpid())

    def poll(self):
        pass
"#;

/// Whether process `pid` still runs (a zombie waiting to be reaped does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_s_sensors_end_with_it_and_the_next_engine_runs_them_once() {
    let mut cluster = common::cluster::Cluster::new(&[
        ("pack.yaml", "ref: t\n"),
        ("sensors/pid.py", PID_SENSOR),
        (
            "sensors/pid.yaml",
            "class_name: Pid\nentry_point: pid.py\npoll_interval: 0.2\ntrigger_types:\n  - name: nothing\n",
        ),
    ]);
    let pids = cluster.dir.path().join("pids");
    let env = [("PIDS_FILE", pids.display().to_string())];
    let started = |n: usize| {
        let pids = pids.clone();
        async move {
            sluice_testkit::eventually(
                &format!("sensor start {n}"),
                std::time::Duration::from_secs(30),
                || async {
                    let text = std::fs::read_to_string(&pids).unwrap_or_default();
                    let all: Vec<i32> = text.lines().map(|l| l.parse().unwrap()).collect();
                    (all.len() >= n).then_some(all)
                },
            )
            .await
        }
    };
    cluster.start_engine_with(&env).await;
    let first = started(1).await[0];
    assert!(running(first));

    // As a crash would: the engine gets no chance to stop its sensors.
    cluster.kill_engine();
    sluice_testkit::eventually(
        "the dead engine's sensor to end",
        std::time::Duration::from_secs(20),
        || async { (!running(first)).then_some(()) },
    )
    .await;

    cluster.start_engine_with(&env).await;
    let all = started(2).await;
    assert_eq!(all.len(), 2, "one start per engine: {all:?}");
    assert!(running(all[1]), "the new engine's sensor runs");
    assert!(!running(first), "and it alone");
}

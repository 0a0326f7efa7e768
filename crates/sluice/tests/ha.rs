//! Several engines on a three-server NATS cluster and PostgreSQL, under a steady trigger
//! load, through the failures that come with them: the primary engine killed, one NATS
//! server killed, the primary paused past its lease (the zombie owner). The same again with
//! the engines active at once (`--partitions`), each owning some of the actions: an owner
//! killed, a NATS server killed, an owner paused past its leases. Each test then
//! counts from what the actions themselves logged and what the store holds: every trigger
//! made its executions, each ran once, each action admitted in request order, no action
//! ever ran more at once than its `max_concurrent`, and the books balance. The takeover
//! time is printed (`cargo nextest run --no-capture --test ha`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{books, client_with_token, is_primary};
use serde_json::{Value, json};
use sluice_testkit::{NatsCluster, Postgres, eventually, free_port};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// Triggers each test publishes, at [`RATE`] a second.
const TICKS: u64 = 120;
const RATE: u64 = 30;
/// The engines' lease: the longest a dead primary leaves the execution core unowned.
const LEASE_TTL: &str = "3";

const ACTIONS: [(&str, usize); 3] = [("t.one", 1), ("t.three", 3), ("t.keyed", 1)];

fn action_yaml(name: &str, policy: &str) -> String {
    format!(
        "name: {name}\nrunner_type: local-shell-script\nentry_point: work.sh\nparameters:\n  n: {{type: integer, required: true}}\n  host: {{type: string, default: all}}\npolicy:\n{policy}"
    )
}

fn rule_yaml(action: &str, parameters: &str) -> String {
    format!(
        "name: to_{action}\ntrigger:\n  type: t.tick\naction:\n  ref: t.{action}\n  parameters:\n    n: \"{{{{ trigger.n }}}}\"\n{parameters}"
    )
}

/// A pack whose one script logs `start|end <action> <execution> <attempt> <n> <host> <ns>`
/// around a short sleep, to `work.log` in the pack.
fn write_pack(dir: &Path) {
    let pack = dir.join("t");
    let files = [
        ("pack.yaml", "ref: t\n".to_owned()),
        (
            "actions/work.sh",
            format!(
                "#!/bin/sh\nlog={}\nline=\"$SLUICE_ACTION $SLUICE_EXECUTION_ID $SLUICE_ATTEMPT $SLUICE_PARAM_N $SLUICE_PARAM_HOST\"\necho \"start $line $(date +%s%N)\" >> \"$log\"\nsleep 0.05\necho \"end $line $(date +%s%N)\" >> \"$log\"\n",
                dir.join("work.log").display()
            ),
        ),
        ("actions/one.yaml", action_yaml("one", "  max_concurrent: 1\n")),
        ("actions/three.yaml", action_yaml("three", "  max_concurrent: 3\n")),
        (
            "actions/keyed.yaml",
            action_yaml("keyed", "  max_concurrent: 1\n  concurrency_key: [host]\n"),
        ),
        (
            "triggers/tick.yaml",
            "name: tick\npayload_schema:\n  type: object\n  required: [n]\n  properties:\n    n: {type: integer}\n".to_owned(),
        ),
        ("rules/one.yaml", rule_yaml("one", "")),
        ("rules/three.yaml", rule_yaml("three", "")),
        (
            "rules/keyed.yaml",
            rule_yaml("keyed", "    host: \"h{{ trigger.n % 3 }}\"\n"),
        ),
    ];
    for (rel, text) in files {
        let path = pack.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

struct EngineProcess {
    name: String,
    port: u16,
    child: Option<Child>,
}

/// How the engines share the execution core.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One primary; the other engine stands by.
    Standby,
    /// Both active, sharing this many partitions of the actions.
    Partitioned(u32),
}

/// Three NATS servers, PostgreSQL, two engines and three workers, all real processes.
struct Deployment {
    mode: Mode,
    nats: NatsCluster,
    _postgres: Postgres,
    database: String,
    dir: tempfile::TempDir,
    engines: Vec<EngineProcess>,
    workers: Vec<Child>,
    http: reqwest::Client,
    /// Engines that ended by losing their lease and were started again.
    restarts: usize,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // Whether each engine was still there when the test gave up, before it is killed.
        let states: Vec<String> = self
            .engines
            .iter_mut()
            .map(|e| e.child.as_mut().map_or("not started".into(), process_state))
            .collect();
        let engines = self.engines.iter_mut().filter_map(|e| e.child.as_mut());
        for child in engines.chain(self.workers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test shows what the engines said.
        if std::thread::panicking() {
            for (engine, state) in self.engines.iter().zip(&states) {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("{}.log", engine.name)))
                        .unwrap_or_default();
                // What it warned of, how far its starts got, and what it said last.
                let lines: Vec<&str> = log.lines().collect();
                let last = lines.len().saturating_sub(40);
                eprintln!(
                    "--- {} ({state}; warnings, then the last lines)",
                    engine.name
                );
                let warned = lines[..last].iter().filter(|l| {
                    ["WARN", "ERROR", "partition", "starting:"]
                        .iter()
                        .any(|word| l.contains(word))
                });
                for line in warned.chain(&lines[last..]) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The state letter `/proc/<pid>/stat` gives process `pid` (`R`, `S`, `T`, …).
fn process_letter(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, in parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().next()?.to_owned())
}

/// An engine's process as a failed test found it: how it ended, or what the kernel says it
/// is doing (`R` running, `S` waiting, `T` stopped by a signal) and, per thread, the kernel
/// function it waits in.
fn process_state(child: &mut Child) -> String {
    match child.try_wait() {
        Ok(Some(status)) => format!("ended: {status}"),
        Ok(None) => {
            let pid = child.id();
            let state = process_letter(pid).unwrap_or_default();
            let waits: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|task| {
                    let read = |name: &str| {
                        std::fs::read_to_string(task.path().join(name)).unwrap_or_default()
                    };
                    format!("{} in {}", read("comm").trim(), read("wchan").trim())
                })
                .collect();
            format!(
                "running, pid {pid}, state {state}; threads: {}",
                waits.join(", ")
            )
        }
        Err(e) => format!("unknown: {e}"),
    }
}

impl Deployment {
    async fn start_as(mode: Mode) -> Self {
        let nats = NatsCluster::start();
        let postgres = Postgres::start();
        let database = postgres.url();
        let dir = tempfile::tempdir().unwrap();
        write_pack(&dir.path().join("packs"));
        // The cluster elects its JetStream leader a moment after it starts.
        let url = nats.nodes[0].url();
        eventually(
            "the NATS cluster to take streams",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let bus = sluice_bus::Bus::attach(&url, "test", &Default::default())
                        .await
                        .ok()?
                        .with_stream_replicas(3);
                    bus.ensure_streams().await.ok()
                }
            },
        )
        .await;
        let mut deployment = Self {
            mode,
            nats,
            _postgres: postgres,
            database,
            dir,
            engines: Vec::new(),
            workers: Vec::new(),
            http: common::anonymous_client(),
            restarts: 0,
        };
        // The keys every engine shares, made before any engine starts, as an operator does.
        let keygen = Command::new(SLUICE)
            .arg("keygen")
            .arg(deployment.keys())
            .output()
            .unwrap();
        assert!(keygen.status.success(), "sluice keygen: {keygen:?}");
        for i in 0..2 {
            deployment.engines.push(EngineProcess {
                name: format!("e{i}"),
                port: free_port(),
                child: None,
            });
        }
        deployment.start_engine(0);
        if mode == Mode::Standby {
            deployment.wait_primary(0, Duration::from_secs(60)).await;
        } else {
            deployment.wait_owned(Duration::from_secs(60)).await;
        }
        deployment.start_engine(1);
        let token = common::admin_token(&deployment.dir.path().join("e0"));
        deployment.http = client_with_token(&token);
        if let Mode::Partitioned(count) = mode {
            // The engines share the partitions out: each owns some.
            let shared = eventually(
                "both engines to own partitions",
                Duration::from_secs(60),
                || {
                    let deployment = &deployment;
                    async move {
                        let owned = deployment.owned().await;
                        (owned.len() == 2 && owned.values().all(|p| !p.is_empty())).then_some(owned)
                    }
                },
            )
            .await;
            eprintln!("[partitioned] {count} partitions shared out: {shared:?}");
        }
        for i in 0..3 {
            deployment.start_worker(i);
        }
        // The standby answers, forwarding to the primary.
        let standby = deployment.api(1);
        eventually("the standby to forward", Duration::from_secs(30), || {
            let (http, standby) = (deployment.http.clone(), standby.clone());
            async move {
                let answer = http
                    .get(format!("{standby}/api/v1/ledger"))
                    .send()
                    .await
                    .ok()?;
                answer.status().is_success().then_some(())
            }
        })
        .await;
        deployment
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let servers: Vec<async_nats::ServerAddr> = self
            .nats
            .nodes
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect();
        let client = async_nats::connect(servers.as_slice()).await.unwrap();
        async_nats::jetstream::new(client)
    }

    /// Which server leads the leases' stream.
    async fn lease_stream_leader(&self) -> usize {
        let js = self.jetstream().await;
        let mut stream = js.get_stream("KV_sluice-leases").await.unwrap();
        let leader = stream
            .info()
            .await
            .unwrap()
            .cluster
            .clone()
            .unwrap()
            .leader
            .unwrap();
        leader.trim_start_matches('n').parse().unwrap()
    }

    /// Whether the leases' stream takes writes again (it has a leader).
    async fn lease_renews(&self) -> bool {
        let js = self.jetstream().await;
        let Ok(mut stream) = js.get_stream("KV_sluice-leases").await else {
            return false;
        };
        stream
            .info()
            .await
            .is_ok_and(|i| i.cluster.as_ref().is_some_and(|c| c.leader.is_some()))
    }

    fn nats_urls(&self) -> String {
        self.nats
            .nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn common(&self, command: &mut Command, log: &str) {
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{log}.log")))
            .unwrap();
        command
            .arg("--nats-url")
            .arg(self.nats_urls())
            .arg("--stream-replicas")
            .arg("3")
            .arg("--packs")
            .arg(bundled)
            .arg("--packs")
            .arg(self.dir.path().join("packs"))
            .arg("--secrets-key")
            .arg(self.keys().join("secrets.key"))
            // With the engine's start-up steps, so that a failed test shows where one waits.
            .env("RUST_LOG", "info,sluice_engine::engine=debug")
            .stdout(Stdio::null())
            .stderr(log);
    }

    fn start_engine(&mut self, i: usize) {
        let engine = &self.engines[i];
        let mut command = Command::new(SLUICE);
        command
            .args(["engine", "--engine-name", &engine.name])
            .args(["--http", &format!("127.0.0.1:{}", engine.port)])
            .args(["--lease-ttl", LEASE_TTL, "--worker-loss-window", "5"])
            .arg("--data-dir")
            .arg(self.dir.path().join(&engine.name))
            .arg("--database-url")
            .arg(&self.database)
            .arg("--run-signing-key")
            .arg(self.keys().join("run-signing.key"));
        if let Mode::Partitioned(count) = self.mode {
            command.args(["--partitions", &count.to_string()]);
        }
        self.common(&mut command, &engine.name.clone());
        self.engines[i].child = Some(command.spawn().unwrap());
    }

    fn start_worker(&mut self, i: usize) {
        let mut command = Command::new(SLUICE);
        command
            .args(["worker", "--worker-name", &format!("w{i}")])
            .args(["--capacity", "4", "--heartbeat-interval", "0.2"])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("w{i}")))
            .arg("--run-verify-key")
            .arg(self.keys().join("run-signing.pub"));
        self.common(&mut command, &format!("w{i}"));
        self.workers.push(command.spawn().unwrap());
    }

    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.engines[i].port)
    }

    fn pid(&self, i: usize) -> u32 {
        self.engines[i].child.as_ref().unwrap().id()
    }

    /// The partitions each live engine owns, by engine, as its `/healthz` says.
    async fn owned(&self) -> BTreeMap<usize, Vec<u64>> {
        let mut owned = BTreeMap::new();
        for i in 0..self.engines.len() {
            if self.engines[i].child.is_none() {
                continue;
            }
            // A paused engine does not answer: it owns nothing as far as anyone can tell.
            let Ok(answer) = self
                .http
                .get(format!("{}/healthz", self.api(i)))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            else {
                continue;
            };
            let body: Value = answer.json().await.unwrap_or_default();
            if body["role"] == "partitioned" {
                let partitions = body["partitions"].as_array().cloned().unwrap_or_default();
                owned.insert(i, partitions.iter().filter_map(Value::as_u64).collect());
            }
        }
        owned
    }

    /// Waits until the live engines own every partition between them, each once; how long
    /// that took.
    async fn wait_owned(&self, timeout: Duration) -> Duration {
        let Mode::Partitioned(count) = self.mode else {
            unreachable!("only partitioned engines own partitions")
        };
        let started = Instant::now();
        loop {
            let mut all: Vec<u64> = self.owned().await.into_values().flatten().collect();
            all.sort_unstable();
            if all == (0..u64::from(count)).collect::<Vec<_>>() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "the partitions were not all owned within {timeout:?}: {:?}",
                self.owned().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The engine that answers for the deployment: the primary, or with partitioned engines
    /// the first that answers at all (every one reads the same store).
    async fn primary(&self) -> Option<usize> {
        if self.mode != Mode::Standby {
            return self.owned().await.into_keys().next();
        }
        for i in 0..self.engines.len() {
            if self.engines[i].child.is_some() && is_primary(&self.http, &self.api(i)).await {
                return Some(i);
            }
        }
        None
    }

    async fn wait_primary(&self, i: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        while !is_primary(&self.http, &self.api(i)).await {
            assert!(
                started.elapsed() < timeout,
                "engine {i} did not become primary in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    fn kill_engine(&mut self, i: usize) {
        let mut child = self.engines[i].child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// What a service manager does: an engine that ended is started again. An engine ends
    /// by itself only when it lost its lease (exit code 75), never otherwise.
    fn restart_ended_engines(&mut self) {
        for i in 0..self.engines.len() {
            let Some(child) = self.engines[i].child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.code(),
                    Some(75),
                    "engine {i} ended other than by losing its lease: {status}"
                );
                self.start_engine(i);
                self.restarts += 1;
            }
        }
    }

    /// Waits until every trigger's executions ended, restarting engines that ended.
    async fn settle(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let want = TICKS as i64 * ACTIONS.len() as i64;
        loop {
            self.restart_ended_engines();
            if let Some(i) = self.primary().await {
                let api = self.api(i);
                if let Ok(answer) = self.http.get(format!("{api}/api/v1/ledger")).send().await
                    && let Ok(ledger) = answer.json::<Value>().await
                {
                    let executions: i64 = ledger["executions"]
                        .as_object()
                        .map(|m| m.values().filter_map(Value::as_i64).sum())
                        .unwrap_or(0);
                    if ledger["events"] == TICKS && executions == want && ledger["unfinished"] == 0
                    {
                        return i;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "not settled after {timeout:?}: {ledger}"
                    );
                }
            }
            assert!(Instant::now() < deadline, "not settled after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes the books through engine `primary`, checks the standby answers the same, and
    /// checks every action's runs from its log.
    async fn close_books(&self, primary: usize, scenario: &str) {
        let api = self.api(primary);
        let books = books::balance(
            &self.http,
            &api,
            &self.nats.nodes[1].url(),
            TICKS as usize * ACTIONS.len(),
            &ACTIONS.map(|(a, _)| a),
        )
        .await;
        let not_succeeded: Vec<String> = books
            .executions
            .iter()
            .filter(|e| e["status"] != "succeeded")
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["id"], e["action"], e["status"], e["result"]
                )
            })
            .collect();
        assert!(
            not_succeeded.is_empty(),
            "{scenario}: executions that did not succeed: {not_succeeded:#?}"
        );
        for standby in (0..self.engines.len()).filter(|i| *i != primary) {
            if self.engines[standby].child.is_none() {
                continue;
            }
            let ledger = |base: String| {
                let http = self.http.clone();
                async move {
                    let answer = http
                        .get(format!("{base}/api/v1/ledger"))
                        .send()
                        .await
                        .ok()?;
                    answer.json::<Value>().await.ok()
                }
            };
            let primary_ledger = ledger(api.clone()).await.expect("the primary's ledger");
            // An engine started again a moment ago answers once it is up.
            let standby_ledger =
                eventually("the standby to answer", Duration::from_secs(30), || {
                    ledger(self.api(standby))
                })
                .await;
            assert_eq!(
                standby_ledger, primary_ledger,
                "{scenario}: the standby forwards to the primary"
            );
        }
        let runs = Runs::read(&self.dir.path().join("packs/work.log"));
        for (action, limit) in ACTIONS {
            runs.assert_each_once(action, TICKS, scenario);
            let most = runs.most_at_once(action);
            assert!(
                most <= limit,
                "{scenario}: {action} ran {most} at once, over its max_concurrent {limit}"
            );
        }
        // Admission order equals request order: per queue, the order the executions started
        // in (max_concurrent 1) and entered `scheduling` in (all) is their id order.
        for queue in runs
            .queues("t.one")
            .into_iter()
            .chain(runs.queues("t.keyed"))
        {
            let mut sorted = queue.clone();
            sorted.sort();
            assert_eq!(queue, sorted, "{scenario}: started out of request order");
        }
        let mut admitted: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for e in full_executions(&self.http, &api, &books.executions).await {
            let at = e["history"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["status"] == "scheduling")
                .map(|h| h["at"].as_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{scenario}: never admitted: {e}"));
            let key = format!("{} {}", e["action"], e["parameters"]["host"]);
            admitted
                .entry(key)
                .or_default()
                .push((at, e["id"].as_i64().unwrap()));
        }
        for (queue, mut order) in admitted {
            order.sort();
            let ids: Vec<i64> = order.iter().map(|(_, id)| *id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(
                ids, sorted,
                "{scenario}: {queue} admitted out of request order"
            );
        }
        eprintln!(
            "[{scenario}] {} executions of {TICKS} triggers, each run once, in order, within max_concurrent",
            books.executions.len()
        );
    }
}

/// Each of `executions` with its status history.
async fn full_executions(http: &reqwest::Client, api: &str, executions: &[Value]) -> Vec<Value> {
    let mut full = Vec::new();
    for e in executions {
        let id = e["id"].as_i64().unwrap();
        let answer = http
            .get(format!("{api}/api/v1/executions/{id}"))
            .send()
            .await
            .unwrap();
        full.push(answer.json().await.unwrap());
    }
    full
}

/// `work.log`, as the actions wrote it.
struct Runs {
    runs: Vec<Run>,
}

/// One run of an action: its start and, once it ended, its end (nanoseconds).
struct Run {
    action: String,
    execution: i64,
    n: u64,
    host: String,
    start: u128,
    end: Option<u128>,
}

impl Runs {
    fn read(log: &Path) -> Self {
        let mut runs = Vec::new();
        let mut open: BTreeMap<(i64, u32), usize> = BTreeMap::new();
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let p: Vec<&str> = line.split(' ').collect();
            let (id, attempt): (i64, u32) = (p[2].parse().unwrap(), p[3].parse().unwrap());
            let at: u128 = p[6].parse().unwrap();
            match p[0] {
                "start" => {
                    open.insert((id, attempt), runs.len());
                    runs.push(Run {
                        action: p[1].to_owned(),
                        execution: id,
                        n: p[4].parse().unwrap(),
                        host: p[5].to_owned(),
                        start: at,
                        end: None,
                    });
                }
                _ => {
                    let i = open[&(id, attempt)];
                    runs[i].end = Some(at);
                }
            }
        }
        runs.sort_by_key(|r| r.start);
        Self { runs }
    }

    fn assert_each_once(&self, action: &str, ticks: u64, scenario: &str) {
        let mine: Vec<_> = self.runs.iter().filter(|r| r.action == action).collect();
        let mut per_execution: BTreeMap<i64, usize> = BTreeMap::new();
        let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &mine {
            *per_execution.entry(r.execution).or_default() += 1;
            *per_tick.entry(r.n).or_default() += 1;
        }
        let twice: Vec<_> = per_execution.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{scenario}: {action} executions run twice: {twice:?}"
        );
        let ticks_twice: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            ticks_twice.is_empty(),
            "{scenario}: {action} ticks run twice: {ticks_twice:?}"
        );
        let missing: Vec<u64> = (0..ticks).filter(|n| !per_tick.contains_key(n)).collect();
        assert!(
            missing.is_empty(),
            "{scenario}: {action} ticks never run: {missing:?}"
        );
        assert!(
            mine.iter().all(|r| r.end.is_some()),
            "{scenario}: an unfinished run"
        );
    }

    /// The most runs of `action` with one host that were ever under way at once.
    fn most_at_once(&self, action: &str) -> usize {
        let mut most = 0;
        let hosts: std::collections::BTreeSet<&str> = self
            .runs
            .iter()
            .filter(|r| r.action == action)
            .map(|r| r.host.as_str())
            .collect();
        for host in hosts {
            let mut edges: Vec<(u128, i32)> = Vec::new();
            for r in self
                .runs
                .iter()
                .filter(|r| r.action == action && r.host == host)
            {
                edges.push((r.start, 1));
                edges.push((r.end.unwrap(), -1));
            }
            // An end and a start at the same instant: the end first.
            edges.sort();
            let mut now = 0;
            for (_, step) in edges {
                now += step;
                most = most.max(now as usize);
            }
        }
        most
    }

    /// The execution ids of `action` in the order they started, one list per host.
    fn queues(&self, action: &str) -> Vec<Vec<i64>> {
        let mut queues: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for r in self.runs.iter().filter(|r| r.action == action) {
            queues.entry(r.host.as_str()).or_default().push(r.execution);
        }
        queues.into_values().collect()
    }
}

/// Publishes [`TICKS`] triggers at [`RATE`] a second with `Nats-Msg-Id: tick-<n>`, each
/// sent again with its id until JetStream acknowledges it.
async fn publish_ticks(urls: String) {
    let servers: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers.as_slice())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut every = tokio::time::interval(Duration::from_millis(1000 / RATE));
    for n in 0..TICKS {
        every.tick().await;
        loop {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(Bytes::from(json!({ "n": n }).to_string()))
                .message_id(format!("tick-{n}"));
            let stored = match js.send_publish("sluice.trigger.t.tick", message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends `SIG<name>` to process `pid`.
fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}

const SETTLE: Duration = Duration::from_secs(180);

/// The partitions the engines share in the partitioned scenarios.
const PARTITIONS: u32 = 4;

impl Deployment {
    /// The engine whose loss the scenarios are about: the primary, or with partitioned
    /// engines the owner of partition 0, which takes the triggers too.
    async fn core_holder(&self) -> usize {
        match self.mode {
            Mode::Standby => self.primary().await.expect("an engine is primary"),
            Mode::Partitioned(_) => {
                *self
                    .owned()
                    .await
                    .iter()
                    .find(|(_, p)| p.contains(&0))
                    .expect("an engine owns partition 0")
                    .0
            }
        }
    }

    /// Waits until engine `survivor` took over from the others: it is primary, or with
    /// partitioned engines the engines that answer own every partition between them; how
    /// long that took.
    async fn wait_taken_over(&self, survivor: usize, timeout: Duration) -> Duration {
        match self.mode {
            Mode::Standby => self.wait_primary(survivor, timeout).await,
            Mode::Partitioned(_) => self.wait_owned(timeout).await,
        }
    }

    /// Whether the execution core is held: an engine is primary, or every partition owned.
    async fn core_held(&self) -> bool {
        match self.mode {
            Mode::Standby => self.primary().await.is_some(),
            Mode::Partitioned(count) => {
                let mut all: Vec<u64> = self.owned().await.into_values().flatten().collect();
                all.sort_unstable();
                all == (0..u64::from(count)).collect::<Vec<_>>()
            }
        }
    }

    /// What the core is, for the scenarios' lines.
    fn core(&self) -> &'static str {
        match self.mode {
            Mode::Standby => "the execution core",
            Mode::Partitioned(_) => "every partition",
        }
    }
}

/// The engine holding the core is killed mid-run, and started again later.
async fn core_holder_killed(mode: Mode, scenario: &str) {
    let mut deployment = Deployment::start_as(mode).await;
    let load = tokio::spawn(publish_ticks(deployment.nats_urls()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = deployment.core_holder().await;
    let survivor = 1 - victim;
    deployment.kill_engine(victim);
    let takeover = deployment
        .wait_taken_over(survivor, Duration::from_secs(30))
        .await;
    eprintln!(
        "[{scenario}] engine e{survivor} holds {} {:.2} s after e{victim} was killed (lease {LEASE_TTL} s)",
        deployment.core(),
        takeover.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    deployment.start_engine(victim);
    load.await.unwrap();
    let answering = deployment.settle(SETTLE).await;
    // Unless the survivor itself stepped down on the way (a missed renewal on a loaded
    // machine), the engine started again waited as a standby.
    if mode == Mode::Standby && deployment.restarts == 0 {
        assert_eq!(
            answering, survivor,
            "the engine started again waits as a standby"
        );
    }
    deployment.close_books(answering, scenario).await;
}

/// The NATS server leading the leases' stream, the hardest one to lose, is killed mid-run
/// for 4 s.
async fn nats_server_killed(mode: Mode, scenario: &str) {
    let mut deployment = Deployment::start_as(mode).await;
    let load = tokio::spawn(publish_ticks(deployment.nats_urls()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = deployment.lease_stream_leader().await;
    deployment.nats.nodes[node].kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    deployment.nats.nodes[node].restart();
    let mut held_again = None;
    while held_again.is_none() && killed.elapsed() < Duration::from_secs(60) {
        deployment.restart_ended_engines();
        if deployment.core_held().await && deployment.lease_renews().await {
            held_again = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[{scenario}] n{node}, leader of the leases' stream, killed for 4 s; {} held again {:.2} s after the kill",
        deployment.core(),
        held_again
            .expect("the core is not held a minute after")
            .as_secs_f64()
    );
    load.await.unwrap();
    let answering = deployment.settle(SETTLE).await;
    eprintln!(
        "[{scenario}] {} engine(s) stepped down on the way and were started again",
        deployment.restarts
    );
    deployment.close_books(answering, scenario).await;
}

/// The engine holding the core is paused past its lease, then woken: it must do nothing
/// more and exit.
async fn core_holder_paused(mode: Mode, scenario: &str) {
    let mut deployment = Deployment::start_as(mode).await;
    if let Mode::Partitioned(_) = mode {
        // A rule switched through the engine that does not take the triggers is switched
        // where they are taken.
        let taker = deployment.core_holder().await;
        let other = 1 - taker;
        let enabled = async |i: usize| {
            let url = format!("{}/api/v1/rules/t.to_one", deployment.api(i));
            let rule: Value = deployment
                .http
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            rule["enabled"].clone()
        };
        for (switch, want) in [("disable", false), ("enable", true)] {
            let url = format!("{}/api/v1/rules/t.to_one/{switch}", deployment.api(other));
            let answer = deployment.http.post(url).send().await.unwrap();
            assert!(
                answer.status().is_success(),
                "{switch}: {}",
                answer.status()
            );
            assert_eq!(
                enabled(taker).await,
                want,
                "{switch}d where the triggers are taken"
            );
        }
    }
    let load = tokio::spawn(publish_ticks(deployment.nats_urls()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let zombie = deployment.core_holder().await;
    let survivor = 1 - zombie;
    signal(deployment.pid(zombie), "STOP");
    let paused = eventually("the paused engine to stop", Duration::from_secs(5), || {
        let stopped = process_letter(deployment.pid(zombie)).is_some_and(|state| state == "T");
        async move { stopped.then_some(()) }
    });
    paused.await;
    let takeover = deployment
        .wait_taken_over(survivor, Duration::from_secs(30))
        .await;
    eprintln!(
        "[{scenario}] engine e{survivor} holds {} {:.2} s after e{zombie} was paused (lease {LEASE_TTL} s)",
        deployment.core(),
        takeover.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(deployment.pid(zombie), "CONT");
    // Awake, it finds its lease gone and exits without doing anything more.
    let child = deployment.engines[zombie].child.as_mut().unwrap();
    let woke = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(20),
            "the woken engine kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(75), "it exits saying it lost its lease");
    eprintln!(
        "[{scenario}] e{zombie} exited {:.2} s after it woke",
        woke.elapsed().as_secs_f64()
    );
    deployment.engines[zombie].child = None;
    deployment.start_engine(zombie);
    load.await.unwrap();
    // On a loaded machine the survivor may in turn miss a renewal and step down; whichever
    // engine answers at the end, the books must balance.
    let answering = deployment.settle(SETTLE).await;
    eprintln!(
        "[{scenario}] {} engine(s) stepped down after the zombie and were started again",
        deployment.restarts
    );
    deployment.close_books(answering, scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_engine_killed_mid_run_is_taken_over_and_nothing_is_lost_or_doubled() {
    core_holder_killed(Mode::Standby, "primary killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_mid_run_loses_and_doubles_nothing() {
    nats_server_killed(Mode::Standby, "nats server killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_paused_past_its_lease_does_nothing_when_it_wakes_and_exits() {
    core_holder_paused(Mode::Standby, "primary paused past its lease").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_an_engine_killed_mid_run_has_its_partitions_taken_over_and_nothing_is_lost_or_doubled()
 {
    core_holder_killed(Mode::Partitioned(PARTITIONS), "partitioned, engine killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_a_nats_server_killed_mid_run_loses_and_doubles_nothing() {
    nats_server_killed(
        Mode::Partitioned(PARTITIONS),
        "partitioned, nats server killed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_an_owner_paused_past_its_leases_does_nothing_when_it_wakes_and_exits() {
    core_holder_paused(
        Mode::Partitioned(PARTITIONS),
        "partitioned, owner paused past its leases",
    )
    .await;
}

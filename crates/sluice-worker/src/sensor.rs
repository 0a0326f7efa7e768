//! Pack sensors run as StackStorm runs them: each one a supervised Python process that
//! dispatches triggers.
//!
//! A sensor's process is Sluice's sensor wrapper (`python/sluice_sensor.py`), which builds
//! the sensor's class with a sensor service and the pack's configuration, calls `setup()`,
//! then `run()` (a `PollingSensor` polls every `poll_interval`). It runs in the pack's
//! virtualenv when the pack has a `requirements.txt`. Its `dispatch()` and datastore calls
//! reach Sluice through a Unix socket in a private directory ([`ActionService`]); a
//! dispatch returns once JetStream stored the trigger. What the process writes on stderr
//! (its logger's output) is logged with the sensor's name.
//!
//! When the rules on its triggers change, a running sensor hears it as StackStorm's do:
//! [`SensorHost::set_triggers`] sends the process `add_trigger`, `update_trigger` or
//! `remove_trigger` for each rule that came, changed or went (one JSON line each on its
//! stdin), and a sensor started again later gets `add_trigger` for the rules in force then.
//!
//! A sensor that exits, or dies, is started again after a wait that doubles each time it
//! dies young (1 s up to 60 s) and starts over once it ran for a minute. Stopping the host
//! sends each process SIGTERM (`cleanup()`), then kills what is left.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::service::ActionService;
use crate::venv::Venvs;

/// The first wait before a dead sensor starts again, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A sensor that ran this long starts again at once and its wait starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long `cleanup()` may take once the host stops.
const CLEANUP_WITHIN: Duration = Duration::from_secs(5);

/// One sensor to run.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    /// `<pack>.<class_name>`.
    pub sensor_ref: String,
    pub pack: String,
    pub pack_dir: PathBuf,
    pub class_name: String,
    pub entry_point: PathBuf,
    pub poll_interval: Option<f64>,
    /// The pack's configuration, secrets open: the sensor's `self.config`.
    pub config: Map<String, Value>,
    /// The digest of the pack's version, so a changed pack is told from the one running.
    pub version: Option<String>,
    /// The enabled rules on its triggers, as StackStorm hands them to `add_trigger`:
    /// `{"id", "ref", "type", "parameters"}`.
    pub rule_triggers: Vec<Value>,
}

/// The running sensors; dropping it does not stop them, [`SensorHost::stop`] does.
pub struct SensorHost {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Each sensor's rules in force, by sensor.
    triggers: BTreeMap<String, watch::Sender<Vec<Value>>>,
}

impl SensorHost {
    /// Starts every sensor in `specs`, each supervised on its own.
    pub fn start(
        specs: Vec<SensorSpec>,
        service: ActionService,
        venvs: Option<Arc<Venvs>>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let mut triggers = BTreeMap::new();
        let tasks = specs
            .into_iter()
            .map(|spec| {
                let (service, venvs, cancel) = (service.clone(), venvs.clone(), cancel.clone());
                let (rules, heard) = watch::channel(spec.rule_triggers.clone());
                triggers.insert(spec.sensor_ref.clone(), rules);
                tokio::spawn(supervise(spec, heard, service, venvs, cancel))
            })
            .collect();
        Self {
            cancel,
            tasks,
            triggers,
        }
    }

    /// The rules now on `sensor`'s triggers: its process hears what changed.
    pub fn set_triggers(&self, sensor: &str, rules: Vec<Value>) {
        if let Some(sender) = self.triggers.get(sensor) {
            sender.send_if_modified(|current| {
                let changed = *current != rules;
                *current = rules;
                changed
            });
        }
    }

    /// Stops every sensor: SIGTERM, so `cleanup()` runs, then SIGKILL for what is left.
    pub async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn supervise(
    spec: SensorSpec,
    mut rules: watch::Receiver<Vec<Value>>,
    service: ActionService,
    venvs: Option<Arc<Venvs>>,
    cancel: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = run_once(&spec, &mut rules, &service, venvs.as_deref(), &cancel).await;
        if cancel.is_cancelled() {
            return;
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = FIRST_BACKOFF;
        }
        warn!(
            sensor = spec.sensor_ref,
            outcome = ended,
            retry_in_s = backoff.as_secs(),
            "sensor stopped; starting it again"
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs the sensor's process to its end; says how it ended.
async fn run_once(
    spec: &SensorSpec,
    rules: &mut watch::Receiver<Vec<Value>>,
    service: &ActionService,
    venvs: Option<&Venvs>,
    cancel: &CancellationToken,
) -> String {
    let library = match crate::python::library() {
        Ok(library) => library,
        Err(e) => return e,
    };
    let python = match venvs {
        Some(venvs) => match venvs.python_for(&spec.pack, &spec.pack_dir).await {
            Ok(python) => python,
            Err(e) => return e,
        },
        None => None,
    };
    let scratch = match tempfile::Builder::new().prefix("sluice-sensor-").tempdir() {
        Ok(scratch) => scratch,
        Err(e) => return format!("cannot create a directory for the sensor: {e}"),
    };
    let config_file = scratch.path().join("config.json");
    if let Err(e) = std::fs::write(&config_file, Value::Object(spec.config.clone()).to_string()) {
        return format!("cannot write the pack's configuration: {e}");
    }
    let triggers_file = scratch.path().join("triggers.json");
    let mut told = rules.borrow_and_update().clone();
    if let Err(e) = std::fs::write(&triggers_file, Value::Array(told.clone()).to_string()) {
        return format!("cannot write the sensor's triggers: {e}");
    }
    let socket = scratch.path().join("service.sock");
    let served = match service.listen_for_sensor(&socket, &spec.sensor_ref, &spec.pack) {
        Ok(task) => task,
        Err(e) => return format!("cannot open the sensor service socket: {e}"),
    };
    let sensors_dir = spec.entry_point.parent().unwrap_or(&spec.pack_dir);
    let mut command = Command::new(python.unwrap_or_else(|| "python3".into()));
    command
        .arg(crate::python::sensor_wrapper(library))
        .arg(&spec.entry_point)
        .arg(&spec.class_name);
    if let Some(poll) = spec.poll_interval {
        command.arg(poll.to_string());
    }
    // The engine's own configuration is not the sensor's business.
    crate::child_env::without_own_config(&mut command);
    let python_path = crate::python::python_path(library, &spec.pack_dir.join("actions"));
    let mut paths = vec![sensors_dir.to_owned()];
    paths.extend(std::env::split_paths(&python_path));
    command
        .current_dir(sensors_dir)
        .env(
            "PYTHONPATH",
            std::env::join_paths(paths).unwrap_or_default(),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("SLUICE_SERVICE_SOCKET", &socket)
        .env("SLUICE_CONFIG_FILE", &config_file)
        .env("SLUICE_SENSOR_TRIGGERS_FILE", &triggers_file)
        .env("ST2_SENSOR_PACK_NAME", &spec.pack)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            served.abort();
            return format!("cannot start the sensor's process: {e}");
        }
    };
    info!(sensor = spec.sensor_ref, pid = child.id(), "sensor started");
    let logs = [
        child
            .stdout
            .take()
            .map(|out| log_lines(spec.sensor_ref.clone(), out)),
        child
            .stderr
            .take()
            .map(|err| log_lines(spec.sensor_ref.clone(), err)),
    ];
    let mut stdin = child.stdin.take();
    let ended = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(status) => format!("process ended: {status}"),
                Err(e) => format!("process lost: {e}"),
            },
            _ = cancel.cancelled() => {
                terminate(&mut child).await;
                break "stopped".to_owned();
            }
            Ok(()) = rules.changed() => {
                let now = rules.borrow_and_update().clone();
                let mut lines = String::new();
                for (op, trigger) in trigger_changes(&told, &now) {
                    info!(sensor = spec.sensor_ref, op, rule = %trigger["ref"], "telling the sensor");
                    lines.push_str(&json!({"op": op, "trigger": trigger}).to_string());
                    lines.push('\n');
                }
                told = now;
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(lines.as_bytes()).await.is_err()
                {
                    // It is on its way out; the next start reads the rules from its file.
                    stdin = None;
                }
            }
        }
    };
    served.abort();
    for task in logs.into_iter().flatten() {
        task.abort();
    }
    ended
}

/// What a sensor told of `before` must hear to know `after`: `remove_trigger` for each rule
/// gone, `update_trigger` for each changed, `add_trigger` for each new, in that order.
fn trigger_changes(before: &[Value], after: &[Value]) -> Vec<(&'static str, Value)> {
    let id = |t: &Value| t["id"].as_str().unwrap_or_default().to_owned();
    let old: BTreeMap<String, &Value> = before.iter().map(|t| (id(t), t)).collect();
    let new: BTreeMap<String, &Value> = after.iter().map(|t| (id(t), t)).collect();
    let mut changes: Vec<(&'static str, Value)> = old
        .iter()
        .filter(|(name, _)| !new.contains_key(*name))
        .map(|(_, t)| ("remove_trigger", (*t).clone()))
        .collect();
    for (name, t) in &new {
        match old.get(name) {
            Some(was) if was != t => changes.push(("update_trigger", (*t).clone())),
            Some(_) => {}
            None => changes.push(("add_trigger", (*t).clone())),
        }
    }
    changes
}

/// SIGTERM to the sensor's process group, then SIGKILL if it outlives its cleanup.
#[allow(unsafe_code)]
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the sensor's own process group; it touches no memory of ours.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGTERM);
        }
    }
    if tokio::time::timeout(CLEANUP_WITHIN, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Logs each line the sensor writes, with its name.
fn log_lines(
    sensor: String,
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            info!(sensor, "{line}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sensor_hears_each_rule_that_went_changed_or_came() {
        let rule = |id: &str, every: u64| json!({"id": id, "ref": id, "type": "w.tick", "parameters": {"every": every}});
        let before = [rule("w.a", 1), rule("w.b", 1), rule("w.c", 1)];
        let after = [rule("w.b", 1), rule("w.c", 5), rule("w.d", 1)];
        let changes: Vec<(&str, String)> = trigger_changes(&before, &after)
            .into_iter()
            .map(|(op, t)| (op, t["id"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            changes,
            [
                ("remove_trigger", "w.a".to_owned()),
                ("update_trigger", "w.c".to_owned()),
                ("add_trigger", "w.d".to_owned()),
            ]
        );
        assert!(trigger_changes(&after, &after).is_empty());
    }
}

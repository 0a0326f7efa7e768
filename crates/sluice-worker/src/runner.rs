//! The runners: what actually happens when an action runs.
//!
//! Parameters reach processes as `SLUICE_PARAM_<NAME>` environment variables and as one
//! JSON object on stdin — never interpolated into a command line a shell reads. A
//! `local-shell-script` action's script also gets them as arguments, StackStorm's way
//! ([`sluice_core::runner::script_arguments`]), each one argument of its own. Each process
//! runs in its own process group, so a timeout kills everything it started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sluice_core::{ExecutionStatus, RunMessage, RunnerType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::child_env::{is_own_config, without_own_config};
use tokio_util::sync::CancellationToken;

/// How much of stdout and of stderr a result keeps unless the worker is told otherwise.
pub const OUTPUT_CAP: usize = 1024 * 1024;

/// The most a worker may keep of each stream. A result this large travels in the results
/// object store, not in its report ([`sluice_core::INLINE_RESULT_BYTES`]).
pub const MAX_OUTPUT_CAP: usize = 64 * 1024 * 1024;

/// What a worker allows the actions it runs beyond their parameters, and how much output it
/// keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bytes of stdout and of stderr a result keeps (at most [`MAX_OUTPUT_CAP`]).
    pub output_cap: usize,
    /// Whether an action may set its runner parameter `sudo` (`--allow-sudo`).
    pub allow_sudo: bool,
    /// Whether a secret parameter may be one of a script's arguments, where any user of the
    /// host can read it in the process list (`--secrets-on-command-line`).
    pub secrets_on_command_line: bool,
    /// Where packs' `requirements.txt` are installed for their python actions; without it
    /// python actions run with the worker's `python3` as it is.
    pub venvs: Option<std::sync::Arc<crate::venv::Venvs>>,
    /// The datastore for python actions' `self.action_service`; without it that is `None`.
    /// A worker sets it to its own.
    pub service: Option<crate::service::ActionService>,
    /// Warm interpreters python actions are forked from; without them each starts its own.
    /// A worker sets them.
    pub forks: Option<std::sync::Arc<crate::forkserver::ForkServers>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            output_cap: OUTPUT_CAP,
            allow_sudo: false,
            secrets_on_command_line: false,
            venvs: None,
            service: None,
            forks: None,
        }
    }
}

/// How an execution ended on the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub result: Value,
}

impl Outcome {
    fn succeeded(result: Value) -> Self {
        Self {
            status: ExecutionStatus::Succeeded,
            result,
        }
    }

    fn failed(error: impl Into<String>) -> Self {
        Self {
            status: ExecutionStatus::Failed,
            result: json!({ "error": error.into() }),
        }
    }
}

fn cancelled() -> Outcome {
    Outcome {
        status: ExecutionStatus::Cancelled,
        result: json!({ "error": "cancelled while running" }),
    }
}

/// Runs one execution to its end, or until `cancel` fires (then the process group is
/// killed and the outcome is `cancelled`). `actions_dir` is the pack's `actions/` directory
/// on this worker, needed by runners that execute an `entry_point` file.
pub async fn run(
    message: &RunMessage,
    actions_dir: Option<&Path>,
    cancel: &CancellationToken,
) -> Outcome {
    run_with(message, actions_dir, cancel, OUTPUT_CAP).await
}

/// [`run`], keeping up to `output_cap` bytes (at most [`MAX_OUTPUT_CAP`]) of stdout and of
/// stderr.
pub async fn run_with(
    message: &RunMessage,
    actions_dir: Option<&Path>,
    cancel: &CancellationToken,
    output_cap: usize,
) -> Outcome {
    let settings = Settings {
        output_cap,
        ..Settings::default()
    };
    run_following(message, actions_dir, cancel, &settings, None).await
}

/// Where a process's output goes as it is read, besides the result: `("stdout" | "stderr",
/// bytes)`, in the order read, up to the output cap.
pub type OutputSink = tokio::sync::mpsc::UnboundedSender<(&'static str, Vec<u8>)>;

/// [`run`] with a worker's [`Settings`], also handing each piece of a process's output to
/// `sink` as it is read.
pub async fn run_following(
    message: &RunMessage,
    actions_dir: Option<&Path>,
    cancel: &CancellationToken,
    settings: &Settings,
    sink: Option<OutputSink>,
) -> Outcome {
    let output = Output {
        cap: settings.output_cap.clamp(1, MAX_OUTPUT_CAP),
        sink,
    };
    tokio::select! {
        outcome = run_to_end(message, actions_dir, cancel, settings, &output) => outcome,
        // Process runners watch `cancel` themselves, to kill their process group first.
        _ = cancel.cancelled(), if !is_process(message.runner) => cancelled(),
    }
}

fn is_process(runner: RunnerType) -> bool {
    matches!(
        runner,
        RunnerType::LocalShellCmd | RunnerType::LocalShellScript | RunnerType::PythonScript
    )
}

async fn run_to_end(
    message: &RunMessage,
    actions_dir: Option<&Path>,
    cancel: &CancellationToken,
    settings: &Settings,
    output: &Output,
) -> Outcome {
    let timeout = message.timeout_secs.map(Duration::from_secs);
    let params = &message.parameters;
    match message.runner {
        RunnerType::Noop => Outcome::succeeded(json!({})),
        RunnerType::Echo => Outcome::succeeded(
            json!({ "message": params.get("message").cloned().unwrap_or(Value::Null) }),
        ),
        RunnerType::Sleep => {
            let seconds = params
                .get("seconds")
                .and_then(Value::as_f64)
                .unwrap_or(1.0)
                .max(0.0);
            let sleep = tokio::time::sleep(Duration::from_secs_f64(seconds));
            match timeout {
                Some(limit) if limit.as_secs_f64() < seconds => {
                    tokio::time::sleep(limit).await;
                    timed_out(limit, json!({}))
                }
                _ => {
                    sleep.await;
                    Outcome::succeeded(json!({ "slept": seconds }))
                }
            }
        }
        RunnerType::Orquesta => {
            Outcome::failed("a workflow runs in the engine; a worker cannot run it")
        }
        RunnerType::HttpRequest => {
            http_request(params, timeout.unwrap_or(Duration::from_secs(60))).await
        }
        RunnerType::LocalShellCmd => {
            let Some(cmd) = params.get("cmd").and_then(Value::as_str) else {
                return Outcome::failed("parameter cmd is missing");
            };
            let program = vec!["/bin/sh".into(), "-c".into(), cmd.into()];
            let command = match process(program, None, message, settings) {
                Ok(command) => command,
                Err(e) => return Outcome::failed(e),
            };
            run_process(command, message, timeout, cancel, output).await
        }
        RunnerType::LocalShellScript | RunnerType::PythonScript => {
            let script = match entry_point(message, actions_dir) {
                Ok(path) => path,
                Err(e) => return Outcome::failed(e),
            };
            if message.runner == RunnerType::PythonScript {
                let actions = actions_dir.unwrap_or(Path::new("."));
                return run_python(&script, actions, message, timeout, cancel, settings, output)
                    .await;
            }
            let mut program: Vec<std::ffi::OsString> = if is_executable(&script) {
                vec![script.clone().into()]
            } else {
                vec!["/bin/sh".into(), script.clone().into()]
            };
            let arguments = match script_arguments(message, settings) {
                Ok(arguments) => arguments,
                Err(e) => return Outcome::failed(e),
            };
            program.extend(arguments.into_iter().map(Into::into));
            let command = match process(program, script.parent(), message, settings) {
                Ok(command) => command,
                Err(e) => return Outcome::failed(e),
            };
            run_process(command, message, timeout, cancel, output).await
        }
    }
}

/// The arguments of a `local-shell-script` action's script; a secret among them is refused
/// unless the worker allows secrets on command lines.
fn script_arguments(message: &RunMessage, settings: &Settings) -> Result<Vec<String>, String> {
    if !settings.secrets_on_command_line {
        for name in &message.secret_parameters {
            let value = message.parameters.get(name);
            let empty = matches!(value, None | Some(Value::Null) | Some(Value::Bool(false)))
                || value.and_then(Value::as_str) == Some("");
            if !empty && !message.runner.is_runner_parameter(name) {
                return Err(format!(
                    "parameter {name:?} is secret and would be an argument of the script, where any user of this host can read it; read it from SLUICE_PARAM_{} or stdin instead, or start the worker with --secrets-on-command-line",
                    env_name(name)
                ));
            }
        }
    }
    Ok(sluice_core::runner::script_arguments(
        message.runner,
        &message.parameters,
        &message.positional,
    ))
}

/// A process for `program` (its path, then its arguments) with the runner parameters
/// applied: `cwd` (else `default_dir`), `env`, and `sudo` when the worker allows it.
fn process(
    mut program: Vec<std::ffi::OsString>,
    default_dir: Option<&Path>,
    message: &RunMessage,
    settings: &Settings,
) -> Result<Command, String> {
    let params = &message.parameters;
    if params.get("sudo").and_then(Value::as_bool) == Some(true) {
        if !settings.allow_sudo {
            return Err(format!(
                "action {} asks for sudo, which this worker does not allow (start it with --allow-sudo)",
                message.action
            ));
        }
        // Non-interactive, keeping the environment the parameters arrive in.
        let mut sudo: Vec<std::ffi::OsString> =
            vec!["sudo".into(), "-n".into(), "-E".into(), "--".into()];
        sudo.append(&mut program);
        program = sudo;
    }
    let mut command = Command::new(&program[0]);
    command.args(&program[1..]);
    match params.get("cwd") {
        Some(Value::String(cwd)) if !cwd.is_empty() => {
            let dir = Path::new(cwd);
            if !dir.is_absolute() || !dir.is_dir() {
                return Err(format!(
                    "runner parameter cwd {cwd:?} is not an absolute path to a directory on this worker"
                ));
            }
            command.current_dir(dir);
        }
        _ => {
            if let Some(dir) = default_dir {
                command.current_dir(dir);
            }
        }
    }
    command.envs(runner_env(message)?);
    Ok(command)
}

/// The variables of the runner parameter `env`, checked.
fn runner_env(message: &RunMessage) -> Result<Vec<(String, String)>, String> {
    let vars = match message.parameters.get("env") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(vars)) => vars,
        Some(_) => return Err("runner parameter env must be an object of variables".into()),
    };
    let mut env = Vec::with_capacity(vars.len());
    for (name, value) in vars {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid || is_own_config(name) {
            return Err(format!(
                "runner parameter env: {name:?} is not a variable an action may set (letters, digits and _, not starting with a digit or SLUICE_)"
            ));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.contains('\0') {
            return Err(format!(
                "runner parameter env: the value of {name} holds a NUL byte"
            ));
        }
        env.push((name.clone(), text));
    }
    Ok(env)
}

/// A `python-script` action, through Sluice's wrapper: StackStorm's `Action` class and
/// result semantics for an action written as one, a plain script otherwise.
async fn run_python(
    script: &Path,
    actions_dir: &Path,
    message: &RunMessage,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    settings: &Settings,
    output: &Output,
) -> Outcome {
    let library = match crate::python::library() {
        Ok(library) => library,
        Err(e) => return Outcome::failed(e),
    };
    let scratch = match tempfile::Builder::new().prefix("sluice-run-").tempdir() {
        Ok(scratch) => scratch,
        Err(e) => return Outcome::failed(format!("cannot create a directory for the run: {e}")),
    };
    let outcome_file = scratch.path().join("outcome.json");
    // The pack's configuration, secrets open, for `self.config`: in the run's private
    // directory (0700), never in the environment.
    let config_file = scratch.path().join("config.json");
    let config = Value::Object(message.config.clone().unwrap_or_default());
    if let Err(e) = std::fs::write(&config_file, config.to_string()) {
        return Outcome::failed(format!(
            "cannot write the pack's configuration for the run: {e}"
        ));
    }
    let python = match &settings.venvs {
        Some(venvs) => {
            let pack_dir = actions_dir.parent().unwrap_or(actions_dir);
            match venvs.python_for(message.action.pack(), pack_dir).await {
                Ok(python) => python,
                Err(e) => return Outcome::failed(e),
            }
        }
        None => None,
    };
    let python = python.unwrap_or_else(|| PathBuf::from("python3"));
    // The action service, for this execution alone, while it runs.
    let service_socket = scratch.path().join("service.sock");
    let service = match &settings.service {
        Some(service) => {
            match service.listen(&service_socket, message.execution_id, message.action.pack()) {
                Ok(task) => Some(AbortOnDrop(task)),
                Err(e) => {
                    return Outcome::failed(format!("cannot open the action service socket: {e}"));
                }
            }
        }
        None => None,
    };
    let files = [
        (
            "PYTHONPATH",
            crate::python::python_path(library, actions_dir),
        ),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ("SLUICE_RESULT_FILE", outcome_file.clone().into()),
        ("SLUICE_CONFIG_FILE", config_file.clone().into()),
    ]
    .into_iter()
    .chain(
        service
            .as_ref()
            .map(|_| ("SLUICE_SERVICE_SOCKET", service_socket.clone().into())),
    )
    .map(|(name, value): (&str, std::ffi::OsString)| {
        (name.to_owned(), value.to_string_lossy().into_owned())
    });
    if let Some(forks) = &settings.forks {
        let mut env = match runner_env(message) {
            Ok(env) => env,
            Err(e) => return Outcome::failed(e),
        };
        env.extend(files);
        let cwd = script.parent().unwrap_or(actions_dir);
        let Outcome { status, result } = run_forked(
            forks,
            &python,
            script,
            actions_dir,
            cwd,
            env,
            message,
            timeout,
            cancel,
            output,
        )
        .await;
        let (status, result) =
            crate::python::apply(status, result, &outcome_file, MAX_OUTPUT_CAP as u64);
        return Outcome { status, result };
    }
    let program = vec![
        python.into(),
        crate::python::wrapper(library).into(),
        script.into(),
    ];
    let mut command = match process(
        program,
        script.parent().or(Some(actions_dir)),
        message,
        settings,
    ) {
        Ok(command) => command,
        Err(e) => return Outcome::failed(e),
    };
    command.envs(files);
    let Outcome { status, result } = run_process(command, message, timeout, cancel, output).await;
    let (status, result) =
        crate::python::apply(status, result, &outcome_file, MAX_OUTPUT_CAP as u64);
    Outcome { status, result }
}

/// Stops a task when dropped: the action service ends with the run.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn entry_point(message: &RunMessage, actions_dir: Option<&Path>) -> Result<PathBuf, String> {
    let entry = message
        .entry_point
        .as_deref()
        .ok_or_else(|| format!("action {} has no entry_point", message.action))?;
    let dir = actions_dir.ok_or_else(|| {
        format!(
            "pack {} is not installed on this worker (add it with --packs)",
            message.action.pack()
        )
    })?;
    // Checked again here: the files on this worker are not the ones the engine loaded.
    sluice_core::runner::confined_entry_point(dir, entry)
        .map_err(|e| format!("entry point of {}: {e} on this worker", message.action))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// A parameter's name as it appears in `SLUICE_PARAM_<NAME>`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `SLUICE_PARAM_<NAME>`: strings as they are, other values as JSON.
pub fn param_env(parameters: &Map<String, Value>) -> Vec<(String, String)> {
    parameters
        .iter()
        .map(|(name, value)| {
            let key = env_name(name);
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (format!("SLUICE_PARAM_{key}"), text)
        })
        .collect()
}

fn timed_out(limit: Duration, mut result: Value) -> Outcome {
    result["error"] = json!(format!("timed out after {}s", limit.as_secs_f64()));
    Outcome {
        status: ExecutionStatus::TimedOut,
        result,
    }
}

/// How much of a process's output a result keeps, and who hears it as it is read.
struct Output {
    cap: usize,
    sink: Option<OutputSink>,
}

/// Reads up to `cap` bytes of `stream` and drains the rest, so the process never blocks on
/// a full pipe; what is kept also goes to the sink as it is read. Returns the text and
/// whether it was cut.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    stream: &'static str,
    output: &Output,
) -> (String, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = output.cap.saturating_sub(kept.len());
                let keep = &buf[..n.min(room)];
                if let Some(sink) = output.sink.as_ref().filter(|_| !keep.is_empty()) {
                    let _ = sink.send((stream, keep.to_vec()));
                }
                kept.extend_from_slice(keep);
                truncated |= n > room;
            }
        }
    }
    let text = String::from_utf8(kept)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
    (text, truncated)
}

#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory
    // of ours. The group is the child's own (process_group(0) below).
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// Kills every process the execution started: its process group, then any process that
/// left the group (`setsid`, a double fork) but still carries the execution's tag in its
/// environment, found in `/proc`. Repeated while it finds some, as they may be forking.
fn kill_tree(pid: Option<u32>, tag: &str) {
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let needle = format!("{RUN_TAG}={tag}");
    for _ in 0..10 {
        let found = tagged_processes(&needle);
        if found.is_empty() {
            return;
        }
        for pid in found {
            kill_one(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose environment holds `needle` (`NAME=value`).
fn tagged_processes(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

#[allow(unsafe_code)]
fn kill_one(pid: u32) {
    // SAFETY: kill(2) on a process id; it touches no memory of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Sets the action's limits on the process before it runs its program; its children
/// inherit them.
#[allow(unsafe_code)]
fn apply_limits(command: &mut Command, limits: sluice_core::ProcessLimits) {
    if limits.is_none() {
        return;
    }
    let wanted: Vec<(libc::__rlimit_resource_t, u64)> = [
        (
            libc::RLIMIT_AS,
            limits.memory_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
        ),
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_NOFILE, limits.open_files),
    ]
    .into_iter()
    .filter_map(|(resource, value)| Some((resource, value?)))
    .collect();
    // SAFETY: runs in the child between fork and exec; setrlimit(2) is async-signal-safe
    // and the closure allocates nothing (the list was built before the fork).
    unsafe {
        command.pre_exec(move || {
            for (resource, value) in &wanted {
                let limit = libc::rlimit {
                    rlim_cur: *value,
                    rlim_max: *value,
                };
                if libc::setrlimit(*resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The environment variable that marks every process of one execution attempt on this
/// worker, so [`kill_tree`] finds those that left the process group.
const RUN_TAG: &str = "SLUICE_RUN_TAG";

/// The tag of one execution attempt's processes on this worker ([`RUN_TAG`]).
fn run_tag(message: &RunMessage) -> String {
    format!(
        "{}-{}-{}-{}",
        std::process::id(),
        message.execution_id,
        message.attempt,
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

/// The environment every action process gets besides what it inherits: its parameters,
/// who it is, and its run tag; and what StackStorm tells an action: its pack and
/// execution and, when the engine serves an API, where it is and the execution's token
/// (opened by the worker).
fn action_env(message: &RunMessage, tag: &str) -> Vec<(String, String)> {
    let mut env = param_env(&message.parameters);
    env.extend([
        (
            "SLUICE_EXECUTION_ID".into(),
            message.execution_id.to_string(),
        ),
        ("SLUICE_ACTION".into(), message.action.as_str().to_owned()),
        ("SLUICE_ATTEMPT".into(), message.attempt.to_string()),
        (RUN_TAG.into(), tag.to_owned()),
        (
            "ST2_ACTION_PACK_NAME".into(),
            message.action.pack().to_owned(),
        ),
        (
            "ST2_ACTION_EXECUTION_ID".into(),
            message.execution_id.to_string(),
        ),
    ]);
    if let Some(api) = &message.api {
        env.push(("ST2_ACTION_API_URL".into(), api.url.clone()));
        env.push(("ST2_ACTION_AUTH_TOKEN".into(), api.token.clone()));
    }
    env
}

async fn run_process(
    mut command: Command,
    message: &RunMessage,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    output: &Output,
) -> Outcome {
    let tag = run_tag(message);
    without_own_config(&mut command);
    command
        .envs(action_env(message, &tag))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    apply_limits(&mut command, message.limits);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::failed(format!("failed to start process: {e}")),
    };
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let wait = async {
        child
            .wait()
            .await
            .map(|status| (status.code(), status.success()))
            .map_err(|e| format!("failed to wait for process: {e}"))
    };
    let limit = timeout.unwrap_or(Duration::MAX);
    let ended = collect(message, stdin, stdout, stderr, wait, limit, cancel, output).await;
    let Some(ended) = ended else {
        let tag = tag.clone();
        let _ = tokio::task::spawn_blocking(move || kill_tree(pid, &tag)).await;
        let _ = child.wait().await;
        return stopped(limit, cancel);
    };
    process_outcome(ended)
}

/// What a process printed, and its exit code and success, or why it could not be waited for.
type Ended = (
    String,
    bool,
    String,
    bool,
    Result<(Option<i32>, bool), String>,
);

/// Feeds the parameters to the process's stdin, reads its output and waits for its end;
/// `None` when the time limit or a cancel came first.
#[allow(clippy::too_many_arguments)]
async fn collect(
    message: &RunMessage,
    stdin: Option<impl tokio::io::AsyncWrite + Unpin>,
    stdout: impl AsyncRead + Unpin,
    stderr: impl AsyncRead + Unpin,
    wait: impl Future<Output = Result<(Option<i32>, bool), String>>,
    limit: Duration,
    cancel: &CancellationToken,
    output: &Output,
) -> Option<Ended> {
    let stdin_json = serde_json::to_vec(&message.parameters).unwrap_or_default();
    let mut stdin = stdin;
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A process that never reads stdin closes it; that is not an error.
            let _ = stdin.write_all(&stdin_json).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let work = async {
        let ((), (out, out_cut), (err, err_cut), status) = tokio::join!(
            feed,
            read_capped(stdout, "stdout", output),
            read_capped(stderr, "stderr", output),
            wait
        );
        (out, out_cut, err, err_cut, status)
    };
    tokio::select! {
        finished = tokio::time::timeout(limit, work) => finished.ok(),
        _ = cancel.cancelled() => None,
    }
}

/// The outcome of a process stopped before its end: cancelled, or out of time.
fn stopped(limit: Duration, cancel: &CancellationToken) -> Outcome {
    if cancel.is_cancelled() {
        return cancelled();
    }
    timed_out(limit, json!({}))
}

/// A process runner's result: `exit_code`, `stdout`, `stderr`, `result` when stdout is
/// JSON, `truncated`; succeeded when the process did.
fn process_outcome((stdout, stdout_cut, stderr, stderr_cut, status): Ended) -> Outcome {
    let (code, success) = match status {
        Ok(status) => status,
        Err(e) => return Outcome::failed(e),
    };
    let mut result = json!({
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
    });
    if let Ok(parsed) = sluice_core::bounded::from_json(stdout.trim().as_bytes())
        .map_err(drop)
        .and_then(|v| {
            if stdout.trim().is_empty() {
                Err(())
            } else {
                Ok(v)
            }
        })
    {
        result["result"] = parsed;
    }
    let truncated: Vec<&str> = [("stdout", stdout_cut), ("stderr", stderr_cut)]
        .into_iter()
        .filter(|(_, cut)| *cut)
        .map(|(n, _)| n)
        .collect();
    if !truncated.is_empty() {
        result["truncated"] = json!(truncated);
    }
    let status = if success {
        ExecutionStatus::Succeeded
    } else {
        ExecutionStatus::Failed
    };
    Outcome { status, result }
}

/// A python action as a child of the warm interpreter for `python`: the same environment,
/// working directory, limits and streams a process of its own would have.
#[allow(clippy::too_many_arguments)]
async fn run_forked(
    forks: &crate::forkserver::ForkServers,
    python: &Path,
    script: &Path,
    actions_dir: &Path,
    cwd: &Path,
    extra_env: Vec<(String, String)>,
    message: &RunMessage,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    output: &Output,
) -> Outcome {
    let tag = run_tag(message);
    // What a process of its own would inherit (every SLUICE_* variable left out), as text:
    // the request is JSON.
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars_os()
        .map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .filter(|(name, _)| !is_own_config(name))
        .collect();
    env.extend(extra_env);
    env.extend(action_env(message, &tag));
    let request = json!({
        "action": script,
        "actions_dir": actions_dir,
        "cwd": cwd,
        "env": env,
        "limits": crate::forkserver::limits(message.limits),
    });
    let pipes =
        (|| Ok::<_, std::io::Error>((std::io::pipe()?, std::io::pipe()?, std::io::pipe()?)))();
    let Ok(((stdin_read, stdin_write), (stdout_read, stdout_write), (stderr_read, stderr_write))) =
        pipes
    else {
        return Outcome::failed("cannot make pipes for the action's process");
    };
    let streams = [
        std::os::fd::OwnedFd::from(stdin_read),
        std::os::fd::OwnedFd::from(stdout_write),
        std::os::fd::OwnedFd::from(stderr_write),
    ];
    let ours = (|| {
        Ok::<_, std::io::Error>((
            tokio::net::unix::pipe::Sender::from_owned_fd(stdin_write.into())?,
            tokio::net::unix::pipe::Receiver::from_owned_fd(stdout_read.into())?,
            tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_read.into())?,
        ))
    })();
    let Ok((stdin, stdout, stderr)) = ours else {
        return Outcome::failed("cannot open the action's pipes");
    };
    let mut forked = match forks.fork(python, &request, streams).await {
        Ok(forked) => forked,
        Err(e) => return Outcome::failed(e),
    };
    let pid = forked.pid;
    let wait = async {
        let code = forked.wait().await?;
        Ok((Some(code).filter(|c| *c >= 0), code == 0))
    };
    let limit = timeout.unwrap_or(Duration::MAX);
    let ended = collect(
        message,
        Some(stdin),
        stdout,
        stderr,
        wait,
        limit,
        cancel,
        output,
    )
    .await;
    let Some(ended) = ended else {
        let _ = tokio::task::spawn_blocking(move || kill_tree(Some(pid), &tag)).await;
        return stopped(limit, cancel);
    };
    process_outcome(ended)
}

async fn http_request(params: &Map<String, Value>, timeout: Duration) -> Outcome {
    let Some(url) = params.get("url").and_then(Value::as_str) else {
        return Outcome::failed("parameter url is missing");
    };
    let method = params
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET");
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Outcome::failed(format!("invalid HTTP method {method:?}"));
    };
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(e) => return Outcome::failed(format!("failed to build HTTP client: {e}")),
    };
    let mut request = client.request(method, url);
    if let Some(Value::Object(headers)) = params.get("headers") {
        for (name, value) in headers {
            request = request.header(
                name,
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            );
        }
    }
    if let Some(token) = params.get("auth_token").and_then(Value::as_str) {
        request = request.bearer_auth(token);
    }
    if let Some(body) = params.get("body").and_then(Value::as_str) {
        request = request.body(body.to_owned());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return timed_out(timeout, json!({})),
        Err(e) => return Outcome::failed(format!("request to {url} failed: {e}")),
    };
    let status_code = response.status();
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or_default().to_owned()),
            )
        })
        .collect();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    let result = json!({ "status_code": status_code.as_u16(), "headers": headers, "body": body });
    if status_code.is_success() {
        Outcome::succeeded(result)
    } else {
        Outcome {
            status: ExecutionStatus::Failed,
            result,
        }
    }
}

//! The runners on real processes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sluice_core::{ExecutionId, ExecutionStatus, RunMessage, RunnerType};
use sluice_worker::runner::{OUTPUT_CAP, Outcome, Settings};
use tokio_util::sync::CancellationToken;

/// Waits (up to 5 s) for a process to be gone or a zombie: SIGKILL is delivered
/// asynchronously, and a loaded machine may take a moment to act on it.
async fn died(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        if stat.is_empty() || stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z')) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs to the end, never cancelled.
async fn run(message: &RunMessage, actions_dir: Option<&Path>) -> Outcome {
    sluice_worker::runner::run(message, actions_dir, &CancellationToken::new()).await
}

/// [`run`] with a worker's settings.
async fn run_with(
    settings: &Settings,
    message: &RunMessage,
    actions_dir: Option<&Path>,
) -> Outcome {
    sluice_worker::runner::run_following(
        message,
        actions_dir,
        &CancellationToken::new(),
        settings,
        None,
    )
    .await
}

fn message(runner: RunnerType, params: Value, timeout_secs: Option<u64>) -> RunMessage {
    RunMessage {
        execution_id: ExecutionId(1),
        attempt: 1,
        action: "t.a".parse().unwrap(),
        runner,
        pack_digest: None,
        entry_point: None,
        parameters: params.as_object().cloned().unwrap_or_else(Map::new),
        secret_parameters: vec![],
        positional: vec![],
        config: None,
        timeout_secs,
        limits: Default::default(),
        api: None,
        partition: None,
    }
}

fn shell(cmd: &str, extra: Value) -> RunMessage {
    let mut params = json!({ "cmd": cmd });
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    message(RunnerType::LocalShellCmd, params, Some(20))
}

#[tokio::test]
async fn parameters_arrive_as_environment_and_stdin_json_never_as_code() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let hostile = format!(
        "$(touch {0}); `touch {0}`; rm -rf /nonexistent",
        marker.display()
    );
    let out = run(
        &shell(
            "printf '%s|' \"$SLUICE_PARAM_HOST\" \"$SLUICE_PARAM_COUNT\"; cat",
            json!({ "host": hostile, "count": 3 }),
        ),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    let stdout = out.result["stdout"].as_str().unwrap();
    assert!(stdout.starts_with(&format!("{hostile}|3|")), "{stdout}");
    let stdin: Value = serde_json::from_str(stdout.splitn(3, '|').nth(2).unwrap()).unwrap();
    assert_eq!(stdin["host"], json!(hostile));
    assert_eq!(stdin["count"], json!(3));
    assert!(!marker.exists(), "a parameter value was executed");
}

#[tokio::test]
async fn exit_codes_stdout_json_and_stderr_are_reported() {
    let out = run(
        &shell("echo '{\"ok\": true}'; echo oops >&2; exit 0", json!({})),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded);
    assert_eq!(
        out.result["result"],
        json!({"ok": true}),
        "JSON stdout is parsed"
    );
    assert_eq!(out.result["stderr"], json!("oops\n"));
    assert_eq!(out.result["exit_code"], json!(0));
    let out = run(&shell("exit 7", json!({})), None).await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    assert_eq!(out.result["exit_code"], json!(7));
    assert!(out.result.get("result").is_none());
}

#[tokio::test]
async fn output_is_capped_and_marked() {
    let out = run(
        &shell("head -c 3000000 /dev/zero | tr '\\0' x", json!({})),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded);
    assert_eq!(out.result["stdout"].as_str().unwrap().len(), OUTPUT_CAP);
    assert_eq!(out.result["truncated"], json!(["stdout"]));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let cmd = format!(
        "sleep 30 & echo $! > {0}; sleep 30 & echo $! >> {0}; wait",
        pids.display()
    );
    let started = Instant::now();
    let out = run(
        &message(RunnerType::LocalShellCmd, json!({ "cmd": cmd }), Some(1)),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::TimedOut, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s")
    );
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(died(pid).await, "grandchild {pid} survived the timeout");
    }
}

#[tokio::test]
async fn script_runners_execute_their_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.sh"),
        "echo \"hello $SLUICE_PARAM_NAME from $(basename \"$PWD\")\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("double.py"),
        "import json,sys\nprint(json.dumps({'twice': json.load(sys.stdin)['n'] * 2}))\n",
    )
    .unwrap();
    let mut msg = message(
        RunnerType::LocalShellScript,
        json!({ "name": "ops" }),
        Some(20),
    );
    msg.entry_point = Some("hello.sh".into());
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    let expected = format!(
        "hello ops from {}\n",
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        out.result["stdout"],
        json!(expected),
        "runs in its own directory"
    );

    let mut msg = message(RunnerType::PythonScript, json!({ "n": 21 }), Some(20));
    msg.entry_point = Some("double.py".into());
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.result["result"], json!({"twice": 42}), "{out:?}");

    msg.entry_point = Some("missing.py".into());
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("does not exist on this worker")
    );
    let out = run(&msg, None::<&Path>).await;
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("is not installed on this worker")
    );
}

#[tokio::test]
async fn scripts_take_stackstorm_s_named_and_positional_arguments_and_runner_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    // Each argument on its own line, then the working directory and one variable.
    std::fs::write(
        dir.path().join("args.sh"),
        "for a in \"$@\"; do echo \"[$a]\"; done; echo \"cwd=$PWD\"; echo \"region=$REGION\"\n",
    )
    .unwrap();
    let hostile = format!("$(touch {})", marker.display());
    let mut msg = message(
        RunnerType::LocalShellScript,
        json!({
            "host": hostile, "force": true, "quiet": false, "ports": [80, 443],
            "first": "a b", "second": false, "kwarg_op": "--",
            "cwd": elsewhere.path(), "env": {"REGION": "eu-1"}, "sudo": false, "timeout": 20,
        }),
        Some(20),
    );
    msg.entry_point = Some("args.sh".into());
    msg.positional = vec!["first".into(), "second".into()];
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    let expected = format!(
        "[--force]\n[--host={hostile}]\n[--ports=80,443]\n[a b]\n[0]\ncwd={}\nregion=eu-1\n",
        elsewhere.path().display()
    );
    assert_eq!(out.result["stdout"], json!(expected));
    assert!(!marker.exists(), "an argument was executed");

    // A variable of Sluice's own cannot be set, nor one that is no name.
    for name in ["SLUICE_RUN_TAG", "A=B", ""] {
        msg.parameters.insert("env".into(), json!({ name: "x" }));
        let out = run(&msg, Some(dir.path())).await;
        assert_eq!(out.status, ExecutionStatus::Failed, "{name}: {out:?}");
        assert!(
            out.result["error"]
                .as_str()
                .unwrap()
                .contains("runner parameter env")
        );
    }
    msg.parameters.remove("env");

    msg.parameters.insert("cwd".into(), json!("relative/dir"));
    let out = run(&msg, Some(dir.path())).await;
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("cwd \"relative/dir\""),
        "{out:?}"
    );
    msg.parameters.remove("cwd");

    // sudo only where the worker allows it.
    msg.parameters.insert("sudo".into(), json!(true));
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("--allow-sudo"),
        "{out:?}"
    );
    msg.parameters.insert("sudo".into(), json!(false));

    // A secret stays off the command line unless the worker is told otherwise.
    msg.parameters.insert("password".into(), json!("hunter2"));
    msg.secret_parameters = vec!["password".into()];
    let out = run(&msg, Some(dir.path())).await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    let error = out.result["error"].as_str().unwrap();
    assert!(
        error.contains("SLUICE_PARAM_PASSWORD") && !error.contains("hunter2"),
        "{error}"
    );
    let settings = sluice_worker::runner::Settings {
        secrets_on_command_line: true,
        ..Default::default()
    };
    let out = sluice_worker::runner::run_following(
        &msg,
        Some(dir.path()),
        &CancellationToken::new(),
        &settings,
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    assert!(
        out.result["stdout"]
            .as_str()
            .unwrap()
            .contains("[--password=hunter2]")
    );
}

#[tokio::test]
async fn python_actions_written_for_stackstorm_run_with_its_base_class_and_result_rules() {
    python_actions_as_stackstorm_runs_them(&Settings::default()).await;
}

#[tokio::test]
async fn python_actions_forked_from_a_warm_interpreter_run_the_same_each_in_a_process_of_its_own() {
    let settings = Settings {
        forks: Some(std::sync::Arc::new(
            sluice_worker::forkserver::ForkServers::new(),
        )),
        ..Settings::default()
    };
    python_actions_as_stackstorm_runs_them(&settings).await;

    let dir = tempfile::tempdir().unwrap();
    let actions = dir.path();
    std::fs::write(
        actions.join("count.py"),
        "import os\nfrom st2common.runners.base_action import Action\nSEEN = []\n\nclass Count(Action):\n    def run(self, tag):\n        SEEN.append(1)\n        return {'seen': len(SEEN), 'pid': os.getpid(), 'pgid': os.getpgid(0), 'env': os.environ.get('SLUICE_PARAM_TAG')}\n",
    )
    .unwrap();
    std::fs::write(
        actions.join("hang.py"),
        "import subprocess, time\nfrom st2common.runners.base_action import Action\n\nclass Hang(Action):\n    def run(self):\n        child = subprocess.Popen(['sleep', '30'])\n        print(child.pid, flush=True)\n        time.sleep(30)\n",
    )
    .unwrap();
    let run = |entry: &str, params: Value, timeout: Option<u64>| {
        let mut msg = message(RunnerType::PythonScript, params, timeout);
        msg.entry_point = Some(entry.into());
        let settings = settings.clone();
        async move {
            sluice_worker::runner::run_following(
                &msg,
                Some(actions),
                &CancellationToken::new(),
                &settings,
                None,
            )
            .await
        }
    };
    // Each execution imports the action afresh in a process group of its own.
    let first = run("count.py", json!({"tag": "a"}), Some(20)).await;
    let second = run("count.py", json!({"tag": "b"}), Some(20)).await;
    for (out, tag) in [(&first, "a"), (&second, "b")] {
        assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
        let result = &out.result["result"];
        assert_eq!(result["seen"], 1, "module state is not shared: {out:?}");
        assert_eq!(result["pid"], result["pgid"], "{out:?}");
        assert_eq!(result["env"], tag);
    }
    assert_ne!(
        first.result["result"]["pid"],
        second.result["result"]["pid"]
    );

    // A timeout kills the child and what it started.
    let out = run("hang.py", json!({}), Some(1)).await;
    assert_eq!(out.status, ExecutionStatus::TimedOut, "{out:?}");
}

async fn python_actions_as_stackstorm_runs_them(settings: &Settings) {
    let dir = tempfile::tempdir().unwrap();
    let actions = dir.path();
    let files = [
        (
            "lib/base.py",
            "from st2common.runners.base_action import Action\n\nclass BaseGreeter(Action):\n    def greet(self, who):\n        return 'hello ' + who\n",
        ),
        ("lib/__init__.py", ""),
        (
            "greet.py",
            "import os\nfrom lib.base import BaseGreeter\n\nclass Greet(BaseGreeter):\n    def run(self, who, loud=False):\n        self.logger.info('greeting %s', who)\n        print('printed along the way')\n        text = self.greet(who) + ' from ' + os.environ['ST2_ACTION_PACK_NAME']\n        return text.upper() if loud else text\n",
        ),
        (
            "check.py",
            "from st2common.runners.base_action import Action\n\nclass Check(Action):\n    def run(self):\n        return (False, {'reason': 'disk full'})\n",
        ),
        (
            "boom.py",
            "from st2common.runners.base_action import Action\n\nclass Boom(Action):\n    def run(self, host):\n        raise ValueError('bad host ' + host)\n",
        ),
        (
            "legacy.py",
            "from st2actions.runners.pythonrunner import Action\n\nclass Legacy(Action):\n    def run(self):\n        return {'config': self.config, 'n': 1}\n",
        ),
        (
            "classless.py",
            "from st2common.runners.base_action import Action\nprint('no class here')\n",
        ),
    ];
    for (name, text) in files {
        let path = actions.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let python = |entry: &str, params: serde_json::Value| {
        let mut msg = message(RunnerType::PythonScript, params, Some(20));
        msg.entry_point = Some(entry.into());
        msg
    };

    let out = run_with(
        settings,
        &python("greet.py", json!({"who": "ops"})),
        Some(actions),
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    assert_eq!(out.result["result"], json!("hello ops from t"), "{out:?}");
    assert_eq!(out.result["stdout"], json!("printed along the way\n"));

    let out = run_with(settings, &python("check.py", json!({})), Some(actions)).await;
    assert_eq!(
        out.status,
        ExecutionStatus::Failed,
        "a (False, result) tuple fails it"
    );
    assert_eq!(out.result["result"], json!({"reason": "disk full"}));

    let out = run_with(
        settings,
        &python("boom.py", json!({"host": "db1"})),
        Some(actions),
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    assert_eq!(
        out.result["error"],
        json!("ValueError: bad host db1"),
        "{out:?}"
    );
    assert!(
        out.result["traceback"]
            .as_str()
            .unwrap()
            .contains("boom.py"),
        "{out:?}"
    );

    let out = run_with(settings, &python("legacy.py", json!({})), Some(actions)).await;
    assert_eq!(
        out.result["result"],
        json!({"config": {}, "n": 1}),
        "{out:?}"
    );

    let out = run_with(settings, &python("classless.py", json!({})), Some(actions)).await;
    assert_eq!(out.status, ExecutionStatus::Failed, "never a false success");
    assert!(
        out.result["error"]
            .as_str()
            .unwrap()
            .contains("defines no subclass of st2common.runners.base_action.Action"),
        "{out:?}"
    );
}

#[tokio::test]
async fn builtins() {
    assert_eq!(
        run(&message(RunnerType::Noop, json!({}), None), None)
            .await
            .status,
        ExecutionStatus::Succeeded
    );
    let out = run(
        &message(RunnerType::Echo, json!({ "message": "hi" }), None),
        None,
    )
    .await;
    assert_eq!(out.result, json!({ "message": "hi" }));
    let out = run(
        &message(RunnerType::Sleep, json!({ "seconds": 0.05 }), None),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded);
    let out = run(
        &message(RunnerType::Sleep, json!({ "seconds": 30 }), Some(1)),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::TimedOut);
}

#[tokio::test]
async fn http_requests_report_status_and_body() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for status in ["200 OK", "503 Service Unavailable"] {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                request.contains("authorization: Bearer s3cret"),
                "{request}"
            );
            let body = "{\"up\":true}";
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        }
    });
    let params =
        json!({ "url": format!("http://{addr}/health"), "method": "GET", "auth_token": "s3cret" });
    let out = run(
        &message(RunnerType::HttpRequest, params.clone(), Some(10)),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Succeeded, "{out:?}");
    assert_eq!(out.result["status_code"], json!(200));
    assert_eq!(out.result["body"], json!({"up": true}));
    let out = run(&message(RunnerType::HttpRequest, params, Some(10)), None).await;
    assert_eq!(out.status, ExecutionStatus::Failed);
    assert_eq!(out.result["status_code"], json!(503));
}

#[tokio::test]
async fn cancelling_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cmd = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let pid_path = pid_file.clone();
    tokio::spawn(async move {
        // The shell creates the file before it writes the pid: wait for the whole line.
        while !std::fs::read_to_string(&pid_path).is_ok_and(|pid| pid.ends_with('\n')) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        trigger.cancel();
    });
    let out = sluice_worker::runner::run(
        &message(RunnerType::LocalShellCmd, json!({ "cmd": cmd }), Some(20)),
        None,
        &cancel,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Cancelled, "{out:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    assert!(!pid.is_empty(), "the shell wrote no pid");
    assert!(died(pid).await, "grandchild {pid} survived the cancel");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = sluice_worker::runner::run(
        &message(RunnerType::Sleep, json!({ "seconds": 30 }), None),
        None,
        &cancel,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::Cancelled);
}

#[tokio::test]
async fn an_entry_point_outside_the_pack_is_not_run_on_the_worker() {
    let root = tempfile::tempdir().unwrap();
    let actions = root.path().join("pack/actions");
    std::fs::create_dir_all(&actions).unwrap();
    std::fs::write(root.path().join("evil.sh"), "touch pwned\n").unwrap();
    std::os::unix::fs::symlink(root.path().join("evil.sh"), actions.join("link.sh")).unwrap();
    for entry in ["../../evil.sh", "link.sh", "/etc/passwd"] {
        let mut msg = message(RunnerType::LocalShellScript, json!({}), Some(20));
        msg.entry_point = Some(entry.into());
        let out = run(&msg, Some(&actions)).await;
        assert_eq!(out.status, ExecutionStatus::Failed, "{entry}: {out:?}");
        let error = out.result["error"].as_str().unwrap();
        assert!(
            error.contains("outside the pack") || error.contains("absolute path"),
            "{entry}: {error}"
        );
    }
    assert!(!root.path().join("pwned").exists() && !actions.join("pwned").exists());
}

#[tokio::test]
async fn a_timeout_kills_processes_that_left_the_group_too() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escaped");
    // A background process in a session of its own, out of the action's process group,
    // and a double fork.
    let cmd = format!(
        "setsid sh -c 'sleep 300 & echo $! >> {0}; wait' & (sh -c 'sleep 300 & echo $! >> {0}' &); sleep 30",
        pid_file.display()
    );
    let out = run(
        &message(RunnerType::LocalShellCmd, json!({ "cmd": cmd }), Some(1)),
        None,
    )
    .await;
    assert_eq!(out.status, ExecutionStatus::TimedOut, "{out:?}");
    let pids: Vec<String> = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in pids {
        while Path::new(&format!("/proc/{pid}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
        {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived the timeout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn an_action_s_limits_bound_its_processes() {
    let mut msg = message(
        RunnerType::LocalShellCmd,
        json!({ "cmd": "echo $(ulimit -n) $(ulimit -t) $(ulimit -v); python3 -c 'bytearray(512 * 1024 * 1024)'" }),
        Some(20),
    );
    msg.limits = sluice_core::ProcessLimits {
        memory_mb: Some(256),
        cpu_seconds: Some(5),
        open_files: Some(64),
    };
    let out = run(&msg, None).await;
    assert_eq!(out.status, ExecutionStatus::Failed, "{out:?}");
    assert_eq!(out.result["stdout"], json!("64 5 262144\n"), "{out:?}");
    assert!(
        out.result["stderr"]
            .as_str()
            .unwrap()
            .contains("MemoryError"),
        "{out:?}"
    );
}

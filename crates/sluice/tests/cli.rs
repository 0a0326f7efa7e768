//! The real `sluice` binary as a newcomer uses it: `sluice up` with its own nats-server,
//! `sluice run --wait`, `sluice execution list|get`, and `kill -9` of `sluice up`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_testkit::free_port;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

struct Up {
    child: Child,
    api: String,
    /// Where `sluice up` keeps its state, and its admin token.
    data_dir: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(data_dir: &Path, nats_port: u16, http_port: u16) -> Up {
    up_with(data_dir, nats_port, http_port, &[])
}

/// `sluice up` with `flags` besides its ports and data directory.
fn up_with(data_dir: &Path, nats_port: u16, http_port: u16, flags: &[&str]) -> Up {
    let child = Command::new(SLUICE)
        .args([
            "up",
            "--nats-port",
            &nats_port.to_string(),
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sluice up did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Up {
        child,
        api,
        data_dir: data_dir.to_owned(),
    }
}

/// The CLI against `up`, finding its admin token in the data directory as a newcomer's
/// CLI does in `.sluice`.
fn sluice(args: &[&str], up: &Up) -> Output {
    Command::new(SLUICE)
        .args(args)
        .args(["--api", &up.api])
        .env("SLUICE_DATA_DIR", &up.data_dir)
        .output()
        .unwrap()
}

/// A user's password on the nats-server `sluice up` started.
fn nats_password(data_dir: &Path, user: &str) -> String {
    std::fs::read_to_string(data_dir.join("nats-users"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{user}=")).map(str::to_owned))
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Gone, or a zombie waiting to be reaped: either way it no longer runs.
fn process_is_dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('Z')),
    }
}

#[test]
fn the_newcomer_path_works_and_sluice_up_owns_its_nats_server() {
    let data = tempfile::tempdir().unwrap();
    let (nats_port, http_port) = (free_port(), free_port());
    let mut first = up(data.path(), nats_port, http_port);

    let ran = sluice(&["run", "core.local", "cmd=uname -a", "--wait"], &first);
    assert!(ran.status.success(), "{}", text(&ran));
    let out = text(&ran);
    assert!(
        out.contains("status:     succeeded") && out.contains("Linux"),
        "{out}"
    );

    let failed = sluice(&["run", "core.local", "cmd=exit 3", "--wait"], &first);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "--wait exits non-zero when the action fails"
    );
    assert!(text(&failed).contains("exit code:  3"), "{}", text(&failed));

    // A result too large to travel in its report goes through the results bucket, as the
    // worker user `sluice up` made; the engine stores it whole.
    let big = sluice(
        &[
            "run",
            "core.local",
            "cmd=head -c 300000 /dev/zero | tr '\\0' x",
            "--wait",
        ],
        &first,
    );
    assert!(big.status.success(), "{}", text(&big));
    let out = text(&big);
    assert!(
        out.contains(&format!("stdout:\n{}\n", "x".repeat(300_000))),
        "{}",
        &out[..out.len().min(2000)]
    );

    let unknown = sluice(&["run", "core.nope"], &first);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("error: unknown action core.nope"),
        "{}",
        text(&unknown)
    );

    // Publish like `nats pub`: raw NATS protocol over TCP, no client library, as the
    // publisher user `sluice up` made.
    {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", nats_port)).unwrap();
        let payload = r#"{"host":"db1","severity":"critical"}"#;
        let password = nats_password(data.path(), "publisher");
        write!(socket, "CONNECT {{\"verbose\":false,\"user\":\"publisher\",\"pass\":\"{password}\"}}\r\nPUB sluice.trigger.examples.alert {}\r\n{payload}\r\nPING\r\n", payload.len()).unwrap();
        let mut buf = [0u8; 512];
        let mut seen = String::new();
        while !seen.contains("PONG") {
            let n = socket.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the connection: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    // The alert fires three rules (diagnose_critical, log_alert, summarise_warnings): with
    // the two runs above that succeeded, five executions end `succeeded`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let list = text(&sluice(&["execution", "list"], &first));
        if list.matches("succeeded").count() == 5 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the trigger's executions did not all succeed:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(listing.starts_with("ID"), "{listing}");
    assert!(
        listing.contains("examples.diagnose") && listing.contains("examples.diagnose_critical"),
        "{listing}"
    );

    let json = sluice(&["execution", "get", "1", "--json"], &first);
    let execution: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(execution["parameters"]["cmd"], "uname -a");
    assert_eq!(execution["history"].as_array().unwrap().len(), 5);

    // kill -9: the nats-server child must not outlive sluice up.
    let nats_pid = std::fs::read_to_string(data.path().join("nats-server.pid"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(!process_is_dead(&nats_pid));
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_is_dead(&nats_pid) {
        assert!(
            Instant::now() < deadline,
            "nats-server {nats_pid} outlived sluice up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A restart on the same data dir resumes: same store, same streams, same port.
    let mut second = up(data.path(), nats_port, http_port);
    let list = text(&sluice(&["execution", "list", "--limit", "100"], &second));
    assert_eq!(list.lines().count(), 1 + 6, "{list}");
    let ran = sluice(&["run", "core.echo", "message=again", "--wait"], &second);
    assert!(ran.status.success(), "{}", text(&ran));

    let timers = text(&sluice(&["timer", "list"], &second));
    assert!(
        timers.starts_with("RULE") && timers.contains("examples.new_year"),
        "{timers}"
    );
    assert!(
        timers.contains("core.st2.CronTimer") && timers.contains("latest"),
        "{timers}"
    );

    // Switching a rule from the CLI, as the README's tour does: the timer pauses.
    let rules = text(&sluice(&["rule", "list"], &second));
    let row = |rules: &str| {
        rules
            .lines()
            .find(|l| l.starts_with("examples.new_year "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert!(row(&rules).contains(" yes "), "{rules}");
    let disabled = sluice(&["rule", "disable", "examples.new_year"], &second);
    assert!(disabled.status.success(), "{}", text(&disabled));
    let rules = text(&sluice(&["rule", "list"], &second));
    assert!(row(&rules).contains(" no "), "{rules}");
    assert!(row(&rules).contains("off by "), "{rules}");
    let timers = text(&sluice(&["timer", "list"], &second));
    assert!(timers.contains("paused"), "{timers}");
    let enabled = sluice(&["rule", "enable", "examples.new_year"], &second);
    assert!(enabled.status.success(), "{}", text(&enabled));
    let timers = text(&sluice(&["timer", "list"], &second));
    assert!(!timers.contains("paused"), "{timers}");
    let tested = sluice(
        &[
            "rule",
            "test",
            "examples.diagnose_critical",
            r#"{"host":"db1","severity":"warning"}"#,
        ],
        &second,
    );
    assert_eq!(tested.status.code(), Some(1), "{}", text(&tested));
    assert!(
        text(&tested)
            .contains(r#"does not match: trigger.severity equals "critical", saw "warning""#),
        "{}",
        text(&tested)
    );
    let rerun = sluice(&["execution", "re-run", "1", "--wait"], &second);
    assert!(rerun.status.success(), "{}", text(&rerun));
    assert!(text(&rerun).contains("re-run of:  1"), "{}", text(&rerun));
    let events = text(&sluice(&["event", "list"], &second));
    assert!(events.starts_with("ID"), "{events}");
    let filtered = sluice(
        &["event", "list", "--since", "1h", "--payload", "host=db&x=1"],
        &second,
    );
    assert!(filtered.status.success(), "{}", text(&filtered));
    assert_eq!(text(&filtered).lines().count(), 1, "{}", text(&filtered));
    let mine = text(&sluice(
        &[
            "execution",
            "list",
            "--rule",
            "no such rule",
            "--since",
            "1h",
        ],
        &second,
    ));
    assert_eq!(mine.lines().count(), 1, "only the header: {mine}");
    let file = data.path().join("echo_db9.yaml");
    std::fs::write(
        &file,
        "pack: examples\nname: echo_db9\ntrigger: {type: examples.alert}\ncriteria:\n  trigger.host: {type: equals, pattern: db9}\naction: {ref: core.echo, parameters: {message: seen}}\n",
    )
    .unwrap();
    let created = sluice(&["rule", "create", file.to_str().unwrap()], &second);
    assert!(created.status.success(), "{}", text(&created));
    assert_eq!(
        text(&created),
        "examples.echo_db9 defined (enabled); `sluice rule get examples.echo_db9` shows it\n"
    );
    let shown = text(&sluice(&["rule", "get", "examples.echo_db9"], &second));
    assert!(shown.contains("\"origin\": \"api\""), "{shown}");
    let rules = text(&sluice(&["rule", "list"], &second));
    assert!(rules.contains("examples.echo_db9"), "{rules}");
    let deleted = sluice(&["rule", "delete", "examples.echo_db9"], &second);
    assert!(deleted.status.success(), "{}", text(&deleted));
    let from_file = sluice(&["rule", "delete", "examples.log_alert"], &second);
    assert!(!from_file.status.success());
    assert!(
        text(&from_file).contains("change it there (HTTP 409)"),
        "{}",
        text(&from_file)
    );
    // A pack from this host's disk, uploaded, run by the worker from the version it fetched,
    // then removed.
    let pack = data.path().join("greet-src");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "ref: greet\nversion: 0.1.0\n").unwrap();
    std::fs::write(
        pack.join("actions/hello.yaml"),
        "name: hello\nrunner_type: local-shell-script\nentry_point: hello.sh\n",
    )
    .unwrap();
    std::fs::write(pack.join("actions/hello.sh"), "echo hello from greet\n").unwrap();
    let installed = text(&sluice(
        &["pack", "install", pack.to_str().unwrap()],
        &second,
    ));
    assert!(
        installed
            .starts_with("pack greet 0.1.0 installed: 1 actions, 0 triggers, 0 rules (sha256:"),
        "{installed}"
    );
    let ran = text(&sluice(&["run", "greet.hello", "--wait"], &second));
    assert!(ran.contains("hello from greet"), "{ran}");
    let reloaded = text(&sluice(&["pack", "reload", "greet"], &second));
    assert!(reloaded.contains("reloaded"), "{reloaded}");
    let removed = sluice(&["pack", "remove", "greet"], &second);
    assert_eq!(text(&removed), "pack greet removed\n");
    let gone = sluice(&["pack", "show", "greet"], &second);
    assert!(!gone.status.success());
    assert!(text(&gone).contains("(HTTP 404)"), "{}", text(&gone));
    // A command's output is its own: no connection notes mixed in.
    let published = Command::new(SLUICE)
        .args([
            "trigger",
            "examples.alert",
            r#"{"host":"web3","severity":"info"}"#,
        ])
        .env("SLUICE_DATA_DIR", &second.data_dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(
        text(&published),
        "published to sluice.trigger.examples.alert\n",
        "{}",
        text(&published)
    );
    let triggers = text(&sluice(&["trigger", "list"], &second));
    assert!(
        triggers.lines().any(|l| l.starts_with("examples.alert ")
            && l.contains("sluice.trigger.examples.alert")
            && l.contains("examples.log_alert")),
        "{triggers}"
    );
    let shown = text(&sluice(&["trigger", "show", "examples.alert"], &second));
    assert!(shown.contains("\"payload_schema\""), "{shown}");
    let actions = text(&sluice(&["action", "list"], &second));
    assert!(
        actions
            .lines()
            .any(|l| l.starts_with("core.local ") && l.contains("local-shell-cmd")),
        "{actions}"
    );
    let action = text(&sluice(&["action", "show", "core.local"], &second));
    assert!(action.contains("\"rules\""), "{action}");
    let workers = text(&sluice(&["workers"], &second));
    assert!(
        workers.lines().nth(1).is_some_and(|l| l.ends_with("live")),
        "{workers}"
    );
    // Live output through `sluice up`'s NATS users: the worker may publish it.
    let started = sluice(
        &[
            "run",
            "core.local",
            "cmd=echo first; sleep 1; echo second",
            "--json",
        ],
        &second,
    );
    let started: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    let id = started["id"].to_string();
    let watched = sluice(&["execution", "get", &id, "--watch"], &second);
    assert!(watched.status.success(), "{}", text(&watched));
    let watched = text(&watched);
    let statuses: Vec<&str> = watched
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "requested",
            "scheduling",
            "scheduled",
            "running",
            "succeeded"
        ],
        "{watched}"
    );
    assert!(watched.contains("status:     succeeded"), "{watched}");
    let tailed = sluice(&["execution", "tail", &id], &second);
    assert!(tailed.status.success(), "{}", text(&tailed));
    assert_eq!(String::from_utf8_lossy(&tailed.stdout), "first\nsecond\n");
    let nothing = sluice(&["execution", "cancel-all"], &second);
    assert!(!nothing.status.success());
    assert!(
        text(&nothing).contains("name what to cancel"),
        "{}",
        text(&nothing)
    );
    let none = sluice(
        &["execution", "cancel-all", "--action", "core.sleep"],
        &second,
    );
    assert_eq!(
        text(&none),
        "0 execution(s) cancelled or asked to cancel\n",
        "{}",
        text(&none)
    );
    let refused = sluice(&["rule", "disable", "../tokens"], &second);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("pack.name"), "{}", text(&refused));

    // The datastore from the CLI: set, read masked and in clear, list, rotate, delete.
    let set = sluice(
        &["key", "set", "api_token", "tok-9f2e", "--secret"],
        &second,
    );
    assert!(set.status.success(), "{}", text(&set));
    assert!(
        text(&set).starts_with("system.api_token set (revision "),
        "{}",
        text(&set)
    );
    let set = sluice(
        &[
            "key",
            "set",
            "limits",
            r#"{"n": 3}"#,
            "--json-value",
            "--pack",
            "examples",
            "--ttl",
            "1h",
        ],
        &second,
    );
    assert!(
        text(&set).contains("pack.examples.limits set"),
        "{}",
        text(&set)
    );
    assert_eq!(
        text(&sluice(&["key", "get", "api_token"], &second)),
        "********\n"
    );
    assert_eq!(
        text(&sluice(&["key", "get", "api_token", "--decrypt"], &second)),
        "tok-9f2e\n"
    );
    let list = text(&sluice(&["key", "list"], &second));
    assert!(list.starts_with("KEY"), "{list}");
    assert!(
        list.contains("pack.examples.limits") && list.contains(r#"{"n":3}"#),
        "{list}"
    );
    assert!(!list.contains("tok-9f2e"), "{list}");
    let rotated = text(&sluice(&["key", "rotate"], &second));
    assert!(rotated.starts_with("new secrets key "), "{rotated}");
    assert_eq!(
        text(&sluice(&["key", "get", "api_token", "--decrypt"], &second)),
        "tok-9f2e\n"
    );
    let deleted = sluice(&["key", "delete", "api_token"], &second);
    assert_eq!(text(&deleted), "system.api_token deleted\n");
    let missing = sluice(&["key", "get", "api_token"], &second);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no key system.api_token (HTTP 404)"),
        "{}",
        text(&missing)
    );

    // SIGTERM drains and exits cleanly, taking nats-server down with it.
    let nats_pid = std::fs::read_to_string(data.path().join("nats-server.pid"))
        .unwrap()
        .trim()
        .to_owned();
    Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    let status = second.child.wait().unwrap();
    assert!(status.success(), "sluice up exited with {status}");
    assert!(process_is_dead(&nats_pid));
}

#[test]
fn shell_completions_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(SLUICE)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for command in ["execution", "re-run", "cancel-all", "rule", "event", "pack"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
}

#[test]
fn a_missing_nats_server_names_the_install_command() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(SLUICE)
        .args([
            "up",
            "--nats-port",
            &free_port().to_string(),
            "--http",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(data.path())
        .env("PATH", data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("apt-get install -y nats-server"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_broken_pack_is_left_out_with_file_and_field_and_the_others_load() {
    let packs = tempfile::tempdir().unwrap();
    let pack = packs.path().join("bad");
    std::fs::create_dir_all(pack.join("rules")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "ref: bad\n").unwrap();
    std::fs::write(
        pack.join("rules/r.yaml"),
        "name: r\ntrigger: {type: examples.alert}\naction: {ref: core.nope}\n",
    )
    .unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
    let up = up_with(
        &packs.path().join("data"),
        free_port(),
        free_port(),
        &[
            "--packs",
            bundled.to_str().unwrap(),
            "--packs",
            packs.path().to_str().unwrap(),
        ],
    );

    let listed = sluice(&["pack", "list"], &up);
    let listed = text(&listed);
    let bad = listed
        .lines()
        .position(|l| l.starts_with("bad "))
        .unwrap_or_else(|| panic!("{listed}"));
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[bad].contains("left out"), "{listed}");
    assert!(
        lines[bad + 1].contains("bad/rules/r.yaml: action.ref: unknown action core.nope"),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("examples ") && l.contains("loaded")),
        "{listed}"
    );
    let ran = sluice(&["run", "core.echo", "message=still here", "--wait"], &up);
    assert!(ran.status.success(), "the other packs run: {}", text(&ran));
}

/// `--threads` sets how many threads run the process's tasks: `sluice up --threads 1` runs
/// an action end to end on one thread and says so on /metrics. Zero is refused, naming the
/// flag.
#[test]
fn threads_sets_the_process_s_runtime_and_zero_is_refused() {
    let refused = Command::new(SLUICE)
        .args(["worker", "--threads", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("invalid value '0' for '--threads <THREADS>'"),
        "{}",
        text(&refused)
    );

    let data = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let metrics_http = format!("127.0.0.1:{metrics_port}");
    let up = up_with(
        data.path(),
        free_port(),
        free_port(),
        &["--threads", "1", "--metrics-http", &metrics_http],
    );
    let ran = sluice(
        &["run", "core.echo", "message=on one thread", "--wait"],
        &up,
    );
    assert!(ran.status.success(), "{}", text(&ran));
    assert!(text(&ran).contains("on one thread"), "{}", text(&ran));

    let mut scrape = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    std::io::Write::write_all(&mut scrape, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut metrics = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut metrics).unwrap();
    assert!(
        metrics.contains("\nsluice_runtime_threads 1.0\n"),
        "{metrics}"
    );
}

#[test]
fn an_unreachable_nats_server_is_named() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let out = Command::new(SLUICE)
        .args(["worker", "--nats-url", &url, "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("cannot connect to NATS at {url}")),
        "{}",
        text(&out)
    );
}

/// The nats-server `sluice up` starts refuses anonymous clients, and limits each user as
/// [`each_user_is_limited`] checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_s_nats_server_refuses_strangers_and_limits_each_user() {
    let data = tempfile::tempdir().unwrap();
    let (nats_port, http_port) = (free_port(), free_port());
    let _up = up(data.path(), nats_port, http_port);
    let url = |user: &str| {
        format!(
            "nats://{user}:{}@127.0.0.1:{nats_port}",
            nats_password(data.path(), user)
        )
    };
    let mode = std::fs::metadata(data.path().join("nats-users"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    each_user_is_limited(nats_port, &url).await;
}

/// deploy/nats/nats-server.conf gives its users what `sluice up` gives its own server's,
/// and a nats-server running it limits them the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_nats_config_limits_each_user_the_same_way() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats-server.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let squeeze = |s: &str| s.split_whitespace().collect::<String>();
    for role in [
        sluice::nats::Role::Engine,
        sluice::nats::Role::Worker,
        sluice::nats::Role::Publisher,
    ] {
        assert!(
            squeeze(&text).contains(&squeeze(role.permissions())),
            "{role:?}'s permissions differ from sluice up's"
        );
    }
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .env("SLUICE_NATS_ENGINE_PASSWORD", "engine-pw")
        .env("SLUICE_NATS_WORKER_PASSWORD", "worker-pw")
        .env("SLUICE_NATS_PUBLISHER_PASSWORD", "publisher-pw")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sluice_testkit::wait_for_port(port, Duration::from_secs(10)).unwrap();
    let url = |user: &str| format!("nats://{user}:{user}-pw@127.0.0.1:{port}");
    // What the engine sets up on its first start.
    let bus = sluice_bus::Bus::connect(&url("engine"), "engine")
        .await
        .unwrap();
    sluice_bus::datastore::Datastore::create(&bus)
        .await
        .unwrap();
    each_user_is_limited(port, &url).await;
    let _ = server.kill();
    let _ = server.wait();
}

/// deploy/kubernetes/nats-values.yaml gives each user the subjects `sluice up` gives it, in
/// the same order.
#[test]
fn the_helm_values_give_each_nats_user_what_sluice_up_gives_it() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/nats-values.yaml");
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let users = values["config"]["merge"]["authorization"]["users"]
        .as_array()
        .expect("config.merge.authorization.users");
    let quoted = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    for (name, role) in [
        ("engine", sluice::nats::Role::Engine),
        ("worker", sluice::nats::Role::Worker),
        ("publisher", sluice::nats::Role::Publisher),
    ] {
        let user = users
            .iter()
            .find(|u| u["user"] == name)
            .unwrap_or_else(|| panic!("no user {name}"));
        let permissions = &user["permissions"];
        let mut subjects = Vec::new();
        for direction in ["publish", "subscribe"] {
            match &permissions[direction] {
                serde_json::Value::String(one) => subjects.push(one.clone()),
                other => subjects.extend(
                    other["allow"]
                        .as_array()
                        .unwrap_or_else(|| panic!("{name}.{direction}.allow"))
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned()),
                ),
            }
        }
        assert_eq!(subjects, quoted(role.permissions()), "{name}");
        assert_eq!(
            user["password"],
            format!("<< $SLUICE_NATS_{}_PASSWORD >>", name.to_uppercase()),
            "{name}'s password comes from the environment"
        );
    }
}

/// deploy/nats/nats-cluster.conf, run by three servers (its host names mapped to loopback
/// ports), forms a cluster that keeps the engine's streams in three copies; a server that
/// does not know the route password is not let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_nats_cluster_config_forms_a_cluster() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    let text = std::fs::read_to_string(deploy.join("nats-cluster.conf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy.join("nats-server.conf"),
        dir.path().join("nats-server.conf"),
    )
    .unwrap();
    let routes: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let start = |i: usize, route_password: &str| {
        let conf = text.replace("0.0.0.0:6222", &format!("127.0.0.1:{}", routes[i]));
        let file = dir.path().join(format!("nats-{}.conf", i + 1));
        std::fs::write(&file, conf).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("nats-{}.log", i + 1))).unwrap();
        Command::new("nats-server")
            .arg("-c")
            .arg(&file)
            .args(["--name", &format!("nats-{}", i + 1)])
            .args(["-a", "127.0.0.1", "-p", &ports[i].to_string(), "-sd"])
            .arg(dir.path().join(format!("store-{}", i + 1)))
            .env("SLUICE_NATS_ROUTE_PASSWORD", route_password)
            .envs((0..3).map(|n| {
                (
                    format!("SLUICE_NATS_ROUTE_{}", n + 1),
                    format!(
                        "nats-route://route:{route_password}@127.0.0.1:{}",
                        routes[n]
                    ),
                )
            }))
            .env("SLUICE_NATS_ENGINE_PASSWORD", "engine-pw")
            .env("SLUICE_NATS_WORKER_PASSWORD", "worker-pw")
            .env("SLUICE_NATS_PUBLISHER_PASSWORD", "publisher-pw")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    struct Servers(Vec<Child>);
    impl Drop for Servers {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut servers = Servers((0..3).map(|i| start(i, "route-pw")).collect());
    let urls: Vec<String> = ports[..3]
        .iter()
        .map(|port| format!("nats://engine:engine-pw@127.0.0.1:{port}"))
        .collect();
    // Three replicas need all three servers routed to one another and a JetStream leader.
    let started = Instant::now();
    let bus = loop {
        let attempt = async {
            let bus = sluice_bus::Bus::attach(&urls.join(","), "engine", &Default::default())
                .await?
                .with_stream_replicas(3);
            bus.ensure_streams().await?;
            anyhow::Ok(bus)
        };
        match attempt.await {
            Ok(bus) => break bus,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the cluster never took three-replica streams: {e:#}\n{}",
                    std::fs::read_to_string(dir.path().join("nats-1.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let client = sluice_bus::connect_client(&urls[0], "test", &Default::default())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut run = jetstream.get_stream("RUN").await.unwrap();
    let info = run.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.clone().expect("a clustered stream");
    assert_eq!(
        cluster.replicas.len(),
        2,
        "a leader and two followers: {cluster:?}"
    );
    drop(bus);

    // A fourth server with the wrong route password knocks and is refused.
    servers.0.push(start(3, "guess"));
    let log = dir.path().join("nats-4.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Authorization Violation")
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no route refused the stranger"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not in the cluster, it has none of the cluster's streams.
    let stranger = sluice_bus::connect_client(
        &format!("nats://engine:engine-pw@127.0.0.1:{}", ports[3]),
        "test",
        &Default::default(),
    )
    .await
    .unwrap();
    let stranger = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(stranger);
    assert!(
        stranger.get_stream("RUN").await.is_err(),
        "the server with the wrong route password joined the cluster"
    );
}

/// Anonymous clients and wrong passwords are refused; a worker's user takes and settles
/// run messages and reads the datastore, but cannot publish a run message, read triggers or
/// write the datastore; the publisher's user publishes triggers and nothing else.
async fn each_user_is_limited(nats_port: u16, url: &dyn Fn(&str) -> String) {
    use futures::StreamExt as _;
    let anonymous = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    let wrong = sluice_bus::connect_client(
        &format!("nats://worker:guess@127.0.0.1:{nats_port}"),
        "test",
        &Default::default(),
    )
    .await;
    assert!(wrong.is_err(), "a wrong password was let in");

    let jetstream = |client: async_nats::Client| {
        async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client)
    };
    let engine = jetstream(
        sluice_bus::connect_client(&url("engine"), "test", &Default::default())
            .await
            .unwrap(),
    );
    let run_messages = || async {
        engine
            .get_stream("RUN")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    let before = run_messages().await;

    let worker_client = sluice_bus::connect_client(&url("worker"), "test", &Default::default())
        .await
        .unwrap();
    let worker = jetstream(worker_client.clone());
    let forged = worker
        .publish("sluice.run.default", "run me".into())
        .await
        .unwrap()
        .await;
    assert!(forged.is_err(), "a worker published a run message");
    assert!(
        worker.get_stream("TRIGGERS").await.is_err(),
        "a worker read the TRIGGERS stream"
    );
    // The datastore: the engine writes it; a worker reads it and cannot write it.
    engine
        .get_key_value("sluice-datastore")
        .await
        .unwrap()
        .put("system.probe", r#"{"value":1}"#.into())
        .await
        .unwrap();
    let datastore = worker.get_key_value("sluice-datastore").await.unwrap();
    assert_eq!(
        datastore.get("system.probe").await.unwrap().as_deref(),
        Some(&br#"{"value":1}"#[..]),
        "a worker reads the datastore"
    );
    assert!(
        datastore
            .put("system.probe", "forged".into())
            .await
            .is_err(),
        "a worker wrote the datastore"
    );
    let mut snoop = worker_client.subscribe("sluice.trigger.>").await.unwrap();
    assert!(
        worker.get_stream("RUN").await.is_ok(),
        "a worker reads its own stream"
    );

    let publisher_client =
        sluice_bus::connect_client(&url("publisher"), "test", &Default::default())
            .await
            .unwrap();
    let publisher = jetstream(publisher_client.clone());
    let forged = publisher
        .publish("sluice.run.default", "run me".into())
        .await
        .unwrap()
        .await;
    assert!(forged.is_err(), "the publisher published a run message");
    publisher_client
        .publish(
            "sluice.trigger.examples.alert",
            r#"{"host":"x","severity":"info"}"#.into(),
        )
        .await
        .unwrap();
    publisher_client.flush().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(500), snoop.next()).await;
    assert!(!matches!(heard, Ok(Some(_))), "a worker heard a trigger");
    assert_eq!(
        run_messages().await,
        before,
        "a forged run message was stored"
    );
}

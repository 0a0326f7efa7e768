//! Real servers for Sluice's tests: a `nats-server -js` and a PostgreSQL cluster, each
//! started on a free port with its own temporary directory and torn down on `Drop`, and an
//! OTLP trace receiver that keeps what it is sent.
//! Nothing here is a fake; a test that needs a broker or a database gets a real one.

mod net;
mod otlp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use net::{free_port, wait_for_port};
pub use otlp::{OtlpReceiver, ReceivedSpan};

/// The JetStream file storage a test server may reserve for its streams.
const TEST_FILE_STORE: &str = "64GB";
/// The JetStream memory storage a test server may reserve.
const TEST_MEMORY_STORE: &str = "1GB";

/// A `nats-server` with JetStream, owned by the test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store_dir: tempfile::TempDir,
    /// Configuration text added to the server's (authorization, TLS, ...).
    config: Option<String>,
    /// The JetStream file storage its streams may reserve (nats-server's size syntax).
    file_store: &'static str,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory.
    pub fn start() -> Self {
        Self::launch(None, TEST_FILE_STORE)
    }

    /// Starts a server whose JetStream may reserve only `limit` of file storage
    /// (`"100MB"`), as a server on a nearly full disk would.
    pub fn start_with_file_store(limit: &'static str) -> Self {
        Self::launch(None, limit)
    }

    /// Starts a server whose configuration file also holds `config` (nats-server's syntax:
    /// `authorization { ... }`, `tls { ... }`).
    pub fn start_with_config(config: &str) -> Self {
        Self::launch(Some(config.to_owned()), TEST_FILE_STORE)
    }

    fn launch(config: Option<String>, file_store: &'static str) -> Self {
        let store_dir = tempfile::Builder::new()
            .prefix("sluice-nats-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            child: None,
            port: free_port(),
            store_dir,
            config,
            file_store,
        };
        server
            .spawn()
            .expect("failed to start nats-server (install it: apt-get install -y nats-server)");
        server
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // JetStream reserves each stream's `max_bytes` from its storage budget, which is 75%
        // of the free disk unless configured. A fixed budget keeps the tests independent of
        // how full the machine's disk is; they write megabytes, never the gigabytes reserved.
        let file = self.store_dir.path().join("server.conf");
        let store = serde_json::to_string(&self.store_dir.path().join("js").display().to_string())?;
        std::fs::write(
            &file,
            format!(
                "listen: \"127.0.0.1:{}\"\njetstream {{ store_dir: {store}, max_file_store: {}, max_memory_store: {TEST_MEMORY_STORE} }}\n{}\n",
                self.port,
                self.file_store,
                self.config.as_deref().unwrap_or_default()
            ),
        )?;
        let mut command = Command::new("nats-server");
        command.arg("-c").arg(file);
        let log = std::fs::File::create(self.store_dir.path().join("server.log"))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to run nats-server")?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10)).with_context(|| {
            let log = std::fs::read_to_string(self.store_dir.path().join("server.log"))
                .unwrap_or_default();
            format!("nats-server said: {}", log.trim())
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn store_dir(&self) -> &Path {
        self.store_dir.path()
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("failed to restart nats-server");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server`s joined in one JetStream cluster, each on its own ports and store.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers routed to each other; JetStream elects its leader shortly
    /// after, so the first stream set up on it may have to wait for that.
    pub fn start() -> Self {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = (0..3)
            .map(|i| {
                let others = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                NatsServer::start_with_config(&format!(
                    "server_name: n{i}\ncluster {{\n  name: sluice-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{others}]\n}}\n",
                    routes[i]
                ))
            })
            .collect();
        Self { nodes }
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(binary: &str) -> Command {
    let path = Path::new(PG_BIN).join(binary);
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a free port.
pub struct Postgres {
    data_dir: PathBuf,
    root: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    pub fn start() -> Self {
        Self::try_start()
            .expect("failed to start PostgreSQL (install it: apt-get install -y postgresql)")
    }

    fn try_start() -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("sluice-pg-").tempdir()?;
        if running_as_root() {
            let uid = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .context("no postgres user")?;
            let gid = Command::new("id")
                .args(["-g", "postgres"])
                .output()
                .context("no postgres group")?;
            let parse =
                |o: std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>();
            std::os::unix::fs::chown(root.path(), Some(parse(uid)?), Some(parse(gid)?))?;
        }
        let data_dir = root.path().join("data");
        let port = free_port();
        let status = pg_command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("failed to run initdb")?;
        if !status.success() {
            bail!("initdb failed: {status}");
        }
        let postgres = Self {
            data_dir,
            root,
            port,
        };
        postgres.pg_ctl_start()?;
        Ok(postgres)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.root.path().display()
        );
        let status = pg_command("pg_ctl")
            .args(["-w", "-t", "30", "-o", &options, "-l"])
            .arg(self.root.path().join("postgres.log"))
            .arg("-D")
            .arg(&self.data_dir)
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("failed to run pg_ctl")?;
        if !status.success() {
            bail!("pg_ctl start failed: {status}");
        }
        Ok(())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, every
    /// connection dropped), as a crash would.
    pub fn stop(&self) {
        let _ = pg_command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data_dir)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&self) {
        self.pg_ctl_start()
            .expect("failed to start PostgreSQL again");
    }

    /// Everything the `postgres` database holds, as `pg_dump` writes it.
    pub fn dump(&self) -> Vec<u8> {
        let output = pg_command("pg_dump")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .expect("failed to run pg_dump");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// A URL for the `postgres` database of this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's processes: the postmaster (the first line of its `postmaster.pid`)
    /// and every process it started (its connections' backends, the writers).
    pub fn pids(&self) -> Vec<u32> {
        let Some(postmaster) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let children = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // The parent pid is the second field after the command name, in parentheses.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        let (_, rest) = stat.rsplit_once(')')?;
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(postmaster)
            });
        std::iter::once(postmaster).chain(children).collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

//! The `nats-server` that `sluice up` starts, owns and stops.
//!
//! The child is tied to this process with `PR_SET_PDEATHSIG`: if `sluice up` dies, even by
//! `kill -9`, the kernel kills the server too, so a restart on the same data directory finds
//! the port free and the JetStream store intact.
//!
//! It is not open: it takes three users, whose passwords are made on the first start and
//! kept in `<data-dir>/nats-users` (mode 0600), and refuses anonymous connections.
//!
//! | user | may |
//! |---|---|
//! | `engine` | everything |
//! | `worker` | take run messages from the `workers` consumer and settle them, read the last status of an execution, publish status reports, heartbeats, live output and run dead letters, hear cancel requests, read the datastore and the packs object store, put results too large for a report in the results object store, ask an engine for its actions' datastore requests (`sluice.datastore.request`). Not publish run messages, not read triggers, not write the datastore bucket itself |
//! | `publisher` | publish triggers (`sluice.trigger.>`), nothing else; its URL is in `<data-dir>/nats-publisher.url` for `sluice trigger` and `nats pub` |

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::info;

/// Where `sluice up` writes the URL that may publish triggers, for `sluice trigger`.
pub const PUBLISHER_URL_FILE: &str = "nats-publisher.url";

pub const INSTALL_HINT: &str = "nats-server is not installed; install it with `sudo apt-get install -y nats-server` \
     (or start Sluice with --nats-url to use a running server)";

pub struct NatsChild {
    child: Child,
    log: PathBuf,
    port: u16,
    users: Users,
}

/// Who connects to the server `sluice up` starts.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Engine,
    Worker,
    Publisher,
}

impl Role {
    const ALL: [Role; 3] = [Role::Engine, Role::Worker, Role::Publisher];

    fn user(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Worker => "worker",
            Self::Publisher => "publisher",
        }
    }

    /// The user's permissions, in nats-server's configuration syntax; `deploy/nats/` gives
    /// its users the same.
    pub fn permissions(self) -> &'static str {
        match self {
            Self::Engine => r#"{ publish: ">", subscribe: ">" }"#,
            Self::Worker => {
                r#"{
        publish: { allow: [
          "sluice.status.>", "sluice.heartbeat.>", "sluice.output.>", "sluice.deadletter.run",
          "sluice.datastore.request",
          "$JS.API.STREAM.INFO.RUN", "$JS.API.STREAM.INFO.STATUS",
          "$JS.API.CONSUMER.INFO.RUN.workers", "$JS.API.CONSUMER.MSG.NEXT.RUN.workers",
          "$JS.ACK.RUN.workers.>",
          "$JS.API.STREAM.MSG.GET.STATUS",
          "$JS.API.DIRECT.GET.STATUS.>",
          "$JS.API.STREAM.INFO.KV_sluice-datastore", "$JS.API.STREAM.MSG.GET.KV_sluice-datastore",
          "$JS.API.DIRECT.GET.KV_sluice-datastore.>",
          "$JS.API.STREAM.INFO.OBJ_sluice-packs", "$JS.API.STREAM.MSG.GET.OBJ_sluice-packs",
          "$JS.API.DIRECT.GET.OBJ_sluice-packs.>", "$JS.API.CONSUMER.CREATE.OBJ_sluice-packs",
          "$JS.FC.OBJ_sluice-packs.>",
          "$JS.API.STREAM.INFO.OBJ_sluice-results", "$JS.API.STREAM.MSG.GET.OBJ_sluice-results",
          "$JS.API.DIRECT.GET.OBJ_sluice-results.>", "$JS.API.STREAM.PURGE.OBJ_sluice-results",
          "$O.sluice-results.>"
        ] }
        subscribe: { allow: ["_INBOX.>", "sluice.cancel.>"] }
      }"#
            }
            Self::Publisher => {
                r#"{ publish: { allow: ["sluice.trigger.>"] }, subscribe: { allow: ["_INBOX.>"] } }"#
            }
        }
    }
}

/// The users' passwords, by role.
#[derive(Clone)]
struct Users(Vec<(&'static str, String)>);

impl Users {
    /// The passwords in `path`, made (and written, mode 0600) on the first start.
    fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        let known: std::collections::HashMap<String, String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let mut users = Vec::new();
        for role in Role::ALL {
            let password = match known.get(role.user()) {
                Some(password) => password.clone(),
                None => {
                    let mut bytes = [0u8; 24];
                    getrandom::fill(&mut bytes)
                        .map_err(|e| anyhow::anyhow!("no randomness for a password: {e}"))?;
                    hex::encode(bytes)
                }
            };
            users.push((role.user(), password));
        }
        let text: String = users.iter().map(|(u, p)| format!("{u}={p}\n")).collect();
        write_private(path, &text)?;
        Ok(Self(users))
    }

    fn password(&self, role: Role) -> &str {
        self.0
            .iter()
            .find(|(user, _)| *user == role.user())
            .map(|(_, p)| p.as_str())
            .unwrap_or_default()
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}

/// A JSON string: how a path is quoted in nats-server's configuration.
fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid); it allocates nothing.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

impl NatsChild {
    /// Starts `nats-server -js` on 127.0.0.1:`port` with its store under `data_dir/nats` and
    /// waits until it accepts connections.
    pub fn start(data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let store = data_dir.join("nats");
        std::fs::create_dir_all(&store)
            .with_context(|| format!("failed to create {}", store.display()))?;
        let log = data_dir.join("nats-server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let users = Users::load_or_create(&data_dir.join("nats-users"))?;
        let mut conf = format!(
            "listen: \"127.0.0.1:{port}\"\npid_file: {}\njetstream {{ store_dir: {} }}\nauthorization {{\n  users = [\n",
            quoted(&data_dir.join("nats-server.pid")),
            quoted(&store)
        );
        for role in Role::ALL {
            conf.push_str(&format!(
                "    {{ user: {}, password: \"{}\", permissions: {} }}\n",
                role.user(),
                users.password(role),
                role.permissions()
            ));
        }
        conf.push_str("  ]\n}\n");
        let conf_path = data_dir.join("nats-server.conf");
        write_private(&conf_path, &conf)?;
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(INSTALL_HINT),
            Err(e) => return Err(e).context("failed to start nats-server"),
        };
        let mut server = Self {
            child,
            log,
            port,
            users,
        };
        server.wait_ready(port)?;
        write_private(
            &data_dir.join(PUBLISHER_URL_FILE),
            &format!("{}\n", server.url(Role::Publisher)),
        )?;
        info!(port, pid = server.child.id(), store = %store.display(), "nats-server started");
        Ok(server)
    }

    fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "nats-server exited ({status}) before accepting connections on port {port}; is the port taken? (--nats-port); its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on port {port} within 15s; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL `role` connects with, its user and password in it.
    pub fn url(&self, role: Role) -> String {
        format!(
            "nats://{}:{}@127.0.0.1:{}",
            role.user(),
            self.users.password(role),
            self.port
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the server to stop (SIGTERM flushes JetStream) and waits for it.
    #[allow(unsafe_code)]
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

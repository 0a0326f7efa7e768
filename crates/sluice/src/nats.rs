//! The `nats-server` that `sluice up` starts, owns and stops.
//!
//! The child is tied to this process with `PR_SET_PDEATHSIG`: if `sluice up` dies, even by
//! `kill -9`, the kernel kills the server too, so a restart on the same data directory finds
//! the port free and the JetStream store intact.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::info;

pub const INSTALL_HINT: &str = "nats-server is not installed; install it with `sudo apt-get install -y nats-server` \
     (or start Sluice with --nats-url to use a running server)";

pub struct NatsChild {
    child: Child,
    log: PathBuf,
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
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .arg("-P")
            .arg(data_dir.join("nats-server.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        die_with_parent(&mut command);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(INSTALL_HINT),
            Err(e) => return Err(e).context("failed to start nats-server"),
        };
        let mut server = Self { child, log };
        server.wait_ready(port)?;
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

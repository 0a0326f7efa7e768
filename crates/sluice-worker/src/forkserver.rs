//! Warm interpreters for python actions: one fork server per Python (the system's, or a
//! pack's virtualenv), started the first time an action needs it, which forks one child
//! per execution (`python/sluice_forkserver.py`). Each execution still gets a process of
//! its own, in a process group of its own, with its own environment, working directory,
//! limits and standard streams; what it skips is starting an interpreter and importing
//! Sluice's wrapper.
//!
//! The child's stdin, stdout and stderr are pipes the worker made, handed to the server
//! with the request (`SCM_RIGHTS`), so the worker writes and reads them as it does a
//! process's own. A server that died is started again by the next execution that needs
//! it; one whose worker died ends on its own within a second.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// How long a new server has to start listening.
const START_WITHIN: Duration = Duration::from_secs(20);

/// The fork servers of one worker, by interpreter.
#[derive(Debug, Default)]
pub struct ForkServers {
    servers: Mutex<HashMap<PathBuf, Server>>,
}

#[derive(Debug)]
struct Server {
    socket: PathBuf,
    process: Child,
    /// Holds the socket; removed with the server.
    _dir: tempfile::TempDir,
}

/// A forked execution: its pid, and the line that will say how it ended.
pub(crate) struct Forked {
    pub(crate) pid: u32,
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    _write: OwnedWriteHalf,
}

impl Forked {
    /// The child's exit code (negative: the signal that ended it).
    pub(crate) async fn wait(&mut self) -> Result<i32, String> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| format!("the python fork server: {e}"))?
            .ok_or("the python fork server stopped while the action ran")?;
        let answer: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        answer["exit"]
            .as_i64()
            .and_then(|code| i32::try_from(code).ok())
            .ok_or_else(|| format!("the python fork server answered {answer}"))
    }
}

impl ForkServers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forks a child of `python`'s server for `request` (see the server's description),
    /// with `streams` (the read end of its stdin, the write ends of its stdout and stderr).
    pub(crate) async fn fork(
        &self,
        python: &Path,
        request: &Value,
        streams: [OwnedFd; 3],
    ) -> Result<Forked, String> {
        let socket = self.socket_for(python).await?;
        let mut line = request.to_string();
        line.push('\n');
        let stream = tokio::task::spawn_blocking(move || {
            let stream = std::os::unix::net::UnixStream::connect(&socket)?;
            let fds = streams.each_ref().map(AsRawFd::as_raw_fd);
            send_with_fds(&stream, line.as_bytes(), &fds)?;
            // The child has its own copies once forked; the worker keeps none.
            drop(streams);
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await
        .map_err(|e| e.to_string())?
        .and_then(UnixStream::from_std)
        .map_err(|e| format!("cannot reach the python fork server: {e}"))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let first = lines
            .next_line()
            .await
            .map_err(|e| format!("the python fork server: {e}"))?
            .ok_or("the python fork server stopped before it forked")?;
        let answer: Value = serde_json::from_str(&first).map_err(|e| e.to_string())?;
        let pid = answer["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .ok_or_else(|| format!("the python fork server answered {answer}"))?;
        Ok(Forked {
            pid,
            lines,
            _write: write,
        })
    }

    /// The socket of `python`'s server, started (again) if need be.
    async fn socket_for(&self, python: &Path) -> Result<PathBuf, String> {
        let mut servers = self.servers.lock().await;
        if let Some(server) = servers.get_mut(python) {
            if matches!(server.process.try_wait(), Ok(None)) {
                return Ok(server.socket.clone());
            }
            warn!(python = %python.display(), "the python fork server had stopped; starting it again");
            servers.remove(python);
        }
        let server = start(python).await?;
        let socket = server.socket.clone();
        servers.insert(python.to_owned(), server);
        Ok(socket)
    }
}

async fn start(python: &Path) -> Result<Server, String> {
    let library = crate::python::library()?;
    let dir = tempfile::Builder::new()
        .prefix("sluice-forks-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the python fork server: {e}"))?;
    let socket = dir.path().join("server.sock");
    let ready = dir.path().join("server.sock.ready");
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg("import sys, sluice_forkserver; sluice_forkserver.main(sys.argv[1])")
        .arg(&socket)
        .env("PYTHONPATH", library)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    crate::child_env::without_own_config(&mut command);
    let mut process = command.spawn().map_err(|e| {
        format!(
            "cannot start the python fork server ({}): {e}",
            python.display()
        )
    })?;
    let deadline = tokio::time::Instant::now() + START_WITHIN;
    while !ready.exists() {
        if let Ok(Some(status)) = process.try_wait() {
            return Err(format!(
                "the python fork server ({}) ended at start: {status}",
                python.display()
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the python fork server did not start listening".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    info!(python = %python.display(), pid = process.id(), "python fork server started");
    Ok(Server {
        socket,
        process,
        _dir: dir,
    })
}

/// Sends `data` and, with its first byte, `fds` (`SCM_RIGHTS`); the rest of `data` after
/// what the first send took goes as plain bytes.
#[allow(unsafe_code)]
fn send_with_fds(
    stream: &std::os::unix::net::UnixStream,
    data: &[u8],
    fds: &[RawFd],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below points into buffers
    // (`iov`, `control`, `data`, `fds`) that outlive the sendmsg call, with their true
    // lengths, and `control` has the room CMSG_SPACE asked for one header.
    let sent = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(header), fd_bytes);
        libc::sendmsg(stream.as_raw_fd(), &message, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stream = stream;
    stream.write_all(&data[sent as usize..])
}

/// The limits of `limits` as the server sets them.
pub(crate) fn limits(limits: sluice_core::ProcessLimits) -> Value {
    let mut set = Vec::new();
    if let Some(mb) = limits.memory_mb {
        set.push(json!(["AS", mb.saturating_mul(1024 * 1024)]));
    }
    if let Some(seconds) = limits.cpu_seconds {
        set.push(json!(["CPU", seconds]));
    }
    if let Some(files) = limits.open_files {
        set.push(json!(["NOFILE", files]));
    }
    Value::Array(set)
}

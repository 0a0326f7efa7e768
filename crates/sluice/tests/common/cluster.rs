//! A Sluice cluster of real processes: one `sluice engine`, any number of `sluice worker`
//! processes, and a nats-server, all owned by the test and killed with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_testkit::{NatsServer, free_port};

use super::api::Api;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

pub struct Cluster {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    http_port: u16,
    engine: Option<Child>,
    workers: HashMap<String, Child>,
    pub http: reqwest::Client,
    /// Send each process's stderr to [`Cluster::log_file`] instead of the test's output.
    pub capture_logs: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.engine.iter_mut().chain(self.workers.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// A nats-server and a pack `t` made of `pack` (path, text) files; nothing else yet.
    pub fn new(pack: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in pack {
            let path = dir.path().join("packs/t").join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        Self {
            nats: NatsServer::start(),
            dir,
            http_port: free_port(),
            engine: None,
            workers: HashMap::new(),
            http: super::anonymous_client(),
            capture_logs: false,
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("runs.log")
    }

    /// Where a process's stderr goes when logs are captured: `<dir>/<process>.log`.
    pub fn log_file(&self, process: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", process.replace('/', "_")))
    }

    fn common_args(&self, command: &mut Command, process: &str, env: &[(&str, String)]) {
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        command
            .arg("--nats-url")
            .arg(self.nats.url())
            .arg("--packs")
            .arg(bundled)
            .arg("--packs")
            .arg(self.dir.path().join("packs"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command.envs(env.iter().map(|(k, v)| (k, v)));
        if self.capture_logs {
            let file = std::fs::File::create(self.log_file(process)).unwrap();
            command.stderr(file);
        }
    }

    pub async fn start_engine(&mut self) {
        self.start_engine_with(&[]).await;
    }

    /// Starts `sluice engine` with extra environment variables.
    pub async fn start_engine_with(&mut self, env: &[(&str, String)]) {
        let mut command = Command::new(SLUICE);
        command.args([
            "engine",
            "--worker-loss-window",
            "2",
            "--lease-ttl",
            "3",
            "--http",
            &format!("127.0.0.1:{}", self.http_port),
            "--data-dir",
        ]);
        command.arg(self.dir.path().join("data"));
        self.common_args(&mut command, "engine", env);
        self.engine = Some(command.spawn().unwrap());
        // A restarted engine is a standby until the lease of the one killed has expired.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !super::is_primary(&self.http, &self.api()).await {
            assert!(Instant::now() < deadline, "engine did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.http = super::client_with_token(&super::admin_token(&self.dir.path().join("data")));
    }

    pub fn kill_engine(&mut self) {
        let mut engine = self.engine.take().unwrap();
        engine.kill().unwrap();
        engine.wait().unwrap();
    }

    pub fn start_worker(&mut self, name: &str, capacity: usize) {
        self.start_worker_with(name, capacity, &[]);
    }

    /// Starts `sluice worker` with extra environment variables.
    pub fn start_worker_with(&mut self, name: &str, capacity: usize, env: &[(&str, String)]) {
        let mut command = Command::new(SLUICE);
        command.args([
            "worker",
            "--worker-name",
            name,
            "--capacity",
            &capacity.to_string(),
            "--heartbeat-interval",
            "0.2",
            "--run-verify-key",
        ]);
        command.arg(self.dir.path().join("data/run-signing.pub"));
        command
            .arg("--secrets-key")
            .arg(self.dir.path().join("data/secrets.key"));
        self.common_args(&mut command, name, env);
        self.workers
            .insert(name.to_owned(), command.spawn().unwrap());
    }

    pub fn kill_worker(&mut self, name: &str) {
        let mut worker = self.workers.remove(name).unwrap();
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The engine's HTTP API.
    pub fn client(&self) -> Api {
        Api {
            http: self.http.clone(),
            base: self.api(),
        }
    }

    /// The engine's text at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client().metrics().await
    }

    pub async fn submit(&self, action: &str, parameters: Value) -> i64 {
        self.client().submit(action, parameters).await
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client().get(path).await.1
    }

    pub async fn execution(&self, id: i64) -> Value {
        self.get(&format!("/api/v1/executions/{id}")).await
    }

    /// Every execution of `action` in full, status history included.
    pub async fn full(&self, executions: &[Value]) -> Vec<Value> {
        let mut full = Vec::with_capacity(executions.len());
        for e in executions {
            full.push(self.execution(e["id"].as_i64().unwrap()).await);
        }
        full
    }

    /// Waits until every execution of `action` (expecting `count`) has `status`.
    pub async fn wait_all(
        &self,
        action: &str,
        count: usize,
        status: &str,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let list = self
                .get(&format!("/api/v1/executions?action={action}&limit=1000"))
                .await;
            let list = list.as_array().unwrap().clone();
            let done = list.iter().filter(|e| e["status"] == status).count();
            if list.len() == count && done == count {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "{done}/{count} {action} executions {status} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

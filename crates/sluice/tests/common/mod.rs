//! Starting Sluice in-process against a real nats-server and a real store.

#![allow(dead_code)]

pub mod api;
pub mod books;
pub mod cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::Api;
use serde_json::Value;
use sluice::config::Config;
use sluice_testkit::{NatsServer, Postgres, eventually, free_port};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn bundled_packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs")
}

#[derive(Clone, Copy, Debug)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// `sluice up` running in this process.
pub struct Sluice {
    pub api: String,
    pub nats: NatsServer,
    pub data_dir: tempfile::TempDir,
    pub config: Config,
    /// Sends the admin token `sluice up` wrote on its first start.
    pub http: reqwest::Client,
    /// That token.
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub postgres: Option<Postgres>,
}

impl Sluice {
    pub async fn start(store: StoreKind, extra_packs: &[PathBuf]) -> Self {
        let nats = NatsServer::start();
        let data_dir = tempfile::tempdir().unwrap();
        let postgres = matches!(store, StoreKind::Postgres).then(Postgres::start);
        let mut packs = vec![bundled_packs()];
        packs.extend_from_slice(extra_packs);
        let config = Config {
            data_dir: data_dir.path().to_owned(),
            packs,
            configs: None,
            worker_packs: Vec::new(),
            http: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            worker_http: None,
            metrics_http: None,
            nats_url: Some(nats.url()),
            nats_port: 0,
            database_url: postgres.as_ref().map(Postgres::url),
            capacity: 8,
            worker_name: Some("test".into()),
            drain_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(200),
            worker_loss_window: Duration::from_secs(2),
            run_signing_key: None,
            nats_options: Default::default(),
            run_verify_keys: Vec::new(),
            secrets_key: None,
            runner: sluice_worker::runner::Settings {
                venvs: Some(std::sync::Arc::new(sluice_worker::venv::Venvs::new(
                    data_dir.path().join("venvs"),
                ))),
                ..Default::default()
            },
            stream_replicas: 1,
            jaeger_url: None,
            public_url: None,
            engine_name: None,
            advertise_url: None,
            lease_ttl: Duration::from_secs(3),
            partitions: None,
        };
        let mut sluice = Self {
            api: format!("http://{}", config.http),
            nats,
            data_dir,
            config,
            http: anonymous_client(),
            token: String::new(),
            stop: None,
            task: None,
            postgres,
        };
        sluice.boot().await;
        sluice
    }

    /// Starts `sluice up` with the current config and waits for the API.
    pub async fn boot(&mut self) {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.task = Some(tokio::spawn(sluice::up::run(config, async {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
        let http = self.http.clone();
        let url = format!("{}/healthz", self.api);
        eventually("the API to answer", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(drop)
            }
        })
        .await;
        self.token = admin_token(self.data_dir.path());
        self.http = client_with_token(&self.token);
    }

    /// Graceful stop, as Ctrl-C does.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().expect("sluice up failed");
        }
    }

    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.unwrap()
    }

    /// Publishes as `nats pub` does: a plain core NATS message.
    pub async fn publish(&self, subject: &str, payload: &[u8]) {
        let client = self.nats_client().await;
        client
            .publish(subject.to_owned(), payload.to_vec().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }

    /// The HTTP API.
    pub fn client(&self) -> Api {
        Api {
            http: self.http.clone(),
            base: self.api.clone(),
        }
    }

    /// The text at `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client().metrics().await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.client().get(path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.client().post(path, body).await
    }

    pub async fn executions(&self) -> Vec<Value> {
        self.get("/api/v1/executions?limit=1000")
            .await
            .1
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `count` executions exist and all are terminal; returns them oldest first.
    pub async fn wait_finished(&self, count: usize) -> Vec<Value> {
        eventually(
            &format!("{count} finished executions"),
            Duration::from_secs(30),
            || async {
                let mut all = self.executions().await;
                let done = all.len() == count && all.iter().all(is_terminal);
                done.then(|| {
                    all.reverse();
                    all
                })
            },
        )
        .await
    }

    /// Waits until execution `id` is terminal.
    pub async fn wait_execution(&self, id: i64) -> Value {
        eventually(
            &format!("execution {id} to finish"),
            Duration::from_secs(30),
            || async move {
                let (_, e) = self.get(&format!("/api/v1/executions/{id}")).await;
                is_terminal(&e).then_some(e)
            },
        )
        .await
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The admin token `sluice up` or `sluice engine` wrote to its data directory.
pub fn admin_token(data_dir: &Path) -> String {
    let file = data_dir.join("admin.token");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("no admin token in {}: {e}", file.display()))
        .trim()
        .to_owned()
}

/// How long a test's HTTP request may take, answer read whole, before it fails naming its
/// URL: a request that never ends is a failure to show, not a test that hangs silently.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// An HTTP client without a token, giving up on a request after [`REQUEST_TIMEOUT`].
pub fn anonymous_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// An HTTP client that sends `token` with every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

pub fn is_terminal(e: &Value) -> bool {
    matches!(
        e["status"].as_str(),
        Some("succeeded" | "failed" | "timed_out" | "cancelled" | "abandoned")
    )
}

pub fn statuses(e: &Value) -> Vec<String> {
    e["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_owned())
        .collect()
}

/// A pack `t` with the given extra files, in a temp dir.
pub fn test_pack(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir_all(root.join("actions")).unwrap();
    std::fs::write(root.join("pack.yaml"), "ref: t\n").unwrap();
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Whether the engine at `api` answers `/healthz` as the engine that holds the execution
/// core (a standby answers too, as `standby`).
pub async fn is_primary(http: &reqwest::Client, api: &str) -> bool {
    let Ok(answer) = http.get(format!("{api}/healthz")).send().await else {
        return false;
    };
    let body: Value = answer.json().await.unwrap_or_default();
    body["role"] == "primary"
}

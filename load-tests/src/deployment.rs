//! What a scenario runs against: by default a deployment it starts itself (a nats-server, a
//! store, an engine serving the HTTP API, and worker processes), or with `--nats-url` and
//! `--api` a running one that has the `load` pack (`load-tests/pack/`) installed.
//!
//! Either way a scenario publishes triggers to NATS and reads the results back through the
//! HTTP API, so both paths measure the same thing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sluice_bus::Bus;
use sluice_engine::{Engine, EngineConfig};
use sluice_store::Store;
use sluice_testkit::{NatsServer, Postgres};
use sluice_worker::{Worker, WorkerConfig};

/// Where a scenario's deployment comes from; every trigger scenario accepts these.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// A running deployment's NATS server (needs `--api`); default: start one.
    #[arg(long, requires = "api")]
    pub nats_url: Option<String>,
    /// A running deployment's HTTP API, e.g. http://127.0.0.1:8080 (needs `--nats-url`).
    #[arg(long, requires = "nats_url")]
    pub api: Option<String>,
    /// A token for `--api`: the read scope, or run for `webhooks`.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, requires = "api")]
    pub token: Option<String>,
    /// A PostgreSQL URL; default a fresh SQLite file. `--database-url start` starts a
    /// throwaway PostgreSQL cluster for the run.
    #[arg(long, conflicts_with = "nats_url")]
    pub database_url: Option<String>,
    /// Worker processes to start.
    #[arg(long, default_value_t = 1, conflicts_with = "nats_url")]
    pub workers: usize,
    /// Actions each worker runs at once [default: 64; 8 for `scale`].
    #[arg(long, conflicts_with = "nats_url")]
    pub capacity: Option<usize>,
}

/// Threads that run this process's tasks (`--threads`).
pub fn runtime_threads() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// The packs a scenario's deployment loads: the bundled ones and `load`.
fn pack_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![root.join("../packs"), root.join("pack")]
}

/// One execution of a `load` action, as the API lists it.
#[derive(Debug, Deserialize)]
pub struct Run {
    pub id: i64,
    pub status: String,
    pub parameters: serde_json::Value,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The tick number of the trigger that requested it.
    pub fn tick(&self) -> anyhow::Result<u64> {
        self.parameters["n"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("execution {} has no tick number", self.id))
    }
}

pub struct Deployment {
    pub nats_url: String,
    pub store: String,
    api: String,
    http: reqwest::Client,
    /// Executions with an id at or below this existed before the scenario started.
    floor: i64,
    /// Executions the engine had recorded as ended when the scenario started.
    ended_floor: f64,
    local: Option<Local>,
}

impl Deployment {
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        Self::start_with(target, &[]).await
    }

    /// Like [`Deployment::start`]; a deployment it starts also loads the packs in `packs`.
    pub async fn start_with(target: &Target, packs: &[PathBuf]) -> anyhow::Result<Self> {
        let (nats_url, api, token, local) = match (&target.nats_url, &target.api) {
            (Some(nats), Some(api)) => (
                nats.clone(),
                api.trim_end_matches('/').to_owned(),
                target.token.clone().unwrap_or_default(),
                None,
            ),
            _ => {
                let local = Local::start(target, packs).await?;
                (
                    local.nats.url(),
                    local.api.clone(),
                    local.token.clone(),
                    Some(local),
                )
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()?;
        let health: serde_json::Value = http
            .get(format!("{api}/healthz"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| anyhow::anyhow!("the API at {api} does not answer /healthz: {e}"))?
            .json()
            .await?;
        let mut deployment = Self {
            nats_url,
            store: health["store"].as_str().unwrap_or("unknown").to_owned(),
            api,
            http,
            floor: 0,
            ended_floor: 0.0,
            local,
        };
        deployment.count_from_now().await?;
        Ok(deployment)
    }

    /// The API's base URL.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// Counts executions from now on: what [`Deployment::wait_settled`] and
    /// [`Deployment::runs`] see starts here.
    pub async fn count_from_now(&mut self) -> anyhow::Result<()> {
        self.floor = self.newest_execution().await?;
        self.ended_floor = self.ended().await?;
        Ok(())
    }

    /// The process ids of the workers this scenario started (none for a running deployment).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.local
            .iter()
            .flat_map(|local| local.workers.iter().filter_map(tokio::process::Child::id))
            .collect()
    }

    /// The processes of a deployment this scenario started, by what they are: this
    /// process (the engine, its API and the scenario's publisher), the workers, nats-server
    /// and PostgreSQL's when the scenario started it. None for a running deployment.
    pub fn processes(&self) -> Vec<(&'static str, Vec<u32>)> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let mut processes = vec![
            ("engine", vec![std::process::id()]),
            ("workers", self.worker_pids()),
            ("nats-server", local.nats.pid().into_iter().collect()),
        ];
        if let Some(pg) = &local._postgres {
            processes.push(("postgres", pg.pids()));
        }
        processes
    }

    /// An HTTP client that sends the deployment's token.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` on the API, failing on any status but a success.
    async fn fetch(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.api);
        let response = self.http.get(&url).send().await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("GET {url}: {status}: {body}");
        }
        Ok(response)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.fetch(path).await?.json().await?)
    }

    /// One execution, as `GET /api/v1/executions/{id}` shows it.
    pub async fn execution(&self, id: i64) -> anyhow::Result<serde_json::Value> {
        self.get(&format!("/api/v1/executions/{id}")).await
    }

    /// The engine's counters, as `GET /metrics` serves them.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(self.fetch("/metrics").await?.text().await?)
    }

    /// Executions the engine has recorded as ended (`sluice_executions_total`), all
    /// actions and statuses.
    async fn ended(&self) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        Ok(crate::cost::samples(&text)
            .filter(|(name, _, _)| *name == "sluice_executions_total")
            .map(|(_, _, value)| value)
            .sum())
    }

    async fn newest_execution(&self) -> anyhow::Result<i64> {
        let newest: Vec<Run> = self.get("/api/v1/executions?limit=1").await?;
        Ok(newest.first().map_or(0, |run| run.id))
    }

    /// Waits until `count` executions have been created since the scenario started and
    /// every execution has ended.
    ///
    /// Until the engine's count of ended executions says `count` have ended, it polls only
    /// that counter: the ledger reads every execution, and asked every 200 ms of a long run
    /// it would take the store's time from the executions it measures.
    pub async fn wait_settled(&self, count: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.ended().await? - self.ended_floor < count as f64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let ledger: serde_json::Value = self.get("/api/v1/ledger").await?;
            let created = self.newest_execution().await? - self.floor;
            let unfinished = ledger["unfinished"].as_i64().unwrap_or(-1);
            if created >= count as i64 && unfinished == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not settled after {timeout:?}: {created} of {count} executions created, \
                 {unfinished} unfinished"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every execution of `action` created since the scenario started, newest first.
    pub async fn runs(&self, action: &str) -> anyhow::Result<Vec<Run>> {
        let mut runs: Vec<Run> = Vec::new();
        loop {
            let before = runs.last().map_or(i64::MAX, |run| run.id);
            let page: Vec<Run> = self
                .get(&format!(
                    "/api/v1/executions?action={action}&limit=1000&before={before}"
                ))
                .await?;
            let done = page.len() < 1000 || page.iter().any(|run| run.id <= self.floor);
            runs.extend(page.into_iter().filter(|run| run.id > self.floor));
            if done {
                return Ok(runs);
            }
        }
    }

    pub async fn stop(self) {
        let Self { local, http, .. } = self;
        // Closing the client's idle connections lets the local API finish serving.
        drop(http);
        if let Some(local) = local {
            local.stop().await;
        }
    }
}

/// A deployment the scenario started and tears down.
struct Local {
    nats: NatsServer,
    api: String,
    /// A run token for the scenario's own API calls and webhook deliveries.
    token: String,
    engine: Arc<Engine>,
    server: tokio::task::JoinHandle<()>,
    stop_serving: tokio::sync::oneshot::Sender<()>,
    store: Store,
    workers: Vec<tokio::process::Child>,
    _postgres: Option<Postgres>,
    _dir: tempfile::TempDir,
}

impl Local {
    async fn start(target: &Target, packs: &[PathBuf]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut dirs = pack_dirs();
        dirs.extend_from_slice(packs);
        let catalog = Arc::new(sluice_pack::load_packs(&dirs).map_err(|e| anyhow::anyhow!("{e}"))?);
        let nats = NatsServer::start();
        let (postgres, url) = match target.database_url.as_deref() {
            Some("start") => {
                let pg = Postgres::start();
                let url = pg.url();
                (Some(pg), url)
            }
            Some(url) => (None, url.to_owned()),
            None => (None, dir.path().join("sluice.db").display().to_string()),
        };
        let store = Store::connect(&url).await?;
        let key = dir.path().join("run-signing.key");
        let run_signer = Arc::new(sluice_bus::RunSigner::load_or_create(&key)?);
        let (_, token) =
            sluice_api::auth::issue(&store, "sluice-load", sluice_core::Scope::Run, None).await?;
        // Bound first: run messages carry the API's address, as they do in a deployment.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let engine = Arc::new(
            Engine::start(EngineConfig {
                name: "engine".into(),
                catalog,
                packs: Default::default(),
                store: store.clone(),
                bus: Bus::connect(&nats.url(), "load-engine").await?,
                run_signer,
                keyring: Arc::new(sluice_core::secrets::Keyring::load_or_create(
                    &dir.path().join("secrets.key"),
                )?),
                ingest_triggers: true,
                worker_loss_window: Duration::from_secs(10),
                api_url: Some(format!("{api}/api/v1")),
                partitions: None,
            })
            .await?,
        );
        let router = sluice_api::app(engine.clone(), sluice_api::dashboard::Options::default());
        let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let exe = std::env::current_exe()?;
        // Each worker process runs as many threads as this one.
        let threads = runtime_threads().to_string();
        let mut workers = Vec::with_capacity(target.workers);
        for i in 1..=target.workers {
            workers.push(
                tokio::process::Command::new(&exe)
                    .args(["worker-process", "--nats-url", &nats.url()])
                    .arg("--run-verify-key")
                    .arg(key.with_extension("pub"))
                    .arg("--secrets-key")
                    .arg(dir.path().join("secrets.key"))
                    .args(["--name", &format!("worker/load-{i}")])
                    .args(["--capacity", &target.capacity.unwrap_or(64).to_string()])
                    .args(["--threads", &threads])
                    .stdin(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
        let local = Self {
            nats,
            api,
            token,
            engine,
            server,
            stop_serving,
            store,
            workers,
            _postgres: postgres,
            _dir: dir,
        };
        local.wait_for_workers(target.workers).await?;
        Ok(local)
    }

    /// Waits until every worker process has sent its first heartbeat.
    async fn wait_for_workers(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.engine.workers().len() < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{count} worker processes did not report within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn stop(mut self) {
        // Closing a worker's stdin asks it to drain and exit.
        for worker in &mut self.workers {
            drop(worker.stdin.take());
        }
        for worker in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await;
        }
        let _ = self.stop_serving.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.engine.shutdown(Duration::from_secs(5)).await;
        self.store.close().await;
        drop(self.nats);
    }
}

/// `sluice-load worker-process`: one worker with every pack, until its stdin closes.
pub async fn worker_process(
    nats_url: &str,
    name: &str,
    capacity: usize,
    run_verify_key: &Path,
    secrets_key: &Path,
) -> anyhow::Result<()> {
    let catalog = sluice_pack::load_packs(&pack_dirs()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let worker = Worker::start(WorkerConfig {
        name: name.to_owned(),
        bus: Bus::connect(nats_url, name).await?,
        actions_dirs: catalog
            .packs
            .iter()
            .map(|(pack, loaded)| (pack.clone(), loaded.dir.join("actions")))
            .collect(),
        pack_cache: std::env::temp_dir().join(format!("sluice-load-packs-{}", std::process::id())),
        capacity,
        heartbeat_interval: Duration::from_secs(1),
        run_verifier: sluice_bus::RunVerifier::load(&[run_verify_key])?,
        keyring: std::sync::Arc::new(sluice_core::secrets::Keyring::load(secrets_key)?),
        runner: Default::default(),
    })
    .await?;
    let mut stdin = tokio::io::stdin();
    let _ = tokio::io::copy(&mut stdin, &mut tokio::io::sink()).await;
    worker.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

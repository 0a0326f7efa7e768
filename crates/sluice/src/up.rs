//! The process modes: `sluice up` (everything in one process), `sluice engine` and
//! `sluice worker`. Each takes a shutdown future so tests can run it in-process.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_api::Primary;
use sluice_bus::lease::{ENGINE_LEASE, Holder, LeaseEnd, Leases, PARTITION_DUTY, partition_lease};
use sluice_bus::shares::{Change, Shares};
use sluice_bus::{Bus, RunSigner, RunVerifier, redact_url};
use sluice_core::secrets::Keyring;
use sluice_engine::{Engine, EngineConfig, Partitioned};
use sluice_pack::Catalog;
use sluice_store::Store;
use sluice_worker::sensor::{SensorHost, SensorSpec};
use sluice_worker::service::ActionService;
use sluice_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::nats::{NatsChild, Role};

/// Loads the packs; one with a problem is left out and reported (every problem, with its
/// file and field), and the others load.
fn load_catalog(roots: &[PathBuf], configs: Option<&Path>) -> Arc<Catalog> {
    let catalog = sluice_pack::load_packs_with_configs(roots, configs);
    for pack in &catalog.broken {
        for problem in &pack.errors {
            error!(pack = %pack.name, problem = %problem, "pack left out: {problem}");
        }
    }
    info!(
        packs = catalog.packs.len(),
        actions = catalog.actions.len(),
        rules = catalog.rules().len(),
        left_out = catalog.broken.len(),
        "packs loaded"
    );
    Arc::new(catalog)
}

fn actions_dirs(catalog: &Catalog) -> BTreeMap<String, PathBuf> {
    catalog
        .packs
        .iter()
        .map(|(name, pack)| (name.clone(), pack.dir.join("actions")))
        .collect()
}

/// The engine's connection: it sets the streams up.
async fn connect(config: &Config, url: &str, name: &str) -> anyhow::Result<Bus> {
    let bus = Bus::attach(url, name, &config.nats_options)
        .await
        .with_context(|| format!("failed to connect to NATS at {}", redact_url(url)))?
        .with_stream_replicas(config.stream_replicas);
    patiently("set up the streams", || bus.ensure_streams())
        .await
        .with_context(|| format!("failed to set up NATS at {}", redact_url(url)))?;
    Ok(bus)
}

/// How long a starting engine waits for JetStream to be ready (a cluster electing
/// leaders after a server was lost) before it gives up.
const JETSTREAM_READY_WITHIN: Duration = Duration::from_secs(60);

/// Runs `step` again, a second apart, while it fails because JetStream is not ready yet,
/// for up to [`JETSTREAM_READY_WITHIN`]; any other error at once.
async fn patiently<T, F>(what: &str, mut step: impl FnMut() -> F) -> Result<T, sluice_bus::BusError>
where
    F: Future<Output = Result<T, sluice_bus::BusError>>,
{
    let started = Instant::now();
    loop {
        match step().await {
            Err(e) if e.is_transient() && started.elapsed() < JETSTREAM_READY_WITHIN => {
                warn!(error = %e, "JetStream is not ready to {what}; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            done => return done,
        }
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("failed to create data dir {}", config.data_dir.display()))?;
    let url = config.database_url();
    Store::connect(&url)
        .await
        .with_context(|| format!("failed to open the store at {url}"))
}

/// The engine that holds the execution core's lease, and the fence its writes go under.
struct Owner {
    engine: String,
    fence: sluice_store::Fence,
}

async fn listen(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.http)
        .await
        .with_context(|| format!("failed to listen on {} (--http)", config.http))
}

/// Starts the engine and binds its HTTP API's listener (after the admin token is written,
/// so whoever sees the port open finds the token); the caller serves it. With `partitions`
/// the engine runs the supervisors of those partitions only, each partition's fence raised
/// first; the duties that run once (triggers, timers, sensors) go with partition 0. The
/// packs' sensors are returned when this engine runs them.
async fn start_engine(
    config: &Config,
    nats_url: &str,
    owner: Option<Owner>,
    partitions: Option<Partitioned>,
) -> anyhow::Result<(Arc<Engine>, TcpListener, Option<Sensors>)> {
    let (engine, listening, sensors) =
        start_core(config, nats_url, owner, partitions, Listening::Bind).await?;
    let listener = listening.expect("a listener bound");
    Ok((engine, listener, sensors))
}

/// Where the engine's API listens: bound by [`start_core`] once the admin token is
/// written, or already bound (and served) at this address.
enum Listening {
    Bind,
    Bound(std::net::SocketAddr),
}

/// [`start_engine`], with the API's listener bound here or already.
async fn start_core(
    config: &Config,
    nats_url: &str,
    owner: Option<Owner>,
    partitions: Option<Partitioned>,
    listening: Listening,
) -> anyhow::Result<(Arc<Engine>, Option<TcpListener>, Option<Sensors>)> {
    let packs = config.pack_sources();
    if let Some(installed) = &packs.installed {
        std::fs::create_dir_all(installed).with_context(|| {
            format!(
                "failed to create the installed packs directory {}",
                installed.display()
            )
        })?;
    }
    let catalog = load_catalog(&packs.all_roots(), packs.configs.as_deref());
    let bus = connect(config, nats_url, "sluice-engine").await?;
    let mut store = open_store(config).await?;
    if let Some(owner) = owner {
        // The store refuses the writes of whoever held the lease before.
        own_fence(&store, &owner.fence, &owner.engine).await?;
        store = store.fenced(owner.fence);
    }
    let singletons = partitions.as_ref().is_none_or(|p| p.held.contains_key(&0));
    if let Some(partitions) = &partitions {
        let engine = config.engine_name();
        for fence in partitions.held.values() {
            own_fence(&store, fence, &engine).await?;
        }
    }
    sluice_api::auth::bootstrap_admin_token(&store, &config.data_dir).await?;
    let (listener, api_addr) = match listening {
        Listening::Bind => {
            let listener = listen(config).await?;
            let addr = listener.local_addr()?;
            (Some(listener), addr)
        }
        Listening::Bound(addr) => (None, addr),
    };
    let key = config.run_signing_key();
    let run_signer = RunSigner::load_or_create(&key).with_context(|| {
        format!(
            "failed to load the run signing key (--run-signing-key {})",
            key.display()
        )
    })?;
    let secrets_key = config.secrets_key();
    let keyring = Keyring::load_or_create(&secrets_key).with_context(|| {
        format!(
            "failed to load the secrets key file (--secrets-key {})",
            secrets_key.display()
        )
    })?;
    let keyring = Arc::new(keyring);
    let service = ActionService::new(bus.clone(), keyring.clone(), "engine".into());
    let engine = Engine::start(EngineConfig {
        name: "engine".into(),
        catalog,
        packs,
        store,
        bus,
        run_signer: Arc::new(run_signer),
        keyring,
        ingest_triggers: singletons,
        worker_loss_window: config.worker_loss_window,
        api_url: Some(config.action_api_url(api_addr)),
        partitions,
    })
    .await
    .context("failed to start the engine")?;
    info!(api = %format!("http://{api_addr}"), "HTTP API listening");
    let engine = Arc::new(engine);
    let sensors =
        singletons.then(|| Sensors::start(engine.clone(), service, config.runner.venvs.clone()));
    Ok((engine, listener, sensors))
}

/// Makes sure the store's fence `fence.name` is at this engine's token: raised to it, or
/// already there (the engine started again while it holds the partition). A newer token
/// there means another engine took the partition since: this one stops.
async fn own_fence(store: &Store, fence: &sluice_store::Fence, engine: &str) -> anyhow::Result<()> {
    let raised = store
        .raise_fence(&fence.name, fence.token, engine)
        .await
        .with_context(|| format!("failed to raise the fence {} in the store", fence.name))?;
    if raised {
        return Ok(());
    }
    let current = store.fence_of(&fence.name).await?;
    if current
        .as_ref()
        .is_some_and(|(token, _)| *token == fence.token)
    {
        return Ok(());
    }
    anyhow::bail!(
        "an engine with a newer lease of {} than this one's (token {}) has written to the store; this engine stops",
        fence.name,
        fence.token
    )
}

/// The packs' sensors, kept running as the packs change: started with the engine, and
/// started again when a pack install, reload or removal changes them, and told (not
/// started again) when only the rules on their triggers change.
struct Sensors {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Sensors {
    /// How often the catalog is looked at for changed sensors.
    const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    fn start(
        engine: Arc<Engine>,
        service: ActionService,
        venvs: Option<Arc<sluice_worker::venv::Venvs>>,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut running: Option<(Vec<SensorSpec>, SensorHost)> = None;
            loop {
                let wanted = sensor_specs(&engine.catalog());
                // The same sensors with other rules on their triggers: they are told, not
                // started again.
                if let Some((specs, host)) = running.as_mut()
                    && *specs != wanted
                    && same_sensors(specs, &wanted)
                {
                    for spec in &wanted {
                        host.set_triggers(&spec.sensor_ref, spec.rule_triggers.clone());
                    }
                    *specs = wanted.clone();
                }
                if running.as_ref().is_none_or(|(specs, _)| *specs != wanted) {
                    if let Some((_, host)) = running.take() {
                        info!("the packs' sensors changed; starting them again");
                        host.stop().await;
                    }
                    if !wanted.is_empty() {
                        info!(sensors = wanted.len(), "starting the packs' sensors");
                    }
                    let host = SensorHost::start(wanted.clone(), service.clone(), venvs.clone());
                    running = Some((wanted, host));
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Self::CHECK_EVERY) => {}
                }
            }
            if let Some((_, host)) = running {
                host.stop().await;
            }
        });
        Self { stop, task }
    }

    /// Stops every sensor (each gets its `cleanup()`).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Whether `a` and `b` are the same sensors, whatever rules are on their triggers.
fn same_sensors(a: &[SensorSpec], b: &[SensorSpec]) -> bool {
    let bare = |specs: &[SensorSpec]| -> Vec<SensorSpec> {
        specs
            .iter()
            .map(|s| SensorSpec {
                rule_triggers: Vec::new(),
                ..s.clone()
            })
            .collect()
    };
    bare(a) == bare(b)
}

/// The enabled sensors of the catalog's packs, each with its pack's configuration.
fn sensor_specs(catalog: &Catalog) -> Vec<SensorSpec> {
    catalog
        .sensors
        .values()
        .filter(|sensor| sensor.enabled)
        .filter_map(|sensor| {
            let pack = catalog.packs.get(&sensor.pack)?;
            Some(SensorSpec {
                sensor_ref: sensor.sensor_ref.clone(),
                pack: sensor.pack.clone(),
                pack_dir: pack.dir.clone(),
                class_name: sensor.class_name.clone(),
                entry_point: sensor.entry_point.clone(),
                poll_interval: sensor.poll_interval,
                config: pack
                    .config
                    .as_ref()
                    .map(|c| c.values.clone())
                    .unwrap_or_default(),
                version: pack.digest.clone(),
                rule_triggers: catalog
                    .rules()
                    .iter()
                    .filter(|rule| rule.enabled && sensor.triggers.contains(&rule.trigger))
                    .map(|rule| {
                        serde_json::json!({
                            "id": rule.rule_ref,
                            "ref": rule.rule_ref,
                            "type": rule.trigger,
                            "parameters": rule.trigger_parameters,
                        })
                    })
                    .collect(),
            })
        })
        .collect()
}

/// A worker; `packs` are the pack directories it runs from its own disk.
async fn start_worker(
    config: &Config,
    packs: &[PathBuf],
    nats_url: &str,
) -> anyhow::Result<Worker> {
    let bus = Bus::attach(nats_url, "sluice-worker", &config.nats_options)
        .await
        .with_context(|| format!("failed to connect to NATS at {}", redact_url(nats_url)))?;
    let keys = config.run_verify_keys();
    let run_verifier = RunVerifier::load(&keys).with_context(|| {
        format!(
            "failed to load the engine's public key, which a worker needs to run anything \
             (--run-verify-key; the engine writes run-signing.pub beside its key in its data dir): {}",
            keys.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let secrets_key = config.secrets_key();
    let keyring = Keyring::load(&secrets_key).with_context(|| {
        format!(
            "failed to load the secrets key file, which a worker needs to open secret parameters \
             (--secrets-key; a copy of the engine's <data-dir>/secrets.key): {}",
            secrets_key.display()
        )
    })?;
    Worker::start(WorkerConfig {
        run_verifier,
        keyring: Arc::new(keyring),
        runner: config.runner.clone(),
        name: format!("worker/{}", config.worker_name()),
        bus,
        actions_dirs: if packs.is_empty() {
            BTreeMap::new()
        } else {
            actions_dirs(&load_catalog(packs, None))
        },
        pack_cache: config.pack_cache(),
        capacity: config.capacity,
        heartbeat_interval: config.heartbeat_interval,
    })
    .await
    .context("failed to start the worker")
}

/// The HTTP API, served until [`Api::stop`].
struct Api {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Api {
    fn serve(listener: TcpListener, engine: Arc<Engine>, config: &Config) -> Self {
        let dashboard = sluice_api::dashboard::Options {
            jaeger_url: config.jaeger_url.clone(),
        };
        Self::serve_router(listener, sluice_api::app(engine, dashboard))
    }

    fn serve_router(listener: TcpListener, router: axum::Router) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Self { stop, server }
    }

    /// Stops accepting requests and lets those in progress finish.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

async fn stop_engine(engine: Arc<Engine>, config: &Config) {
    engine.shutdown(config.drain_timeout).await;
}

/// `/metrics` without credentials on the listener the operator named for it
/// (`--metrics-http`), if any.
async fn serve_open_metrics(config: &Config, engine: &Arc<Engine>) -> anyhow::Result<Option<Api>> {
    let Some(addr) = config.metrics_http else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (--metrics-http)"))?;
    info!(metrics = %format!("http://{}/metrics", listener.local_addr()?), "metrics listening, without credentials");
    Ok(Some(Api::serve_router(
        listener,
        sluice_api::open_metrics_app(engine.clone()),
    )))
}

/// `sluice up`: engine, one worker and (without `--nats-url`) a nats-server child.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let nats = match config.nats_url {
        Some(_) => None,
        None => Some(NatsChild::start(&config.data_dir, config.nats_port)?),
    };
    // Its own server takes a user per part; a given server, whatever its URL carries.
    let (engine_url, worker_url) = match &nats {
        Some(nats) => (nats.url(Role::Engine), nats.url(Role::Worker)),
        None => (config.nats_url(), config.nats_url()),
    };
    let (engine, listener, sensors) = start_engine(&config, &engine_url, None, None).await?;
    // Its worker runs the pack versions the engine published, as any other worker does.
    let worker = start_worker(&config, &[], &worker_url).await?;
    let api = Api::serve(listener, engine.clone(), &config);
    let metrics = serve_open_metrics(&config, &engine).await?;
    info!("sluice is up; Ctrl-C drains executions in flight and stops");
    shutdown.await;
    info!("shutting down: draining executions in flight");
    if let Some(sensors) = sensors {
        sensors.stop().await;
    }
    api.stop().await;
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    let store = engine.store().clone();
    // The engine drains first (it stops admitting and waits for completions), while the
    // worker keeps running what was already handed to it.
    stop_engine(engine, &config).await;
    worker.shutdown(config.drain_timeout).await;
    store.close().await;
    if let Some(nats) = nats {
        nats.stop();
    }
    info!("stopped");
    Ok(())
}

/// `sluice engine`: triggers, rules, supervisors, the store and the HTTP API — once this
/// engine holds the execution core's lease. Until then it is a standby: its API forwards to
/// the engine that holds it, and it takes the lease over when that engine's expires. An
/// engine that loses its lease exits at once, doing nothing more (see docs/ha.md).
pub async fn run_engine(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(count) = config.partitions {
        return run_partitioned(config, count, shutdown).await;
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let name = config.engine_name();
    let leases = open_leases(&config).await?;
    let listener = listen(&config).await?;
    let holder = Holder {
        engine: name.clone(),
        api_url: Some(config.advertise_url(listener.local_addr()?)),
        since: chrono::Utc::now(),
    };
    let (primary, watched) = tokio::sync::watch::channel(Primary::Unread);
    let standby = Api::serve_router(
        listener,
        sluice_api::standby_app(name.clone(), watched, config.lease_ttl),
    );
    let every =
        (config.lease_ttl / 8).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let waited = Instant::now();
    let acquiring = leases.acquire(ENGINE_LEASE, &holder, every, |now| {
        let now = now.map_or(Primary::Vacant, Primary::Held);
        if *primary.borrow() != now {
            match &now {
                Primary::Held(p) => info!(engine = %name, primary = %p.engine, "standby: another engine holds the execution core"),
                Primary::Vacant => info!(engine = %name, "standby: no engine holds the execution core; taking it"),
                Primary::Unread => {}
            }
            primary.send_replace(now);
        }
    });
    let lease = tokio::select! {
        lease = acquiring => lease,
        _ = &mut shutdown => {
            standby.stop().await;
            return Ok(());
        }
    };
    standby.stop().await;
    info!(engine = %name, token = lease.token(), waited_s = waited.elapsed().as_secs_f64(), "this engine holds the execution core");
    let owner = Owner {
        engine: name.clone(),
        fence: sluice_store::Fence {
            name: ENGINE_LEASE.into(),
            token: i64::try_from(lease.token()).context("lease token out of range")?,
        },
    };
    let (release, released) = oneshot::channel::<()>();
    let mut keeping = tokio::spawn(lease.keep(async {
        let _ = released.await;
    }));
    let nats_url = config.nats_url();
    let started = start_engine(&config, &nats_url, Some(owner), None);
    let (engine, listener, sensors) = tokio::select! {
        started = started => started?,
        end = &mut keeping => lost_lease(end),
    };
    let api = Api::serve(listener, engine.clone(), &config);
    let metrics = serve_open_metrics(&config, &engine).await?;
    tokio::select! {
        _ = &mut shutdown => {}
        end = &mut keeping => lost_lease(end),
    }
    let stopped = async {
        if let Some(sensors) = sensors {
            sensors.stop().await;
        }
        api.stop().await;
        if let Some(metrics) = metrics {
            metrics.stop().await;
        }
        let store = engine.store().clone();
        stop_engine(engine, &config).await;
        store.close().await;
    };
    tokio::select! {
        () = stopped => {}
        end = &mut keeping => lost_lease(end),
    }
    let _ = release.send(());
    let _ = keeping.await;
    Ok(())
}

/// An engine's execution core for the partitions it holds, with the sensors when it holds
/// partition 0.
struct PartitionedEngine {
    engine: Arc<Engine>,
    sensors: Option<Sensors>,
}

impl PartitionedEngine {
    async fn start(
        config: &Config,
        count: u32,
        held: &BTreeMap<u32, u64>,
        listening: Listening,
    ) -> anyhow::Result<(Self, Option<TcpListener>)> {
        let mut fences = BTreeMap::new();
        for (n, token) in held {
            let fence = sluice_store::Fence {
                name: partition_lease(*n),
                token: i64::try_from(*token).context("lease token out of range")?,
            };
            fences.insert(*n, fence);
        }
        let partitions = Partitioned {
            engine: config.engine_name(),
            lease_ttl: config.lease_ttl,
            count,
            held: fences,
        };
        let (engine, listener, sensors) = start_core(
            config,
            &config.nats_url(),
            None,
            Some(partitions),
            listening,
        )
        .await?;
        Ok((Self { engine, sensors }, listener))
    }

    /// Stops it, letting executions in flight finish for at most `drain`; what is still
    /// running then is resumed by whoever holds its partition next.
    async fn stop(self, drain: Duration) {
        if let Some(sensors) = self.sensors {
            sensors.stop().await;
        }
        let store = self.engine.store().clone();
        self.engine.shutdown(drain).await;
        store.close().await;
    }
}

/// An API served on one listener while the engine behind it changes: the engine of a
/// partitioned deployment starts its execution core again when its partitions change, and
/// its address stays open meanwhile, answering `503` with a `Retry-After` until the new
/// core is up.
struct SwitchedApi {
    current: Arc<std::sync::RwLock<axum::Router>>,
    api: Api,
}

impl SwitchedApi {
    fn serve(listener: TcpListener, router: axum::Router) -> Self {
        let current = Arc::new(std::sync::RwLock::new(router));
        let serving = current.clone();
        let front = axum::Router::new().fallback_service(tower::service_fn(
            move |request: axum::extract::Request| {
                let router = serving
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                tower::ServiceExt::oneshot(router, request)
            },
        ));
        Self {
            current,
            api: Api::serve_router(listener, front),
        }
    }

    fn switch(&self, router: axum::Router) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = router;
    }

    /// Answers `503` until the next [`SwitchedApi::switch`].
    fn restarting(&self) {
        self.switch(axum::Router::new().fallback(|| async {
            let mut response = sluice_api::problem(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "this engine is starting its execution core again for the partitions it now owns; try again in a moment",
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(1),
            );
            response
        }));
    }

    async fn stop(self) {
        self.api.stop().await;
    }
}

/// The `sluice-leases` bucket, on a connection of its own.
async fn open_leases(config: &Config) -> anyhow::Result<Leases> {
    let lease_bus = connect(config, &config.nats_url(), "sluice-engine-lease").await?;
    patiently("open the leases", || {
        Leases::open(&lease_bus, config.lease_ttl)
    })
    .await
    .context("failed to set up the engine leases")
}

/// `sluice engine --partitions N`: several engines active at once. Each engine keeps a
/// membership in `sluice-leases` and holds its fair share of the `partition.<n>` leases
/// ([`sluice_bus::shares`]); it runs the supervisors of the actions in the partitions it
/// holds, under each partition's fence, and serves the whole API. When the partitions it
/// holds change (an engine joined or left), it starts its engine again for the new set,
/// which rebuilds their queues from the store. Losing a lease under it ends the process
/// (exit 75), as with one active engine.
pub async fn run_partitioned(
    config: Config,
    count: u32,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let name = config.engine_name();
    let leases = open_leases(&config).await?;
    let holder = Holder {
        engine: name.clone(),
        api_url: Some(config.advertise_url(config.http)),
        since: chrono::Utc::now(),
    };
    let shares = Shares::new(leases, PARTITION_DUTY, count, holder);
    let (wanted, mut wants) = tokio::sync::watch::channel(None);
    let (commands, commanded) = tokio::sync::mpsc::unbounded_channel();
    let keeper = tokio::spawn(keep_shares(shares, wanted, commanded));
    let mut running: Option<(PartitionedEngine, BTreeMap<u32, u64>)> = None;
    // The API and the open metrics, served throughout, with their address.
    let mut api: Option<(SwitchedApi, std::net::SocketAddr)> = None;
    let mut metrics: Option<SwitchedApi> = None;
    let dashboard = sluice_api::dashboard::Options {
        jaeger_url: config.jaeger_url.clone(),
    };
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = wants.changed() => if changed.is_err() { break },
        }
        let Some(want) = wants.borrow_and_update().clone() else {
            continue;
        };
        if running.as_ref().is_some_and(|(_, held)| *held == want.keep) {
            continue;
        }
        // Started again for the new set: what was running is resumed from the store.
        for switched in api.iter().map(|(a, _)| a).chain(&metrics) {
            switched.restarting();
        }
        if let Some((engine, _)) = running.take() {
            engine.stop(Duration::ZERO).await;
        }
        for partition in want.give_back {
            let _ = commands.send(SharesCommand::Release(partition));
            info!(engine = %name, partition, "this engine gives a partition back to another");
        }
        let listening = api
            .as_ref()
            .map_or(Listening::Bind, |(_, addr)| Listening::Bound(*addr));
        let (engine, listener) =
            PartitionedEngine::start(&config, count, &want.keep, listening).await?;
        let router = sluice_api::app(engine.engine.clone(), dashboard.clone());
        match (&api, listener) {
            (Some((switched, _)), _) => switched.switch(router),
            (None, Some(listener)) => {
                let addr = listener.local_addr()?;
                api = Some((SwitchedApi::serve(listener, router), addr));
            }
            (None, None) => unreachable!("the first start binds the listener"),
        }
        let open = sluice_api::open_metrics_app(engine.engine.clone());
        match (&metrics, config.metrics_http) {
            (Some(switched), _) => switched.switch(open),
            (None, Some(addr)) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to listen on {addr} (--metrics-http)"))?;
                info!(metrics = %format!("http://{}/metrics", listener.local_addr()?), "metrics listening, without credentials");
                metrics = Some(SwitchedApi::serve(listener, open));
            }
            (None, None) => {}
        }
        info!(
            engine = %name,
            partitions = ?want.keep.keys().collect::<Vec<_>>(),
            of = count,
            after_s = started.elapsed().as_secs_f64(),
            "this engine runs the supervisors of its partitions"
        );
        running = Some((engine, want.keep));
    }
    if let Some((switched, _)) = api {
        switched.stop().await;
    }
    if let Some(switched) = metrics {
        switched.stop().await;
    }
    if let Some((engine, _)) = running {
        // Within the leases' life, which the keeper goes on renewing meanwhile.
        engine
            .stop(config.drain_timeout.min(config.lease_ttl))
            .await;
    }
    let (left, leaving) = oneshot::channel();
    let _ = commands.send(SharesCommand::Leave(left));
    let _ = leaving.await;
    let _ = keeper.await;
    Ok(())
}

/// The partitions an engine should run now: those to `keep` (with their tokens), and
/// those above its share to `give_back` once it stopped using them.
#[derive(Clone, Debug, PartialEq)]
struct Wanted {
    keep: BTreeMap<u32, u64>,
    give_back: Vec<u32>,
}

enum SharesCommand {
    /// The engine no longer uses this partition: give it back.
    Release(u32),
    /// Give every partition back and leave; then answer.
    Leave(oneshot::Sender<()>),
}

/// Keeps this engine's shares: a round every quarter of the leases' life, whatever the
/// engine is doing (starting, stopping, draining), so its leases never lapse while it
/// lives. Publishes what the engine should run; a lease lost under it ends the process.
async fn keep_shares(
    mut shares: Shares,
    wanted: tokio::sync::watch::Sender<Option<Wanted>>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<SharesCommand>,
) {
    loop {
        match shares.round().await {
            Ok(changes) => {
                let mut give_back = Vec::new();
                for change in changes {
                    match change {
                        Change::Lost { partition, why } => lost_partition(partition, &why),
                        Change::Gained { partition, token } => {
                            info!(
                                engine = shares.engine(),
                                partition, token, "this engine took a partition"
                            );
                        }
                        Change::Surplus { partition } => give_back.push(partition),
                    }
                }
                let mut keep = shares.held();
                keep.retain(|p, _| !give_back.contains(p));
                wanted.send_if_modified(|now| {
                    let next = Some(Wanted { keep, give_back });
                    let changed = *now != next;
                    *now = next;
                    changed
                });
            }
            Err(e) => {
                warn!(engine = shares.engine(), error = %e, "the partitions' leases could not be read; tried again shortly");
            }
        }
        let next_round = tokio::time::sleep(shares.every());
        tokio::pin!(next_round);
        loop {
            tokio::select! {
                () = &mut next_round => break,
                command = commands.recv() => match command {
                    Some(SharesCommand::Release(partition)) => shares.release(partition).await,
                    Some(SharesCommand::Leave(left)) => {
                        shares.leave().await;
                        let _ = left.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
    }
}

/// Ends the process when one of its partitions' leases ended under it: another engine may
/// own the partition now, so this one does nothing more. Started again, it takes its share
/// anew.
fn lost_partition(partition: u32, why: &LeaseEnd) -> ! {
    error!(
        partition,
        why = %why,
        "this engine lost a partition's lease; it stops at once so that nothing is done twice"
    );
    std::process::exit(75)
}

/// Ends the process when the engine's lease ended under it: another engine may own the
/// execution core now, so this one does nothing more, not even drain. Started again, it
/// waits as a standby.
fn lost_lease(end: Result<LeaseEnd, tokio::task::JoinError>) -> ! {
    let why = match end {
        Ok(end) => end.to_string(),
        Err(e) => format!("the lease keeper failed: {e}"),
    };
    error!(
        why,
        "this engine lost the execution core's lease; it stops at once so that nothing is done twice"
    );
    std::process::exit(75)
}

/// `sluice worker`: runs actions; needs NATS, no database, and packs only those given with
/// `--packs` (the others it fetches).
pub async fn run_worker(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let api = match config.worker_http {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (--worker-http)"))?;
            info!(metrics = %format!("http://{}/metrics", listener.local_addr()?), "worker metrics listening");
            Some(Api::serve_router(listener, sluice_api::metrics_app()))
        }
        None => None,
    };
    let worker = start_worker(&config, &config.worker_packs, &config.nats_url()).await?;
    shutdown.await;
    worker.shutdown(config.drain_timeout).await;
    if let Some(api) = api {
        api.stop().await;
    }
    Ok(())
}

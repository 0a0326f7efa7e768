//! Typed configuration of the process modes. Flags and `SLUICE_*` environment variables are
//! read by clap in `main.rs`; nothing else reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The packs shipped with Sluice: `./packs` when run from a checkout, else the directory
/// the binary was built from.
pub fn bundled_packs() -> PathBuf {
    let local = PathBuf::from("packs");
    if local.join("core/pack.yaml").is_file() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../packs"))
}

/// What `sluice up`, `sluice engine` and `sluice worker` run with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the SQLite store and, for `sluice up`, the nats-server store.
    pub data_dir: PathBuf,
    /// Directories of packs (or single packs).
    pub packs: Vec<PathBuf>,
    /// Where pack configurations are (`<configs>/<pack>.yaml`); `<data-dir>/configs` when
    /// `None`.
    pub configs: Option<PathBuf>,
    /// Packs `sluice worker` runs from its own disk (its `--packs`) instead of fetching the
    /// versions run messages name from the packs object store.
    pub worker_packs: Vec<PathBuf>,
    /// Where the HTTP API listens (engine only).
    pub http: SocketAddr,
    /// Where `sluice worker` serves `/metrics` and `/healthz`; off when `None`. (`sluice up`
    /// and `sluice engine` serve `/metrics` on the API, to a token with the read scope.)
    pub worker_http: Option<SocketAddr>,
    /// Where `sluice up` and `sluice engine` also serve `/metrics` and `/healthz` without
    /// credentials, for a scraper; off when `None`.
    pub metrics_http: Option<SocketAddr>,
    /// A running NATS server; `None` makes `sluice up` start its own.
    pub nats_url: Option<String>,
    /// Port of the nats-server that `sluice up` starts.
    pub nats_port: u16,
    /// `postgres://…` to use PostgreSQL instead of `<data-dir>/sluice.db`.
    pub database_url: Option<String>,
    /// Actions a worker runs at once.
    pub capacity: usize,
    /// The worker's name (default `<host>-<pid>`).
    pub worker_name: Option<String>,
    /// How long shutdown waits for executions in flight.
    pub drain_timeout: Duration,
    /// How often a worker sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a worker may be silent before the engine declares it lost.
    pub worker_loss_window: Duration,
    /// The engine's run signing key; `<data-dir>/run-signing.key` (made on first start) when
    /// `None`.
    pub run_signing_key: Option<PathBuf>,
    /// An nkey and TLS for NATS, beyond what the URL carries.
    pub nats_options: sluice_bus::NatsOptions,
    /// Public keys a worker accepts run messages from; when empty, the public half of
    /// [`Config::run_signing_key`] (`<data-dir>/run-signing.pub` by default).
    pub run_verify_keys: Vec<PathBuf>,
    /// The secrets key file; `<data-dir>/secrets.key` (made by the engine on first start)
    /// when `None`.
    pub secrets_key: Option<PathBuf>,
    /// Output a result keeps, and what actions may ask of a worker's runners.
    pub runner: sluice_worker::runner::Settings,
    /// Copies of each stream and bucket the engine sets up keep, for a NATS cluster.
    pub stream_replicas: usize,
    /// Jaeger's web UI, where the dashboard links trace ids to.
    pub jaeger_url: Option<String>,
    /// Where workers reach the engine's API; from [`Config::http`] when `None`.
    pub public_url: Option<String>,
    /// This engine's name among several (default `<host>-<pid>`).
    pub engine_name: Option<String>,
    /// Where other engines reach this engine's own API, to forward requests to it while it
    /// is the primary; from [`Config::http`] when `None`.
    pub advertise_url: Option<String>,
    /// How long the execution core's lease lives unrenewed: the longest an engine's death
    /// leaves its duties unowned.
    pub lease_ttl: Duration,
    /// With several engines active at once (`sluice engine --partitions N`): how many
    /// partitions the actions are cut into, the same on every engine. `None`: one engine at
    /// a time runs the execution core, the others stand by.
    pub partitions: Option<u32>,
}

impl Config {
    /// Where the engine's packs come from: `--packs`, then the packs installed through the
    /// API in `<data-dir>/packs`.
    pub fn pack_sources(&self) -> sluice_engine::PackSources {
        sluice_engine::PackSources {
            roots: self.packs.clone(),
            installed: Some(self.data_dir.join("packs")),
            configs: Some(
                self.configs
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join("configs")),
            ),
        }
    }

    /// Where a worker keeps the pack versions it fetched.
    pub fn pack_cache(&self) -> PathBuf {
        self.data_dir.join("pack-cache")
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sluice.db").display().to_string())
    }

    pub fn run_signing_key(&self) -> PathBuf {
        self.run_signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("run-signing.key"))
    }

    pub fn run_verify_keys(&self) -> Vec<PathBuf> {
        if self.run_verify_keys.is_empty() {
            vec![self.run_signing_key().with_extension("pub")]
        } else {
            self.run_verify_keys.clone()
        }
    }

    pub fn secrets_key(&self) -> PathBuf {
        self.secrets_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }

    /// The API's base URL as actions are given it (`ST2_ACTION_API_URL`): `--public-url`,
    /// else the address the API listens on, with 127.0.0.1 for an unspecified host.
    pub fn action_api_url(&self, listening: SocketAddr) -> String {
        let base = match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => listening_url(listening),
        };
        format!("{base}/api/v1")
    }

    /// This engine's own API as other engines reach it: `--advertise-url`, else the address
    /// the API listens on, with 127.0.0.1 for an unspecified host.
    pub fn advertise_url(&self, listening: SocketAddr) -> String {
        match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => listening_url(listening),
        }
    }

    pub fn engine_name(&self) -> String {
        self.engine_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name("engine"), std::process::id()))
    }

    pub fn nats_url(&self) -> String {
        self.nats_url
            .clone()
            .unwrap_or_else(|| format!("nats://127.0.0.1:{}", self.nats_port))
    }

    pub fn worker_name(&self) -> String {
        self.worker_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name("worker"), std::process::id()))
    }
}

fn host_name(otherwise: &str) -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| otherwise.into())
}

fn listening_url(listening: SocketAddr) -> String {
    if listening.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", listening.port())
    } else {
        format!("http://{listening}")
    }
}

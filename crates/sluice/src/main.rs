//! `sluice`: parse the command line, set up logging, run.

/// mimalloc: an engine or worker allocates and frees small blocks for every message,
/// actor and statement, and glibc's allocator spent about a quarter of the engine's CPU on
/// them (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sluice::cli::{self, Client};
use sluice::config::{Config, bundled_packs};
use sluice_telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Event-driven automation on NATS JetStream"
)]
struct Cli {
    /// Log format: human or json.
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Engine, a worker and (unless --nats-url) a nats-server, in one process.
    Up(ServerArgs),
    /// The engine alone: triggers, rules, queues, store and HTTP API.
    Engine(ServerArgs),
    /// A worker alone: runs actions; needs NATS and the packs, no database.
    Worker(ServerArgs),
    /// Run an action: sluice run core.local cmd='uname -a' --wait
    Run {
        /// The action, as pack.name.
        action: String,
        /// Parameters as key=value.
        params: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish a trigger event, as `nats pub sluice.trigger.<ref> PAYLOAD` would; or
    /// `sluice trigger list` / `show REF`.
    #[command(args_conflicts_with_subcommands = true)]
    Trigger {
        #[command(subcommand)]
        command: Option<TriggerCommand>,
        /// The trigger, as pack.name.
        #[arg(required = true)]
        trigger: Option<String>,
        /// The payload, JSON.
        #[arg(default_value = "{}")]
        payload: String,
        /// The NATS server, with a user that may publish triggers [default: the URL
        /// `sluice up` wrote to <data-dir>/nats-publisher.url, else nats://127.0.0.1:4222].
        #[arg(long, env = "SLUICE_NATS_URL", hide_env_values = true)]
        nats_url: Option<String>,
        /// Where to find nats-publisher.url when no --nats-url is given.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
        data_dir: PathBuf,
    },
    /// Inspect executions.
    Execution {
        #[command(subcommand)]
        command: ExecutionCommand,
    },
    /// Create, list and revoke API tokens (admin scope).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The datastore (st2kv): keys and secrets for templates and actions; and the
    /// secrets key's rotation.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Timer rules: each one's schedule, next and last tick.
    Timer {
        #[command(subcommand)]
        command: TimerCommand,
    },
    /// Rules: list and show them; enable or disable one at run time (admin scope).
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Actions: list them, or show one with its parameters and policy.
    Action {
        #[command(subcommand)]
        command: ActionCommand,
    },
    /// The live workers: capacity, what each runs, last heartbeat.
    Workers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Packs: what each holds, and the packs left out with every problem in them.
    Pack {
        #[command(subcommand)]
        command: PackCommand,
    },
    /// Trigger events: list them; show one with how each rule on its trigger judged it.
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Print a shell's completion script: sluice completions bash > /etc/bash_completion.d/sluice
    Completions { shell: clap_complete::Shell },
    /// Make the keys several engines share, before any engine starts: DIR/run-signing.key
    /// (and its public half run-signing.pub, for workers) and DIR/secrets.key. Files
    /// already there are kept.
    Keygen {
        /// Where to write the key files (made if missing).
        dir: PathBuf,
    },
    /// Print the engine's live actor tree.
    Actors {
        /// Only this action's supervisor (pack.name).
        #[arg(long)]
        action: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How a command that requests an execution waits for it.
#[derive(Args)]
struct WaitArgs {
    /// Wait for the execution to finish; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

impl WaitArgs {
    fn waiting(&self, json: bool) -> cli::Waiting {
        cli::Waiting {
            wait: self.wait,
            timeout: Duration::from_secs(self.timeout),
            json,
        }
    }
}

#[derive(Subcommand)]
enum ExecutionCommand {
    /// Recent executions, newest first.
    List {
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Only those this rule requested.
        #[arg(long)]
        rule: Option<String>,
        /// Only those created since: an RFC 3339 time, or a duration back from now (1h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel an execution: queued ones at once, running ones by their worker.
    Cancel {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow an execution's output as its worker reads it, until it ends; exit 0 only if
    /// it succeeded. For one that ended, what its result kept.
    Tail {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel every unfinished execution of an action, a rule, a status or a workflow.
    CancelAll {
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// The workflow execution whose tasks to cancel.
        #[arg(long)]
        parent: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run an execution again with the same parameters, key=value overriding some; the
    /// new execution names the one it re-runs.
    #[command(name = "re-run")]
    Rerun {
        id: i64,
        /// Parameters to change, as key=value.
        params: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One execution: parameters, status history and result.
    Get {
        id: i64,
        /// Print each status as it is reached, with the time since it was requested, until
        /// it ends; exit 0 only if it succeeded.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TimerCommand {
    /// Every timer rule: trigger, next tick, last tick, missed-tick policy.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RuleCommand {
    /// Every rule: enabled or not, trigger, action, and who switched it.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One rule in full: trigger, criteria, action, file, switch.
    Get {
        /// pack.name
        rule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Define a rule from a file written as a pack's rule file is, with `pack:` naming its
    /// pack; `--replace` replaces the API rule of that name.
    Create {
        /// The rule, YAML or JSON.
        file: PathBuf,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a rule defined through the API.
    Delete {
        rule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Whether a rule would match a payload, and what it would run; fires nothing.
    Test {
        rule: String,
        /// The trigger payload, JSON.
        payload: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a rule now and across restarts; a timer rule's timer resumes.
    Enable {
        rule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a rule now and across restarts: it matches no event, and a timer rule's
    /// timer is paused.
    Disable {
        rule: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// Every trigger: the NATS subject that fires it and the rules on it.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One trigger: payload schema, subject, rules.
    Show {
        trigger: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ActionCommand {
    /// Every action: runner, concurrency limit, description.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One action: parameters, policy, the rules that run it.
    Show {
        action: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum PackCommand {
    /// Every pack: version, actions, rules; a pack left out with its problems.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One pack in full.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Install a pack (admin scope), replacing an installed one of the same name: a local
    /// directory or .tar.gz (uploaded), or a git URL.
    Install {
        /// A pack directory, a .tar.gz of one, or a git URL (https://, ssh://, file://,
        /// user@host:path).
        source: String,
        /// With a git URL: the branch or tag.
        #[arg(long = "ref")]
        reference: Option<String>,
        /// SOURCE is a directory on the engine's host, not this one.
        #[arg(long)]
        on_engine: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a pack's files again and put them in force (admin scope); nothing changes if
    /// they do not load.
    Reload {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a pack installed through the API (admin scope).
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum EventCommand {
    /// Recent events, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        trigger: Option<String>,
        /// accepted or rejected.
        #[arg(long)]
        status: Option<String>,
        /// Only those since: an RFC 3339 time, or a duration back from now (1h).
        #[arg(long)]
        since: Option<String>,
        /// Only those whose payload has this value: path=value (host=db1, labels.team=ops).
        #[arg(long)]
        payload: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One event: payload, and for each rule on its trigger whether it matched, and if not
    /// the first criterion that failed with the value it saw.
    Show {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct KeyRef {
    /// The key's name.
    name: String,
    /// A pack's key instead of a system one.
    #[arg(long)]
    pack: Option<String>,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Set a key (admin scope): sluice key set api_host db1.example.com
    Set {
        #[command(flatten)]
        key: KeyRef,
        /// The value, text; JSON with --json-value.
        value: String,
        /// Read VALUE as JSON.
        #[arg(long)]
        json_value: bool,
        /// Keep it sealed; shown as ******** and opened only with `| decrypt_kv`.
        #[arg(long)]
        secret: bool,
        /// Remove it after this long: 30s, 1h, 7d.
        #[arg(long)]
        ttl: Option<String>,
        /// Set it only if it is at this revision (0: only if it does not exist).
        #[arg(long)]
        revision: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a key's value (a secret masked unless --decrypt, which needs admin).
    Get {
        #[command(flatten)]
        key: KeyRef,
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every key, secret values masked.
    List {
        /// Only keys starting with this (e.g. system.aws_).
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key (admin scope).
    Delete {
        #[command(flatten)]
        key: KeyRef,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new secrets key, which seals from now on, and seal every stored secret again
    /// with it (admin scope). Workers pick the new key up from their key file.
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (it is shown this once).
    Create {
        /// read: look; run: also start and cancel; admin: also tokens.
        #[arg(long)]
        scope: String,
        /// Expire after this long: 30d, 12h, 90m. Never, without it.
        #[arg(long)]
        expires: Option<String>,
        /// What it is for, shown in `sluice token list`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every token: scope, expiry, last use; never the token itself.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token; it stops working at once.
    Revoke {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.api, self.token.as_deref(), &self.data_dir)
    }
}

#[derive(Args)]
struct ClientArgs {
    /// The Sluice API.
    #[arg(long, env = "SLUICE_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The API token; without it, the admin token `sluice up` wrote to
    /// <data-dir>/admin.token.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where to find admin.token when no --token is given.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServerArgs {
    /// Directory for the SQLite store and the nats-server that `up` starts.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    data_dir: PathBuf,
    /// A directory of packs (repeatable); default the bundled packs.
    #[arg(long, env = "SLUICE_PACKS", value_delimiter = ',')]
    packs: Vec<PathBuf>,
    /// The directory of pack configurations, StackStorm's `configs/`: `<pack>.yaml` for
    /// each pack, checked against the pack's `config.schema.yaml`
    /// [default: <data-dir>/configs].
    #[arg(long, env = "SLUICE_CONFIGS")]
    configs: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long, env = "SLUICE_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Where `sluice worker` serves /metrics and /healthz (off unless given).
    #[arg(long, env = "SLUICE_WORKER_HTTP")]
    worker_http: Option<SocketAddr>,
    /// Also serve /metrics and /healthz here without credentials, for a scraper
    /// (`sluice up` and `sluice engine`; the API's /metrics needs a read token).
    #[arg(long, env = "SLUICE_METRICS_HTTP")]
    metrics_http: Option<SocketAddr>,
    /// A running NATS server; without it `sluice up` starts nats-server itself.
    #[arg(long, env = "SLUICE_NATS_URL")]
    nats_url: Option<String>,
    /// Port for the nats-server that `sluice up` starts.
    #[arg(long, env = "SLUICE_NATS_PORT", default_value_t = 4222)]
    nats_port: u16,
    /// PostgreSQL instead of SQLite: postgres://user@host/db
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    database_url: Option<String>,
    /// Actions a worker runs at once.
    #[arg(long, env = "SLUICE_CAPACITY", default_value_t = 16)]
    capacity: usize,
    /// The worker's name (default host-pid).
    #[arg(long, env = "SLUICE_WORKER_NAME")]
    worker_name: Option<String>,
    /// Seconds shutdown waits for executions in flight.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// Seconds between a worker's heartbeats.
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", default_value_t = 2.0)]
    heartbeat_interval: f64,
    /// Seconds a worker may be silent before its executions are declared lost.
    #[arg(long, env = "SLUICE_WORKER_LOSS_WINDOW", default_value_t = 10.0)]
    worker_loss_window: f64,
    /// A file holding the NATS user nkey seed (SU...) to connect with.
    #[arg(long, env = "SLUICE_NATS_NKEY")]
    nats_nkey: Option<PathBuf>,
    /// A NATS credentials file (.creds: user JWT and nkey seed), for a server in operator
    /// mode.
    #[arg(long, env = "SLUICE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) to verify the NATS server's TLS certificate with; TLS required.
    #[arg(long, env = "SLUICE_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// This process's TLS client certificate (PEM), for a server that verifies clients.
    #[arg(long, env = "SLUICE_NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// The key (PEM) of --nats-tls-cert.
    #[arg(long, env = "SLUICE_NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// The engine's key for signing run messages [default: <data-dir>/run-signing.key,
    /// made with its public half run-signing.pub on first start].
    #[arg(long, env = "SLUICE_RUN_SIGNING_KEY")]
    run_signing_key: Option<PathBuf>,
    /// A public key (hex) whose signed run messages a worker runs; repeat for several
    /// [default: <data-dir>/run-signing.pub].
    #[arg(long, env = "SLUICE_RUN_VERIFY_KEY", value_delimiter = ',')]
    run_verify_key: Vec<PathBuf>,
    /// The secrets key file: secret values are sealed with its newest key and opened with
    /// any of its keys. The engine makes it on first start; workers need a copy
    /// [default: <data-dir>/secrets.key].
    #[arg(long, env = "SLUICE_SECRETS_KEY")]
    secrets_key: Option<PathBuf>,
    /// KiB of an action's stdout and of its stderr a result keeps; the rest is dropped and
    /// the result marked `truncated` (at most 65536). A result of more than 64 KiB of JSON
    /// travels to the engine in the `sluice-results` object store.
    #[arg(long, env = "SLUICE_OUTPUT_CAP", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    output_cap: u32,
    /// Let actions set their runner parameter `sudo: true` (run through `sudo -n -E`); without
    /// it such an execution fails saying so.
    #[arg(long, env = "SLUICE_ALLOW_SUDO")]
    allow_sudo: bool,
    /// Let a secret parameter be one of a `local-shell-script` script's arguments, where
    /// every user of the worker's host can read it in the process list; without it such an
    /// execution fails saying so.
    #[arg(long, env = "SLUICE_SECRETS_ON_COMMAND_LINE")]
    secrets_on_command_line: bool,
    /// Copies of each stream and key-value bucket the engine sets up keep: 3 (or 5) on a
    /// NATS cluster, so losing a server loses nothing; 1 on a single server.
    #[arg(long, env = "SLUICE_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    stream_replicas: u8,
    /// Jaeger's web UI (`http://jaeger:16686`): the dashboard links each execution's trace
    /// id to its trace there.
    #[arg(long, env = "SLUICE_JAEGER_URL")]
    jaeger_url: Option<String>,
    /// Where this engine's API is reached from workers (`http://engine:8080`): actions are
    /// given `<URL>/api/v1` as ST2_ACTION_API_URL. Default: the --http address, with
    /// 127.0.0.1 for an unspecified host.
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    public_url: Option<String>,
    /// This engine's name among several engines [default: <host>-<pid>].
    #[arg(long, env = "SLUICE_ENGINE_NAME")]
    engine_name: Option<String>,
    /// Where other engines reach this engine's API (`http://10.0.0.5:8080`): while it is the
    /// primary, standby engines forward requests there. Default: the --http address, with
    /// 127.0.0.1 for an unspecified host.
    #[arg(long, env = "SLUICE_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Seconds the execution core's lease lives unrenewed (`sluice engine`): after an
    /// engine dies, a standby takes over within about this long. The same on every engine.
    #[arg(long, env = "SLUICE_LEASE_TTL", default_value_t = 6.0)]
    lease_ttl: f64,
    /// Run several engines active at once (`sluice engine`): the actions are cut into this
    /// many partitions, the same number on every engine, and the engines share them out,
    /// each running the supervisors of its own. Give at least as many partitions as you run
    /// engines. Without it, one engine runs the execution core and the others stand by.
    #[arg(long, env = "SLUICE_PARTITIONS",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: Option<u32>,
    /// Threads that run this process's tasks [default: one per core]. Where the engine, a
    /// worker and nats-server share a few cores, one each wakes no second thread for every
    /// message and spends less CPU per execution (docs/performance.md).
    #[arg(long, env = "SLUICE_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

impl ServerArgs {
    fn into_config(mut self) -> Config {
        let venvs = self.data_dir.join("venvs");
        // An empty entry (`SLUICE_PACKS=""`) names no directory.
        self.packs.retain(|dir| !dir.as_os_str().is_empty());
        Config {
            data_dir: self.data_dir,
            configs: self.configs,
            worker_packs: self.packs.clone(),
            packs: if self.packs.is_empty() {
                vec![bundled_packs()]
            } else {
                self.packs
            },
            http: self.http,
            worker_http: self.worker_http,
            metrics_http: self.metrics_http,
            nats_url: self.nats_url,
            nats_port: self.nats_port,
            database_url: self.database_url,
            capacity: self.capacity,
            worker_name: self.worker_name,
            drain_timeout: Duration::from_secs(self.drain_timeout),
            heartbeat_interval: Duration::from_secs_f64(self.heartbeat_interval.max(0.05)),
            worker_loss_window: Duration::from_secs_f64(self.worker_loss_window.max(0.1)),
            run_signing_key: self.run_signing_key,
            nats_options: sluice_bus::NatsOptions {
                nkey: self.nats_nkey,
                creds: self.nats_creds,
                tls_ca: self.nats_tls_ca,
                tls_cert: self.nats_tls_cert.zip(self.nats_tls_key),
            },
            run_verify_keys: self.run_verify_key,
            secrets_key: self.secrets_key,
            runner: sluice_worker::runner::Settings {
                output_cap: self.output_cap as usize * 1024,
                allow_sudo: self.allow_sudo,
                secrets_on_command_line: self.secrets_on_command_line,
                venvs: Some(std::sync::Arc::new(sluice_worker::venv::Venvs::new(venvs))),
                // The worker's own, set when it starts.
                service: None,
                forks: None,
            },
            stream_replicas: usize::from(self.stream_replicas),
            jaeger_url: self.jaeger_url,
            public_url: self.public_url,
            engine_name: self.engine_name,
            advertise_url: self.advertise_url,
            lease_ttl: Duration::from_secs_f64(self.lease_ttl.max(1.0)),
            partitions: self.partitions,
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn main_inner(cli: Cli) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Up(args) => sluice::up::run(args.into_config(), shutdown_signal())
            .await
            .map(|()| true),
        Command::Engine(args) => sluice::up::run_engine(args.into_config(), shutdown_signal())
            .await
            .map(|()| true),
        Command::Worker(args) => sluice::up::run_worker(args.into_config(), shutdown_signal())
            .await
            .map(|()| true),
        Command::Run {
            action,
            params,
            wait,
            client,
        } => {
            let waiting = wait.waiting(client.json);
            cli::run(&client.client()?, &action, &params, waiting, &mut out).await
        }
        Command::Trigger {
            command: Some(command),
            ..
        } => match command {
            TriggerCommand::List { client } => {
                list_or_show(
                    &client,
                    "/api/v1/triggers".into(),
                    &mut out,
                    cli::print_triggers,
                )
                .await
            }
            TriggerCommand::Show { trigger, client } => {
                let path = format!("/api/v1/triggers/{}", cli::rule_ref(&trigger)?);
                list_or_show(&client, path, &mut out, cli::print_triggers).await
            }
        },
        Command::Action { command } => match command {
            ActionCommand::List { client } => {
                list_or_show(
                    &client,
                    "/api/v1/actions".into(),
                    &mut out,
                    cli::print_actions,
                )
                .await
            }
            ActionCommand::Show { action, client } => {
                let path = format!("/api/v1/actions/{}", cli::rule_ref(&action)?);
                list_or_show(&client, path, &mut out, cli::print_actions).await
            }
        },
        Command::Keygen { dir } => {
            use anyhow::Context as _;
            let signing = dir.join("run-signing.key");
            let signer = sluice_bus::RunSigner::load_or_create(&signing)
                .with_context(|| format!("the run-signing key {}", signing.display()))?;
            let secrets = dir.join("secrets.key");
            sluice_core::secrets::Keyring::load_or_create(&secrets)
                .with_context(|| format!("the secrets key {}", secrets.display()))?;
            writeln!(
                out,
                "{}\n{} (public key {})\n{}",
                signing.display(),
                signing.with_extension("pub").display(),
                signer.public_hex(),
                secrets.display()
            )?;
            Ok(true)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "sluice", &mut script);
            out.write_all(&script)?;
            Ok(true)
        }
        Command::Workers { client } => {
            let workers = client.client()?.get("/api/v1/workers").await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&workers)?)?;
            } else {
                cli::print_workers(&workers, &mut cli::table_out(&mut out))?;
            }
            Ok(true)
        }
        Command::Trigger {
            command: None,
            trigger,
            payload,
            nats_url,
            data_dir,
        } => {
            let trigger = trigger.unwrap_or_default();
            let nats_url = match nats_url {
                Some(url) => url,
                None => cli::publisher_url(&data_dir)?,
            };
            cli::publish_trigger(&nats_url, &trigger, &payload).await?;
            writeln!(
                out,
                "published to {}",
                sluice_bus::trigger_subject(&trigger)
            )?;
            Ok(true)
        }
        Command::Execution {
            command:
                ExecutionCommand::List {
                    action,
                    status,
                    rule,
                    since,
                    limit,
                    client,
                },
        } => {
            let query = cli::query(&[
                ("limit", Some(limit.to_string())),
                ("action", action),
                ("status", status),
                ("rule", rule),
                ("since", since),
            ]);
            let list = client
                .client()?
                .get(&format!("/api/v1/executions?{query}"))
                .await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                cli::print_table(
                    list.as_array().map(Vec::as_slice).unwrap_or_default(),
                    &mut cli::table_out(&mut out),
                )?;
            }
            Ok(true)
        }
        Command::Execution {
            command:
                ExecutionCommand::CancelAll {
                    action,
                    rule,
                    status,
                    parent,
                    client,
                },
        } => {
            let filter = serde_json::json!({
                "action": action, "rule": rule, "status": status, "parent": parent,
            });
            let answer = client
                .client()?
                .post("/api/v1/executions/cancel", &filter)
                .await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
            } else {
                writeln!(
                    out,
                    "{} execution(s) cancelled or asked to cancel",
                    answer["matched"]
                )?;
            }
            Ok(true)
        }
        Command::Execution {
            command: ExecutionCommand::Tail { id, client },
        } => client.client()?.tail(id, &mut out).await,
        Command::Execution {
            command: ExecutionCommand::Cancel { id, client },
        } => {
            let answer = client
                .client()?
                .post(
                    &format!("/api/v1/executions/{id}/cancel"),
                    &serde_json::json!({}),
                )
                .await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
            } else if answer["cancel"] == "cancelled" {
                writeln!(out, "execution {id} cancelled")?;
            } else {
                writeln!(
                    out,
                    "execution {id} is with a worker; it was asked to cancel it"
                )?;
            }
            Ok(true)
        }
        Command::Execution {
            command: ExecutionCommand::Get { id, watch, client },
        } => {
            if watch {
                return cli::watch(&client.client()?, id, client.json, &mut out).await;
            }
            let execution = client
                .client()?
                .get(&format!("/api/v1/executions/{id}"))
                .await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&execution)?)?;
            } else {
                cli::print_execution(&execution, &mut out)?;
            }
            Ok(true)
        }
        Command::Execution {
            command:
                ExecutionCommand::Rerun {
                    id,
                    params,
                    wait,
                    client,
                },
        } => {
            let waiting = wait.waiting(client.json);
            cli::rerun(&client.client()?, id, &params, waiting, &mut out).await
        }
        Command::Token { command } => cli::token(command_to_call(command)?, &mut out).await,
        Command::Timer {
            command: TimerCommand::List { client },
        } => {
            let timers = client.client()?.get("/api/v1/timers").await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&timers)?)?;
            } else {
                cli::print_timers(&timers, &mut cli::table_out(&mut out))?;
            }
            Ok(true)
        }
        Command::Rule { command } => {
            let (rules, json) = match command {
                RuleCommand::List { client } => {
                    (client.client()?.get("/api/v1/rules").await?, client.json)
                }
                RuleCommand::Get { rule, client } => {
                    let rule = cli::rule_ref(&rule)?;
                    let path = format!("/api/v1/rules/{rule}");
                    (client.client()?.get(&path).await?, true)
                }
                RuleCommand::Test {
                    rule,
                    payload,
                    client,
                } => {
                    let payload: serde_json::Value = serde_json::from_str(&payload)
                        .map_err(|e| anyhow::anyhow!("the payload is not JSON: {e}"))?;
                    let path = format!("/api/v1/rules/{}/test", cli::rule_ref(&rule)?);
                    let body = serde_json::json!({ "payload": payload });
                    let test = client.client()?.post(&path, &body).await?;
                    if client.json {
                        writeln!(out, "{}", serde_json::to_string_pretty(&test)?)?;
                    } else {
                        cli::print_rule_test(&test, &mut out)?;
                    }
                    return Ok(test["matched"] == true);
                }
                RuleCommand::Create {
                    file,
                    replace,
                    client,
                } => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                    let definition: serde_json::Value =
                        serde_yaml_ng::from_str(&text).map_err(|e| {
                            anyhow::anyhow!("{} is not YAML or JSON: {e}", file.display())
                        })?;
                    let api = client.client()?;
                    let created = if replace {
                        let rule = format!(
                            "{}.{}",
                            definition["pack"].as_str().unwrap_or_default(),
                            definition["name"].as_str().unwrap_or_default()
                        );
                        let path = format!("/api/v1/rules/{}", cli::rule_ref(&rule)?);
                        api.put(&path, &definition).await?
                    } else {
                        api.post("/api/v1/rules", &definition).await?
                    };
                    if client.json {
                        writeln!(out, "{}", serde_json::to_string_pretty(&created)?)?;
                    } else {
                        let rule = created["ref"].as_str().unwrap_or_default();
                        let state = if created["enabled"] == true {
                            "enabled"
                        } else {
                            "disabled"
                        };
                        writeln!(
                            out,
                            "{rule} defined ({state}); `sluice rule get {rule}` shows it"
                        )?;
                    }
                    return Ok(true);
                }
                RuleCommand::Delete { rule, client } => {
                    let path = format!("/api/v1/rules/{}", cli::rule_ref(&rule)?);
                    let deleted = client.client()?.delete(&path).await?;
                    if client.json {
                        writeln!(out, "{}", serde_json::to_string_pretty(&deleted)?)?;
                    } else {
                        writeln!(out, "{rule} deleted")?;
                    }
                    return Ok(true);
                }
                RuleCommand::Enable { rule, client } => {
                    let path = format!("/api/v1/rules/{}/enable", cli::rule_ref(&rule)?);
                    let body = serde_json::json!({});
                    (client.client()?.post(&path, &body).await?, client.json)
                }
                RuleCommand::Disable { rule, client } => {
                    let path = format!("/api/v1/rules/{}/disable", cli::rule_ref(&rule)?);
                    let body = serde_json::json!({});
                    (client.client()?.post(&path, &body).await?, client.json)
                }
            };
            if rules.is_array() && !json {
                cli::print_rules(&rules, &mut cli::table_out(&mut out))?;
            } else if let (false, Some(enabled)) = (json, rules["enabled"].as_bool()) {
                // A switch: what it did, in words.
                let rule = rules["ref"].as_str().unwrap_or_default();
                let state = if enabled { "enabled" } else { "disabled" };
                let is_timer = rules["trigger"]["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("core.st2.") && t.ends_with("Timer"));
                let timer = match (is_timer, enabled) {
                    (false, _) => "",
                    (true, true) => "; its timer runs",
                    (true, false) => "; its timer is paused",
                };
                writeln!(out, "{rule} {state}{timer}")?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&rules)?)?;
            }
            Ok(true)
        }
        Command::Key { command } => {
            let (call, client) = match command {
                KeyCommand::Set {
                    key,
                    value,
                    json_value,
                    secret,
                    ttl,
                    revision,
                    client,
                } => {
                    let value = if json_value {
                        serde_json::from_str(&value)
                            .map_err(|e| anyhow::anyhow!("VALUE is not JSON: {e}"))?
                    } else {
                        serde_json::Value::String(value)
                    };
                    let call = cli::KeyCall::Set {
                        key: cli::key_path(&key.name, key.pack.as_deref()),
                        body: serde_json::json!({
                            "value": value, "secret": secret, "ttl": ttl, "revision": revision
                        }),
                    };
                    (call, client)
                }
                KeyCommand::Get {
                    key,
                    decrypt,
                    client,
                } => {
                    let key = cli::key_path(&key.name, key.pack.as_deref());
                    (cli::KeyCall::Get { key, decrypt }, client)
                }
                KeyCommand::List { prefix, client } => (cli::KeyCall::List { prefix }, client),
                KeyCommand::Delete { key, client } => {
                    let key = cli::key_path(&key.name, key.pack.as_deref());
                    (cli::KeyCall::Delete { key }, client)
                }
                KeyCommand::Rotate { client } => (cli::KeyCall::Rotate, client),
            };
            cli::key(&client.client()?, call, client.json, &mut out).await
        }
        Command::Pack { command } => match command {
            PackCommand::List { client } => {
                list_or_show(&client, "/api/v1/packs".into(), &mut out, cli::print_packs).await
            }
            PackCommand::Show { name, client } => {
                let path = format!("/api/v1/packs/{}", cli::name_segment(&name)?);
                list_or_show(&client, path, &mut out, cli::print_packs).await
            }
            PackCommand::Install {
                source,
                reference,
                on_engine,
                client,
            } => {
                let pack =
                    cli::install_pack(&client.client()?, &source, reference, on_engine).await?;
                print_pack_change(&pack, client.json, "installed", &mut out)
            }
            PackCommand::Reload { name, client } => {
                let path = format!("/api/v1/packs/{}/reload", cli::name_segment(&name)?);
                let pack = client.client()?.post(&path, &serde_json::json!({})).await?;
                print_pack_change(&pack, client.json, "reloaded", &mut out)
            }
            PackCommand::Remove { name, client } => {
                let path = format!("/api/v1/packs/{}", cli::name_segment(&name)?);
                let removed = client.client()?.delete(&path).await?;
                if client.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&removed)?)?;
                } else {
                    writeln!(out, "pack {name} removed")?;
                }
                Ok(true)
            }
        },
        Command::Event { command } => {
            let (path, client, show) = match command {
                EventCommand::List {
                    limit,
                    trigger,
                    status,
                    since,
                    payload,
                    client,
                } => {
                    let mut query = cli::query(&[
                        ("limit", Some(limit.to_string())),
                        ("trigger", trigger),
                        ("status", status),
                        ("since", since),
                    ]);
                    if let Some(payload) = payload {
                        let (path, value) = payload
                            .split_once('=')
                            .ok_or_else(|| anyhow::anyhow!("--payload: write it as path=value"))?;
                        query.push('&');
                        query.push_str(&cli::query_pair(&format!("payload.{path}"), value));
                    }
                    (format!("/api/v1/events?{query}"), client, false)
                }
                EventCommand::Show { id, client } => (format!("/api/v1/events/{id}"), client, true),
            };
            let events = client.client()?.get(&path).await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&events)?)?;
            } else if show {
                cli::print_event(&events, &mut out)?;
            } else {
                cli::print_events(&events, &mut cli::table_out(&mut out))?;
            }
            Ok(true)
        }
        Command::Actors { action, client } => {
            let path = match action {
                Some(action) => format!("/api/v1/actors?{}", cli::query_pair("action", &action)),
                None => "/api/v1/actors".to_owned(),
            };
            let tree = client.client()?.get(&path).await?;
            if client.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&tree)?)?;
            } else {
                cli::print_tree(&tree, 0, &mut out)?;
            }
            Ok(true)
        }
    }
}

/// A token subcommand as the call the CLI makes.
fn command_to_call(command: TokenCommand) -> anyhow::Result<cli::TokenCall> {
    Ok(match command {
        TokenCommand::Create {
            scope,
            expires,
            name,
            client,
        } => cli::TokenCall::Create {
            client: client.client()?,
            json: client.json,
            body: serde_json::json!({ "scope": scope, "expires": expires, "name": name }),
        },
        TokenCommand::List { client } => cli::TokenCall::List {
            client: client.client()?,
            json: client.json,
        },
        TokenCommand::Revoke { id, client } => cli::TokenCall::Revoke {
            client: client.client()?,
            id,
        },
    })
}

/// `list` and `show` of one kind: a table for a list, JSON for one item or with `--json`.
/// A pack just installed or reloaded: its name, version and digest, or the JSON.
fn print_pack_change(
    pack: &serde_json::Value,
    json: bool,
    what: &str,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(pack)?)?;
    } else {
        let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
        writeln!(
            out,
            "pack {} {} {what}: {} actions, {} triggers, {} rules ({})",
            pack["name"].as_str().unwrap_or(""),
            pack["version"].as_str().unwrap_or("-"),
            count(&pack["actions"]),
            count(&pack["triggers"]),
            count(&pack["rules"]),
            pack["digest"].as_str().unwrap_or("")
        )?;
    }
    Ok(true)
}

async fn list_or_show<'o, W: Write>(
    client: &ClientArgs,
    path: String,
    out: &'o mut W,
    table: impl FnOnce(&serde_json::Value, &mut cli::FitWidth<&'o mut W>) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let found = client.client()?.get(&path).await?;
    if client.json || !found.is_array() {
        writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?;
    } else {
        table(&found, &mut cli::table_out(out))?;
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Up(args) | Command::Engine(args) | Command::Worker(args) => args.threads,
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = threads {
        runtime.worker_threads(usize::from(threads));
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    // The long-running modes record and export spans; the client commands only log.
    let service = match cli.command {
        Command::Up(_) => Some("sluice"),
        Command::Engine(_) => Some("sluice-engine"),
        Command::Worker(_) => Some("sluice-worker"),
        _ => None,
    };
    let telemetry = match service {
        Some(service) => Some(sluice_telemetry::init(cli.log_format, service)),
        None => {
            sluice_telemetry::init_logs(cli.log_format);
            None
        }
    };
    let outcome = main_inner(cli).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

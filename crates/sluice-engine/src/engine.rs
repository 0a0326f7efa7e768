//! [`Engine`]: starts the actor tree and the consumer loops, and is what the API and the
//! CLI call (submit, cancel, figures, the actor tree, shutdown).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Map, Value};
use sluice_bus::datastore::Datastore;
use sluice_bus::timers::TimerState;
use sluice_bus::{Bus, BusError, ExecutionTokens, RunSigner, Settle, names};
use sluice_core::secrets::Keyring;
use sluice_core::{ActionRef, ExecutionId, ExecutionStatus, StatusReport};
use sluice_pack::datastore::{Kv, opened_during};
use sluice_pack::{Catalog, params};
use sluice_store::{ApiRule, Resealed, RuleSwitch, Store};
use sluice_telemetry::TraceContext;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, warn};

use crate::backend::Live;
use crate::consumer::{self, LoopFn};
use crate::context::{ActionApiAccess, ActorContext, LiveCatalog, Shared};
use crate::datastore::{self, KeyCache, Keys};
use crate::error::{CancelError, EngineError, RuleError, SubmitError};
use crate::handles::{ActorName, CancelOutcome, Directory, Pending, SupervisorStats};
use crate::monitor::{self, WorkerInfo, Workers};
use crate::packs::{self as pack_changes, PackError, PackSource, PackSources};
use crate::partitions;
use crate::routes::{Partitioned, Routes};
use crate::supervisor::{ActionSupervisor, SupervisorArgs};
use crate::timers::{self, TimerView, Timers};
use crate::tree::{self, ActorKind, ActorNode};
use crate::{completion, deadletter, ingest, recover, rules};

/// What the engine runs with.
pub struct EngineConfig {
    /// Prefix of the engine's actor names; unique within the process.
    pub name: String,
    pub catalog: Arc<Catalog>,
    /// Where the catalog's packs were loaded from, for reloading and installing packs.
    pub packs: PackSources,
    pub store: Store,
    pub bus: Bus,
    /// The key run messages are signed with; workers run only what it signed.
    pub run_signer: Arc<RunSigner>,
    /// The keys secret values are sealed with; workers hold the same key file.
    pub keyring: Arc<Keyring>,
    /// Consume the TRIGGERS stream (switch off for an API-only engine).
    pub ingest_triggers: bool,
    /// A worker silent this long is lost: its executions end `abandoned` (or are retried).
    pub worker_loss_window: Duration,
    /// The API's base URL as actions reach it (`…/api/v1`), given to them with a token of
    /// their execution; `None` when the engine serves no API.
    pub api_url: Option<String>,
    /// When several engines are active at once: the partitions of the actions this one
    /// owns. `None`: this engine owns every action.
    pub partitions: Option<Partitioned>,
}

/// A running engine. Dropping it leaves the actors running; call [`Engine::shutdown`].
pub struct Engine {
    shared: Arc<Shared>,
    directory: Arc<Directory>,
    root: ActorRef<()>,
    /// The long-lived actors under the root, by kind, for the actor tree.
    fixed: HashMap<ActorId, ActorKind>,
    /// The one shutdown source. Its child `intake` stops the ingestor and every admission;
    /// cancelling it stops the rest.
    shutdown: CancellationToken,
    intake: CancellationToken,
    workers: Workers,
    keys: Keys,
    timers: Timers,
    /// What new supervisors are started with.
    contexts: Contexts,
    /// The partitions this engine owns, when the engines run partitioned.
    partitions: Option<Partitioned>,
    packs: PackSources,
    pack_store: sluice_bus::packs::PackStore,
    /// One pack change at a time.
    pack_lock: pack_changes::Lock,
    /// Checks the tokens actions call the API with.
    execution_tokens: ExecutionTokens,
}

/// What each action's supervisor is started with: one context for every action, or, when
/// the engine owns some partitions, one per partition (its writes checked against the
/// partition's fence) and none for the actions of other engines.
enum Contexts {
    All(Arc<ActorContext>),
    Partitions {
        count: u32,
        held: std::collections::BTreeMap<u32, Arc<ActorContext>>,
    },
}

impl Contexts {
    fn of(&self, action: &ActionRef) -> Option<Arc<ActorContext>> {
        match self {
            Self::All(ctx) => Some(ctx.clone()),
            Self::Partitions { count, held } => held
                .get(&sluice_core::partition::partition_of(action, *count))
                .cloned(),
        }
    }
}

/// The root of the engine's actor tree. Its children are long-lived; one ending is logged,
/// never a reason to stop the engine (ractor's default would stop it).
struct EngineRoot;

impl Actor for EngineRoot {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(child, err) => {
                error!(actor = ?child.get_name(), error = %err, "engine actor failed")
            }
            SupervisionEvent::ActorTerminated(child, _, reason) => {
                info!(actor = ?child.get_name(), ?reason, "engine actor stopped")
            }
            _ => {}
        }
        Ok(())
    }
}

impl Engine {
    pub async fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let directory = Arc::new(Directory::new(config.name.clone()));
        let shutdown = CancellationToken::new();
        let intake = shutdown.child_token();
        let key_cache = Arc::new(KeyCache::new(config.keyring.clone()));
        let keys = Keys {
            cache: key_cache.clone(),
            store: Datastore::create(&config.bus).await?,
            keyring: config.keyring.clone(),
        };
        let pack_store = sluice_bus::packs::PackStore::create(&config.bus).await?;
        let results = sluice_bus::results::ResultStore::create(&config.bus).await?;
        let mut loaded = Catalog::clone(&config.catalog);
        pack_changes::publish(&pack_store, &mut loaded)
            .await
            .map_err(|e| EngineError::Packs(e.to_string()))?;
        debug!("starting: packs published; reading the rules' switches");
        loaded
            .seal_configs(&config.keyring)
            .map_err(|e| EngineError::Packs(format!("sealing pack configurations: {e}")))?;
        let catalog = with_switches(Arc::new(loaded), &config.store).await?;
        let kv = Kv::new(key_cache.clone(), None);
        let execution_tokens = config.run_signer.execution_tokens();
        // With partitions, the writes that may admit an execution of any of them (a trigger's,
        // an API submission's) check every one of their fences.
        let store = match &config.partitions {
            Some(partitions) if !partitions.held.is_empty() => config
                .store
                .fenced_by_all(partitions.held.values().cloned().collect()),
            _ => config.store,
        };
        let shared = Arc::new(Shared {
            directory: directory.clone(),
            catalog: Arc::new(LiveCatalog::new(catalog.clone())),
            store,
            bus: config.bus.with_run_signer(config.run_signer),
            keyring: config.keyring,
            kv: kv.clone(),
            store_health: Default::default(),
            results,
        });
        let (root, _) = Actor::spawn(Some(config.name.clone()), EngineRoot, ()).await?;
        let context = |store: Store| {
            Arc::new(ActorContext {
                directory: directory.clone(),
                catalog: shared.catalog.watch(),
                backend: Arc::new(Live {
                    store,
                    bus: shared.bus.clone(),
                }),
                keyring: shared.keyring.clone(),
                kv: kv.clone(),
                intake: intake.clone(),
                action_api: config.api_url.clone().map(|url| ActionApiAccess {
                    url,
                    tokens: execution_tokens.clone(),
                }),
                partitions: config.partitions.as_ref().map(|p| p.count),
            })
        };
        let contexts = match &config.partitions {
            None => Contexts::All(context(shared.store.clone())),
            Some(partitions) => {
                directory.route_through(Routes::new(shared.bus.client().clone(), partitions.count));
                Contexts::Partitions {
                    count: partitions.count,
                    held: partitions
                        .held
                        .iter()
                        .map(|(n, fence)| (*n, context(shared.store.clone().fenced(fence.clone()))))
                        .collect(),
                }
            }
        };
        let mut supervisors = HashMap::new();
        for action in catalog.actions.values() {
            let Some(ctx) = contexts.of(&action.action_ref) else {
                continue;
            };
            let args = SupervisorArgs {
                ctx,
                action: action.clone(),
            };
            supervisors.insert(
                action.action_ref.clone(),
                ActionSupervisor::spawn(args, root.get_cell()).await?,
            );
        }
        debug!(
            supervisors = supervisors.len(),
            "starting: supervisors spawned; rebuilding their queues from the store"
        );
        directory.add_supervisors(supervisors);
        let workers = Workers::default();
        // Listening before the rebuild reads the store: a request stored after that read is
        // announced to this engine, one stored before it is in the rebuild.
        let listening = match &config.partitions {
            Some(partitions) => Some(
                partitions::listen(shared.bus.client(), partitions.held.keys().copied()).await?,
            ),
            None => None,
        };
        recover::rebuild(
            &shared.store,
            &catalog,
            &directory,
            &workers,
            config.partitions.as_ref(),
        )
        .await?;
        debug!("starting: queues rebuilt; opening the consumers");

        let mut fixed = HashMap::from([(root.get_id(), ActorKind::Engine)]);
        let mut spawn_loop = async |actor: ActorName<'_>, kind, token: &CancellationToken, run| {
            let name = directory.name(actor);
            let cell = root.get_cell();
            let loop_actor = consumer::spawn_loop(name, cell, token.child_token(), run).await?;
            fixed.insert(loop_actor.get_id(), kind);
            Ok::<_, EngineError>(())
        };

        let heartbeats = shared
            .bus
            .client()
            .subscribe(sluice_bus::HEARTBEAT_SUBJECTS)
            .await
            .map_err(|e| BusError::setup("heartbeat subscription", e))?;
        let (d, w, window) = (
            directory.clone(),
            workers.clone(),
            config.worker_loss_window,
        );
        let client = shared.bus.client().clone();
        // The STATUS consumers this engine takes reports from: the engine's own, or one per
        // partition it owns, each writing under its partition's fence.
        let mut status_consumers = Vec::new();
        match &config.partitions {
            None => status_consumers.push((
                None,
                shared
                    .bus
                    .consumer(names::STATUS, names::ENGINE_CONSUMER)
                    .await?,
                shared.clone(),
            )),
            Some(partitions) => {
                for (n, fence) in &partitions.held {
                    let consumer = shared
                        .bus
                        .partition_consumer(
                            names::STATUS,
                            names::ENGINE_CONSUMER,
                            *n,
                            sluice_bus::partition_status_subjects(*n),
                        )
                        .await?;
                    let fenced =
                        Arc::new(shared.with_store(shared.store.clone().fenced(fence.clone())));
                    status_consumers.push((Some(*n), consumer, fenced));
                }
            }
        }
        let status: Vec<_> = status_consumers.iter().map(|(_, c, _)| c.clone()).collect();
        let run: LoopFn = Box::new(move |cancel| {
            Box::pin(monitor::run(
                client, status, heartbeats, w, d, window, cancel,
            ))
        });
        spawn_loop(ActorName::Workers, ActorKind::WorkerMonitor, &shutdown, run).await?;

        let requests = shared
            .bus
            .client()
            .queue_subscribe(sluice_core::datastore::SERVICE_SUBJECT, "engines".into())
            .await
            .map_err(|e| BusError::setup("datastore request subscription", e))?;
        let (k, cache, client) = (keys.clone(), key_cache, shared.bus.client().clone());
        let run: LoopFn =
            Box::new(move |cancel| Box::pin(datastore::run(k, cache, requests, client, cancel)));
        spawn_loop(ActorName::Datastore, ActorKind::Datastore, &shutdown, run).await?;

        let timers = Timers::default();
        if config.ingest_triggers {
            let state = TimerState::create(&shared.bus).await?;
            // Cancelled only by a shutdown during the start, when nothing is left to run.
            if let Some(started) = timers::start_all(&shared, &state, &timers, &intake).await {
                let (s, t) = (shared.clone(), timers.clone());
                let run: LoopFn =
                    Box::new(move |cancel| Box::pin(timers::run(s, state, t, started, cancel)));
                spawn_loop(ActorName::Timers, ActorKind::Timers, &intake, run).await?;
            }
        }

        let settle = |stream, label| {
            Settle::new(
                shared.bus.clone(),
                stream,
                names::ENGINE_CONSUMER,
                label,
                config.name.clone(),
            )
        };

        let consumer = shared
            .bus
            .consumer(names::DEADLETTER, names::ENGINE_CONSUMER)
            .await?;
        let (s, settler) = (shared.clone(), settle(names::DEADLETTER, "dead_letters"));
        let run: LoopFn = Box::new(move |cancel| {
            Box::pin(async move {
                sluice_bus::consume_batches(consumer, cancel, |batch| {
                    deadletter::handle_dead_letters(&s, &settler, batch)
                })
                .await
            })
        });
        spawn_loop(
            ActorName::DeadLetters,
            ActorKind::DeadLetters,
            &shutdown,
            run,
        )
        .await?;

        for (partition, consumer, s) in status_consumers {
            let settler = settle(names::STATUS, "status");
            let run: LoopFn = Box::new(move |cancel| {
                Box::pin(async move {
                    sluice_bus::consume_batches(consumer, cancel, |batch| {
                        completion::handle_statuses(&s, &settler, batch)
                    })
                    .await
                })
            });
            let name = partition.map_or(ActorName::Completions, ActorName::PartitionCompletions);
            spawn_loop(name, ActorKind::Completions, &shutdown, run).await?;
        }
        if let Some(listening) = listening {
            let s = shared.clone();
            let run: LoopFn =
                Box::new(move |cancel| Box::pin(partitions::run(s, listening, cancel)));
            spawn_loop(ActorName::Partitions, ActorKind::Partitions, &shutdown, run).await?;
        }

        if config.ingest_triggers {
            let consumer = shared
                .bus
                .consumer(names::TRIGGERS, names::ENGINE_CONSUMER)
                .await?;
            let (s, settler) = (shared.clone(), settle(names::TRIGGERS, "triggers"));
            let run: LoopFn = Box::new(move |cancel| {
                Box::pin(async move {
                    sluice_bus::consume_batches(consumer, cancel, |batch| {
                        ingest::handle_triggers(&s, &settler, batch)
                    })
                    .await
                })
            });
            spawn_loop(ActorName::Ingestor, ActorKind::Ingestor, &intake, run).await?;
        }
        info!(
            engine = config.name,
            actions = directory.supervisor_count(),
            store = shared.store.backend_name(),
            "engine started"
        );
        Ok(Self {
            shared,
            directory,
            root,
            fixed,
            shutdown,
            intake,
            workers,
            keys,
            timers,
            contexts,
            partitions: config.partitions,
            packs: config.packs,
            pack_store,
            pack_lock: Default::default(),
            execution_tokens,
        })
    }

    /// The partitions this engine owns, when several engines are active at once.
    pub fn partitions(&self) -> Option<&Partitioned> {
        self.partitions.as_ref()
    }

    /// When the engines run partitioned and another engine owns `action`: the partition it
    /// is in and who holds that partition's lease (`partition.<n>`) now, if anyone.
    pub async fn owner_of(
        &self,
        action: &ActionRef,
    ) -> Option<(u32, Option<sluice_bus::lease::Holder>)> {
        let partitions = self.partitions.as_ref()?;
        if partitions.owns(action) {
            return None;
        }
        let partition = partitions.partition_of(action);
        Some((partition, self.partition_holder(partition).await))
    }

    /// Who holds partition `partition`'s lease now, if anyone (or if it cannot be read).
    pub async fn partition_holder(&self, partition: u32) -> Option<sluice_bus::lease::Holder> {
        let lease = sluice_bus::lease::partition_lease(partition);
        sluice_bus::lease::holder_of(&self.shared.bus, &lease)
            .await
            .inspect_err(|e| warn!(lease, error = %e, "the partition's owner could not be read"))
            .ok()
            .flatten()
    }

    /// The catalog in force, with the rules' switches applied.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.catalog.current()
    }

    /// Loads every pack again and puts the result in force (see [`crate::packs`]); with
    /// `only`, that pack must be known, and its problems are returned if it does not load.
    pub async fn reload_packs(&self, only: Option<&str>) -> Result<(), PackError> {
        let _change = self.pack_lock.lock().await;
        let current = self.catalog();
        if let Some(name) = only
            && !current.packs.contains_key(name)
            && !current.broken.iter().any(|b| b.name == name)
        {
            return Err(PackError::NotFound(format!("no pack {name:?}")));
        }
        let loaded = pack_changes::load(self.packs.all_roots(), self.packs.configs.clone()).await?;
        if let Some(name) = only
            && let Some(broken) = loaded.broken.iter().find(|b| b.name == name)
        {
            return Err(PackError::Broken(vec![broken.clone()]));
        }
        self.put_in_force(loaded).await
    }

    /// Installs a pack (replacing an installed one of the same name) and puts it in force;
    /// its name.
    pub async fn install_pack(&self, source: PackSource) -> Result<String, PackError> {
        let installed = self.installed_dir()?;
        let _change = self.pack_lock.lock().await;
        let staged = pack_changes::stage(&installed, source).await?;
        let result = self.install_staged(&installed, &staged).await;
        if staged.scratch.exists() {
            pack_changes::discard(&staged.scratch);
        }
        result.map(|()| staged.name.clone())
    }

    async fn install_staged(
        &self,
        installed: &std::path::Path,
        staged: &pack_changes::Staged,
    ) -> Result<(), PackError> {
        let name = &staged.name;
        let target = installed.join(name);
        let current = self.catalog();
        if let Some(pack) = current.packs.get(name)
            && !pack_changes::is_installed(installed, &pack.dir)
        {
            return Err(PackError::Conflict(format!(
                "pack {name} is loaded from {}, a --packs directory; change it there",
                pack.dir.display()
            )));
        }
        // Loaded as it will be, beside every other pack, before anything moves.
        let roots = pack_changes::roots_with(&self.packs, installed, name, Some(&staged.dir))?;
        let trial = pack_changes::load(roots, self.packs.configs.clone()).await?;
        let staged_dir = staged
            .dir
            .canonicalize()
            .unwrap_or_else(|_| staged.dir.clone());
        if let Some(broken) = trial
            .broken
            .iter()
            .find(|b| b.dir == staged_dir || &b.name == name)
        {
            return Err(PackError::Broken(vec![pack_changes::as_installed(
                broken.clone(),
                &staged_dir,
                &target,
            )]));
        }
        let aside = pack_changes::swap_in(installed, &staged.dir, &target)?;
        self.reload_or_undo(|| {
            // Back as it was: the new files out, the old ones in.
            pack_changes::discard(&target);
            if let Some(aside) = &aside {
                let _ = std::fs::rename(aside, &target);
            }
        })
        .await?;
        if let Some(aside) = aside {
            pack_changes::discard(&aside);
        }
        info!(pack = %name, dir = %target.display(), "pack installed");
        Ok(())
    }

    /// Removes an installed pack: its actions take no new requests; those already queued
    /// or running finish on the version they have.
    pub async fn remove_pack(&self, name: &str) -> Result<(), PackError> {
        let installed = self.installed_dir()?;
        let _change = self.pack_lock.lock().await;
        let current = self.catalog();
        let dir = match current.packs.get(name) {
            Some(pack) => pack.dir.clone(),
            None => match current.broken.iter().find(|b| b.name == name) {
                Some(broken) => broken.dir.clone(),
                None => return Err(PackError::NotFound(format!("no pack {name:?}"))),
            },
        };
        if !pack_changes::is_installed(&installed, &dir) {
            return Err(PackError::Conflict(format!(
                "pack {name} is loaded from {}, a --packs directory, not installed through the API; remove it there",
                dir.display()
            )));
        }
        let aside = installed.join(format!(".removed-{name}"));
        if aside.exists() {
            pack_changes::discard(&aside);
        }
        std::fs::rename(&dir, &aside)
            .map_err(|e| PackError::Internal(format!("moving {} aside: {e}", dir.display())))?;
        self.reload_or_undo(|| {
            let _ = std::fs::rename(&aside, &dir);
        })
        .await?;
        pack_changes::discard(&aside);
        info!(pack = %name, "pack removed");
        Ok(())
    }

    /// Loads every pack from the files now in place and puts them in force; if that is
    /// refused, `undo` puts the files back as they were.
    async fn reload_or_undo(&self, undo: impl FnOnce()) -> Result<(), PackError> {
        let result =
            match pack_changes::load(self.packs.all_roots(), self.packs.configs.clone()).await {
                Ok(loaded) => self.put_in_force(loaded).await,
                Err(e) => Err(e),
            };
        if result.is_err() {
            undo();
        }
        result
    }

    fn installed_dir(&self) -> Result<std::path::PathBuf, PackError> {
        self.packs.installed.clone().ok_or_else(|| {
            PackError::Conflict("this engine has no directory for installed packs".into())
        })
    }

    /// Publishes `loaded`'s packs, gives every supervisor its action's definition, starts
    /// those of new actions and replaces the catalog; refused whole if a pack in force is
    /// left out of `loaded`.
    async fn put_in_force(&self, mut loaded: Catalog) -> Result<(), PackError> {
        let current = self.catalog();
        let broken = pack_changes::newly_broken(&current, &loaded);
        if !broken.is_empty() {
            return Err(PackError::Broken(broken));
        }
        pack_changes::publish(&self.pack_store, &mut loaded).await?;
        loaded
            .seal_configs(&self.shared.keyring)
            .map_err(|e| PackError::Internal(format!("sealing pack configurations: {e}")))?;
        let catalog = with_switches(Arc::new(loaded), &self.shared.store)
            .await
            .map_err(|e| PackError::Internal(e.to_string()))?;
        let mut started = HashMap::new();
        for action in catalog.actions.values() {
            match self.directory.supervisor(&action.action_ref) {
                Some(supervisor) => supervisor.define(action.clone()),
                None => {
                    let Some(ctx) = self.contexts.of(&action.action_ref) else {
                        continue;
                    };
                    let args = SupervisorArgs {
                        ctx,
                        action: action.clone(),
                    };
                    let supervisor = ActionSupervisor::spawn(args, self.root.get_cell())
                        .await
                        .map_err(|e| PackError::Internal(format!("starting a supervisor: {e}")))?;
                    started.insert(action.action_ref.clone(), supervisor);
                }
            }
        }
        self.directory.add_supervisors(started);
        info!(
            packs = catalog.packs.len(),
            actions = catalog.actions.len(),
            rules = catalog.rules().len(),
            left_out = catalog.broken.len(),
            "packs in force"
        );
        self.shared.catalog.replace(catalog);
        Ok(())
    }

    /// Switches a rule on or off, for now and across restarts: a disabled rule matches no
    /// event and its timer, if it has one, fires no tick until it is enabled again.
    pub async fn switch_rule(
        &self,
        rule: &str,
        enabled: bool,
        by: &str,
    ) -> Result<RuleSwitch, RuleError> {
        if self.shared.catalog.current().rule(rule).is_none() {
            return Err(RuleError::Unknown(rule.to_owned()));
        }
        let switch = RuleSwitch {
            rule: rule.to_owned(),
            enabled,
            changed_at: Utc::now(),
            changed_by: by.to_owned(),
        };
        self.shared.store.switch_rule(&switch).await?;
        self.shared.catalog.change(|catalog| {
            catalog.rule(rule).is_some_and(|r| r.enabled != enabled)
                && catalog.set_rule_enabled(rule, enabled)
        });
        info!(rule, enabled, by, "rule switched");
        Ok(switch)
    }

    /// How every rule on `trigger`, enabled or not, judges `payload` now.
    pub fn explain(&self, trigger: &str, payload: &Value) -> Vec<rules::Verdict> {
        rules::explain(
            &self.shared.catalog.current(),
            &self.shared.kv,
            trigger,
            payload,
        )
    }

    /// Tests a rule against a payload without firing anything.
    pub fn test_rule(&self, rule: &str, payload: &Value) -> Result<rules::RuleTest, RuleError> {
        let catalog = self.shared.catalog.current();
        let found = catalog
            .rule(rule)
            .ok_or_else(|| RuleError::Unknown(rule.to_owned()))?;
        Ok(rules::test(
            &catalog,
            &self.shared.keyring,
            &self.shared.kv,
            found,
            payload,
        ))
    }

    /// Defines a rule through the API (the fields of a rule file, with `pack`), or replaces
    /// the API rule of that name: checked as a pack's rule file is, kept in the store, in
    /// force at once. Returns its reference.
    pub async fn put_rule(&self, definition: Value, by: &str) -> Result<String, RuleError> {
        let current = self.shared.catalog.current();
        let (_, rule) =
            sluice_pack::with_api_rule(&current, definition.clone()).map_err(RuleError::Invalid)?;
        self.shared
            .store
            .put_api_rule(&ApiRule {
                rule: rule.clone(),
                definition: definition.clone(),
                changed_at: Utc::now(),
                changed_by: by.to_owned(),
            })
            .await?;
        self.shared.catalog.change(|catalog| {
            match sluice_pack::with_api_rule(catalog, definition) {
                Ok((next, _)) => {
                    *catalog = next;
                    true
                }
                Err(e) => {
                    warn!(rule, error = %e, "a rule checked a moment ago no longer fits the catalog");
                    false
                }
            }
        });
        info!(rule, by, "rule defined through the API");
        Ok(rule)
    }

    /// Deletes a rule defined through the API.
    pub async fn delete_rule(&self, rule: &str, by: &str) -> Result<(), RuleError> {
        let current = self.shared.catalog.current();
        let found = current
            .rule(rule)
            .ok_or_else(|| RuleError::Unknown(rule.to_owned()))?;
        if found.origin == sluice_pack::Origin::Pack {
            return Err(RuleError::FromPack(
                rule.to_owned(),
                found.file.display().to_string(),
            ));
        }
        self.shared.store.delete_api_rule(rule).await?;
        self.shared
            .catalog
            .change(|catalog| catalog.remove_api_rule(rule));
        info!(rule, by, "rule deleted through the API");
        Ok(())
    }

    /// Hears an execution's output from now on, as the worker running it reads it.
    pub async fn follow_output(
        &self,
        id: ExecutionId,
    ) -> Result<impl futures::Stream<Item = sluice_core::OutputChunk> + use<>, BusError> {
        self.shared.bus.follow_output(id).await
    }

    /// The rules switched through the API.
    pub async fn rule_switches(&self) -> Result<Vec<RuleSwitch>, sluice_store::StoreError> {
        self.shared.store.rule_switches().await
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// What checks the tokens actions are given (`ST2_ACTION_AUTH_TOKEN`).
    pub fn execution_tokens(&self) -> &ExecutionTokens {
        &self.execution_tokens
    }

    /// Requests an execution directly (API, CLI): parameters are checked against the action,
    /// the execution is stored `requested` and joins its action's queue.
    pub async fn submit(
        &self,
        action: &str,
        given: Map<String, Value>,
    ) -> Result<ExecutionId, SubmitError> {
        self.request(action, given, &[], None).await
    }

    /// Runs an execution again: a new execution of the same action with the same
    /// parameters, `overrides` replacing some, that names the one it re-runs. Values that
    /// were secret stay sealed.
    pub async fn rerun(
        &self,
        of: ExecutionId,
        overrides: Map<String, Value>,
    ) -> Result<ExecutionId, SubmitError> {
        let original = self
            .shared
            .store
            .get_execution(of)
            .await?
            .ok_or(SubmitError::NoExecution(of))?;
        if let Some(why) = original.unreadable {
            return Err(SubmitError::Unreadable(of, why));
        }
        let stored = original.parameters.as_object().cloned().unwrap_or_default();
        let mut given = self
            .shared
            .keyring
            .unseal_all(&stored)
            .map_err(|(name, e)| {
                SubmitError::Sealing(format!("parameter {name} of execution {of}: {e}"))
            })?;
        let secret = sluice_core::secrets::sealed_names(&stored);
        let secrets = sluice_core::secrets::secret_texts(&secret, &given);
        given.extend(overrides);
        self.request(original.action.as_str(), given, &secrets, Some(of))
            .await
    }

    /// Stores a requested execution and queues it; `secrets` are texts whose parameters
    /// are sealed wherever they hold them.
    async fn request(
        &self,
        action: &str,
        given: Map<String, Value>,
        secrets: &[String],
        rerun_of: Option<ExecutionId>,
    ) -> Result<ExecutionId, SubmitError> {
        let catalog = self.shared.catalog.current();
        let unknown = || SubmitError::UnknownAction {
            action: action.to_owned(),
            known: catalog
                .actions
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let action_ref: ActionRef = action.parse().map_err(|_| unknown())?;
        let definition = catalog.action(&action_ref).ok_or_else(unknown)?;
        if !definition.enabled {
            return Err(SubmitError::Disabled(action_ref));
        }
        let kv = self.shared.kv.for_pack(action_ref.pack());
        let (given, mut opened) = opened_during(|| params::render_defaults(definition, given, &kv));
        let given = given.map_err(SubmitError::Default)?;
        let parameters = params::resolve(definition, given)?;
        opened.extend_from_slice(secrets);
        let parameters = params::seal(&self.shared.keyring, definition, &parameters, &opened)
            .map_err(SubmitError::Sealing)?;
        let requested = tracing::info_span!(
            "execution.requested",
            action = %action_ref,
            execution_id = tracing::field::Empty,
        );
        let trace = TraceContext::of(&requested);
        let traceparent = trace.traceparent();
        let traceparent = traceparent.as_deref();
        let store = &self.shared.store;
        let supervisor = self.directory.supervisor(&action_ref);
        // A free slot and nothing queued: stored already `scheduled`, one commit fewer on
        // its way to a worker, as a trigger's execution is (see `ingest`).
        let slot = match &supervisor {
            Some(supervisor) => {
                supervisor
                    .reserve(definition.concurrency_key(&parameters))
                    .await
            }
            None => None,
        };
        let id = match (&slot, rerun_of) {
            (Some(_), _) => {
                store
                    .create_admitted_execution(&action_ref, &parameters, rerun_of, traceparent)
                    .instrument(requested.clone())
                    .await?
            }
            (None, None) => {
                store
                    .create_execution(&action_ref, &parameters, None, traceparent)
                    .instrument(requested.clone())
                    .await?
            }
            (None, Some(of)) => {
                store
                    .create_rerun(&action_ref, &parameters, of, traceparent)
                    .instrument(requested.clone())
                    .await?
            }
        };
        requested.record("execution_id", id.0);
        let pending = Pending::new(id, 1, parameters, Utc::now(), trace);
        match (slot, supervisor) {
            (Some(slot), _) => slot.bind(pending),
            (None, Some(supervisor)) => supervisor.enqueue(pending),
            (None, None) => {
                // Queued at its supervisor here, or announced to the engine that owns it.
                self.directory.queue(&action_ref, pending);
            }
        }
        Ok(id)
    }

    /// Publishes a trigger payload to TRIGGERS (for webhooks); see
    /// [`Bus::publish_trigger`].
    pub async fn publish_trigger(
        &self,
        trigger: &str,
        payload: Vec<u8>,
        msg_id: Option<&str>,
    ) -> Result<(u64, bool), BusError> {
        self.shared
            .bus
            .publish_trigger(trigger, payload, msg_id)
            .await
    }

    /// Every timer rule with its next and last tick.
    pub fn timers(&self) -> Vec<TimerView> {
        self.timers.list()
    }

    /// The datastore, for the API.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Adds a new secrets key, which seals from now on, and seals every stored secret
    /// again with it. The older keys stay in the key file: run messages already sent may
    /// still need them.
    pub async fn rotate_secrets_key(&self) -> Result<(String, Resealed), EngineError> {
        let keyring = &self.shared.keyring;
        let id = keyring
            .rotate()
            .map_err(|e| EngineError::Secrets(e.to_string()))?;
        let resealed = self
            .shared
            .store
            .reseal(&|value| keyring.reseal_all(value).map_err(|e| e.to_string()))
            .await?;
        let datastore = self
            .keys
            .reseal()
            .await
            .map_err(|e| EngineError::Secrets(e.to_string()))?;
        let resealed = Resealed {
            datastore,
            ..resealed
        };
        info!(key_id = %id, ?resealed, "secrets key rotated");
        Ok((id, resealed))
    }

    /// Cancels an execution, following the ownership model: one not yet handed to a worker
    /// is cancelled here; one handed off that no worker has claimed is claimed by the
    /// engine's cancel; one a worker holds is cancelled by that worker, which is asked.
    pub async fn cancel(&self, id: ExecutionId) -> Result<CancelOutcome, CancelError> {
        let execution = self
            .shared
            .store
            .get_execution(id)
            .await?
            .ok_or(CancelError::NotFound(id))?;
        if execution.status.is_terminal() {
            return Err(CancelError::Finished(id, execution.status));
        }
        let outcome = match self.directory.supervisor(&execution.action) {
            Some(supervisor) => supervisor.cancel(id).await,
            None => CancelOutcome::NotHere,
        };
        if outcome != CancelOutcome::NotHere {
            return Ok(outcome);
        }
        // Not held by a supervisor (the engine is draining, or the action is gone): the
        // store and the workers are asked directly.
        let reason = "cancelled before it started";
        if self
            .shared
            .store
            .end_before_handoff(id, ExecutionStatus::Cancelled, reason)
            .await?
        {
            return Ok(CancelOutcome::Cancelled);
        }
        let partition = self
            .partitions
            .as_ref()
            .map(|p| p.partition_of(&execution.action));
        let cancelled = StatusReport::cancelled_before_start(
            id,
            execution.attempt,
            execution.action.clone(),
            partition,
        );
        self.shared
            .bus
            .cancel(&cancelled)
            .await
            .map_err(CancelError::Bus)?;
        Ok(CancelOutcome::Requested)
    }

    /// The queue figures of one action.
    pub async fn queue_stats(&self, action: &str) -> Option<SupervisorStats> {
        let action: ActionRef = action.parse().ok()?;
        self.directory.supervisor(&action)?.stats(false).await
    }

    /// Workers the engine has heard from, with their last heartbeat.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers.snapshot()
    }

    /// Queue figures of every action supervisor, by action, without their admitted
    /// executions.
    pub async fn supervisor_stats(&self) -> Vec<SupervisorStats> {
        self.all_stats(false).await
    }

    /// Every supervisor's figures, by action; with their admitted executions if `admitted`.
    async fn all_stats(&self, admitted: bool) -> Vec<SupervisorStats> {
        let mut stats = Vec::with_capacity(self.directory.supervisor_count());
        for supervisor in self.directory.supervisors() {
            stats.extend(supervisor.stats(admitted).await);
        }
        stats.sort_by(|a, b| a.action.cmp(&b.action));
        stats
    }

    /// The live actor tree, read from ractor's supervision links.
    pub async fn actor_tree(&self) -> ActorNode {
        let stats = self.all_stats(true).await;
        let workers = self.workers.snapshot();
        let lags = self.consumer_lag().await;
        tree::snapshot(
            &self.root.get_cell(),
            None,
            &self.fixed,
            &stats,
            &workers,
            &lags,
        )
    }

    /// How far behind its stream each durable consumer of the pipeline is: the engine's on
    /// TRIGGERS, STATUS and DEADLETTER, and the workers' on RUN. One that cannot be read
    /// (TRIGGERS on an engine that does not ingest) is left out.
    pub async fn consumer_lag(&self) -> Vec<sluice_bus::ConsumerLag> {
        let mut lags = Vec::new();
        let status = match &self.partitions {
            None => vec![names::ENGINE_CONSUMER.to_owned()],
            Some(partitions) => partitions
                .held
                .keys()
                .map(|n| names::partition_durable(names::ENGINE_CONSUMER, *n))
                .collect(),
        };
        let consumers = [(names::TRIGGERS, names::ENGINE_CONSUMER.to_owned())]
            .into_iter()
            .chain(status.into_iter().map(|d| (names::STATUS, d)))
            .chain([
                (names::DEADLETTER, names::ENGINE_CONSUMER.to_owned()),
                (names::RUN, names::WORKERS_CONSUMER.to_owned()),
            ]);
        for (stream, durable) in consumers {
            if let Ok(lag) = self.shared.bus.consumer_lag(stream, &durable).await {
                lags.push(lag);
            }
        }
        lags
    }

    /// Stops taking triggers and admitting executions, lets executions already handed to
    /// workers finish (up to `drain`), then stops every actor. Queued executions stay
    /// `requested` in the store and run after the next start. A second call does nothing.
    pub async fn shutdown(&self, drain: Duration) {
        if self.intake.is_cancelled() {
            return;
        }
        self.intake.cancel();
        // A workflow ends only when its tasks do, and no new task is admitted now: the
        // count leaves workflows out, or waiting would take the whole drain time.
        let active = self.directory.drained(drain).await;
        if active > 0 {
            warn!(
                active,
                "drain time is up; executions in flight resume on the next start"
            );
        }
        self.shutdown.cancel();
        let _ = self.root.stop_and_wait(Some("shutdown".into()), None).await;
        info!(engine = self.directory.engine(), "engine stopped");
    }
}

/// The loaded catalog with the rules defined through the API added and the switches the API
/// recorded applied. A stored rule that no longer fits (its action is gone) is left out and
/// logged with its problems.
async fn with_switches(loaded: Arc<Catalog>, store: &Store) -> Result<Arc<Catalog>, EngineError> {
    let switches = store.rule_switches().await?;
    let defined = store.api_rules().await?;
    if switches.is_empty() && defined.is_empty() {
        return Ok(loaded);
    }
    let mut catalog = Catalog::clone(&loaded);
    for rule in defined {
        match sluice_pack::with_api_rule(&catalog, rule.definition) {
            Ok((next, _)) => catalog = next,
            Err(e) => {
                error!(rule = %rule.rule, problems = %e, "a rule defined through the API no longer loads; left out");
            }
        }
    }
    for switch in switches {
        if !catalog.set_rule_enabled(&switch.rule, switch.enabled) {
            warn!(rule = %switch.rule, "a switch recorded for a rule that no pack has any more; ignored");
        }
    }
    Ok(Arc::new(catalog))
}

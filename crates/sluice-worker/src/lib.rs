//! The Sluice worker: takes run messages from the RUN work queue, runs the actions and
//! reports over the STATUS stream. It needs no database; start as many as you like.
//!
//! ```text
//! worker (run supervisor: pull loop, capacity)
//!  └─ run/<execution id>   one per running execution: process, in-progress acks, report
//! ```
//!
//! A run message is acknowledged only after its completion report is stored by JetStream,
//! and in-progress acks keep `ack_wait` from redelivering live work. A redelivered message
//! for an execution that already completed is acknowledged without running it again; one
//! whose earlier run was lost with its worker is reported `abandoned`, never run twice; one
//! for an attempt older than the latest is dropped. A run message that cannot be read is
//! dead-lettered (without its payload: run messages carry secrets); one whose checks keep
//! failing until its last allowed delivery is reported `failed` with the reason.
//!
//! The worker publishes a heartbeat every `heartbeat_interval` with what it is running; the
//! engine declares its executions lost when the heartbeats stop. Cancel requests arrive on
//! `sluice.cancel.<id>`: a running execution has its process group killed and ends
//! `cancelled`. One no worker has claimed yet is cancelled by the engine's own claim of its
//! status subject, and a worker's claim of it then fails.

mod child_env;
pub mod forkserver;
mod packs;
mod python;
pub mod runner;
pub mod sensor;
pub mod service;
pub mod venv;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Value, json};
use sluice_bus::{Bus, RunVerifier, Settle, names};
use sluice_core::secrets::Keyring;
use sluice_core::{
    ExecutionId, ExecutionStatus, Heartbeat, INLINE_RESULT_BYTES, ResultObject, RunMessage,
    StatusReport,
};
use sluice_telemetry::metrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, warn};

/// How often a running execution tells JetStream it is still being worked on.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub struct WorkerConfig {
    /// This worker's name in reports and actor names; unique among workers.
    pub name: String,
    pub bus: Bus,
    /// `actions/` directory of packs on this worker's disk, by pack name (`--packs`): used
    /// instead of the version a run message names. Any other pack is fetched.
    pub actions_dirs: BTreeMap<String, PathBuf>,
    /// Where pack versions fetched from the packs object store are kept.
    pub pack_cache: PathBuf,
    /// How many actions run at once.
    pub capacity: usize,
    /// How often the worker tells the engine it is alive.
    pub heartbeat_interval: Duration,
    /// The engine keys whose signature a run message must carry to be run.
    pub run_verifier: RunVerifier,
    /// Opens the secret parameters a run message carries sealed.
    pub keyring: Arc<Keyring>,
    /// Output kept, and what actions may ask of the runners beyond their parameters.
    pub runner: runner::Settings,
}

struct Shared {
    name: String,
    bus: Bus,
    settle: Settle,
    run_verifier: RunVerifier,
    keyring: Arc<Keyring>,
    runner: runner::Settings,
    actions_dirs: BTreeMap<String, PathBuf>,
    packs: packs::PackCache,
    /// The results bucket, opened by the first result too large for its report.
    results: tokio::sync::OnceCell<sluice_bus::results::ResultStore>,
    /// Executions this worker is running or claiming, for heartbeats. A claim whose
    /// acknowledgement is late may already be stored and read by the engine: listed
    /// meanwhile, the execution is not taken for lost while the worker reads it back.
    running: Mutex<BTreeSet<ExecutionId>>,
    /// The run message each run actor holds, by execution: its stream sequence.
    held: Mutex<HashMap<ExecutionId, u64>>,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<ExecutionId>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ExecutionId, u64>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run_actor_name(&self, id: ExecutionId) -> String {
        format!("{}/run/{id}", self.name)
    }
}

/// A running worker.
pub struct Worker {
    supervisor: ActorRef<RunSupervisorMsg>,
    cancel: CancellationToken,
    pull: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    capacity: usize,
    slots: Arc<Semaphore>,
    /// The connection, flushed at the end of a shutdown so the last acks reach the server.
    client: async_nats::Client,
}

enum RunSupervisorMsg {
    /// Run messages that arrived together, each with its capacity slot.
    Start(Vec<(jetstream::Message, OwnedSemaphorePermit)>),
}

struct RunSupervisor;

impl Actor for RunSupervisor {
    type Msg = RunSupervisorMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        let RunSupervisorMsg::Start(group) = message;
        let signed: Vec<_> = group
            .iter()
            .map(|(message, _)| (message.headers.as_ref(), &message.payload[..]))
            .collect();
        let verified = shared.run_verifier.verify_all(&signed);
        for ((message, permit), verified) in group.into_iter().zip(verified) {
            start(&myself, shared, Box::new(message), permit, verified).await;
        }
        Ok(())
    }

    /// A run actor ending is the normal end of an execution (its capacity slot is released
    /// with it); a failed one is logged and its message redelivered after `ack_wait`.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(child, err) = event {
            error!(actor = ?child.get_name(), error = %err, "run actor failed");
        }
        Ok(())
    }
}

/// Starts a run actor for one run message whose signature was checked (`verified`), unless
/// the message is refused, unreadable, or a copy of one this worker holds.
async fn start(
    myself: &ActorRef<RunSupervisorMsg>,
    shared: &Arc<Shared>,
    message: Box<jetstream::Message>,
    permit: OwnedSemaphorePermit,
    verified: Result<(), String>,
) {
    shared.settle.received(&message);
    if let Err(reason) = verified {
        // Not issued by the engine: never run, never redelivered, recorded.
        warn!(subject = %message.subject, reason, "run message refused");
        metrics().forged_run_messages.inc();
        shared
            .settle
            .dead(&message, format!("run message refused: {reason}"))
            .await;
        return;
    }
    let run: RunMessage = match sluice_core::decode(&message.payload) {
        Ok(run) => run,
        Err(e) => {
            let reason = format!("unreadable run message: {e}");
            shared.settle.dead(&message, reason).await;
            return;
        }
    };
    let name = shared.run_actor_name(run.execution_id);
    let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let held = shared.held().get(&run.execution_id).copied();
    if let Some(held) = held {
        drop(permit);
        metrics().duplicates_suppressed.inc(["run"]);
        if held == stream_seq {
            // The very message a run actor here holds, delivered again (its ack was
            // late): that actor settles it. Acking it here would take it from under
            // an actor that may still hand it back.
            debug!(execution_id = %run.execution_id, "redelivery of a run message this worker holds; left to its run actor");
        } else {
            // Another copy of the run message: the one being handled here decides.
            debug!(execution_id = %run.execution_id, "copy of a run message this worker already holds");
            let _ = shared.settle.double_ack(&message).await;
        }
        return;
    }
    shared.held().insert(run.execution_id, stream_seq);
    let args = RunArgs {
        shared: shared.clone(),
        run,
        message,
        permit,
    };
    let id = args.run.execution_id;
    if let Err(e) = Actor::spawn_linked(Some(name), RunActor, args, myself.get_cell()).await {
        // The message was not acked: it is redelivered after ack_wait.
        shared.held().remove(&id);
        error!(error = %e, "failed to start run actor");
    }
}

struct RunArgs {
    shared: Arc<Shared>,
    run: RunMessage,
    message: Box<jetstream::Message>,
    permit: OwnedSemaphorePermit,
}

/// How many times a worker reads an execution's status subject and tries to claim it
/// before it gives the message back: another message landing between the read and the
/// claim makes it read again.
const CLAIM_TRIES: usize = 3;

/// What a worker does with a run message.
enum Claim {
    /// This worker holds the attempt: run it.
    Claimed,
    /// Nothing to do: another worker holds it, or it is over.
    Settled(&'static str),
    /// Report this terminal status without running.
    Finish(ExecutionStatus, serde_json::Value),
}

enum RunMsg {
    /// Claim the attempt and start it: in the run actor's own turn, so the run supervisor
    /// goes on to the next message while claims are checked.
    Begin,
    Progress,
    Cancel,
    Done(runner::Outcome),
}

struct RunState {
    shared: Arc<Shared>,
    run: RunMessage,
    message: Box<jetstream::Message>,
    /// `execution.run`: this worker's part of the execution's trace, continued from the
    /// run message's headers. Its reports carry it back to the engine.
    span: tracing::Span,
    _permit: OwnedSemaphorePermit,
    task: Option<JoinHandle<()>>,
    progress: Option<JoinHandle<()>>,
    cancel: CancellationToken,
}

struct RunActor;

/// A writer that takes this many bytes more and then refuses: whether a value's JSON fits
/// within [`INLINE_RESULT_BYTES`], found without keeping the JSON.
struct InlineLimit(usize);

impl std::io::Write for InlineLimit {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = self
            .0
            .checked_sub(bytes.len())
            .ok_or_else(|| std::io::Error::other("past the inline limit"))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RunActor {
    fn report(
        state: &RunState,
        status: ExecutionStatus,
        result: serde_json::Value,
    ) -> StatusReport {
        StatusReport {
            execution_id: state.run.execution_id,
            attempt: state.run.attempt,
            action: state.run.action.clone(),
            worker: state.shared.name.clone(),
            status,
            result,
            at: Utc::now(),
            result_object: None,
            partition: state.run.partition,
        }
    }

    /// The completion for `result`. A result of more than [`INLINE_RESULT_BYTES`] of JSON
    /// is put in the results bucket first, and the report names it: the result is held
    /// here at most twice, as a value and as its JSON, and only its JSON while it is sent.
    /// Putting it is tried again until it works, like the report; a bucket that refuses it
    /// outright fails the execution, saying so.
    async fn completion(
        state: &RunState,
        status: ExecutionStatus,
        result: serde_json::Value,
    ) -> StatusReport {
        // Most results are small: measured without writing their JSON anywhere.
        let mut inline = InlineLimit(INLINE_RESULT_BYTES);
        if serde_json::to_writer(&mut inline, &result).is_ok() {
            return Self::report(state, status, result);
        }
        let json = match serde_json::to_vec(&result) {
            Ok(json) => json,
            Err(_) => return Self::report(state, status, result),
        };
        drop(result);
        let (id, attempt) = (state.run.execution_id, state.run.attempt);
        let name = sluice_bus::results::object_name(id, attempt);
        let mut delay = Duration::from_millis(100);
        loop {
            let stored = async {
                let store = state
                    .shared
                    .results
                    .get_or_try_init(|| sluice_bus::results::ResultStore::open(&state.shared.bus))
                    .await?;
                store.put(&name, &json).await
            }
            .await;
            match stored {
                Ok(()) => {
                    let mut report = Self::report(state, status, Value::Null);
                    report.result_object = Some(ResultObject {
                        name,
                        size: json.len() as u64,
                    });
                    return report;
                }
                Err(e) if !e.is_transient() => {
                    error!(execution_id = %id, error = %e, "result refused by the results bucket; reporting the refusal instead");
                    let error = format!(
                        "the action finished ({status}) but its result ({} bytes) could not be stored: {e}",
                        json.len()
                    );
                    return Self::report(state, ExecutionStatus::Failed, json!({ "error": error }));
                }
                Err(e) => {
                    warn!(execution_id = %id, error = %e, bytes = json.len(), "result not stored in the results bucket; retrying");
                    Self::wait_holding(state, &mut delay).await;
                }
            }
        }
    }

    /// Publishes until JetStream has it: a completion must never be lost. A report the
    /// stream refuses outright (a result over its message size limit) is replaced by a
    /// `failed` one that says so, under the same deduplication id.
    async fn publish(state: &RunState, report: &StatusReport) {
        let mut delay = Duration::from_millis(100);
        let mut report = std::borrow::Cow::Borrowed(report);
        loop {
            let Err(e) = state.shared.bus.publish_status(&report).await else {
                return;
            };
            if !e.is_transient() && report.status.is_terminal() {
                error!(execution_id = %report.execution_id, error = %e, "completion refused by the STATUS stream; reporting the refusal instead");
                let mut refused = report.into_owned();
                refused.result = json!({
                    "error": format!("the action finished ({}) but its result could not be reported: {e}", refused.status)
                });
                refused.status = ExecutionStatus::Failed;
                report = std::borrow::Cow::Owned(refused);
                continue;
            }
            warn!(execution_id = %report.execution_id, error = %e, "status report not stored; retrying");
            Self::wait_holding(state, &mut delay).await;
        }
    }

    /// Waits `delay` before a publish or a read is tried again, holding on to the run message
    /// meanwhile, and doubles the next wait (up to 5 s).
    async fn wait_holding(state: &RunState, delay: &mut Duration) {
        let _ = state.message.ack_with(AckKind::Progress).await;
        tokio::time::sleep(*delay).await;
        *delay = (*delay * 2).min(Duration::from_secs(5));
    }

    /// The checks before a run could not be made (NATS unavailable): the message comes back
    /// after a backoff, to this or another worker. On its last allowed delivery the
    /// execution is reported `failed` with the reason instead, so it never hangs.
    /// Hands the run message back to be tried again shortly, because `what` (checking the
    /// execution's reports, fetching its pack) failed on NATS; on its last allowed delivery
    /// the execution fails instead, saying why.
    async fn retry_later(
        myself: &ActorRef<RunMsg>,
        state: &RunState,
        what: &str,
        error: &sluice_bus::BusError,
    ) {
        let id = state.run.execution_id;
        if state.shared.settle.is_last_delivery(&state.message) {
            let deliveries = sluice_bus::settle::deliveries(&state.message);
            error!(execution_id = %id, error = %error, deliveries, "cannot {what}; giving up");
            let result = json!({
                "error": format!("not started: the worker could not {what} after {deliveries} deliveries: {error}")
            });
            Self::finish(myself, state, ExecutionStatus::Failed, result).await;
            return;
        }
        warn!(execution_id = %id, error = %error, "cannot {what}; retried shortly");
        state.shared.settle.nak(&state.message).await;
        myself.stop(None);
    }

    /// The `actions/` directory the action's entry point is in: the pack on this worker's
    /// disk if it has it (`--packs`), else the version the run message names, fetched.
    async fn actions_dir(state: &RunState) -> Result<Option<PathBuf>, packs::FetchError> {
        let run = &state.run;
        if run.entry_point.is_none() {
            return Ok(None);
        }
        if let Some(dir) = state.shared.actions_dirs.get(run.action.pack()) {
            return Ok(Some(dir.clone()));
        }
        match &run.pack_digest {
            Some(digest) => state
                .shared
                .packs
                .actions_dir(run.action.pack(), digest)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Decides whether this worker runs the attempt, and claims it if so. A run message can
    /// arrive more than once — redelivered after `ack_wait`, or published again by an engine
    /// restarted after the deduplication window — and possibly to two workers at once; the
    /// claim is a `running` report published only if the execution's status subject is
    /// unchanged since it was read, so exactly one worker wins. The engine cancels an
    /// attempt no worker has claimed by claiming it the same way, with a `cancelled` report
    /// ([`sluice_bus::Bus::cancel`]): a worker's claim then fails, and the report read back
    /// ends the attempt for this worker too.
    ///
    /// A first attempt's status subject is empty until someone claims it, so a first
    /// attempt claims against an empty subject without reading it first. If the subject is
    /// not empty after all (another worker or the engine claimed, or this attempt ran
    /// before), that claim is refused and the reports are read as for any other attempt.
    async fn claim(state: &RunState) -> Result<Claim, sluice_bus::BusError> {
        let bus = &state.shared.bus;
        let (id, attempt) = (state.run.execution_id, state.run.attempt);
        if attempt == 1 && Self::try_claim(state, 0).await? {
            return Ok(Claim::Claimed);
        }
        for _ in 0..CLAIM_TRIES {
            let last = bus.last_status(id, state.run.partition).await?;
            let expected = last.as_ref().map_or(0, |l| l.sequence);
            let report = match last.map(|l| l.report) {
                Some(Ok(report)) => Some(report),
                Some(Err(e)) => {
                    // Not a report any worker wrote: it says nothing about this execution.
                    warn!(execution_id = %id, error = %e, "unreadable message on the execution's status subject; ignored");
                    None
                }
                None => None,
            };
            if let Some(last) = report {
                if last.attempt > attempt {
                    return Ok(Claim::Settled("an attempt newer than this one exists"));
                }
                if last.attempt == attempt && last.by_engine() {
                    info!(execution_id = %id, "cancelled before it started");
                    return Ok(Claim::Settled("the engine cancelled this attempt"));
                }
                if last.attempt == attempt && last.status.is_terminal() {
                    return Ok(Claim::Settled("this attempt already completed"));
                }
                if last.attempt == attempt && last.worker != state.shared.name {
                    // Live or lost, the claim is theirs; the engine's heartbeat monitor
                    // decides whether that worker is gone.
                    return Ok(Claim::Settled("another worker claimed this attempt"));
                }
                if last.attempt == attempt {
                    warn!(execution_id = %id, attempt, "started by an earlier run of this worker, which was lost; reported abandoned");
                    let error = format!("worker {} was lost while running it", last.worker);
                    return Ok(Claim::Finish(
                        ExecutionStatus::Abandoned,
                        json!({ "error": error }),
                    ));
                }
            }
            if Self::try_claim(state, expected).await? {
                return Ok(Claim::Claimed);
            }
        }
        Err(sluice_bus::BusError::NotLast {
            subject: sluice_bus::status_subject(state.run.partition, id),
        })
    }

    /// Publishes this worker's claim if `expected` is still the last sequence on the
    /// execution's status subject (0: the subject is empty); whether it holds the claim.
    async fn try_claim(state: &RunState, expected: u64) -> Result<bool, sluice_bus::BusError> {
        let running = Self::report(state, ExecutionStatus::Running, serde_json::Value::Null);
        match state.shared.bus.claim(&running, expected).await {
            Ok(claimed) => Ok(claimed),
            Err(e) if e.is_transient() => {
                warn!(execution_id = %running.execution_id, error = %e, "claim not confirmed; reading it back");
                Ok(Self::claim_was_stored(state).await)
            }
            Err(e) => Err(e),
        }
    }

    /// After a claim whose publish failed in a way that leaves its fate unknown (a lost
    /// acknowledgement), reads the status subject until it can say whether the claim was
    /// stored, holding on to the run message meanwhile. Only this actor can tell its own
    /// claim from one left by an earlier, lost run of this worker, or by another worker:
    /// handing the message back undecided would have its redelivery take the claim for
    /// one of those and leave the execution unrun.
    async fn claim_was_stored(state: &RunState) -> bool {
        let (id, attempt) = (state.run.execution_id, state.run.attempt);
        let mut delay = Duration::from_millis(100);
        // The failed publish may have taken a while: the message's ack_wait starts again.
        let _ = state.message.ack_with(AckKind::Progress).await;
        loop {
            match state.shared.bus.last_status(id, state.run.partition).await {
                Ok(last) => {
                    return matches!(
                        last.map(|l| l.report),
                        Some(Ok(report)) if report.attempt == attempt
                            && report.worker == state.shared.name
                            && report.status == ExecutionStatus::Running
                    );
                }
                Err(e) if !e.is_transient() => return false,
                Err(e) => {
                    debug!(execution_id = %id, error = %e, "claim still unconfirmed");
                    Self::wait_holding(state, &mut delay).await;
                }
            }
        }
    }

    async fn finish(
        myself: &ActorRef<RunMsg>,
        state: &RunState,
        status: ExecutionStatus,
        result: serde_json::Value,
    ) {
        let report = Self::completion(state, status, result).await;
        Self::publish(state, &report).await;
        // The completion is stored: an ack lost on its way brings the message back after
        // `ack_wait`, and the claim of that copy finds the attempt completed. So the ack
        // needs no confirmation to wait for.
        state.shared.settle.ack(&state.message).await;
        info!(execution_id = %report.execution_id, action = %report.action, status = %report.status, "execution finished");
        myself.stop(None);
    }
}

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunMsg>,
        args: RunArgs,
    ) -> Result<RunState, ActorProcessingErr> {
        let span = tracing::info_span!(
            "execution.run",
            execution_id = %args.run.execution_id,
            action = %args.run.action,
            attempt = args.run.attempt,
            worker = %args.shared.name,
            trace_id = tracing::field::Empty,
        );
        sluice_bus::continue_trace(&span, &args.message);
        let state = RunState {
            shared: args.shared,
            run: args.run,
            message: args.message,
            span,
            _permit: args.permit,
            task: None,
            progress: None,
            cancel: CancellationToken::new(),
        };
        myself.send_message(RunMsg::Begin)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RunMsg>,
        message: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        Self::on_message(myself, message, state)
            .instrument(span)
            .await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RunMsg>,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(progress) = state.progress.take() {
            progress.abort();
        }
        state.shared.running().remove(&state.run.execution_id);
        state.shared.held().remove(&state.run.execution_id);
        Ok(())
    }
}

impl RunActor {
    /// Claims the attempt and starts the runner, or settles the message without running.
    async fn begin(myself: ActorRef<RunMsg>, state: &mut RunState) {
        let id = state.run.execution_id;
        let attempt = state.run.attempt;
        // Secret parameters arrive sealed and are opened here, for the process alone.
        let parameters = match state.shared.keyring.unseal_all(&state.run.parameters) {
            Ok(parameters) => parameters,
            Err((name, e)) => {
                error!(execution_id = %id, parameter = %name, error = %e, "cannot open a secret parameter");
                let result = json!({
                    "error": format!("worker {} cannot open the secret parameter {name:?}: {e} (--secrets-key)", state.shared.name)
                });
                return Self::finish(&myself, state, ExecutionStatus::Failed, result).await;
            }
        };
        let mut config = state.run.config.clone().map(Value::Object);
        if let Some(config) = config.as_mut()
            && let Err(e) = state.shared.keyring.unseal_nested(config)
        {
            error!(execution_id = %id, error = %e, "cannot open a secret of the pack's configuration");
            let result = json!({
                "error": format!("worker {} cannot open a secret of pack {}'s configuration: {e} (--secrets-key)", state.shared.name, state.run.action.pack())
            });
            return Self::finish(&myself, state, ExecutionStatus::Failed, result).await;
        }
        let actions_dir = match Self::actions_dir(state).await {
            Ok(dir) => dir,
            Err(packs::FetchError::Bus(e)) => {
                return Self::retry_later(&myself, state, "fetch the action's pack", &e).await;
            }
            Err(packs::FetchError::Unusable(reason)) => {
                error!(execution_id = %id, reason, "the action's pack cannot be had");
                let result = json!({ "error": format!("worker {}: {reason}", state.shared.name) });
                return Self::finish(&myself, state, ExecutionStatus::Failed, result).await;
            }
        };
        // Listed from the claim on; whatever the claim's outcome, the actor's stop unlists it.
        state.shared.running().insert(id);
        match Self::claim(state).await {
            Ok(Claim::Claimed) => {}
            Ok(Claim::Settled(reason)) => {
                metrics().duplicates_suppressed.inc(["run"]);
                debug!(execution_id = %id, attempt, reason, "run message not run");
                let _ = state.shared.settle.double_ack(&state.message).await;
                myself.stop(None);
                return;
            }
            Ok(Claim::Finish(status, result)) => {
                Self::finish(&myself, state, status, result).await;
                return;
            }
            Err(e) => {
                return Self::retry_later(&myself, state, "check the execution's reports", &e)
                    .await;
            }
        }
        state.progress = Some(myself.send_interval(PROGRESS_EVERY, || RunMsg::Progress));
        let mut run = state.run.clone();
        run.parameters = parameters;
        // The execution's API token, opened for the process like a secret parameter.
        if let Some(api) = run.api.as_mut() {
            match state.shared.keyring.unseal(&api.token) {
                Ok(Value::String(token)) => api.token = token,
                other => {
                    let why = other
                        .err()
                        .map_or("not a string".to_owned(), |e| e.to_string());
                    warn!(execution_id = %id, error = why, "cannot open the execution's API token; the action runs without one");
                    run.api = None;
                }
            }
        }
        run.config = match config {
            Some(Value::Object(config)) => Some(config),
            _ => None,
        };
        let me = myself.clone();
        let cancel = state.cancel.clone();
        let settings = state.shared.runner.clone();
        let bus = state.shared.bus.clone();
        let process =
            tracing::info_span!("process", runner = %run.runner, status = tracing::field::Empty);
        state.task = Some(tokio::spawn(
            async move {
                let started = Instant::now();
                // The output, as it is read, to whoever follows the execution live.
                let (sink, mut pieces): (runner::OutputSink, _) =
                    tokio::sync::mpsc::unbounded_channel();
                let follow = tokio::spawn(async move {
                    while let Some((stream, bytes)) = pieces.recv().await {
                        let chunk = sluice_core::OutputChunk {
                            attempt,
                            stream: String::from(stream),
                            text: String::from_utf8_lossy(&bytes).into_owned(),
                        };
                        let _ = bus.publish_output(id, &chunk).await;
                    }
                });
                let outcome = runner::run_following(
                    &run,
                    actions_dir.as_deref(),
                    &cancel,
                    &settings,
                    Some(sink),
                )
                .await;
                // Every piece is out before the result that ends the execution.
                let _ = follow.await;
                metrics()
                    .run_seconds
                    .observe([run.action.as_str()], started.elapsed().as_secs_f64());
                tracing::Span::current().record("status", outcome.status.as_str());
                debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "runner returned"
                );
                let _ = me.send_message(RunMsg::Done(outcome));
            }
            .instrument(process),
        ));
    }

    async fn on_message(
        myself: ActorRef<RunMsg>,
        message: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RunMsg::Begin => Self::begin(myself, state).await,
            RunMsg::Progress => {
                let _ = state.message.ack_with(AckKind::Progress).await;
            }
            RunMsg::Cancel => {
                info!(execution_id = %state.run.execution_id, "cancel requested; stopping the action");
                state.cancel.cancel();
            }
            RunMsg::Done(outcome) => {
                if let Some(progress) = state.progress.take() {
                    progress.abort();
                }
                Self::finish(&myself, state, outcome.status, outcome.result).await;
            }
        }
        Ok(())
    }
}

impl Worker {
    pub async fn start(config: WorkerConfig) -> Result<Self, sluice_bus::BusError> {
        let capacity = config.capacity.max(1);
        let consumer = config
            .bus
            .consumer(names::RUN, names::WORKERS_CONSUMER)
            .await?;
        let cancels = config
            .bus
            .client()
            .subscribe("sluice.cancel.>")
            .await
            .map_err(|e| sluice_bus::BusError::setup("cancel requests", e))?;
        let settle = Settle::new(
            config.bus.clone(),
            names::RUN,
            names::WORKERS_CONSUMER,
            "run",
            config.name.clone(),
        );
        let service = service::ActionService::new(
            config.bus.clone(),
            config.keyring.clone(),
            config.name.clone(),
        );
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            packs: packs::PackCache::new(config.bus.clone(), config.pack_cache),
            bus: config.bus,
            settle,
            run_verifier: config.run_verifier,
            keyring: config.keyring,
            runner: runner::Settings {
                service: Some(service),
                forks: Some(std::sync::Arc::new(forkserver::ForkServers::new())),
                ..config.runner
            },
            actions_dirs: config.actions_dirs,
            results: tokio::sync::OnceCell::new(),
            running: Mutex::new(BTreeSet::new()),
            held: Mutex::new(HashMap::new()),
        });
        let client = shared.bus.client().clone();
        let (supervisor, _) =
            Actor::spawn(Some(config.name.clone()), RunSupervisor, shared.clone())
                .await
                .map_err(|e| sluice_bus::BusError::setup("the worker's run supervisor", e))?;
        let slots = Arc::new(Semaphore::new(capacity));
        let cancel = CancellationToken::new();
        // As many run messages as there are free slots, never more: a message waits in the
        // stream, where another worker can take it, rather than in this worker's buffer.
        let runs = supervisor.clone();
        let pull = tokio::spawn(sluice_bus::consume_within(
            consumer,
            slots.clone(),
            cancel.clone(),
            move |group| runs.send_message(RunSupervisorMsg::Start(group)).is_ok(),
        ));
        let background = vec![
            tokio::spawn(heartbeat_loop(
                shared.clone(),
                capacity,
                config.heartbeat_interval,
                cancel.clone(),
            )),
            tokio::spawn(cancel_loop(shared, cancels, cancel.clone())),
        ];
        info!(worker = config.name, capacity, "worker started");
        Ok(Self {
            supervisor,
            cancel,
            pull,
            background,
            capacity,
            slots,
            client,
        })
    }

    /// Executions running right now.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Stops taking run messages, waits up to `drain` for running executions to finish and
    /// report, then stops. Anything still running is redelivered to another worker after
    /// `ack_wait` and reported `abandoned` there.
    pub async fn shutdown(mut self, drain: Duration) {
        self.cancel.cancel();
        let _ = (&mut self.pull).await;
        let deadline = Instant::now() + drain;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.in_flight() > 0 {
            warn!(
                in_flight = self.in_flight(),
                "drain time is up; stopping with executions running"
            );
        }
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
        for task in self.background {
            let _ = task.await;
        }
        if let Err(e) = self.client.flush().await {
            warn!(error = %e, "the last acks may not have reached nats-server; their messages come back and find their attempts ended");
        }
    }
}

/// Tells the engine, every `interval`, that this worker is alive and what it runs. Keeps
/// beating through a drain, so executions finishing then are not declared lost.
async fn heartbeat_loop(
    shared: Arc<Shared>,
    capacity: usize,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = cancel.cancelled(), if shared.running().is_empty() => return,
        }
        let running: Vec<ExecutionId> = shared.running().iter().copied().collect();
        let heartbeat = Heartbeat {
            worker: shared.name.clone(),
            capacity,
            running,
            at: Utc::now(),
        };
        if let Err(e) = shared.bus.publish_heartbeat(&heartbeat).await {
            warn!(error = %e, "heartbeat not sent");
        }
    }
}

/// Routes cancel requests to the run actor of the execution, if this worker runs it.
async fn cancel_loop(
    shared: Arc<Shared>,
    mut requests: async_nats::Subscriber,
    cancel: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = cancel.cancelled() => return,
            request = requests.next() => match request { Some(r) => r, None => return },
        };
        let Some(id) = request
            .subject
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<ExecutionId>().ok())
        else {
            continue;
        };
        if let Some(actor) = ractor::registry::where_is(shared.run_actor_name(id)) {
            let _ = actor.send_message(RunMsg::Cancel);
        }
    }
}

//! [`Bus`]: a NATS connection and its JetStream context, with typed publishing of Sluice's
//! messages and reads of the last message on a subject.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer, context::PublishErrorKind};
use bytes::Bytes;
use sluice_core::{
    CodecError, DeadLetter, ExecutionId, Heartbeat, MSGPACK_CONTENT_TYPE, RunMessage, StatusReport,
};
use sluice_telemetry::metrics;

use crate::error::{BusError, Source};
use crate::signing::RunSigner;
use crate::url::{Credentials, split_servers};

/// The publish kind of run messages: the one kind that is signed.
const RUN_KIND: &str = "run";
use crate::names;
use crate::streams::definitions;
use crate::subjects::{
    DEFAULT_QUEUE, cancel_subject, dead_letter_subject, heartbeat_subject, output_subject,
    run_subject, status_subject,
};

/// A header of a received message, as text.
pub fn header(message: &async_nats::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

/// Makes `span` continue the trace whose context `message` carries, if it carries one.
pub fn continue_trace(span: &tracing::Span, message: &async_nats::Message) {
    sluice_telemetry::continue_trace(span, |name| header(message, name));
}

/// Whether JetStream stored a publish or recognised it as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Stored { sequence: u64 },
    Duplicate,
}

/// How a process proves itself to NATS beyond what its URL carries.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// A file holding a user nkey seed (`SU…`).
    pub nkey: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its nkey seed), for servers in operator mode.
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the server's certificate; requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate and key (PEM), for a server that verifies clients.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
}

/// A plain NATS client for `url`, with the user and password (or token) the URL carries
/// and `extra`'s nkey and TLS: a URL's credentials are never dialled as part of the
/// address, nor logged.
pub async fn connect_client(
    url: &str,
    name: &str,
    extra: &NatsOptions,
) -> Result<async_nats::Client, BusError> {
    let (credentials, servers) = split_servers(url);
    let servers = servers
        .iter()
        .map(|server| {
            server.parse::<async_nats::ServerAddr>().map_err(|e| {
                BusError::setup(
                    format!("the NATS server address {}", crate::url::redact_url(server)),
                    e,
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = match credentials {
        Some(Credentials::UserPassword(user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(Credentials::Token(token)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(path) = &extra.nkey {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| BusError::setup(format!("the nkey seed in {}", path.display()), e))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &extra.creds {
        options = options.credentials_file(path).await.map_err(|e| {
            BusError::setup(format!("the NATS credentials in {}", path.display()), e)
        })?;
    }
    if let Some(ca) = &extra.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &extra.tls_cert {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers.as_slice())
        .await
        .map_err(|source| BusError::Connect {
            url: crate::url::redact_url(url),
            source,
        })
}

/// The last message on an execution's status subject.
#[derive(Debug)]
pub struct LastStatus {
    /// Its sequence in the STATUS stream: what a claim expects to still be last.
    pub sequence: u64,
    /// The report, or why it is not one (a message no worker wrote).
    pub report: Result<StatusReport, CodecError>,
}

/// A connection to NATS and its JetStream context; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// The engine's key: run messages are published only signed with it.
    signer: Option<Arc<RunSigner>>,
    /// How many copies of each stream and bucket a clustered server keeps, when set up
    /// through this bus (`streams/` says 1).
    stream_replicas: usize,
}

/// How many times the engine tries to claim an attempt it cancels, each after reading the
/// attempt's status subject again: another claim can come between the read and the try.
const CANCEL_TRIES: usize = 3;

/// What cancelling an attempt handed to the workers did ([`Bus::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSent {
    /// No worker had claimed it: the engine's claim ends it `cancelled`, its process never
    /// started.
    Claimed,
    /// A worker holds it: that worker was asked to stop it.
    Requested,
    /// It had ended already.
    Ended,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("client", &self.client)
            .field("signs_runs", &self.signer.is_some())
            .finish()
    }
}

impl Bus {
    /// Connects and applies the stream and consumer definitions (idempotent). An unreachable
    /// server is an error at once, naming the URL; once connected, the client reconnects by
    /// itself.
    pub async fn connect(url: &str, name: &str) -> Result<Self, BusError> {
        Self::connect_with(url, name, &NatsOptions::default()).await
    }

    /// [`Bus::connect`] with an nkey or TLS.
    pub async fn connect_with(
        url: &str,
        name: &str,
        options: &NatsOptions,
    ) -> Result<Self, BusError> {
        let bus = Self::attach(url, name, options).await?;
        bus.ensure_streams().await?;
        Ok(bus)
    }

    /// Connects without touching the streams: for a worker, whose NATS user may read and
    /// settle run messages but not set streams up (the engine does).
    pub async fn attach(url: &str, name: &str, options: &NatsOptions) -> Result<Self, BusError> {
        Ok(Self::from_client(connect_client(url, name, options).await?))
    }

    /// Wraps an existing client without touching the streams.
    pub fn from_client(client: async_nats::Client) -> Self {
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_ack_inflight(10_000)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Self {
            client,
            jetstream,
            signer: None,
            stream_replicas: 1,
        }
    }

    /// Streams and buckets this bus sets up keep `replicas` copies, on as many servers of a
    /// NATS cluster (at most 5; a single server takes only 1).
    pub fn with_stream_replicas(mut self, replicas: usize) -> Self {
        self.stream_replicas = replicas.max(1);
        self
    }

    /// The copies a stream set up through this bus keeps.
    pub fn stream_replicas(&self) -> usize {
        self.stream_replicas
    }

    /// This bus signs the run messages it publishes with `signer` (the engine's).
    pub fn with_run_signer(mut self, signer: Arc<RunSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Creates or updates every stream and durable consumer from `streams/`. An error that
    /// is transient ([`BusError::is_transient`]) means JetStream was not ready (a cluster
    /// electing a leader): calling again later may succeed.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        for mut def in definitions() {
            def.stream.num_replicas = self.stream_replicas;
            let name = def.stream.name.clone();
            let what = format!("stream {name}");
            if let Err(e) = self
                .jetstream
                .create_or_update_stream(def.stream.clone())
                .await
            {
                return Err(if storage_refused(&e) {
                    BusError::setup(storage_hint(&name, def.stream.max_bytes), e)
                } else if stream_setup_unavailable(&e) {
                    BusError::setup_unavailable(&what, e)
                } else {
                    match self.overlap(&def, &e).await {
                        Overlap::Itself => BusError::setup_unavailable(&what, e),
                        Overlap::With(other) => BusError::setup(
                            format!("{what}: its subjects are taken by stream {other}"),
                            e,
                        ),
                        Overlap::None => BusError::setup(&what, e),
                    }
                });
            }
            let stream = self
                .jetstream
                .get_stream(&name)
                .await
                .map_err(|e| BusError::setup(&what, e))?;
            for consumer in &def.consumers {
                let durable = consumer.config.durable_name.clone().unwrap_or_default();
                let exists = stream
                    .get_consumer::<jetstream::consumer::pull::Config>(&durable)
                    .await
                    .is_ok();
                let what = format!("consumer {name}/{durable}");
                if exists {
                    stream
                        .update_consumer(consumer.config.clone())
                        .await
                        .map_err(|e| consumer_update_error(what, e))?;
                } else {
                    stream
                        .create_consumer(consumer.config.clone())
                        .await
                        .map_err(|e| consumer_setup_error(what, e))?;
                }
            }
        }
        Ok(())
    }

    /// Which stream holds the subjects `e` says overlap `def`'s. A cluster that lost a
    /// server may answer an update with "not found" for a stream it holds, and then refuse
    /// to create it again because the stream holds its subjects: that passes once the
    /// servers agree.
    async fn overlap(
        &self,
        def: &crate::StreamDef,
        e: &jetstream::context::CreateStreamError,
    ) -> Overlap {
        let overlap = matches!(
            e.kind(),
            jetstream::context::CreateStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
        );
        let Some(subject) = def.stream.subjects.first().filter(|_| overlap) else {
            return Overlap::None;
        };
        match self.jetstream.stream_by_subject(subject.as_str()).await {
            Ok(holder) if holder != def.stream.name => Overlap::With(holder),
            // Itself, or not even that could be read: the servers do not agree yet.
            _ => Overlap::Itself,
        }
    }

    /// The durable pull consumer `durable` of `stream`, as declared in `streams/`.
    /// How far a durable consumer is behind its stream: messages not yet delivered, those
    /// delivered and not yet acknowledged, and when the oldest message not yet processed
    /// was stored.
    pub async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        let what = format!("consumer {stream}/{durable}");
        // One request for the consumer's state, and one more for the age only when
        // something is pending: `/metrics` asks this for every consumer at each scrape.
        let handle = self
            .jetstream
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::read(&what, e))?;
        let info = handle
            .consumer_info(durable)
            .await
            .map_err(|e| BusError::read(&what, e))?;
        let oldest_unprocessed_at = if info.num_pending + info.num_ack_pending as u64 > 0 {
            // The first message past the acknowledgement floor; a work queue may have
            // removed it already (acknowledged out of order), which leaves the age unknown.
            handle
                .get_raw_message(info.ack_floor.stream_sequence + 1)
                .await
                .ok()
                .and_then(|m| {
                    chrono::DateTime::from_timestamp(m.time.unix_timestamp(), m.time.nanosecond())
                })
        } else {
            None
        };
        Ok(ConsumerLag {
            stream: stream.to_owned(),
            consumer: durable.to_owned(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            oldest_unprocessed_at,
        })
    }

    pub async fn consumer(&self, stream: &str, durable: &str) -> Result<PullConsumer, BusError> {
        let what = format!("consumer {stream}/{durable}");
        let stream = self
            .jetstream
            .get_stream(stream)
            .await
            .map_err(|e| BusError::read(&what, e))?;
        stream
            .get_consumer(durable)
            .await
            .map_err(|e| BusError::read(what, e))
    }

    /// The durable consumer of `stream` that takes partition `partition`'s messages: the one
    /// `streams/` declares as `template`, named `<template>-p<partition>` and filtered to
    /// `filter`. Created the first time an engine owns the partition; it keeps its place in
    /// the stream for whichever engine owns the partition next.
    pub async fn partition_consumer(
        &self,
        stream: &str,
        template: &str,
        partition: u32,
        filter: String,
    ) -> Result<PullConsumer, BusError> {
        let durable = names::partition_durable(template, partition);
        let what = format!("consumer {stream}/{durable}");
        let mut config = definitions()
            .into_iter()
            .filter(|d| d.stream.name == stream)
            .flat_map(|d| d.consumers)
            .find(|c| c.config.durable_name.as_deref() == Some(template))
            .ok_or_else(|| {
                BusError::setup(
                    &what,
                    format!("streams/{stream} declares no consumer {template}"),
                )
            })?
            .config;
        config.durable_name = Some(durable.clone());
        config.description = Some(format!(
            "{} (partition {partition})",
            config.description.unwrap_or_default()
        ));
        config.filter_subject = filter;
        let handle = self
            .jetstream
            .get_stream(stream)
            .await
            .map_err(|e| BusError::read(&what, e))?;
        handle
            .get_or_create_consumer(&durable, config)
            .await
            .map_err(|e| consumer_setup_error(what, e))
    }

    /// Publishes with a deduplication id and counts the outcome under `kind`. With
    /// `expected_last`, JetStream stores the message only if the subject's last message
    /// still has that sequence (0: the subject is empty); otherwise [`BusError::NotLast`].
    async fn publish(
        &self,
        kind: &'static str,
        subject: String,
        dedup_id: &str,
        payload: Vec<u8>,
        expected_last: Option<u64>,
    ) -> Result<Published, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(names::CONTENT_TYPE_HEADER, MSGPACK_CONTENT_TYPE);
        if kind == RUN_KIND {
            let signer = self.signer.as_ref().ok_or_else(|| {
                BusError::setup(
                    "a run message",
                    "this process holds no run signing key; only the engine publishes run messages",
                )
            })?;
            let signature = signer.sign_together(&payload).await;
            headers.insert(names::SIGNATURE_HEADER, signature.as_str());
        }
        // The publishing span's context travels with the message, so the consumer's spans
        // join the same trace.
        for (name, value) in sluice_telemetry::trace_headers(&tracing::Span::current()) {
            headers.insert(name.as_str(), value.as_str());
        }
        let mut message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .headers(headers)
            .message_id(dedup_id);
        if let Some(sequence) = expected_last {
            message = message.expected_last_subject_sequence(sequence);
        }
        let failed = |source: Source, kind: PublishErrorKind| {
            if kind == PublishErrorKind::WrongLastSequence {
                return BusError::NotLast {
                    subject: subject.clone(),
                };
            }
            BusError::Publish {
                subject: subject.clone(),
                source,
                // Only a refusal of the message itself is final. "No stream" is what a server
                // answers while JetStream is still starting after a restart: the streams exist.
                transient: !matches!(
                    kind,
                    PublishErrorKind::MaxPayloadExceeded
                        | PublishErrorKind::WrongLastMessageId
                        | PublishErrorKind::WrongLastSequence
                        | PublishErrorKind::Other
                ),
            }
        };
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| {
                let kind = e.kind();
                failed(e.into(), kind)
            })?;
        let ack = ack.await.map_err(|e| {
            let kind = e.kind();
            failed(e.into(), kind)
        })?;
        Ok(if ack.duplicate {
            metrics().duplicates_suppressed.inc([kind]);
            Published::Duplicate
        } else {
            metrics().messages_published.inc([kind]);
            Published::Stored {
                sequence: ack.sequence,
            }
        })
    }

    /// Publishes a trigger payload (JSON) to TRIGGERS, as `nats pub` would but waiting for
    /// JetStream to store it; `msg_id` deduplicates repeats (a webhook's delivery id).
    /// Returns the stream sequence and whether it was a duplicate of one already stored.
    pub async fn publish_trigger(
        &self,
        trigger: &str,
        payload: Vec<u8>,
        msg_id: Option<&str>,
    ) -> Result<(u64, bool), BusError> {
        self.send_trigger(trigger, payload, msg_id).await?.await
    }

    /// Sends a trigger payload like [`Bus::publish_trigger`] without waiting for JetStream:
    /// the returned future waits. Many sent in a row are pipelined.
    pub async fn send_trigger(
        &self,
        trigger: &str,
        payload: Vec<u8>,
        msg_id: Option<&str>,
    ) -> Result<impl Future<Output = Result<(u64, bool), BusError>> + Send + 'static, BusError>
    {
        let subject = crate::trigger_subject(trigger);
        let mut headers = HeaderMap::new();
        headers.insert(names::CONTENT_TYPE_HEADER, "application/json");
        for (name, value) in sluice_telemetry::trace_headers(&tracing::Span::current()) {
            headers.insert(name.as_str(), value.as_str());
        }
        let mut message = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .headers(headers);
        if let Some(id) = msg_id {
            message = message.message_id(id);
        }
        let failed = move |subject: String, source: Source| BusError::Publish {
            subject,
            source,
            transient: true,
        };
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| failed(subject.clone(), e.into()))?;
        Ok(async move {
            let ack = ack.await.map_err(|e| failed(subject, e.into()))?;
            Ok((ack.sequence, ack.duplicate))
        })
    }

    /// Hands an execution to the workers: the handoff. Deduplicated per attempt.
    pub async fn publish_run(&self, message: &RunMessage) -> Result<Published, BusError> {
        self.publish(
            RUN_KIND,
            run_subject(DEFAULT_QUEUE),
            &message.dedup_id(),
            sluice_core::encode(message)?,
            None,
        )
        .await
    }

    /// Reports a status; one `running` and one completion per execution reach the stream.
    pub async fn publish_status(&self, report: &StatusReport) -> Result<Published, BusError> {
        let kind = if report.status.is_terminal() {
            "completed"
        } else {
            "running"
        };
        self.publish(
            kind,
            status_subject(report.partition, report.execution_id),
            &report.dedup_id(),
            sluice_core::encode(report)?,
            None,
        )
        .await
    }

    /// Claims an execution attempt for one worker: publishes its `running` report only if
    /// `expected_last` (from [`Bus::last_status`], 0 for none) is still the last message on
    /// the execution's status subject. Of several workers holding copies of one run
    /// message, and the engine cancelling the attempt ([`Bus::cancel`]), exactly one claim
    /// succeeds; the others get `Ok(false)` and must not run it. Each call is a new try
    /// with an id of its own ([`StatusReport::claim_id`]): only a repeat of its own publish
    /// counts as a duplicate, and so as claimed.
    pub async fn claim(&self, report: &StatusReport, expected_last: u64) -> Result<bool, BusError> {
        debug_assert!(
            report.status == sluice_core::ExecutionStatus::Running || report.by_engine(),
            "a claim is a worker's `running` report or the engine's cancel"
        );
        let mut claim = [0u8; 8];
        getrandom::fill(&mut claim).map_err(|e| BusError::Publish {
            subject: status_subject(report.partition, report.execution_id),
            source: format!("no random number for the claim's id: {e}").into(),
            transient: false,
        })?;
        let kind = if report.status.is_terminal() {
            "completed"
        } else {
            "running"
        };
        let published = self
            .publish(
                kind,
                status_subject(report.partition, report.execution_id),
                &report.claim_id(u64::from_le_bytes(claim)),
                sluice_core::encode(report)?,
                Some(expected_last),
            )
            .await;
        match published {
            Ok(_) => Ok(true),
            Err(BusError::NotLast { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Cancels an attempt handed to the workers. `cancelled` is the engine's report of it
    /// ([`StatusReport::cancelled_before_start`]), published as a claim: if no worker has
    /// claimed the attempt, the report takes the attempt's status subject, a worker's claim
    /// then fails, and the engine records the report as it records any. If a worker holds
    /// the attempt, that worker is asked to stop it (`sluice.cancel.<id>`, which every
    /// worker hears). An attempt that has ended is left as it is.
    pub async fn cancel(&self, cancelled: &StatusReport) -> Result<CancelSent, BusError> {
        let (id, attempt) = (cancelled.execution_id, cancelled.attempt);
        for _ in 0..CANCEL_TRIES {
            let expected = match self.last_status(id, cancelled.partition).await? {
                None => 0,
                Some(LastStatus {
                    report: Ok(last), ..
                }) if last.attempt >= attempt => {
                    return Ok(if last.attempt > attempt {
                        CancelSent::Ended
                    } else if !last.status.is_terminal() {
                        self.publish_cancel(id).await?;
                        CancelSent::Requested
                    } else if last.by_engine() {
                        CancelSent::Claimed
                    } else {
                        CancelSent::Ended
                    });
                }
                // A report of an earlier attempt, or a message no worker wrote: the attempt
                // is unclaimed.
                Some(last) => last.sequence,
            };
            match self.claim(cancelled, expected).await {
                Ok(true) => return Ok(CancelSent::Claimed),
                // Claimed meanwhile, or the publish's fate unknown: read again.
                Ok(false) => {}
                Err(e) if e.is_transient() => {
                    tracing::debug!(execution_id = %id, error = %e, "cancel not confirmed; reading it back");
                }
                Err(e) => return Err(e),
            }
        }
        Err(BusError::NotLast {
            subject: status_subject(cancelled.partition, id),
        })
    }

    /// Asks whichever worker holds the execution to stop it. Deduplicated per execution.
    async fn publish_cancel(&self, id: ExecutionId) -> Result<Published, BusError> {
        self.publish(
            "cancel",
            cancel_subject(id),
            &format!("{id}.cancel"),
            Vec::new(),
            None,
        )
        .await
    }

    /// Records that a message was given up, and why; deduplicated per stream message.
    pub async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<Published, BusError> {
        self.publish(
            "dead_letter",
            dead_letter_subject(&letter.stream),
            &letter.dedup_id(),
            sluice_core::encode(letter)?,
            None,
        )
        .await
    }

    /// The sequence and payload of the last message stored on `subject` in `stream`, if any:
    /// one request, answered by the stream's leader, so a message whose publish was
    /// acknowledged is always seen.
    async fn last_on_subject(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<(u64, Bytes)>, BusError> {
        let what = format!("{stream} stream");
        // A handle by name, without asking the server for the stream's info first.
        let stream = self
            .jetstream
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::read(&what, e))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(raw) => Ok(Some((raw.sequence, raw.payload))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(BusError::read(what, e)),
        }
    }

    /// Publishes a heartbeat on core NATS (fire and forget: the next one follows shortly).
    pub async fn publish_heartbeat(&self, heartbeat: &Heartbeat) -> Result<(), BusError> {
        self.publish_core(heartbeat_subject(&heartbeat.worker), heartbeat)
            .await
    }

    /// Publishes `message` on `subject` without waiting for anyone to store it.
    async fn publish_core(
        &self,
        subject: String,
        message: &impl serde::Serialize,
    ) -> Result<(), BusError> {
        let payload = sluice_core::encode(message)?;
        self.client
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| BusError::Publish {
                subject,
                source: e.into(),
                transient: true,
            })
    }

    /// Publishes a piece of an execution's output to OUTPUT without waiting for JetStream
    /// (the result keeps the output too, whoever followed it).
    pub async fn publish_output(
        &self,
        id: ExecutionId,
        chunk: &sluice_core::OutputChunk,
    ) -> Result<(), BusError> {
        self.publish_core(output_subject(id), chunk).await
    }

    /// An execution's output from its first piece on, then each as the worker running it
    /// reads it: an ordered consumer of OUTPUT filtered to the execution's subject.
    pub async fn follow_output(
        &self,
        id: ExecutionId,
    ) -> Result<impl futures::Stream<Item = sluice_core::OutputChunk> + use<>, BusError> {
        let subject = output_subject(id);
        let stream = self
            .jetstream
            .get_stream_no_info(names::OUTPUT)
            .await
            .map_err(|e| BusError::read(format!("stream {}", names::OUTPUT), e))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::read(format!("output of {id}"), e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::read(subject, e))?;
        Ok(futures::StreamExt::filter_map(
            messages,
            |message| async move { sluice_core::decode(&message.ok()?.payload).ok() },
        ))
    }

    /// The last message stored on an execution's status subject, if any: lets a worker
    /// that receives a run message see whether the attempt was already claimed or
    /// completed, and claim it against that sequence.
    /// Removes message `seq` from `stream`, overwriting its bytes on disk.
    pub async fn erase(&self, stream: &str, seq: u64) -> Result<(), BusError> {
        let stream = self
            .jetstream
            .get_stream_no_info(stream)
            .await
            .map_err(|e| BusError::read(format!("stream {stream}"), e))?;
        stream
            .delete_message(seq)
            .await
            .map_err(|e| BusError::read(format!("message {seq}"), e))?;
        Ok(())
    }

    pub async fn last_status(
        &self,
        id: ExecutionId,
        partition: Option<u32>,
    ) -> Result<Option<LastStatus>, BusError> {
        Ok(self
            .last_on_subject(names::STATUS, &status_subject(partition, id))
            .await?
            .map(|(sequence, payload)| LastStatus {
                sequence,
                report: sluice_core::decode(&payload),
            }))
    }
}

/// Whether JetStream refused a stream because it cannot reserve the stream's `max_bytes`.
fn storage_refused(error: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
    )
}

/// What to do when nats-server cannot reserve a stream's storage.
fn storage_hint(stream: &str, max_bytes: i64) -> String {
    format!(
        "stream {stream}: nats-server cannot reserve its max_bytes ({max_bytes} bytes); JetStream \
         reserves every stream's max_bytes from its max_file_store, by default 75% of the disk \
         free under its store_dir when it started: free disk space there, or set \
         `jetstream {{ max_file_store: ... }}` in nats-server's configuration"
    )
}

/// How far a durable consumer is behind its stream ([`Bus::consumer_lag`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerLag {
    pub stream: String,
    pub consumer: String,
    /// Stored and not yet delivered.
    pub pending: u64,
    /// Delivered and not yet acknowledged (being handled, or waiting to be redelivered).
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// When the oldest message not yet acknowledged was stored.
    pub oldest_unprocessed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What holds the subjects of a stream whose creation was refused for overlapping.
enum Overlap {
    /// Not refused for that.
    None,
    /// The stream itself, which the servers do not yet agree exists (or no server could
    /// say).
    Itself,
    /// A stream of this other name.
    With(String),
}

/// Whether JetStream answered a stream's setup with "not now": no answer in time, not
/// available, or a 503 (a cluster without a leader for it yet).
pub(crate) fn stream_setup_unavailable(e: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(e) => e.code() == 503,
        _ => false,
    }
}

fn consumer_setup_error(what: String, e: jetstream::stream::ConsumerError) -> BusError {
    use jetstream::stream::ConsumerErrorKind as Kind;
    let unavailable = match e.kind() {
        Kind::TimedOut => true,
        Kind::JetStream(e) => e.code() == 503,
        _ => false,
    };
    setup_error(what, unavailable, e)
}

/// [`consumer_setup_error`] for an update of a consumer that exists: a cluster electing its
/// leaders may not answer it in time.
fn consumer_update_error(what: String, e: jetstream::stream::ConsumerUpdateError) -> BusError {
    use jetstream::stream::ConsumerUpdateErrorKind as Kind;
    let unavailable = match e.kind() {
        Kind::TimedOut => true,
        Kind::JetStream(e) => e.code() == 503,
        _ => false,
    };
    setup_error(what, unavailable, e)
}

/// A setup step that failed, worth trying again if JetStream was `unavailable`.
fn setup_error(
    what: String,
    unavailable: bool,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    if unavailable {
        BusError::setup_unavailable(what, e)
    } else {
        BusError::setup(what, e)
    }
}

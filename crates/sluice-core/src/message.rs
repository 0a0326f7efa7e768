//! Messages between the engine and workers, encoded as MessagePack.
//!
//! A run message is published once per attempt with the deduplication id
//! `<execution id>.<attempt>`; the one worker that claims the attempt answers with one
//! `running` report (`<id>.<attempt>.running.<worker>`, published only if nothing else
//! reached the execution's status subject first) and one completion
//! (`<id>.<attempt>.completed`).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ActionRef, ExecutionId, ExecutionStatus, RunnerType};

/// The `Content-Type` header value of every internal message.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// Engine → worker: run this action with these parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMessage {
    pub execution_id: ExecutionId,
    pub attempt: u32,
    pub action: ActionRef,
    pub runner: RunnerType,
    /// The version of the action's pack to run: the digest of its bundle in the packs
    /// object store, which a worker without the pack on disk fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
    /// The file the runner executes, relative to the pack's `actions/` directory.
    pub entry_point: Option<String>,
    /// Parameters after defaults and templates, secrets included: the process needs them.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Names of parameters that are secret, so the worker never logs their values.
    #[serde(default)]
    pub secret_parameters: Vec<String>,
    /// Parameters a `local-shell-script` action's script takes as positional arguments,
    /// in order (their `position:`); the rest are named arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positional: Vec<String>,
    pub timeout_secs: Option<u64>,
    /// The action's pack configuration, its secrets sealed: a python action's `self.config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Limits on the action's processes.
    #[serde(default, skip_serializing_if = "ProcessLimits::is_none")]
    pub limits: ProcessLimits,
    /// How the action reaches the engine's API while it runs, when the engine serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ActionApi>,
    /// The partition of the actions the action belongs to, when the engines run
    /// partitioned: the worker reports on that partition's status subjects, which the
    /// engine owning the action listens to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// The API as an action is given it: `ST2_ACTION_API_URL` and `ST2_ACTION_AUTH_TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionApi {
    /// The API's base URL, `…/api/v1`.
    pub url: String,
    /// The execution's token, sealed: it opens the API to whoever holds it until the
    /// execution ends.
    pub token: String,
}

/// Per-process limits an action asks for (`limits:` in its file), applied by the worker
/// with `setrlimit` to the process it starts, and inherited by its children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessLimits {
    /// Address space, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// CPU time, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

impl ProcessLimits {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

impl RunMessage {
    pub fn dedup_id(&self) -> String {
        format!("{}.{}", self.execution_id, self.attempt)
    }
}

/// Worker → engine: what happened to an execution after the handoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub execution_id: ExecutionId,
    pub attempt: u32,
    pub action: ActionRef,
    pub worker: String,
    /// `running` or a terminal status.
    pub status: ExecutionStatus,
    /// The runner's result; `null` on a `running` report, and when the result travels in
    /// the results bucket instead (`result_object`).
    pub result: serde_json::Value,
    pub at: DateTime<Utc>,
    /// Where a result of more than [`INLINE_RESULT_BYTES`] of JSON was put, in the
    /// `sluice-results` bucket, before this report was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_object: Option<ResultObject>,
    /// The partition its run message named: where the report is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// A result larger than this, as JSON, travels in the `sluice-results` object store rather
/// than inside its report: reports stay small whatever an action prints, and the engine
/// writes a large result to the store as the JSON it came as.
pub const INLINE_RESULT_BYTES: usize = 64 * 1024;

/// A result in the `sluice-results` bucket: the object's name and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultObject {
    pub name: String,
    pub size: u64,
}

impl StatusReport {
    /// `<execution id>.<attempt>.completed`: one completion per attempt, so JetStream
    /// drops any repeat. Per attempt, so the late completion of a superseded attempt (a
    /// worker thought lost) cannot take the place of the real one; the engine ignores
    /// reports whose attempt is not the execution's current one.
    ///
    /// `<execution id>.<attempt>.running.<worker>` for a `running` report published without
    /// a claim; a claim has an id of its own ([`StatusReport::claim_id`]).
    pub fn dedup_id(&self) -> String {
        if self.status.is_terminal() {
            format!("{}.{}.completed", self.execution_id, self.attempt)
        } else {
            format!(
                "{}.{}.running.{}",
                self.execution_id, self.attempt, self.worker
            )
        }
    }

    /// `<execution id>.<attempt>.running.<worker>.<claim>`, or
    /// `<execution id>.<attempt>.cancelled.<claim>` for the engine's: a claim's id, unique to
    /// one try (`claim`, a random number the claimant draws for it). JetStream answers a
    /// duplicate id as stored without checking the claim's expected-last-sequence condition,
    /// so only a repeat of this very publish may be a duplicate: anything else, another
    /// worker's claim, or this worker's claim from an earlier copy of the run message or an
    /// earlier life of the worker, is decided by the condition.
    pub fn claim_id(&self, claim: u64) -> String {
        if self.worker.is_empty() {
            return format!(
                "{}.{}.{}.{claim:016x}",
                self.execution_id, self.attempt, self.status
            );
        }
        format!(
            "{}.{}.{}.{}.{claim:016x}",
            self.execution_id, self.attempt, self.status, self.worker
        )
    }

    /// The engine's claim of an attempt no worker has claimed yet, which ends it
    /// `cancelled`: published on the same condition as a worker's claim, so exactly one of
    /// the two holds the attempt. No worker took it, so `worker` is empty.
    pub fn cancelled_before_start(
        execution_id: ExecutionId,
        attempt: u32,
        action: ActionRef,
        partition: Option<u32>,
    ) -> Self {
        Self {
            execution_id,
            attempt,
            action,
            worker: String::new(),
            status: ExecutionStatus::Cancelled,
            result: serde_json::json!({ "error": "cancelled before it started" }),
            at: Utc::now(),
            result_object: None,
            partition,
        }
    }

    /// Whether the engine wrote this report ([`StatusReport::cancelled_before_start`])
    /// rather than a worker.
    pub fn by_engine(&self) -> bool {
        self.worker.is_empty()
    }
}

/// Worker → engine, every heartbeat interval on core NATS: the worker is alive, and this is
/// what it is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: String,
    pub capacity: usize,
    pub running: Vec<ExecutionId>,
    pub at: DateTime<Utc>,
}

/// Worker → whoever follows an execution live, on core NATS: a piece of its output, in the
/// order read. The result keeps the output too (within the output cap), whoever listened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub attempt: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// What was read, as text (invalid UTF-8 replaced).
    pub text: String,
}

/// Whoever terminates a message that can never succeed → the engine's dead-letter
/// recorder: what the message was, where it came from and why it was given up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stream: String,
    pub consumer: String,
    pub subject: String,
    pub stream_seq: u64,
    /// How many times the message had been delivered when it was given up.
    pub deliveries: u64,
    pub reason: String,
    pub payload_size: u64,
    /// The payload, up to [`DeadLetter::MAX_PAYLOAD`] bytes; `None` for run messages,
    /// which can carry secret parameters.
    #[serde(with = "serde_bytes_opt")]
    pub payload: Option<Vec<u8>>,
    /// The process that gave it up (`engine/...`, `worker/...`).
    pub by: String,
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    /// How much of a dead message's payload is kept.
    pub const MAX_PAYLOAD: usize = 64 * 1024;

    /// `<stream>.<stream sequence>`: one dead letter per message, however often it is given up.
    pub fn dedup_id(&self) -> String {
        format!("{}.{}", self.stream, self.stream_seq)
    }
}

/// Payload bytes as a MessagePack binary rather than an array of integers.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&Bytes(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }

    struct Bytes<'a>(&'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(Visitor)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("failed to encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("failed to decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// MessagePack with field names, so messages stay readable and fields can be added.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_round_trip_with_binary_payloads() {
        let letter = DeadLetter {
            stream: "STATUS".into(),
            consumer: "engine".into(),
            subject: "sluice.status.7".into(),
            stream_seq: 12,
            deliveries: 1,
            reason: "unreadable".into(),
            payload_size: 3,
            payload: Some(vec![0xff, 0x00, 0x41]),
            by: "engine/test".into(),
            at: Utc::now(),
        };
        let bytes = encode(&letter).unwrap();
        assert_eq!(decode::<DeadLetter>(&bytes).unwrap(), letter);
        assert_eq!(letter.dedup_id(), "STATUS.12");
        let none = DeadLetter {
            payload: None,
            ..letter
        };
        assert_eq!(decode::<DeadLetter>(&encode(&none).unwrap()).unwrap(), none);
    }

    #[test]
    fn run_messages_round_trip_and_dedup_per_attempt() {
        let mut parameters = serde_json::Map::new();
        parameters.insert("cmd".into(), serde_json::json!("uname -a"));
        let msg = RunMessage {
            execution_id: ExecutionId(42),
            attempt: 1,
            action: "core.local".parse().unwrap(),
            runner: RunnerType::LocalShellCmd,
            pack_digest: None,
            entry_point: None,
            parameters,
            secret_parameters: vec![],
            positional: vec![],
            config: None,
            timeout_secs: Some(60),
            limits: Default::default(),
            api: None,
            partition: Some(3),
        };
        let back: RunMessage = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
        assert_eq!(msg.dedup_id(), "42.1");
    }

    #[test]
    fn reports_have_one_dedup_id_per_kind() {
        let mut report = StatusReport {
            execution_id: ExecutionId(7),
            attempt: 2,
            action: "core.noop".parse().unwrap(),
            worker: "w1".into(),
            status: ExecutionStatus::Running,
            result: serde_json::Value::Null,
            at: Utc::now(),
            result_object: None,
            partition: None,
        };
        assert_eq!(report.dedup_id(), "7.2.running.w1");
        assert_eq!(report.claim_id(0xab), "7.2.running.w1.00000000000000ab");
        report.status = ExecutionStatus::TimedOut;
        assert_eq!(report.dedup_id(), "7.2.completed");
        let back: StatusReport = decode(&encode(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode::<RunMessage>(b"not msgpack").is_err());
    }
}

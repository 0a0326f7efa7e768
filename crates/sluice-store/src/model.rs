//! Rows and the requests that create them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_core::{ActionRef, EventId, EventStatus, ExecutionId, ExecutionStatus};

/// A trigger firing as received.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub trigger: String,
    pub subject: String,
    pub payload: Option<serde_json::Value>,
    /// Why the event was refused (unreadable, schema mismatch); `None` when accepted.
    pub rejected: Option<String>,
    /// Sequence in the TRIGGERS stream, so a redelivery is recognised as the same event.
    pub stream_seq: Option<u64>,
    pub msg_id: Option<String>,
}

/// One rule that fired on an event and the execution it requests.
#[derive(Debug, Clone)]
pub struct Firing {
    pub rule: String,
    pub action: ActionRef,
    /// Parameters as stored: secret values already replaced.
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// `Some(reason)` when the execution could not even be requested (a template failed):
    /// it is stored as `failed` with the reason as its result.
    pub failed: Option<String>,
    /// The W3C `traceparent` of the span that requested it.
    pub traceparent: Option<String>,
    /// Its action's supervisor let it through as the event arrived (a free slot, nothing
    /// queued): it is stored already `scheduled`, admitted when the event is recorded.
    pub admitted: bool,
}

impl Firing {
    /// The result an execution that could not even be requested is stored with.
    pub(crate) fn failure(&self) -> Option<serde_json::Value> {
        self.failed
            .as_ref()
            .map(|reason| serde_json::json!({ "error": reason }))
    }
}

/// What recording an event did.
#[derive(Debug, Clone, PartialEq)]
pub struct EventOutcome {
    pub event_id: EventId,
    /// True when the event was already stored (a redelivered trigger message); nothing was
    /// written and `executions` is empty.
    pub duplicate: bool,
    /// The executions created (`requested`, or `scheduled` when admitted as the event
    /// arrived), in firing order; failed firings left out.
    pub executions: Vec<(ExecutionId, ActionRef)>,
}

impl EventOutcome {
    /// An event stored before: nothing written.
    pub(crate) fn duplicate(event_id: EventId) -> Self {
        Self {
            event_id,
            duplicate: true,
            executions: Vec::new(),
        }
    }

    /// An event stored now, with the executions it created.
    pub(crate) fn recorded(event_id: EventId, executions: Vec<(ExecutionId, ActionRef)>) -> Self {
        Self {
            event_id,
            duplicate: false,
            executions,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: EventId,
    pub trigger: String,
    pub status: EventStatus,
    pub reason: Option<String>,
    pub payload: Option<serde_json::Value>,
    pub subject: String,
    pub created_at: DateTime<Utc>,
}

/// A rule that fired on an event, and the execution it requested.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Enforcement {
    pub id: i64,
    pub rule: String,
    pub event_id: EventId,
    pub execution_id: ExecutionId,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct HistoryEntry {
    pub attempt: u32,
    pub status: ExecutionStatus,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Execution {
    pub id: ExecutionId,
    pub action: ActionRef,
    pub status: ExecutionStatus,
    pub parameters: serde_json::Value,
    pub result: Option<serde_json::Value>,
    /// Why a stored value of this row could not be read (it reads as `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    pub rule: Option<String>,
    pub event_id: Option<EventId>,
    pub parent_id: Option<ExecutionId>,
    pub attempt: u32,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The trace this execution's spans belong to (hex), when it was traced.
    pub trace_id: Option<String>,
    /// The W3C `traceparent` of the span that requested it.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// The execution this one runs again, for a re-run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<ExecutionId>,
    /// Filled by [`crate::Store::get_execution`] only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// A status change and what comes with it.
#[derive(Debug, Clone)]
pub struct Transition {
    pub to: ExecutionStatus,
    /// Apply only if this is the execution's current attempt (worker reports).
    pub attempt: Option<u32>,
    pub result: Option<ResultJson>,
    pub worker: Option<String>,
    pub at: DateTime<Utc>,
    /// When the attempt started running, for an end that arrives together with the
    /// attempt's `running` report: one update records both, and the history keeps both.
    pub started: Option<DateTime<Utc>>,
}

/// A result as a transition writes it: a value, or JSON text exactly as it arrived. A large
/// result from the results bucket is written as the text it came as, never parsed into a
/// value and printed again; cloning it copies no text.
#[derive(Debug, Clone)]
pub enum ResultJson {
    Value(serde_json::Value),
    Text(std::sync::Arc<serde_json::value::RawValue>),
}

impl ResultJson {
    /// JSON text as it arrived, checked to be JSON (and nothing else) but not parsed into
    /// a value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::RawValue::from_string(text)?;
        Ok(Self::Text(raw.into()))
    }

    /// The result as a value (text is parsed).
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            Self::Value(value) => value.clone(),
            Self::Text(raw) => serde_json::from_str(raw.get()).unwrap_or_default(),
        }
    }
}

impl From<serde_json::Value> for ResultJson {
    fn from(value: serde_json::Value) -> Self {
        Self::Value(value)
    }
}

impl Serialize for ResultJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(value) => value.serialize(serializer),
            Self::Text(raw) => raw.serialize(serializer),
        }
    }
}

impl Transition {
    pub fn to(to: ExecutionStatus) -> Self {
        Self {
            to,
            attempt: None,
            result: None,
            worker: None,
            at: Utc::now(),
            started: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub action: Option<String>,
    pub status: Option<ExecutionStatus>,
    /// Newest first, at most this many (default 50, at most 1000).
    pub limit: Option<u32>,
    /// Only executions with a smaller id: the next page after a page ending at `before`.
    pub before: Option<i64>,
    /// Only the children of this execution (a workflow's tasks).
    pub parent: Option<i64>,
    /// Only those this rule requested.
    pub rule: Option<String>,
    /// Only those created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only those created before this instant.
    pub until: Option<DateTime<Utc>>,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub trigger: Option<String>,
    pub status: Option<sluice_core::EventStatus>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<u32>,
    /// Only events with a smaller id: the next page after a page ending at `before`.
    pub before: Option<i64>,
    /// Only those created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only those created before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only those whose payload has this value at this dotted path (`host`, `labels.team`),
    /// compared as text: a string as it is, a number as written.
    pub payload: Option<(String, String)>,
}

/// Counts across the store that must add up: every trigger message is one event, every
/// execution ends exactly once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Default)]
pub struct Ledger {
    pub events: i64,
    pub rejected_events: i64,
    pub enforcements: i64,
    /// Executions by status.
    pub executions: std::collections::BTreeMap<ExecutionStatus, i64>,
    /// Executions not in a terminal status.
    pub unfinished: i64,
    /// Ended executions whose history does not hold exactly one terminal status (at most
    /// 100 listed); empty when every execution ended once.
    pub ended_other_than_once: Vec<i64>,
    pub dead_letters: i64,
}

/// A message given up as never able to succeed, as the store keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterRecord {
    pub id: i64,
    pub stream: String,
    pub consumer: String,
    pub subject: String,
    pub stream_seq: u64,
    pub deliveries: u64,
    pub reason: String,
    pub payload_size: u64,
    /// The kept payload as text (invalid UTF-8 shown as U+FFFD); `None` for run messages.
    pub payload: Option<String>,
    pub given_up_by: String,
    pub created_at: DateTime<Utc>,
}

/// The lease a store's writes are checked against: the duty's name and the lease's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub token: i64,
}

impl Fence {
    /// Whether a transaction that read `current` as this fence's token may write: only
    /// while the token is still this one.
    pub(crate) fn check(&self, current: Option<i64>) -> Result<(), crate::error::StoreError> {
        if current == Some(self.token) {
            return Ok(());
        }
        Err(crate::error::StoreError::Fenced {
            name: self.name.clone(),
            token: self.token,
            current,
        })
    }
}

//! The execution lifecycle and who owns each stage of it.
//!
//! ```text
//! requested -> scheduling -> scheduled  ||handoff||  running -> succeeded | failed | timed_out | cancelled
//!    (engine owns; may cancel here)                  (worker owns; may cancel here)   + abandoned
//! ```
//!
//! The handoff is the moment the run message is published. Before it the engine decides the
//! status; after it only the worker's reports move it. Every store update is conditional on
//! [`ExecutionStatus::sources`], so a stale or repeated report changes nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Requested,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Abandoned,
}

/// Which process decides the next status of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Engine,
    Worker,
    /// Terminal: nobody may move it again.
    Nobody,
}

use ExecutionStatus::*;

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 9] = [
        Requested, Scheduling, Scheduled, Running, Succeeded, Failed, TimedOut, Cancelled,
        Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Requested => "requested",
            Scheduling => "scheduling",
            Scheduled => "scheduled",
            Running => "running",
            Succeeded => "succeeded",
            Failed => "failed",
            TimedOut => "timed_out",
            Cancelled => "cancelled",
            Abandoned => "abandoned",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Succeeded | Failed | TimedOut | Cancelled | Abandoned)
    }

    /// Who may move an execution out of this status.
    pub fn owner(self) -> Owner {
        match self {
            Requested | Scheduling => Owner::Engine,
            Scheduled | Running => Owner::Worker,
            _ => Owner::Nobody,
        }
    }

    /// The statuses from which `self` may be reached. This is the whole transition table:
    /// store updates use it as their `WHERE status IN (...)` guard.
    pub fn sources(self) -> &'static [ExecutionStatus] {
        match self {
            // Back to the queue for another attempt when the worker running it was lost and
            // the action's policy says to retry; the attempt number goes up.
            Requested => &[Scheduled, Running],
            Scheduling => &[Requested],
            Scheduled => &[Scheduling],
            Running => &[Scheduled],
            // The engine fails or cancels before the handoff; the worker after it. A fast
            // action may complete before its `running` report is processed, so terminal
            // statuses are reachable from `scheduled` too.
            Failed | Cancelled => &[Requested, Scheduling, Scheduled, Running],
            Succeeded | TimedOut => &[Scheduled, Running],
            Abandoned => &[Scheduled, Running],
        }
    }

    pub fn can_transition_to(self, next: ExecutionStatus) -> bool {
        next.sources().contains(&self)
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown execution status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for ExecutionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// How a trigger message was taken: accepted (rules matched against it) or rejected (not
/// decodable, an unknown trigger, a payload its schema refuses), with the reason kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Accepted,
    Rejected,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Accepted, Self::Rejected]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_are_final() {
        for from in ExecutionStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in ExecutionStatus::ALL {
                assert!(!from.can_transition_to(to), "{from} -> {to} allowed");
            }
            assert_eq!(from.owner(), Owner::Nobody);
        }
    }

    #[test]
    fn no_status_transitions_to_itself() {
        for status in ExecutionStatus::ALL {
            assert!(
                !status.can_transition_to(status),
                "{status} -> {status} allowed"
            );
        }
    }

    #[test]
    fn the_happy_path_is_legal_and_running_is_never_reentered() {
        let path = [Requested, Scheduling, Scheduled, Running, Succeeded];
        for pair in path.windows(2) {
            assert!(
                pair[0].can_transition_to(pair[1]),
                "{} -> {}",
                pair[0],
                pair[1]
            );
        }
        assert!(!Succeeded.can_transition_to(Running));
        assert!(!Running.can_transition_to(Scheduled));
        assert!(
            !Requested.can_transition_to(Succeeded),
            "only a worker reports success"
        );
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in ExecutionStatus::ALL {
            assert_eq!(status.as_str().parse::<ExecutionStatus>(), Ok(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        assert!("done".parse::<ExecutionStatus>().is_err());
    }
}

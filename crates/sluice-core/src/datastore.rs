//! The datastore's keys and entries: StackStorm's st2kv, kept in a JetStream key-value
//! bucket so workers can read it with their NATS credentials alone.
//!
//! A key lives in a scope: `system` (everyone's) or one pack's. Its full name is
//! `system.<name>` or `pack.<pack>.<name>`, which is also its key in the bucket and how
//! templates reach it (`{{ st2kv.system.<name> }}`; `{{ st2kv.pack.<name> }}` within the
//! pack). A secret entry holds its value sealed.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a key lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyScope {
    System,
    Pack(String),
}

/// A datastore key: its scope and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName {
    pub scope: KeyScope,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyNameError {
    #[error("{0:?} is not a key: expected system.<name> or pack.<pack>.<name>")]
    Shape(String),
    #[error("{what} {part:?} in key {key:?} may hold only letters, digits, `_` and `-`")]
    Characters {
        what: &'static str,
        part: String,
        key: String,
    },
}

fn plain(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 200
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl KeyName {
    pub fn system(name: &str) -> Result<Self, KeyNameError> {
        format!("system.{name}").parse()
    }

    pub fn pack(pack: &str, name: &str) -> Result<Self, KeyNameError> {
        format!("pack.{pack}.{name}").parse()
    }
}

impl FromStr for KeyName {
    type Err = KeyNameError;

    fn from_str(key: &str) -> Result<Self, KeyNameError> {
        let check = |what, part: &str| {
            if plain(part) {
                Ok(part.to_owned())
            } else {
                Err(KeyNameError::Characters {
                    what,
                    part: part.to_owned(),
                    key: key.to_owned(),
                })
            }
        };
        match key.split('.').collect::<Vec<_>>()[..] {
            ["system", name] => Ok(Self {
                scope: KeyScope::System,
                name: check("name", name)?,
            }),
            ["pack", pack, name] => Ok(Self {
                scope: KeyScope::Pack(check("pack", pack)?),
                name: check("name", name)?,
            }),
            _ => Err(KeyNameError::Shape(key.to_owned())),
        }
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            KeyScope::System => write!(f, "system.{}", self.name),
            KeyScope::Pack(pack) => write!(f, "pack.{pack}.{}", self.name),
        }
    }
}

/// What the bucket holds for a key (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The value; sealed when `secret`.
    pub value: Value,
    pub secret: bool,
    /// After this the key reads as absent, and the engine deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The API token (by name) that wrote it.
    pub updated_by: String,
}

impl KeyEntry {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_and_print_as_their_scope_and_name() {
        let key: KeyName = "pack.aws.region".parse().unwrap();
        assert_eq!(key.scope, KeyScope::Pack("aws".into()));
        assert_eq!(key.to_string(), "pack.aws.region");
        assert_eq!(
            KeyName::system("api_key").unwrap().to_string(),
            "system.api_key"
        );
        for bad in [
            "region",
            "user.x",
            "system.a.b",
            "system.",
            "system.a b",
            "system.>",
        ] {
            assert!(bad.parse::<KeyName>().is_err(), "{bad}");
        }
        let err = "system.$x".parse::<KeyName>().unwrap_err().to_string();
        assert!(err.contains("\"$x\""), "{err}");
    }
}

/// Where an action's datastore requests go (StackStorm's `action_service`): a worker asks,
/// an engine answers. Core NATS request–reply; a secret value in either direction travels
/// sealed.
pub const SERVICE_SUBJECT: &str = "sluice.datastore.request";

/// One datastore request of a running action (made by its worker) or sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRequest {
    /// Who asks, for the log: `worker/w1, execution 12`, `sensor mon.Poller`.
    pub caller: String,
    #[serde(flatten)]
    pub op: ServiceOp,
}

/// What an action asks of the datastore. `key` is a full key name (`system.x`,
/// `pack.p.x`); `prefix` one to list under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServiceOp {
    Get {
        key: String,
    },
    /// `value` is sealed when `secret`.
    Set {
        key: String,
        value: Value,
        secret: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
    },
    Delete {
        key: String,
    },
    List {
        prefix: String,
    },
}

/// A key as an action sees it: a secret's value sealed (the worker opens it when asked to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub key: String,
    pub value: Value,
    pub secret: bool,
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceReply {
    /// `get`: the entry, or none; `set`, `delete`: whether a key was written or removed.
    Entry(Option<ServiceEntry>),
    Done(bool),
    Entries(Vec<ServiceEntry>),
    /// Why the request was refused (a bad key name, a write that failed).
    Error(String),
}

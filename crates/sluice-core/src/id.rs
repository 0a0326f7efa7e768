//! Identifiers. Executions and events are numbered by the store, so ids are ordered by
//! creation; action, trigger and rule references are `pack.name` strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One run of an action, numbered by the store in request order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct ExecutionId(pub i64);

/// One firing of a trigger, numbered by the store.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct EventId(pub i64);

macro_rules! numeric_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl FromStr for $t {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}
numeric_id!(ExecutionId);
numeric_id!(EventId);

/// A `pack.name` reference to an action, trigger or rule.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "core.local")]
pub struct ActionRef(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {0:?}: expected `pack.name` (letters, digits, `_` and `-`)")]
pub struct InvalidRef(pub String);

impl ActionRef {
    /// Builds `pack.name`, checking both halves.
    pub fn new(pack: &str, name: &str) -> Result<Self, InvalidRef> {
        format!("{pack}.{name}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn pack(&self) -> &str {
        self.0.split_once('.').map_or("", |(pack, _)| pack)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, name)| name)
    }
}

fn is_ref_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl FromStr for ActionRef {
    type Err = InvalidRef;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            Some((pack, name)) if is_ref_part(pack) && is_ref_part(name) => Ok(Self(s.to_owned())),
            _ => Err(InvalidRef(s.to_owned())),
        }
    }
}

impl TryFrom<String> for ActionRef {
    type Error = InvalidRef;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ActionRef> for String {
    fn from(r: ActionRef) -> Self {
        r.0
    }
}

impl fmt::Display for ActionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_need_a_pack_and_a_name() {
        let r: ActionRef = "core.local".parse().unwrap();
        assert_eq!((r.pack(), r.name()), ("core", "local"));
        for bad in ["core", ".local", "core.", "core.lo cal", "a.b.c", ""] {
            assert!(bad.parse::<ActionRef>().is_err(), "{bad:?} accepted");
        }
    }
}

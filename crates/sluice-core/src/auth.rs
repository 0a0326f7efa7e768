//! What an API token may do. Scopes are ordered: each allows everything the one before it
//! does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Look: executions, actions, events, the actor tree, metrics.
    Read,
    /// Also start and cancel executions.
    Run,
    /// Also manage tokens, keys and packs.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Run => "run",
            Self::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (read, run or admin)")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_allows_what_the_ones_below_it_allow() {
        assert!(Scope::Admin.allows(Scope::Run) && Scope::Admin.allows(Scope::Read));
        assert!(Scope::Run.allows(Scope::Read) && !Scope::Run.allows(Scope::Admin));
        assert!(!Scope::Read.allows(Scope::Run));
        assert_eq!("run".parse::<Scope>(), Ok(Scope::Run));
        assert!("root".parse::<Scope>().is_err());
    }
}

//! Execution tokens: the API credential an action is given while it runs, as StackStorm
//! gives `ST2_ACTION_AUTH_TOKEN`.
//!
//! A token names its execution and attempt and carries an HMAC-SHA256 of both under a key
//! derived from the engine's run signing key, so every engine holding that key makes and
//! checks the same tokens with no row in the store, and a worker, which holds only the
//! public half, cannot make one. The API accepts a token only while its attempt is the
//! execution's current one and the execution has not ended: it is revoked by the
//! execution's end, on every engine at once.
//!
//! Written `slx_<execution id>_<attempt>_<base64url MAC>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use sluice_core::ExecutionId;

/// What an execution token starts with.
pub const PREFIX: &str = "slx_";

/// What the MAC key is derived under, so it can never equal a MAC made for anything else.
const PURPOSE: &[u8] = b"sluice execution token v1";

/// Makes and checks execution tokens.
#[derive(Clone)]
pub struct ExecutionTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for ExecutionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecutionTokens")
    }
}

impl ExecutionTokens {
    /// Tokens under a key derived from `secret` (the run signing key's seed).
    pub(crate) fn derived_from(secret: &[u8; 32]) -> Self {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), PURPOSE);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn signed(id: ExecutionId, attempt: u32) -> String {
        format!("{id}.{attempt}")
    }

    /// The token of one attempt of an execution.
    pub fn mint(&self, id: ExecutionId, attempt: u32) -> String {
        let tag = hmac::sign(&self.key, Self::signed(id, attempt).as_bytes());
        format!(
            "{PREFIX}{id}_{attempt}_{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Whether `token` is written as an execution token (not whether it is valid).
    pub fn is_one(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// The execution and attempt a token was made for, when it was made with this key.
    pub fn verify(&self, token: &str) -> Option<(ExecutionId, u32)> {
        // The MAC's alphabet holds `_`: it is whatever follows the second one.
        let mut parts = token.strip_prefix(PREFIX)?.splitn(3, '_');
        let (Some(id), Some(attempt), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let id = ExecutionId(id.parse().ok()?);
        let attempt: u32 = attempt.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, Self::signed(id, attempt).as_bytes(), &tag).ok()?;
        Some((id, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_under_its_key_only_and_cannot_be_moved_to_another_execution() {
        let tokens = ExecutionTokens::derived_from(&[7; 32]);
        // Many MACs hold `_`, the separator.
        for id in 0..200 {
            assert_eq!(
                tokens.verify(&tokens.mint(ExecutionId(id), 1)),
                Some((ExecutionId(id), 1))
            );
        }
        let token = tokens.mint(ExecutionId(42), 2);
        assert!(ExecutionTokens::is_one(&token));
        assert_eq!(tokens.verify(&token), Some((ExecutionId(42), 2)));

        let other = ExecutionTokens::derived_from(&[8; 32]);
        assert_eq!(other.verify(&token), None, "another engine key");

        let tag = token.splitn(4, '_').nth(3).unwrap();
        for forged in [
            format!("{PREFIX}43_2_{tag}"),
            format!("{PREFIX}42_3_{tag}"),
            format!("{PREFIX}42_2_{tag}A"),
            format!("{PREFIX}42_2"),
            format!("{token}_1"),
            token.replacen(PREFIX, "slc_", 1),
        ] {
            assert_eq!(tokens.verify(&forged), None, "{forged}");
        }
    }
}

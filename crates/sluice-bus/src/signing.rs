//! Run messages the engine issued, and only those: the engine signs each run message's
//! payload with an Ed25519 key only it holds, and a worker runs a message only when its
//! `Sluice-Signature` header verifies against a public key it was given. A message anyone
//! else published on `sluice.run.>` is refused, and recorded as a dead letter.
//!
//! The header is `ed25519 <key id> <signature>`: the key id (the first 16 hex digits of the
//! public key's SHA-256) lets a worker hold several keys while the engine's key changes.
//! Key files hold hex: the 32-byte seed (`run-signing.key`, mode 0600, the engine's) and the
//! 32-byte public key (`run-signing.pub`, the workers').

use std::path::Path;

use async_nats::HeaderMap;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::names::SIGNATURE_HEADER;

const SCHEME: &str = "ed25519";

/// The engine's key: signs run messages.
pub struct RunSigner {
    key: SigningKey,
    key_id: String,
}

/// Public keys that workers accept run messages from.
#[derive(Clone, Debug)]
pub struct RunVerifier {
    keys: Vec<(String, VerifyingKey)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a key ({why})")]
    Invalid { path: String, why: String },
    #[error("no randomness for a key: {0}")]
    Random(String),
}

fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |why: String| KeyError::Invalid {
        path: path.display().to_string(),
        why,
    };
    let bytes = hex::decode(text.trim()).map_err(|e| invalid(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| invalid(format!("{} bytes, not 32", b.len())))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{text}\n").as_bytes()).map_err(io)
}

impl RunSigner {
    fn from_key(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_key(SigningKey::from_bytes(&seed)))
    }

    /// The key in `path`; when there is no such file, a new key is written there (mode
    /// 0600) and its public half beside it, with the extension `.pub`.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Ok(Self::from_key(SigningKey::from_bytes(&read_hex32(path)?)));
        }
        let signer = Self::generate()?;
        write_file(path, &hex::encode(signer.key.to_bytes()), 0o600)?;
        let public = path.with_extension("pub");
        if public.exists() {
            std::fs::remove_file(&public).map_err(|source| KeyError::Io {
                path: public.display().to_string(),
                source,
            })?;
        }
        write_file(&public, &signer.public_hex(), 0o644)?;
        Ok(signer)
    }

    /// What makes and checks execution tokens: a key derived from this one, so only its
    /// holders can make them.
    pub fn execution_tokens(&self) -> crate::ExecutionTokens {
        crate::ExecutionTokens::derived_from(&self.key.to_bytes())
    }

    /// The public key, hex: what workers are given.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// A verifier that accepts this key's signatures.
    pub fn verifier(&self) -> RunVerifier {
        RunVerifier {
            keys: vec![(self.key_id.clone(), self.key.verifying_key())],
        }
    }

    /// The `Sluice-Signature` header value for `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature = self.key.sign(payload);
        format!(
            "{SCHEME} {} {}",
            self.key_id,
            hex::encode(signature.to_bytes())
        )
    }
}

impl RunVerifier {
    /// The public keys in `paths` (hex, as `run-signing.pub` holds them).
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let public =
                VerifyingKey::from_bytes(&read_hex32(path)?).map_err(|e| KeyError::Invalid {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
            keys.push((key_id(&public), public));
        }
        Ok(Self { keys })
    }

    /// Whether `payload` carries a valid signature of a known key in `headers`; the reason
    /// when not.
    pub fn verify(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), String> {
        let (key, signature) = self.signature_of(headers)?;
        Self::check(key, payload, &signature)
    }

    /// [`verify`](Self::verify) for each of `messages` (headers and payload), in order.
    /// Their signatures are checked together, which costs about half as much per message
    /// as checking each alone; when the group holds a bad one, each is checked alone to
    /// name it. Checked together, a signature made by the key and then altered by a
    /// small-order point also passes: it still signs the same message, which only the
    /// key's holder could have signed, so what runs is unchanged.
    pub fn verify_all(&self, messages: &[(Option<&HeaderMap>, &[u8])]) -> Vec<Result<(), String>> {
        let found: Vec<_> = messages
            .iter()
            .map(|(headers, _)| self.signature_of(*headers))
            .collect();
        let (mut payloads, mut signatures, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for (found, (_, payload)) in found.iter().zip(messages) {
            if let Ok((key, signature)) = found {
                payloads.push(*payload);
                signatures.push(*signature);
                keys.push(**key);
            }
        }
        let all_valid = payloads.len() > 1
            && ed25519_dalek::verify_batch(&payloads, &signatures, &keys).is_ok();
        found
            .into_iter()
            .zip(messages)
            .map(|(found, (_, payload))| {
                let (key, signature) = found?;
                if all_valid {
                    Ok(())
                } else {
                    Self::check(key, payload, &signature)
                }
            })
            .collect()
    }

    fn check(key: &VerifyingKey, payload: &[u8], signature: &Signature) -> Result<(), String> {
        key.verify(payload, signature)
            .map_err(|_| "the signature does not match the message".to_owned())
    }

    /// The key and signature a message's `Sluice-Signature` header names; the reason when
    /// there is none, or the key is not one of ours.
    fn signature_of(
        &self,
        headers: Option<&HeaderMap>,
    ) -> Result<(&VerifyingKey, Signature), String> {
        let value = headers
            .and_then(|h| h.get(SIGNATURE_HEADER))
            .map(|v| v.as_str().to_owned())
            .ok_or_else(|| format!("no {SIGNATURE_HEADER} header: not issued by the engine"))?;
        let mut parts = value.split(' ');
        let (Some(SCHEME), Some(id), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{SIGNATURE_HEADER} is malformed"));
        };
        let Some((_, key)) = self.keys.iter().find(|(known, _)| known == id) else {
            return Err(format!("signed by an unknown key {id:?}"));
        };
        let signature = hex::decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| format!("{SIGNATURE_HEADER} holds no signature"))?;
        Ok((key, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_signed_payload_under_a_known_key_verifies() {
        let signer = RunSigner::generate().unwrap();
        let verifier = signer.verifier();
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, signer.sign(b"run 1").as_str());
        assert_eq!(verifier.verify(Some(&headers), b"run 1"), Ok(()));
        assert_eq!(
            verifier.verify(Some(&headers), b"run 2"),
            Err("the signature does not match the message".to_owned())
        );
        assert!(
            verifier
                .verify(None, b"run 1")
                .unwrap_err()
                .contains("no Sluice-Signature")
        );
        let stranger = RunSigner::generate().unwrap();
        headers.insert(SIGNATURE_HEADER, stranger.sign(b"run 1").as_str());
        assert!(
            verifier
                .verify(Some(&headers), b"run 1")
                .unwrap_err()
                .contains("unknown key")
        );
        headers.insert(SIGNATURE_HEADER, "ed25519 x");
        assert!(
            verifier
                .verify(Some(&headers), b"run 1")
                .unwrap_err()
                .contains("malformed")
        );
    }

    #[test]
    fn a_group_is_checked_together_and_a_bad_message_in_it_is_named() {
        let signer = RunSigner::generate().unwrap();
        let stranger = RunSigner::generate().unwrap();
        let verifier = signer.verifier();
        let signed = |signer: &RunSigner, payload: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(SIGNATURE_HEADER, signer.sign(payload).as_str());
            headers
        };
        let payloads: Vec<Vec<u8>> = (0..6).map(|i| format!("run {i}").into_bytes()).collect();
        let good: Vec<HeaderMap> = payloads.iter().map(|p| signed(&signer, p)).collect();
        let group: Vec<_> = good
            .iter()
            .zip(&payloads)
            .map(|(h, p)| (Some(h), &p[..]))
            .collect();
        assert!(verifier.verify_all(&group).iter().all(Result::is_ok));
        assert_eq!(verifier.verify_all(&group[..1]), vec![Ok(())]);
        assert!(verifier.verify_all(&[]).is_empty());

        // Another message's signature, a stranger's, none: each is named, and the rest of
        // the group still verifies.
        let mut mixed = group.clone();
        mixed[1] = (Some(&good[2]), &payloads[1][..]);
        let strangers = signed(&stranger, &payloads[3]);
        mixed[3] = (Some(&strangers), &payloads[3][..]);
        mixed[4] = (None, &payloads[4][..]);
        let outcomes = verifier.verify_all(&mixed);
        assert_eq!(outcomes[0], Ok(()));
        assert_eq!(
            outcomes[1],
            Err("the signature does not match the message".to_owned())
        );
        assert_eq!(outcomes[2], Ok(()));
        assert!(outcomes[3].as_ref().unwrap_err().contains("unknown key"));
        assert!(
            outcomes[4]
                .as_ref()
                .unwrap_err()
                .contains("no Sluice-Signature")
        );
        assert_eq!(outcomes[5], Ok(()));
        assert_eq!(
            outcomes,
            mixed
                .iter()
                .map(|(h, p)| verifier.verify(*h, p))
                .collect::<Vec<_>>(),
            "a group's outcomes are those of checking each alone"
        );
    }

    #[test]
    fn a_key_file_is_made_once_and_its_public_half_verifies() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-signing.key");
        let signer = RunSigner::load_or_create(&path).unwrap();
        let again = RunSigner::load_or_create(&path).unwrap();
        assert_eq!(signer.public_hex(), again.public_hex());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let verifier = RunVerifier::load(&[dir.path().join("run-signing.pub")]).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, again.sign(b"x").as_str());
        assert_eq!(verifier.verify(Some(&headers), b"x"), Ok(()));
        std::fs::write(dir.path().join("bad.pub"), "zz").unwrap();
        assert!(
            RunVerifier::load(&[dir.path().join("bad.pub")])
                .unwrap_err()
                .to_string()
                .contains("bad.pub")
        );
    }
}

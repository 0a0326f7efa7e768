//! Run messages the engine issued, and only those: the engine signs each run message's
//! payload with an Ed25519 key only it holds, and a worker runs a message only when its
//! `Sluice-Signature` header verifies against a public key it was given. A message anyone
//! else published on `sluice.run.>` is refused, and recorded as a dead letter.
//!
//! The header is `<scheme> <key id> <signature>[ <path>]`: the key id (the first 16 hex
//! digits of the public key's SHA-256) lets a worker hold several keys while the engine's
//! key changes. Key files hold hex: the 32-byte seed (`run-signing.key`, mode 0600, the
//! engine's) and the 32-byte public key (`run-signing.pub`, the workers').
//!
//! Two schemes:
//! - `ed25519`: the signature is over the payload itself.
//! - `ed25519-tree`: run messages published together are signed with one signature, over
//!   the root of a SHA-256 hash tree whose leaves are their payloads. Each message carries
//!   the path from its leaf to that root: at each level the sibling's hash and the side it
//!   is on. Leaves and inner nodes are hashed with different prefixes, so a path can only
//!   lead from a payload that was signed. A worker checks each root's signature once and
//!   remembers the last roots it found valid, so the messages of one group cost it one
//!   check however they arrive.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::names::SIGNATURE_HEADER;

const SCHEME: &str = "ed25519";
const TREE_SCHEME: &str = "ed25519-tree";
/// What a tree signature signs, before the root: never the start of a run message's
/// payload (MessagePack), so neither scheme's signature can pass for the other's.
const TREE_CONTEXT: &[u8] = b"sluice run messages, hash tree root, v1\0";
/// The most run messages signed together: their paths have at most 8 levels.
const MAX_GROUP: usize = 256;
/// A path longer than this cannot come from a group the engine signs.
const MAX_PATH: usize = 8;
/// How many valid tree roots a worker remembers.
const REMEMBERED_ROOTS: usize = 64;

type Hash = [u8; 32];

fn leaf_hash(payload: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(payload)
        .finalize()
        .into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// One level of a leaf's path to the root: the sibling's hash, and whether the sibling is
/// on the left.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    sibling_on_left: bool,
    sibling: Hash,
}

/// The root of the tree over `leaves` (at least one), and each leaf's path to it. Neighbours are paired
/// level by level; the last node of an odd level goes up unpaired.
fn tree(leaves: &[Hash]) -> (Hash, Vec<Vec<Step>>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    // Each node of the level, with the range of leaves under it.
    let mut level: Vec<(Hash, std::ops::Range<usize>)> = leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| (*leaf, i..i + 1))
        .collect();
    while level.len() > 1 {
        let mut up = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            match pair {
                [(left, under_left), (right, under_right)] => {
                    for i in under_left.clone() {
                        paths[i].push(Step {
                            sibling_on_left: false,
                            sibling: *right,
                        });
                    }
                    for i in under_right.clone() {
                        paths[i].push(Step {
                            sibling_on_left: true,
                            sibling: *left,
                        });
                    }
                    up.push((node_hash(left, right), under_left.start..under_right.end));
                }
                [alone] => up.push(alone.clone()),
                _ => unreachable!("chunks of two"),
            }
        }
        level = up;
    }
    let (root, _) = level.pop().expect("a group holds at least one message");
    (root, paths)
}

fn root_of(payload: &[u8], path: &[Step]) -> Hash {
    path.iter().fold(leaf_hash(payload), |hash, step| {
        if step.sibling_on_left {
            node_hash(&step.sibling, &hash)
        } else {
            node_hash(&hash, &step.sibling)
        }
    })
}

fn tree_message(root: &Hash) -> Vec<u8> {
    [TREE_CONTEXT, root].concat()
}

/// A path as the header carries it: `-` when the leaf is the root, otherwise each level's
/// side (`l` or `r`) and sibling hash (hex).
fn encode_path(path: &[Step]) -> String {
    if path.is_empty() {
        return "-".to_owned();
    }
    let mut text = String::with_capacity(path.len() * 65);
    for step in path {
        text.push(if step.sibling_on_left { 'l' } else { 'r' });
        text.push_str(&hex::encode(step.sibling));
    }
    text
}

fn decode_path(text: &str) -> Option<Vec<Step>> {
    if text == "-" {
        return Some(Vec::new());
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(65) || bytes.len() / 65 > MAX_PATH {
        return None;
    }
    bytes
        .chunks(65)
        .map(|step| {
            let sibling_on_left = match step[0] {
                b'l' => true,
                b'r' => false,
                _ => return None,
            };
            let mut sibling = [0u8; 32];
            hex::decode_to_slice(&step[1..], &mut sibling).ok()?;
            Some(Step {
                sibling_on_left,
                sibling,
            })
        })
        .collect()
}

/// A run message waiting to be signed with the others published at the same moment.
struct Waiting {
    leaf: Hash,
    signed: tokio::sync::oneshot::Sender<String>,
}

/// The engine's key: signs run messages.
pub struct RunSigner {
    key: SigningKey,
    key_id: String,
    waiting: Mutex<Vec<Waiting>>,
}

/// Public keys that workers accept run messages from. Clones share the roots remembered
/// as valid.
#[derive(Clone, Debug)]
pub struct RunVerifier {
    keys: Vec<(String, VerifyingKey)>,
    valid_roots: Arc<Mutex<VecDeque<ValidRoot>>>,
}

/// A tree root whose signature was found valid under a key.
#[derive(Debug, PartialEq)]
struct ValidRoot {
    key: [u8; 32],
    root: Hash,
    signature: [u8; 64],
}

/// What a message's header claims: the key, what it signed and the signature.
struct Claim<'k> {
    key: &'k VerifyingKey,
    signature: Signature,
    /// The tree root the signature is over, when the scheme is `ed25519-tree`; otherwise
    /// it is over the payload.
    root: Option<Hash>,
}

/// A distinct signature still to check: the claim, the bytes it signs, and the messages
/// (by index) that rest on it.
struct Check<'a> {
    claim: &'a Claim<'a>,
    signed: Cow<'a, [u8]>,
    resting: Vec<usize>,
}

impl Claim<'_> {
    fn valid_root(&self) -> Option<ValidRoot> {
        Some(ValidRoot {
            key: self.key.to_bytes(),
            root: self.root?,
            signature: self.signature.to_bytes(),
        })
    }
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
        Self {
            key,
            key_id,
            waiting: Mutex::new(Vec::new()),
        }
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
        RunVerifier::new(vec![(self.key_id.clone(), self.key.verifying_key())])
    }

    /// The `Sluice-Signature` header value for `payload`, signed alone (`ed25519`).
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature = self.key.sign(payload);
        format!(
            "{SCHEME} {} {}",
            self.key_id,
            hex::encode(signature.to_bytes())
        )
    }

    /// The `Sluice-Signature` header value for `payload`, signed together with the run
    /// messages other tasks are signing at the same moment (`ed25519-tree`). The caller
    /// lets the tasks ready to run go first, then signs the messages waiting by then, in
    /// groups of at most [`MAX_GROUP`], until its own is signed or another task took it. A
    /// lone message costs one signature as before; a busy engine signs once per group.
    pub async fn sign_together(&self, payload: &[u8]) -> String {
        let (signed, mut header) = tokio::sync::oneshot::channel();
        self.lock_waiting().push(Waiting {
            leaf: leaf_hash(payload),
            signed,
        });
        tokio::task::yield_now().await;
        loop {
            let group: Vec<Waiting> = {
                let mut waiting = self.lock_waiting();
                let n = waiting.len().min(MAX_GROUP);
                waiting.drain(..n).collect()
            };
            if group.is_empty() {
                break;
            }
            self.sign_group(group);
            if let Ok(signed) = header.try_recv() {
                return signed;
            }
        }
        // Whoever took this message's leaf signs it in the same step, without waiting.
        header
            .await
            .expect("a task that takes waiting messages signs them")
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sign_group(&self, group: Vec<Waiting>) {
        let leaves: Vec<Hash> = group.iter().map(|w| w.leaf).collect();
        let (root, paths) = tree(&leaves);
        let signature = hex::encode(self.key.sign(&tree_message(&root)).to_bytes());
        sluice_telemetry::metrics().run_signatures.inc();
        for (waiting, path) in group.into_iter().zip(paths) {
            // A caller that gave up no longer waits for its header.
            let _ = waiting.signed.send(format!(
                "{TREE_SCHEME} {} {signature} {}",
                self.key_id,
                encode_path(&path)
            ));
        }
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
        Ok(Self::new(keys))
    }

    fn new(keys: Vec<(String, VerifyingKey)>) -> Self {
        Self {
            keys,
            valid_roots: Arc::new(Mutex::new(VecDeque::with_capacity(REMEMBERED_ROOTS))),
        }
    }

    /// Whether `payload` carries a valid signature of a known key in `headers`; the reason
    /// when not.
    pub fn verify(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), String> {
        self.verify_all(&[(headers, payload)])
            .pop()
            .expect("one outcome for one message")
    }

    /// [`verify`](Self::verify) for each of `messages` (headers and payload), in order.
    /// Messages of one tree share its root's signature, which is checked once, or not at
    /// all when it was found valid lately. The distinct signatures left are checked
    /// together, which costs about half as much each as checking each alone; when they hold
    /// a bad one, each is checked alone to name it. Checked together, a signature made by
    /// the key and then altered by a small-order point also passes: it still signs the
    /// same message, which only the key's holder could have signed, so what runs is
    /// unchanged.
    pub fn verify_all(&self, messages: &[(Option<&HeaderMap>, &[u8])]) -> Vec<Result<(), String>> {
        let claims: Vec<Result<Claim<'_>, String>> = messages
            .iter()
            .map(|(headers, payload)| self.claim_of(*headers, payload))
            .collect();
        let mut checks: Vec<Check<'_>> = Vec::new();
        let mut outcomes: Vec<Result<(), String>> = Vec::with_capacity(messages.len());
        {
            let remembered = self.lock_valid_roots();
            for (i, (claim, (_, payload))) in claims.iter().zip(messages).enumerate() {
                let claim = match claim {
                    Ok(claim) => claim,
                    Err(why) => {
                        outcomes.push(Err(why.clone()));
                        continue;
                    }
                };
                outcomes.push(Ok(()));
                let valid_root = claim.valid_root();
                if valid_root.as_ref().is_some_and(|v| remembered.contains(v)) {
                    continue;
                }
                let signed: Cow<'_, [u8]> = match claim.root {
                    Some(root) => Cow::Owned(tree_message(&root)),
                    None => Cow::Borrowed(payload),
                };
                match checks.iter_mut().find(|check| {
                    check.claim.key == claim.key
                        && check.claim.signature == claim.signature
                        && check.signed == signed
                }) {
                    Some(check) => check.resting.push(i),
                    None => checks.push(Check {
                        claim,
                        signed,
                        resting: vec![i],
                    }),
                }
            }
        }
        let all_valid = checks.len() > 1 && {
            let signed: Vec<&[u8]> = checks.iter().map(|c| &c.signed[..]).collect();
            let signatures: Vec<Signature> = checks.iter().map(|c| c.claim.signature).collect();
            let keys: Vec<VerifyingKey> = checks.iter().map(|c| *c.claim.key).collect();
            ed25519_dalek::verify_batch(&signed, &signatures, &keys).is_ok()
        };
        let mut now_valid = Vec::new();
        for Check {
            claim,
            signed,
            resting,
        } in &checks
        {
            let outcome = if all_valid {
                Ok(())
            } else {
                claim
                    .key
                    .verify(signed, &claim.signature)
                    .map_err(|_| "the signature does not match the message".to_owned())
            };
            if outcome.is_ok() {
                now_valid.extend(claim.valid_root());
            }
            for &i in resting {
                outcomes[i] = outcome.clone();
            }
        }
        if !now_valid.is_empty() {
            let mut remembered = self.lock_valid_roots();
            for valid in now_valid {
                if remembered.len() == REMEMBERED_ROOTS {
                    remembered.pop_front();
                }
                remembered.push_back(valid);
            }
        }
        outcomes
    }

    fn lock_valid_roots(&self) -> std::sync::MutexGuard<'_, VecDeque<ValidRoot>> {
        self.valid_roots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a message's `Sluice-Signature` header claims; the reason when it claims
    /// nothing checkable, or the key is not one of ours.
    fn claim_of(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Claim<'_>, String> {
        let value = headers
            .and_then(|h| h.get(SIGNATURE_HEADER))
            .map(|v| v.as_str())
            .ok_or_else(|| format!("no {SIGNATURE_HEADER} header: not issued by the engine"))?;
        let malformed = || format!("{SIGNATURE_HEADER} is malformed");
        let mut parts = value.split(' ');
        let (scheme, id, signature) = match (parts.next(), parts.next(), parts.next()) {
            (Some(scheme), Some(id), Some(signature)) => (scheme, id, signature),
            _ => return Err(malformed()),
        };
        let root = match (scheme, parts.next(), parts.next()) {
            (SCHEME, None, _) => None,
            (TREE_SCHEME, Some(path), None) => {
                let path = decode_path(path)
                    .ok_or_else(|| format!("{SIGNATURE_HEADER} holds no valid tree path"))?;
                Some(root_of(payload, &path))
            }
            _ => return Err(malformed()),
        };
        let Some((_, key)) = self.keys.iter().find(|(known, _)| known == id) else {
            return Err(format!("signed by an unknown key {id:?}"));
        };
        let signature = hex::decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| format!("{SIGNATURE_HEADER} holds no signature"))?;
        Ok(Claim {
            key,
            signature,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers of `payloads`, each signed by a task of its own, all at the same moment.
    async fn signed_at_once(signer: &Arc<RunSigner>, payloads: &[Vec<u8>]) -> Vec<String> {
        let tasks: Vec<_> = payloads
            .iter()
            .cloned()
            .map(|payload| {
                let signer = signer.clone();
                tokio::spawn(async move { signer.sign_together(&payload).await })
            })
            .collect();
        let mut headers = Vec::with_capacity(tasks.len());
        for task in tasks {
            headers.push(task.await.unwrap());
        }
        headers
    }

    /// Each message's headers beside its payload, as a pull hands them to `verify_all`.
    fn pulled<'a>(
        headers: &'a [HeaderMap],
        payloads: &'a [Vec<u8>],
    ) -> Vec<(Option<&'a HeaderMap>, &'a [u8])> {
        headers
            .iter()
            .zip(payloads)
            .map(|(h, p)| (Some(h), &p[..]))
            .collect()
    }

    fn with_header(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, value);
        headers
    }

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
        let signed = |signer: &RunSigner, payload: &[u8]| with_header(&signer.sign(payload));
        let payloads: Vec<Vec<u8>> = (0..6).map(|i| format!("run {i}").into_bytes()).collect();
        let good: Vec<HeaderMap> = payloads.iter().map(|p| signed(&signer, p)).collect();
        let group = pulled(&good, &payloads);
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
    fn every_leaf_of_a_tree_leads_to_its_root_and_no_other_payload_does() {
        for n in 1..=17usize {
            let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("run {i}").into_bytes()).collect();
            let leaves: Vec<Hash> = payloads.iter().map(|p| leaf_hash(p)).collect();
            let (root, paths) = tree(&leaves);
            assert_eq!(paths.len(), n);
            for (i, (payload, path)) in payloads.iter().zip(&paths).enumerate() {
                assert!(path.len() <= n.next_power_of_two().trailing_zeros() as usize);
                let carried = decode_path(&encode_path(path)).unwrap();
                assert_eq!(&carried, path, "leaf {i} of {n}: the path as carried");
                assert_eq!(root_of(payload, &carried), root, "leaf {i} of {n}");
                assert_ne!(root_of(b"another run", &carried), root, "leaf {i} of {n}");
                let other = &payloads[(i + 1) % n];
                if n > 1 {
                    assert_ne!(root_of(other, &carried), root, "leaf {i} of {n}");
                }
            }
        }
        for bad in ["", "x", "l00", &format!("q{}", "0".repeat(64))] {
            assert_eq!(decode_path(bad), None, "{bad:?}");
        }
        let too_long = format!("l{}", "0".repeat(64)).repeat(MAX_PATH + 1);
        assert_eq!(decode_path(&too_long), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn messages_signed_at_the_same_moment_share_one_signature_and_each_verifies_alone() {
        let signer = Arc::new(RunSigner::generate().unwrap());
        let payloads: Vec<Vec<u8>> = (0..12).map(|i| format!("run {i}").into_bytes()).collect();
        let signed: Vec<HeaderMap> = signed_at_once(&signer, &payloads)
            .await
            .iter()
            .map(|h| with_header(h))
            .collect();
        let signature_of = |h: &HeaderMap| {
            let value = h.get(SIGNATURE_HEADER).unwrap().as_str().to_owned();
            assert!(value.starts_with("ed25519-tree "), "{value}");
            value.split(' ').nth(2).unwrap().to_owned()
        };
        let distinct: std::collections::HashSet<_> = signed.iter().map(signature_of).collect();
        assert_eq!(distinct.len(), 1, "the twelve were signed as one group");

        // Each checks alone, with a verifier that has remembered nothing, and together.
        for (headers, payload) in signed.iter().zip(&payloads) {
            assert_eq!(signer.verifier().verify(Some(headers), payload), Ok(()));
        }
        let verifier = signer.verifier();
        let group = pulled(&signed, &payloads);
        assert!(verifier.verify_all(&group).iter().all(Result::is_ok));

        // A lone message is a tree of one.
        let mut lone = HeaderMap::new();
        lone.insert(
            SIGNATURE_HEADER,
            signer.sign_together(b"run alone").await.as_str(),
        );
        assert!(lone.get(SIGNATURE_HEADER).unwrap().as_str().ends_with(" -"));
        assert_eq!(verifier.verify(Some(&lone), b"run alone"), Ok(()));
        assert!(verifier.verify(Some(&lone), b"run 0").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn more_messages_than_a_group_holds_are_signed_in_several_groups() {
        let signer = Arc::new(RunSigner::generate().unwrap());
        let payloads: Vec<Vec<u8>> = (0..MAX_GROUP + 44)
            .map(|i| format!("run {i}").into_bytes())
            .collect();
        let verifier = signer.verifier();
        let mut signatures = std::collections::HashMap::<String, usize>::new();
        for (value, payload) in signed_at_once(&signer, &payloads)
            .await
            .iter()
            .zip(&payloads)
        {
            let fields: Vec<&str> = value.split(' ').collect();
            assert!(decode_path(fields[3]).unwrap().len() <= MAX_PATH);
            *signatures.entry(fields[2].to_owned()).or_default() += 1;
            assert_eq!(verifier.verify(Some(&with_header(value)), payload), Ok(()));
        }
        let mut sizes: Vec<usize> = signatures.into_values().collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [44, MAX_GROUP]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tree_signature_passes_for_no_other_message_even_once_its_root_is_remembered() {
        let signer = Arc::new(RunSigner::generate().unwrap());
        let verifier = signer.verifier();
        let payloads: Vec<Vec<u8>> = (0..5).map(|i| format!("run {i}").into_bytes()).collect();
        let headers = signed_at_once(&signer, &payloads).await;
        // The root is now remembered as valid.
        assert_eq!(
            verifier.verify(Some(&with_header(&headers[0])), &payloads[0]),
            Ok(())
        );
        let mismatch = Err("the signature does not match the message".to_owned());

        // Another message's path, another payload, a side flipped, a sibling changed.
        assert_eq!(
            verifier.verify(Some(&with_header(&headers[1])), &payloads[0]),
            mismatch
        );
        assert_eq!(
            verifier.verify(Some(&with_header(&headers[0])), b"run 9"),
            mismatch
        );
        let fields: Vec<&str> = headers[0].split(' ').collect();
        let mut path = fields[3].to_owned();
        let side = if path.starts_with('l') { "r" } else { "l" };
        path.replace_range(0..1, side);
        let flipped_side = format!("{} {} {} {path}", fields[0], fields[1], fields[2]);
        assert_ne!(flipped_side, headers[0]);
        assert_eq!(
            verifier.verify(Some(&with_header(&flipped_side)), &payloads[0]),
            mismatch
        );
        let mut changed = fields[3].to_owned();
        let digit = if changed.as_bytes()[1] == b'0' {
            "1"
        } else {
            "0"
        };
        changed.replace_range(1..2, digit);
        let changed_sibling = format!("{} {} {} {changed}", fields[0], fields[1], fields[2]);
        assert_eq!(
            verifier.verify(Some(&with_header(&changed_sibling)), &payloads[0]),
            mismatch
        );

        // The same path under the plain scheme, or with no path, or a stranger's key.
        let plain = format!("ed25519 {} {}", fields[1], fields[2]);
        assert_eq!(
            verifier.verify(Some(&with_header(&plain)), &payloads[0]),
            mismatch
        );
        let no_path = format!("{} {} {}", fields[0], fields[1], fields[2]);
        assert!(
            verifier
                .verify(Some(&with_header(&no_path)), &payloads[0])
                .unwrap_err()
                .contains("malformed")
        );
        let bad_path = format!("{} {} {} l00", fields[0], fields[1], fields[2]);
        assert!(
            verifier
                .verify(Some(&with_header(&bad_path)), &payloads[0])
                .unwrap_err()
                .contains("no valid tree path")
        );
        let stranger = RunSigner::generate().unwrap();
        let strangers = stranger.sign_together(&payloads[0]).await;
        assert!(
            verifier
                .verify(Some(&with_header(&strangers)), &payloads[0])
                .unwrap_err()
                .contains("unknown key")
        );

        // In one group: the forgeries are named, the genuine ones pass.
        let forged = with_header(&headers[1]);
        let genuine: Vec<HeaderMap> = headers.iter().map(|h| with_header(h)).collect();
        let mut group = pulled(&genuine, &payloads);
        group.push((Some(&forged), &payloads[2][..]));
        let outcomes = verifier.verify_all(&group);
        assert!(outcomes[..5].iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(outcomes[5], mismatch);
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

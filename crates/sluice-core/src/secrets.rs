//! Secrets at rest and on the wire: a value marked secret is sealed with
//! XChaCha20-Poly1305 under a key from the secrets key file, and travels sealed — in the
//! store, in run messages, in workflow state, in the datastore — until a worker unseals it
//! for the action.
//!
//! A sealed value is a JSON string `sluice-sealed:v1:<key id>:<base64 of nonce ‖ ciphertext>`;
//! its plaintext is the value's JSON text. The key id names the key that sealed it, so
//! several keys can decrypt while only the newest encrypts: the key file holds one key per
//! line, `<key id> <base64 key>`, the last line being the one that seals.
//!
//! Shown anywhere (API, CLI, logs), a sealed value is [`MASK`].

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};

/// What a secret looks like wherever it is shown.
pub const MASK: &str = "********";

const PREFIX: &str = "sluice-sealed:v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {why}")]
    KeyFile {
        path: String,
        line: usize,
        why: String,
    },
    #[error("{path}: holds no key")]
    NoKey { path: String },
    #[error("sealed with key {0}, which is not in this process's secrets key file")]
    UnknownKey(String),
    #[error("not a sealed value, or damaged: {0}")]
    Malformed(&'static str),
    #[error("no randomness: {0}")]
    Random(String),
}

struct Keys {
    /// Oldest first; the last one seals.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

/// The keys of one secrets key file.
pub struct Keyring {
    path: Option<PathBuf>,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

fn random<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
    Ok(bytes)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&Key::from(*key))
}

fn new_key_line() -> Result<String, SecretsError> {
    let id = hex::encode(random::<4>()?);
    Ok(format!("{id} {}", STANDARD.encode(random::<32>()?)))
}

fn parse(path: &Path, text: &str) -> Result<Keys, SecretsError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| SecretsError::KeyFile {
            path: path.display().to_string(),
            line: n + 1,
            why: why.to_owned(),
        };
        let (id, key) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<key id> <base64 key>`"))?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("the key id must be letters and digits"));
        }
        let key: [u8; 32] = STANDARD
            .decode(key.trim())
            .map_err(|_| bad("the key is not base64"))?
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        keys.push((id.to_owned(), cipher(&key)));
    }
    if keys.is_empty() {
        return Err(SecretsError::NoKey {
            path: path.display().to_string(),
        });
    }
    Ok(Keys { keys })
}

fn read(path: &Path) -> Result<Keys, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

const HEADER: &str = "# Sluice secrets keys: `<key id> <base64 key>` per line. Every line decrypts; the last one encrypts.\n";

impl Keyring {
    /// The keys in `path`.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        Ok(Self {
            keys: RwLock::new(read(path)?),
            path: Some(path.to_owned()),
        })
    }

    /// The keys in `path`; when there is no such file, one with a new key is written there,
    /// readable by its owner only.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        if !path.exists() {
            let io = |source| SecretsError::Io {
                path: path.display().to_string(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_private(path, &format!("{HEADER}{}\n", new_key_line()?)).map_err(io)?;
        }
        Self::load(path)
    }

    /// A keyring with one random key and no file, for tests and tools.
    pub fn ephemeral() -> Result<Self, SecretsError> {
        let keys = parse(Path::new("(memory)"), &new_key_line()?)?;
        Ok(Self {
            path: None,
            keys: RwLock::new(keys),
        })
    }

    /// Adds a new key to the key file `path`, which seals from then on; the others still
    /// unseal. Returns the new key's id.
    pub fn add_key(path: &Path) -> Result<String, SecretsError> {
        let io = |source| SecretsError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        parse(path, &text)?;
        let line = new_key_line()?;
        let id = line.split(' ').next().unwrap_or_default().to_owned();
        let mut text = text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        let temp = path.with_extension("new");
        let _ = std::fs::remove_file(&temp);
        write_private(&temp, &text).map_err(io)?;
        std::fs::rename(&temp, path).map_err(io)?;
        Ok(id)
    }

    /// Adds a new key to this keyring's file and takes it up: it seals from now on.
    /// Returns its id.
    pub fn rotate(&self) -> Result<String, SecretsError> {
        let path = self.path.as_ref().ok_or(SecretsError::NoKey {
            path: "(memory)".into(),
        })?;
        let id = Self::add_key(path)?;
        self.reload()?;
        Ok(id)
    }

    /// Reads the key file again (after [`Keyring::add_key`], here or in another process).
    pub fn reload(&self) -> Result<(), SecretsError> {
        if let Some(path) = &self.path {
            let keys = read(path)?;
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        }
        Ok(())
    }

    pub fn key_ids(&self) -> Vec<String> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> String {
        self.key_ids().pop().unwrap_or_default()
    }

    /// Seals a value with the newest key.
    pub fn seal(&self, value: &Value) -> Result<String, SecretsError> {
        let nonce = random::<NONCE_LEN>()?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let (id, cipher) = keys.keys.last().ok_or(SecretsError::Malformed("no key"))?;
        let plaintext = serde_json::to_vec(value).unwrap_or_default();
        let sealed = cipher
            .encrypt(&XNonce::from(nonce), plaintext.as_ref())
            .map_err(|_| SecretsError::Malformed("encryption failed"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{id}:{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Opens a sealed value. A key id this process does not know makes it read its key file
    /// again once, so a key added by rotation elsewhere is picked up.
    pub fn unseal(&self, sealed: &str) -> Result<Value, SecretsError> {
        let rest = sealed
            .strip_prefix(PREFIX)
            .ok_or(SecretsError::Malformed("no sealed-value prefix"))?;
        let (id, data) = rest
            .split_once(':')
            .ok_or(SecretsError::Malformed("no key id"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretsError::Malformed("not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretsError::Malformed("too short"));
        }
        if !self.key_ids().iter().any(|k| k == id) {
            self.reload()?;
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let (_, cipher) = keys
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SecretsError::UnknownKey(id.to_owned()))?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretsError::Malformed("nonce"))?;
        let plaintext = cipher
            .decrypt(&nonce, ciphertext)
            .map_err(|_| SecretsError::Malformed("it does not authenticate"))?;
        serde_json::from_slice(&plaintext).map_err(|_| SecretsError::Malformed("not JSON inside"))
    }

    /// Seals again with the newest key, if another sealed it; `None` when already current.
    pub fn reseal(&self, sealed: &str) -> Result<Option<String>, SecretsError> {
        let current = self.current_key_id();
        if key_id_of(sealed) == Some(current.as_str()) {
            return Ok(None);
        }
        self.seal(&self.unseal(sealed)?).map(Some)
    }

    /// `parameters` with the values named in `secret` sealed (those already sealed left as
    /// they are).
    pub fn seal_named(
        &self,
        secret: &[String],
        parameters: &Map<String, Value>,
    ) -> Result<Map<String, Value>, SecretsError> {
        parameters
            .iter()
            .map(|(name, value)| {
                let value = if secret.contains(name) && !is_sealed(value) {
                    Value::String(self.seal(value)?)
                } else {
                    value.clone()
                };
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// `parameters` with every sealed value opened: what an action receives. The error
    /// names the parameter.
    pub fn unseal_all(
        &self,
        parameters: &Map<String, Value>,
    ) -> Result<Map<String, Value>, (String, SecretsError)> {
        parameters
            .iter()
            .map(|(name, value)| match value {
                Value::String(s) if s.starts_with(PREFIX) => self
                    .unseal(s)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| (name.clone(), e)),
                _ => Ok((name.clone(), value.clone())),
            })
            .collect()
    }

    /// Every sealed value in `value`, at any depth, opened in place.
    pub fn unseal_nested(&self, value: &mut Value) -> Result<(), SecretsError> {
        match value {
            Value::String(s) if s.starts_with(PREFIX) => {
                *value = self.unseal(s)?;
                Ok(())
            }
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.unseal_nested(v)),
            Value::Object(map) => map.values_mut().try_for_each(|v| self.unseal_nested(v)),
            _ => Ok(()),
        }
    }

    /// Every sealed value in `value`, at any depth, sealed again with the newest key.
    /// Returns whether anything changed.
    pub fn reseal_all(&self, value: &mut Value) -> Result<bool, SecretsError> {
        match value {
            Value::String(s) if s.starts_with(PREFIX) => match self.reseal(s)? {
                Some(new) => {
                    *s = new;
                    Ok(true)
                }
                None => Ok(false),
            },
            Value::Array(items) => items
                .iter_mut()
                .try_fold(false, |changed, v| Ok(self.reseal_all(v)? || changed)),
            Value::Object(map) => map
                .values_mut()
                .try_fold(false, |changed, v| Ok(self.reseal_all(v)? || changed)),
            _ => Ok(false),
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Whether `value` is a sealed secret.
pub fn is_sealed(value: &Value) -> bool {
    matches!(value, Value::String(s) if s.starts_with(PREFIX))
}

/// The id of the key that sealed `sealed`.
pub fn key_id_of(sealed: &str) -> Option<&str> {
    sealed.strip_prefix(PREFIX)?.split(':').next()
}

/// `value` as it may be shown: every sealed value, at any depth, replaced by [`MASK`].
pub fn masked(value: &Value) -> Value {
    match value {
        Value::String(s) if s.starts_with(PREFIX) => Value::String(MASK.to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), masked(v))).collect())
        }
        other => other.clone(),
    }
}

/// Names of the parameters whose values are sealed.
pub fn sealed_names(parameters: &Map<String, Value>) -> Vec<String> {
    parameters
        .iter()
        .filter(|(_, v)| is_sealed(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The text of each secret value, to recognise it where it was copied: a string as it is;
/// anything else as its JSON text and each string and number inside it. Empty strings are
/// left out.
pub fn secret_texts<'a>(
    names: impl IntoIterator<Item = &'a String>,
    values: &Map<String, Value>,
) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|name| values.get(name))
        .filter(|v| !is_sealed(v))
        .flat_map(|v| {
            let mut texts = Vec::new();
            if !v.is_string() {
                texts.push(v.to_string());
            }
            leaves(v, &mut texts);
            texts
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The text of every string and number in `value`, at any depth.
fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// Names of the parameters whose value holds one of `secrets`, anywhere in it: a value
/// rendered from a secret is itself secret.
pub fn tainted(parameters: &Map<String, Value>, secrets: &[String]) -> Vec<String> {
    if secrets.is_empty() {
        return Vec::new();
    }
    parameters
        .iter()
        .filter(|(_, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            secrets.iter().any(|secret| text.contains(secret.as_str()))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `text` with every occurrence of `secrets` replaced by the mask: for error messages that
/// may quote a value rendered from a secret.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), MASK);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sealed_value_opens_to_itself_and_shows_as_the_mask() {
        let ring = Keyring::ephemeral().unwrap();
        let value = json!({"password": "hunter2-distinctive", "n": 3});
        let sealed = ring.seal(&value).unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(ring.unseal(&sealed).unwrap(), value);
        assert_eq!(
            masked(&json!({"a": [sealed.clone()], "b": 1})),
            json!({"a": [MASK], "b": 1})
        );
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(ring.seal(&value).unwrap(), sealed);
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let ring = Keyring::ephemeral().unwrap();
        let other = Keyring::ephemeral().unwrap();
        let sealed = ring.seal(&json!("x")).unwrap();
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            ring.unseal(&tampered),
            Err(SecretsError::Malformed(_))
        ));
        assert!(matches!(
            other.unseal(&sealed),
            Err(SecretsError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_new_key_seals_while_old_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let ring = Keyring::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let old = ring.seal(&json!("s3cret")).unwrap();
        let new_id = Keyring::add_key(&path).unwrap();
        // Another process's ring learns the new key when it meets it.
        let reader = Keyring::load(&path).unwrap();
        ring.reload().unwrap();
        assert_eq!(ring.current_key_id(), new_id);
        let resealed = ring.reseal(&old).unwrap().expect("sealed with the old key");
        assert_eq!(key_id_of(&resealed), Some(new_id.as_str()));
        assert_eq!(reader.unseal(&old).unwrap(), json!("s3cret"));
        assert_eq!(reader.unseal(&resealed).unwrap(), json!("s3cret"));
        assert_eq!(ring.reseal(&resealed).unwrap(), None);
    }

    #[test]
    fn a_broken_key_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "# c\nk1 notbase64!\n").unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("base64"), "{err}");
    }
}

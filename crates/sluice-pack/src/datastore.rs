//! The datastore in templates, as StackStorm users write it: `{{ st2kv.system.name }}`
//! (and `{{ st2kv.pack.name }}`, the rendering pack's own keys). A secret key reads as its
//! sealed value; `| decrypt_kv` opens it. A value opened while rendering is recorded, so
//! whatever it is copied into can be sealed in turn ([`opened_during`]).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, Serde, Value};
use minijinja::{Error, ErrorKind, State};
use sluice_core::datastore::KeyName;

/// Where templates read keys from: the engine's copy of the datastore.
pub trait KeyLookup: Send + Sync {
    /// A live key's value (sealed when secret), `None` when absent or expired.
    fn value(&self, key: &KeyName) -> Option<serde_json::Value>;
    /// Opens a sealed value.
    fn open(&self, sealed: &str) -> Result<serde_json::Value, String>;
}

/// `st2kv` in a template's context.
#[derive(Clone)]
pub struct Kv {
    lookup: Arc<dyn KeyLookup>,
    /// The pack whose rule or workflow renders: `st2kv.pack` is its keys.
    pack: Option<String>,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv").field("pack", &self.pack).finish()
    }
}

impl Kv {
    pub fn new(lookup: Arc<dyn KeyLookup>, pack: Option<&str>) -> Self {
        Self {
            lookup,
            pack: pack.map(str::to_owned),
        }
    }

    /// The same datastore, seen from `pack`.
    pub fn for_pack(&self, pack: &str) -> Self {
        Self::new(self.lookup.clone(), Some(pack))
    }

    pub(crate) fn value(&self) -> Value {
        Value::from_object(Root(self.clone()))
    }
}

/// `st2kv`: its attributes are the scopes.
#[derive(Debug)]
struct Root(Kv);

/// `st2kv.system` or `st2kv.pack`: its attributes are the keys.
#[derive(Debug)]
struct Scope {
    kv: Kv,
    pack: Option<String>,
}

impl Object for Root {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let scope = match key.as_str()? {
            "system" => None,
            "pack" => Some(self.0.pack.clone()?),
            _ => return None,
        };
        Some(Value::from_object(Scope {
            kv: self.0.clone(),
            pack: scope,
        }))
    }
}

impl Object for Scope {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        let key = match &self.pack {
            None => KeyName::system(name),
            Some(pack) => KeyName::pack(pack, name),
        }
        .ok()?;
        let value = self.kv.lookup.value(&key)?;
        Some(Value::from(Serde(value)))
    }
}

thread_local! {
    static OPENED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Runs `render` and returns, with its result, the text of every secret `decrypt_kv`
/// opened meanwhile.
pub fn opened_during<T>(render: impl FnOnce() -> T) -> (T, Vec<String>) {
    OPENED.with(|o| o.borrow_mut().clear());
    let out = render();
    (out, OPENED.with(|o| std::mem::take(&mut *o.borrow_mut())))
}

/// Notes secret text a render read (a secret of a pack's configuration), for
/// [`opened_during`].
pub(crate) fn note_opened(texts: impl IntoIterator<Item = String>) {
    OPENED.with(|o| o.borrow_mut().extend(texts));
}

/// `value | decrypt_kv`: a sealed datastore value, opened.
pub(crate) fn decrypt_kv(state: &State, value: Value) -> Result<Value, Error> {
    let Some(sealed) = value.as_str() else {
        // Not sealed (a key that is not secret): as it is, as StackStorm does.
        return Ok(value);
    };
    if !sluice_core::secrets::is_sealed(&serde_json::Value::String(sealed.to_owned())) {
        return Ok(value);
    }
    let root = state.lookup("st2kv").ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            "decrypt_kv needs the datastore",
        )
    })?;
    let kv = root.downcast_object_ref::<Root>().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            "decrypt_kv needs the datastore",
        )
    })?;
    let open =
        kv.0.lookup
            .open(sealed)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("decrypt_kv: {e}")))?;
    let text = match &open {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if !text.is_empty() {
        OPENED.with(|o| o.borrow_mut().push(text));
    }
    Ok(Value::from(Serde(open)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_core::secrets::Keyring;

    use super::*;
    use crate::template::ParamTemplate;

    struct Keys(Keyring, String);

    impl KeyLookup for Keys {
        fn value(&self, key: &KeyName) -> Option<serde_json::Value> {
            match key.to_string().as_str() {
                "system.region" => Some(json!("eu-west-1")),
                "system.password" => Some(json!(self.1)),
                "pack.aws.account" => Some(json!(42)),
                _ => None,
            }
        }

        fn open(&self, sealed: &str) -> Result<serde_json::Value, String> {
            self.0.unseal(sealed).map_err(|e| e.to_string())
        }
    }

    fn kv() -> Kv {
        let ring = Keyring::ephemeral().unwrap();
        let sealed = ring.seal(&json!("hunter2-distinctive")).unwrap();
        Kv::new(Arc::new(Keys(ring, sealed)), Some("aws"))
    }

    fn render(source: &str, shell: bool) -> (Result<serde_json::Value, String>, Vec<String>) {
        let template = ParamTemplate::compile(json!(source), shell).unwrap();
        let kv = kv();
        opened_during(|| template.render(&json!({}), Some(&kv)))
    }

    #[test]
    fn keys_read_by_scope_and_secrets_open_only_through_decrypt_kv() {
        assert_eq!(
            render("{{ st2kv.system.region }}", false).0,
            Ok(json!("eu-west-1"))
        );
        assert_eq!(render("{{ st2kv.pack.account }}", false).0, Ok(json!(42)));
        let (sealed, opened) = render("{{ st2kv.system.password }}", false);
        assert!(sluice_core::secrets::is_sealed(&sealed.unwrap()));
        assert!(opened.is_empty());
        let (open, opened) = render("Bearer {{ st2kv.system.password | decrypt_kv }}", false);
        assert_eq!(open, Ok(json!("Bearer hunter2-distinctive")));
        assert_eq!(opened, ["hunter2-distinctive"]);
        // Quoted like any other value where it builds a command.
        let (cmd, _) = render("login {{ st2kv.system.password | decrypt_kv }}", true);
        assert_eq!(cmd, Ok(json!("login hunter2-distinctive")));
        let (missing, _) = render("{{ st2kv.system.nope }}", false);
        assert!(missing.unwrap_err().contains("undefined"));
    }
}

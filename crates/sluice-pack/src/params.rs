//! Resolving the parameters of a request against an action's parameter schema.

use std::fmt;

use serde_json::{Map, Value};
use sluice_core::secrets::{self, Keyring};

use crate::datastore::Kv;
use crate::template::ParamTemplate;

use crate::model::{Action, ParamType};

/// What replaces a secret value wherever it is shown or stored.
pub const REDACTED: &str = sluice_core::secrets::MASK;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    Unknown {
        name: String,
        known: Vec<String>,
    },
    Missing {
        name: String,
    },
    WrongType {
        name: String,
        expected: &'static str,
        found: String,
    },
    NotAllowed {
        name: String,
        value: String,
        allowed: String,
    },
    /// The value breaks one of the parameter's JSON Schema keywords (`minimum`, …).
    Invalid {
        name: String,
        problem: String,
    },
    /// The action declares the parameter `immutable`: its default is the only value.
    Immutable {
        name: String,
    },
}

impl ParamError {
    /// The parameter at fault.
    pub fn name(&self) -> &str {
        match self {
            Self::Unknown { name, .. }
            | Self::Missing { name }
            | Self::WrongType { name, .. }
            | Self::NotAllowed { name, .. }
            | Self::Invalid { name, .. }
            | Self::Immutable { name } => name,
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { name, known } => {
                write!(
                    f,
                    "unknown parameter {name:?} (known: {})",
                    known.join(", ")
                )
            }
            Self::Missing { name } => write!(f, "required parameter {name:?} is missing"),
            Self::WrongType {
                name,
                expected,
                found,
            } => {
                write!(f, "parameter {name:?} must be {expected}, found {found}")
            }
            Self::NotAllowed {
                name,
                value,
                allowed,
            } => {
                write!(
                    f,
                    "parameter {name:?} is {value}, which is not one of {allowed}"
                )
            }
            Self::Invalid { name, problem } => write!(f, "parameter {name:?}: {problem}"),
            Self::Immutable { name } => write!(
                f,
                "parameter {name:?} is immutable: the action sets it, a request cannot"
            ),
        }
    }
}

/// The errors of one request, all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamErrors {
    pub action: String,
    pub errors: Vec<ParamError>,
}

impl fmt::Display for ParamErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid parameters for {}: ", self.action)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParamErrors {}

/// What `value` is, for an error message; a secret's text is never quoted.
fn kind_of(value: &Value, secret: bool) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) if secret => "a string (not shown: the parameter is secret)".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Brings a value to the declared type, reading text the way a command line sends it
/// (`count=3`, `force=true`, `tags='["a"]'`). Returns `None` when it cannot.
fn coerce(kind: ParamType, value: Value) -> Option<Value> {
    match (kind, value) {
        (ParamType::String, v @ Value::String(_)) => Some(v),
        (ParamType::String, v @ (Value::Number(_) | Value::Bool(_))) => {
            Some(Value::String(v.to_string()))
        }
        // A whole float within i64 (`3.0`) is that integer; anything else is no integer:
        // never saturated or rounded.
        (ParamType::Integer, Value::Number(n)) => n.as_i64().map(Value::from).or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= -(2f64.powi(63)) && *f < 2f64.powi(63))
                .map(|f| Value::from(f as i64))
        }),
        (ParamType::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        (ParamType::Number, v @ Value::Number(_)) => Some(v),
        (ParamType::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        (ParamType::Boolean, v @ Value::Bool(_)) => Some(v),
        (ParamType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(Value::Bool(true)),
            "false" | "no" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        (ParamType::Object, v @ Value::Object(_)) | (ParamType::Array, v @ Value::Array(_)) => {
            Some(v)
        }
        (ParamType::Object | ParamType::Array, Value::String(s)) => {
            sluice_core::bounded::from_json(s.as_bytes())
                .ok()
                .filter(|v| {
                    (kind == ParamType::Object) == v.is_object()
                        && (kind == ParamType::Array) == v.is_array()
                })
        }
        _ => None,
    }
}

/// Checks `given` against the action's parameters and returns the full set: defaults
/// filled in, values coerced to their declared types. Every problem is reported at once.
pub fn resolve(
    action: &Action,
    given: Map<String, Value>,
) -> Result<Map<String, Value>, ParamErrors> {
    let mut errors = Vec::new();
    let mut resolved = Map::new();
    for (name, value) in given {
        let Some(spec) = action.parameters.get(&name) else {
            errors.push(ParamError::Unknown {
                name,
                known: action.parameters.keys().cloned().collect(),
            });
            continue;
        };
        if spec.immutable && !value.is_null() && spec.default.as_ref() != Some(&value) {
            errors.push(ParamError::Immutable { name });
            continue;
        }
        resolved.insert(name, value);
    }
    for (name, spec) in &action.parameters {
        let value = match resolved.remove(name).filter(|v| !v.is_null()) {
            Some(value) => value,
            None => match &spec.default {
                Some(default) => default.clone(),
                None if spec.required => {
                    errors.push(ParamError::Missing { name: name.clone() });
                    continue;
                }
                None => continue,
            },
        };
        let found = kind_of(&value, spec.secret);
        let Some(value) = coerce(spec.kind, value) else {
            errors.push(ParamError::WrongType {
                name: name.clone(),
                expected: spec.kind.as_str(),
                found,
            });
            continue;
        };
        if let Some(allowed) = &spec.allowed
            && !allowed.contains(&value)
        {
            errors.push(ParamError::NotAllowed {
                name: name.clone(),
                value: if spec.secret {
                    REDACTED.to_owned()
                } else {
                    value.to_string()
                },
                allowed: Value::Array(allowed.clone()).to_string(),
            });
            continue;
        }
        if let Some(validator) = &spec.constraints.0
            && let Some(problem) = validator.iter_errors(&value).next()
        {
            let at = problem.instance_path().to_string();
            let problem = if spec.secret {
                "does not satisfy its schema (the value is secret and not shown)".to_owned()
            } else if at.is_empty() {
                problem.to_string()
            } else {
                format!("{at}: {problem}")
            };
            errors.push(ParamError::Invalid {
                name: name.clone(),
                problem,
            });
            continue;
        }
        resolved.insert(name.clone(), value);
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(ParamErrors {
            action: action.action_ref.to_string(),
            errors,
        })
    }
}

/// `given` with the defaults that are templates (`default: "{{ st2kv.system.region }}"`,
/// `"{{ config_context.region }}"`) rendered, for the parameters not given. A default that
/// is no template is left to [`resolve`]. Reading the pack's configuration notes its
/// secrets as opened ([`crate::datastore::opened_during`]), so a parameter holding one is
/// sealed.
pub fn render_defaults(
    action: &Action,
    mut given: Map<String, Value>,
    kv: &Kv,
) -> Result<Map<String, Value>, String> {
    for (name, spec) in &action.parameters {
        let Some(default @ Value::String(text)) = &spec.default else {
            continue;
        };
        if !text.contains("{{") || given.get(name).is_some_and(|v| !v.is_null()) {
            continue;
        }
        let shell = action.shell_reads(name);
        let config = action.config.as_deref();
        if text.contains("config_context")
            && let Some(config) = config
        {
            crate::datastore::note_opened(config.secret_texts());
        }
        let value = ParamTemplate::compile(default.clone(), shell)
            .and_then(|t| t.render_default(kv, config.map(|c| &c.values)))
            .map_err(|e| format!("default of parameter {name:?}: {e}"))?;
        given.insert(name.clone(), value);
    }
    Ok(given)
}

/// The parameters as they are stored and sent: the action's secret parameters, and any
/// parameter holding one of `secrets` (values it was rendered from), sealed.
pub fn seal(
    keyring: &Keyring,
    action: &Action,
    parameters: &Map<String, Value>,
    secrets: &[String],
) -> Result<Map<String, Value>, String> {
    let mut names = action.secret_parameters();
    names.extend(secrets::tainted(parameters, secrets));
    keyring
        .seal_named(&names, parameters)
        .map_err(|e| format!("secret parameters could not be sealed: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use sluice_core::RunnerType;

    use super::*;
    use crate::model::ParamSpec;

    fn action() -> Action {
        let spec = |v: Value| serde_json::from_value::<ParamSpec>(v).unwrap();
        let parameters = BTreeMap::from([
            (
                "host".to_owned(),
                spec(json!({"type": "string", "required": true})),
            ),
            (
                "count".to_owned(),
                spec(json!({"type": "integer", "default": 1})),
            ),
            ("force".to_owned(), spec(json!({"type": "boolean"}))),
            (
                "level".to_owned(),
                spec(json!({"type": "string", "enum": ["low", "high"]})),
            ),
            (
                "token".to_owned(),
                spec(json!({"type": "string", "secret": true})),
            ),
            (
                "pin".to_owned(),
                spec(json!({"type": "integer", "secret": true})),
            ),
        ]);
        Action {
            action_ref: "t.a".parse().unwrap(),
            description: None,
            runner: RunnerType::Noop,
            entry_point: None,
            parameters,
            timeout_secs: None,
            limits: Default::default(),
            enabled: true,
            policy: Default::default(),
            workflow: None,
            pack_digest: None,
            config: None,
            file: "t/actions/a.yaml".into(),
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_and_coercion() {
        let out = resolve(
            &action(),
            map(json!({"host": "db1", "force": "yes", "count": "5"})),
        )
        .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"host": "db1", "force": true, "count": 5})
        );
        let out = resolve(&action(), map(json!({"host": "db1"}))).unwrap();
        assert_eq!(out["count"], json!(1));
    }

    #[test]
    fn integers_out_of_range_are_refused_never_saturated() {
        for count in [
            json!(1e19),
            json!(-1e19),
            json!(2.5),
            json!("99999999999999999999"),
        ] {
            let err = resolve(&action(), map(json!({"host": "h", "count": count.clone()})))
                .unwrap_err()
                .to_string();
            assert!(err.contains("\"count\" must be integer"), "{count}: {err}");
        }
        let out = resolve(&action(), map(json!({"host": "h", "count": 3.0}))).unwrap();
        assert_eq!(out["count"], json!(3));
    }

    #[test]
    fn every_problem_is_reported() {
        let err = resolve(
            &action(),
            map(json!({"count": "many", "level": "mid", "colour": "red"})),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.errors.len(), 4, "{text}");
        assert!(text.contains("unknown parameter \"colour\""), "{text}");
        assert!(
            text.contains("required parameter \"host\" is missing"),
            "{text}"
        );
        assert!(
            text.contains("\"count\" must be integer, found the string \"many\""),
            "{text}"
        );
        assert!(
            text.contains("\"level\" is \"mid\", which is not one of"),
            "{text}"
        );
    }

    #[test]
    fn secrets_and_values_rendered_from_them_are_sealed() {
        let keyring = Keyring::ephemeral().unwrap();
        let params = map(json!({"host": "db1", "token": "hunter2", "url": "https://x/?k=s3cr3t"}));
        let sealed = seal(&keyring, &action(), &params, &["s3cr3t".to_owned()]).unwrap();
        assert_eq!(sealed["host"], json!("db1"));
        assert_eq!(
            sluice_core::secrets::sealed_names(&sealed),
            ["token", "url"]
        );
        assert!(
            !Value::Object(sealed.clone())
                .to_string()
                .contains("hunter2")
        );
        assert_eq!(keyring.unseal_all(&sealed).unwrap(), params);
        assert_eq!(
            secrets::scrub("found the string \"s3cr3t!\"", &["s3cr3t".to_owned()]),
            "found the string \"********!\""
        );
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_named_never_shown() {
        let err = resolve(
            &action(),
            map(json!({"host": "db1", "pin": "hunter2-is-no-number"})),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("parameter \"pin\" must be integer, found a string (not shown"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }
}

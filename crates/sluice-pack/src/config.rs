//! Pack configuration, as StackStorm has it: a pack's `config.schema.yaml` says which keys
//! its configuration has (type, `default`, `required`, `secret`, and the other JSON Schema
//! keywords), and the operator writes the values in `<configs>/<pack>.yaml`. The values,
//! defaults filled in, are checked against the schema when the pack loads; python actions
//! see them as `self.config`, and parameter defaults as `{{ config_context.key }}`.
//!
//! Secret values are sealed before the configuration leaves the engine (run messages) and
//! masked wherever it is shown.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sluice_core::secrets::{Keyring, MASK, SecretsError};

/// A pack's configuration, checked against its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct PackConfig {
    /// The values, defaults filled in, secrets in clear: for the engine's memory only.
    pub values: Map<String, Value>,
    /// Where the secret values are: key paths (`["api_key"]`, `["auth", "password"]`).
    pub secret_paths: Vec<Vec<String>>,
    /// The file the values came from, when there was one.
    pub file: Option<PathBuf>,
    /// [`PackConfig::sealed_values`], once the engine made them.
    pub sealed: Option<Map<String, Value>>,
}

/// A problem with one key (its dotted path, or none for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: Option<String>,
    pub message: String,
}

impl PackConfig {
    /// The secret values' text, so a parameter rendered from one is sealed too.
    pub fn secret_texts(&self) -> Vec<String> {
        self.secret_paths
            .iter()
            .filter_map(|path| lookup(&self.values, path))
            .filter(|value| !value.is_null())
            .map(|value| match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    /// The values with every secret sealed: what a run message carries.
    pub fn sealed_values(&self, keyring: &Keyring) -> Result<Map<String, Value>, SecretsError> {
        let mut values = self.values.clone();
        for path in &self.secret_paths {
            if let Some(slot) = lookup_mut(&mut values, path)
                && !slot.is_null()
                && !sluice_core::secrets::is_sealed(slot)
            {
                *slot = Value::String(keyring.seal(slot)?);
            }
        }
        Ok(values)
    }

    /// The values with every secret shown as [`MASK`].
    pub fn masked(&self) -> Map<String, Value> {
        let mut values = self.values.clone();
        for path in &self.secret_paths {
            if let Some(slot) = lookup_mut(&mut values, path)
                && !slot.is_null()
            {
                *slot = Value::String(MASK.to_owned());
            }
        }
        values
    }
}

fn lookup<'a>(values: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = values.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

fn lookup_mut<'a>(values: &'a mut Map<String, Value>, path: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let mut value = values.get_mut(first)?;
    for key in rest {
        value = value.as_object_mut()?.get_mut(key)?;
    }
    Some(value)
}

/// A `config.schema.yaml` read: the JSON Schema it means, and where its secrets are.
pub struct ConfigSchema {
    schema: Value,
    properties: Map<String, Value>,
    secret_paths: Vec<Vec<String>>,
}

impl ConfigSchema {
    /// Reads the schema's text: a mapping of key to declaration, StackStorm's way
    /// (`required: true` and `secret: true` on each key; `properties` for nested objects).
    pub fn parse(text: &str) -> Result<Self, ConfigProblem> {
        let read: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigProblem {
            key: None,
            message: format!("not YAML: {e}"),
        })?;
        let properties = match read {
            Value::Object(properties) => properties,
            Value::Null => Map::new(),
            _ => {
                return Err(ConfigProblem {
                    key: None,
                    message: "must be a mapping of configuration keys to their declarations".into(),
                });
            }
        };
        let mut secret_paths = Vec::new();
        let schema = object_schema(&properties, &mut Vec::new(), &mut secret_paths)?;
        Ok(Self {
            schema,
            properties,
            secret_paths,
        })
    }

    /// Checks `values` (the config file's mapping, if there is one) against the schema with
    /// the defaults filled in; every problem, each naming its key. A secret's value is
    /// never quoted.
    pub fn check(
        &self,
        values: Option<Map<String, Value>>,
        file: Option<PathBuf>,
    ) -> Result<PackConfig, Vec<ConfigProblem>> {
        let mut values = values.unwrap_or_default();
        fill_defaults(&self.properties, &mut values);
        let validator = jsonschema::validator_for(&self.schema).map_err(|e| {
            vec![ConfigProblem {
                key: None,
                message: format!(
                    "config.schema.yaml is not a schema values can be checked against: {e}"
                ),
            }]
        })?;
        let instance = Value::Object(values);
        let problems: Vec<ConfigProblem> = validator
            .iter_errors(&instance)
            .map(|error| {
                let mut path: Vec<String> = error
                    .instance_path()
                    .to_string()
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                // A missing key is named as the key, not as the object lacking it.
                if let jsonschema::error::ValidationErrorKind::Required {
                    property: Value::String(missing),
                } = error.kind()
                {
                    path.push(missing.clone());
                }
                let missing = matches!(
                    error.kind(),
                    jsonschema::error::ValidationErrorKind::Required { .. }
                );
                let secret = !missing
                    && self
                        .secret_paths
                        .iter()
                        .any(|s| path.starts_with(s) && !path.is_empty());
                let message = if secret {
                    "does not satisfy its schema (the value is secret and not shown)".to_owned()
                } else {
                    error.to_string()
                };
                ConfigProblem {
                    key: (!path.is_empty()).then(|| path.join(".")),
                    message,
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let Value::Object(values) = instance else {
            unreachable!("built as an object")
        };
        Ok(PackConfig {
            values,
            secret_paths: self.secret_paths.clone(),
            file,
            sealed: None,
        })
    }
}

/// The JSON Schema of an object whose keys are declared StackStorm's way; `required: true`
/// on a key becomes the object's `required` list, and `secret: true` is noted.
fn object_schema(
    properties: &Map<String, Value>,
    at: &mut Vec<String>,
    secrets: &mut Vec<Vec<String>>,
) -> Result<Value, ConfigProblem> {
    let mut converted = Map::new();
    let mut required = Vec::new();
    for (key, declaration) in properties {
        at.push(key.clone());
        let Value::Object(declaration) = declaration else {
            return Err(ConfigProblem {
                key: Some(at.join(".")),
                message: "a key's declaration must be a mapping (type, description, default, …)"
                    .into(),
            });
        };
        let mut declaration = declaration.clone();
        match declaration.remove("required") {
            Some(Value::Bool(true)) => required.push(Value::String(key.clone())),
            Some(Value::Bool(false)) | None => {}
            Some(other) => {
                // A JSON Schema `required` list, on an object key: kept as it is.
                declaration.insert("required".into(), other);
            }
        }
        match declaration.remove("secret") {
            Some(Value::Bool(true)) => secrets.push(at.clone()),
            Some(Value::Bool(false)) | None => {}
            Some(_) => {
                return Err(ConfigProblem {
                    key: Some(format!("{}.secret", at.join("."))),
                    message: "must be true or false".into(),
                });
            }
        }
        // Only `default` of a key that is given or filled matters; as in StackStorm, a
        // default is not checked against the rest of the declaration here.
        declaration.remove("default");
        declaration.remove("position");
        declaration.remove("immutable");
        if let Some(Value::Object(nested)) = declaration.remove("properties") {
            let nested_schema = object_schema(&nested, at, secrets)?;
            if let Value::Object(nested_schema) = nested_schema {
                declaration.extend(nested_schema);
            }
        }
        converted.insert(key.clone(), Value::Object(declaration));
        at.pop();
    }
    let mut schema = Map::new();
    schema.insert("type".into(), Value::String("object".into()));
    schema.insert("properties".into(), Value::Object(converted));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    Ok(Value::Object(schema))
}

/// Fills each missing key that has a `default`, and the keys of nested objects present.
fn fill_defaults(properties: &Map<String, Value>, values: &mut Map<String, Value>) {
    for (key, declaration) in properties {
        if !values.contains_key(key)
            && let Some(default) = declaration.get("default")
        {
            values.insert(key.clone(), default.clone());
        }
        if let (Some(Value::Object(nested)), Some(Value::Object(inner))) =
            (declaration.get("properties"), values.get_mut(key))
        {
            fill_defaults(nested, inner);
        }
    }
}

/// The configuration file of pack `name` in `configs`: `<configs>/<name>.yaml` (or
/// `.yml`), when one exists.
pub fn config_file(configs: &Path, name: &str) -> Option<PathBuf> {
    ["yaml", "yml"]
        .iter()
        .map(|ext| configs.join(format!("{name}.{ext}")))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = "
api_key: {type: string, secret: true, required: true}
region: {type: string, default: eu-west-1, enum: [eu-west-1, us-east-1]}
retries: {type: integer, default: 3, minimum: 0}
auth:
  type: object
  properties:
    user: {type: string, required: true}
    password: {type: string, secret: true}
";

    fn values(v: Value) -> Option<Map<String, Value>> {
        v.as_object().cloned()
    }

    #[test]
    fn defaults_fill_in_and_secrets_are_found_at_any_depth() {
        let schema = ConfigSchema::parse(SCHEMA).unwrap();
        let config = schema
            .check(
                values(json!({"api_key": "k-123", "auth": {"user": "ops", "password": "pw"}})),
                None,
            )
            .unwrap();
        assert_eq!(config.values["region"], json!("eu-west-1"));
        assert_eq!(config.values["retries"], json!(3));
        assert_eq!(
            config.masked()["auth"],
            json!({"user": "ops", "password": MASK})
        );
        assert_eq!(config.masked()["api_key"], json!(MASK));
        let mut texts = config.secret_texts();
        texts.sort();
        assert_eq!(texts, ["k-123", "pw"]);
    }

    #[test]
    fn every_problem_names_its_key_and_no_secret_is_quoted() {
        let schema = ConfigSchema::parse(SCHEMA).unwrap();
        let problems = schema
            .check(
                values(json!({"api_key": 42, "region": "mars", "retries": -1})),
                None,
            )
            .unwrap_err();
        let about = |key: &str| {
            problems
                .iter()
                .find(|p| p.key.as_deref() == Some(key))
                .unwrap_or_else(|| panic!("nothing about {key}: {problems:?}"))
                .message
                .clone()
        };
        assert!(about("region").contains("mars"));
        assert!(about("retries").contains("-1"));
        assert!(
            !about("api_key").contains("42"),
            "a secret value is never quoted"
        );
        let missing = schema.check(None, None).unwrap_err();
        assert!(
            missing.iter().any(|p| p.key.as_deref() == Some("api_key")),
            "{missing:?}"
        );
        let nested = schema
            .check(values(json!({"api_key": "k", "auth": {}})), None)
            .unwrap_err();
        assert_eq!(nested[0].key.as_deref(), Some("auth.user"), "{nested:?}");
    }
}

//! Reading pack directories into a [`Catalog`].
//!
//! Loading never stops at the first problem: every file is read, every reference checked,
//! and all errors come back together, each naming its file and field, so an operator fixes
//! a pack in one pass.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_core::{ActionRef, RunnerType};

use crate::criteria::Criterion;
use crate::error::{LoadError, LoadErrors};
use crate::model::{
    Action, BrokenPack, Catalog, OnFull, Origin, Pack, ParamSpec, Policy, Rule, Trigger,
};
use crate::template::ParamTemplate;

#[derive(Deserialize)]
struct PackFile {
    #[serde(rename = "ref")]
    pack_ref: Option<String>,
    name: Option<String>,
    version: Option<Value>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct ActionFile {
    name: String,
    pack: Option<String>,
    runner_type: RunnerType,
    description: Option<String>,
    enabled: Option<bool>,
    entry_point: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, ParamSpec>,
    timeout: Option<u64>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    limits: sluice_core::ProcessLimits,
}

/// StackStorm's policy file: `action.concurrency` and `action.concurrency.attr`.
#[derive(Deserialize)]
struct PolicyFile {
    name: String,
    resource_ref: String,
    policy_type: String,
    enabled: Option<bool>,
    #[serde(default)]
    parameters: PolicyParameters,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyParameters {
    threshold: Option<usize>,
    action: Option<String>,
    #[serde(default)]
    attributes: Vec<String>,
    // action.retry
    retry_on: Option<crate::model::RetryOn>,
    max_retry_count: Option<u32>,
    delay: Option<f64>,
}

/// StackStorm's sensor file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorFile {
    class_name: String,
    entry_point: String,
    description: Option<String>,
    poll_interval: Option<f64>,
    enabled: Option<bool>,
    #[serde(default)]
    trigger_types: Vec<SensorTriggerType>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorTriggerType {
    name: String,
    pack: Option<String>,
    description: Option<String>,
    payload_schema: Option<Value>,
    #[serde(default)]
    tags: Vec<Value>,
}

#[derive(Deserialize)]
struct TriggerFile {
    name: String,
    pack: Option<String>,
    description: Option<String>,
    payload_schema: Option<Value>,
}

#[derive(Deserialize)]
struct RuleFile {
    name: String,
    pack: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    trigger: RuleTrigger,
    #[serde(default)]
    criteria: BTreeMap<String, CriterionFile>,
    action: RuleAction,
}

#[derive(Deserialize)]
struct RuleTrigger {
    #[serde(rename = "type")]
    trigger_type: String,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct CriterionFile {
    #[serde(rename = "type")]
    operator: String,
    #[serde(default)]
    pattern: Value,
}

#[derive(Deserialize)]
struct RuleAction {
    #[serde(rename = "ref")]
    action_ref: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

#[derive(Default)]
struct Loader {
    /// Where pack configurations are (`<configs>/<pack>.yaml`).
    configs: Option<PathBuf>,
    catalog: Catalog,
    errors: Vec<LoadError>,
    /// Rules are checked after every pack's actions and triggers are known.
    rules: Vec<(PathBuf, String, RuleFile)>,
    policies: Vec<(PathBuf, PolicyFile)>,
    /// Workflow files are checked once every action they may name is known.
    workflows: Vec<(ActionRef, PathBuf)>,
}

impl Loader {
    fn error(&mut self, file: &Path, field: Option<&str>, message: impl Into<String>) {
        self.errors.push(LoadError {
            file: file.to_owned(),
            field: field.map(str::to_owned),
            message: message.into(),
        });
    }

    fn read<T: DeserializeOwned>(&mut self, file: &Path) -> Option<T> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                self.error(file, None, format!("cannot read file: {e}"));
                return None;
            }
        };
        match serde_yaml_ng::from_str(&text) {
            Ok(value) => Some(value),
            Err(e) => {
                self.error(file, None, e.to_string());
                None
            }
        }
    }

    /// Pack `name`'s configuration, checked against its `config.schema.yaml`; `None` when it
    /// has neither, or with a problem (reported, naming the file and key).
    fn load_config(&mut self, name: &str, dir: &Path) -> Option<crate::config::PackConfig> {
        use crate::config::{ConfigSchema, PackConfig};
        let schema_file = dir.join("config.schema.yaml");
        let file = self
            .configs
            .as_deref()
            .and_then(|configs| crate::config::config_file(configs, name));
        let values = match &file {
            Some(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) => {
                        self.error(path, None, format!("cannot read file: {e}"));
                        return None;
                    }
                };
                match serde_yaml_ng::from_str::<Value>(&text) {
                    Ok(Value::Object(values)) => Some(values),
                    Ok(Value::Null) => None,
                    Ok(_) => {
                        self.error(
                            path,
                            None,
                            "a pack's configuration must be a mapping of keys to values",
                        );
                        return None;
                    }
                    Err(e) => {
                        self.error(path, None, e.to_string());
                        return None;
                    }
                }
            }
            None => None,
        };
        if !schema_file.is_file() {
            return file.map(|file| PackConfig {
                values: values.unwrap_or_default(),
                secret_paths: Vec::new(),
                file: Some(file),
                sealed: None,
            });
        }
        let text = match std::fs::read_to_string(&schema_file) {
            Ok(text) => text,
            Err(e) => {
                self.error(&schema_file, None, format!("cannot read file: {e}"));
                return None;
            }
        };
        let schema = match ConfigSchema::parse(&text) {
            Ok(schema) => schema,
            Err(problem) => {
                self.error(&schema_file, problem.key.as_deref(), problem.message);
                return None;
            }
        };
        match schema.check(values, file.clone()) {
            Ok(config) => Some(config),
            Err(problems) => {
                // Named where the values are, or would be.
                let at = file
                    .or_else(|| {
                        self.configs
                            .as_ref()
                            .map(|c| c.join(format!("{name}.yaml")))
                    })
                    .unwrap_or_else(|| schema_file.clone());
                for problem in problems {
                    let message = if self.configs.is_none() {
                        format!(
                            "{} (no configs directory is set: --configs)",
                            problem.message
                        )
                    } else {
                        problem.message
                    };
                    self.error(&at, problem.key.as_deref(), message);
                }
                None
            }
        }
    }

    fn load_pack(&mut self, dir: &Path) {
        let manifest = dir.join("pack.yaml");
        let Some(file) = self.read::<PackFile>(&manifest) else {
            return;
        };
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = file.pack_ref.or(file.name).unwrap_or(dir_name);
        if let Err(e) = ActionRef::new(&name, "x") {
            self.error(
                &manifest,
                Some("ref"),
                format!("pack name {name:?} is not valid: {e}"),
            );
            return;
        }
        if let Some(other) = self.catalog.packs.get(&name) {
            let message = format!(
                "pack {name:?} is already loaded from {}",
                other.dir.display()
            );
            self.error(&manifest, Some("ref"), message);
            return;
        }
        let version = file
            .version
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        // Absolute, so workers can run entry points whatever their working directory.
        let dir = &dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let pack = Pack {
            name: name.clone(),
            version,
            description: file.description,
            dir: dir.to_owned(),
            digest: None,
            config: self.load_config(&name, dir).map(std::sync::Arc::new),
        };
        self.catalog.packs.insert(name.clone(), pack);
        for path in yaml_files(&dir.join("actions")) {
            self.load_action(&name, dir, &path);
        }
        for path in yaml_files(&dir.join("triggers")) {
            self.load_trigger(&name, &path);
        }
        for path in yaml_files(&dir.join("sensors")) {
            self.load_sensor(&name, dir, &path);
        }
        for path in yaml_files(&dir.join("rules")) {
            if let Some(rule) = self.read::<RuleFile>(&path) {
                self.rules.push((path, name.clone(), rule));
            }
        }
        for path in yaml_files(&dir.join("policies")) {
            if let Some(policy) = self.read::<PolicyFile>(&path) {
                self.policies.push((path, policy));
            }
        }
    }

    fn reference(
        &mut self,
        file: &Path,
        pack: &str,
        declared: Option<&str>,
        name: &str,
    ) -> Option<ActionRef> {
        if let Some(declared) = declared
            && declared != pack
        {
            self.error(
                file,
                Some("pack"),
                format!("says pack {declared:?} but lives in pack {pack:?}"),
            );
            return None;
        }
        match ActionRef::new(pack, name) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(file, Some("name"), e.to_string());
                None
            }
        }
    }

    fn load_action(&mut self, pack: &str, dir: &Path, path: &Path) {
        let Some(mut file) = self.read::<ActionFile>(path) else {
            return;
        };
        let Some(action_ref) = self.reference(path, pack, file.pack.as_deref(), &file.name) else {
            return;
        };
        let entry_point = file.entry_point.filter(|e| !e.is_empty());
        let mut entry_file = None;
        match (&entry_point, file.runner_type.needs_entry_point()) {
            (None, true) => {
                self.error(
                    path,
                    Some("entry_point"),
                    format!("runner {} needs an entry_point file", file.runner_type),
                );
            }
            (Some(entry), true) => {
                match sluice_core::runner::confined_entry_point(&dir.join("actions"), entry) {
                    Ok(file) => entry_file = Some(file),
                    Err(message) => self.error(path, Some("entry_point"), message),
                }
            }
            _ => {}
        }
        for runner_parameter in file.runner_type.runner_parameters() {
            if !file.parameters.contains_key(runner_parameter.name) {
                file.parameters.insert(
                    runner_parameter.name.to_owned(),
                    runner_parameter_spec(runner_parameter),
                );
            }
        }
        let mut positions: BTreeMap<u32, &str> = BTreeMap::new();
        for (name, spec) in &file.parameters {
            let Some(position) = spec.position else {
                continue;
            };
            if let Some(other) = positions.insert(position, name) {
                self.error(
                    path,
                    Some(&format!("parameters.{name}.position")),
                    format!("position {position} is also {other}'s"),
                );
            }
        }
        for (name, spec) in file.parameters.iter_mut() {
            let Some(schema) = spec.schema() else {
                continue;
            };
            match jsonschema::validator_for(&schema) {
                Ok(validator) => {
                    spec.constraints =
                        crate::model::Constraints(Some(std::sync::Arc::new(validator)));
                }
                Err(e) => self.error(
                    path,
                    Some(&format!("parameters.{name}")),
                    format!("not a JSON Schema a value can be checked against: {e}"),
                ),
            }
        }
        for (name, spec) in &file.parameters {
            // A templated default is checked once rendered, on each request.
            let templated = |d: &Value| d.as_str().is_some_and(|s| s.contains("{{"));
            if let Some(default) = spec.default.as_ref().filter(|d| !templated(d)) {
                let probe = Action {
                    action_ref: action_ref.clone(),
                    description: None,
                    runner: file.runner_type,
                    entry_point: None,
                    parameters: BTreeMap::from([(name.clone(), spec.clone())]),
                    timeout_secs: None,
                    limits: Default::default(),
                    enabled: true,
                    policy: Policy::default(),
                    workflow: None,
                    pack_digest: None,
                    config: None,
                    file: path.to_owned(),
                };
                let given = serde_json::Map::from_iter([(name.clone(), default.clone())]);
                if let Err(e) = crate::params::resolve(&probe, given) {
                    let message = format!("default does not fit: {}", e.errors[0]);
                    self.error(path, Some(&format!("parameters.{name}.default")), message);
                }
            }
        }
        if file.runner_type == RunnerType::LocalShellCmd && !file.parameters.contains_key("cmd") {
            self.error(
                path,
                Some("parameters.cmd"),
                "a local-shell-cmd action needs a `cmd` parameter",
            );
        }
        self.check_policy(path, "policy", &file.policy, &file.parameters);
        if self.catalog.actions.contains_key(&action_ref) {
            self.error(
                path,
                Some("name"),
                format!("action {action_ref} is defined twice"),
            );
            return;
        }
        if file.runner_type == RunnerType::Orquesta
            && let Some(entry) = entry_file
        {
            self.workflows.push((action_ref.clone(), entry));
        }
        let action = Action {
            action_ref: action_ref.clone(),
            description: file.description,
            runner: file.runner_type,
            entry_point,
            parameters: file.parameters,
            timeout_secs: file.timeout,
            limits: file.limits,
            enabled: file.enabled.unwrap_or(true),
            policy: file.policy,
            workflow: None,
            pack_digest: None,
            config: self.catalog.packs.get(pack).and_then(|p| p.config.clone()),
            file: path.to_owned(),
        };
        self.catalog.actions.insert(action_ref, action);
    }

    fn check_policy(
        &mut self,
        path: &Path,
        field: &str,
        policy: &Policy,
        parameters: &BTreeMap<String, ParamSpec>,
    ) {
        for (name, value) in [
            ("max_concurrent", policy.max_concurrent),
            ("max_concurrent_total", policy.max_concurrent_total),
        ] {
            if value == Some(0) {
                self.error(path, Some(&format!("{field}.{name}")), "must be at least 1");
            }
        }
        for name in &policy.concurrency_key {
            if !parameters.contains_key(name) {
                let known = parameters.keys().cloned().collect::<Vec<_>>().join(", ");
                self.error(
                    path,
                    Some(&format!("{field}.concurrency_key")),
                    format!("{name:?} is not a parameter of the action (known: {known})"),
                );
            }
        }
        if let Some(rate) = policy.rate_limit
            && (rate.count == 0 || !rate.per_seconds.is_finite() || rate.per_seconds <= 0.0)
        {
            self.error(
                path,
                Some(&format!("{field}.rate_limit")),
                "count must be at least 1 and per_seconds above 0",
            );
        }
        if let Some(retry) = &policy.retry {
            let finite = |x: f64| x.is_finite() && x >= 0.0;
            if !finite(retry.delay) || !finite(retry.backoff) || retry.backoff < 1.0 {
                self.error(
                    path,
                    Some(&format!("{field}.retry")),
                    "delay must be a number of seconds, and backoff at least 1",
                );
            }
            if !(0.0..1.0).contains(&retry.jitter) || retry.max_delay.is_some_and(|m| !finite(m)) {
                self.error(
                    path,
                    Some(&format!("{field}.retry")),
                    "jitter must be at least 0 and below 1, and max_delay a number of seconds",
                );
            }
            if retry.on.is_empty() {
                self.error(
                    path,
                    Some(&format!("{field}.retry.on")),
                    "retries on nothing",
                );
            }
        }
        if policy.on_full == OnFull::Cancel
            && policy.max_concurrent.is_none()
            && policy.max_concurrent_total.is_none()
        {
            self.error(
                path,
                Some(&format!("{field}.on_full")),
                "cancel needs max_concurrent",
            );
        }
    }

    /// Applies a StackStorm policy file to the action it names.
    fn apply_policy(&mut self, path: PathBuf, file: PolicyFile) {
        if !file.enabled.unwrap_or(true) {
            return;
        }
        let action_ref = match file.resource_ref.parse::<ActionRef>() {
            Ok(r) if self.catalog.actions.contains_key(&r) => r,
            _ => {
                self.error(
                    &path,
                    Some("resource_ref"),
                    format!("unknown action {:?}", file.resource_ref),
                );
                return;
            }
        };
        let with_attributes = match file.policy_type.as_str() {
            "action.concurrency" => false,
            "action.concurrency.attr" => true,
            "action.retry" => return self.apply_retry(path, action_ref, file),
            other => {
                let message = format!(
                    "unsupported policy_type {other:?} (supported: action.concurrency, action.concurrency.attr, action.retry)"
                );
                self.error(&path, Some("policy_type"), message);
                return;
            }
        };
        let Some(threshold) = file.parameters.threshold else {
            self.error(&path, Some("parameters.threshold"), "missing");
            return;
        };
        let on_full = match file.parameters.action.as_deref() {
            None | Some("delay") => OnFull::Enqueue,
            Some("cancel") => OnFull::Cancel,
            Some(other) => {
                self.error(
                    &path,
                    Some("parameters.action"),
                    format!("{other:?} is not delay or cancel"),
                );
                return;
            }
        };
        if with_attributes && file.parameters.attributes.is_empty() {
            self.error(
                &path,
                Some("parameters.attributes"),
                "action.concurrency.attr needs attributes",
            );
            return;
        }
        let action = &self.catalog.actions[&action_ref];
        if action.policy.max_concurrent.is_some() {
            let message = format!(
                "policy {} sets the concurrency of {action_ref}, which {} already sets",
                file.name,
                action.file.display()
            );
            self.error(&path, Some("resource_ref"), message);
            return;
        }
        let mut policy = action.policy.clone();
        policy.max_concurrent = Some(threshold);
        policy.on_full = on_full;
        policy.concurrency_key = file.parameters.attributes;
        let parameters = action.parameters.clone();
        self.check_policy(&path, "parameters", &policy, &parameters);
        if let Some(action) = self.catalog.actions.get_mut(&action_ref) {
            action.policy = policy;
        }
    }

    /// StackStorm's `action.retry`: `retry_on` (`failure` or `timeout`), `max_retry_count`,
    /// `delay` in seconds.
    fn apply_retry(&mut self, path: PathBuf, action_ref: ActionRef, file: PolicyFile) {
        let parameters = file.parameters;
        let Some(on) = parameters.retry_on else {
            self.error(
                &path,
                Some("parameters.retry_on"),
                "missing (failure or timeout)",
            );
            return;
        };
        let Some(max_retries) = parameters.max_retry_count else {
            self.error(&path, Some("parameters.max_retry_count"), "missing");
            return;
        };
        let action = &self.catalog.actions[&action_ref];
        let mut retry = action
            .policy
            .retry
            .clone()
            .unwrap_or(crate::model::RetryPolicy {
                on: Vec::new(),
                max_retries,
                delay: 0.0,
                backoff: 1.0,
                max_delay: None,
                jitter: 0.0,
            });
        if retry.on.contains(&on) {
            let message = format!(
                "policy {} retries {action_ref} on {on:?}, which another policy or its action file already does",
                file.name
            );
            self.error(&path, Some("parameters.retry_on"), message);
            return;
        }
        // Several policies on one action: each adds what it retries on.
        retry.on.push(on);
        retry.max_retries = retry.max_retries.max(max_retries);
        retry.delay = parameters.delay.unwrap_or(retry.delay);
        let mut policy = action.policy.clone();
        policy.retry = Some(retry);
        let parameters = action.parameters.clone();
        self.check_policy(&path, "parameters", &policy, &parameters);
        if let Some(action) = self.catalog.actions.get_mut(&action_ref) {
            action.policy = policy;
        }
    }

    fn load_sensor(&mut self, pack: &str, dir: &Path, path: &Path) {
        let Some(file) = self.read::<SensorFile>(path) else {
            return;
        };
        let entry_point = match sluice_core::runner::confined_entry_point(
            &dir.join("sensors"),
            &file.entry_point,
        ) {
            Ok(entry) => entry,
            Err(message) => {
                self.error(path, Some("entry_point"), message);
                return;
            }
        };
        if file
            .poll_interval
            .is_some_and(|p| !p.is_finite() || p <= 0.0)
        {
            self.error(
                path,
                Some("poll_interval"),
                "must be a number of seconds above 0",
            );
            return;
        }
        let sensor_ref = format!("{pack}.{}", file.class_name);
        if ActionRef::new(pack, &file.class_name).is_err() {
            self.error(
                path,
                Some("class_name"),
                format!("{:?} is not a valid name", file.class_name),
            );
            return;
        }
        if self.catalog.sensors.contains_key(&sensor_ref) {
            self.error(
                path,
                Some("class_name"),
                format!("sensor {sensor_ref} is defined twice"),
            );
            return;
        }
        let mut triggers = Vec::new();
        for (i, declared) in file.trigger_types.into_iter().enumerate() {
            let _ = declared.tags;
            let field = format!("trigger_types[{i}]");
            let Some(trigger_ref) =
                self.reference(path, pack, declared.pack.as_deref(), &declared.name)
            else {
                continue;
            };
            let trigger_ref = trigger_ref.to_string();
            if self.catalog.triggers.contains_key(&trigger_ref) {
                self.error(
                    path,
                    Some(&format!("{field}.name")),
                    format!("trigger {trigger_ref} is defined twice"),
                );
                continue;
            }
            let schema_field = format!("{field}.payload_schema");
            let Some(trigger) = self.trigger(
                path,
                &schema_field,
                &trigger_ref,
                declared.description,
                declared.payload_schema,
            ) else {
                continue;
            };
            self.catalog.triggers.insert(trigger_ref.clone(), trigger);
            triggers.push(trigger_ref);
        }
        self.catalog.sensors.insert(
            sensor_ref.clone(),
            crate::model::Sensor {
                sensor_ref,
                pack: pack.to_owned(),
                class_name: file.class_name,
                description: file.description,
                entry_point,
                poll_interval: file.poll_interval,
                enabled: file.enabled.unwrap_or(true),
                triggers,
                file: path.to_owned(),
            },
        );
    }

    fn load_trigger(&mut self, pack: &str, path: &Path) {
        let Some(file) = self.read::<TriggerFile>(path) else {
            return;
        };
        let Some(trigger_ref) = self.reference(path, pack, file.pack.as_deref(), &file.name) else {
            return;
        };
        let trigger_ref = trigger_ref.to_string();
        if let Some(trigger) = self.trigger(
            path,
            "payload_schema",
            &trigger_ref,
            file.description,
            file.payload_schema,
        ) {
            self.catalog.triggers.insert(trigger_ref, trigger);
        }
    }

    /// A trigger declared in `path` (a trigger file, or a sensor's `trigger_types`), its
    /// payload schema compiled; `None` with the problem reported at `schema_field`.
    fn trigger(
        &mut self,
        path: &Path,
        schema_field: &str,
        trigger_ref: &str,
        description: Option<String>,
        payload_schema: Option<Value>,
    ) -> Option<Trigger> {
        let validator = match &payload_schema {
            None => None,
            Some(schema) => match jsonschema::validator_for(schema) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    self.error(
                        path,
                        Some(schema_field),
                        format!("not a valid JSON Schema: {e}"),
                    );
                    return None;
                }
            },
        };
        Some(Trigger {
            trigger_ref: trigger_ref.to_owned(),
            description,
            secret_properties: crate::model::secret_properties_of(payload_schema.as_ref()),
            payload_schema,
            validator,
            file: path.to_owned(),
        })
    }

    /// Parses an orquesta action's workflow file against the whole catalog.
    fn load_workflow(&mut self, action_ref: &ActionRef, path: &Path) {
        let Some(action) = self.catalog.actions.get(action_ref) else {
            return;
        };
        match crate::workflow_file::parse(path, action, &self.catalog) {
            Ok(workflow) => {
                if let Some(action) = self.catalog.actions.get_mut(action_ref) {
                    action.workflow = Some(Arc::new(workflow));
                }
            }
            Err(errors) => self.errors.extend(errors),
        }
    }

    fn check_rule(&mut self, path: PathBuf, pack: String, file: RuleFile) {
        let Some(rule_ref) = self.reference(&path, &pack, file.pack.as_deref(), &file.name) else {
            return;
        };
        let trigger = file.trigger.trigger_type;
        let trigger_parameters = file.trigger.parameters.clone().unwrap_or(Value::Null);
        let mut webhook = None;
        if trigger == crate::webhook::TRIGGER {
            let parameters = file.trigger.parameters.clone().unwrap_or(Value::Null);
            match crate::webhook::Webhook::from_parameters(&parameters) {
                Ok(hook) => {
                    let differs = self.catalog.rules.iter().any(|rule| {
                        rule.webhook
                            .as_ref()
                            .is_some_and(|known| known.url == hook.url && known.auth != hook.auth)
                    });
                    if differs {
                        self.error(
                            &path,
                            Some("trigger.parameters.auth"),
                            format!(
                                "webhook {} is authenticated differently by another rule",
                                hook.url
                            ),
                        );
                    } else {
                        webhook = Some(hook);
                    }
                }
                Err((field, message)) => self.error(&path, Some(&field), message),
            }
        }
        let mut timer = None;
        if crate::timer::TRIGGERS.iter().any(|(t, _)| *t == trigger) {
            let parameters = file.trigger.parameters.clone().unwrap_or(Value::Null);
            match crate::timer::Timer::from_parameters(&trigger, &parameters) {
                Ok(t) => timer = Some(t),
                Err((field, message)) => self.error(&path, Some(&field), message),
            }
        }
        if !self.catalog.triggers.contains_key(&trigger) {
            let known = self
                .catalog
                .triggers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                &path,
                Some("trigger.type"),
                format!("unknown trigger {trigger:?} (known: {known})"),
            );
        }
        let mut criteria = Vec::new();
        for (key, c) in file.criteria {
            match Criterion::compile("trigger", &key, &c.operator, c.pattern) {
                Ok(criterion) => criteria.push(criterion),
                Err(e) => self.error(&path, Some(&format!("criteria.{key}")), e),
            }
        }
        let action = match file.action.action_ref.parse::<ActionRef>() {
            Ok(r) if self.catalog.actions.contains_key(&r) => {
                Some(self.catalog.actions[&r].clone())
            }
            Ok(r) => {
                self.error(&path, Some("action.ref"), format!("unknown action {r}"));
                None
            }
            Err(e) => {
                self.error(&path, Some("action.ref"), e.to_string());
                None
            }
        };
        let mut parameters = BTreeMap::new();
        if let Some(action) = &action {
            for (name, value) in file.action.parameters {
                let field = format!("action.parameters.{name}");
                if !action.parameters.contains_key(&name) {
                    let known = action
                        .parameters
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error(
                        &path,
                        Some(&field),
                        format!(
                            "action {} has no parameter {name:?} (known: {known})",
                            action.action_ref
                        ),
                    );
                    continue;
                }
                let shell = action.shell_reads(&name);
                match ParamTemplate::compile(value, shell) {
                    Ok(t) => {
                        parameters.insert(name, t);
                    }
                    Err(e) => self.error(&path, Some(&field), e),
                }
            }
            for (name, spec) in &action.parameters {
                if spec.required && spec.default.is_none() && !parameters.contains_key(name) {
                    let message =
                        format!("action {} requires parameter {name:?}", action.action_ref);
                    self.error(&path, Some("action.parameters"), message);
                }
            }
        }
        let Some(action) = action else { return };
        self.catalog.rules.push(Rule {
            rule_ref: rule_ref.to_string(),
            description: file.description,
            enabled: file.enabled.unwrap_or(true),
            trigger,
            trigger_parameters,
            criteria,
            action: action.action_ref,
            parameters,
            webhook,
            timer,
            file: path,
            origin: Origin::Pack,
        });
    }
}

/// `*.yaml` and `*.yml` files of a directory, sorted; none if it does not exist.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    files
}

/// Loads every pack found in `roots`. A root is either a pack itself (it has `pack.yaml`)
/// or a directory of packs (its subdirectories with a `pack.yaml`, hidden ones left out). Any problem in any pack fails the whole load, with every problem
/// found; [`load_packs_reporting`] leaves broken packs out instead.
pub fn load_packs(roots: &[PathBuf]) -> Result<Catalog, LoadErrors> {
    let (catalog, errors) = load(roots, None, &HashSet::new());
    if errors.is_empty() {
        Ok(catalog)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Loads every pack found in `roots`, leaving out whole each pack with a problem and
/// reporting it with every problem found in it; the others load. A pack that needs one left
/// out (a rule naming its action) is left out in turn, with its own problems. The catalog
/// lists what was left out in [`Catalog::broken`].
pub fn load_packs_reporting(roots: &[PathBuf]) -> Catalog {
    load_packs_with_configs(roots, None)
}

/// [`load_packs_reporting`], reading each pack's configuration from `configs`
/// (`<configs>/<pack>.yaml`); a pack whose configuration does not fit its schema is left
/// out like any other broken pack, its problems naming the configuration file and key.
pub fn load_packs_with_configs(roots: &[PathBuf], configs: Option<&Path>) -> Catalog {
    let mut left_out: HashSet<PathBuf> = HashSet::new();
    let mut broken = Vec::new();
    loop {
        let (mut catalog, errors) = load(roots, configs, &left_out);
        if errors.is_empty() {
            catalog.broken = broken;
            return catalog;
        }
        let mut by_pack: BTreeMap<PathBuf, Vec<LoadError>> = BTreeMap::new();
        for error in errors {
            // A configuration file belongs to the pack it is named after.
            let configured = configs
                .filter(|configs| error.file.parent() == Some(*configs))
                .and_then(|_| error.file.file_stem())
                .and_then(|stem| catalog.packs.get(stem.to_string_lossy().as_ref()))
                .map(|pack| pack.dir.clone());
            by_pack
                .entry(configured.unwrap_or_else(|| pack_dir_of(&error.file)))
                .or_default()
                .push(error);
        }
        let mut progressed = false;
        for (dir, errors) in by_pack {
            progressed |= left_out.insert(dir.clone());
            let name = std::fs::read_to_string(dir.join("pack.yaml"))
                .ok()
                .and_then(|text| serde_yaml_ng::from_str::<PackFile>(&text).ok())
                .and_then(|file| file.pack_ref.or(file.name))
                .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string());
            broken.push(BrokenPack { name, dir, errors });
        }
        if !progressed {
            // Problems outside any pack that leaving packs out cannot cure.
            catalog.broken = broken;
            return catalog;
        }
    }
}

/// The name of the pack in `dir` as the loader reads it: `ref` in its `pack.yaml`, else
/// `name`, else the directory's name; an error names the file and field at fault.
pub fn pack_name(dir: &Path) -> Result<String, LoadError> {
    let manifest = dir.join("pack.yaml");
    let problem = |field: Option<&str>, message: String| LoadError {
        file: manifest.clone(),
        field: field.map(str::to_owned),
        message,
    };
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| problem(None, format!("cannot read the pack's manifest: {e}")))?;
    let file: PackFile =
        serde_yaml_ng::from_str(&text).map_err(|e| problem(None, e.to_string()))?;
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = file.pack_ref.or(file.name).unwrap_or(dir_name);
    ActionRef::new(&name, "x")
        .map_err(|e| problem(Some("ref"), format!("pack name {name:?} is not valid: {e}")))?;
    Ok(name)
}

/// Where the problems of a rule given through the API are placed.
const API_ORIGIN: &str = "(api)";

/// `catalog` with a rule given through the API (the fields of a rule file, `pack` naming
/// its pack), checked as a rule file is: every problem found, each naming its field. It
/// replaces the API rule of the same name; a rule from a pack's file cannot be replaced.
pub fn with_api_rule(
    catalog: &Catalog,
    definition: Value,
) -> Result<(Catalog, String), LoadErrors> {
    let origin = PathBuf::from(API_ORIGIN);
    let problem = |field: Option<&str>, message: String| {
        LoadErrors(vec![LoadError {
            file: origin.clone(),
            field: field.map(str::to_owned),
            message,
        }])
    };
    let file: RuleFile =
        serde_json::from_value(definition).map_err(|e| problem(None, e.to_string()))?;
    let pack = file.pack.clone().ok_or_else(|| {
        problem(
            Some("pack"),
            "a rule given through the API names its pack".into(),
        )
    })?;
    if !catalog.packs.contains_key(&pack) {
        let known = catalog.packs.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(problem(
            Some("pack"),
            format!("unknown pack {pack:?} (known: {known})"),
        ));
    }
    let rule_ref = format!("{pack}.{}", file.name);
    let mut loader = Loader {
        catalog: catalog.clone(),
        ..Default::default()
    };
    if let Some(existing) = catalog.rule(&rule_ref) {
        if existing.origin == Origin::Pack {
            return Err(problem(
                Some("name"),
                format!(
                    "rule {rule_ref} is defined by {}; change it there",
                    existing.file.display()
                ),
            ));
        }
        loader.catalog.remove_api_rule(&rule_ref);
    }
    loader.check_rule(origin, pack, file);
    if !loader.errors.is_empty() {
        return Err(LoadErrors(loader.errors));
    }
    if let Some(rule) = loader.catalog.rules.last_mut() {
        rule.origin = Origin::Api;
    }
    loader.catalog.index_rules();
    Ok((loader.catalog, rule_ref))
}

/// The pack directory a file belongs to: its nearest ancestor with a `pack.yaml`
/// (canonical), or the file itself when none has one (a packs directory that cannot be read).
fn pack_dir_of(file: &Path) -> PathBuf {
    file.ancestors()
        .find(|dir| dir.join("pack.yaml").is_file())
        .unwrap_or(file)
        .canonicalize()
        .unwrap_or_else(|_| file.to_owned())
}

/// Loads the packs in `roots` but those whose directories are in `left_out`; the catalog
/// and every problem found.
fn load(
    roots: &[PathBuf],
    configs: Option<&Path>,
    left_out: &HashSet<PathBuf>,
) -> (Catalog, Vec<LoadError>) {
    let mut loader = Loader {
        configs: configs.map(Path::to_owned),
        ..Loader::default()
    };
    let skip =
        |dir: &Path| left_out.contains(&dir.canonicalize().unwrap_or_else(|_| dir.to_owned()));
    // Built in, as in StackStorm: the timers, fired by the engine on their schedules, and
    // the webhook trigger, fired by `POST /api/v1/webhooks/<url>`.
    let webhook = (
        crate::webhook::TRIGGER,
        "A POST to /api/v1/webhooks/<url>: {url, headers, body}",
    );
    for (trigger, description) in crate::timer::TRIGGERS.into_iter().chain([webhook]) {
        loader.catalog.triggers.insert(
            trigger.to_owned(),
            Trigger {
                trigger_ref: trigger.to_owned(),
                description: Some(description.to_owned()),
                payload_schema: None,
                validator: None,
                secret_properties: Vec::new(),
                file: PathBuf::from("(built in)"),
            },
        );
    }
    for root in roots {
        if root.join("pack.yaml").is_file() {
            if !skip(root) {
                loader.load_pack(root);
            }
            continue;
        }
        if skip(root) {
            continue;
        }
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) => {
                loader.error(root, None, format!("cannot read packs directory: {e}"));
                continue;
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Hidden directories are not packs (a pack change sets one aside there).
            .filter(|p| {
                p.join("pack.yaml").is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        dirs.sort();
        for dir in dirs.into_iter().filter(|dir| !skip(dir)) {
            loader.load_pack(&dir);
        }
    }
    for (path, policy) in std::mem::take(&mut loader.policies) {
        loader.apply_policy(path, policy);
    }
    for (path, pack, rule) in std::mem::take(&mut loader.rules) {
        loader.check_rule(path, pack, rule);
    }
    for (action_ref, path) in std::mem::take(&mut loader.workflows) {
        loader.load_workflow(&action_ref, &path);
    }
    loader.catalog.index_rules();
    (loader.catalog, loader.errors)
}

/// The declaration of a runner parameter an action did not declare itself.
fn runner_parameter_spec(parameter: &sluice_core::runner::RunnerParameter) -> ParamSpec {
    let spec = serde_json::json!({
        "type": parameter.kind,
        "description": parameter.description,
    });
    serde_json::from_value(spec).expect("a runner parameter is a valid parameter declaration")
}

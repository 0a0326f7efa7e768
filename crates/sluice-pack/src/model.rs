//! The loaded, validated form of pack files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_core::{ActionRef, RunnerType};

use crate::criteria::Criterion;
use crate::template::ParamTemplate;

#[derive(Debug, Clone, Serialize)]
pub struct Pack {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub dir: PathBuf,
    /// The digest of its bundle in the packs object store, once the engine published it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its configuration (`config.schema.yaml` and `<configs>/<pack>.yaml`), when it has
    /// either. Holds secrets in clear: never serialized; see [`crate::config::PackConfig::masked`].
    #[serde(skip)]
    pub config: Option<std::sync::Arc<crate::config::PackConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

/// One entry of an action's `parameters:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type", default = "default_param_type")]
    pub kind: ParamType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<serde_json::Value>>,
    /// Never stored, logged or shown in clear.
    #[serde(default)]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A shell reads the parameter's text (a script, a command line): values templates
    /// insert into it are quoted for where they sit. `cmd` of `local-shell-cmd` always is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shell: bool,
    /// StackStorm's flag for a parameter the caller may not override.
    #[serde(default)]
    pub immutable: bool,
    /// Where a `local-shell-script` action's script takes it among its positional
    /// arguments (lowest first); without one it is a named argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    // JSON Schema keywords a value must also satisfy, as StackStorm's parameter schemas
    // allow them; see [`ParamSpec::schema`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "exclusiveMinimum",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclusive_minimum: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "exclusiveMaximum",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclusive_maximum: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "multipleOf",
        skip_serializing_if = "Option::is_none"
    )]
    pub multiple_of: Option<serde_json::Value>,
    #[serde(default, rename = "minLength", skip_serializing_if = "Option::is_none")]
    pub min_length: Option<serde_json::Value>,
    #[serde(default, rename = "maxLength", skip_serializing_if = "Option::is_none")]
    pub max_length: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<serde_json::Value>,
    #[serde(default, rename = "minItems", skip_serializing_if = "Option::is_none")]
    pub min_items: Option<serde_json::Value>,
    #[serde(default, rename = "maxItems", skip_serializing_if = "Option::is_none")]
    pub max_items: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "uniqueItems",
        skip_serializing_if = "Option::is_none"
    )]
    pub unique_items: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "additionalProperties",
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_properties: Option<serde_json::Value>,
    #[serde(
        default,
        rename = "patternProperties",
        skip_serializing_if = "Option::is_none"
    )]
    pub pattern_properties: Option<serde_json::Value>,
    /// [`ParamSpec::schema`], compiled when the pack loads.
    #[serde(skip)]
    pub constraints: Constraints,
}

/// A parameter's compiled [`ParamSpec::schema`]; two are equal when they are the same schema.
#[derive(Clone, Default)]
pub struct Constraints(pub Option<std::sync::Arc<jsonschema::Validator>>);

impl PartialEq for Constraints {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Constraints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Constraints(compiled)"
        } else {
            "Constraints(none)"
        })
    }
}

impl ParamSpec {
    /// The JSON Schema keywords it carries besides its type and `enum` (`minimum`,
    /// `maxLength`, `pattern`, `items`, …), as one schema; `None` without any.
    pub fn schema(&self) -> Option<serde_json::Value> {
        let keywords = [
            ("minimum", &self.minimum),
            ("maximum", &self.maximum),
            ("exclusiveMinimum", &self.exclusive_minimum),
            ("exclusiveMaximum", &self.exclusive_maximum),
            ("multipleOf", &self.multiple_of),
            ("minLength", &self.min_length),
            ("maxLength", &self.max_length),
            ("pattern", &self.pattern),
            ("format", &self.format),
            ("items", &self.items),
            ("minItems", &self.min_items),
            ("maxItems", &self.max_items),
            ("uniqueItems", &self.unique_items),
            ("properties", &self.properties),
            ("additionalProperties", &self.additional_properties),
            ("patternProperties", &self.pattern_properties),
        ];
        let schema: serde_json::Map<String, serde_json::Value> = keywords
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value.clone()?)))
            .collect();
        (!schema.is_empty()).then_some(serde_json::Value::Object(schema))
    }
}

fn default_param_type() -> ParamType {
    ParamType::String
}

/// What to do with a new execution when its action (or key) is at `max_concurrent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Wait in the FIFO queue.
    #[default]
    Enqueue,
    /// End as `cancelled` with the reason.
    Cancel,
}

/// At most `count` admissions in any `per_seconds` window; the rest wait.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub count: u32,
    pub per_seconds: f64,
}

/// An action's admission policy (the `policy:` block of its file, and any
/// `policies/*.yaml` that name it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// At most this many executions past the gate (scheduled or running) at once, per
    /// concurrency key when there is one; the rest wait in FIFO order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(default)]
    pub on_full: OnFull,
    /// Parameters whose values give each execution its own queue and limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrency_key: Vec<String>,
    /// A limit across all keys; keys with work waiting take turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_total: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Queued executions beyond which new requests fail at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
    /// Run again elsewhere (at the head of the queue) when the worker running it is lost,
    /// instead of ending as `abandoned`.
    #[serde(default)]
    pub retry_on_worker_loss: bool,
    /// Run again, as a new attempt, when an attempt fails or times out (StackStorm's
    /// `action.retry`, with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// Which endings of an attempt [`RetryPolicy`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The attempt ended `failed`.
    Failure,
    /// The attempt ended `timed_out`.
    Timeout,
}

/// Attempts after the first, each after a wait: `delay` seconds, times `backoff` for each
/// retry before it, at most `max_delay`, spread by ± `jitter` (a fraction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "RetryPolicy::default_on")]
    pub on: Vec<RetryOn>,
    pub max_retries: u32,
    #[serde(default)]
    pub delay: f64,
    #[serde(default = "RetryPolicy::default_backoff")]
    pub backoff: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<f64>,
    #[serde(default)]
    pub jitter: f64,
}

impl RetryPolicy {
    fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::Failure]
    }

    fn default_backoff() -> f64 {
        1.0
    }

    /// Whether an attempt numbered `attempt` that ended `status` runs again.
    pub fn retries(&self, status: sluice_core::ExecutionStatus, attempt: u32) -> bool {
        let on = match status {
            sluice_core::ExecutionStatus::Failed => RetryOn::Failure,
            sluice_core::ExecutionStatus::TimedOut => RetryOn::Timeout,
            _ => return false,
        };
        self.on.contains(&on) && attempt <= self.max_retries
    }

    /// The wait before the attempt after `attempt`; `spread` in [0, 1) picks the jitter.
    pub fn delay_after(&self, attempt: u32, spread: f64) -> std::time::Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let mut seconds = self.delay * self.backoff.powi(exponent);
        if let Some(max) = self.max_delay {
            seconds = seconds.min(max);
        }
        seconds *= 1.0 + self.jitter * (2.0 * spread - 1.0);
        std::time::Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Action {
    #[serde(rename = "ref")]
    pub action_ref: ActionRef,
    pub description: Option<String>,
    pub runner: RunnerType,
    pub entry_point: Option<String>,
    pub parameters: BTreeMap<String, ParamSpec>,
    pub timeout_secs: Option<u64>,
    /// Limits on the action's processes (`limits: {memory_mb, cpu_seconds, open_files}`).
    #[serde(default, skip_serializing_if = "sluice_core::ProcessLimits::is_none")]
    pub limits: sluice_core::ProcessLimits,
    pub enabled: bool,
    pub policy: Policy,
    #[serde(skip)]
    pub file: PathBuf,
    /// The checked workflow of a `runner_type: orquesta` action.
    #[serde(skip)]
    pub workflow: Option<std::sync::Arc<crate::workflow::Workflow>>,
    /// Its pack's [`Pack::digest`]: the version a worker fetches to run it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
    /// Its pack's [`Pack::config`].
    #[serde(skip)]
    pub config: Option<std::sync::Arc<crate::config::PackConfig>>,
}

impl Action {
    /// The concurrency key of an execution with these parameters: the values of the
    /// policy's `concurrency_key` parameters, as JSON; empty without a key.
    pub fn concurrency_key(
        &self,
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> String {
        if self.policy.concurrency_key.is_empty() {
            return String::new();
        }
        let values: Vec<&serde_json::Value> = self
            .policy
            .concurrency_key
            .iter()
            .map(|name| parameters.get(name).unwrap_or(&serde_json::Value::Null))
            .collect();
        serde_json::to_string(&values).unwrap_or_default()
    }

    /// Whether the engine runs it (a workflow) rather than a worker.
    pub fn is_workflow(&self) -> bool {
        self.runner == RunnerType::Orquesta
    }

    /// Whether a shell reads parameter `name`'s text: `cmd` of a `local-shell-cmd` action,
    /// or a parameter marked `shell: true`. Values templates insert into it are made inert.
    pub fn shell_reads(&self, name: &str) -> bool {
        (self.runner == RunnerType::LocalShellCmd && name == "cmd")
            || self.parameters.get(name).is_some_and(|spec| spec.shell)
    }

    /// The parameters with a `position:`, in position order: a script's positional
    /// arguments.
    pub fn positional_parameters(&self) -> Vec<String> {
        let mut positional: Vec<(u32, &String)> = self
            .parameters
            .iter()
            .filter_map(|(name, spec)| Some((spec.position?, name)))
            .collect();
        positional.sort();
        positional
            .into_iter()
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// The seconds an execution with these parameters may run: the runner parameter
    /// `timeout` when the runner reads one and it is set, else the action's `timeout`.
    pub fn timeout_for(
        &self,
        parameters: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<u64> {
        parameters
            .get("timeout")
            .filter(|_| self.runner.is_runner_parameter("timeout"))
            .and_then(serde_json::Value::as_u64)
            .filter(|seconds| *seconds > 0)
            .or(self.timeout_secs)
    }

    pub fn secret_parameters(&self) -> Vec<String> {
        self.parameters
            .iter()
            .filter(|(_, spec)| spec.secret)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub trigger_ref: String,
    pub description: Option<String>,
    pub payload_schema: Option<serde_json::Value>,
    pub(crate) validator: Option<std::sync::Arc<jsonschema::Validator>>,
    /// The payload properties marked `secret: true` in `payload_schema`, read once at load.
    pub(crate) secret_properties: Vec<String>,
    pub file: PathBuf,
}

/// The properties a payload schema marks `secret: true`.
pub(crate) fn secret_properties_of(schema: Option<&serde_json::Value>) -> Vec<String> {
    schema
        .and_then(|schema| schema.get("properties"))
        .and_then(serde_json::Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .filter(|(_, spec)| spec.get("secret") == Some(&serde_json::Value::Bool(true)))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

impl Trigger {
    /// The payload properties marked `secret: true` in `payload_schema`.
    pub fn secret_properties(&self) -> &[String] {
        &self.secret_properties
    }

    /// Checks a payload against the trigger's `payload_schema`; the error lists every
    /// violation with its JSON pointer, and never quotes a secret property's value.
    pub fn validate_payload(&self, payload: &serde_json::Value) -> Result<(), String> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let secrets = match payload.as_object() {
            Some(values) => sluice_core::secrets::secret_texts(&self.secret_properties, values),
            None => Vec::new(),
        };
        let problems: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| {
                let at = e.instance_path().to_string();
                let problem = if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                };
                sluice_core::secrets::scrub(&problem, &secrets)
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "payload does not match the schema of {}: {}",
                self.trigger_ref,
                problems.join("; ")
            ))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub rule_ref: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub trigger: String,
    /// The `parameters` of its `trigger:`, as written (a sensor's `add_trigger` sees them).
    pub trigger_parameters: serde_json::Value,
    pub criteria: Vec<Criterion>,
    pub action: ActionRef,
    pub parameters: BTreeMap<String, ParamTemplate>,
    /// The webhook a `core.st2.webhook` rule listens on.
    pub webhook: Option<crate::webhook::Webhook>,
    /// The schedule of a timer rule (`core.st2.IntervalTimer`, `CronTimer`, `DateTimer`).
    pub timer: Option<crate::timer::Timer>,
    pub file: PathBuf,
    /// Where it was defined: a pack's file, or the API.
    pub origin: Origin,
}

/// Where a rule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A file in a pack's `rules/`.
    Pack,
    /// `POST /api/v1/rules`, kept in the store.
    Api,
}

/// Why a rule did not match a payload: the first check that failed, what it compared and
/// what it saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// The criterion's key (`trigger.severity`), or the field a timer or webhook rule reads
    /// to tell its own events (`trigger.timer`, `trigger.url`).
    pub key: String,
    /// The operator, as in criteria (`equals`, `regex`, …).
    #[serde(rename = "type")]
    pub operator: String,
    pub pattern: serde_json::Value,
    /// The payload's value at `key`; `None` when it has none.
    pub seen: Option<serde_json::Value>,
}

impl Rule {
    /// Whether this rule matches `payload` (enabled or not), and if not, why. A timer rule
    /// hears only its own ticks and a webhook rule only its own URL, before its criteria.
    pub fn judge(
        &self,
        payload: &serde_json::Value,
        kv: Option<&crate::datastore::Kv>,
    ) -> Result<(), Mismatch> {
        let own = |field: &str, expected: &str| {
            let seen = payload.get(field);
            match seen.and_then(serde_json::Value::as_str) {
                Some(value) if value == expected => Ok(()),
                _ => Err(Mismatch {
                    key: format!("trigger.{field}"),
                    operator: "equals".into(),
                    pattern: expected.into(),
                    seen: seen.cloned(),
                }),
            }
        };
        if self.timer.is_some() {
            own("timer", &self.rule_ref)?;
        }
        if let Some(hook) = &self.webhook {
            own("url", &hook.url)?;
        }
        match self.criteria.iter().find(|c| !c.matches_with(payload, kv)) {
            None => Ok(()),
            Some(failed) => Err(Mismatch {
                key: failed.key.clone(),
                operator: failed.operator.clone(),
                pattern: failed.pattern.clone(),
                seen: failed.seen(payload).cloned(),
            }),
        }
    }
}

/// A pack sensor (`sensors/*.yaml`): a long-running Python class that dispatches triggers.
#[derive(Debug, Clone, Serialize)]
pub struct Sensor {
    /// `<pack>.<class_name>`.
    #[serde(rename = "ref")]
    pub sensor_ref: String,
    pub pack: String,
    pub class_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Python file, resolved inside the pack.
    pub entry_point: PathBuf,
    /// Seconds between polls of a `PollingSensor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<f64>,
    pub enabled: bool,
    /// The triggers its file declares (`trigger_types`), as references.
    pub triggers: Vec<String>,
    #[serde(skip)]
    pub file: PathBuf,
}

/// Everything loaded from a set of pack directories.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub packs: BTreeMap<String, Pack>,
    /// Sensors by reference.
    pub sensors: BTreeMap<String, Sensor>,
    pub actions: BTreeMap<ActionRef, Action>,
    pub triggers: BTreeMap<String, Trigger>,
    /// In load order; read through [`Catalog::rules`] so the index stays true.
    pub(crate) rules: Vec<Rule>,
    index: RuleIndex,
    /// Packs left out because of problems in them (`load_packs_reporting`).
    pub broken: Vec<BrokenPack>,
}

/// A pack left out of the catalog, with every problem found in it.
#[derive(Debug, Clone, Serialize)]
pub struct BrokenPack {
    pub name: String,
    pub dir: PathBuf,
    pub errors: Vec<crate::error::LoadError>,
}

/// Where the enabled rules are, so an event is matched against the rules that can hear it
/// and not against every rule: ten thousand timer rules cost one lookup per tick.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    /// Positions in `rules` of the enabled rules on each trigger, in load order.
    by_trigger: HashMap<String, Vec<usize>>,
    /// Position of each enabled timer rule.
    timers: HashMap<String, usize>,
}

impl Catalog {
    pub fn action(&self, action_ref: &ActionRef) -> Option<&Action> {
        self.actions.get(action_ref)
    }

    /// The rules on `trigger`, enabled or not, in load order.
    pub fn rules_on<'a>(&'a self, trigger: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |rule| rule.trigger == trigger)
    }

    /// Every rule, enabled or not, in load order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule called `rule_ref`, enabled or not.
    pub fn rule(&self, rule_ref: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.rule_ref == rule_ref)
    }

    /// Takes out a rule defined through the API; `false` if there is none by that name.
    pub fn remove_api_rule(&mut self, rule_ref: &str) -> bool {
        let before = self.rules.len();
        self.rules
            .retain(|rule| !(rule.rule_ref == rule_ref && rule.origin == Origin::Api));
        let removed = self.rules.len() != before;
        if removed {
            self.index_rules();
        }
        removed
    }

    /// Switches a rule on or off; `false` if there is no such rule.
    pub fn set_rule_enabled(&mut self, rule_ref: &str, enabled: bool) -> bool {
        let Some(rule) = self.rules.iter_mut().find(|rule| rule.rule_ref == rule_ref) else {
            return false;
        };
        rule.enabled = enabled;
        self.index_rules();
        true
    }

    /// Indexes the rules; called once they are all loaded, and when one is switched.
    pub(crate) fn index_rules(&mut self) {
        let mut index = RuleIndex::default();
        for (i, rule) in self.rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            index
                .by_trigger
                .entry(rule.trigger.clone())
                .or_default()
                .push(i);
            if rule.timer.is_some() {
                index.timers.insert(rule.rule_ref.clone(), i);
            }
        }
        self.index = index;
    }

    /// The enabled rules listening to a trigger, in load order.
    pub fn rules_for<'a>(&'a self, trigger: &str) -> impl Iterator<Item = &'a Rule> + 'a {
        let at = self
            .index
            .by_trigger
            .get(trigger)
            .map_or(&[][..], Vec::as_slice);
        at.iter().map(|&i| &self.rules[i])
    }

    /// The enabled rules that hear an event of `trigger` carrying `payload`, in load order:
    /// a timer rule hears only its own ticks (`payload.timer`), a webhook rule only its own
    /// URL (`payload.url`), any other rule every event of its trigger.
    pub fn rules_hearing<'a>(
        &'a self,
        trigger: &'a str,
        payload: &'a serde_json::Value,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        let field = |name: &str| payload.get(name).and_then(serde_json::Value::as_str);
        let at: &[usize] = match field("timer").and_then(|rule| self.index.timers.get(rule)) {
            Some(i) if crate::timer::TRIGGERS.iter().any(|(t, _)| *t == trigger) => {
                std::slice::from_ref(i)
            }
            _ => self
                .index
                .by_trigger
                .get(trigger)
                .map_or(&[], Vec::as_slice),
        };
        at.iter().map(|&i| &self.rules[i]).filter(move |rule| {
            rule.trigger == trigger
                && rule
                    .webhook
                    .as_ref()
                    .is_none_or(|hook| field("url") == Some(hook.url.as_str()))
                && (rule.timer.is_none() || field("timer") == Some(rule.rule_ref.as_str()))
        })
    }

    /// The webhook an enabled rule listens on at `url`.
    pub fn webhook(&self, url: &str) -> Option<&crate::webhook::Webhook> {
        self.rules
            .iter()
            .filter(|rule| rule.enabled)
            .find_map(|rule| rule.webhook.as_ref().filter(|hook| hook.url == url))
    }

    /// Records the digest of a pack's published bundle, on the pack and on its actions.
    pub fn set_pack_digest(&mut self, pack: &str, digest: &str) {
        if let Some(found) = self.packs.get_mut(pack) {
            found.digest = Some(digest.to_owned());
        }
        for action in self.actions.values_mut() {
            if action.action_ref.pack() == pack {
                action.pack_digest = Some(digest.to_owned());
            }
        }
    }

    /// Seals the secrets of every pack's configuration for the run messages that carry it
    /// ([`crate::config::PackConfig::sealed`]).
    pub fn seal_configs(
        &mut self,
        keyring: &sluice_core::secrets::Keyring,
    ) -> Result<(), sluice_core::secrets::SecretsError> {
        for pack in self.packs.values_mut() {
            let Some(config) = &pack.config else {
                continue;
            };
            let mut sealed = crate::config::PackConfig::clone(config);
            sealed.sealed = Some(config.sealed_values(keyring)?);
            let sealed = std::sync::Arc::new(sealed);
            for action in self.actions.values_mut() {
                if action.action_ref.pack() == pack.name {
                    action.config = Some(sealed.clone());
                }
            }
            pack.config = Some(sealed);
        }
        Ok(())
    }

    /// The directory an action's `entry_point` is relative to.
    pub fn actions_dir(&self, action_ref: &ActionRef) -> Option<PathBuf> {
        self.packs
            .get(action_ref.pack())
            .map(|pack| pack.dir.join("actions"))
    }
}

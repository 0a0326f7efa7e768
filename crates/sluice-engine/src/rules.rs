//! From a trigger payload to the executions its rules request.

use serde::Serialize;
use serde_json::{Map, Value};
use sluice_core::secrets::Keyring;
use sluice_pack::datastore::{Kv, opened_during};
use sluice_pack::{Catalog, Mismatch, Rule, params, template::ParamTemplate};
use sluice_store::Firing;

/// One rule that fired: what is stored, and the parameters to run with — the same, secret
/// ones sealed.
#[derive(Debug, Clone)]
pub struct Planned {
    pub firing: Firing,
    pub parameters: Map<String, Value>,
}

/// Matches the enabled rules of `trigger` against `payload` and renders each firing rule's
/// parameters. A rule whose parameters cannot be rendered or do not fit the action still
/// fires: its execution is recorded as failed with the reason, so the operator sees why.
///
/// `secrets` are the texts of the payload's secret properties: a parameter rendered from
/// one is sealed, and no error message quotes one.
///
/// Templates see the datastore as `st2kv` (`st2kv.pack` being the rule's pack); a value
/// `decrypt_kv` opened counts as a secret too.
pub fn plan(
    catalog: &Catalog,
    keyring: &Keyring,
    kv: &Kv,
    trigger: &str,
    payload: &Value,
    secrets: &[String],
) -> Vec<Planned> {
    catalog
        .rules_hearing(trigger, payload)
        .filter(|rule| {
            let kv = kv.for_pack(rule_pack(rule));
            rule.criteria
                .iter()
                .all(|c| c.matches_with(payload, Some(&kv)))
        })
        .filter_map(|rule| plan_rule(catalog, keyring, kv, rule, payload, secrets))
        .collect()
}

/// The execution `rule` requests for `payload`, whether or not it matches: its rendered
/// parameters, or why they could not be. `None` if its action is unknown.
pub fn plan_rule(
    catalog: &Catalog,
    keyring: &Keyring,
    kv: &Kv,
    rule: &Rule,
    payload: &Value,
    secrets: &[String],
) -> Option<Planned> {
    let action = catalog.action(&rule.action)?;
    let pack = rule_pack(rule);
    let kv = kv.for_pack(pack);
    let (rendered, opened) = opened_during(|| {
        render(&rule.parameters, payload, &kv)
            .and_then(|given| params::render_defaults(action, given, &kv))
    });
    let mut secrets = secrets.to_vec();
    secrets.extend(opened);
    let resolved = rendered
        .and_then(|given| params::resolve(action, given).map_err(|e| e.to_string()))
        .and_then(|parameters| params::seal(keyring, action, &parameters, &secrets))
        .map_err(|e| sluice_core::secrets::scrub(&e, &secrets));
    Some(match resolved {
        Ok(parameters) => Planned {
            firing: Firing {
                rule: rule.rule_ref.clone(),
                action: rule.action.clone(),
                parameters: parameters.clone(),
                failed: None,
                traceparent: None,
                admitted: false,
            },
            parameters,
        },
        Err(reason) => Planned {
            firing: Firing {
                rule: rule.rule_ref.clone(),
                action: rule.action.clone(),
                parameters: Map::new(),
                failed: Some(format!("rule {}: {reason}", rule.rule_ref)),
                traceparent: None,
                admitted: false,
            },
            parameters: Map::new(),
        },
    })
}

/// How one rule judged a payload of its trigger.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub rule: String,
    pub enabled: bool,
    /// Its criteria hold (a disabled rule is judged too, but fires nothing).
    pub matched: bool,
    /// When it did not match: the first check that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

/// How every rule on `trigger`, enabled or not, judges `payload`, in load order.
pub fn explain(catalog: &Catalog, kv: &Kv, trigger: &str, payload: &Value) -> Vec<Verdict> {
    catalog
        .rules_on(trigger)
        .map(|rule| {
            let judged = rule.judge(payload, Some(&kv.for_pack(rule_pack(rule))));
            Verdict {
                rule: rule.rule_ref.clone(),
                enabled: rule.enabled,
                matched: judged.is_ok(),
                mismatch: judged.err(),
            }
        })
        .collect()
}

/// The pack a rule belongs to: whose keys `st2kv.pack` reads in its templates.
fn rule_pack(rule: &Rule) -> &str {
    rule.rule_ref.split('.').next().unwrap_or_default()
}

fn render(
    templates: &std::collections::BTreeMap<String, ParamTemplate>,
    payload: &Value,
    kv: &Kv,
) -> Result<Map<String, Value>, String> {
    templates
        .iter()
        .map(|(name, template)| {
            Ok((
                name.clone(),
                template
                    .render(payload, Some(kv))
                    .map_err(|e| format!("parameter {name}: {e}"))?,
            ))
        })
        .collect()
}

/// What testing a rule against a payload found, without firing anything: StackStorm's rule
/// tester.
#[derive(Debug, Clone, Serialize)]
pub struct RuleTest {
    pub rule: String,
    pub trigger: String,
    pub enabled: bool,
    /// Why the payload does not fit the trigger's schema (such an event is rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
    pub matched: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
    /// The action it would run, when it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The parameters it would run with, secret ones masked, when it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Why the parameters could not be rendered, when it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Tests `rule` against `payload` as if an event of its trigger carried it.
pub fn test(
    catalog: &Catalog,
    keyring: &Keyring,
    kv: &Kv,
    rule: &Rule,
    payload: &Value,
) -> RuleTest {
    let trigger = catalog.triggers.get(&rule.trigger);
    let payload_error = match trigger {
        None => Some(format!("unknown trigger {:?}", rule.trigger)),
        Some(trigger) => trigger.validate_payload(payload).err(),
    };
    let secrets = trigger
        .zip(payload.as_object())
        .map(|(trigger, values)| {
            sluice_core::secrets::secret_texts(trigger.secret_properties(), values)
        })
        .unwrap_or_default();
    let judged = rule.judge(payload, Some(&kv.for_pack(rule_pack(rule))));
    let mut test = RuleTest {
        rule: rule.rule_ref.clone(),
        trigger: rule.trigger.clone(),
        enabled: rule.enabled,
        payload_error,
        matched: judged.is_ok(),
        mismatch: judged.err(),
        action: None,
        parameters: None,
        error: None,
    };
    if test.matched
        && let Some(planned) = plan_rule(catalog, keyring, kv, rule, payload, &secrets)
    {
        test.action = Some(rule.action.to_string());
        match planned.firing.failed {
            Some(reason) => test.error = Some(reason),
            None => {
                test.parameters = Some(sluice_core::secrets::masked(&Value::Object(
                    planned.parameters,
                )))
            }
        }
    }
    test
}

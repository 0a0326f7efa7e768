//! From a trigger payload to the executions its rules request.

use serde_json::{Map, Value};
use sluice_core::secrets::Keyring;
use sluice_pack::datastore::{Kv, opened_during};
use sluice_pack::{Catalog, params, template::ParamTemplate};
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
        .filter(|rule| rule.criteria.iter().all(|c| c.matches(payload)))
        .filter_map(|rule| {
            let action = catalog.action(&rule.action)?;
            let pack = rule.rule_ref.split('.').next().unwrap_or_default();
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
                    },
                    parameters: Map::new(),
                },
            })
        })
        .collect()
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

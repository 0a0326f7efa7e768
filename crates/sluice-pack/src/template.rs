//! Jinja parameter templates over a trigger payload (`{{ trigger.host }}`).
//!
//! Where a template builds text a shell reads — the `cmd` parameter of a `local-shell-cmd`
//! action, or a parameter marked `shell: true` — every inserted value is quoted for the
//! place it sits in ([`crate::shell`]), so a payload cannot inject commands, and no filter
//! can opt out. A template that is exactly one
//! expression keeps the expression's JSON type (`"{{ trigger.count }}"` stays a number).
//! Undefined values are errors: a command is never run with a silently empty argument.
//!
//! Workflow templates use the same environments, with Orquesta's functions (`ctx()`,
//! `item()`, `result()`, `succeeded()`, `task('name')`, ...) over a workflow scope.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use minijinja::value::{Serde, Value as JinjaValue};
use minijinja::{Environment, Expression, UndefinedBehavior};
use serde_json::Value;

use crate::datastore::Kv;

static PLAIN: LazyLock<Environment<'static>> = LazyLock::new(environment);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    crate::expressions::register(&mut env);
    env.add_filter("decrypt_kv", crate::datastore::decrypt_kv);
    // What a shell template's insertions are rewritten to call ([`crate::shell`]). They
    // quote whatever they get, safe-marked or not.
    let quoting = |quote: fn(&str) -> String| {
        move |value: JinjaValue| {
            if value.is_undefined() {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::UndefinedError,
                    "undefined value",
                ));
            }
            let text = if value.is_none() {
                String::new()
            } else {
                value.to_string()
            };
            Ok(JinjaValue::from_safe_string(quote(&text)))
        }
    };
    env.add_function(
        "__shell_word",
        quoting(|t| crate::shell::quote_word(t).into_owned()),
    );
    env.add_function("__shell_in_single", quoting(crate::shell::quote_in_single));
    env.add_function("__shell_in_double", quoting(crate::shell::quote_in_double));
    env
}

/// A parameter value from a rule: JSON whose strings may be templates.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTemplate {
    pub source: Value,
    /// A shell reads it: values inserted into it are made inert ([`crate::shell`]).
    pub shell: bool,
    /// What renders: `source`, or for a shell template, `source` with every insertion
    /// quoted for where it sits.
    text: Value,
    /// Each string of `text` that is exactly one expression, compiled once.
    expressions: Expressions,
}

/// Compiled sole expressions by their template text. Shared by clones; derived from the
/// text, so two templates with the same text are equal whatever this holds.
#[derive(Clone, Default)]
struct Expressions(Arc<HashMap<String, Expression<'static, 'static>>>);

impl PartialEq for Expressions {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Expressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} compiled expressions", self.0.len())
    }
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression of a template that is exactly `{{ expr }}`.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

impl ParamTemplate {
    /// Checks every template in the value compiles; the error names the problem.
    pub fn compile(source: Value, shell: bool) -> Result<Self, String> {
        type Compiled = HashMap<String, Expression<'static, 'static>>;
        fn prepare(value: &Value, shell: bool, compiled: &mut Compiled) -> Result<Value, String> {
            match value {
                Value::String(s) if is_template(s) => {
                    let text = if shell {
                        crate::shell::rewrite(s)
                            .map_err(|e| format!("invalid template {s:?}: {e}"))?
                    } else {
                        s.clone()
                    };
                    PLAIN
                        .template_from_str(&text)
                        .map_err(|e| format!("invalid template {s:?}: {e}"))?;
                    if !shell && let Some(expr) = sole_expression(&text) {
                        let expression = PLAIN
                            .compile_expression_owned(expr.to_owned())
                            .map_err(|e| format!("invalid template {s:?}: {e}"))?;
                        compiled.insert(text.clone(), expression);
                    }
                    Ok(Value::String(text))
                }
                Value::Array(items) => items
                    .iter()
                    .map(|v| prepare(v, shell, compiled))
                    .collect::<Result<_, _>>()
                    .map(Value::Array),
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), prepare(v, shell, compiled)?)))
                    .collect::<Result<_, String>>()
                    .map(Value::Object),
                other => Ok(other.clone()),
            }
        }
        let mut compiled = Compiled::new();
        let text = prepare(&source, shell, &mut compiled)?;
        Ok(Self {
            source,
            shell,
            text,
            expressions: Expressions(Arc::new(compiled)),
        })
    }

    /// Renders against `{"trigger": payload}`, and `st2kv` when a datastore is given.
    pub fn render(&self, payload: &Value, kv: Option<&Kv>) -> Result<Value, String> {
        let ctx = minijinja::context! {
            trigger => JinjaValue::from(Serde(payload)),
            st2kv => kv.map(Kv::value),
        };
        self.render_value(&self.text, &ctx)
    }

    /// Renders an action parameter's default: `st2kv`, and `config_context` — its pack's
    /// configuration — when the pack has one.
    pub fn render_default(
        &self,
        kv: &Kv,
        config: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Value, String> {
        let ctx = minijinja::context! {
            st2kv => kv.value(),
            config_context => config.map(|c| JinjaValue::from(Serde(c))),
        };
        self.render_value(&self.text, &ctx)
    }

    /// Renders against the names of `scope` (a JSON object), and `st2kv` when a datastore
    /// is given.
    pub fn render_in(&self, scope: &Value, kv: Option<&Kv>) -> Result<Value, String> {
        let ctx = match kv {
            Some(kv) => minijinja::context! {
                st2kv => kv.value(),
                ..JinjaValue::from(Serde(scope))
            },
            None => JinjaValue::from(Serde(scope)),
        };
        self.render_value(&self.text, &ctx)
    }

    fn render_value(&self, value: &Value, ctx: &JinjaValue) -> Result<Value, String> {
        match value {
            Value::String(s) if is_template(s) => {
                if let Some(compiled) = self.expressions.0.get(s) {
                    let out = compiled
                        .eval(ctx.clone())
                        .map_err(|e| format!("{s:?}: {e}"))?;
                    if out.is_undefined() {
                        return Err(format!("{s:?}: undefined value"));
                    }
                    return serde_json::to_value(&out).map_err(|e| format!("{s:?}: {e}"));
                }
                PLAIN
                    .render_str(s, ctx.clone())
                    .map(Value::String)
                    .map_err(|e| format!("{s:?}: {e}"))
            }
            Value::Array(items) => items
                .iter()
                .map(|v| self.render_value(v, ctx))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.render_value(v, ctx)?)))
                .collect::<Result<_, String>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(source: Value, shell: bool, payload: Value) -> Result<Value, String> {
        ParamTemplate::compile(source, shell)?.render(&payload, None)
    }

    #[test]
    fn shell_templates_quote_every_inserted_value() {
        let out = render(
            json!("ping -c1 {{ trigger.host }}"),
            true,
            json!({"host": "db1; rm -rf /"}),
        )
        .unwrap();
        assert_eq!(out, json!("ping -c1 'db1; rm -rf /'"));
        let out = render(
            json!("echo {{ trigger.q }}"),
            true,
            json!({"q": "it's $(id)"}),
        )
        .unwrap();
        assert_eq!(out, json!(r"echo 'it'\''s $(id)'"));
        let out = render(
            json!("ping -c1 {{ trigger.host }}"),
            true,
            json!({"host": "db1.example"}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!("ping -c1 db1.example"),
            "plain words stay readable"
        );
    }

    #[test]
    fn no_filter_bypasses_shell_quoting() {
        for source in [
            "{{ trigger.cmd | safe }}",
            "{{ trigger.cmd | tojson }}",
            "{{ trigger.cmd | tojson | safe }}",
        ] {
            let out = render(json!(source), true, json!({"cmd": "$(id)"})).unwrap();
            let out = out.as_str().unwrap();
            assert!(
                out.starts_with('\'') && out.ends_with('\''),
                "{source}: {out}"
            );
        }
    }

    #[test]
    fn plain_templates_keep_text_and_types() {
        let out = render(
            json!("host {{ trigger.host }} is down"),
            false,
            json!({"host": "a b"}),
        )
        .unwrap();
        assert_eq!(out, json!("host a b is down"));
        let out = render(json!("{{ trigger.count }}"), false, json!({"count": 3})).unwrap();
        assert_eq!(out, json!(3));
        let out = render(
            json!({"list": ["{{ trigger.a }}", 2]}),
            false,
            json!({"a": true}),
        )
        .unwrap();
        assert_eq!(out, json!({"list": [true, 2]}));
    }

    #[test]
    fn undefined_values_are_errors() {
        let err = render(json!("ping {{ trigger.host }}"), true, json!({})).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(render(json!("{{ trigger.host }}"), false, json!({})).is_err());
    }

    #[test]
    fn syntax_errors_are_found_when_compiling() {
        assert!(ParamTemplate::compile(json!("{{ trigger.host "), false).is_err());
    }
}

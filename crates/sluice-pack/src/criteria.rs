//! Rule criteria with StackStorm's operators and semantics.
//!
//! A criterion is `{ "trigger.path.to.field": { type: OPERATOR, pattern: VALUE } }`. The
//! payload value at the path is the left operand, the pattern the right one. A missing field
//! is `null`: every operator but `nexists` is false on it, as in StackStorm. Operators
//! compare values of matching kinds; `lessthan`/`greaterthan` also read a numeric string as
//! a number, since payloads published by hand often carry numbers as text.
//!
//! A key is a dotted path (`trigger.body.host`); a part may be bracketed and quoted, for
//! names with dots or dashes (`trigger.headers['X-Request-Id']`), or an array index
//! (`trigger.hosts[0]`). A pattern may be a template (`"{{ st2kv.system.threshold }}"`),
//! rendered against the payload (as `trigger`) and the datastore each time it is matched.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDateTime, Utc};
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Every operator name StackStorm accepts, aliases included.
pub const OPERATOR_NAMES: &[&str] = &[
    "equals",
    "eq",
    "nequals",
    "neq",
    "iequals",
    "ieq",
    "contains",
    "ncontains",
    "icontains",
    "incontains",
    "startswith",
    "istartswith",
    "endswith",
    "iendswith",
    "matchwildcard",
    "matchregex",
    "regex",
    "iregex",
    "lessthan",
    "lt",
    "greaterthan",
    "gt",
    "timediff_lt",
    "td_lt",
    "timediff_gt",
    "td_gt",
    "exists",
    "nexists",
    "inside",
    "in",
    "ninside",
    "nin",
    "search",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    NEquals,
    IEquals,
    Contains,
    NContains,
    IContains,
    INContains,
    StartsWith,
    IStartsWith,
    EndsWith,
    IEndsWith,
    MatchWildcard,
    /// `matchregex`: Python's `re.match` with `re.DOTALL`.
    MatchRegex,
    /// `regex`, `iregex`: Python's `re.search`.
    Regex,
    IRegex,
    LessThan,
    GreaterThan,
    TimeDiffLt,
    TimeDiffGt,
    Exists,
    NExists,
    Inside,
    NInside,
    Search,
}

fn parse_op(name: &str) -> Option<Op> {
    Some(match name {
        "equals" | "eq" => Op::Equals,
        "nequals" | "neq" => Op::NEquals,
        "iequals" | "ieq" => Op::IEquals,
        "contains" => Op::Contains,
        "ncontains" => Op::NContains,
        "icontains" => Op::IContains,
        "incontains" => Op::INContains,
        "startswith" => Op::StartsWith,
        "istartswith" => Op::IStartsWith,
        "endswith" => Op::EndsWith,
        "iendswith" => Op::IEndsWith,
        "matchwildcard" => Op::MatchWildcard,
        "matchregex" => Op::MatchRegex,
        "regex" => Op::Regex,
        "iregex" => Op::IRegex,
        "lessthan" | "lt" => Op::LessThan,
        "greaterthan" | "gt" => Op::GreaterThan,
        "timediff_lt" | "td_lt" => Op::TimeDiffLt,
        "timediff_gt" | "td_gt" => Op::TimeDiffGt,
        "exists" => Op::Exists,
        "nexists" => Op::NExists,
        "inside" | "in" => Op::Inside,
        "ninside" | "nin" => Op::NInside,
        "search" => Op::Search,
        _ => return None,
    })
}

/// How `search` combines its item patterns (StackStorm's four conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SearchCondition {
    /// Some item matches every pattern.
    Any,
    /// Every item matches every pattern.
    All,
    /// Some item matches some pattern.
    AnyToAny,
    /// Every item matches some pattern.
    AllToAny,
}

#[derive(Debug, Clone)]
enum Compiled {
    Plain,
    Regex(Regex),
    Search {
        condition: SearchCondition,
        items: Vec<Criterion>,
    },
}

/// One compiled criterion.
#[derive(Debug, Clone)]
pub struct Criterion {
    /// The key as written, e.g. `trigger.severity`.
    pub key: String,
    path: Vec<String>,
    op: Op,
    pub operator: String,
    pub pattern: Value,
    compiled: Compiled,
    /// The pattern, when it is a template: rendered, then compiled, at each match.
    template: Option<crate::template::ParamTemplate>,
}

impl Criterion {
    /// Compiles a criterion whose key must start with `prefix` (`trigger` in rules, `item`
    /// inside `search`). Errors name what is wrong, for the loader to place in its file.
    pub fn compile(
        prefix: &str,
        key: &str,
        operator: &str,
        pattern: Value,
    ) -> Result<Self, String> {
        let op = parse_op(operator).ok_or_else(|| {
            format!(
                "unknown operator {operator:?}; known operators: {}",
                OPERATOR_NAMES.join(", ")
            )
        })?;
        let rest = key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| format!("criteria key {key:?} must start with `{prefix}.`"))?;
        let path = parse_path(rest).map_err(|e| format!("criteria key {key:?}: {e}"))?;
        let template = match &pattern {
            Value::String(text) if text.contains("{{") || text.contains("{%") => Some(
                crate::template::ParamTemplate::compile(pattern.clone(), false)
                    .map_err(|e| format!("pattern: {e}"))?,
            ),
            _ => None,
        };
        let compiled = if template.is_some() {
            Compiled::Plain
        } else {
            compile_pattern(op, operator, &pattern)?
        };
        Ok(Self {
            key: key.to_owned(),
            path,
            op,
            operator: operator.to_owned(),
            pattern,
            compiled,
            template,
        })
    }

    /// The value this criterion looks at in `root`, if there is one.
    pub fn seen<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        lookup(root, &self.path)
    }

    /// Whether the value at this criterion's path in `root` satisfies it. A templated
    /// pattern is rendered with `root` as `trigger` and no datastore; see
    /// [`Criterion::matches_with`].
    pub fn matches(&self, root: &Value) -> bool {
        self.matches_with(root, None)
    }

    /// [`Criterion::matches`], a templated pattern seeing the datastore as `st2kv`. A
    /// pattern that does not render, or renders to one its operator cannot take, matches
    /// nothing.
    pub fn matches_with(&self, root: &Value, kv: Option<&crate::datastore::Kv>) -> bool {
        let Some(template) = &self.template else {
            return self.matches_compiled(root, &self.pattern, &self.compiled);
        };
        let Ok(pattern) = template.render(root, kv) else {
            return false;
        };
        match compile_pattern(self.op, &self.operator, &pattern) {
            Ok(compiled) => self.matches_compiled(root, &pattern, &compiled),
            Err(_) => false,
        }
    }
}

/// A key's path after its prefix: dotted parts, or bracketed ones (`['X-Name']`, `[0]`).
fn parse_path(rest: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    // Whether a bracketed part just ended: a dot may follow it without a name before.
    let mut after_bracket = false;
    while let Some(c) = chars.next() {
        let bracket_ended = std::mem::take(&mut after_bracket);
        match c {
            '.' => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                } else if !bracket_ended {
                    return Err("an empty part (two dots, or a dot at the end)".into());
                }
            }
            '[' => {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
                let quote = chars.next_if(|c| *c == '\'' || *c == '"');
                let mut inner = String::new();
                loop {
                    match (chars.next(), quote) {
                        (Some(q), Some(open)) if q == open => {
                            if chars.next() != Some(']') {
                                return Err("a quoted part must end with `]`".into());
                            }
                            break;
                        }
                        (Some(']'), None) => break,
                        (Some(c), _) => inner.push(c),
                        (None, _) => return Err("a `[` without its `]`".into()),
                    }
                }
                if quote.is_none() && inner.parse::<usize>().is_err() {
                    return Err(format!(
                        "[{inner}] is neither an index nor a quoted name (['{inner}'])"
                    ));
                }
                parts.push(inner);
                after_bracket = true;
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        parts.push(current);
    } else if rest.ends_with('.') {
        return Err("an empty part (two dots, or a dot at the end)".into());
    }
    if parts.is_empty() {
        return Err("no field named".into());
    }
    Ok(parts)
}

/// What an operator needs compiled from its pattern (regexes, search items).
fn compile_pattern(op: Op, operator: &str, pattern: &Value) -> Result<Compiled, String> {
    let pattern_str = || {
        pattern
            .as_str()
            .ok_or_else(|| format!("operator {operator} needs a string pattern"))
    };
    let compiled = match op {
        Op::MatchRegex | Op::Regex | Op::IRegex => {
            // As StackStorm: `matchregex` is Python's `re.match` with `re.DOTALL`
            // (anchored at the start, `.` matches newlines); `regex` and `iregex` are
            // `re.search` (anywhere in the value).
            let source = if op == Op::MatchRegex {
                format!("^(?:{})", pattern_str()?)
            } else {
                pattern_str()?.to_owned()
            };
            let regex = RegexBuilder::new(&source)
                .dot_matches_new_line(op == Op::MatchRegex)
                .case_insensitive(op == Op::IRegex)
                .build()
                .map_err(|e| format!("invalid regex pattern: {e}"))?;
            Compiled::Regex(regex)
        }
        Op::MatchWildcard => Compiled::Regex(wildcard_regex(pattern_str()?)),
        Op::TimeDiffLt | Op::TimeDiffGt if !pattern.is_number() => {
            return Err(format!(
                "operator {operator} needs a number of seconds as pattern"
            ));
        }
        Op::Search => compile_search(pattern)?,
        _ => Compiled::Plain,
    };
    Ok(compiled)
}

impl Criterion {
    fn matches_compiled(&self, root: &Value, pattern: &Value, compiled: &Compiled) -> bool {
        let value = lookup(root, &self.path);
        match (self.op, value) {
            (Op::Exists, value) => value.is_some_and(|v| !v.is_null()),
            (Op::NExists, value) => value.is_none_or(Value::is_null),
            (_, None | Some(Value::Null)) => false,
            (Op::Equals, Some(v)) => json_eq(v, pattern),
            (Op::NEquals, Some(v)) => !json_eq(v, pattern),
            (Op::IEquals, Some(v)) => {
                both_str(v, pattern, |a, b| a.to_lowercase() == b.to_lowercase())
            }
            (Op::Contains, Some(v)) => contains(v, pattern),
            (Op::NContains, Some(v)) => !contains(v, pattern),
            (Op::IContains, Some(v)) => both_str(v, pattern, |a, b| {
                a.to_lowercase().contains(&b.to_lowercase())
            }),
            (Op::INContains, Some(v)) => both_str(v, pattern, |a, b| {
                !a.to_lowercase().contains(&b.to_lowercase())
            }),
            (Op::StartsWith, Some(v)) => both_str(v, pattern, |a, b| a.starts_with(b)),
            (Op::IStartsWith, Some(v)) => both_str(v, pattern, |a, b| {
                a.to_lowercase().starts_with(&b.to_lowercase())
            }),
            (Op::EndsWith, Some(v)) => both_str(v, pattern, |a, b| a.ends_with(b)),
            (Op::IEndsWith, Some(v)) => both_str(v, pattern, |a, b| {
                a.to_lowercase().ends_with(&b.to_lowercase())
            }),
            (
                Op::MatchWildcard | Op::MatchRegex | Op::Regex | Op::IRegex,
                Some(Value::String(s)),
            ) => match compiled {
                Compiled::Regex(regex) => regex.is_match(s),
                _ => false,
            },
            (Op::MatchWildcard | Op::MatchRegex | Op::Regex | Op::IRegex, Some(_)) => false,
            (Op::LessThan, Some(v)) => compare(v, pattern) == Some(Ordering::Less),
            (Op::GreaterThan, Some(v)) => compare(v, pattern) == Some(Ordering::Greater),
            (Op::TimeDiffLt, Some(v)) => age_seconds(v)
                .zip(pattern.as_f64())
                .is_some_and(|(age, limit)| age < limit),
            (Op::TimeDiffGt, Some(v)) => age_seconds(v)
                .zip(pattern.as_f64())
                .is_some_and(|(age, limit)| age > limit),
            (Op::Inside, Some(v)) => contains(pattern, v),
            (Op::NInside, Some(v)) => !contains(pattern, v),
            (Op::Search, Some(Value::Array(list))) => match compiled {
                Compiled::Search { condition, items } => search(list, *condition, items),
                _ => false,
            },
            (Op::Search, Some(_)) => false,
        }
    }
}

/// Looks a dotted path up in JSON; numeric segments index arrays.
pub fn lookup<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(list) => segment.parse::<usize>().ok().and_then(|i| list.get(i)),
        _ => None,
    })
}

fn compile_search(pattern: &Value) -> Result<Compiled, String> {
    let condition = match pattern.get("condition").and_then(Value::as_str) {
        Some("any") => SearchCondition::Any,
        Some("all") => SearchCondition::All,
        Some("any2any") => SearchCondition::AnyToAny,
        Some("all2any") => SearchCondition::AllToAny,
        other => {
            return Err(format!(
                "search needs `condition: any|all|any2any|all2any`, found {}",
                other.map_or_else(|| "none".to_owned(), |c| format!("{c:?}"))
            ));
        }
    };
    let Some(Value::Object(map)) = pattern.get("pattern") else {
        return Err("search needs `pattern:` mapping `item.FIELD` to `{type, pattern}`".to_owned());
    };
    let items = map
        .iter()
        .map(|(key, spec)| {
            let operator = spec
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("search pattern {key}: missing `type`"))?;
            let inner = spec.get("pattern").cloned().unwrap_or(Value::Null);
            Criterion::compile("item", key, operator, inner)
                .map_err(|e| format!("search pattern {key}: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Compiled::Search { condition, items })
}

fn search(list: &[Value], condition: SearchCondition, items: &[Criterion]) -> bool {
    let all_match = |item: &Value| items.iter().all(|c| c.matches(item));
    let some_match = |item: &Value| items.iter().any(|c| c.matches(item));
    match condition {
        SearchCondition::Any => list.iter().any(all_match),
        SearchCondition::All => !list.is_empty() && list.iter().all(all_match),
        SearchCondition::AnyToAny => list.iter().any(some_match),
        SearchCondition::AllToAny => !list.is_empty() && list.iter().all(some_match),
    }
}

/// Translates a shell wildcard (Python's `fnmatch`) into an anchored regex.
fn wildcard_regex(pattern: &str) -> Regex {
    let mut source = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => source.push_str(".*"),
            '?' => source.push('.'),
            '[' => {
                let class: String = chars.clone().take_while(|&c| c != ']').collect();
                if chars.clone().nth(class.chars().count()) == Some(']') {
                    for _ in 0..=class.chars().count() {
                        chars.next();
                    }
                    let (negate, body) = match class.strip_prefix('!') {
                        Some(body) => ("^", body),
                        None => ("", class.as_str()),
                    };
                    let body = body.replace('\\', "\\\\").replace('[', "\\[");
                    source.push_str(&format!("[{negate}{body}]"));
                } else {
                    source.push_str("\\[");
                }
            }
            c => source.push_str(&regex::escape(&c.to_string())),
        }
    }
    source.push('$');
    RegexBuilder::new(&source)
        .dot_matches_new_line(true)
        .build()
        .unwrap_or_else(|_| {
            Regex::new(&format!("^{}$", regex::escape(pattern))).expect("escaped regex compiles")
        })
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn both_str(a: &Value, b: &Value, f: impl Fn(&str, &str) -> bool) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => f(a, b),
        _ => false,
    }
}

/// Python's `needle in haystack` for JSON: substring, list membership or object key.
fn contains(haystack: &Value, needle: &Value) -> bool {
    match (haystack, needle) {
        (Value::String(h), Value::String(n)) => h.contains(n.as_str()),
        (Value::Array(items), n) => items.iter().any(|item| json_eq(item, n)),
        (Value::Object(map), Value::String(key)) => map.contains_key(key),
        _ => false,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(value: &Value, pattern: &Value) -> Option<Ordering> {
    match (value, pattern) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => as_number(value)?.partial_cmp(&as_number(pattern)?),
    }
}

/// Seconds from a timestamp in the payload until now (RFC 3339, or naive UTC).
fn age_seconds(value: &Value) -> Option<f64> {
    let text = value.as_str()?;
    let at = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|t| t.and_utc())
        })
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .ok()?;
    Some((Utc::now() - at).num_milliseconds() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(op: &str, pattern: Value, payload: Value) -> bool {
        Criterion::compile("trigger", "trigger.v", op, pattern)
            .unwrap()
            .matches(&json!({ "v": payload }))
    }

    /// StackStorm's operators, by every name it accepts, on the values its documentation
    /// uses: (operator, pattern, value, matches).
    #[test]
    fn every_operator_and_alias_as_stackstorm_documents_it() {
        let now = Utc::now();
        let ago = |seconds: i64| (now - chrono::Duration::seconds(seconds)).to_rfc3339();
        let table = [
            ("equals", json!("a"), json!("a"), true),
            ("eq", json!(3), json!(3), true),
            ("nequals", json!("a"), json!("b"), true),
            ("neq", json!("a"), json!("a"), false),
            ("iequals", json!("ABC"), json!("abc"), true),
            ("ieq", json!("ABC"), json!("abd"), false),
            ("contains", json!("err"), json!("an error"), true),
            ("ncontains", json!("err"), json!("fine"), true),
            ("icontains", json!("ERR"), json!("an error"), true),
            ("incontains", json!("ERR"), json!("an error"), false),
            ("startswith", json!("db"), json!("db1"), true),
            ("istartswith", json!("DB"), json!("db1"), true),
            ("endswith", json!(".com"), json!("a.com"), true),
            ("iendswith", json!(".COM"), json!("a.com"), true),
            ("matchwildcard", json!("db*"), json!("db12"), true),
            ("matchwildcard", json!("db?"), json!("db12"), false),
            ("regex", json!("rr"), json!("an error"), true),
            ("regex", json!("^rr"), json!("an error"), false),
            ("iregex", json!("ERR"), json!("an error"), true),
            ("matchregex", json!("rr"), json!("an error"), false),
            ("matchregex", json!("an.err"), json!("an\nerror"), true),
            ("lessthan", json!(5), json!(3), true),
            ("lt", json!(5), json!("3"), true),
            ("greaterthan", json!(5), json!(7), true),
            ("gt", json!(5), json!(5), false),
            ("timediff_lt", json!(60), json!(ago(10)), true),
            ("td_lt", json!(60), json!(ago(600)), false),
            ("timediff_gt", json!(60), json!(ago(600)), true),
            ("td_gt", json!(60), json!(ago(10)), false),
            ("exists", json!(null), json!(0), true),
            ("nexists", json!(null), json!(0), false),
            ("inside", json!(["a", "b"]), json!("b"), true),
            ("in", json!("a,b"), json!("c"), false),
            ("ninside", json!(["a"]), json!("b"), true),
            ("nin", json!(["a"]), json!("a"), false),
        ];
        for (op, pattern, value, expected) in table {
            assert_eq!(
                check(op, pattern.clone(), value.clone()),
                expected,
                "{op} {pattern} on {value}"
            );
        }
        let named: std::collections::BTreeSet<&str> = OPERATOR_NAMES.iter().copied().collect();
        for op in ["ieq", "td_lt", "td_gt", "search"] {
            assert!(named.contains(op), "{op} is a known name");
        }
    }

    #[test]
    fn keys_may_bracket_names_with_dots_and_dashes() {
        let payload =
            json!({"headers": {"X-Request-Id": "r-1", "a.b": 2}, "hosts": ["db1", "db2"]});
        let at = |key: &str| {
            Criterion::compile("trigger", key, "exists", Value::Null)
                .map(|c| c.seen(&payload).cloned())
        };
        assert_eq!(
            at("trigger.headers['X-Request-Id']"),
            Ok(Some(json!("r-1")))
        );
        assert_eq!(at("trigger.headers[\"a.b\"]"), Ok(Some(json!(2))));
        assert_eq!(at("trigger.hosts[1]"), Ok(Some(json!("db2"))));
        assert_eq!(at("trigger.hosts.0"), Ok(Some(json!("db1"))));
        for broken in [
            "trigger.a..b",
            "trigger.a.",
            "trigger.h[x]",
            "trigger.h['x'",
        ] {
            assert!(at(broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn templated_patterns_render_against_the_payload_and_datastore() {
        struct Keys;
        impl crate::datastore::KeyLookup for Keys {
            fn value(&self, key: &sluice_core::datastore::KeyName) -> Option<Value> {
                (key.to_string() == "system.threshold").then(|| json!(80))
            }
            fn open(&self, _: &str) -> Result<Value, String> {
                Err("no secrets here".into())
            }
        }
        let kv = crate::datastore::Kv::new(std::sync::Arc::new(Keys), None);
        let above = Criterion::compile(
            "trigger",
            "trigger.load",
            "greaterthan",
            json!("{{ st2kv.system.threshold }}"),
        )
        .unwrap();
        assert!(above.matches_with(&json!({"load": 90}), Some(&kv)));
        assert!(!above.matches_with(&json!({"load": 70}), Some(&kv)));
        assert!(
            !above.matches(&json!({"load": 90})),
            "no datastore: nothing matches"
        );
        let same_host = Criterion::compile(
            "trigger",
            "trigger.reported_by",
            "regex",
            json!("^{{ trigger.host }}$"),
        )
        .unwrap();
        assert!(same_host.matches(&json!({"host": "db1", "reported_by": "db1"})));
        assert!(!same_host.matches(&json!({"host": "db1", "reported_by": "db12"})));
    }

    #[test]
    fn equality_operators() {
        assert!(check("equals", json!("critical"), json!("critical")));
        assert!(check("eq", json!(3), json!(3.0)));
        assert!(!check("equals", json!("3"), json!(3)));
        assert!(check("nequals", json!("a"), json!("b")));
        assert!(!check("nequals", json!("a"), json!("a")));
        assert!(check("iequals", json!("CRITICAL"), json!("Critical")));
        assert!(!check("iequals", json!("1"), json!(1)));
    }

    #[test]
    fn containment_operators() {
        assert!(check("contains", json!("db"), json!("db1.example")));
        assert!(check("contains", json!("b"), json!(["a", "b"])));
        assert!(check("contains", json!("k"), json!({"k": 1})));
        assert!(!check("contains", json!("z"), json!("db1")));
        assert!(check("ncontains", json!("z"), json!("db1")));
        assert!(check("icontains", json!("DB"), json!("my-db1")));
        assert!(!check("icontains", json!("x"), json!("my-db1")));
        assert!(check("incontains", json!("X"), json!("my-db1")));
        assert!(!check("incontains", json!("DB"), json!("my-db1")));
    }

    #[test]
    fn prefix_and_suffix_operators() {
        assert!(check("startswith", json!("db"), json!("db1")));
        assert!(!check("startswith", json!("DB"), json!("db1")));
        assert!(check("istartswith", json!("DB"), json!("db1")));
        assert!(check("endswith", json!(".com"), json!("a.com")));
        assert!(!check("endswith", json!(".COM"), json!("a.com")));
        assert!(check("iendswith", json!(".COM"), json!("a.com")));
        assert!(
            !check("startswith", json!("1"), json!(12)),
            "numbers are not strings"
        );
    }

    #[test]
    fn wildcard_and_regex_operators() {
        assert!(check(
            "matchwildcard",
            json!("db*.prod"),
            json!("db12.prod")
        ));
        assert!(check("matchwildcard", json!("db?"), json!("db1")));
        assert!(!check("matchwildcard", json!("db?"), json!("db12")));
        assert!(check("matchwildcard", json!("host[0-9]"), json!("host7")));
        assert!(!check("matchwildcard", json!("host[!0-9]"), json!("host7")));
        assert!(check("matchwildcard", json!("a.b"), json!("a.b")));
        assert!(
            !check("matchwildcard", json!("a.b"), json!("axb")),
            "dot is literal"
        );
        // matchregex is Python's re.match with DOTALL: anchored at the start only.
        assert!(check("matchregex", json!("db\\d+"), json!("db42-east")));
        assert!(!check("matchregex", json!("\\d+"), json!("db42")));
        assert!(
            check("matchregex", json!("a.b"), json!("a\nb")),
            "dot matches newline"
        );
        // regex and iregex are re.search: anywhere in the value, `.` not across lines.
        assert!(check("regex", json!("\\d+"), json!("db42")));
        assert!(check("regex", json!("east$"), json!("db42-east")));
        assert!(!check("regex", json!("^east"), json!("db42-east")));
        assert!(!check("regex", json!("a.b"), json!("a\nb")));
        assert!(check("iregex", json!("DB"), json!("the db1")));
        assert!(!check("regex", json!("DB"), json!("db1")));
    }

    #[test]
    fn ordering_operators() {
        assert!(check("lessthan", json!(10), json!(3)));
        assert!(!check("lt", json!(3), json!(3)));
        assert!(check("greaterthan", json!(10), json!(11.5)));
        assert!(
            check("gt", json!(10), json!("11")),
            "numeric strings compare as numbers"
        );
        assert!(!check("gt", json!(10), json!("eleven")));
        assert!(check("gt", json!("a"), json!("b")));
    }

    #[test]
    fn timediff_operators() {
        let recent = (Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
        let old = (Utc::now() - chrono::Duration::seconds(3600))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        assert!(check("timediff_lt", json!(60), json!(recent)));
        assert!(!check("timediff_gt", json!(60), json!(recent)));
        assert!(check("timediff_gt", json!(60), json!(old)));
        assert!(!check("timediff_lt", json!(60), json!(old)));
        assert!(!check("timediff_lt", json!(60), json!("not a date")));
        assert!(Criterion::compile("trigger", "trigger.v", "timediff_lt", json!("soon")).is_err());
    }

    #[test]
    fn existence_operators() {
        let exists = Criterion::compile("trigger", "trigger.a.b", "exists", Value::Null).unwrap();
        let nexists = Criterion::compile("trigger", "trigger.a.b", "nexists", Value::Null).unwrap();
        assert!(exists.matches(&json!({"a": {"b": 0}})));
        assert!(!exists.matches(&json!({"a": {}})));
        assert!(!exists.matches(&json!({"a": {"b": null}})));
        assert!(nexists.matches(&json!({"a": 1})));
        assert!(!nexists.matches(&json!({"a": {"b": false}})));
    }

    #[test]
    fn membership_operators() {
        assert!(check("inside", json!(["db1", "db2"]), json!("db2")));
        assert!(check("in", json!("db1,db2"), json!("db2")));
        assert!(!check("inside", json!(["db1"]), json!("db3")));
        assert!(check("ninside", json!(["db1"]), json!("db3")));
        assert!(check("nin", json!([1, 2]), json!(3)));
        assert!(!check("nin", json!([1, 2]), json!(2)));
    }

    #[test]
    fn missing_values_only_satisfy_nexists() {
        for op in OPERATOR_NAMES
            .iter()
            .filter(|op| !matches!(**op, "nexists" | "exists" | "search"))
        {
            let pattern = if op.starts_with("timediff") || op.starts_with("td_") {
                json!(1)
            } else {
                json!("x")
            };
            let criterion = Criterion::compile("trigger", "trigger.missing", op, pattern).unwrap();
            assert!(
                !criterion.matches(&json!({})),
                "{op} matched a missing value"
            );
        }
    }

    #[test]
    fn search_conditions() {
        let payload = json!({"v": [
            {"name": "db1", "state": "down"},
            {"name": "web1", "state": "up"},
        ]});
        let spec = |condition: &str| {
            json!({"condition": condition, "pattern": {
                "item.name": {"type": "startswith", "pattern": "db"},
                "item.state": {"type": "equals", "pattern": "down"},
            }})
        };
        let search = |condition: &str| {
            Criterion::compile("trigger", "trigger.v", "search", spec(condition))
                .unwrap()
                .matches(&payload)
        };
        assert!(search("any"), "db1 matches both patterns");
        assert!(!search("all"), "web1 matches neither");
        assert!(search("any2any"));
        assert!(!search("all2any"));
        assert!(
            Criterion::compile(
                "trigger",
                "trigger.v",
                "search",
                json!({"condition": "some"})
            )
            .is_err()
        );
    }

    #[test]
    fn compile_errors_name_the_problem() {
        let err = Criterion::compile("trigger", "trigger.v", "equal", json!(1)).unwrap_err();
        assert!(err.contains("unknown operator \"equal\""), "{err}");
        let err = Criterion::compile("trigger", "payload.v", "equals", json!(1)).unwrap_err();
        assert!(err.contains("must start with `trigger.`"), "{err}");
        let err = Criterion::compile("trigger", "trigger.v", "regex", json!("(")).unwrap_err();
        assert!(err.contains("invalid regex"), "{err}");
    }

    #[test]
    fn paths_index_into_arrays() {
        let c =
            Criterion::compile("trigger", "trigger.hosts.1.name", "equals", json!("b")).unwrap();
        assert!(c.matches(&json!({"hosts": [{"name": "a"}, {"name": "b"}]})));
    }
}

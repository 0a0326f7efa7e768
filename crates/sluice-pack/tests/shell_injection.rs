//! Values inserted into shell templates are only ever text. Rule templates that put a
//! trigger value in every place a shell command can hold it are rendered over adversarial
//! values (quotes, backslashes, `$( )`, backticks, newlines, `EOF` lines, `;|&`, globs,
//! leading `-`, long and non-ASCII strings) and run under dash and bash: each prints the
//! literal value, and nothing else happens (no file appears where the value tried to make
//! one).

use std::process::Command;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_pack::template::ParamTemplate;

/// What a template prints for the value it was given.
type Expected = fn(&str) -> String;

/// (template, what it prints for the value `v`).
fn places() -> Vec<(&'static str, Expected)> {
    fn same(v: &str) -> String {
        v.to_owned()
    }
    fn command_substituted(v: &str) -> String {
        v.trim_end_matches('\n').to_owned()
    }
    vec![
        ("printf '%s' {{ trigger.v }}", same),
        ("printf '%s' '{{ trigger.v }}'", same),
        ("printf '%s' \"{{ trigger.v }}\"", same),
        ("printf '%s' \"pre {{ trigger.v }} post\"", |v| {
            format!("pre {v} post")
        }),
        ("printf '%s' 'a'{{ trigger.v }}'b'", |v| format!("a{v}b")),
        ("printf '%s' x{{ trigger.v }}y", |v| format!("x{v}y")),
        ("v={{ trigger.v }}; printf '%s' \"$v\"", same),
        (
            "printf '%s' \"$(printf '%s' {{ trigger.v }})\"",
            command_substituted,
        ),
        (
            "printf '%s' \"$( printf '%s' \"{{ trigger.v }}\" )\"",
            command_substituted,
        ),
        (
            "printf '%s' \"$(printf '%s' '{{ trigger.v }}')\"",
            command_substituted,
        ),
        (
            "case {{ trigger.v }} in *) printf '%s' {{ trigger.v }};; esac",
            same,
        ),
        ("printf '%s' {{ trigger.v | safe }}", same),
        ("printf '%s' '{{ trigger.v | upper | safe }}'", |v| {
            v.to_uppercase()
        }),
        (
            "{% if trigger.v %}printf '%s' {{ trigger.v }}{% endif %}",
            same,
        ),
    ]
}

fn pieces() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just("\\\\n".to_owned()),
        Just("$(touch pwned1)".to_owned()),
        Just("`touch pwned2`".to_owned()),
        Just("\n".to_owned()),
        Just("EOF".to_owned()),
        Just("\nEOF\n".to_owned()),
        Just(";touch pwned3;".to_owned()),
        Just("&& touch pwned4".to_owned()),
        Just("| touch pwned5".to_owned()),
        Just("*".to_owned()),
        Just("?".to_owned()),
        Just("[a-z]".to_owned()),
        Just("-n".to_owned()),
        Just("--version".to_owned()),
        Just("${HOME}".to_owned()),
        Just("$HOME".to_owned()),
        Just("$((1+1))".to_owned()),
        Just("!".to_owned()),
        Just("#".to_owned()),
        Just("~".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("é日本".to_owned()),
        Just("}}".to_owned()),
        Just("{{ 7*7 }}".to_owned()),
        "[ -~]{0,6}",
    ]
}

fn adversarial() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(pieces(), 0..8).prop_map(|p| p.concat()),
        1 => pieces().prop_map(|p| p.repeat(2000)),
    ]
}

fn run(shell: &str, cmd: &str, dir: &std::path::Path) -> String {
    let out = Command::new(shell)
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell} -c {cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn an_inserted_value_is_printed_as_it_is_and_runs_nothing(value in adversarial()) {
        let dir = tempfile::tempdir().unwrap();
        let payload = json!({ "v": value });
        for (source, expected) in places() {
            let template = ParamTemplate::compile(json!(source), true)
                .unwrap_or_else(|e| panic!("{source}: {e}"));
            let Value::String(cmd) = template.render(&payload, None).unwrap() else {
                panic!("{source} did not render text");
            };
            for shell in ["dash", "bash"] {
                let printed = run(shell, &cmd, dir.path());
                prop_assert_eq!(&printed, &expected(&value), "{} under {}: {:?}", source, shell, cmd);
            }
        }
        let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        prop_assert!(made.is_empty(), "a value ran a command: {:?}", made);
    }
}

#[test]
fn places_that_cannot_be_made_safe_are_refused_when_compiled() {
    for source in [
        "echo `{{ trigger.v }}`",
        "cat <<EOF\n{{ trigger.v }}\nEOF",
        "cat <<'EOF'\n{{ trigger.v }}\nEOF",
        "echo ${x:-{{ trigger.v }}}",
        "echo $(( {{ trigger.v }} ))",
        "true # {{ trigger.v }}",
    ] {
        let err = ParamTemplate::compile(json!(source), true).unwrap_err();
        assert!(
            err.contains("where the shell would read an inserted value as code"),
            "{source}: {err}"
        );
    }
}

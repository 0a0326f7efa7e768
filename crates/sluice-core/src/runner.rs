//! The runners a worker knows. An action names its runner explicitly; the worker never
//! guesses one from a file extension.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerType {
    /// `cmd` run by `/bin/sh -c`; other parameters arrive as environment and stdin JSON.
    /// StackStorm's older name, `run-local`, is accepted too.
    #[serde(alias = "run-local")]
    LocalShellCmd,
    /// The `entry_point` script, executed with parameters in its environment and on stdin
    /// (`run-local-script` too).
    #[serde(alias = "run-local-script")]
    LocalShellScript,
    /// The `entry_point` file run by `python3`: a StackStorm `Action` class, or a script
    /// reading its parameters as JSON on stdin (`run-python` too).
    #[serde(alias = "run-python")]
    PythonScript,
    /// Does nothing and succeeds.
    Noop,
    /// Returns its `message` parameter.
    Echo,
    /// Waits `seconds`, then succeeds.
    Sleep,
    /// An HTTP request; succeeds on a 2xx answer (`http-runner` too).
    #[serde(alias = "http-runner")]
    HttpRequest,
    /// A workflow (`entry_point` is its file): the engine runs its tasks as child
    /// executions; no worker ever receives one. `workflow` is accepted as another name.
    #[serde(alias = "workflow")]
    Orquesta,
}

impl RunnerType {
    pub const ALL: [RunnerType; 8] = [
        Self::LocalShellCmd,
        Self::LocalShellScript,
        Self::PythonScript,
        Self::Noop,
        Self::Echo,
        Self::Sleep,
        Self::HttpRequest,
        Self::Orquesta,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalShellCmd => "local-shell-cmd",
            Self::LocalShellScript => "local-shell-script",
            Self::PythonScript => "python-script",
            Self::Noop => "noop",
            Self::Echo => "echo",
            Self::Sleep => "sleep",
            Self::HttpRequest => "http-request",
            Self::Orquesta => "orquesta",
        }
    }

    /// Whether the runner starts a process of the action's own: only such a process is
    /// given the API and a token of its execution (`ST2_ACTION_AUTH_TOKEN`).
    pub fn starts_a_process(self) -> bool {
        matches!(
            self,
            Self::LocalShellCmd | Self::LocalShellScript | Self::PythonScript
        )
    }

    /// Whether the runner executes a file named by the action's `entry_point`.
    pub fn needs_entry_point(self) -> bool {
        matches!(
            self,
            Self::LocalShellScript | Self::PythonScript | Self::Orquesta
        )
    }
}

impl fmt::Display for RunnerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parameter a runner itself reads (StackStorm's runner parameters). An action may
/// declare it to give it a default or make it immutable; otherwise it is there anyway,
/// without a default, so it is set only when someone sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerParameter {
    pub name: &'static str,
    /// Its JSON Schema type name.
    pub kind: &'static str,
    pub description: &'static str,
}

const CWD: RunnerParameter = RunnerParameter {
    name: "cwd",
    kind: "string",
    description: "Working directory of the process (an absolute path).",
};
const ENV: RunnerParameter = RunnerParameter {
    name: "env",
    kind: "object",
    description: "Environment variables added to the process's environment.",
};
const KWARG_OP: RunnerParameter = RunnerParameter {
    name: "kwarg_op",
    kind: "string",
    description: "What goes before a named argument's name on the command line (default `--`).",
};
const SUDO: RunnerParameter = RunnerParameter {
    name: "sudo",
    kind: "boolean",
    description: "Run the process through sudo (refused unless the worker allows it; default false).",
};
const TIMEOUT: RunnerParameter = RunnerParameter {
    name: "timeout",
    kind: "integer",
    description: "Seconds the process may run; replaces the action's timeout.",
};

impl RunnerType {
    /// The parameters the runner reads besides the action's own (`cmd` of
    /// `local-shell-cmd` is declared by each action, so it is not among them).
    pub fn runner_parameters(self) -> &'static [RunnerParameter] {
        match self {
            Self::LocalShellCmd | Self::LocalShellScript => &[CWD, ENV, KWARG_OP, SUDO, TIMEOUT],
            Self::PythonScript => &[ENV, TIMEOUT],
            _ => &[],
        }
    }

    /// Whether parameter `name` is read by the runner rather than passed to the action's
    /// script as an argument.
    pub fn is_runner_parameter(self, name: &str) -> bool {
        (self == Self::LocalShellCmd && name == "cmd")
            || self.runner_parameters().iter().any(|p| p.name == name)
    }
}

/// A value as one command-line argument, as StackStorm writes it: strings as they are,
/// booleans `1`/`0`, arrays comma-joined, objects as JSON, `null` empty.
pub fn argument_text(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => value.to_string(),
    }
}

/// The arguments a `local-shell-script` action's script is given, StackStorm's way: each
/// named parameter (not a runner's, not positional), by name, as `<kwarg_op><name>=<value>` (a `true`
/// boolean as the bare `<kwarg_op><name>`; `false`, `null` and empty strings left out), then
/// the `positional` parameters in order, a missing one as an empty argument. Each is one
/// argument of its own: no shell reads them.
pub fn script_arguments(
    runner: RunnerType,
    parameters: &serde_json::Map<String, serde_json::Value>,
    positional: &[String],
) -> Vec<String> {
    use serde_json::Value;
    let op = parameters
        .get("kwarg_op")
        .and_then(Value::as_str)
        .unwrap_or("--");
    let mut named: Vec<_> = parameters.iter().collect();
    named.sort_by_key(|(name, _)| name.as_str());
    let mut args = Vec::new();
    for (name, value) in named {
        if runner.is_runner_parameter(name) || positional.contains(name) {
            continue;
        }
        match value {
            Value::Null | Value::Bool(false) => {}
            Value::String(s) if s.is_empty() => {}
            Value::Bool(true) => args.push(format!("{op}{name}")),
            other => args.push(format!("{op}{name}={}", argument_text(other))),
        }
    }
    for name in positional {
        args.push(parameters.get(name).map(argument_text).unwrap_or_default());
    }
    args
}

/// The file an action's `entry_point` names, relative to the pack's `actions/` directory,
/// which must lie inside the pack (the directory holding `actions/`) once `..` and
/// symbolic links are resolved. The error says why it does not qualify.
pub fn confined_entry_point(
    actions_dir: &std::path::Path,
    entry: &str,
) -> Result<std::path::PathBuf, String> {
    let pack_dir = actions_dir.parent().unwrap_or(actions_dir);
    if std::path::Path::new(entry).is_absolute() {
        return Err(format!(
            "{entry} is an absolute path; an entry point is relative to the pack's actions/ directory"
        ));
    }
    let joined = actions_dir.join(entry);
    let resolved = joined.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file {} does not exist", joined.display()),
        _ => format!("file {} cannot be opened: {e}", joined.display()),
    })?;
    let pack = pack_dir.canonicalize().map_err(|e| {
        format!(
            "pack directory {} cannot be opened: {e}",
            pack_dir.display()
        )
    })?;
    if !resolved.starts_with(&pack) {
        return Err(format!(
            "{entry} resolves to {}, outside the pack {}",
            resolved.display(),
            pack.display()
        ));
    }
    if !resolved.is_file() {
        return Err(format!("{} is not a file", resolved.display()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::{RunnerType, script_arguments};
    use serde_json::json;

    #[test]
    fn a_script_gets_named_then_positional_arguments_as_stackstorm_writes_them() {
        let parameters = json!({
            "host": "db 1", "verbose": true, "dry_run": false, "note": "", "gone": null,
            "ports": [80, "443"], "labels": {"a": 1}, "count": 3,
            "first": "a b", "second": true, "cwd": "/tmp", "sudo": false, "kwarg_op": "-",
        });
        let parameters = parameters.as_object().unwrap();
        let positional = ["first".to_owned(), "second".to_owned(), "absent".to_owned()];
        let args = script_arguments(RunnerType::LocalShellScript, parameters, &positional);
        assert_eq!(
            args,
            [
                "-count=3",
                "-host=db 1",
                r#"-labels={"a":1}"#,
                "-ports=80,443",
                "-verbose",
                "a b",
                "1",
                "",
            ]
        );
    }

    #[test]
    fn stackstorm_s_older_runner_names_mean_the_same_runners() {
        for (old, runner) in [
            ("run-local", RunnerType::LocalShellCmd),
            ("run-local-script", RunnerType::LocalShellScript),
            ("run-python", RunnerType::PythonScript),
            ("http-runner", RunnerType::HttpRequest),
            ("workflow", RunnerType::Orquesta),
        ] {
            let read: RunnerType = serde_json::from_str(&format!("\"{old}\"")).unwrap();
            assert_eq!(read, runner, "{old}");
            assert_ne!(read.as_str(), old, "shown by its current name");
        }
    }
}

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
    use super::RunnerType;

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

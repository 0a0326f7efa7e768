//! Python actions as StackStorm runs them: Sluice's own `st2common` (the `Action` base
//! class packs import) and a wrapper that loads an action's class, calls `run`, and writes
//! the outcome to a file the worker reads (see `python/sluice_python_action.py`); and
//! `st2reactor`'s sensor classes with their own wrapper (`python/sluice_sensor.py`).
//!
//! The Python files are part of the binary; a worker writes them once to a private
//! temporary directory (mode 0700, a name nobody can guess) and puts it first on the
//! action's `PYTHONPATH`, followed by the pack's `actions/` directory, so `from lib.base
//! import X` works as it does under StackStorm.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};
use sluice_core::ExecutionStatus;

const FILES: [(&str, &str); 12] = [
    (
        "sluice_python_action.py",
        include_str!("../python/sluice_python_action.py"),
    ),
    (
        "st2common/__init__.py",
        include_str!("../python/st2common/__init__.py"),
    ),
    (
        "st2common/runners/__init__.py",
        include_str!("../python/st2common/runners/__init__.py"),
    ),
    (
        "st2common/runners/base_action.py",
        include_str!("../python/st2common/runners/base_action.py"),
    ),
    (
        "st2actions/__init__.py",
        include_str!("../python/st2actions/__init__.py"),
    ),
    (
        "st2actions/runners/__init__.py",
        include_str!("../python/st2actions/runners/__init__.py"),
    ),
    (
        "st2actions/runners/pythonrunner.py",
        include_str!("../python/st2actions/runners/pythonrunner.py"),
    ),
    (
        "sluice_sensor.py",
        include_str!("../python/sluice_sensor.py"),
    ),
    (
        "sluice_forkserver.py",
        include_str!("../python/sluice_forkserver.py"),
    ),
    (
        "st2reactor/__init__.py",
        include_str!("../python/st2reactor/__init__.py"),
    ),
    (
        "st2reactor/sensor/__init__.py",
        include_str!("../python/st2reactor/sensor/__init__.py"),
    ),
    (
        "st2reactor/sensor/base.py",
        include_str!("../python/st2reactor/sensor/base.py"),
    ),
];

/// The directory holding Sluice's Python files, written on first use.
pub(crate) fn library() -> Result<&'static Path, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sluice-python-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for Sluice's Python files: {e}"))?
            .keep();
        for (name, text) in FILES {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(dir)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// The wrapper's path inside [`library`].
pub(crate) fn wrapper(library: &Path) -> PathBuf {
    library.join(FILES[0].0)
}

/// The sensor wrapper's path inside [`library`].
pub(crate) fn sensor_wrapper(library: &Path) -> PathBuf {
    library.join("sluice_sensor.py")
}

/// `PYTHONPATH` for an action: Sluice's files, the pack's `actions/`, then what the
/// worker's environment had.
pub(crate) fn python_path(library: &Path, actions_dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![library.to_owned(), actions_dir.to_owned()];
    if let Some(inherited) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&inherited));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Applies what the wrapper wrote to the status and result of its process; a file of more
/// than `limit` bytes fails the execution. Without a file the action was a plain script,
/// and its process's outcome stands.
pub(crate) fn apply(
    status: ExecutionStatus,
    mut result: Value,
    file: &Path,
    limit: u64,
) -> (ExecutionStatus, Value) {
    let Ok(meta) = std::fs::metadata(file) else {
        return (status, result);
    };
    if matches!(
        status,
        ExecutionStatus::Cancelled | ExecutionStatus::TimedOut
    ) {
        return (status, result);
    }
    if meta.len() > limit {
        result["error"] = json!(format!(
            "the action's result is {} bytes, more than the {limit} a report carries",
            meta.len()
        ));
        return (ExecutionStatus::Failed, result);
    }
    let written = std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| sluice_core::bounded::from_json(&bytes).map_err(|e| e.to_string()));
    let Ok(Value::Object(written)) = written else {
        result["error"] = json!("the action's result could not be read");
        return (ExecutionStatus::Failed, result);
    };
    if let Some(error) = written.get("error") {
        result["error"] = error.clone();
        if let Some(traceback) = written.get("traceback") {
            result["traceback"] = traceback.clone();
        }
        return (ExecutionStatus::Failed, result);
    }
    result["result"] = written.get("result").cloned().unwrap_or(Value::Null);
    let succeeded = written.get("succeeded").and_then(Value::as_bool) == Some(true);
    let status = if succeeded {
        ExecutionStatus::Succeeded
    } else {
        ExecutionStatus::Failed
    };
    (status, result)
}

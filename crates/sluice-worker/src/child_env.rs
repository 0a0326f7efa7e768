//! What a child process of the worker (an action, the fork server, a sensor) is not given
//! of the worker's own environment.

use tokio::process::Command;

/// Whether an inherited variable is Sluice's own configuration (a NATS URL with
/// credentials, key files): what a child process is never given.
pub(crate) fn is_own_config(name: &str) -> bool {
    name.starts_with("SLUICE_")
}

/// Leaves every inherited `SLUICE_*` variable out of `command`'s environment.
pub(crate) fn without_own_config(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if is_own_config(&name.to_string_lossy()) {
            command.env_remove(name);
        }
    }
}

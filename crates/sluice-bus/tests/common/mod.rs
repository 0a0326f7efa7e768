//! What the bus tests share.

use sluice_core::{ExecutionId, RunMessage, RunnerType};

/// A run message for `core.noop`: attempt `attempt` of execution `id`.
pub fn run_message(id: i64, attempt: u32) -> RunMessage {
    RunMessage {
        execution_id: ExecutionId(id),
        attempt,
        action: "core.noop".parse().unwrap(),
        runner: RunnerType::Noop,
        pack_digest: None,
        entry_point: None,
        parameters: Default::default(),
        secret_parameters: vec![],
        positional: vec![],
        config: None,
        timeout_secs: None,
        limits: Default::default(),
        api: None,
        partition: None,
    }
}

//! The `sluice` binary's library half: configuration, the process modes (`up`, `engine`,
//! `worker`) and the command-line client. `main.rs` only parses and wires; tests call
//! [`up::run`] and the other entry points directly.

pub mod cli;
pub mod config;
pub mod nats;
pub mod up;

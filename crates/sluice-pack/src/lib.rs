//! Packs: the files operators write, and what they mean.
//!
//! A pack is a directory with `pack.yaml`, `actions/`, `triggers/` and `rules/`, in
//! StackStorm's file format. [`load::load_packs`] reads a set of pack directories into a
//! [`Catalog`], validating every file and reporting every problem with its file and field
//! at once. The catalog then answers the questions the engine asks at run time:
//!
//! - [`params`] — resolve an action's parameters: defaults, types, enums, secrets.
//! - [`criteria`] — StackStorm's rule criteria operators over a trigger payload.
//! - [`template`] — Jinja parameter templates.
//! - [`shell`] — making values inserted into text a shell reads inert.
//! - [`datastore`] — `st2kv` and `decrypt_kv` in templates.
//! - [`timer`] — StackStorm's interval, cron and date timers: schedules and nominal ticks.
//! - [`webhook`] — `core.st2.webhook`: webhook URLs and how their callers are authenticated.
//! - [`config`] — a pack's configuration: `config.schema.yaml` and `<configs>/<pack>.yaml`.
//! - [`bundle`] — a pack as one reproducible archive, named by its digest.
//! - [`workflow`] — Orquesta-style workflow files: tasks, transitions, published variables.

pub mod bundle;
pub mod config;
pub mod criteria;
pub mod datastore;
mod error;
pub mod expressions;
pub mod load;
pub mod model;
pub mod params;
pub mod shell;
pub mod template;
pub mod timer;
pub mod webhook;
pub mod workflow;
mod workflow_file;

pub use error::{LoadError, LoadErrors};
pub use load::{
    load_packs, load_packs_reporting, load_packs_with_configs, pack_name, with_api_rule,
};
pub use model::{
    Action, BrokenPack, Catalog, Mismatch, Origin, Pack, ParamSpec, ParamType, Rule, Sensor,
    Trigger,
};

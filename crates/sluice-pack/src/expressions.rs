//! Orquesta's expression functions, over the workflow scope a workflow renders with:
//!
//! | function | gives |
//! |---|---|
//! | `ctx()`, `ctx('name')` | the workflow context (input, vars, published values), or one entry |
//! | `item()`, `item('key')` | the current item of a `with: items` task |
//! | `result()` | the task's result (the list of item results for a `with` task) |
//! | `succeeded()`, `failed()`, `completed()` | how the task ended, in a transition's `when` |
//! | `task('name')` | another task's `{status, result}` |
//!
//! Outside a workflow (rule templates) the functions are errors that say so.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State};

/// The name a workflow's scope is rendered under.
pub const SCOPE: &str = "__workflow";

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_function("ctx", ctx);
    env.add_function("item", item);
    env.add_function("result", result);
    env.add_function("succeeded", succeeded);
    env.add_function("failed", failed);
    env.add_function("completed", completed);
    env.add_function("task", task);
}

fn error(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

fn scope(state: &State, entry: &str, function: &str) -> Result<Value, Error> {
    let scope = state
        .lookup(SCOPE)
        .ok_or_else(|| error(format!("{function} is only available in a workflow")))?;
    match scope.get_attr(entry) {
        Ok(value) if !value.is_undefined() => Ok(value),
        _ => Err(error(match entry {
            "item" => format!("{function} is only available in a task with `with: items`"),
            _ => format!("{function} is only available once the task has ended"),
        })),
    }
}

fn entry_of(value: Value, key: Option<String>, function: &str) -> Result<Value, Error> {
    let Some(key) = key else { return Ok(value) };
    match value.get_attr(&key) {
        Ok(v) if !v.is_undefined() => Ok(v),
        _ => Err(error(format!("{function}: no entry {key:?}"))),
    }
}

fn ctx(state: &State, key: Option<String>) -> Result<Value, Error> {
    entry_of(scope(state, "ctx", "ctx()")?, key, "ctx()")
}

fn item(state: &State, key: Option<String>) -> Result<Value, Error> {
    entry_of(scope(state, "item", "item()")?, key, "item()")
}

fn result(state: &State) -> Result<Value, Error> {
    scope(state, "result", "result()")
}

fn status(state: &State, function: &str) -> Result<String, Error> {
    let status = scope(state, "status", function)?;
    Ok(status.as_str().unwrap_or_default().to_owned())
}

fn succeeded(state: &State) -> Result<bool, Error> {
    Ok(status(state, "succeeded()")? == "succeeded")
}

fn failed(state: &State) -> Result<bool, Error> {
    Ok(status(state, "failed()")? == "failed")
}

fn completed(state: &State) -> Result<bool, Error> {
    status(state, "completed()").map(|_| true)
}

fn task(state: &State, name: String) -> Result<Value, Error> {
    let tasks = scope(state, "tasks", "task()")?;
    match tasks.get_attr(&name) {
        Ok(v) if !v.is_undefined() => Ok(v),
        _ => Err(error(format!("task({name:?}): no such task has ended"))),
    }
}

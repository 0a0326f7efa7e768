//! What is loaded: `/api/v1/packs` (with the packs left out and why), `/api/v1/actions/{ref}`
//! and `/api/v1/triggers`. All read scope.

use axum::extract::{Path, State};
use axum::{Json, Router};
use serde_json::{Value, json};
use sluice_pack::{Catalog, Pack, Trigger};

use crate::error::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    use axum::routing::get;
    Router::new()
        .route("/api/v1/packs", get(list_packs))
        .route("/api/v1/packs/{pack}", get(show_pack))
        .route("/api/v1/actions/{action}", get(show_action))
        .route("/api/v1/triggers", get(list_triggers))
        .route("/api/v1/triggers/{trigger}", get(show_trigger))
}

/// A loaded pack with what it holds, by reference.
fn pack_view(catalog: &Catalog, pack: &Pack) -> Value {
    let of_pack = |r: &str| r.split_once('.').is_some_and(|(p, _)| p == pack.name);
    let actions: Vec<String> = catalog
        .actions
        .keys()
        .map(ToString::to_string)
        .filter(|r| of_pack(r))
        .collect();
    let triggers: Vec<&String> = catalog.triggers.keys().filter(|r| of_pack(r)).collect();
    let rules: Vec<&String> = catalog
        .rules()
        .iter()
        .map(|r| &r.rule_ref)
        .filter(|r| of_pack(r))
        .collect();
    json!({
        "name": pack.name,
        "version": pack.version,
        "description": pack.description,
        "dir": pack.dir.display().to_string(),
        "loaded": true,
        "actions": actions,
        "triggers": triggers,
        "rules": rules,
        "errors": [],
    })
}

/// Every pack: those loaded, and those left out with every problem (file, field, message).
async fn list_packs(State(engine): State<AppState>) -> Json<Value> {
    let catalog = engine.catalog();
    let mut packs: Vec<Value> = catalog
        .packs
        .values()
        .map(|pack| pack_view(&catalog, pack))
        .collect();
    packs.extend(catalog.broken.iter().map(|broken| {
        json!({
            "name": broken.name,
            "dir": broken.dir.display().to_string(),
            "loaded": false,
            "errors": broken.errors,
        })
    }));
    Json(Value::Array(packs))
}

async fn show_pack(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Json(packs) = list_packs(State(engine)).await;
    packs
        .as_array()
        .and_then(|packs| packs.iter().find(|p| p["name"] == name.as_str()).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no pack {name:?}")))
}

async fn show_action(
    State(engine): State<AppState>,
    Path(action): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = engine.catalog();
    let found = action
        .parse()
        .ok()
        .and_then(|r| catalog.action(&r))
        .ok_or_else(|| ApiError::NotFound(format!("unknown action {action:?}")))?;
    let mut body = json!(found);
    body["pack"] = json!(found.action_ref.pack());
    body["rules"] = json!(
        catalog
            .rules()
            .iter()
            .filter(|r| r.action == found.action_ref)
            .map(|r| &r.rule_ref)
            .collect::<Vec<_>>()
    );
    Ok(Json(body))
}

fn trigger_view(catalog: &Catalog, trigger: &Trigger) -> Value {
    json!({
        "ref": trigger.trigger_ref,
        "description": trigger.description,
        "payload_schema": trigger.payload_schema,
        "subject": sluice_bus::trigger_subject(&trigger.trigger_ref),
        "file": trigger.file.display().to_string(),
        "rules": catalog
            .rules_on(&trigger.trigger_ref)
            .map(|r| &r.rule_ref)
            .collect::<Vec<_>>(),
    })
}

/// Every trigger, built in or from a pack, with the NATS subject that fires it and the
/// rules on it.
async fn list_triggers(State(engine): State<AppState>) -> Json<Value> {
    let catalog = engine.catalog();
    Json(Value::Array(
        catalog
            .triggers
            .values()
            .map(|t| trigger_view(&catalog, t))
            .collect(),
    ))
}

async fn show_trigger(
    State(engine): State<AppState>,
    Path(trigger): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = engine.catalog();
    let found = catalog
        .triggers
        .get(&trigger)
        .ok_or_else(|| ApiError::NotFound(format!("unknown trigger {trigger:?}")))?;
    Ok(Json(trigger_view(&catalog, found)))
}

//! What is loaded: `/api/v1/packs` (with the packs left out and why), `/api/v1/actions/{ref}`
//! and `/api/v1/triggers`, all read scope; and installing, reloading and removing packs
//! (admin scope).

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_engine::PackSource;
use sluice_pack::{Catalog, Pack, Trigger};

use crate::error::{ApiError, AppState, Body};

/// The largest `.tar.gz` a pack can be uploaded as.
const MAX_UPLOAD: usize = 64 * 1024 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route(
            "/api/v1/packs",
            get(list_packs)
                .post(install_pack)
                .layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/api/v1/packs/{pack}", get(show_pack).delete(remove_pack))
        .route("/api/v1/packs/{pack}/reload", post(reload_pack))
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
    let sensors: Vec<&sluice_pack::Sensor> = catalog
        .sensors
        .values()
        .filter(|s| s.pack == pack.name)
        .collect();
    json!({
        "name": pack.name,
        "version": pack.version,
        "description": pack.description,
        "dir": pack.dir.display().to_string(),
        "digest": pack.digest,
        "loaded": true,
        "actions": actions,
        "triggers": triggers,
        "rules": rules,
        "sensors": sensors,
        // Secrets masked; the file it came from.
        "config": pack.config.as_ref().map(|config| config.masked()),
        "config_file": pack.config.as_ref().and_then(|c| c.file.as_ref()).map(|f| f.display().to_string()),
        "errors": [],
    })
}

/// Every pack: those loaded, and those left out with every problem (file, field, message).
#[utoipa::path(
    get,
    path = "/api/v1/packs",
    tag = "packs",
    responses((status = 200, description = "Every pack, and those left out with every problem", body = Vec<Value>))
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/packs/{pack}",
    tag = "packs",
    params(("pack" = String, Path, description = "The pack")),
    responses((status = 200, description = "The pack", body = Value))
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/actions/{action}",
    tag = "catalog",
    params(("action" = String, Path, description = "The action, pack.name")),
    responses((status = 200, description = "The action and the rules that run it", body = Value))
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/triggers",
    tag = "catalog",
    responses((status = 200, description = "Every trigger, its subject and rules", body = Vec<Value>))
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/triggers/{trigger}",
    tag = "catalog",
    params(("trigger" = String, Path, description = "The trigger, pack.name")),
    responses((status = 200, description = "The trigger", body = Value))
)]
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

/// Where a pack is installed from, as JSON.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct InstallFrom {
    /// A directory on the engine's host.
    #[schema(value_type = Option<String>)]
    path: Option<std::path::PathBuf>,
    /// A git repository URL.
    git: Option<String>,
    /// With `git`: the branch or tag.
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// `POST /api/v1/packs`: a `.tar.gz` body (`Content-Type: application/gzip`), or JSON naming
/// a directory (`{"path"}`) or a git repository (`{"git", "ref"}`). `201` with the pack.
#[utoipa::path(
    post,
    path = "/api/v1/packs",
    tag = "packs",
    request_body(content(
        (InstallFrom = "application/json"),
        (Vec<u8> = "application/gzip")
    )),
    responses((status = 201, description = "The pack, installed and in force", body = Value))
)]
async fn install_pack(
    State(engine): State<AppState>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let source = if [
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
    ]
    .iter()
    .any(|t| content_type.starts_with(t))
    {
        let bytes = axum::body::Bytes::from_request(request, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        PackSource::Archive(bytes.to_vec())
    } else {
        let Body(from) = Body::<InstallFrom>::from_request(request, &()).await?;
        match (from.path, from.git) {
            (Some(path), None) if from.reference.is_none() => PackSource::Dir(path),
            (None, Some(url)) => PackSource::Git {
                url,
                reference: from.reference,
            },
            _ => {
                return Err(ApiError::BadRequest(
                    "name one source: {\"path\": DIR}, {\"git\": URL, \"ref\": BRANCH} \
                     or a .tar.gz body with Content-Type: application/gzip"
                        .into(),
                ));
            }
        }
    };
    let name = engine.install_pack(source).await?;
    let Json(pack) = show_pack(State(engine), Path(name)).await?;
    Ok((StatusCode::CREATED, Json(pack)))
}

/// `POST /api/v1/packs/{pack}/reload`: the pack read again from its directory and put in
/// force (with every other pack); the pack as it is now.
#[utoipa::path(
    post,
    path = "/api/v1/packs/{pack}/reload",
    tag = "packs",
    params(("pack" = String, Path, description = "The pack")),
    responses((status = 200, description = "The pack, read again and in force", body = Value))
)]
async fn reload_pack(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    engine.reload_packs(Some(&name)).await?;
    show_pack(State(engine), Path(name)).await
}

/// `DELETE /api/v1/packs/{pack}`: an installed pack removed.
#[utoipa::path(
    delete,
    path = "/api/v1/packs/{pack}",
    tag = "packs",
    params(("pack" = String, Path, description = "The pack")),
    responses((status = 200, description = "Removed", body = Value))
)]
async fn remove_pack(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    engine.remove_pack(&name).await?;
    Ok(Json(json!({ "removed": name })))
}

//! The datastore and the secrets key: `/api/v1/keys` and `/api/v1/secrets/rotate`.
//!
//! Reading keys needs the read scope and shows secret values masked; reading a secret in
//! clear (`?decrypt=true`), writing, deleting and rotating need the admin scope.

use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Scope;
use sluice_core::datastore::KeyName;
use sluice_engine::datastore::{KeyError, NewKey, WriteError};

use crate::auth::Caller;
use crate::error::{ApiError, AppState, Body, Query};

pub(crate) fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/api/v1/keys", get(list))
        .route("/api/v1/keys/{key}", get(read).put(write).delete(remove))
        .route("/api/v1/secrets/rotate", post(rotate))
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound(_) => Self::NotFound(e.to_string()),
            KeyError::Write(WriteError::Conflict { .. } | WriteError::Exists(_)) => {
                Self::Conflict(e.to_string())
            }
            KeyError::Write(WriteError::Bus(e)) | KeyError::Bus(e) => Self::Internal(e.to_string()),
            KeyError::Secrets(e) => Self::Internal(e),
        }
    }
}

fn key_name(key: &str) -> Result<KeyName, ApiError> {
    key.parse()
        .map_err(|e: sluice_core::datastore::KeyNameError| ApiError::BadRequest(e.to_string()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    prefix: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "datastore",
    params(ListQuery),
    responses((status = 200, description = "Keys; secret values masked", body = Vec<Value>))
)]
async fn list(
    State(engine): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        engine.keys().list(query.prefix.as_deref()).await?
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    #[serde(default)]
    decrypt: bool,
}

#[utoipa::path(
    get,
    path = "/api/v1/keys/{key}",
    tag = "datastore",
    params(("key" = String, Path, description = "The key"), ReadQuery),
    responses((status = 200, description = "The key", body = Value))
)]
async fn read(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = key_name(&key)?;
    if !query.decrypt {
        return Ok(Json(json!(engine.keys().get(&key).await?)));
    }
    if !caller.scope.allows(Scope::Admin) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} has the {} scope; reading {key} in clear needs admin",
            caller.name, caller.scope
        )));
    }
    Ok(Json(json!(engine.keys().open(&key, &caller.name).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WriteRequest {
    value: Value,
    #[serde(default)]
    secret: bool,
    /// `30s`, `1h`, `7d`: the key is gone after it.
    ttl: Option<String>,
    /// Write only if the key is at this revision; 0: only if it does not exist.
    revision: Option<u64>,
}

#[utoipa::path(
    put,
    path = "/api/v1/keys/{key}",
    tag = "datastore",
    params(("key" = String, Path, description = "The key")),
    request_body = WriteRequest,
    responses((status = 200, description = "The key as written", body = Value))
)]
async fn write(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    Body(request): Body<WriteRequest>,
) -> Result<Json<Value>, ApiError> {
    let key = key_name(&key)?;
    let ttl = request
        .ttl
        .as_deref()
        .map(|ttl| {
            humantime::parse_duration(ttl)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| {
                    ApiError::Unprocessable(format!(
                        "ttl {ttl:?} is not a duration of a second or more such as 30s, 1h, 7d"
                    ))
                })
        })
        .transpose()?;
    let new = NewKey {
        value: request.value,
        secret: request.secret,
        ttl,
        revision: request.revision,
    };
    Ok(Json(json!(
        engine.keys().set(&key, new, &caller.name).await?
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    revision: Option<u64>,
}

#[utoipa::path(
    delete,
    path = "/api/v1/keys/{key}",
    tag = "datastore",
    params(("key" = String, Path, description = "The key"), DeleteQuery),
    responses((status = 200, description = "Deleted", body = Value))
)]
async fn remove(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = key_name(&key)?;
    engine
        .keys()
        .delete(&key, query.revision, &caller.name)
        .await?;
    Ok(Json(json!({ "key": key.to_string(), "deleted": true })))
}

#[utoipa::path(
    post,
    path = "/api/v1/secrets/rotate",
    tag = "datastore",
    responses((status = 200, description = "The new key, and how many values were sealed again", body = Value))
)]
async fn rotate(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (key_id, resealed) = engine
        .rotate_secrets_key()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(by = %caller.name, key_id, "secrets key rotated through the API");
    Ok((
        StatusCode::OK,
        Json(json!({ "key_id": key_id, "resealed": resealed })),
    ))
}

//! Rules: `/api/v1/rules` lists them with where each comes from; `/enable` and `/disable`
//! switch one at run time, for good (a switch outlives restarts until switched again).
//!
//! `POST /api/v1/rules/{ref}/test {"payload": …}` tells whether the rule would match that
//! payload, and if not the first check that failed; if so the parameters it would run with.
//! It fires nothing.
//!
//! `POST /api/v1/rules` defines a rule (the fields of a rule file, with `pack`), `PUT
//! /api/v1/rules/{ref}` defines or replaces one, `DELETE` deletes one: checked as a pack's
//! rule file is, kept in the store, in force at once. Rules from packs' files are changed in
//! their files.
//!
//! Reading and testing need the read scope; switching and defining need admin.

use axum::extract::{Extension, Path, State};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use sluice_engine::RuleError;
use sluice_pack::Rule;
use sluice_store::RuleSwitch;

use crate::auth::Caller;
use crate::error::{ApiError, AppState, Body};

pub(crate) fn routes() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/api/v1/rules", get(list).post(create))
        .route(
            "/api/v1/rules/{rule}",
            get(show).put(replace).delete(remove),
        )
        .route("/api/v1/rules/{rule}/enable", post(enable))
        .route("/api/v1/rules/{rule}/disable", post(disable))
        .route("/api/v1/rules/{rule}/test", post(test))
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Unknown(_) => Self::NotFound(e.to_string()),
            RuleError::FromPack(..) => Self::Conflict(e.to_string()),
            RuleError::Invalid(problems) => {
                let errors: Vec<(String, String)> = problems
                    .0
                    .iter()
                    .map(|p| (p.field.clone().unwrap_or_default(), p.message.clone()))
                    .collect();
                let detail = errors
                    .iter()
                    .map(|(field, message)| match field.as_str() {
                        "" => message.clone(),
                        field => format!("{field}: {message}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Self::Invalid { detail, errors }
            }
            RuleError::Store(e) => e.into(),
        }
    }
}

/// A rule as the API shows it: what it listens to, what it checks, what it runs, its file,
/// and the switch that set its state through the API, if one did.
fn view(rule: &Rule, switch: Option<&RuleSwitch>) -> Value {
    let trigger_parameters = match (&rule.timer, &rule.webhook) {
        (Some(timer), _) => timer.parameters.clone(),
        (None, Some(hook)) => json!({ "url": hook.url }),
        (None, None) => json!({}),
    };
    let criteria: Map<String, Value> = rule
        .criteria
        .iter()
        .map(|c| {
            (
                c.key.clone(),
                json!({ "type": c.operator, "pattern": c.pattern }),
            )
        })
        .collect();
    let parameters: Map<String, Value> = rule
        .parameters
        .iter()
        .map(|(name, template)| (name.clone(), template.source.clone()))
        .collect();
    json!({
        "ref": rule.rule_ref,
        "pack": rule.rule_ref.split('.').next().unwrap_or_default(),
        "description": rule.description,
        "enabled": rule.enabled,
        "trigger": { "type": rule.trigger, "parameters": trigger_parameters },
        "criteria": criteria,
        "action": { "ref": rule.action.to_string(), "parameters": parameters },
        "origin": rule.origin,
        "file": (rule.origin == sluice_pack::Origin::Pack).then(|| rule.file.display().to_string()),
        "switched": switch,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    responses((status = 200, description = "Every rule, with its origin and switch", body = Vec<Value>))
)]
async fn list(State(engine): State<AppState>) -> Result<Json<Value>, ApiError> {
    let switches = engine.rule_switches().await?;
    let catalog = engine.catalog();
    let rules: Vec<Value> = catalog
        .rules()
        .iter()
        .map(|rule| view(rule, switches.iter().find(|s| s.rule == rule.rule_ref)))
        .collect();
    Ok(Json(Value::Array(rules)))
}

#[utoipa::path(
    get,
    path = "/api/v1/rules/{rule}",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    responses((status = 200, description = "The rule", body = Value))
)]
async fn show(
    State(engine): State<AppState>,
    Path(rule): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = engine.catalog();
    let found = catalog
        .rule(&rule)
        .ok_or_else(|| ApiError::NotFound(format!("unknown rule {rule:?}")))?;
    let switches = engine.rule_switches().await?;
    Ok(Json(view(
        found,
        switches.iter().find(|s| s.rule == found.rule_ref),
    )))
}

async fn switch(
    engine: AppState,
    caller: Caller,
    rule: String,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    let switch = engine.switch_rule(&rule, enabled, &caller.name).await?;
    let catalog = engine.catalog();
    let found = catalog
        .rule(&rule)
        .ok_or_else(|| ApiError::NotFound(format!("unknown rule {rule:?}")))?;
    Ok(Json(view(found, Some(&switch))))
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/{rule}/enable",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    responses((status = 200, description = "The rule, enabled", body = Value))
)]
async fn enable(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rule): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch(engine, caller, rule, true).await
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/{rule}/disable",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    responses((status = 200, description = "The rule, disabled", body = Value))
)]
async fn disable(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rule): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch(engine, caller, rule, false).await
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// The trigger payload to judge.
    #[serde(default)]
    payload: Value,
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/{rule}/test",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    request_body = TestRequest,
    responses((status = 200, description = "Whether it matches, and if not the first check that failed", body = Value))
)]
async fn test(
    State(engine): State<AppState>,
    Path(rule): Path<String>,
    Body(request): Body<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    let payload = match request.payload {
        Value::Null => json!({}),
        payload => payload,
    };
    Ok(Json(json!(engine.test_rule(&rule, &payload)?)))
}

/// Defines a rule; `409` if one of that name exists.
#[utoipa::path(
    post,
    path = "/api/v1/rules",
    tag = "rules",
    request_body = Value,
    responses((status = 201, description = "The rule, in force", body = Value))
)]
async fn create(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(definition): Body<Value>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let named = format!(
        "{}.{}",
        definition["pack"].as_str().unwrap_or_default(),
        definition["name"].as_str().unwrap_or_default()
    );
    if engine.catalog().rule(&named).is_some() {
        return Err(ApiError::Conflict(format!(
            "rule {named} exists; PUT /api/v1/rules/{named} replaces it"
        )));
    }
    let rule = engine.put_rule(definition, &caller.name).await?;
    let Json(shown) = show(State(engine), Path(rule)).await?;
    Ok((axum::http::StatusCode::CREATED, Json(shown)))
}

/// Defines or replaces the rule `{ref}`; the body's `pack` and `name` must make `{ref}`.
#[utoipa::path(
    put,
    path = "/api/v1/rules/{rule}",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    request_body = Value,
    responses((status = 200, description = "The rule, in force", body = Value))
)]
async fn replace(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rule): Path<String>,
    Body(mut definition): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let (pack, name) = rule
        .split_once('.')
        .ok_or_else(|| ApiError::BadRequest(format!("rule {rule:?}: write it as pack.name")))?;
    if let Some(fields) = definition.as_object_mut() {
        for (field, value) in [("pack", pack), ("name", name)] {
            match fields.get(field).and_then(Value::as_str) {
                None => {
                    fields.insert(field.into(), json!(value));
                }
                Some(given) if given == value => {}
                Some(given) => {
                    return Err(ApiError::Unprocessable(format!(
                        "{field}: {given:?} does not match the rule {rule} in the path"
                    )));
                }
            }
        }
    }
    let rule = engine.put_rule(definition, &caller.name).await?;
    show(State(engine), Path(rule)).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/rules/{rule}",
    tag = "rules",
    params(("rule" = String, Path, description = "The rule, pack.name")),
    responses((status = 200, description = "Deleted", body = Value))
)]
async fn remove(
    State(engine): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(rule): Path<String>,
) -> Result<Json<Value>, ApiError> {
    engine.delete_rule(&rule, &caller.name).await?;
    Ok(Json(json!({ "ref": rule, "deleted": true })))
}

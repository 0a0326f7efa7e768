//! `POST /api/v1/webhooks/<url>`: a webhook call becomes a `core.st2.webhook` event, and
//! `POST /api/v1/webhooks/st2` (`{trigger, payload}`) an event of any trigger, as in
//! StackStorm.
//!
//! The caller is checked as the webhook's rule says ([`WebhookAuth`]): an API token with the
//! `run` scope by default, or a signature over the raw body with a shared secret from the
//! datastore, compared in constant time. A refused call is `401`/`403`, counted in
//! `sluice_webhook_refusals_total` and never recorded as an event. An accepted one answers
//! `202` once JetStream has stored it in TRIGGERS, with its stream sequence; a delivery id
//! (`X-GitHub-Delivery`, `webhook-id`, `Idempotency-Key`) makes a repeat a duplicate that
//! creates no second event.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Map, Value, json};
use sluice_core::Scope;
use sluice_core::datastore::KeyName;
use sluice_pack::webhook::{self, WebhookAuth};
use sluice_telemetry::metrics;

use crate::error::{ApiError, AppState};

/// The largest body a webhook takes: a trigger message must fit in TRIGGERS.
const MAX_BODY: usize = 512 * 1024;

/// How far a Standard Webhooks timestamp may be from now.
const TOLERANCE_SECS: i64 = 300;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks/{*url}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

fn refused(status: StatusCode, reason: &'static str, message: String) -> ApiError {
    metrics().webhook_refusals.inc([reason]);
    match status {
        StatusCode::FORBIDDEN => ApiError::Forbidden(message),
        _ => ApiError::Unauthorized(message),
    }
}

async fn token(engine: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = crate::auth::identify(engine, crate::auth::in_header(headers), Utc::now())
        .await
        .map_err(|e| match e {
            ApiError::Unauthorized(m) => refused(StatusCode::UNAUTHORIZED, "unauthorized", m),
            other => other,
        })?;
    if !token.scope.allows(Scope::Run) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has the {} scope; a webhook needs run",
                token.name, token.scope
            ),
        ));
    }
    Ok(())
}

async fn secret(engine: &AppState, key: &KeyName) -> Result<Vec<u8>, ApiError> {
    let value = engine
        .keys()
        .value_for_engine(key)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "the webhook's secret {key} is not in the datastore"
            ))
        })?;
    Ok(match value {
        Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bad_signature(what: &str) -> ApiError {
    refused(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("the {what} does not verify"),
    )
}

/// Whether `signature` is the HMAC-SHA256 of `message` under `key`, in constant time.
fn verifies(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, message, signature).is_ok()
}

async fn check(
    engine: &AppState,
    auth: &WebhookAuth,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    match auth {
        WebhookAuth::None => Ok(()),
        WebhookAuth::Token => token(engine, headers).await,
        WebhookAuth::GitHub { secret: key } => {
            let key = secret(engine, key).await?;
            let signature = header(headers, "x-hub-signature-256")
                .and_then(|v| v.strip_prefix("sha256="))
                .and_then(|hex| hex::decode(hex).ok())
                .ok_or_else(|| bad_signature("X-Hub-Signature-256 header"))?;
            verifies(&key, body, &signature)
                .then_some(())
                .ok_or_else(|| bad_signature("X-Hub-Signature-256 header"))
        }
        WebhookAuth::HmacSha256 {
            secret: key,
            header: name,
        } => {
            let key = secret(engine, key).await?;
            let value = header(headers, name).unwrap_or_default();
            let hex = value.strip_prefix("sha256=").unwrap_or(value);
            let signature =
                hex::decode(hex.trim()).map_err(|_| bad_signature("signature header"))?;
            verifies(&key, body, &signature)
                .then_some(())
                .ok_or_else(|| bad_signature("signature header"))
        }
        WebhookAuth::StandardWebhooks { secret: key } => {
            let key = secret(engine, key).await?;
            let key = match std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.strip_prefix("whsec_"))
            {
                Some(encoded) => STANDARD.decode(encoded).map_err(|_| {
                    ApiError::Internal("the webhook's whsec_ secret is not base64".into())
                })?,
                None => key,
            };
            let (Some(id), Some(timestamp), Some(signatures)) = (
                header(headers, "webhook-id"),
                header(headers, "webhook-timestamp"),
                header(headers, "webhook-signature"),
            ) else {
                return Err(bad_signature(
                    "webhook-id, webhook-timestamp and webhook-signature headers",
                ));
            };
            let at: i64 = timestamp
                .parse()
                .map_err(|_| bad_signature("webhook-timestamp"))?;
            if (Utc::now().timestamp() - at).abs() > TOLERANCE_SECS {
                return Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("webhook-timestamp {at} is more than {TOLERANCE_SECS} s from now"),
                ));
            }
            let mut signed = format!("{id}.{timestamp}.").into_bytes();
            signed.extend_from_slice(body);
            let good = signatures
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .filter_map(|s| STANDARD.decode(s).ok())
                .any(|signature| verifies(&key, &signed, &signature));
            good.then_some(())
                .ok_or_else(|| bad_signature("webhook-signature"))
        }
    }
}

/// The body as a value: JSON, or a form (`application/x-www-form-urlencoded`).
fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = header(headers, "content-type").unwrap_or("application/json");
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::BadRequest(format!("the form body does not parse: {e}")))?;
        return Ok(Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ));
    }
    sluice_core::bounded::from_json(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not acceptable JSON ({e}); send JSON, or a form with Content-Type: application/x-www-form-urlencoded"
        ))
    })
}

fn delivery_id(headers: &HeaderMap) -> Option<&str> {
    ["x-github-delivery", "webhook-id", "idempotency-key"]
        .into_iter()
        .find_map(|name| header(headers, name))
        .filter(|id| !id.is_empty() && id.len() <= 200)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{url}",
    tag = "webhooks",
    params(("url" = String, Path, description = "The webhook URL a rule listens on, or st2")),
    request_body = Value,
    responses((status = 202, description = "The event is stored", body = Value)),
    security((), ("bearer" = []))
)]
async fn receive(
    State(engine): State<AppState>,
    Path(url): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let url = webhook::normalize(&url);
    let (trigger, payload, msg_id) = if url == "st2" {
        token(&engine, &headers).await?;
        let request = body_value(&headers, &body)?;
        let trigger = request
            .get("trigger")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::BadRequest("the body needs \"trigger\": the trigger's pack.name".into())
            })?
            .to_owned();
        if !engine.catalog().triggers.contains_key(&trigger) {
            return Err(ApiError::NotFound(format!("no trigger {trigger}")));
        }
        let payload = request.get("payload").cloned().unwrap_or_else(|| json!({}));
        let msg_id = delivery_id(&headers).map(|id| format!("st2:{trigger}:{id}"));
        (trigger, payload, msg_id)
    } else {
        let catalog = engine.catalog();
        let hook = catalog
            .webhook(&url)
            .ok_or_else(|| ApiError::NotFound(format!("no webhook {url}")))?;
        check(&engine, &hook.auth, &headers, &body).await?;
        let msg_id = delivery_id(&headers).map(|id| format!("webhook:{url}:{id}"));
        let body = body_value(&headers, &body)?;
        let headers: Map<String, Value> = headers
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "authorization" | "st2-api-key" | "cookie")
            })
            .filter_map(|(name, value)| {
                Some((
                    name.as_str().to_owned(),
                    Value::String(value.to_str().ok()?.to_owned()),
                ))
            })
            .collect();
        let payload = json!({ "url": url, "headers": headers, "body": body });
        (webhook::TRIGGER.to_owned(), payload, msg_id)
    };
    let bytes = serde_json::to_vec(&payload).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (sequence, duplicate) = engine
        .publish_trigger(&trigger, bytes, msg_id.as_deref())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "trigger": trigger, "stream_seq": sequence, "duplicate": duplicate })),
    ))
}

//! What the API's handlers share: the state they run on, and the one mapping from
//! failures to status codes and JSON bodies, so internal details never reach a client.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_engine::{CancelError, Engine, SubmitError};
use sluice_store::StoreError;
use tracing::error;

pub type AppState = Arc<Engine>;

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// No credential, or one that is unknown, revoked or expired.
    Unauthorized(String),
    /// A valid token whose scope does not allow the request.
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    BadRequest(String),
    Unprocessable(String),
    /// A request that parses but has problems, each at a field (`parameters.seconds`,
    /// `action.ref`): `422` listing them all.
    Invalid {
        detail: String,
        errors: Vec<(String, String)>,
    },
    /// Packs that would not load: `422` with every problem, each with its file and field.
    BrokenPacks {
        detail: String,
        errors: Vec<Value>,
    },
    Internal(String),
}

impl From<sluice_engine::PackError> for ApiError {
    fn from(e: sluice_engine::PackError) -> Self {
        use sluice_engine::PackError;
        match e {
            PackError::NotFound(m) => Self::NotFound(m),
            PackError::Conflict(m) => Self::Conflict(m),
            PackError::Source(m) => Self::Unprocessable(m),
            PackError::Internal(m) => Self::Internal(m),
            PackError::Broken(ref broken) => Self::BrokenPacks {
                detail: e.to_string(),
                errors: broken
                    .iter()
                    .flat_map(|b| {
                        b.errors.iter().map(|error| {
                            json!({
                                "pack": b.name,
                                "file": error.file.display().to_string(),
                                "field": error.field,
                                "message": error.message,
                            })
                        })
                    })
                    .collect(),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::UnknownAction { .. } | SubmitError::NoExecution(_) => {
                Self::NotFound(e.to_string())
            }
            SubmitError::InvalidParameters(ref errors) => Self::Invalid {
                detail: e.to_string(),
                errors: errors
                    .errors
                    .iter()
                    .map(|p| (format!("parameters.{}", p.name()), p.to_string()))
                    .collect(),
            },
            SubmitError::Disabled(_) | SubmitError::Default(_) | SubmitError::Unreadable(..) => {
                Self::Unprocessable(e.to_string())
            }
            SubmitError::Sealing(e) => Self::Internal(e),
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound(_) => Self::NotFound(e.to_string()),
            CancelError::Finished(..) => Self::Conflict(e.to_string()),
            CancelError::Store(e) => e.into(),
            CancelError::Bus(e) => Self::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            Self::Unauthorized(m) => {
                let mut response = problem(StatusCode::UNAUTHORIZED, &m);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sluice\""),
                );
                return response;
            }
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Conflict(m) => (StatusCode::CONFLICT, m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            Self::Invalid { detail, errors } => {
                let errors: Vec<Value> = errors
                    .into_iter()
                    .map(|(field, message)| json!({ "field": field, "message": message }))
                    .collect();
                let mut body = problem_body(StatusCode::UNPROCESSABLE_ENTITY, &detail);
                body["errors"] = json!(errors);
                return problem_response(StatusCode::UNPROCESSABLE_ENTITY, &body);
            }
            Self::BrokenPacks { detail, errors } => {
                let mut body = problem_body(StatusCode::UNPROCESSABLE_ENTITY, &detail);
                body["errors"] = json!(errors);
                return problem_response(StatusCode::UNPROCESSABLE_ENTITY, &body);
            }
            Self::Internal(detail) => {
                error!(error = detail, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the engine's log".to_owned(),
                )
            }
        };
        problem(status, &detail)
    }
}

/// An error as RFC 9457 problem details (`application/problem+json`): `type`, `title` (the
/// status's phrase), `status`, and `detail`, which says what is wrong and where.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    problem_response(status, &problem_body(status, detail))
}

/// RFC 9457 problem details: every error the API answers with.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The status's phrase.
    title: String,
    status: u16,
    /// What is wrong, and where: the parameter, field, file or filter at fault.
    detail: String,
    /// Each problem of a request with several, with its field (and file, for packs).
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<Value>>,
}

fn problem_body(status: StatusCode, detail: &str) -> Value {
    json!(Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        errors: None,
    })
}

fn problem_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// A JSON request body, decoded within [`sluice_core::bounded`]'s limits (depth, size,
/// 64-bit integers, no duplicate keys), then read as `T`. Any problem is a `400` saying
/// what is wrong.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::BadRequest(
                "send the body as JSON, with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let value = sluice_core::bounded::from_json(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not acceptable JSON: {e}")))?;
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::BadRequest(format!("the body does not fit: {e}")))
    }
}

/// A query string read as `T`; one that does not fit is a `400` problem naming the
/// parameter, in the API's one error shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Query<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| {
                ApiError::BadRequest(format!("the query string does not fit: {}", e.body_text()))
            })
    }
}

/// An instant in a query: RFC 3339 (`2026-11-30T07:00:00Z`), or a duration back from now
/// (`90m`, `1h`, `7d`).
pub(crate) fn instant(
    name: &str,
    text: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(at.with_timezone(&chrono::Utc)));
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|ago| chrono::Duration::from_std(ago).ok())
        .map(|ago| Some(chrono::Utc::now() - ago))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name}={text:?}: write an RFC 3339 time (2026-11-30T07:00:00Z) or a duration back from now (90m, 1h, 7d)"
            ))
        })
}

//! Who may call the API. Every route but `/healthz` needs a token, sent as
//! `Authorization: Bearer <token>` or, as StackStorm clients do, `St2-Api-Key: <token>` or
//! `X-Auth-Token: <token>`;
//! the dashboard's pages send it in their HttpOnly, SameSite=Strict cookie
//! ([`SESSION_COOKIE`]), and a request that changes something on a cookie alone must also
//! carry [`DASHBOARD_HEADER`], which a page on another site cannot add.
//!
//! A token is 32 random bytes, shown once when it is created; the store keeps only its
//! SHA-256, its scope ([`Scope`]: read, run, admin), expiry, last use and revocation. What
//! a request needs is decided in one place, [`needed_scope`]: reading needs `read`,
//! starting and cancelling executions `run`, anything else `admin`.
//!
//! An action is given a token of its own execution (`ST2_ACTION_AUTH_TOKEN`,
//! [`sluice_bus::ExecutionTokens`]): it has the `run` scope, is kept nowhere, and is
//! refused once the execution has ended or moved on to another attempt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sluice_bus::ExecutionTokens;
use sluice_core::{ExecutionStatus, Scope};
use sluice_store::{NewToken, Store, StoreError, Token};
use tracing::{info, warn};

use crate::error::{ApiError, AppState};

/// What a token starts with, so one is recognisable in a file or a leaked log.
const PREFIX: &str = "slc_";

/// How stale `last_used_at` may get before a request writes it again.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The cookie the dashboard keeps its token in after logging in.
pub const SESSION_COOKIE: &str = "sluice_token";

/// The header the dashboard's scripts send with every request that changes something: a
/// cross-site form or `fetch` cannot add it without the preflight this API never grants.
pub const DASHBOARD_HEADER: &str = "x-sluice-dashboard";

/// The name of the file `sluice up` and `sluice engine` write their first admin token to,
/// in the data directory, and where the CLI looks for one.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The hex SHA-256 of a token: what the store keeps.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token: stored as its hash; the token itself is returned, once.
pub async fn issue(
    store: &Store,
    name: &str,
    scope: Scope,
    expires_in: Option<Duration>,
) -> Result<(Token, String), IssueError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| IssueError::Random(e.to_string()))?;
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    let now = Utc::now();
    let expires_at = expires_in
        .map(|d| chrono::TimeDelta::from_std(d).map(|d| now + d))
        .transpose()
        .map_err(|_| IssueError::TooLong)?;
    let id = store
        .create_token(&NewToken {
            name: name.to_owned(),
            scope,
            hash: hash(&secret),
            expires_at,
        })
        .await?;
    let token = Token {
        id,
        name: name.to_owned(),
        scope,
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    Ok((token, secret))
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no randomness for a token: {0}")]
    Random(String),
    #[error("the expiry is too far away")]
    TooLong,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// On an engine's first start, when the store has no token at all: creates an admin token
/// and writes it to `<data_dir>/admin.token`, readable by its owner only. Returns the
/// file's path when it wrote one.
pub async fn bootstrap_admin_token(
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    use anyhow::Context as _;
    if store.count_tokens().await? > 0 {
        return Ok(None);
    }
    let (_, secret) = issue(
        store,
        "first admin (created at first start)",
        Scope::Admin,
        None,
    )
    .await
    .context("failed to create the first admin token")?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, &secret)
        .with_context(|| format!("failed to write the admin token to {}", path.display()))?;
    info!(path = %path.display(), "first admin token written; the CLI reads it from there");
    Ok(Some(path))
}

/// Writes `text` to a new file that only its owner can read or write.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

/// Parses an expiry such as `30d`, `12h` or `90m`.
pub fn parse_expiry(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("expires {text:?}: {e} (write it as 30d, 12h or 90m)"))
}

/// What a request needs: reading (and testing a rule) `read`; starting, re-running and
/// cancelling executions `run`;
/// everything else (tokens, and whatever is added later) `admin`.
pub fn needed_scope(method: &Method, path: &str) -> Scope {
    if path.starts_with("/api/v1/tokens") {
        return Scope::Admin;
    }
    // Testing a rule fires nothing: it reads.
    let test = path.starts_with("/api/v1/rules/") && path.ends_with("/test");
    if matches!(*method, Method::GET | Method::HEAD) || (*method == Method::POST && test) {
        return Scope::Read;
    }
    let run = path == "/api/v1/executions"
        || (path.starts_with("/api/v1/executions/")
            && (path.ends_with("/cancel") || path.ends_with("/re-run")));
    if *method == Method::POST && run {
        Scope::Run
    } else {
        Scope::Admin
    }
}

/// How a request carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    Header,
    Cookie,
}

/// The token a request carries, if any: a header first, then the dashboard's cookie.
pub(crate) fn presented(headers: &HeaderMap) -> Option<(&str, Carrier)> {
    if TOKEN_HEADERS.iter().any(|name| headers.contains_key(*name)) {
        return in_header(headers).map(|token| (token, Carrier::Header));
    }
    session_cookie(headers).map(|token| (token, Carrier::Cookie))
}

/// The headers a token may come in: `Authorization: Bearer`, and StackStorm's two.
const TOKEN_HEADERS: [&str; 3] = ["authorization", "st2-api-key", "x-auth-token"];

/// The token a request carries in `Authorization: Bearer`, `St2-Api-Key` or
/// `X-Auth-Token`.
pub(crate) fn in_header(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (kind, token) = value.split_once(' ')?;
        return kind.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    TOKEN_HEADERS[1..]
        .iter()
        .find_map(|name| headers.get(*name))?
        .to_str()
        .ok()
        .map(str::trim)
}

/// The dashboard's token from the `Cookie` headers, if there is one.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
}

/// The caller a request was authenticated as, for handlers that record who did what.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `execution <id>` for an execution's token.
    pub name: String,
    pub scope: Scope,
}

impl From<Token> for Caller {
    fn from(token: Token) -> Self {
        Self {
            name: token.name,
            scope: token.scope,
        }
    }
}

/// Who `secret` is: an API token from the store, or the token of an execution that is
/// running now.
pub(crate) async fn identify(
    engine: &AppState,
    secret: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Caller, ApiError> {
    match secret {
        Some(secret) if ExecutionTokens::is_one(secret) => execution_caller(engine, secret).await,
        _ => authenticate(engine.store(), secret, now)
            .await
            .map(Caller::from),
    }
}

/// The caller an execution's token stands for, while that attempt of the execution runs.
async fn execution_caller(engine: &AppState, secret: &str) -> Result<Caller, ApiError> {
    let Some((id, attempt)) = engine.execution_tokens().verify(secret) else {
        return Err(ApiError::Unauthorized("the token is not valid".into()));
    };
    let ended = || {
        ApiError::Unauthorized(format!(
            "the token of execution {id}, attempt {attempt}, ended with that attempt"
        ))
    };
    let execution = engine.store().get_execution(id).await?.ok_or_else(ended)?;
    let running = matches!(
        execution.status,
        ExecutionStatus::Scheduled | ExecutionStatus::Running
    );
    if !running || execution.attempt != attempt {
        return Err(ended());
    }
    Ok(Caller {
        name: format!("execution {id}"),
        scope: Scope::Run,
    })
}

/// The middleware in front of every route but `/healthz`.
pub async fn authorize(
    State(engine): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let needed = needed_scope(request.method(), request.uri().path());
    let credential = presented(request.headers());
    let caller = match identify(&engine, credential.map(|(t, _)| t), Utc::now()).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let by_cookie = credential.is_some_and(|(_, carrier)| carrier == Carrier::Cookie);
    if by_cookie && !safe && !request.headers().contains_key(DASHBOARD_HEADER) {
        return ApiError::Forbidden(format!(
            "{} {} came with the dashboard's cookie but without its {DASHBOARD_HEADER} header: \
             refused as a cross-site request",
            request.method(),
            request.uri().path()
        ))
        .into_response();
    }
    if !caller.scope.allows(needed) {
        return ApiError::Forbidden(format!(
            "token {:?} has the {} scope; {} {} needs {needed}",
            caller.name,
            caller.scope,
            request.method(),
            request.uri().path()
        ))
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The live token `secret` names, or why there is none.
pub(crate) async fn authenticate(
    store: &Store,
    secret: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Token, ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::Unauthorized(
            "no credential: send `Authorization: Bearer <token>` or `St2-Api-Key: <token>` \
             (`sluice up` wrote an admin token to <data-dir>/admin.token)"
                .into(),
        ));
    };
    let unknown = || ApiError::Unauthorized("the token is not valid".into());
    let token = store
        .token_by_hash(&hash(secret))
        .await?
        .ok_or_else(unknown)?;
    if token.revoked_at.is_some() {
        return Err(ApiError::Unauthorized("the token was revoked".into()));
    }
    if !token.is_live(now) {
        return Err(ApiError::Unauthorized("the token has expired".into()));
    }
    if token.last_used_at.is_none_or(|at| now - at > TOUCH_EVERY)
        && let Err(e) = store.touch_token(token.id, now).await
    {
        warn!(token_id = token.id, error = %e, "failed to record the token's use");
    }
    Ok(token)
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::TooLong => Self::Unprocessable(e.to_string()),
            IssueError::Store(e) => e.into(),
            IssueError::Random(_) => Self::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn each_route_needs_the_least_scope_that_covers_it() {
        let cases = [
            (Method::GET, "/api/v1/executions", Scope::Read),
            (Method::GET, "/metrics", Scope::Read),
            (Method::POST, "/api/v1/executions", Scope::Run),
            (Method::POST, "/api/v1/executions/7/cancel", Scope::Run),
            (Method::POST, "/api/v1/executions/7/re-run", Scope::Run),
            (Method::POST, "/api/v1/executions/cancel", Scope::Run),
            (Method::GET, "/api/v1/tokens", Scope::Admin),
            (Method::POST, "/api/v1/tokens", Scope::Admin),
            (Method::DELETE, "/api/v1/tokens/3", Scope::Admin),
            (Method::DELETE, "/api/v1/executions/7", Scope::Admin),
            (Method::PUT, "/api/v1/anything", Scope::Admin),
            (Method::GET, "/api/v1/rules", Scope::Read),
            (
                Method::POST,
                "/api/v1/rules/examples.log_alert/disable",
                Scope::Admin,
            ),
        ];
        for (method, path, scope) in cases {
            assert_eq!(needed_scope(&method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn a_token_is_read_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; sluice_token=slc_c"),
        );
        assert_eq!(presented(&headers), Some(("slc_c", Carrier::Cookie)));
        headers.insert("x-auth-token", HeaderValue::from_static("slc_x"));
        assert_eq!(presented(&headers), Some(("slc_x", Carrier::Header)));
        headers.insert("st2-api-key", HeaderValue::from_static("slc_a"));
        assert_eq!(presented(&headers), Some(("slc_a", Carrier::Header)));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer slc_b"),
        );
        assert_eq!(presented(&headers), Some(("slc_b", Carrier::Header)));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        assert_eq!(presented(&headers), None, "only bearer tokens");
    }

    #[test]
    fn expiries_read_as_operators_write_them() {
        assert_eq!(parse_expiry("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_expiry("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert!(parse_expiry("soon").unwrap_err().contains("30d"));
    }
}

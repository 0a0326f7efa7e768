//! The dashboard: pages served by the engine at `/`, rendered in the browser by one
//! hand-written script that calls this API and nothing else.
//!
//! Every page but `/login` needs the token the login form put in an HttpOnly,
//! SameSite=Strict cookie; without a live one a page answers with a redirect to `/login`.
//! The pages themselves hold no state: what they show is fetched from `/api/v1` with that
//! cookie, so a scope that cannot do something is refused by the API as any other caller
//! is. Two routes exist for the dashboard's sake and are part of the API: `GET
//! /api/v1/session` (who the token is, what it may do) and `GET /api/v1/live` (a snapshot
//! every second as Server-Sent Events).

mod activity;
mod live;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, SESSION_COOKIE, authenticate, session_cookie};
use crate::error::{ApiError, AppState};

pub(crate) use activity::Activity;
pub(crate) use live::{__path_live, __path_session, live, session};

/// What the dashboard is told about its surroundings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where trace ids link to: `{jaeger_url}/trace/{trace_id}`.
    pub jaeger_url: Option<String>,
}

/// What the dashboard's handlers share besides the engine.
pub(crate) struct Dashboard {
    pub(crate) options: Options,
    pub(crate) activity: Arc<Activity>,
}

const PAGE: &str = include_str!("../../assets/page.html");
const LOGIN: &str = include_str!("../../assets/login.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// Every path the script draws a page for; each serves the same document.
const PAGES: [&str; 14] = [
    "/",
    "/executions",
    "/executions/{id}",
    "/actions",
    "/rules",
    "/events",
    "/events/{id}",
    "/actors",
    "/timers",
    "/workers",
    "/dead-letters",
    "/keys",
    "/tokens",
    "/packs",
];

/// The pages, the login form and the two static files.
pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/login", get(login_form).post(log_in))
        .route("/logout", axum::routing::post(log_out))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(style));
    for path in PAGES {
        router = router.route(path, get(page));
    }
    router
}

/// Headers on everything the dashboard serves: nothing from elsewhere runs or loads, the
/// pages are not framed, and nothing is cached that a later caller could see.
fn guarded(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page: the document the script draws into, for a caller with a live token in the
/// cookie; anyone else is sent to log in and brought back.
async fn page(
    State(engine): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    match authenticate(engine.store(), session_cookie(&headers), Utc::now()).await {
        Ok(_) => guarded("text/html; charset=utf-8", PAGE),
        Err(ApiError::Unauthorized(_)) => {
            let next = uri
                .path_and_query()
                .map_or("/", axum::http::uri::PathAndQuery::as_str);
            let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            Redirect::to(&format!("/login?{query}")).into_response()
        }
        Err(other) => other.into_response(),
    }
}

async fn login_form() -> Response {
    guarded("text/html; charset=utf-8", LOGIN)
}

async fn script() -> Response {
    guarded("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    guarded("text/css; charset=utf-8", STYLE)
}

#[derive(Deserialize)]
struct LogIn {
    token: String,
    #[serde(default)]
    next: String,
}

/// Where to go after logging in: a path on this server, never another site.
fn local(next: &str) -> &str {
    let own = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    if own && !next.starts_with("/login") {
        next
    } else {
        "/"
    }
}

/// The login form's answer: with a live token, the cookie and the page asked for; with
/// any other, the form again saying so (which of unknown, revoked or expired is not told).
async fn log_in(
    State(engine): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogIn>,
) -> Result<Response, ApiError> {
    let secret = form.token.trim();
    let token = match authenticate(engine.store(), Some(secret), Utc::now()).await {
        Ok(token) => token,
        Err(ApiError::Unauthorized(_)) => {
            let query = serde_urlencoded::to_string([("failed", "1"), ("next", local(&form.next))])
                .unwrap_or_default();
            return Ok(Redirect::to(&format!("/login?{query}")).into_response());
        }
        Err(other) => return Err(other),
    };
    let mut cookie = format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(expires_at) = token.expires_at {
        let seconds = (expires_at - Utc::now()).num_seconds().max(0);
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if behind_https(&headers) {
        cookie.push_str("; Secure");
    }
    let mut response = Redirect::to(local(&form.next)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|_| {
            ApiError::BadRequest("the token has characters a cookie cannot hold".into())
        })?,
    );
    Ok(response)
}

/// Whether the request reached the engine through a proxy that took it over HTTPS.
fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

async fn log_out() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("a fixed cookie"),
    );
    response
}

/// Who the caller is as the dashboard shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Session {
    /// The token's name.
    token: String,
    /// `read`, `run` or `admin`.
    scope: sluice_core::Scope,
    /// What its scope allows, as the dashboard offers it.
    may: May,
    /// Where a trace id links to (`{jaeger_url}/trace/{id}`), when the engine was told.
    jaeger_url: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct May {
    /// Start, cancel and re-run executions.
    run: bool,
    /// Switch rules, change keys, manage tokens.
    admin: bool,
}

impl Session {
    pub(crate) fn of(caller: &Caller, options: &Options) -> Self {
        use sluice_core::Scope;
        Self {
            token: caller.name.clone(),
            scope: caller.scope,
            may: May {
                run: caller.scope.allows(Scope::Run),
                admin: caller.scope.allows(Scope::Admin),
            },
            jaeger_url: options.jaeger_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local;

    #[test]
    fn after_logging_in_a_caller_stays_on_this_server() {
        assert_eq!(local("/executions/7"), "/executions/7");
        assert_eq!(
            local("/executions?status=failed"),
            "/executions?status=failed"
        );
        for elsewhere in [
            "https://evil.example",
            "//evil.example",
            "/\\evil",
            "",
            "/login",
        ] {
            assert_eq!(local(elsewhere), "/", "{elsewhere}");
        }
    }
}

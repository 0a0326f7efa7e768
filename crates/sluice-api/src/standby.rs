//! What a standby engine serves while another engine holds the execution core: `/healthz`
//! (saying it is a standby, and who is primary), its own `/metrics`, and every other request
//! forwarded as it came — credentials included, so the primary decides who may do what — to
//! the primary's API. A request that arrives before the standby first read who is primary
//! waits for that read (at most the takeover time). Without a primary (between one engine's
//! end and the next one's takeover) a request gets 503 with a `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt as _;
use serde_json::json;
use sluice_bus::lease::Holder;
use tokio::sync::watch;

use crate::error::problem;

/// The most of a request body forwarded (a pack archive is the largest there is).
const MAX_FORWARDED_BODY: usize = 64 * 1024 * 1024;

/// The header a forwarded request carries: the engine that forwarded it.
pub(crate) const FORWARDED_BY: &str = "x-sluice-forwarded-by";

/// Headers that describe one hop, not the request: never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Who holds the execution core, as a standby engine last read it.
#[derive(Clone, Debug, PartialEq)]
pub enum Primary {
    /// Not read yet: the engine started a moment ago, or NATS has not answered it yet.
    Unread,
    /// No engine holds it: one takes it over within the takeover time.
    Vacant,
    Held(Holder),
}

struct Standby {
    /// This engine's name.
    engine: String,
    /// Who holds the execution core now, as this engine last read it.
    primary: watch::Receiver<Primary>,
    /// How long until a lost primary's lease has expired and an engine took over.
    takeover: Duration,
    http: reqwest::Client,
}

/// A client for forwarding: it follows no redirects, so the answer goes back as it came.
pub(crate) fn forwarding_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client builds")
}

/// Forwards `request`, about partition `partition`, from this engine (owning `partitions`)
/// to the engine that owns it (`holder`, from its lease): with several engines active at
/// once, the live state of an action (its queue, its active count) is on its owner only.
/// 503 with a `Retry-After` of the leases' life when no engine owns it now, or when the
/// request was forwarded to this engine already.
pub(crate) async fn to_partition_owner(
    partitions: &sluice_engine::Partitioned,
    partition: u32,
    holder: Option<Holder>,
    request: Request,
) -> Response {
    let (me, takeover) = (partitions.engine.as_str(), partitions.lease_ttl);
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let unavailable = |detail: String| {
        let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, &detail);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(takeover.as_secs().max(1)),
        );
        response
    };
    if let Some(by) = request.headers().get(FORWARDED_BY) {
        let by = by.to_str().unwrap_or("?");
        return unavailable(format!(
            "engine {by} forwarded this request to engine {me} as the owner of partition {partition}, which it is not (the partition is moving); try again shortly"
        ));
    }
    match holder {
        Some(Holder {
            engine,
            api_url: Some(base),
            ..
        }) => {
            relay(
                HTTP.get_or_init(forwarding_client),
                me,
                &engine,
                &base,
                request,
            )
            .await
        }
        Some(Holder { engine, .. }) => unavailable(format!(
            "engine {engine}, which owns partition {partition}, advertises no API URL; give it --advertise-url"
        )),
        None => unavailable(format!(
            "no engine owns partition {partition} right now (or its lease could not be read from NATS); one takes it over within {} s",
            takeover.as_secs().max(1)
        )),
    }
}

/// The router of a standby engine named `engine`.
pub fn standby_app(
    engine: String,
    primary: watch::Receiver<Primary>,
    takeover: Duration,
) -> Router {
    let http = forwarding_client();
    let state = Arc::new(Standby {
        engine,
        primary,
        takeover,
        http,
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::exposition::metrics))
        .fallback(forward)
        .with_state(state)
}

async fn healthz(State(standby): State<Arc<Standby>>) -> Response {
    let primary = match &*standby.primary.borrow() {
        Primary::Held(holder) => Some(holder.clone()),
        Primary::Unread | Primary::Vacant => None,
    };
    axum::Json(json!({
        "status": "ok",
        "role": "standby",
        "engine": standby.engine,
        "primary": primary,
    }))
    .into_response()
}

async fn forward(State(standby): State<Arc<Standby>>, request: Request) -> Response {
    if let Some(by) = request.headers().get(FORWARDED_BY) {
        // The engine it was forwarded to is a standby too (or this one, advertised wrongly).
        let by = by.to_str().unwrap_or("?").to_owned();
        return unavailable(
            &standby,
            &format!(
                "engine {} is a standby, and so is engine {by}, which forwarded this request; check each engine's --advertise-url",
                standby.engine
            ),
        );
    }
    let mut watched = standby.primary.clone();
    let read = watched.wait_for(|p| *p != Primary::Unread);
    let primary = match tokio::time::timeout(standby.takeover, read).await {
        Ok(Ok(primary)) => primary.clone(),
        Ok(Err(_)) | Err(_) => Primary::Unread,
    };
    let (holder, base) = match primary {
        Primary::Held(Holder {
            engine,
            api_url: Some(base),
            ..
        }) => (engine, base),
        Primary::Held(Holder { engine, .. }) => {
            return unavailable(
                &standby,
                &format!(
                    "engine {} is a standby, and engine {}, which holds the execution core, advertises no API URL; give it --advertise-url",
                    standby.engine, engine
                ),
            );
        }
        Primary::Vacant => {
            return unavailable(
                &standby,
                &format!(
                    "engine {} is a standby and no engine holds the execution core right now; one takes over within {} s",
                    standby.engine,
                    standby.takeover.as_secs()
                ),
            );
        }
        Primary::Unread => {
            return unavailable(
                &standby,
                &format!(
                    "engine {} is a standby and could not yet read which engine holds the execution core from NATS",
                    standby.engine
                ),
            );
        }
    };
    relay(&standby.http, &standby.engine, &holder, &base, request).await
}

/// Sends `request` on, as it came and credentials included, to engine `to`'s API at `base`,
/// marked as forwarded by engine `by`, and streams the answer back; 502 if `to` cannot be
/// reached.
pub(crate) async fn relay(
    http: &reqwest::Client,
    by: &str,
    to: &str,
    base: &str,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(body) => body,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {MAX_FORWARDED_BODY} bytes"),
            );
        }
    };
    let mut headers = without_hop_headers(&parts.headers);
    headers.insert(
        HeaderName::from_static(FORWARDED_BY),
        HeaderValue::from_str(by).unwrap_or(HeaderValue::from_static("engine")),
    );
    let sent = http
        .request(parts.method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(to, error = %e, "could not forward a request to another engine");
            return problem(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "engine {by} could not reach engine {to}, which answers this request; try again shortly"
                ),
            );
        }
    };
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        *headers = without_hop_headers(answer.headers());
    }
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// 503 with a `Retry-After` of the takeover time.
fn unavailable(standby: &Standby, detail: &str) -> Response {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, detail);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(standby.takeover.as_secs().max(1)),
    );
    response
}

fn without_hop_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    kept
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use tower::ServiceExt as _;

    use super::*;

    fn request() -> Request {
        Request::builder()
            .method(Method::GET)
            .uri("/api/v1/ledger")
            .body(Body::empty())
            .unwrap()
    }

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// A primary's API on a loopback port that answers every request with its path.
    async fn primary_api() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(|request: Request| async move {
            format!("primary saw {}", request.uri().path())
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn a_request_before_the_first_read_waits_for_it_and_is_forwarded() {
        let (primary, watched) = watch::channel(Primary::Unread);
        let app = standby_app("e1".into(), watched, Duration::from_secs(3));
        let answering = tokio::spawn(app.oneshot(request()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !answering.is_finished(),
            "answered before the lease was read"
        );
        primary.send_replace(Primary::Held(Holder {
            engine: "e0".into(),
            api_url: Some(primary_api().await),
            since: chrono::Utc::now(),
        }));
        let answer = answering.await.unwrap().unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(body(answer).await, "primary saw /api/v1/ledger");
    }

    #[tokio::test]
    async fn without_a_primary_or_a_read_a_request_gets_503_saying_which() {
        let (primary, watched) = watch::channel(Primary::Unread);
        let app = standby_app("e1".into(), watched, Duration::from_millis(200));
        let answer = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key(header::RETRY_AFTER));
        assert!(
            body(answer).await.contains("could not yet read"),
            "an unread lease is not reported as a vacant one"
        );

        primary.send_replace(Primary::Vacant);
        let answer = app.oneshot(request()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body(answer)
                .await
                .contains("no engine holds the execution core")
        );
    }
}

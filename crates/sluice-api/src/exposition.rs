//! The Prometheus text exposition every process's `/metrics` answers with.

use axum::response::IntoResponse;

pub(crate) fn prometheus_text(text: String) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            sluice_telemetry::metrics::CONTENT_TYPE,
        )],
        text,
    )
}

/// The Prometheus text exposition of the process's counters and histograms.
pub async fn metrics() -> impl IntoResponse {
    prometheus_text(sluice_telemetry::metrics().render())
}

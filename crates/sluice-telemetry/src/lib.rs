//! Logging, tracing and metrics for Sluice's processes.
//!
//! - Logs: human-readable lines by default, JSON for machines, filtered by `RUST_LOG`
//!   (default `info`). A line logged inside an execution's span carries its
//!   `execution_id` and `trace_id`.
//! - Traces: every process records OpenTelemetry spans, so trace ids exist and travel in
//!   message headers (W3C `traceparent` / `tracestate`) even when nothing is exported. With
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are
//!   exported over OTLP, `grpc` or `http/protobuf` by `OTEL_EXPORTER_OTLP_PROTOCOL`. An
//!   unreachable collector costs failed exports in the background, never a blocked or
//!   failed request.
//! - Metrics: the process's Prometheus counters and histograms ([`metrics()`]).

pub mod metrics;
mod propagation;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use metrics::metrics;
pub use opentelemetry::KeyValue;
pub use propagation::{
    TRACEPARENT, TRACESTATE, TraceContext, TraceHeaders, continue_trace, record_ended_span,
    trace_headers, trace_id,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (human or json)")),
        }
    }
}

/// The process's tracing pipeline; [`Telemetry::shutdown`] flushes what is left to export.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (waiting at most a few seconds for the collector).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                    eprintln!("trace export at shutdown failed: {e}");
                }
            })
            .await;
        }
    }
}

/// Where spans go, from the standard OpenTelemetry environment variables.
fn otlp_exporter() -> Option<Result<opentelemetry_otlp::SpanExporter, String>> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_timeout(Duration::from_secs(5))
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(Duration::from_secs(5))
            .build(),
        other => {
            return Some(Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (grpc or http/protobuf)"
            )));
        }
    };
    Some(exporter.map_err(|e| e.to_string()))
}

/// Installs the global subscriber: logs in `format`, and OpenTelemetry spans named for
/// `service` (unless `OTEL_SERVICE_NAME` says otherwise). Call it inside the tokio runtime.
/// A second call is a no-op for the subscriber.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn"));
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let mut export_error = None;
    match otlp_exporter() {
        Some(Ok(exporter)) => {
            let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            builder = builder.with_span_processor(processor);
        }
        Some(Err(e)) => export_error = Some(e),
        None => {}
    }
    let provider = builder.build();
    // Spans recorded after the fact (`record_ended_span`) go through the global tracer.
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Spans are recorded for Sluice's own code at `info` whatever `RUST_LOG` says: the
    // log level must not decide whether a trace exists.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_filter(Targets::new().with_target("sluice", Level::INFO));
    let registry = tracing_subscriber::registry().with(otel);
    let _ = match format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if let Some(e) = export_error {
        tracing::error!(error = e, "trace export is off");
    }
    Telemetry {
        provider: Some(provider),
    }
}

/// Logs only (no spans recorded): for commands that talk to a running Sluice. Warnings and
/// errors only unless `RUST_LOG` says otherwise, so a command's output is not mixed with the
/// clients' connection notes.
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

//! An OTLP trace receiver for tests: what a collector such as Jaeger would receive, over
//! gRPC and over HTTP/protobuf, kept in memory for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use crate::net::{free_port, wait_for_port};

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }
}

type Spans = Arc<Mutex<Vec<ReceivedSpan>>>;

/// Listens for OTLP exports on two free ports: gRPC ([`OtlpReceiver::grpc_endpoint`]) and
/// HTTP/protobuf ([`OtlpReceiver::http_endpoint`]).
pub struct OtlpReceiver {
    grpc_port: u16,
    http_port: u16,
    spans: Spans,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn collect(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpReceiver {
    /// Starts both listeners on the current tokio runtime.
    pub async fn start() -> Self {
        let spans: Spans = Arc::default();
        let (grpc_port, http_port) = (free_port(), free_port());
        let grpc = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(spans.clone())))
            .serve(([127, 0, 0, 1], grpc_port).into());
        let http_spans = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = http_spans.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            collect(&spans, request);
                            (
                                axum::http::StatusCode::OK,
                                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                                ExportTraceServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
            .await
            .expect("bind the OTLP/HTTP receiver");
        let tasks = vec![
            tokio::spawn(async move {
                let _ = grpc.await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        ];
        wait_for_port(grpc_port, std::time::Duration::from_secs(10))
            .expect("the OTLP/gRPC receiver did not start");
        Self {
            grpc_port,
            http_port,
            spans,
            tasks,
        }
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT` with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

//! W3C trace context across NATS messages: a span's context as `traceparent` /
//! `tracestate` headers, and a span continued from such headers.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header that carries a span's trace and parent ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header that carries vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// Trace context headers by name (`traceparent`, and `tracestate` when there is one).
pub type TraceHeaders = HashMap<String, String>;

struct Headers<'a>(&'a mut TraceHeaders);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a TraceHeaders);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context of `span` as headers; empty when the span is not recorded.
pub fn trace_headers(span: &tracing::Span) -> TraceHeaders {
    let mut headers = TraceHeaders::new();
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Headers(&mut headers));
    }
    headers
}

/// Makes `span` a child of the context in `lookup`'s `traceparent` / `tracestate`, if any,
/// and records the resulting trace id in the span's `trace_id` field when it declares one.
pub fn continue_trace(span: &tracing::Span, lookup: impl Fn(&str) -> Option<String>) {
    let mut headers = TraceHeaders::new();
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = lookup(name) {
            headers.insert(name.to_owned(), value);
        }
    }
    if headers.contains_key(TRACEPARENT) {
        let context = TraceContextPropagator::new().extract(&MapExtractor(&headers));
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id);
    }
}

/// The trace id of `span` in hex, when it is recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

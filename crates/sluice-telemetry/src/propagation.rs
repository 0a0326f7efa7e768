//! W3C trace context across NATS messages: a span's context as `traceparent` /
//! `tracestate` headers, and a span continued from such headers.

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanContext, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
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
    TraceContext::of(span).headers()
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
    TraceContext::from_headers(&headers).continue_in(span);
}

/// The trace id of `span` in hex, when it is recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// A trace context held small: the ids of a `traceparent` and what a `tracestate` said,
/// parsed, for what waits long, such as a queued execution. Empty when there was none, or
/// the span it came from is not recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceContext(Option<SpanContext>);

impl TraceContext {
    /// The context of `span`, as [`trace_headers`] would send it.
    pub fn of(span: &tracing::Span) -> Self {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        Self(span_context.is_valid().then_some(span_context))
    }

    /// The context `headers` carry.
    pub fn from_headers(headers: &TraceHeaders) -> Self {
        if !headers.contains_key(TRACEPARENT) {
            return Self::default();
        }
        let context = TraceContextPropagator::new().extract(&MapExtractor(headers));
        let span_context = context.span().span_context().clone();
        Self(span_context.is_valid().then_some(span_context))
    }

    /// The context as `traceparent` / `tracestate` headers; empty when there is none.
    pub fn headers(&self) -> TraceHeaders {
        let mut headers = TraceHeaders::new();
        if let Some(context) = self.parent() {
            TraceContextPropagator::new().inject_context(&context, &mut Headers(&mut headers));
        }
        headers
    }

    /// The `traceparent` header alone, as the store keeps it.
    pub fn traceparent(&self) -> Option<String> {
        self.headers().remove(TRACEPARENT)
    }

    /// Makes `span` a child of this context, and records the trace id in the span's
    /// `trace_id` field when it declares one.
    pub fn continue_in(&self, span: &tracing::Span) {
        if let Some(context) = self.parent() {
            let _ = span.set_parent(context);
        }
        if let Some(id) = trace_id(span) {
            span.record("trace_id", id);
        }
    }

    /// The trace id in hex.
    pub fn trace_id(&self) -> Option<String> {
        self.0.as_ref().map(|c| c.trace_id().to_string())
    }

    /// A context whose span is this one, to start children in.
    fn parent(&self) -> Option<Context> {
        self.0
            .as_ref()
            .map(|span_context| Context::new().with_remote_span_context(span_context.clone()))
    }
}

/// Records a span named `name` that began at `start` and ends now, a child of `parent`: a
/// wait shown in its trace without a span held open, and its memory held, while it lasts.
/// Recorded only once telemetry's `init` has installed the tracer.
pub fn record_ended_span(
    name: &'static str,
    parent: &TraceContext,
    start: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let tracer = opentelemetry::global::tracer("sluice");
    let context = parent.parent().unwrap_or_default();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &context);
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_gives_back_the_headers_it_was_read_from() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = TraceHeaders::new();
        headers.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
        headers.insert(TRACESTATE.to_owned(), "vendor=value".to_owned());

        let context = TraceContext::from_headers(&headers);
        assert_eq!(context.headers(), headers);
        assert_eq!(
            context.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn no_or_a_malformed_traceparent_is_no_context() {
        assert_eq!(
            TraceContext::from_headers(&TraceHeaders::new()),
            TraceContext::default()
        );
        let mut headers = TraceHeaders::new();
        headers.insert(TRACEPARENT.to_owned(), "00-not-a-trace-01".to_owned());
        let context = TraceContext::from_headers(&headers);
        assert_eq!(context, TraceContext::default());
        assert!(context.headers().is_empty());
        assert_eq!(context.trace_id(), None);
    }
}

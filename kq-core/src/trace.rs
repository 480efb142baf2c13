//! Tracing around messages: the span each handler runs in, and W3C trace context carried in
//! message headers (`traceparent`, `tracestate`) with the `opentelemetry` feature.
//!
//! With the feature, a push made inside a traced span writes that span's context into the
//! message's headers, and the handler's span continues the trace found in the headers it
//! reads, so one trace follows a request through every service the message passes.

use rdkafka::message::{Header, OwnedHeaders};

use crate::message::Message;

/// The target of the message spans, which the span export enables at debug level.
pub(crate) const CONSUME_TARGET: &str = "kq::consume";

/// The span a message's handler runs in. Errors and retries are logged inside it.
///
/// It is a debug span: a subscriber that records it (the log output formats its fields when
/// it opens) pays for that on every message, as much again as the rest of kq's consume path.
/// Log lines carry it at `Level: debug`; the span export takes it at any level.
pub(crate) fn message_span(consumer: &str, group: &str, msg: &Message) -> tracing::Span {
    let span = tracing::debug_span!(
        target: CONSUME_TARGET,
        "kq.consume",
        consumer,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        group,
    );
    #[cfg(feature = "opentelemetry")]
    w3c::continue_trace(&span, msg);
    span
}

/// Adds the current span's trace context to a message's headers, when there is one.
pub(crate) fn inject(headers: Option<OwnedHeaders>) -> Option<OwnedHeaders> {
    #[cfg(feature = "opentelemetry")]
    return w3c::inject(headers);
    #[cfg(not(feature = "opentelemetry"))]
    headers
}

/// `headers`, or none yet, with one more at the end.
pub(crate) fn append_header(
    headers: Option<OwnedHeaders>,
    name: &str,
    value: &[u8],
) -> OwnedHeaders {
    headers.unwrap_or_default().insert(Header {
        key: name,
        value: Some(value),
    })
}

#[cfg(feature = "opentelemetry")]
mod w3c {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use rdkafka::message::OwnedHeaders;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::append_header;
    use crate::message::Message;

    /// Headers being written: the propagator's fields appended as Kafka headers.
    struct HeaderInjector(Option<OwnedHeaders>);

    impl Injector for HeaderInjector {
        fn set(&mut self, key: &str, value: String) {
            self.0 = Some(append_header(self.0.take(), key, value.as_bytes()));
        }
    }

    struct HeaderExtractor<'a>(&'a Message);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.headers().get_str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.headers().iter().map(|(name, _)| name).collect()
        }
    }

    pub(super) fn inject(headers: Option<OwnedHeaders>) -> Option<OwnedHeaders> {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return headers;
        }
        let mut injector = HeaderInjector(headers);
        TraceContextPropagator::new().inject_context(&context, &mut injector);
        injector.0
    }

    pub(super) fn continue_trace(span: &tracing::Span, msg: &Message) {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(msg));
        if parent.span().span_context().is_valid() {
            // Only fails when no OpenTelemetry layer is installed, and then there is no trace
            // to continue.
            let _ = span.set_parent(parent);
        }
    }
}

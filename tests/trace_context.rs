//! W3C trace context across a push and a consume (the `opentelemetry` feature): the pusher
//! writes the caller's trace into the headers, the handler's span continues it.
#![cfg(feature = "opentelemetry")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, unique, Running};
use kq::Pusher;
use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// What the handler saw: the `traceparent` header and its own span's trace id.
#[derive(Default)]
struct Seen {
    messages: Mutex<Vec<(String, Option<String>, TraceId)>>,
}

#[kq::consumer(conf = "Traced")]
async fn traced(seen: &kq::State<Seen>, msg: &kq::Message) {
    let trace_id = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id();
    seen.messages.lock().unwrap().push((
        msg.value_str().unwrap_or_default().to_owned(),
        msg.headers().get_str("traceparent").map(str::to_owned),
        trace_id,
    ));
}

// One thread: the subscriber below is this thread's default, and the handlers run here too.
#[tokio::test(flavor = "current_thread")]
async fn a_push_inside_a_span_continues_its_trace_in_the_handler() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kq-tests")));
    let _default = tracing::subscriber::set_default(subscriber);

    let topic = unique("traced");
    create_topic(&topic, 1).await;
    let pusher = Pusher::from_conf(&pusher_conf(&topic)).expect("pusher");

    let checkout = tracing::info_span!("checkout");
    let trace_id = checkout.context().span().span_context().trace_id();
    assert_ne!(trace_id, TraceId::INVALID);
    async {
        pusher.kpush("order-1", "kpush").await.expect("kpush");
        pusher.push("push").await.expect("push");
        pusher
            .message("builder")
            .header("source", "test")
            .send()
            .await
            .expect("builder");
    }
    .instrument(checkout)
    .await;
    // Outside any span nothing is injected.
    pusher.kpush("order-2", "untraced").await.expect("push");

    let seen = Arc::new(Seen::default());
    let running = Running::start("traced", consumer_conf(&topic), &seen);
    assert!(
        eventually(Duration::from_secs(60), || seen
            .messages
            .lock()
            .unwrap()
            .len()
            >= 4)
        .await
    );
    running.stop().await;

    let messages = seen.messages.lock().unwrap();
    for (value, traceparent, handler_trace) in messages.iter() {
        if value == "untraced" {
            assert_eq!(traceparent, &None);
            assert_ne!(
                *handler_trace, trace_id,
                "a message without context starts a new trace"
            );
            continue;
        }
        let traceparent = traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("{value}: no traceparent"));
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{value}: {traceparent} is not in trace {trace_id}"
        );
        assert_eq!(
            *handler_trace, trace_id,
            "{value}: the handler's span continues the trace"
        );
    }
}

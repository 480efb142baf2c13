//! The `Telemetry` block: with an endpoint, every handler's span reaches the collector as OTLP
//! over HTTP, under the service's name.
#![cfg(feature = "opentelemetry")]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, unique, Running};
use kq::{LogConf, Pusher, TelemetryConf};

/// One request the collector received.
struct Export {
    request_line: String,
    content_type: String,
    body: Vec<u8>,
}

/// A collector on a free port that answers every request with 200 and hands it over.
fn collector() -> (String, mpsc::Receiver<Export>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (exports, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            let export = Export {
                request_line: request_line.trim_end().to_owned(),
                content_type,
                body,
            };
            if exports.send(export).is_err() {
                return;
            }
        }
    });
    (address, received)
}

#[derive(Default)]
struct Handled {
    count: AtomicUsize,
}

#[kq::consumer(conf = "Traced")]
async fn traced(handled: &kq::State<Handled>, _msg: &kq::Message) {
    handled.count.fetch_add(1, Ordering::SeqCst);
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_spans_are_exported_to_the_collector() {
    let (endpoint, exports) = collector();
    let telemetry = TelemetryConf {
        endpoint: endpoint.clone(),
        ..TelemetryConf::default()
    };
    let guard = kq::telemetry::init(
        &LogConf::default(),
        Some(&telemetry),
        "kq-exporting-service",
    )
    .expect("telemetry set up");

    let topic = unique("traced");
    create_topic(&topic, 1).await;
    Pusher::from_conf(&pusher_conf(&topic))
        .unwrap()
        .push("traced")
        .await
        .unwrap();
    let handled = Arc::new(Handled::default());
    let running = Running::start("traced", consumer_conf(&topic), &handled);
    assert!(
        eventually(Duration::from_secs(60), || handled
            .count
            .load(Ordering::SeqCst)
            == 1)
        .await
    );
    running.stop().await;
    // Dropping the guard flushes the spans not yet exported.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let mut spans = Vec::new();
    while let Ok(export) = exports.recv_timeout(Duration::from_secs(5)) {
        assert_eq!(export.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(export.content_type, "application/x-protobuf");
        spans.extend(export.body);
        if contains(&spans, "kq.consume") {
            break;
        }
    }
    assert!(
        contains(&spans, "kq.consume"),
        "no handler span was exported"
    );
    assert!(
        contains(&spans, "kq-exporting-service"),
        "the service name is missing"
    );
    assert!(contains(&spans, &topic), "the span's topic is missing");
}

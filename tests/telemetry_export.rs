//! The `Telemetry` block: with an endpoint, every handler's span reaches the collector as OTLP
//! over HTTP or HTTPS, under the service's name, over one connection from batch to batch; a
//! collector whose certificate no trusted authority signed gets nothing.
//!
//! Each test installs the global subscriber, which a process has only once, so each runs in a
//! process of its own: the test binary started again for that one test.
#![cfg(feature = "opentelemetry")]

mod common;

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, unique, Running};
use kq::{LogConf, Pusher, TelemetryConf};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};

/// Names the test that a process was started for.
const ALONE: &str = "KQ_TELEMETRY_TEST_ALONE";
/// The directory of the certificates that the calling process made for the test.
const PKI: &str = "KQ_TELEMETRY_TEST_PKI";

/// Whether this process was started for `test` alone.
fn in_own_process(test: &str) -> bool {
    std::env::var(ALONE).as_deref() == Ok(test)
}

/// Runs `test` in a process of its own with `env` set (and OpenSSL's certificate variables
/// only as `env` sets them, no proxy: the exporter honours them), checks that it passed there,
/// and returns its output.
fn run_in_own_process(test: &str, env: &[(&str, &OsStr)]) -> Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test);
    for unset in [
        "RUST_LOG",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env_remove(unset);
    }
    let output = command.envs(env.iter().copied()).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "`{test}` failed in its own process:\n{stdout}\n{stderr}"
    );
    output
}

/// A test CA, a collector certificate it signed for the loopback addresses, and an impostor's
/// certificate for the same addresses that another CA signed; made with the `openssl` command,
/// as `scripts/broker.sh` makes the broker's, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make() -> Pki {
        let dir = std::env::temp_dir().join(unique("kq-otlp-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        // Arguments without spaces, split on them.
        let openssl = |args: &str| {
            let output = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(&dir)
                .output()
                .expect("the openssl command");
            assert!(
                output.status.success(),
                "openssl {args}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for ca in ["ca", "other-ca"] {
            openssl(&format!(
                "req -x509 -days 1 -subj /CN=kq-{ca} {key} -keyout {ca}.key -out {ca}.pem"
            ));
        }
        std::fs::write(
            dir.join("collector.ext"),
            "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
        )
        .unwrap();
        for (who, ca) in [("collector", "ca"), ("impostor", "other-ca")] {
            openssl(&format!(
                "req -subj /CN=kq-{who} {key} -keyout {who}.key -out {who}.csr"
            ));
            openssl(&format!(
                "x509 -req -days 1 -in {who}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
                 -extfile collector.ext -out {who}.pem"
            ));
        }
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file of the certificates the calling process made (`Pki`).
fn pki_file(name: &str) -> String {
    let dir = std::env::var(PKI).expect("the calling process names the certificates");
    Path::new(&dir).join(name).display().to_string()
}

/// One request the collector received.
struct Export {
    request_line: String,
    /// Lowercase names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Export {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A collector on a free loopback port, over TLS with the given certificate or over plain
/// HTTP: answers every request with 200 on a connection it keeps open, and hands it over.
struct Collector {
    address: SocketAddr,
    exports: mpsc::Receiver<Export>,
    connections: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl Collector {
    fn plain(listener: TcpListener) -> Collector {
        Collector::start(listener, None)
    }

    /// Over TLS, with `who`'s certificate and key of the calling process's `Pki`.
    fn tls(who: &str) -> Collector {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor
            .set_private_key_file(pki_file(&format!("{who}.key")), SslFiletype::PEM)
            .unwrap();
        acceptor
            .set_certificate_chain_file(pki_file(&format!("{who}.pem")))
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Collector::start(listener, Some(acceptor.build()))
    }

    fn start(listener: TcpListener, tls: Option<SslAcceptor>) -> Collector {
        let address = listener.local_addr().unwrap();
        let (sender, exports) = mpsc::channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (accepted, failed) = (connections.clone(), failed_handshakes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (sender, tls, failed) = (sender.clone(), tls.clone(), failed.clone());
                std::thread::spawn(move || match tls {
                    None => serve(stream, &sender),
                    Some(acceptor) => match acceptor.accept(stream) {
                        Ok(stream) => serve(stream, &sender),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                });
            }
        });
        Collector {
            address,
            exports,
            connections,
            failed_handshakes,
        }
    }

    /// Checks that a client gave up on the collector's certificate (the collector may learn
    /// it a moment after the client).
    fn assert_a_handshake_failed(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.failed_handshakes.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no TLS handshake was tried"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next export whose body holds `text`, within 10 s.
    fn export_with(&self, text: &str) -> Option<Export> {
        while let Ok(export) = self.exports.recv_timeout(Duration::from_secs(10)) {
            if contains(&export.body, text) {
                return Some(export);
            }
        }
        None
    }
}

/// Answers the requests of one connection until the client closes it.
fn serve<S: Read + Write>(stream: S, exports: &mpsc::Sender<Export>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if !matches!(reader.read_line(&mut request_line), Ok(1..)) {
            return;
        }
        let (mut length, mut headers) = (0, Vec::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_owned());
            if name == "content-length" {
                length = value.parse().unwrap();
            }
            headers.push((name, value));
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // No `connection: close`: the client reads the answer by its length and may send the
        // next batch on the same connection.
        if reader
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
        let export = Export {
            request_line: request_line.trim_end().to_owned(),
            headers,
            body,
        };
        if exports.send(export).is_err() {
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Sets telemetry up as `telemetry` says, ends an info span named `span`, and stops the
/// export, which flushes it.
fn export_a_span(telemetry: &TelemetryConf, span: &'static str) {
    let guard = kq::telemetry::init(&LogConf::default(), Some(telemetry), "kq-exporting-service")
        .expect("telemetry set up");
    tracing::info_span!("test", otel.name = span).in_scope(|| {});
    drop(guard);
}

#[derive(Default)]
struct Handled {
    count: AtomicUsize,
}

#[kq::consumer(conf = "Traced")]
async fn traced(handled: &kq::State<Handled>, _msg: &kq::Message) {
    handled.count.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_spans_are_exported_over_http() {
    let test = "handler_spans_are_exported_over_http";
    if !in_own_process(test) {
        run_in_own_process(test, &[]);
        return;
    }
    let collector = Collector::plain(TcpListener::bind("127.0.0.1:0").unwrap());
    let telemetry = TelemetryConf {
        endpoint: collector.address.to_string(),
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
    while let Ok(export) = collector.exports.recv_timeout(Duration::from_secs(5)) {
        assert_eq!(export.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            export.header("content-type"),
            Some("application/x-protobuf")
        );
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

#[test]
fn batches_share_one_connection() {
    let test = "batches_share_one_connection";
    if !in_own_process(test) {
        // A batch every 100 ms, so that both spans go out while the connection is open.
        run_in_own_process(test, &[("OTEL_BSP_SCHEDULE_DELAY", OsStr::new("100"))]);
        return;
    }
    let collector = Collector::plain(TcpListener::bind("127.0.0.1:0").unwrap());
    let telemetry = TelemetryConf {
        endpoint: format!("http://{}", collector.address),
        ..TelemetryConf::default()
    };
    let guard = kq::telemetry::init(&LogConf::default(), Some(&telemetry), "kq-batches")
        .expect("telemetry set up");
    for span in ["kq.test.first", "kq.test.second"] {
        tracing::info_span!("test", otel.name = span).in_scope(|| {});
        assert!(collector.export_with(span).is_some(), "{span} never came");
    }
    drop(guard);
    assert_eq!(collector.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn spans_are_exported_over_https_to_a_collector_the_ca_file_trusts() {
    let test = "spans_are_exported_over_https_to_a_collector_the_ca_file_trusts";
    if !in_own_process(test) {
        let pki = Pki::make();
        run_in_own_process(test, &[(PKI, pki.dir.as_os_str())]);
        return;
    }
    let collector = Collector::tls("collector");
    let telemetry = TelemetryConf {
        endpoint: format!("https://{}", collector.address),
        ca_file: pki_file("ca.pem"),
        otlp_headers: [("api-key".to_owned(), "secret-key".to_owned())].into(),
        ..TelemetryConf::default()
    };
    export_a_span(&telemetry, "kq.test.tls");
    let export = collector
        .export_with("kq.test.tls")
        .expect("the span reached the collector");
    assert_eq!(export.request_line, "POST /v1/traces HTTP/1.1");
    assert_eq!(export.header("api-key"), Some("secret-key"));
    assert!(contains(&export.body, "kq-exporting-service"));
}

#[test]
fn otlp_http_secure_verifies_the_collector_against_the_system_cas() {
    let test = "otlp_http_secure_verifies_the_collector_against_the_system_cas";
    if !in_own_process(test) {
        let pki = Pki::make();
        // OpenSSL takes the system's authorities from `SSL_CERT_FILE` when it is set.
        run_in_own_process(
            test,
            &[
                (PKI, pki.dir.as_os_str()),
                ("SSL_CERT_FILE", pki.ca().as_os_str()),
            ],
        );
        return;
    }
    let collector = Collector::tls("collector");
    let telemetry = TelemetryConf {
        endpoint: collector.address.to_string(),
        otlp_http_secure: true,
        ..TelemetryConf::default()
    };
    export_a_span(&telemetry, "kq.test.system-ca");
    assert!(collector.export_with("kq.test.system-ca").is_some());
}

/// The output of a process whose export the collector refused: the failure logged once (the
/// exporter's retries say nothing more), with OpenSSL's reason.
fn assert_refused(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("span export failed").count(), 1, "{stdout}");
    assert!(stdout.contains("certificate verify failed"), "{stdout}");
}

#[test]
fn a_collector_that_another_ca_signed_is_refused() {
    let test = "a_collector_that_another_ca_signed_is_refused";
    if !in_own_process(test) {
        let pki = Pki::make();
        assert_refused(&run_in_own_process(test, &[(PKI, pki.dir.as_os_str())]));
        return;
    }
    let collector = Collector::tls("impostor");
    let telemetry = TelemetryConf {
        endpoint: format!("https://{}", collector.address),
        ca_file: pki_file("ca.pem"),
        otlp_headers: [("api-key".to_owned(), "secret-key".to_owned())].into(),
        ..TelemetryConf::default()
    };
    export_a_span(&telemetry, "kq.test.impostor");
    assert!(collector.exports.try_recv().is_err(), "a span was sent");
    collector.assert_a_handshake_failed();
}

#[test]
fn the_system_cas_do_not_trust_a_private_ca() {
    let test = "the_system_cas_do_not_trust_a_private_ca";
    if !in_own_process(test) {
        let pki = Pki::make();
        assert_refused(&run_in_own_process(test, &[(PKI, pki.dir.as_os_str())]));
        return;
    }
    let collector = Collector::tls("collector");
    let telemetry = TelemetryConf {
        endpoint: collector.address.to_string(),
        otlp_http_secure: true,
        ..TelemetryConf::default()
    };
    export_a_span(&telemetry, "kq.test.private-ca");
    assert!(collector.exports.try_recv().is_err(), "a span was sent");
    collector.assert_a_handshake_failed();
}

#[test]
fn spans_reach_a_collector_at_an_ipv6_literal() {
    let test = "spans_reach_a_collector_at_an_ipv6_literal";
    if !in_own_process(test) {
        match TcpListener::bind("[::1]:0") {
            Ok(_) => {
                run_in_own_process(test, &[]);
            }
            Err(e) => eprintln!("skipped: this host has no IPv6 loopback ({e})"),
        }
        return;
    }
    let collector = Collector::plain(TcpListener::bind("[::1]:0").unwrap());
    // `[::1]:port`, as `SocketAddr` writes it.
    let telemetry = TelemetryConf {
        endpoint: collector.address.to_string(),
        ..TelemetryConf::default()
    };
    assert!(telemetry.endpoint.starts_with("[::1]:"));
    export_a_span(&telemetry, "kq.test.ipv6");
    assert!(collector.export_with("kq.test.ipv6").is_some());
}

#[test]
fn a_ca_file_without_a_certificate_is_named() {
    // Refused before a subscriber is installed, so it runs in this process.
    for (text, problem) in [
        ("no certificate here\n", "holds no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "is not a PEM certificate",
        ),
    ] {
        let path = std::env::temp_dir().join(format!("{}.pem", unique("not-a-ca")));
        std::fs::write(&path, text).unwrap();
        let telemetry = TelemetryConf {
            endpoint: "127.0.0.1:4318".into(),
            ca_file: path.display().to_string(),
            ..TelemetryConf::default()
        };
        let result = kq::telemetry::init(&LogConf::default(), Some(&telemetry), "kq-bad-ca");
        let _ = std::fs::remove_file(&path);
        let Err(e) = result else {
            panic!("a CA file of `{text}` was taken")
        };
        assert!(
            e.starts_with(&format!(
                "`Telemetry.CaFile` `{}` {problem}",
                path.display()
            )),
            "{e}"
        );
    }
}

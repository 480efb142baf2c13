//! The HTTP server of `DevServer` and `Prometheus`: metrics, health and readiness.
//!
//! HTTP/1.1 is hyper's. What a client can hold of the service is bounded, because the same
//! process runs the consumers, whose Kafka clients need file descriptors too: a connection
//! has [`HEAD_READ_TIMEOUT`] to send each request's head, the server keeps at most
//! [`MAX_CONNECTIONS`] open, and no connection outlives `LONGEST_CONNECTION`. A failed accept
//! (out of file descriptors, say) is logged and waited out: the server goes on, so a liveness
//! probe does not restart a healthy service for it.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::health::health;
use super::registry::{enable, render_metrics};
use crate::conf::DevServerConf;

/// The most connections the server keeps open at once. Scrapers and probes need a few; a
/// connection past these is accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client has to send a request's head: from the moment its connection is
/// accepted, and on a kept-alive connection from the end of the previous response. A
/// connection that has not sent a whole head by then is closed.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection is kept. Idle ones are closed long before, by
/// [`HEAD_READ_TIMEOUT`]; this bounds a client that asks and never reads the answer, or
/// one that keeps asking without a pause.
const LONGEST_CONNECTION: Duration = Duration::from_secs(60);

/// How long a connection asked to close at `LONGEST_CONNECTION` has to finish the
/// answer under way before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The most a connection buffers, which also bounds a request's head: a longer one is
/// answered 431.
const READ_BUFFER: usize = 16 * 1024;

/// The pause after the first of a run of failed accepts; it doubles after each next one.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two failed accepts.
const LONGEST_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// A warning that keeps coming back is logged at most once in this time.
const WARN_EVERY: Duration = Duration::from_secs(60);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The bounds of a server; the tests of this module shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    head_read: Duration,
    longest_connection: Duration,
    close_grace: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    head_read: HEAD_READ_TIMEOUT,
    longest_connection: LONGEST_CONNECTION,
    close_grace: CLOSE_GRACE,
};

/// Serves metrics, health and readiness on `listener` until the task is dropped, and turns
/// collection on.
///
/// `GET` and `HEAD` are answered on `conf`'s three paths. The server never gives up on its
/// listener: an accept that fails is logged, and tried again after a pause of 50 ms that
/// doubles up to 1 s while failures go on. So the function does not return.
pub async fn serve(listener: TcpListener, conf: DevServerConf) -> std::io::Result<()> {
    serve_with(listener, conf, LIMITS).await
}

async fn serve_with(
    listener: TcpListener,
    conf: DevServerConf,
    limits: Limits,
) -> std::io::Result<()> {
    enable();
    // For the logs only: an address that cannot be read leaves the field empty.
    let address = listener
        .local_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    let conf = Arc::new(conf);
    let open = Arc::new(Semaphore::new(limits.connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_read)
        .max_buf_size(READ_BUFFER);
    let mut failures = AcceptFailures::new(address.clone());
    let mut at_cap = Throttle::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                failures.accepted();
                stream
            }
            // Nothing is wrong with the server: the client left before the accept, or a
            // signal interrupted it.
            Err(e) if concerns_one_connection(&e) => continue,
            Err(e) => {
                tokio::time::sleep(failures.failed(&e)).await;
                continue;
            }
        };
        // At the cap, a new connection is closed at once rather than left in the kernel's
        // backlog: a scraper or a probe learns at once that it should try again, no
        // descriptor is held for it, and the backlog does not fill with clients that gave
        // up long ago, each of which would take a slot once accepted. Slots come free
        // within `HEAD_READ_TIMEOUT` of the last request on them, so a burst of idle
        // connections keeps new ones out for no longer than that.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Some(held_back) = at_cap.due() {
                tracing::warn!(
                    address = %address,
                    open = limits.connections,
                    closed_since_last_warning = held_back,
                    "the metrics server keeps no more connections open; it closes new ones at once until one of them ends"
                );
            }
            drop(stream);
            continue;
        };
        tokio::spawn(connection(
            stream,
            permit,
            conf.clone(),
            http.clone(),
            limits,
        ));
    }
}

/// Serves one connection, holding its slot until it ends.
async fn connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    conf: Arc<DevServerConf>,
    http: http1::Builder,
    limits: Limits,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(answer(&request, &conf)))
    });
    let mut served = pin!(http.serve_connection(TokioIo::new(stream), service));
    let ended = match tokio::time::timeout(limits.longest_connection, served.as_mut()).await {
        Ok(ended) => ended,
        Err(_) => {
            // Finishes the answer under way, if any, and closes; a client that does not
            // read it loses the connection after the grace.
            served.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.close_grace, served).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!("metrics connection dropped: its answer was not read");
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        // Clients that leave early, send no head in time or send garbage end here.
        tracing::debug!(error = %e, "metrics connection ended");
    }
}

/// The answer to one request. `HEAD` gets `GET`'s answer, whose body hyper leaves out.
fn answer(request: &Request<Incoming>, conf: &DevServerConf) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let metrics = path == conf.metrics_path;
    if !metrics && path != conf.health_path && path != conf.ready_path {
        return response(StatusCode::NOT_FOUND, TEXT, String::new());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut refused = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, String::new());
        refused
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    if metrics {
        return response(StatusCode::OK, OPENMETRICS, render_metrics());
    }
    let health = health();
    let ok = if path == conf.health_path {
        health.live
    } else {
        health.ready
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response(status, TEXT, health.detail)
}

/// A response with its `content-length` set, which hyper would leave out of an empty
/// answer to `HEAD`.
fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, length);
    response
}

/// Accept errors that concern one connection only, or none.
fn concerns_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// A run of failed accepts: the pause before the next try, and what was logged about it.
struct AcceptFailures {
    address: String,
    pause: Duration,
    in_a_row: u64,
    warned: bool,
    warnings: Throttle,
}

impl AcceptFailures {
    fn new(address: String) -> Self {
        AcceptFailures {
            address,
            pause: FIRST_ACCEPT_PAUSE,
            in_a_row: 0,
            warned: false,
            warnings: Throttle::default(),
        }
    }

    /// Counts a failure, logs it unless one was logged lately, and returns the pause to
    /// take before the next accept: the listener stays readable while the cause (no free
    /// descriptor, say) lasts, so trying again at once would spin.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.in_a_row += 1;
        if let Some(held_back) = self.warnings.due() {
            self.warned = true;
            tracing::warn!(
                address = %self.address,
                error = %error,
                failures_in_a_row = self.in_a_row,
                not_logged_since_last_warning = held_back,
                "the metrics server cannot accept a connection; it tries again after a pause of up to 1 s"
            );
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(LONGEST_ACCEPT_PAUSE);
        pause
    }

    /// Ends a run of failures, and says so when its start was logged.
    fn accepted(&mut self) {
        if self.in_a_row == 0 {
            return;
        }
        if self.warned {
            tracing::info!(
                address = %self.address,
                failures_in_a_row = self.in_a_row,
                "the metrics server accepts connections again"
            );
        }
        self.pause = FIRST_ACCEPT_PAUSE;
        self.in_a_row = 0;
        self.warned = false;
    }
}

/// Lets a warning that keeps coming back through once per `WARN_EVERY`, so that a storm
/// of them does not flood the log.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some` with the number held back since the last one let through when this one is
    /// due; `None` when it is held back.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Reads one answer without a body (a 404's) off `stream`; false once the server has
    /// closed the connection.
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        head.starts_with(b"HTTP/1.1 404 ")
    }

    #[tokio::test]
    async fn a_connection_that_keeps_asking_is_closed_after_its_longest_time() {
        let limits = Limits {
            connections: 4,
            head_read: Duration::from_secs(5),
            longest_connection: Duration::from_secs(1),
            close_grace: Duration::from_secs(1),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, DevServerConf::default(), limits));
        let mut stream = TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        let mut answered = 0;
        // Each request comes well within the head deadline of the answer before it.
        while started.elapsed() < Duration::from_secs(30) {
            let sent = stream
                .write_all(b"GET /nothing HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await;
            if sent.is_err() || !read_head(&mut stream).await {
                break;
            }
            answered += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lasted = started.elapsed();
        assert!(answered >= 2, "{answered} answers");
        assert!(
            lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(10),
            "closed after {lasted:?}"
        );
    }

    #[test]
    fn a_warning_that_keeps_coming_back_is_logged_once_a_minute() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.due(), Some(0));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        throttle.last = Instant::now().checked_sub(WARN_EVERY);
        assert_eq!(throttle.due(), Some(2));
        assert_eq!(throttle.due(), None);
    }

    #[test]
    fn the_pause_after_a_failed_accept_doubles_up_to_a_second_and_starts_again_after_one_that_works(
    ) {
        let mut failures = AcceptFailures::new(String::new());
        let error = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..7)
            .map(|_| failures.failed(&error).as_millis())
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
        failures.accepted();
        assert_eq!(failures.failed(&error), FIRST_ACCEPT_PAUSE);
    }
}

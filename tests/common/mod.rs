//! Shared by the integration tests: which broker to use, unique names, and waiting.
//!
//! Tests run against the embedded broker by default, and against a real broker when
//! `KQ_TEST_BROKERS` names one (`127.0.0.1:9092`); each test uses its own topic and group.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kq::__private::ConsumerRegistration;
use kq::{HandlerContext, KqConf, PusherConf, Queue, Shutdown};
use tokio::task::JoinHandle;

/// The broker list for tests: `KQ_TEST_BROKERS` (comma-separated), or `[embedded]`; and a
/// name no other test (or earlier run against the same broker) uses.
pub use kq::testing::{brokers, unique};

/// Whether the tests run against a real broker.
pub fn real_broker() -> bool {
    brokers() != ["embedded"]
}

/// Creates a topic on the test broker; the embedded broker creates topics on first use, a
/// real broker through the admin API.
pub async fn create_topic(topic: &str, partitions: i32) {
    kq::create_topic(&brokers(), topic, partitions)
        .await
        .expect("create topic");
}

/// A consumer conf for a fresh topic and group, reading from the start, committing often.
pub fn consumer_conf(topic: &str) -> KqConf {
    let mut conf = KqConf::new(brokers(), unique("group"), topic);
    conf.offset = kq::Offset::First;
    conf.commit_interval = Duration::from_millis(100);
    conf.max_wait = Duration::from_millis(50);
    conf.min_bytes = 1;
    // A restarted member rejoins fast: the embedded broker holds a rejoin for the session
    // timeout of the member that left.
    conf.session_timeout = Duration::from_secs(6);
    conf.retry.backoff = Duration::from_millis(10);
    conf.retry.max_backoff = Duration::from_millis(50);
    conf
}

/// A pusher conf that waits for each delivery.
pub fn pusher_conf(topic: &str) -> PusherConf {
    let mut conf = PusherConf::new(brokers(), topic);
    conf.sync_push = true;
    conf.flush_interval = Duration::from_millis(5);
    conf
}

/// Pushes `rounds` rounds of one message per key (`message` gives the key and value of key
/// number `key` in round `round`), without waiting for each delivery; returns how many.
pub async fn push_rounds(
    topic: &str,
    keys: usize,
    rounds: usize,
    message: impl Fn(usize, usize) -> (String, String),
) -> usize {
    let mut conf = pusher_conf(topic);
    conf.sync_push = false;
    let pusher = kq::Pusher::from_conf(&conf).expect("pusher");
    for round in 0..rounds {
        for key in 0..keys {
            let (key, value) = message(key, round);
            pusher.kpush(&key, value).await.expect("push");
        }
    }
    pusher.close().await.expect("flush");
    keys * rounds
}

/// A running queue of a registered consumer.
pub struct Running {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), kq::Error>>,
}

impl Running {
    /// Runs the consumer registered as `consumer`, its handler bound to `state`.
    pub fn start<S: Send + Sync + 'static>(consumer: &str, conf: KqConf, state: &Arc<S>) -> Self {
        Running::start_queue(consumer, conf, state, |queue| queue)
    }

    /// The same, with the queue adjusted by `configure` before it runs.
    pub fn start_queue<S: Send + Sync + 'static>(
        consumer: &str,
        conf: KqConf,
        state: &Arc<S>,
        configure: impl FnOnce(Queue) -> Queue,
    ) -> Self {
        let handler = ConsumerRegistration::find(consumer)
            .expect("registered")
            .bind(HandlerContext::new(state.clone()))
            .expect("state matches");
        let shutdown = Shutdown::new();
        let queue = configure(Queue::registered(consumer, conf, handler));
        let task = tokio::spawn(queue.run(shutdown.clone()));
        Running { shutdown, task }
    }

    /// Waits for it to fail on its own, and returns why.
    pub async fn failure(self) -> kq::Error {
        match self.task.await.expect("queue task") {
            Ok(()) => panic!("the queue ran cleanly"),
            Err(e) => e,
        }
    }

    /// Stops it gracefully and checks it ran cleanly.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task
            .await
            .expect("queue task")
            .expect("queue ran cleanly");
    }
}

/// Waits until `done` holds, for at most `limit`; false if it never did.
pub async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// An HTTP answer as read off the wire.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The header fields, names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, as many bytes as `content-length` said.
    pub body: String,
}

impl HttpAnswer {
    /// The value of the header field `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// How long the HTTP helpers wait for an answer.
const HTTP_WAIT: Duration = Duration::from_secs(10);

fn bad_answer(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one answer off `stream`: its head, then as many bytes as its `content-length` says
/// (none for `HEAD`). An answer without `content-length`, or with more bytes than it says
/// before the next answer could start, is an error; so is none within 10 s.
pub async fn read_answer(
    stream: &mut tokio::net::TcpStream,
    method: &str,
) -> std::io::Result<HttpAnswer> {
    use tokio::io::AsyncReadExt as _;

    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad_answer(format!(
                    "closed before the end of a head: {:?}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1.1 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad_answer(format!("no HTTP/1.1 status line: {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse().ok())
            .ok_or_else(|| bad_answer(format!("no content-length: {head:?}")))?;
        let length = if method == "HEAD" { 0 } else { length };
        while bytes.len() < head_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(bad_answer(format!("closed within the body: {head:?}")));
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        if bytes.len() > head_end + length {
            return Err(bad_answer(format!(
                "{} bytes past the body: {head:?}",
                bytes.len() - head_end - length
            )));
        }
        let body = String::from_utf8_lossy(&bytes[head_end..]).into_owned();
        Ok(HttpAnswer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(HTTP_WAIT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// Sends `method path` to the HTTP server on `port`, on a connection of its own that asks to
/// be closed after the answer, and reads the answer. Anything sent after the answer is an
/// error: the body's framing is checked as well as the answer.
pub async fn http_request(port: u16, method: &str, path: &str) -> std::io::Result<HttpAnswer> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut stream = tokio::time::timeout(
        HTTP_WAIT,
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection"))??;
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let answer = read_answer(&mut stream, method).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(HTTP_WAIT, stream.read_to_end(&mut rest))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "not closed"))??;
    if !rest.is_empty() {
        return Err(bad_answer(format!(
            "{} bytes after the answer to {method} {path}",
            rest.len()
        )));
    }
    Ok(answer)
}

/// GETs `path` from the HTTP server on `port`; returns the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    match http_request(port, "GET", path).await {
        Ok(answer) => (answer.status, answer.body),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

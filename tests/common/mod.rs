//! Shared by the integration tests: which broker to use, unique names, and waiting.
//!
//! Tests run against the embedded broker by default, and against a real broker when
//! `KQ_TEST_BROKERS` names one (`127.0.0.1:9092`); each test uses its own topic and group.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kq::{ConsumerRegistration, HandlerContext, KqConf, PusherConf, Queue, Shutdown};
use tokio::task::JoinHandle;

/// The broker list for tests: `KQ_TEST_BROKERS` (comma-separated), or `[embedded]`.
pub fn brokers() -> Vec<String> {
    match std::env::var("KQ_TEST_BROKERS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|b| b.trim().to_owned()).collect()
        }
        _ => vec!["embedded".to_owned()],
    }
}

/// Whether the tests run against a real broker.
pub fn real_broker() -> bool {
    brokers() != ["embedded"]
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
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
        let queue = configure(Queue::new(consumer, conf, handler));
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

/// GETs `path` from the HTTP server on `port`; returns the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

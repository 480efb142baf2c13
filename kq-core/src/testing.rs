//! A test kit for a service's registered consumers: runs them as `kq::main!` would, with
//! their confs, state, error policy and dead-letter topics, inside a `#[tokio::test]`, on the
//! embedded broker or the one `KQ_TEST_BROKERS` names.
//!
//! ```no_run
//! # #[derive(serde::Deserialize, kq::KqConfig)]
//! # #[serde(rename_all = "PascalCase")]
//! # struct Config { kq_consumer_conf: kq::KqConf }
//! # struct ServiceContext;
//! # impl ServiceContext { fn new(_: &Config) -> Self { ServiceContext } }
//! use std::time::Duration;
//!
//! use kq::testing::TestApp;
//!
//! const CONFIG: &str = "
//! KqConsumerConf:
//!   Brokers: [127.0.0.1:9092]
//!   Group: payments
//!   Topic: payment-success
//!   DeadLetterTopic: payment-success-dlq
//! ";
//!
//! #[tokio::test]
//! async fn a_payment_is_handled() -> Result<(), kq::testing::TestError> {
//!     let app = TestApp::<Config>::from_yaml(CONFIG)?;
//!     let state = ServiceContext::new(app.config());
//!     let running = app.start(state).await?;
//!     running.push("payment_success", "order-1", r#"{"cents":100}"#).await?;
//!     let handled = running
//!         .wait_handled("payment_success", 1, Duration::from_secs(10))
//!         .await?;
//!     assert_eq!(handled.ok, 1);
//!     running.stop().await
//! }
//! ```
//!
//! What the kit changes in the config it is given, so that a test sees exactly what it pushed:
//! every `Brokers` list of a `KqConf` or `PusherConf` block becomes `KQ_TEST_BROKERS`
//! (comma-separated) or `[embedded]`, and every consumer reads from the first offset
//! (`Offset: first`), since a consumer starting at the end could miss a message pushed while
//! it joins its group. A start creates the consumers' topics and dead-letter topics that do
//! not exist yet, with 8 partitions. Against a real broker, give each test topics and groups
//! of its own ([`unique`] makes names, [`TestApp::set`] puts them in).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::{Config, File, FileFormat};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::app::bind_chosen;
use crate::broker::{self, EMBEDDED};
use crate::conf::{KqConf, PusherConf};
use crate::handler::HandlerContext;
use crate::message::Message;
use crate::observe::{Metrics, Outcome};
use crate::pusher::{Delivery, Pusher};
use crate::queue::{cluster_pusher, Queue};
use crate::registry::{block, KqConfig};
use crate::service::Shutdown;
use crate::sync::lock;

/// The variable naming the brokers of a test run (`127.0.0.1:9092`, comma-separated); the
/// embedded broker when it is unset or empty.
pub const BROKERS_VARIABLE: &str = "KQ_TEST_BROKERS";

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);

/// The brokers tests run against: those `KQ_TEST_BROKERS` names, or the embedded broker.
pub fn brokers() -> Vec<String> {
    match std::env::var(BROKERS_VARIABLE) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|broker| broker.trim().to_owned())
            .filter(|broker| !broker.is_empty())
            .collect(),
        _ => vec![EMBEDDED.to_owned()],
    }
}

/// A name that no other test of this run, nor of an earlier run against the same broker, has:
/// `prefix`, the process id, the time and a counter.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        NEXT.fetch_add(1, AtomicOrdering::Relaxed)
    )
}

/// Why a test kit call failed. Its text says what was asked and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestError {
    message: String,
    timed_out: bool,
}

impl TestError {
    fn new(message: impl Into<String>) -> Self {
        TestError {
            message: message.into(),
            timed_out: false,
        }
    }

    fn timeout(message: String) -> Self {
        TestError {
            message,
            timed_out: true,
        }
    }

    /// Whether a wait ran out of time (rather than a consumer failing, or a push).
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TestError {}

/// A service's config, loaded for a test, with the consumers to start.
pub struct TestApp<C> {
    yaml: Option<String>,
    overrides: Vec<(String, config::Value)>,
    config: C,
    only: Option<Vec<String>>,
}

impl<C: KqConfig + DeserializeOwned> TestApp<C> {
    /// Loads `yaml`, a config file's text, pointed at the test brokers and at the first offset
    /// (see the [module](self) docs), and validates it as a service start does.
    pub fn from_yaml(yaml: &str) -> Result<Self, TestError> {
        Ok(TestApp {
            yaml: Some(yaml.to_owned()),
            overrides: Vec::new(),
            config: load(yaml, &[])?,
            only: None,
        })
    }

    /// Sets `key` (a dotted path such as `KqConsumerConf.Topic`) to `value` in the YAML it
    /// was loaded from: a topic or a group of the test's own, a shorter `CommitInterval`.
    pub fn set(mut self, key: &str, value: &str) -> Result<Self, TestError> {
        let Some(yaml) = &self.yaml else {
            return Err(TestError::new(format!(
                "cannot set `{key}`: the config was given as a value, not as text"
            )));
        };
        self.overrides.push((key.to_owned(), value.into()));
        self.config = load(yaml, &self.overrides)?;
        Ok(self)
    }

    /// Runs the config as given, with its own brokers and offsets.
    pub fn from_config(config: C) -> Result<Self, TestError> {
        check(&config)?;
        Ok(TestApp {
            yaml: None,
            overrides: Vec::new(),
            config,
            only: None,
        })
    }

    /// Starts only the consumers with these names, rather than every registered one.
    pub fn only<I: IntoIterator<Item = impl Into<String>>>(mut self, consumers: I) -> Self {
        self.only = Some(consumers.into_iter().map(Into::into).collect());
        self
    }

    /// The config, as the consumers will run with it: for building the state.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Starts the consumers with `state` as the service state; fails, naming each problem, as
    /// a service start does (a conf key that the config lacks, a state of another type).
    pub async fn start<S: Send + Sync + 'static>(
        self,
        state: S,
    ) -> Result<RunningApp<C, S>, TestError> {
        let state = Arc::new(state);
        let context = HandlerContext::new(state.clone());
        let only = self.only.as_deref();
        let chosen = |name: &str| only.is_none_or(|names| names.iter().any(|n| n == name));
        let (bound, problems) = bind_chosen(&self.config, &context, chosen);
        if !problems.is_empty() {
            return Err(TestError::new(problems.join("; ")));
        }
        if let Some(names) = only {
            for name in names {
                if !bound.started.iter().any(|(r, _, _)| r.name == name) {
                    return Err(TestError::new(format!(
                        "no consumer `{name}` to start: it is not registered, or its block is \
                         absent from the config"
                    )));
                }
            }
        }
        for (_, conf, _) in &bound.started {
            for topic in [&conf.topic, &conf.dead_letter_topic] {
                if !topic.is_empty() {
                    broker::create_topic(&conf.brokers, topic, broker::EMBEDDED_PARTITIONS)
                        .await
                        .map_err(|e| TestError::new(format!("creating `{topic}`: {e}")))?;
                }
            }
        }
        let shutdown = Shutdown::new();
        let mut consumers = Vec::with_capacity(bound.started.len());
        for (registration, conf, handler) in bound.started {
            let counts = Arc::new(Counts::default());
            let queue = Queue::registered(registration.name, conf.clone(), handler)
                .with_metrics(CountOutcomes(counts.clone()));
            let failure = Arc::new(Mutex::new(None));
            let task = tokio::spawn(run_recording(queue, shutdown.clone(), failure.clone()));
            consumers.push(Started {
                name: registration.name,
                conf,
                counts,
                failure,
                task: Some(task),
            });
        }
        Ok(RunningApp {
            config: self.config,
            state,
            consumers,
            shutdown,
            pushers: Mutex::new(HashMap::new()),
        })
    }
}

/// `yaml` with the test's changes, its consumers and pushers pointed at the test brokers, its
/// consumers at the first offset; validated.
fn load<C: KqConfig + DeserializeOwned>(
    yaml: &str,
    changes: &[(String, config::Value)],
) -> Result<C, TestError> {
    // The blocks are known once the text is deserialized; their keys are then rewritten.
    let given: C = parse(yaml, changes)?;
    let brokers = brokers();
    let mut overrides: Vec<(String, config::Value)> = Vec::new();
    for field in given.kq_fields() {
        if let Some(Some(_)) = block::<KqConf>(field.value) {
            overrides.push((
                format!("{}.Brokers", field.serde_name),
                brokers.clone().into(),
            ));
            overrides.push((format!("{}.Offset", field.serde_name), "first".into()));
        } else if let Some(Some(_)) = block::<PusherConf>(field.value) {
            overrides.push((
                format!("{}.Brokers", field.serde_name),
                brokers.clone().into(),
            ));
        }
    }
    overrides.extend(changes.iter().cloned());
    let config: C = parse(yaml, &overrides)?;
    check(&config)?;
    Ok(config)
}

/// Validates every block of `config`, as a service start does.
fn check<C: KqConfig>(config: &C) -> Result<(), TestError> {
    config
        .check()
        .map_err(|problems| TestError::new(format!("the config: {}", problems.join("; "))))
}

fn parse<C: DeserializeOwned>(
    yaml: &str,
    overrides: &[(String, config::Value)],
) -> Result<C, TestError> {
    let mut builder = Config::builder().add_source(File::from_str(yaml, FileFormat::Yaml));
    for (key, value) in overrides {
        builder = builder
            .set_override(key, value.clone())
            .map_err(|e| TestError::new(format!("the config: `{key}`: {e}")))?;
    }
    builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| TestError::new(format!("the config: {e}")))
}

/// Runs a queue, keeping the error it fails with for the waits and the stop to report.
async fn run_recording(queue: Queue, shutdown: Shutdown, failure: Arc<Mutex<Option<String>>>) {
    let name = queue.name().to_owned();
    if let Err(e) = queue.run(shutdown).await {
        *lock(&failure) = Some(format!("consumer `{name}` failed: {e}"));
    }
}

/// What became of a consumer's messages so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handled {
    /// Handled successfully.
    pub ok: u64,
    /// Failed for good and committed past (`ForceCommit: true`, no dead-letter topic).
    pub failed: u64,
    /// Written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Handler runs that failed and were tried again (not messages: one message may count
    /// several times).
    pub retried: u64,
}

impl Handled {
    /// Messages settled for good: handled, failed or dead-lettered.
    pub fn settled(&self) -> u64 {
        self.ok + self.failed + self.dead_lettered
    }
}

impl fmt::Display for Handled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} dead-lettered, {} retries",
            self.ok, self.failed, self.dead_lettered, self.retried
        )
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
}

impl Counts {
    fn read(&self) -> Handled {
        Handled {
            ok: self.ok.load(AtomicOrdering::Acquire),
            failed: self.failed.load(AtomicOrdering::Acquire),
            dead_lettered: self.dead_lettered.load(AtomicOrdering::Acquire),
            retried: self.retried.load(AtomicOrdering::Acquire),
        }
    }
}

struct CountOutcomes(Arc<Counts>);

impl Metrics for CountOutcomes {
    fn record(&self, _: &str, outcome: Outcome, _: Duration) {
        let counter = match outcome {
            Outcome::Ok => &self.0.ok,
            Outcome::Failed => &self.0.failed,
            Outcome::DeadLettered => &self.0.dead_lettered,
            Outcome::Retried => &self.0.retried,
        };
        counter.fetch_add(1, AtomicOrdering::AcqRel);
    }
}

struct Started {
    name: &'static str,
    conf: KqConf,
    counts: Arc<Counts>,
    /// Why its queue failed, once it has.
    failure: Arc<Mutex<Option<String>>>,
    task: Option<JoinHandle<()>>,
}

/// The consumers of a [`TestApp`], running. Dropping it stops them without waiting; [`stop`]
/// waits for their drain and final commits.
///
/// [`stop`]: RunningApp::stop
pub struct RunningApp<C, S> {
    config: C,
    state: Arc<S>,
    consumers: Vec<Started>,
    shutdown: Shutdown,
    /// One per topic pushed to.
    pushers: Mutex<HashMap<String, Pusher>>,
}

impl<C, S> RunningApp<C, S> {
    /// The config the consumers run with.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The service state the handlers read.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The names of the running consumers.
    pub fn consumers(&self) -> Vec<&'static str> {
        self.consumers.iter().map(|c| c.name).collect()
    }

    /// The configuration `consumer` runs with.
    pub fn conf(&self, consumer: &str) -> Result<&KqConf, TestError> {
        Ok(&self.consumer(consumer)?.conf)
    }

    fn consumer(&self, name: &str) -> Result<&Started, TestError> {
        self.consumers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                TestError::new(format!(
                    "no consumer `{name}` runs in this test (running: {})",
                    self.consumers().join(", ")
                ))
            })
    }

    /// Pushes a message with `key` and `value` to the topic `consumer` reads, and waits for
    /// the broker to take it.
    pub async fn push(
        &self,
        consumer: &str,
        key: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Delivery, TestError> {
        let topic = self.consumer(consumer)?.conf.topic.clone();
        let pusher = self.pusher(&topic)?;
        let delivered = pusher
            .kpush(key, value)
            .await
            .map_err(|e| TestError::new(format!("push to `{topic}`: {e}")))?;
        delivered.ok_or_else(|| TestError::new(format!("push to `{topic}`: no delivery report")))
    }

    /// A pusher to `topic` in the consumers' cluster, whose pushes wait for the broker: for
    /// messages with headers, or to a topic of the test's own.
    pub fn pusher(&self, topic: &str) -> Result<Pusher, TestError> {
        let mut pushers = lock(&self.pushers);
        if let Some(pusher) = pushers.get(topic) {
            return Ok(pusher.clone());
        }
        let pusher = cluster_pusher(self.cluster()?, topic)
            .map_err(|e| TestError::new(format!("a pusher to `{topic}`: {e}")))?;
        pushers.insert(topic.to_owned(), pusher.clone());
        Ok(pusher)
    }

    /// The conf whose connection the kit's own clients use: the first consumer's.
    fn cluster(&self) -> Result<&KqConf, TestError> {
        self.consumers
            .first()
            .map(|c| &c.conf)
            .ok_or_else(|| TestError::new("no consumer runs, so no cluster is known"))
    }

    /// What became of `consumer`'s messages so far.
    pub fn handled(&self, consumer: &str) -> Result<Handled, TestError> {
        Ok(self.consumer(consumer)?.counts.read())
    }

    /// Waits until `consumer` has settled `messages` messages in all (handled, failed for
    /// good or dead-lettered), for at most `limit`; fails at once if a consumer stops.
    pub async fn wait_handled(
        &self,
        consumer: &str,
        messages: u64,
        limit: Duration,
    ) -> Result<Handled, TestError> {
        let counts = &self.consumer(consumer)?.counts;
        let what = format!("{messages} message(s) settled by `{consumer}`");
        self.wait(
            limit,
            &what,
            || counts.read().settled() >= messages,
            || format!("{} so far", counts.read()),
        )
        .await?;
        Ok(counts.read())
    }

    /// Waits until `condition` holds, for at most `limit`; fails at once if a consumer stops.
    /// `what` says what is awaited, for the error.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        condition: impl FnMut() -> bool,
    ) -> Result<(), TestError> {
        self.wait(limit, what, condition, || {
            let counts: Vec<_> = self
                .consumers
                .iter()
                .map(|c| format!("`{}`: {}", c.name, c.counts.read()))
                .collect();
            counts.join("; ")
        })
        .await
    }

    async fn wait(
        &self,
        limit: Duration,
        what: &str,
        mut condition: impl FnMut() -> bool,
        seen: impl Fn() -> String,
    ) -> Result<(), TestError> {
        let deadline = Instant::now() + limit;
        loop {
            if condition() {
                return Ok(());
            }
            if let Some(failure) = self.failure() {
                return Err(TestError::new(format!(
                    "{failure} while waiting for {what} ({})",
                    seen()
                )));
            }
            if Instant::now() >= deadline {
                return Err(TestError::timeout(format!(
                    "timed out after {limit:?} waiting for {what} ({})",
                    seen()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Why a consumer failed, if one has.
    fn failure(&self) -> Option<String> {
        self.consumers.iter().find_map(|c| lock(&c.failure).clone())
    }

    /// Reads `consumer`'s dead-letter topic from the start until it has `messages`
    /// messages, for at most `limit`, and returns them with their headers (`kq.error`,
    /// `kq.source.offset`, ... see [`dead_letter_headers`](crate::dead_letter_headers)).
    pub async fn dead_letters(
        &self,
        consumer: &str,
        messages: usize,
        limit: Duration,
    ) -> Result<Vec<Message>, TestError> {
        let topic = &self.consumer(consumer)?.conf.dead_letter_topic;
        if topic.is_empty() {
            return Err(TestError::new(format!(
                "consumer `{consumer}` has no dead-letter topic (`DeadLetterTopic`)"
            )));
        }
        self.read_topic(topic, messages, limit).await
    }

    /// Reads `topic`, in the consumers' cluster, from the start until it has `messages`
    /// messages, for at most `limit`; in partition order, not in the order they were written.
    pub async fn read_topic(
        &self,
        topic: &str,
        messages: usize,
        limit: Duration,
    ) -> Result<Vec<Message>, TestError> {
        let deadline = Instant::now() + limit;
        let failed = |e: &dyn fmt::Display| TestError::new(format!("reading `{topic}`: {e}"));
        let connection = self.cluster()?.connection();
        broker::ensure_embedded_topic(&connection, topic).map_err(|e| failed(&e))?;
        let reader: StreamConsumer = broker::client_config(&connection)
            .map_err(|e| failed(&e))?
            .set("group.id", unique("kq-test-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| failed(&e))?;
        // A dead-letter topic is made by its first dead letter: until then, ask again.
        let partitions = loop {
            if let Ok(Some(partitions)) =
                broker::topic_partitions(&reader, topic, Duration::from_secs(5))
            {
                break partitions;
            }
            if Instant::now() >= deadline {
                return Err(TestError::timeout(format!(
                    "timed out after {limit:?} waiting for topic `{topic}` to exist"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut assignment = TopicPartitionList::new();
        for partition in partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| failed(&e))?;
        }
        reader.assign(&assignment).map_err(|e| failed(&e))?;
        let mut read = Vec::with_capacity(messages);
        while read.len() < messages {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, reader.recv()).await {
                Ok(Ok(record)) => read.push(Message::from_record(&record)),
                Ok(Err(e)) => return Err(failed(&e)),
                Err(_) => {
                    return Err(TestError::timeout(format!(
                        "timed out after {limit:?} waiting for {messages} message(s) in \
                         `{topic}`: {} read",
                        read.len()
                    )))
                }
            }
        }
        Ok(read)
    }

    /// Stops the consumers gracefully: each drains what it took, commits and leaves its
    /// group. Fails with the first consumer that had failed.
    pub async fn stop(mut self) -> Result<(), TestError> {
        self.shutdown.trigger();
        let mut failure = None;
        for consumer in &mut self.consumers {
            if let Some(task) = consumer.task.take() {
                if let Err(e) = task.await {
                    failure.get_or_insert(format!("consumer `{}` panicked: {e}", consumer.name));
                }
            }
            if let Some(failed) = lock(&consumer.failure).clone() {
                failure.get_or_insert(failed);
            }
        }
        match failure {
            Some(failure) => Err(TestError::new(failure)),
            None => Ok(()),
        }
    }
}

impl<C, S> Drop for RunningApp<C, S> {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

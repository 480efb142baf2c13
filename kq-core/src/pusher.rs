//! The producer: go-queue's `Pusher`, on librdkafka's own batching, with every delivery
//! failure surfaced.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use tokio::sync::oneshot;

use crate::broker;
use crate::conf::PusherConf;
use crate::error::Error;
use crate::sync::lock;
use crate::trace;

/// Where a pushed message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The partition it was written to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Why a push, a flush or a close failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The broker, or librdkafka on its behalf, refused the message.
    #[error("delivery to `{topic}` failed: {error}")]
    Delivery {
        /// The topic pushed to.
        topic: String,
        /// librdkafka's error.
        error: KafkaError,
    },
    /// The local send queue stayed full for the whole message timeout.
    #[error("the send queue for `{topic}` stayed full for {waited:?}")]
    QueueFull {
        /// The topic pushed to.
        topic: String,
        /// How long the push waited for room.
        waited: Duration,
    },
    /// Messages pushed without waiting were not delivered; each also went to the error callback.
    #[error(
        "{failed} message(s) could not be delivered to `{topic}`; the last error: {last_error}"
    )]
    Undelivered {
        /// The topic pushed to.
        topic: String,
        /// How many failed since the previous flush.
        failed: u64,
        /// The last failure's text.
        last_error: String,
    },
    /// A flush or close ran out of time with messages still on their way.
    #[error("{pending} message(s) to `{topic}` were still in flight after {waited:?}")]
    FlushTimeout {
        /// The topic pushed to.
        topic: String,
        /// Messages not yet acknowledged.
        pending: i32,
        /// How long it waited.
        waited: Duration,
    },
    /// The value could not be encoded as JSON.
    #[error("cannot encode the message as JSON: {0}")]
    Encode(String),
}

/// A delivery failure of a message pushed without waiting for it.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    /// The topic it was pushed to.
    pub topic: String,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// The error.
    pub error: KafkaError,
}

type FailureCallback = Arc<dyn Fn(&DeliveryFailure) + Send + Sync>;
type Waiter = Box<Option<oneshot::Sender<Result<Delivery, KafkaError>>>>;

/// Counts and routes delivery results; runs on librdkafka's delivery thread.
struct PushContext {
    delivered: AtomicU64,
    failed: AtomicU64,
    unreported: Mutex<Option<(u64, String)>>,
    on_failure: Mutex<Option<FailureCallback>>,
    /// Delivered and failed counters for the metrics, when collection is on.
    observed: Option<(Counter, Counter)>,
}

impl ClientContext for PushContext {}

impl ProducerContext for PushContext {
    type DeliveryOpaque = Waiter;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Waiter) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some((delivered, _)) = &self.observed {
                    delivered.inc();
                }
                if let Some(waiter) = *waiter {
                    let _ = waiter.send(Ok(Delivery {
                        partition: message.partition(),
                        offset: message.offset(),
                    }));
                }
            }
            Err((error, message)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Some((_, failed)) = &self.observed {
                    failed.inc();
                }
                if let Some(waiter) = *waiter {
                    // The caller is waiting and receives the error itself.
                    let _ = waiter.send(Err(error.clone()));
                    return;
                }
                let failure = DeliveryFailure {
                    topic: message.topic().to_owned(),
                    key: message.key().map(<[u8]>::to_vec),
                    error: error.clone(),
                };
                {
                    let mut unreported = lock(&self.unreported);
                    let count = unreported.as_ref().map_or(0, |(n, _)| *n);
                    *unreported = Some((count + 1, error.to_string()));
                }
                match lock(&self.on_failure).clone() {
                    Some(callback) => callback(&failure),
                    None => tracing::error!(
                        topic = %failure.topic,
                        error = %failure.error,
                        "push not delivered"
                    ),
                }
            }
        }
    }
}

struct Inner {
    producer: ThreadedProducer<PushContext>,
    topic: String,
    sync_push: bool,
    message_timeout: Duration,
}

impl Inner {
    /// How long until every queued message is delivered or has failed: librdkafka expires a
    /// message after `MessageTimeout`, checking about once a second.
    fn settle_time(&self) -> Duration {
        self.message_timeout + Duration::from_secs(2)
    }
}

impl Drop for Inner {
    // librdkafka purges whatever is still queued when a producer is destroyed; flush first so
    // that dropping the last handle delivers what was pushed, for as long as a push may take.
    fn drop(&mut self) {
        let pending = self.producer.in_flight_count();
        if pending > 0 {
            if let Err(e) = self.producer.flush(self.settle_time()) {
                tracing::error!(
                    topic = %self.topic,
                    pending = self.producer.in_flight_count(),
                    error = %e,
                    "pusher dropped with messages not delivered"
                );
            }
        }
    }
}

/// Pushes messages to one topic. Cheap to clone; clones share one producer.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pusher = kq::Pusher::new(["127.0.0.1:9092"], "payment-success")?;
/// pusher.push("zhangSan").await?;
/// pusher.kpush("order-42", r#"{"cents":1200}"#).await?;
/// pusher.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("topic", &self.inner.topic)
            .field("sync_push", &self.inner.sync_push)
            .finish()
    }
}

impl Pusher {
    /// A pusher to `topic` with go-queue's default options.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        topic: impl Into<String>,
    ) -> Result<Pusher, Error> {
        Pusher::from_conf(&PusherConf::new(brokers, topic))
    }

    /// A pusher configured by a `PusherConf` block.
    pub fn from_conf(conf: &PusherConf) -> Result<Pusher, Error> {
        conf.validate()?;
        let connection = conf.connection();
        broker::ensure_embedded_topic(&connection, &conf.topic)?;
        let linger = if conf.sync_push {
            0
        } else {
            conf.flush_interval.as_millis()
        };
        let mut config = broker::client_config(&connection)?;
        config
            // By default murmur2, as Java clients: the same key lands on the same partition
            // whichever client wrote it.
            .set("partitioner", conf.partitioner.keyword())
            .set("acks", conf.acks.keyword())
            .set("enable.idempotence", conf.idempotence.to_string())
            .set(
                "batch.size",
                conf.chunk_size.min(i32::MAX as usize).to_string(),
            )
            // A synchronous push waits for its own delivery; lingering would only add the
            // flush interval to every call (go-queue's sync pushes bypass its chunk executor).
            .set("linger.ms", linger.to_string())
            .set("compression.codec", conf.compression.keyword())
            .set(
                "message.timeout.ms",
                conf.message_timeout.as_millis().max(1).to_string(),
            )
            .set(
                "allow.auto.create.topics",
                conf.allow_auto_topic_creation.to_string(),
            );
        let context = PushContext {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unreported: Mutex::new(None),
            on_failure: Mutex::new(None),
            observed: crate::observe::pusher_counters(&conf.topic),
        };
        let producer = config.create_with_context(context)?;
        Ok(Pusher {
            inner: Arc::new(Inner {
                producer,
                topic: conf.topic.clone(),
                sync_push: conf.sync_push,
                message_timeout: conf.message_timeout,
            }),
        })
    }

    /// The topic this pusher writes to (go-queue's `Name`).
    pub fn name(&self) -> &str {
        &self.inner.topic
    }

    /// Starts a message with `value`, to add a key and headers to before [`Push::send`]:
    /// the path for every push that carries headers.
    ///
    /// ```no_run
    /// # async fn run(pusher: kq::Pusher) -> Result<(), kq::PushError> {
    /// pusher
    ///     .message("paid")
    ///     .key("order-42")
    ///     .header("source", "checkout")
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn message<'a, V: AsRef<[u8]> + ?Sized>(&'a self, value: &'a V) -> Push<'a> {
        Push {
            pusher: self,
            key: None,
            value: Cow::Borrowed(value.as_ref()),
            headers: None,
        }
    }

    /// Starts a message whose value is `value` encoded as JSON; see [`Pusher::message`].
    pub fn message_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<Push<'_>, PushError> {
        let bytes = serde_json::to_vec(value).map_err(|e| PushError::Encode(e.to_string()))?;
        Ok(Push {
            pusher: self,
            key: None,
            value: Cow::Owned(bytes),
            headers: None,
        })
    }

    /// Pushes a value under a time-based key, as go-queue does, which spreads keyless pushes
    /// over the partitions.
    pub async fn push(&self, value: impl AsRef<[u8]>) -> Result<Option<Delivery>, PushError> {
        self.message(value.as_ref()).send().await
    }

    /// Pushes a value under `key`; every message with the same key goes to the same partition.
    pub async fn push_with_key(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Delivery>, PushError> {
        self.message(value.as_ref()).key(key.as_ref()).send().await
    }

    /// go-queue's name for [`push_with_key`](Pusher::push_with_key).
    pub async fn kpush(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Delivery>, PushError> {
        self.push_with_key(key, value).await
    }

    /// Pushes a value under `key` with headers.
    pub async fn push_with_headers<'h>(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<Option<Delivery>, PushError> {
        self.message(value.as_ref())
            .key(key.as_ref())
            .headers(headers)
            .send()
            .await
    }

    /// Pushes `value` encoded as JSON under `key`.
    pub async fn push_json<T: serde::Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<Option<Delivery>, PushError> {
        self.message_json(value)?.key(key.as_ref()).send().await
    }

    /// Sets what happens to a delivery failure of a message pushed without waiting; by default
    /// it is logged. Either way it is counted and reported by the next `flush` or `close`.
    pub fn on_delivery_failure(&self, callback: impl Fn(&DeliveryFailure) + Send + Sync + 'static) {
        *lock(&self.inner.producer.context().on_failure) = Some(Arc::new(callback));
    }

    /// Messages acknowledged by the broker so far.
    pub fn delivered(&self) -> u64 {
        self.inner
            .producer
            .context()
            .delivered
            .load(Ordering::Relaxed)
    }

    /// Messages that failed delivery so far.
    pub fn failed(&self) -> u64 {
        self.inner.producer.context().failed.load(Ordering::Relaxed)
    }

    /// Waits until every queued message is delivered or has failed, for at most `timeout`.
    /// Reports the failures of messages pushed without waiting since the previous flush.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PushError> {
        let inner = self.inner.clone();
        // librdkafka's flush blocks; keep it off the async workers.
        let flushed = tokio::task::spawn_blocking(move || inner.producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Flush(RDKafkaErrorCode::Fail)));
        if flushed.is_err() {
            return Err(PushError::FlushTimeout {
                topic: self.inner.topic.clone(),
                pending: self.inner.producer.in_flight_count(),
                waited: timeout,
            });
        }
        match lock(&self.inner.producer.context().unreported).take() {
            Some((failed, last_error)) => Err(PushError::Undelivered {
                topic: self.inner.topic.clone(),
                failed,
                last_error,
            }),
            None => Ok(()),
        }
    }

    /// Waits until everything queued is delivered or has failed — each message within
    /// `MessageTimeout` — and reports the failures, as go-queue's `Close`. The pusher stays
    /// usable; dropping the last clone also waits for its messages, for as long.
    pub async fn close(&self) -> Result<(), PushError> {
        self.flush(self.inner.settle_time()).await
    }

    /// Sends one record, waiting for room in the local queue; in sync mode also waits for the
    /// broker's acknowledgement.
    pub(crate) async fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<Option<Delivery>, PushError> {
        let inner = &*self.inner;
        let (waiter, delivered) = if inner.sync_push {
            let (tx, rx) = oneshot::channel();
            (Box::new(Some(tx)), Some(rx))
        } else {
            (Box::new(None), None)
        };
        // The caller's trace continues in whoever consumes the message.
        let headers = trace::inject(headers);
        let started = Instant::now();
        let mut record: BaseRecord<'_, [u8], [u8], Waiter> =
            BaseRecord::with_opaque_to(&inner.topic, waiter);
        record.key = key;
        record.payload = value;
        record.headers = headers;
        loop {
            match inner.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The local queue is full: wait for deliveries to make room rather than
                    // fail at once, bounded by the time a message may take to deliver.
                    if started.elapsed() >= inner.message_timeout {
                        return Err(PushError::QueueFull {
                            topic: inner.topic.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => {
                    return Err(PushError::Delivery {
                        topic: inner.topic.clone(),
                        error,
                    })
                }
            }
        }
        let Some(delivered) = delivered else {
            return Ok(None);
        };
        match delivered.await {
            Ok(Ok(delivery)) => Ok(Some(delivery)),
            Ok(Err(error)) => Err(PushError::Delivery {
                topic: inner.topic.clone(),
                error,
            }),
            // The producer dropped the waiter without a result: only when it is destroyed.
            Err(_) => Err(PushError::Delivery {
                topic: inner.topic.clone(),
                error: KafkaError::Canceled,
            }),
        }
    }
}

/// A message being put together: a key, headers, then [`send`](Push::send). Made by
/// [`Pusher::message`] and [`Pusher::message_json`].
#[must_use = "a message is pushed only by `send`"]
pub struct Push<'a> {
    pusher: &'a Pusher,
    key: Option<&'a [u8]>,
    value: Cow<'a, [u8]>,
    headers: Option<OwnedHeaders>,
}

impl fmt::Debug for Push<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push")
            .field("topic", &self.pusher.inner.topic)
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("value_bytes", &self.value.len())
            .field(
                "headers",
                &self
                    .headers
                    .as_ref()
                    .map_or(0, rdkafka::message::Headers::count),
            )
            .finish()
    }
}

impl<'a> Push<'a> {
    /// Sets the key; every message with the same key goes to the same partition. Without one
    /// the message gets go-queue's time-based key.
    pub fn key<K: AsRef<[u8]> + ?Sized>(mut self, key: &'a K) -> Self {
        self.key = Some(key.as_ref());
        self
    }

    /// Adds a header. Headers keep their order, and a name may repeat.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers = Some(trace::append_header(self.headers, name, value.as_ref()));
        self
    }

    /// Adds headers.
    pub fn headers<'h>(self, headers: impl IntoIterator<Item = (&'h str, &'h [u8])>) -> Self {
        headers
            .into_iter()
            .fold(self, |push, (name, value)| push.header(name, value))
    }

    /// Pushes the message: see [`Pusher`] for what sync and async mode return.
    pub async fn send(self) -> Result<Option<Delivery>, PushError> {
        let time_key;
        let key = match self.key {
            Some(key) => key,
            None => {
                time_key = self::time_key();
                time_key.as_bytes()
            }
        };
        self.pusher
            .send(Some(key), Some(&self.value), self.headers)
            .await
    }
}

/// go-queue keys keyless pushes with the current time in nanoseconds.
fn time_key() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        .to_string()
}

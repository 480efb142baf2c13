//! A consumer queue: go-queue's `kq.Queue`, correct.
//!
//! A message travels through one module per stage:
//!
//! 1. `fetch`: each group member (`Conns`) takes batches from librdkafka on a thread of its
//!    own into its `stash`, a line per partition, which reads ahead a bounded amount while
//!    the queue is full and then stops taking;
//! 2. `dispatch`: routes the message to a lane by key (per-key order); a free processor
//!    takes the next lane with work, and a lane runs on one processor at a time;
//! 3. `processor`: runs the handler under the error policy (retries, dead letters, panics),
//!    timed for the metrics by `timing`; a failed message retries on a task of its own, with
//!    its key's later messages set aside behind it by `holds`; `batch` does the same for a
//!    batch consumer, a batch of a lane's messages per call;
//! 4. `offsets`: tracks what is done per partition and yields the gap-free watermark;
//! 5. `commit`: commits watermarks on an interval, and synchronously on revoke and shutdown,
//!    each with the `offset_map` of what finished above it, which an assignment reads back;
//!
//! with `rebalance` draining revoked partitions before they are released, and `buffers`
//! handing message buffers back from the processors to the fetch thread.

mod batch;
mod buffers;
mod commit;
mod dispatch;
mod fetch;
mod fetched;
mod holds;
mod offset_map;
mod offsets;
mod processor;
mod stash;
mod timing;

pub use processor::dead_letter_headers;
mod rebalance;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use crate::batch::BatchHandler;
use crate::conf::KqConf;
use crate::error::Error;
use crate::handler::{Handler, HandlerError};
use crate::message::Message;
use crate::observe::ConsumerMetrics;
pub use crate::observe::{Metrics, Outcome};
use crate::pusher::Pusher;
use crate::registry::RegisteredHandler;
use crate::shutdown::Shutdown;

/// Called with every message that failed for good (go-queue's `WithErrorHandler`).
pub type ErrorHandler = Arc<dyn Fn(&Message, &HandlerError) + Send + Sync>;

/// A consumer queue: one topic, one group, one handler.
///
/// ```no_run
/// use kq::{HandlerError, KqConf, Message, Queue, ServiceGroup};
///
/// struct Print;
///
/// impl kq::Handler for Print {
///     fn handle<'a>(&'a self, msg: &'a Message) -> kq::BoxFuture<'a, Result<(), HandlerError>> {
///         Box::pin(async move {
///             println!("{:?}", msg.value_str());
///             Ok(())
///         })
///     }
/// }
///
/// # async fn run() -> Result<(), kq::Error> {
/// let conf = KqConf::new(["127.0.0.1:9092"], "printer", "payment-success");
/// let queue = Queue::new("print", conf, Print)
///     .with_commit_interval(std::time::Duration::from_millis(500));
/// let mut group = ServiceGroup::new();
/// group.add(queue);
/// group.run().await
/// # }
/// ```
pub struct Queue {
    name: String,
    conf: KqConf,
    consume: Consume,
    error_handler: Option<ErrorHandler>,
    metrics: Option<Arc<dyn Metrics>>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("conf", &self.conf)
            .finish()
    }
}

impl Queue {
    /// A queue named `name` (for logs and metrics) that runs `handler` for every message.
    pub fn new(name: impl Into<String>, conf: KqConf, handler: impl Handler) -> Self {
        Queue::with(name, conf, Consume::Each(Arc::new(handler)))
    }

    /// A queue that runs `handler` for batches of up to `Batch.Size` messages (see
    /// [`BatchHandler`]).
    pub fn batch(name: impl Into<String>, conf: KqConf, handler: impl BatchHandler) -> Self {
        Queue::with(name, conf, Consume::Batch(Arc::new(handler)))
    }

    /// A queue for a `#[kq::consumer]` function: of single messages or of batches, as the
    /// function takes them.
    pub fn registered(name: impl Into<String>, conf: KqConf, handler: RegisteredHandler) -> Self {
        if handler.registration().takes_batches() {
            Queue::batch(name, conf, handler)
        } else {
            Queue::new(name, conf, handler)
        }
    }

    fn with(name: impl Into<String>, conf: KqConf, consume: Consume) -> Self {
        Queue {
            name: name.into(),
            conf,
            consume,
            error_handler: None,
            metrics: None,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn conf(&self) -> &KqConf {
        &self.conf
    }

    /// Overrides `CommitInterval`.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.conf.commit_interval = interval;
        self
    }

    /// Overrides `QueueCapacity`.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.conf.queue_capacity = capacity;
        self
    }

    /// Overrides `MaxWait`.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.conf.max_wait = max_wait;
        self
    }

    /// Reports every message's outcome and handler time.
    pub fn with_metrics(mut self, metrics: impl Metrics) -> Self {
        self.metrics = Some(Arc::new(metrics));
        self
    }

    /// Replaces the default error handler, which logs the failure with the consumer's name,
    /// topic, partition and offset. It sees each message that failed for good, after its
    /// retries.
    pub fn with_error_handler(
        mut self,
        handler: impl Fn(&Message, &HandlerError) + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(handler));
        self
    }

    /// Runs the queue until `shutdown` triggers, then drains, commits and leaves the group.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        self.conf.validate()?;
        let dead_letter = match self.conf.dead_letter_topic.as_str() {
            "" => None,
            topic => Some(cluster_pusher(&self.conf, topic)?),
        };
        let observed = ConsumerMetrics::new(&self.name, &self.conf.topic);
        if let Some(observed) = &observed {
            tokio::spawn(log_stats(observed.clone(), shutdown.clone()));
        }
        let consumer = self.name.clone();
        let shared = Arc::new(QueueShared {
            custom_error_handler: self.error_handler.is_some(),
            error_handler: self.error_handler.unwrap_or_else(|| {
                Arc::new(move |msg: &Message, error: &HandlerError| {
                    log_failure(&consumer, msg, error)
                })
            }),
            observed,
            name: self.name,
            conf: self.conf,
            consume: self.consume,
            metrics: self.metrics,
            dead_letter,
        });
        // Awaited together, so that whichever member fails first stops the others at once, and
        // the members' stops overlap.
        let mut members = FuturesUnordered::new();
        let mut first_error = None;
        for member in 0..shared.conf.conns {
            match fetch::spawn_member(shared.clone(), member, shutdown.clone()) {
                Ok(stopped) => members.push(stopped),
                Err(e) => {
                    // The members already started stop and commit before the error returns.
                    shutdown.trigger();
                    first_error = Some(e);
                    break;
                }
            }
        }
        while let Some(stopped) = members.next().await {
            if let Err(e) = stopped {
                // One member failing stops its siblings too: the service is not healthy.
                shutdown.trigger();
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How a queue's messages reach the application: one per handler call, or a batch per call.
pub(crate) enum Consume {
    Each(Arc<dyn Handler>),
    Batch(Arc<dyn BatchHandler>),
}

impl Consume {
    fn reads_headers(&self) -> bool {
        match self {
            Consume::Each(handler) => handler.reads_headers(),
            Consume::Batch(handler) => handler.reads_headers(),
        }
    }
}

/// What every member and processor of a queue shares.
pub(crate) struct QueueShared {
    pub name: String,
    pub conf: KqConf,
    pub consume: Consume,
    pub error_handler: ErrorHandler,
    /// Whether `error_handler` is the application's rather than the default log line.
    pub custom_error_handler: bool,
    pub metrics: Option<Arc<dyn Metrics>>,
    /// kq's own metrics and stat log, when collection is on.
    pub observed: Option<Arc<ConsumerMetrics>>,
    pub dead_letter: Option<Pusher>,
}

impl QueueShared {
    /// Whether messages are read with their headers: only when something can see them (the
    /// handler, the application's error handler, a dead letter, a trace to continue).
    /// librdkafka allocates and frees a buffer to parse a record's headers, even when there
    /// are none, which costs more than the rest of taking a message from it.
    pub fn reads_headers(&self) -> bool {
        self.consume.reads_headers()
            || self.custom_error_handler
            || self.dead_letter.is_some()
            || cfg!(feature = "opentelemetry")
    }

    /// Whether messages are checked as UTF-8 text as they are copied (see
    /// [`Handler::reads_text`](crate::Handler::reads_text)).
    pub fn reads_text(&self) -> bool {
        match &self.consume {
            Consume::Each(handler) => handler.reads_text(),
            Consume::Batch(_) => false,
        }
    }

    /// Whether the queue's consumer takes batches.
    pub fn batching(&self) -> bool {
        matches!(self.consume, Consume::Batch(_))
    }

    /// Messages in flight at most per member: `QueueCapacity`, or for a batch consumer three
    /// batches a processor: one running, the next filled meanwhile, and room for the lanes'
    /// uneven shares of the keys (with two, a 1 ms sink ran at 0.64× of its batches' pace;
    /// with three, 0.74×).
    pub fn capacity(&self) -> usize {
        if self.batching() {
            let batches = self.conf.batch.size.saturating_mul(self.conf.processors);
            self.conf.queue_capacity.max(batches.saturating_mul(3))
        } else {
            self.conf.queue_capacity
        }
    }

    /// Runs an application callback (the error handler, the metrics) with its panic caught and
    /// logged: the messages behind this one still have to run on this processor, and a
    /// processor that died would stall its lane, and with it the member, for good.
    pub fn guarded(&self, callback: &str, run: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            tracing::error!(
                consumer = %self.name,
                callback,
                panic = crate::handler::panic_detail(&*panic),
                "a callback panicked; the message is settled as if it had returned"
            );
        }
    }
}

/// go-zero's stat log: once a minute, a line per consumer with its throughput and handler
/// times.
async fn log_stats(metrics: Arc<ConsumerMetrics>, shutdown: Shutdown) {
    const WINDOW: Duration = Duration::from_secs(60);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + WINDOW, WINDOW);
    loop {
        tokio::select! {
            _ = ticks.tick() => tracing::info!(target: "kq::stat", "{}", metrics.stat_line(WINDOW)),
            () = shutdown.wait() => return,
        }
    }
}

/// A pusher to `topic` in the cluster `conf` consumes from, reached with the same keys, whose
/// pushes wait for the broker: the dead letters, and the test kit's pushes.
pub(crate) fn cluster_pusher(conf: &KqConf, topic: &str) -> Result<Pusher, Error> {
    Pusher::from_conf(&cluster_pusher_conf(conf, topic))
}

/// The configuration of a [`cluster_pusher`].
pub(crate) fn cluster_pusher_conf(conf: &KqConf, topic: &str) -> crate::conf::PusherConf {
    let mut pusher_conf = crate::conf::PusherConf::new(conf.brokers.clone(), topic);
    pusher_conf.connect_as(&conf.connection());
    // A message must be on the broker before the offset it came from is committed.
    pusher_conf.sync_push = true;
    pusher_conf.flush_interval = Duration::from_millis(5);
    pusher_conf
}

/// The default error handler's line. It names the consumer: a service runs several, often on
/// one topic.
fn log_failure(consumer: &str, msg: &Message, error: &HandlerError) {
    tracing::error!(
        consumer,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        error = %error,
        "message failed"
    );
}

//! The process's metrics registry: every family kq reports, created when collection is turned on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::health::MemberHealth;
use super::tally::HandlerTimes;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MessageLabels {
    pub(super) consumer: String,
    pub(super) topic: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ConsumerLabels {
    pub(super) consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TopicLabels {
    pub(super) consumer: String,
    pub(super) topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PartitionLabels {
    pub(super) consumer: String,
    pub(super) topic: String,
    pub(super) partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RebalanceLabels {
    pub(super) consumer: String,
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PusherLabels {
    pub(super) topic: String,
}

/// Every metric kq exports, and the members whose health it reports.
pub(super) struct Observer {
    pub(super) registry: Registry,
    pub(super) messages: Family<MessageLabels, Counter>,
    pub(super) handler_seconds: Family<ConsumerLabels, HandlerTimes>,
    pub(super) batch_size: Family<ConsumerLabels, Histogram, fn() -> Histogram>,
    pub(super) batch_seconds: Family<ConsumerLabels, Histogram, fn() -> Histogram>,
    pub(super) in_flight: Family<ConsumerLabels, Gauge>,
    pub(super) held: Family<ConsumerLabels, Gauge>,
    pub(super) lag: Family<PartitionLabels, Gauge>,
    pub(super) commits: Family<TopicLabels, Counter>,
    pub(super) skipped: Family<TopicLabels, Counter>,
    pub(super) offset_map_too_large: Family<TopicLabels, Counter>,
    pub(super) rebalances: Family<RebalanceLabels, Counter>,
    pub(super) pushed: Family<PusherLabels, Counter>,
    pub(super) push_failed: Family<PusherLabels, Counter>,
    pub(super) members: Mutex<Vec<Arc<MemberHealth>>>,
    pub(super) started: Instant,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static OBSERVER: OnceLock<Observer> = OnceLock::new();

pub(super) fn observer() -> &'static Observer {
    OBSERVER.get_or_init(|| {
        let mut registry = Registry::with_prefix("kq");
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages handled, by outcome: ok, error (failed for good), retried, dead_lettered",
            messages.clone(),
        );
        let handler_seconds =
            Family::<ConsumerLabels, HandlerTimes>::new_with_constructor(HandlerTimes::new);
        registry.register(
            "handler_duration_seconds",
            "Time of one handler run",
            handler_seconds.clone(),
        );
        let batch_size: Family<ConsumerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 15)));
        registry.register(
            "batch_size",
            "Messages per call of a batch consumer",
            batch_size.clone(),
        );
        let batch_seconds: Family<ConsumerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 4.0, 11)));
        registry.register(
            "batch_duration_seconds",
            "Time of one call of a batch consumer",
            batch_seconds.clone(),
        );
        let in_flight = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "in_flight",
            "Messages fetched and not yet done (queued or running)",
            in_flight.clone(),
        );
        let held = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "held",
            "Messages out of the queue behind held keys: held ones and those waiting behind them",
            held.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the partition's end and the consumer's position",
            lag.clone(),
        );
        let commits = Family::<TopicLabels, Counter>::default();
        registry.register(
            "commits",
            "Offset commits sent on CommitInterval, and confirmed ones on revoke and stop",
            commits.clone(),
        );
        let skipped = Family::<TopicLabels, Counter>::default();
        registry.register(
            "skipped",
            "Messages not handled again on assignment: the commit's offset map says they were finished",
            skipped.clone(),
        );
        let offset_map_too_large = Family::<TopicLabels, Counter>::default();
        registry.register(
            "offset_map_too_large",
            "Commits whose offset map did not fit the broker's metadata limit: they carried the plain watermark",
            offset_map_too_large.clone(),
        );
        let rebalances = Family::<RebalanceLabels, Counter>::default();
        registry.register(
            "rebalances",
            "Partition assignments and revocations",
            rebalances.clone(),
        );
        let pushed = Family::<PusherLabels, Counter>::default();
        registry.register(
            "pusher_delivered",
            "Messages the broker acknowledged",
            pushed.clone(),
        );
        let push_failed = Family::<PusherLabels, Counter>::default();
        registry.register(
            "pusher_failed",
            "Messages that could not be delivered",
            push_failed.clone(),
        );
        Observer {
            registry,
            messages,
            handler_seconds,
            batch_size,
            batch_seconds,
            in_flight,
            held,
            lag,
            commits,
            skipped,
            offset_map_too_large,
            rebalances,
            pushed,
            push_failed,
            members: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    })
}

/// Whether metrics and health are being collected.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Starts collecting, without serving: for services that serve [`render_metrics`] and
/// [`health`] from an HTTP server of their own.
pub fn enable() {
    observer();
    ENABLED.store(true, Ordering::Release);
}

/// The metrics in Prometheus' text format.
pub fn render_metrics() -> String {
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &observer().registry);
    text
}

impl Observer {
    pub(super) fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Counts delivered and failed pushes of one topic.
pub(crate) fn pusher_counters(topic: &str) -> Option<(Counter, Counter)> {
    if !enabled() {
        return None;
    }
    let labels = PusherLabels {
        topic: topic.into(),
    };
    let o = observer();
    Some((
        o.pushed.get_or_create(&labels).clone(),
        o.push_failed.get_or_create(&labels).clone(),
    ))
}

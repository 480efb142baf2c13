//! One consumer's metrics: its handles on the registry's families, taken once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::health::{MemberHealth, RUNNING};
use super::outcome::OUTCOME_LABELS;
use super::registry::{
    enabled, observer, ConsumerLabels, MessageLabels, PartitionLabels, RebalanceLabels, TopicLabels,
};
use super::stat::StatWindow;
use super::tally::{HandlerTimes, Tally};
use crate::sync::lock;

/// A consumer's handles on its metrics, taken once so that recording takes no lookups.
pub(crate) struct ConsumerMetrics {
    name: String,
    topic: String,
    /// `kq_messages_total` by outcome, by `outcome_index`.
    outcomes: [Counter; OUTCOME_LABELS.len()],
    handler_seconds: HandlerTimes,
    batch_size: Histogram,
    batch_seconds: Histogram,
    in_flight: Gauge,
    held: Gauge,
    commits: Counter,
    skipped: Counter,
    offset_map_too_large: Counter,
    stats: Mutex<StatWindow>,
}

impl ConsumerMetrics {
    /// The consumer's metrics, or `None` while collection is off.
    pub fn new(name: &str, topic: &str) -> Option<Arc<Self>> {
        if !enabled() {
            return None;
        }
        let o = observer();
        let outcome = |outcome| {
            o.messages
                .get_or_create(&MessageLabels {
                    consumer: name.into(),
                    topic: topic.into(),
                    outcome,
                })
                .clone()
        };
        let consumer = ConsumerLabels {
            consumer: name.into(),
        };
        let topic_labels = TopicLabels {
            consumer: name.into(),
            topic: topic.into(),
        };
        Some(Arc::new(ConsumerMetrics {
            name: name.into(),
            topic: topic.into(),
            outcomes: OUTCOME_LABELS.map(outcome),
            handler_seconds: o.handler_seconds.get_or_create(&consumer).clone(),
            batch_size: o.batch_size.get_or_create(&consumer).clone(),
            batch_seconds: o.batch_seconds.get_or_create(&consumer).clone(),
            in_flight: o.in_flight.get_or_create(&consumer).clone(),
            held: o.held.get_or_create(&consumer).clone(),
            commits: o.commits.get_or_create(&topic_labels).clone(),
            skipped: o.skipped.get_or_create(&topic_labels).clone(),
            offset_map_too_large: o.offset_map_too_large.get_or_create(&topic_labels).clone(),
            stats: Mutex::default(),
        }))
    }

    /// Registers a member for health reports.
    pub fn member(&self, index: usize, stuck_after: Duration) -> Arc<MemberHealth> {
        let o = observer();
        let health = Arc::new(MemberHealth {
            consumer: self.name.clone(),
            index,
            joined: AtomicBool::new(false),
            heartbeat: AtomicU64::new(o.millis()),
            state: AtomicU8::new(RUNNING),
            stuck_after,
        });
        lock(&o.members).push(health.clone());
        health
    }

    /// Adds what a processor tallied to the metrics and the stat window, and empties the tally.
    pub fn add(&self, tally: &mut Tally) {
        if tally.handled() == 0 {
            return;
        }
        for (counter, n) in self.outcomes.iter().zip(tally.outcomes) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.handler_seconds.add(tally);
        lock(&self.stats).add(tally);
        tally.clear();
    }

    /// Records a batch consumer's call: its messages and its time.
    pub fn record_batch(&self, messages: usize, elapsed: Duration) {
        self.batch_size.observe(messages as f64);
        self.batch_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn set_in_flight(&self, messages: usize) {
        self.in_flight.set(messages as i64);
    }

    /// Messages out of the queue behind held keys now.
    pub fn set_held(&self, messages: usize) {
        self.held.set(messages as i64);
    }

    pub fn committed(&self) {
        self.commits.inc();
    }

    /// Messages a previous owner finished, per the commit's offset map, not handled again.
    pub fn skipped(&self, messages: u64) {
        self.skipped.inc_by(messages);
    }

    /// A commit that carried the plain watermark: its offset map did not fit.
    pub fn offset_map_too_large(&self) {
        self.offset_map_too_large.inc();
    }

    pub fn rebalanced(&self, kind: &'static str) {
        observer()
            .rebalances
            .get_or_create(&RebalanceLabels {
                consumer: self.name.clone(),
                kind,
            })
            .inc();
    }

    pub fn set_lag(&self, partition: i32, lag: i64) {
        observer()
            .lag
            .get_or_create(&PartitionLabels {
                consumer: self.name.clone(),
                topic: self.topic.clone(),
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// go-zero's stat line for the window since the last call, which starts a new window.
    pub fn stat_line(&self, window: Duration) -> String {
        let stats = std::mem::take(&mut *lock(&self.stats));
        stats.line(&self.name, window)
    }
}

/// Parses a member's librdkafka statistics into lag gauges: `consumer_lag` per partition of
/// the member's topic (-1, unknown, is skipped).
pub(crate) fn record_lag(metrics: &ConsumerMetrics, stats: &rdkafka::Statistics) {
    let Some(topic) = stats.topics.get(&metrics.topic) else {
        return;
    };
    // Partition -1 is librdkafka's internal unassigned partition.
    for p in topic.partitions.values() {
        if p.partition >= 0 && p.consumer_lag >= 0 {
            metrics.set_lag(p.partition, p.consumer_lag);
        }
    }
}

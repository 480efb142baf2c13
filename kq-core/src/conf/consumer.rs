//! A consumer queue's block: go-queue's `KqConf`, and the error policy's `Retry` block.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::connection::{with_connection_keys, with_default_connection};
use super::keywords::{Assignor, Offset, Ordering};
use super::service::{DevServerConf, LogConf, PrometheusConf, TelemetryConf};
use super::validate::{at_least, at_most, count_at_most, require, require_brokers};
use super::{defaults, duration};
use crate::error::InvalidConf;

/// The longest `CommitInterval`: librdkafka's bound for `auto.commit.interval.ms`.
pub(crate) const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(86_400);

/// The error policy: how often a failing message is tried again, and where it goes after that.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RetryConf {
    /// Attempts in all, the first one included. `1` means no retry.
    pub attempts: u32,
    /// The wait before the second attempt; each later wait doubles, up to `MaxBackoff`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_backoff: Duration,
}

impl RetryConf {
    /// The longest wait between two attempts that kq accepts: a message held longer than a
    /// day is not being retried any more, it is stuck.
    const LONGEST_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

    fn validate(&self) -> Result<(), InvalidConf> {
        at_most("Retry.Backoff", self.backoff, Self::LONGEST_BACKOFF)?;
        at_most("Retry.MaxBackoff", self.max_backoff, Self::LONGEST_BACKOFF)
    }
}

/// A batch consumer's batches: the `Batch` block. A consumer of single messages ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BatchConf {
    /// The most messages per call.
    pub size: usize,
    /// The longest a batch that is not full waits for more messages before it is handed
    /// over, from when the processor took its first ones.
    #[serde(deserialize_with = "duration::deserialize")]
    pub wait: Duration,
}

impl BatchConf {
    /// The largest `Size` kq takes: a member keeps three batches per processor in flight.
    const LARGEST_SIZE: usize = 10_000;
    /// The longest `Wait` kq takes.
    const LONGEST_WAIT: Duration = Duration::from_secs(60);

    fn validate(&self) -> Result<(), InvalidConf> {
        at_least("Batch.Size", self.size, 1)?;
        count_at_most("Batch.Size", self.size, Self::LARGEST_SIZE)?;
        at_most("Batch.Wait", self.wait, Self::LONGEST_WAIT)
    }
}

impl Default for BatchConf {
    fn default() -> Self {
        BatchConf {
            size: 100,
            // Long enough for a backlog's next messages to arrive (the fetch loop hands over a
            // burst every fraction of a millisecond), short enough to add little to a
            // trickle's latency.
            wait: Duration::from_millis(10),
        }
    }
}

/// What waits behind held keys at most: the `Hold` block. A message that failed and waits to
/// run again holds only the messages of its key (under `Ordering: key`; of its partition under
/// `partition`), and they leave the queue to wait, so that the member goes on taking other
/// keys' messages; these bound them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HoldConf {
    /// Messages out of the queue at most: held ones and those waiting behind them.
    pub messages: usize,
    /// Their keys' and values' bytes at most.
    pub bytes: usize,
}

impl HoldConf {
    fn validate(&self) -> Result<(), InvalidConf> {
        at_least("Hold.Messages", self.messages, 1)?;
        at_least("Hold.Bytes", self.bytes, 1)
    }
}

impl Default for HoldConf {
    fn default() -> Self {
        HoldConf {
            messages: 10_000,
            bytes: 16 << 20,
        }
    }
}

impl Default for RetryConf {
    fn default() -> Self {
        RetryConf {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

with_connection_keys! {
    /// A consumer queue's configuration: go-queue's `kq.KqConf`, key for key, plus kq's own
    /// keys.
    ///
    /// ```
    /// let yaml = "
    /// Name: kqConsumer
    /// Brokers: [127.0.0.1:9092]
    /// Group: kqConsumer
    /// Topic: payment-success
    /// Offset: first
    /// ";
    /// # let conf: kq_core::KqConf = serde_json::from_value(serde_json::json!({
    /// #     "Name": "kqConsumer", "Brokers": ["127.0.0.1:9092"], "Group": "kqConsumer",
    /// #     "Topic": "payment-success", "Offset": "first"})).unwrap();
    /// # let _ = yaml;
    /// assert_eq!(conf.processors, 8);
    /// assert_eq!(conf.offset, kq_core::Offset::First);
    /// ```
    #[derive(Clone, PartialEq, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct KqConf {
        /// The consumer group.
        pub group: String,
        /// The topic to consume.
        pub topic: String,
        /// Where a group without a committed offset starts: `first` or `last`.
        #[serde(default)]
        pub offset: Offset,
        /// Group members (independent Kafka consumers) this process runs for the topic.
        #[serde(default = "defaults::conns")]
        pub conns: usize,
        /// Accepted for go-queue compatibility; see the configuration reference.
        #[serde(default = "defaults::consumers")]
        pub consumers: usize,
        /// Handlers running at once per group member.
        #[serde(default = "defaults::processors")]
        pub processors: usize,
        /// The least data a fetch waits for (`fetch.min.bytes`).
        #[serde(default = "defaults::min_bytes")]
        pub min_bytes: usize,
        /// The most data one fetch returns (`fetch.max.bytes`).
        #[serde(default = "defaults::max_bytes")]
        pub max_bytes: usize,
        /// After the error policy is exhausted, when there is no `DeadLetterTopic`: commit past
        /// the failed message (`true`) or hold its partition and keep retrying it (`false`).
        #[serde(default = "defaults::yes")]
        pub force_commit: bool,
        /// Handle every message of a partition in offset order (same as `Ordering: partition`).
        #[serde(default)]
        pub commit_in_order: bool,
        /// How often finished offsets are committed.
        #[serde(default = "defaults::commit_interval", with = "duration")]
        pub commit_interval: Duration,
        /// Messages fetched but not finished, at most, per group member. A partition's uncommitted
        /// window, from its first unfinished offset to its last fetched one, is bounded by four
        /// times it.
        #[serde(default = "defaults::queue_capacity")]
        pub queue_capacity: usize,
        /// The longest a fetch waits for `MinBytes` (`fetch.wait.max.ms`).
        #[serde(default = "defaults::max_wait", with = "duration")]
        pub max_wait: Duration,
        /// How messages are spread over processors; `CommitInOrder: true` means `partition`.
        #[serde(default)]
        pub ordering: Ordering,
        /// Retries of a failing message.
        #[serde(default)]
        pub retry: RetryConf,
        /// A batch consumer's batches: `Batch.Size` and `Batch.Wait`.
        #[serde(default)]
        pub batch: BatchConf,
        /// What may wait behind held keys: `Hold.Messages` and `Hold.Bytes`.
        #[serde(default)]
        pub hold: HoldConf,
        /// Where a message goes once its retries are exhausted, if anywhere. It is committed past
        /// only once it is written there; a failed write is tried again every `Retry.MaxBackoff`.
        #[serde(default)]
        pub dead_letter_topic: String,
        /// How long shutdown and rebalances wait for running handlers.
        #[serde(default = "defaults::shutdown_timeout", with = "duration")]
        pub shutdown_timeout: Duration,
        /// How partitions are shared among the group's members.
        #[serde(default)]
        pub assignor: Assignor,
        /// How long the group waits for a silent member before moving its partitions
        /// (`session.timeout.ms`).
        #[serde(default = "defaults::session_timeout", with = "duration")]
        pub session_timeout: Duration,
        /// go-zero's `Log` block, as a `KqConf` embeds `ServiceConf`. The service's top-level
        /// block wins over a queue's.
        #[serde(default)]
        pub log: Option<LogConf>,
        /// go-zero's `Telemetry` block; the top-level block wins over a queue's.
        #[serde(default)]
        pub telemetry: Option<TelemetryConf>,
        /// go-zero's `DevServer` block; the top-level block wins over a queue's.
        #[serde(default)]
        pub dev_server: Option<DevServerConf>,
        /// go-zero's `Prometheus` block; the top-level block wins over a queue's.
        #[serde(default)]
        pub prometheus: Option<PrometheusConf>,
    }

}

impl KqConf {
    /// A configuration with go-queue's defaults for the given brokers, group and topic.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        with_default_connection!(KqConf {
            brokers: brokers.into_iter().map(Into::into).collect(),
            group: group.into(),
            topic: topic.into(),
            offset: Offset::default(),
            conns: defaults::conns(),
            consumers: defaults::consumers(),
            processors: defaults::processors(),
            min_bytes: defaults::min_bytes(),
            max_bytes: defaults::max_bytes(),
            force_commit: true,
            commit_in_order: false,
            commit_interval: defaults::commit_interval(),
            queue_capacity: defaults::queue_capacity(),
            max_wait: defaults::max_wait(),
            ordering: Ordering::default(),
            retry: RetryConf::default(),
            batch: BatchConf::default(),
            hold: HoldConf::default(),
            dead_letter_topic: String::new(),
            shutdown_timeout: defaults::shutdown_timeout(),
            assignor: Assignor::default(),
            session_timeout: defaults::session_timeout(),
            log: None,
            telemetry: None,
            dev_server: None,
            prometheus: None,
        })
    }

    /// The ordering in force: `CommitInOrder: true` overrides `Ordering`.
    pub fn effective_ordering(&self) -> Ordering {
        if self.commit_in_order {
            Ordering::Partition
        } else {
            self.ordering
        }
    }

    /// Checks what serde cannot: ranges and required values. Names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidConf> {
        require_brokers(&self.brokers)?;
        require("Group", &self.group)?;
        require("Topic", &self.topic)?;
        self.connection().validate()?;
        at_least("Conns", self.conns, 1)?;
        at_least("Consumers", self.consumers, 1)?;
        at_least("Processors", self.processors, 1)?;
        at_least("QueueCapacity", self.queue_capacity, 1)?;
        at_least("MaxBytes", self.max_bytes, 1)?;
        // librdkafka's ranges for `fetch.min.bytes` and `fetch.max.bytes`.
        at_least("MinBytes", self.min_bytes, 1)?;
        count_at_most("MinBytes", self.min_bytes, 100_000_000)?;
        count_at_most("MaxBytes", self.max_bytes, 2_147_483_135)?;
        at_least("Retry.Attempts", self.retry.attempts as usize, 1)?;
        self.retry.validate()?;
        self.batch.validate()?;
        self.hold.validate()?;
        // librdkafka's ranges for `fetch.wait.max.ms`, `auto.commit.interval.ms` and
        // `session.timeout.ms`.
        at_most("MaxWait", self.max_wait, Duration::from_secs(300))?;
        at_most("CommitInterval", self.commit_interval, MAX_COMMIT_INTERVAL)?;
        if self.session_timeout < Duration::from_millis(1) {
            return Err(InvalidConf::new(
                "SessionTimeout",
                "must be at least 1ms, got 0s",
            ));
        }
        at_most(
            "SessionTimeout",
            self.session_timeout,
            Duration::from_secs(3600),
        )?;
        // A rebalance holds the member for up to this long, and the group drops a member that
        // has not rejoined within librdkafka's `max.poll.interval.ms` (5 minutes).
        at_most(
            "ShutdownTimeout",
            self.shutdown_timeout,
            Duration::from_secs(300),
        )?;
        if let Some(telemetry) = &self.telemetry {
            telemetry.validate()?;
        }
        if self.max_bytes < self.min_bytes {
            return Err(InvalidConf::new(
                "MaxBytes",
                format!(
                    "must not be less than MinBytes ({} < {})",
                    self.max_bytes, self.min_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for KqConf {
    // Hand-written so that the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("KqConf");
        self.debug_connection(&mut out);
        out.field("group", &self.group)
            .field("topic", &self.topic)
            .field("offset", &self.offset)
            .field("conns", &self.conns)
            .field("consumers", &self.consumers)
            .field("processors", &self.processors)
            .field("min_bytes", &self.min_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("force_commit", &self.force_commit)
            .field("commit_in_order", &self.commit_in_order)
            .field("commit_interval", &self.commit_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_wait", &self.max_wait)
            .field("ordering", &self.ordering)
            .field("retry", &self.retry)
            .field("batch", &self.batch)
            .field("hold", &self.hold)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("assignor", &self.assignor)
            .field("session_timeout", &self.session_timeout)
            .field("log", &self.log)
            .field("telemetry", &self.telemetry)
            .field("dev_server", &self.dev_server)
            .field("prometheus", &self.prometheus)
            .finish()
    }
}

//! The YAML configuration blocks: [`KqConf`] for a consumer queue and [`PusherConf`] for a
//! producer, with go-queue's keys and defaults.
//!
//! go-zero decodes YAML keys into Go struct fields by their exact names, so every field here is
//! renamed to go-queue's spelling (`Brokers`, `Group`, `MinBytes`, ...) and every default is
//! go-queue's own. A block copied from a go-zero service's `etc/mq.yaml` deserializes unchanged.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::broker::Connection;

/// The longest `CommitInterval`: librdkafka's bound for `auto.commit.interval.ms`.
pub(crate) const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(86_400);

/// Where a consumer group with no committed offset (or an out-of-range one) starts reading.
///
/// YAML accepts exactly `first` or `last`, as go-queue does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offset {
    /// The oldest retained message (`auto.offset.reset=earliest`).
    First,
    /// Only messages produced after the group joined (`auto.offset.reset=latest`).
    #[default]
    Last,
}

impl Offset {
    /// The matching value of librdkafka's `auto.offset.reset`.
    pub fn auto_offset_reset(self) -> &'static str {
        match self {
            Offset::First => "earliest",
            Offset::Last => "latest",
        }
    }
}

/// How a consumer's messages are spread over its processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Messages with the same key run one after another in offset order; messages without a
    /// key keep their partition's order. Different keys run concurrently.
    #[default]
    Key,
    /// Every message of a partition runs one after another in offset order.
    Partition,
    /// No ordering at all: any message may run on any free processor. Commits stay gap-free.
    None,
}

/// The partition assignment strategy of a consumer group (`partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Incremental rebalancing: only the partitions that move are revoked.
    #[default]
    CooperativeSticky,
    /// Eager rebalancing, ranges of partitions per member.
    Range,
    /// Eager rebalancing, partitions dealt round-robin.
    RoundRobin,
}

/// The SASL mechanism used with `Username` and `Password` (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mechanism {
    /// The password travels as is: use it over TLS. go-queue's only mechanism.
    #[default]
    Plain,
    /// Salted challenge-response with SHA-256; the password never crosses the wire.
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    ScramSha512,
}

/// The [`Connection`] of a `KqConf` or a `PusherConf`: both have the same connection keys.
macro_rules! connection_of {
    ($conf:expr) => {
        Connection {
            name: &$conf.name,
            brokers: &$conf.brokers,
            ca_file: &$conf.ca_file,
            cert_file: &$conf.cert_file,
            key_file: &$conf.key_file,
            tls: $conf.tls,
            insecure_skip_verify: $conf.insecure_skip_verify,
            username: &$conf.username,
            password: &$conf.password,
            mechanism: $conf.mechanism,
        }
    };
}

/// Implements `Deserialize` for a unit-variant enum from its keywords, with an error that
/// lists every accepted keyword (the config crate's own enum error does not).
macro_rules! keyword_enum {
    ($name:ident { $($variant:ident => $keyword:literal),+ $(,)? }) => {
        impl $name {
            /// The keyword that selects this value in a config file.
            pub fn keyword(self) -> &'static str {
                match self {
                    $($name::$variant => $keyword),+
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                match text.as_str() {
                    $($keyword => Ok($name::$variant),)+
                    _ => Err(de::Error::custom(format!(
                        "`{text}` is not one of {}",
                        [$(concat!("`", $keyword, "`")),+].join(", ")
                    ))),
                }
            }
        }
    };
}

keyword_enum!(Offset { First => "first", Last => "last" });
keyword_enum!(Ordering { Key => "key", Partition => "partition", None => "none" });
keyword_enum!(Assignor {
    CooperativeSticky => "cooperative-sticky",
    Range => "range",
    RoundRobin => "roundrobin",
});
keyword_enum!(Partitioner {
    Murmur2Random => "murmur2_random",
    Murmur2 => "murmur2",
    ConsistentRandom => "consistent_random",
    Fnv1aRandom => "fnv1a_random",
    Random => "random",
});
keyword_enum!(Mechanism {
    Plain => "PLAIN",
    ScramSha256 => "SCRAM-SHA-256",
    ScramSha512 => "SCRAM-SHA-512",
});
keyword_enum!(Acks { All => "all", Leader => "1", None => "0" });
keyword_enum!(Compression {
    None => "none",
    Gzip => "gzip",
    Snappy => "snappy",
    Lz4 => "lz4",
    Zstd => "zstd",
});

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

impl Default for RetryConf {
    fn default() -> Self {
        RetryConf {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// How much a service logs: go-zero's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything, debug events included.
    Debug,
    /// Info and above (go-zero's default).
    #[default]
    Info,
    /// Warnings and errors.
    Error,
    /// Errors only.
    Severe,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogEncoding {
    /// One JSON object per line (go-zero's default).
    #[default]
    Json,
    /// Human-readable text.
    Plain,
}

/// The OpenTelemetry exporter. go-zero's other batchers (`jaeger`, `zipkin`, `otlpgrpc`,
/// `file`) are refused by name; Jaeger and most collectors accept OTLP over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batcher {
    /// OTLP, protobuf over HTTP.
    #[default]
    OtlpHttp,
}

keyword_enum!(LogLevel {
    Debug => "debug",
    Info => "info",
    Error => "error",
    Severe => "severe",
});
keyword_enum!(LogEncoding { Json => "json", Plain => "plain" });
keyword_enum!(Batcher { OtlpHttp => "otlphttp" });

/// go-zero's `Log` block, the keys kq reads. Logs go to stdout (go-zero's `console` mode).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConf {
    /// `debug`, `info`, `error` or `severe`. `RUST_LOG`, when set, takes its place.
    pub level: LogLevel,
    /// `json` or `plain`.
    pub encoding: LogEncoding,
    /// Log each consumer's stat line once a minute.
    pub stat: bool,
}

impl Default for LogConf {
    fn default() -> Self {
        LogConf {
            level: LogLevel::default(),
            encoding: LogEncoding::default(),
            stat: true,
        }
    }
}

/// go-zero's `Telemetry` block: where traces are exported. Needs kq's `opentelemetry`
/// feature when `Endpoint` is set.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TelemetryConf {
    /// The service name on every span; the service's `Name` when empty.
    pub name: String,
    /// The collector, `host:port` or `http://host:port`; no export when empty.
    pub endpoint: String,
    /// The share of new traces sampled, from 0 to 1; a continued trace keeps its parent's choice.
    pub sampler: f64,
    /// The exporter: `otlphttp`.
    pub batcher: Batcher,
    /// Headers sent with every export (an API key, for instance).
    pub otlp_headers: std::collections::BTreeMap<String, String>,
    /// The collector's path for traces.
    pub otlp_http_path: String,
    /// Export nothing even though `Endpoint` is set.
    pub disabled: bool,
}

impl Default for TelemetryConf {
    fn default() -> Self {
        TelemetryConf {
            name: String::new(),
            endpoint: String::new(),
            sampler: 1.0,
            batcher: Batcher::default(),
            otlp_headers: Default::default(),
            otlp_http_path: "/v1/traces".into(),
            disabled: false,
        }
    }
}

impl fmt::Debug for TelemetryConf {
    // Hand-written so that header values (API keys, tokens) never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: std::collections::BTreeMap<_, _> = self
            .otlp_headers
            .iter()
            .map(|(name, value)| (name, Redacted(value)))
            .collect();
        f.debug_struct("TelemetryConf")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("sampler", &self.sampler)
            .field("batcher", &self.batcher)
            .field("otlp_headers", &headers)
            .field("otlp_http_path", &self.otlp_http_path)
            .field("disabled", &self.disabled)
            .finish()
    }
}

impl TelemetryConf {
    /// The collector's `host:port`: `Endpoint` without `http://` or a trailing `/`.
    pub(crate) fn collector_address(&self) -> &str {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        endpoint.strip_prefix("http://").unwrap_or(endpoint)
    }

    /// Whether spans are exported at all.
    pub fn exports(&self) -> bool {
        !self.disabled && !self.endpoint.trim().is_empty()
    }

    /// Checks what serde cannot. Names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidConf> {
        if !(0.0..=1.0).contains(&self.sampler) {
            return Err(InvalidConf::new(
                "Telemetry.Sampler",
                format!("must be between 0 and 1, got {}", self.sampler),
            ));
        }
        if !self.exports() {
            return Ok(());
        }
        let endpoint = self.endpoint.trim();
        if endpoint.starts_with("https://") {
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                "must be plain HTTP (a collector or agent beside the service)",
            ));
        }
        if self.collector_address().contains('/') {
            // go-zero's Jaeger endpoints are URLs with a path; OTLP takes `OtlpHttpPath`.
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                format!(
                    "must be `host:port`, got `{endpoint}`: the path is `OtlpHttpPath` \
                     (a Jaeger collector takes OTLP at port 4318)"
                ),
            ));
        }
        if !self.otlp_http_path.starts_with('/') {
            return Err(InvalidConf::new(
                "Telemetry.OtlpHttpPath",
                "must start with `/`",
            ));
        }
        // Last, so that an endpoint of the wrong form is named as such in every build.
        if !cfg!(feature = "opentelemetry") {
            return Err(InvalidConf::new(
                "Telemetry.Endpoint",
                "needs kq built with its `opentelemetry` feature",
            ));
        }
        Ok(())
    }
}

/// A consumer queue's configuration: go-queue's `kq.KqConf`, key for key, plus kq's own keys.
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
    /// The service name (go-zero's `ServiceConf.Name`); becomes librdkafka's `client.id`.
    #[serde(default)]
    pub name: String,
    /// Bootstrap brokers, `host:port` each. `[embedded]` starts the in-process broker.
    pub brokers: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// The topic to consume.
    pub topic: String,
    /// A PEM file of the certificate authority that signed the brokers' certificates; turns TLS on.
    #[serde(default)]
    pub ca_file: String,
    /// A PEM file with this client's certificate, for brokers that ask for one; turns TLS on.
    #[serde(default)]
    pub cert_file: String,
    /// The PEM file of `CertFile`'s private key.
    #[serde(default)]
    pub key_file: String,
    /// TLS verified against the system's certificate authorities, for brokers whose
    /// certificates a public authority signed.
    #[serde(default)]
    pub tls: bool,
    /// Accept any broker certificate, unverified. Only for test clusters: it gives up what
    /// TLS protects against.
    #[serde(default)]
    pub insecure_skip_verify: bool,
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
    /// SASL user; turns SASL on when set.
    #[serde(default)]
    pub username: String,
    /// SASL password.
    #[serde(default)]
    pub password: String,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub mechanism: Mechanism,
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
    pub dev_server: Option<crate::observe::DevServerConf>,
    /// go-zero's `Prometheus` block; the top-level block wins over a queue's.
    #[serde(default)]
    pub prometheus: Option<crate::observe::PrometheusConf>,
}

impl KqConf {
    /// A configuration with go-queue's defaults for the given brokers, group and topic.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        KqConf {
            name: String::new(),
            brokers: brokers.into_iter().map(Into::into).collect(),
            group: group.into(),
            topic: topic.into(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            tls: false,
            insecure_skip_verify: false,
            offset: Offset::default(),
            conns: defaults::conns(),
            consumers: defaults::consumers(),
            processors: defaults::processors(),
            min_bytes: defaults::min_bytes(),
            max_bytes: defaults::max_bytes(),
            username: String::new(),
            password: String::new(),
            mechanism: Mechanism::default(),
            force_commit: true,
            commit_in_order: false,
            commit_interval: defaults::commit_interval(),
            queue_capacity: defaults::queue_capacity(),
            max_wait: defaults::max_wait(),
            ordering: Ordering::default(),
            retry: RetryConf::default(),
            dead_letter_topic: String::new(),
            shutdown_timeout: defaults::shutdown_timeout(),
            assignor: Assignor::default(),
            session_timeout: defaults::session_timeout(),
            log: None,
            telemetry: None,
            dev_server: None,
            prometheus: None,
        }
    }

    /// The connection and security keys, as the client settings are built from them.
    pub(crate) fn connection(&self) -> Connection<'_> {
        connection_of!(self)
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
        f.debug_struct("KqConf")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("topic", &self.topic)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls", &self.tls)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("offset", &self.offset)
            .field("conns", &self.conns)
            .field("consumers", &self.consumers)
            .field("processors", &self.processors)
            .field("min_bytes", &self.min_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("mechanism", &self.mechanism)
            .field("force_commit", &self.force_commit)
            .field("commit_in_order", &self.commit_in_order)
            .field("commit_interval", &self.commit_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_wait", &self.max_wait)
            .field("ordering", &self.ordering)
            .field("retry", &self.retry)
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

/// How a pusher picks a message's partition (`partitioner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// murmur2 of the key, as Java clients: the same key, the same partition, whichever client
    /// wrote it; messages without a key go to a random partition.
    #[default]
    Murmur2Random,
    /// murmur2 of the key; messages without a key all go to one partition.
    Murmur2,
    /// CRC32 of the key (librdkafka's own default); messages without a key at random.
    ConsistentRandom,
    /// FNV-1a of the key (Sarama's choice); messages without a key at random.
    Fnv1aRandom,
    /// A random partition for every message, key or not.
    Random,
}

/// How many replicas must have a message before the broker acknowledges it (`acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Every in-sync replica.
    #[default]
    All,
    /// The partition leader only.
    Leader,
    /// No acknowledgement at all: a push cannot know whether it arrived.
    None,
}

/// Compression codec of a pusher (`compression.codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// snappy, go-queue's choice.
    #[default]
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
}

/// A pusher's configuration: go-zero's `KqPusherConf` block (`Brokers`, `Topic`) plus the
/// pusher options as keys.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PusherConf {
    /// The service name; becomes librdkafka's `client.id`.
    #[serde(default)]
    pub name: String,
    /// Bootstrap brokers, `host:port` each. `[embedded]` starts the in-process broker.
    pub brokers: Vec<String>,
    /// The topic pushed to.
    pub topic: String,
    /// A PEM file of the certificate authority that signed the brokers' certificates; turns TLS on.
    #[serde(default)]
    pub ca_file: String,
    /// A PEM file with this client's certificate, for brokers that ask for one; turns TLS on.
    #[serde(default)]
    pub cert_file: String,
    /// The PEM file of `CertFile`'s private key.
    #[serde(default)]
    pub key_file: String,
    /// TLS verified against the system's certificate authorities, for brokers whose
    /// certificates a public authority signed.
    #[serde(default)]
    pub tls: bool,
    /// Accept any broker certificate, unverified. Only for test clusters: it gives up what
    /// TLS protects against.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SASL user; turns SASL on when set.
    #[serde(default)]
    pub username: String,
    /// SASL password.
    #[serde(default)]
    pub password: String,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub mechanism: Mechanism,
    /// Bytes gathered into one batch before it is sent (go-queue's chunk size; `batch.size`).
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: usize,
    /// The longest a message waits for its batch to fill (go-queue's flush interval; `linger.ms`).
    #[serde(default = "defaults::flush_interval", with = "duration")]
    pub flush_interval: Duration,
    /// Every push waits for the broker's acknowledgement and returns its result.
    #[serde(default)]
    pub sync_push: bool,
    /// Let the broker create the topic on first push (`allow.auto.create.topics`).
    #[serde(default)]
    pub allow_auto_topic_creation: bool,
    /// Compression codec: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// The longest a push may take to be delivered before it fails (`message.timeout.ms`).
    #[serde(default = "defaults::message_timeout", with = "duration")]
    pub message_timeout: Duration,
    /// How a message's partition is chosen: `murmur2_random`, `murmur2`, `consistent_random`,
    /// `fnv1a_random` or `random`.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// Acknowledgement required: `all`, `1` (the leader) or `0` (none).
    #[serde(default)]
    pub acks: Acks,
    /// Exactly-once writes per partition across retries (`enable.idempotence`); needs
    /// `Acks: all`.
    #[serde(default)]
    pub idempotence: bool,
}

impl PusherConf {
    /// A configuration with go-queue's defaults for the given brokers and topic.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        topic: impl Into<String>,
    ) -> Self {
        PusherConf {
            name: String::new(),
            brokers: brokers.into_iter().map(Into::into).collect(),
            topic: topic.into(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            tls: false,
            insecure_skip_verify: false,
            username: String::new(),
            password: String::new(),
            mechanism: Mechanism::default(),
            chunk_size: defaults::chunk_size(),
            flush_interval: defaults::flush_interval(),
            sync_push: false,
            allow_auto_topic_creation: false,
            compression: Compression::default(),
            message_timeout: defaults::message_timeout(),
            partitioner: Partitioner::default(),
            acks: Acks::default(),
            idempotence: false,
        }
    }

    /// The connection and security keys, as the client settings are built from them.
    pub(crate) fn connection(&self) -> Connection<'_> {
        connection_of!(self)
    }

    /// Checks what serde cannot. Names the key at fault.
    pub fn validate(&self) -> Result<(), InvalidConf> {
        require_brokers(&self.brokers)?;
        require("Topic", &self.topic)?;
        self.connection().validate()?;
        at_least("ChunkSize", self.chunk_size, 1)?;
        // librdkafka's ranges for `linger.ms` and `message.timeout.ms`.
        at_most(
            "FlushInterval",
            self.flush_interval,
            Duration::from_secs(900),
        )?;
        at_most(
            "MessageTimeout",
            self.message_timeout,
            Duration::from_millis(i32::MAX as u64),
        )?;
        if self.idempotence && self.acks != Acks::All {
            return Err(InvalidConf::new("Idempotence", "needs `Acks: all`"));
        }
        Ok(())
    }
}

impl fmt::Debug for PusherConf {
    // Hand-written so that the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PusherConf")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls", &self.tls)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("mechanism", &self.mechanism)
            .field("chunk_size", &self.chunk_size)
            .field("flush_interval", &self.flush_interval)
            .field("sync_push", &self.sync_push)
            .field("allow_auto_topic_creation", &self.allow_auto_topic_creation)
            .field("compression", &self.compression)
            .field("message_timeout", &self.message_timeout)
            .field("partitioner", &self.partitioner)
            .field("acks", &self.acks)
            .field("idempotence", &self.idempotence)
            .finish()
    }
}

/// A value that deserialized but cannot work, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {reason}")]
pub struct InvalidConf {
    /// The key at fault, relative to its block (`Processors`, `Retry.Attempts`).
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidConf {
    pub(crate) fn new(key: &'static str, reason: impl Into<String>) -> Self {
        InvalidConf {
            key,
            reason: reason.into(),
        }
    }
}

fn require(key: &'static str, value: &str) -> Result<(), InvalidConf> {
    if value.trim().is_empty() {
        return Err(InvalidConf::new(key, "must not be empty"));
    }
    Ok(())
}

fn require_brokers(brokers: &[String]) -> Result<(), InvalidConf> {
    if brokers.is_empty() {
        return Err(InvalidConf::new("Brokers", "must list at least one broker"));
    }
    if brokers.iter().any(|b| b.trim().is_empty()) {
        return Err(InvalidConf::new(
            "Brokers",
            "must not contain an empty entry",
        ));
    }
    if brokers.len() > 1 && brokers.iter().any(|b| b == crate::broker::EMBEDDED) {
        return Err(InvalidConf::new(
            "Brokers",
            "`embedded` must be the only entry when it is used",
        ));
    }
    Ok(())
}

fn at_least(key: &'static str, value: usize, min: usize) -> Result<(), InvalidConf> {
    if value < min {
        return Err(InvalidConf::new(
            key,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

fn count_at_most(key: &'static str, value: usize, max: usize) -> Result<(), InvalidConf> {
    if value > max {
        return Err(InvalidConf::new(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

fn at_most(key: &'static str, value: Duration, max: Duration) -> Result<(), InvalidConf> {
    if value > max {
        return Err(InvalidConf::new(
            key,
            format!(
                "must be at most {}, got {}",
                duration::format(max),
                duration::format(value)
            ),
        ));
    }
    Ok(())
}

struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn conns() -> usize {
        1
    }
    pub fn consumers() -> usize {
        8
    }
    pub fn processors() -> usize {
        8
    }
    pub fn min_bytes() -> usize {
        10 * 1024
    }
    pub fn max_bytes() -> usize {
        10 * 1024 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn queue_capacity() -> usize {
        1000
    }
    pub fn max_wait() -> Duration {
        Duration::from_secs(1)
    }
    pub fn shutdown_timeout() -> Duration {
        // go-zero's default for a service group's graceful stop.
        Duration::from_millis(5500)
    }
    pub fn session_timeout() -> Duration {
        // librdkafka's and Kafka's default.
        Duration::from_secs(45)
    }
    pub fn chunk_size() -> usize {
        // go-queue's default chunk: 1 MiB.
        1024 * 1024
    }
    pub fn flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn message_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

/// Go-style durations (`300ms`, `1s`, `1m30s`, `1.5h`), the format go-zero's YAML uses.
pub mod duration {
    use super::*;

    /// Deserializes a Go duration string; a bare number is read as seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `500ms`, `1s` or `1m30s`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("a duration cannot be negative, got {v}")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(v)
                    .map_err(|_| E::custom(format!("invalid duration {v}")))
            }
        }

        deserializer.deserialize_any(Visitor)
    }

    /// Writes a duration as Go does (`5m0s`, `1h30m0s`, `500ms`), for messages about config.
    pub(crate) fn format(d: Duration) -> String {
        if d < Duration::from_secs(1) {
            return if d.is_zero() {
                "0s".to_owned()
            } else {
                format!("{d:?}")
            };
        }
        let secs = d.as_secs();
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut out = String::new();
        if hours > 0 {
            out += &format!("{hours}h");
        }
        if hours > 0 || minutes > 0 {
            out += &format!("{minutes}m");
        }
        out += &seconds.to_string();
        if d.subsec_nanos() > 0 {
            let fraction = format!("{:09}", d.subsec_nanos());
            out += ".";
            out += fraction.trim_end_matches('0');
        }
        out + "s"
    }

    /// Parses a Go duration: a sequence of decimal numbers, each with a unit among
    /// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`. Negative durations are refused.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let s = text.trim();
        let invalid =
            || format!("invalid duration {text:?}: expected a form like `500ms`, `1s` or `1m30s`");
        if s == "0" {
            return Ok(Duration::ZERO);
        }
        if s.is_empty() || s.starts_with('-') {
            return Err(invalid());
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        let mut rest = s;
        let mut total = 0f64;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(invalid)?;
            if number_len == 0 {
                return Err(invalid());
            }
            let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let seconds_per_unit = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" | "μs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(invalid()),
            };
            total += number * seconds_per_unit;
            rest = &rest[unit_len..];
        }
        Duration::try_from_secs_f64(total).map_err(|_| invalid())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_go_durations() {
            assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
            assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
            assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
            assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
            assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
            assert_eq!(parse("0"), Ok(Duration::ZERO));
        }

        #[test]
        fn formats_as_go_does() {
            let ms = Duration::from_millis;
            assert_eq!(format(Duration::ZERO), "0s");
            assert_eq!(format(ms(500)), "500ms");
            assert_eq!(format(ms(5500)), "5.5s");
            assert_eq!(format(Duration::from_secs(300)), "5m0s");
            assert_eq!(format(Duration::from_secs(5400)), "1h30m0s");
            assert_eq!(format(ms(i32::MAX as u64)), "596h31m23.647s");
        }

        #[test]
        fn refuses_what_go_refuses() {
            for bad in ["", "1", "s", "-1s", "1x", "1s2", "1..2s"] {
                assert!(parse(bad).is_err(), "{bad:?} parsed");
            }
        }
    }
}

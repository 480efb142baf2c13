//! The keywords that select a config key's enumerated value: each type lists every keyword it
//! accepts when it meets another.

use serde::de::{self, Deserializer};
use serde::Deserialize;

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

keyword_enum!(LogLevel {
    Debug => "debug",
    Info => "info",
    Error => "error",
    Severe => "severe",
});
keyword_enum!(LogEncoding { Json => "json", Plain => "plain" });
keyword_enum!(Batcher { OtlpHttp => "otlphttp" });

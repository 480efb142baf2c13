//! A pusher's block: go-zero's `KqPusherConf`, with go-queue's pusher options as keys.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::connection::{with_connection_keys, with_default_connection, Connection};
use super::keywords::{Acks, Compression, Partitioner};
use super::validate::{at_least, at_most, require, require_brokers};
use super::{defaults, duration};
use crate::error::InvalidConf;

with_connection_keys! {
    /// A pusher's configuration: go-zero's `KqPusherConf` block (`Brokers`, `Topic`) plus the
    /// pusher options as keys.
    #[derive(Clone, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct PusherConf {
        /// The topic pushed to.
        pub topic: String,
        /// Bytes gathered into one batch before it is sent (go-queue's chunk size;
        /// `batch.size`).
        #[serde(default = "defaults::chunk_size")]
        pub chunk_size: usize,
        /// The longest a message waits for its batch to fill (go-queue's flush interval;
        /// `linger.ms`).
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
}

impl PusherConf {
    /// Takes `other`'s connection keys, the name among them: the same cluster, reached the
    /// same way (a consumer's dead-letter pusher).
    pub(crate) fn connect_as(&mut self, other: &Connection<'_>) {
        self.name = other.name.to_owned();
        self.brokers = other.brokers.to_vec();
        self.ca_file = other.ca_file.to_owned();
        self.cert_file = other.cert_file.to_owned();
        self.key_file = other.key_file.to_owned();
        self.tls = other.tls;
        self.insecure_skip_verify = other.insecure_skip_verify;
        self.username = other.username.to_owned();
        self.password = other.password.to_owned();
        self.mechanism = other.mechanism;
    }

    /// A configuration with go-queue's defaults for the given brokers and topic.
    pub fn new(
        brokers: impl IntoIterator<Item = impl Into<String>>,
        topic: impl Into<String>,
    ) -> Self {
        with_default_connection!(PusherConf {
            brokers: brokers.into_iter().map(Into::into).collect(),
            topic: topic.into(),
            chunk_size: defaults::chunk_size(),
            flush_interval: defaults::flush_interval(),
            sync_push: false,
            allow_auto_topic_creation: false,
            compression: Compression::default(),
            message_timeout: defaults::message_timeout(),
            partitioner: Partitioner::default(),
            acks: Acks::default(),
            idempotence: false,
        })
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
        let mut out = f.debug_struct("PusherConf");
        self.debug_connection(&mut out);
        out.field("topic", &self.topic)
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

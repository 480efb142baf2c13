//! The errors of the runtime.

use rdkafka::error::KafkaError;

/// Anything that stops a queue, a pusher or the service from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration block deserialized but cannot work.
    #[error("invalid configuration: {0}")]
    Conf(#[from] InvalidConf),
    /// librdkafka refused a setting or an operation.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The in-process broker could not be started or could not create a topic.
    #[error("embedded broker: {0}")]
    Embedded(String),
    /// A registered consumer cannot run with this configuration or state.
    #[error("{0}")]
    Registration(String),
    /// A consumer's fetch loop stopped unexpectedly.
    #[error("consumer `{consumer}` stopped: {reason}")]
    Stopped {
        /// The consumer's name.
        consumer: String,
        /// Why.
        reason: String,
    },
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

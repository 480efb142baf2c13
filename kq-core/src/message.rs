//! The message a handler receives: an owned copy of one Kafka record.

use std::fmt;
use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};

/// One consumed Kafka record, with everything a handler may ask about it.
///
/// Take `&kq::Message` as a handler parameter to read headers, the partition, the offset or the
/// timestamp, or the raw key and value bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Headers,
}

impl Message {
    /// Builds a message by hand, for tests of handlers and for dead-letter bookkeeping.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Message {
            topic: topic.into(),
            partition,
            offset,
            timestamp: None,
            key: None,
            value: None,
            headers: Headers::default(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value (the payload).
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch.
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.0.push((name.into(), Some(value.into())));
        self
    }

    pub(crate) fn from_kafka(topic: Arc<str>, record: &BorrowedMessage<'_>) -> Self {
        let headers = match record.headers() {
            Some(headers) => Headers(
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
            ),
            None => Headers::default(),
        };
        Message {
            topic,
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().to_millis(),
            key: record.key().map(<[u8]>::to_vec),
            value: record.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp in milliseconds since the Unix epoch, if the broker gave one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The key bytes, if the record has a key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The value bytes, if the record is not a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// The key as UTF-8 text; a missing key reads as `""`, as in go-queue.
    pub fn key_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.key().unwrap_or_default())
    }

    /// The value as UTF-8 text; a missing value reads as `""`, as in go-queue.
    pub fn value_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.value().unwrap_or_default())
    }

    /// The record's headers, in the order the producer wrote them.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl fmt::Debug for Message {
    // Payloads stay out of Debug output: they may hold personal data and can be large.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key_len", &self.key.as_ref().map(Vec::len))
            .field("value_len", &self.value.as_ref().map(Vec::len))
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// A record's headers: names with optional byte values, repeated names allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Option<Vec<u8>>)>);

impl Headers {
    /// The value of the first header with this name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The value of the first header with this name, as UTF-8 text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

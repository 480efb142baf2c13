//! The message a handler receives: an owned copy of one Kafka record.

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};
use std::{fmt, ptr, slice};

use rdkafka::bindings as rdsys;

use crate::sync::lock;

/// One consumed Kafka record, with everything a handler may ask about it.
///
/// Take `&kq::Message` as a handler parameter to read headers, the partition, the offset or the
/// timestamp, or the raw key and value bytes.
#[derive(Clone)]
pub struct Message {
    topic: Topic,
    partition: i32,
    offset: i64,
    /// Milliseconds since the Unix epoch, or `NO_TIMESTAMP`.
    timestamp: i64,
    /// Key and value in one allocation: a message is allocated on the fetch thread and freed
    /// on a processor, and every allocation that crosses threads costs.
    bytes: Vec<u8>,
    /// Where the key ends and the value starts in `bytes`. librdkafka's sizes are 32-bit.
    key_len: u32,
    key: Part,
    value: Part,
    /// `None` for none: most records have none, and a message moves from the fetch thread to
    /// a processor, each of its cache lines with it.
    headers: Option<Box<Headers>>,
}

/// Whether a message has a key (or a value), and whether it is known to be UTF-8 text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Absent,
    /// There, and not checked.
    Bytes,
    /// There, and checked as UTF-8 when the message was copied out of librdkafka: the bytes
    /// were then still in the fetch thread's cache, and a handler that reads text need not
    /// read them again to check them.
    Text,
}

impl Part {
    fn is_present(self) -> bool {
        self != Part::Absent
    }
}

/// `Message::timestamp` of a record without one. Kafka's own marker is -1, which a producer
/// may still set on purpose.
const NO_TIMESTAMP: i64 = i64::MIN;

/// What `Message::headers` returns for a record without headers.
static NO_HEADERS: Headers = Headers(Vec::new());

impl Message {
    /// Builds a message by hand, for tests of handlers and for dead-letter bookkeeping.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Message {
            topic: Topic::Shared(topic.into()),
            partition,
            offset,
            timestamp: NO_TIMESTAMP,
            bytes: Vec::new(),
            key_len: 0,
            key: Part::Absent,
            value: Part::Absent,
            headers: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl AsRef<[u8]>) -> Self {
        let value = self.bytes.split_off(self.key_len as usize);
        let key = key.as_ref();
        self.bytes.clear();
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(&value);
        self.key_len = u32::try_from(key.len()).expect("a key of less than 4 GiB");
        // The value's bytes moved but did not change: what is known of them still holds.
        self.key = Part::Bytes;
        self
    }

    /// Sets the value (the payload).
    pub fn with_value(mut self, value: impl AsRef<[u8]>) -> Self {
        self.bytes.truncate(self.key_len as usize);
        self.bytes.extend_from_slice(value.as_ref());
        self.value = Part::Bytes;
        self
    }

    /// Sets the timestamp, in milliseconds since the Unix epoch. `i64::MIN` reads back as
    /// none.
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = millis;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers
            .get_or_insert_with(Box::default)
            .0
            .push((name.into(), Some(value.into())));
        self
    }

    /// Copies a record that rdkafka's own consumer API delivered, headers included: for the
    /// tools that read a topic outside a queue (the test kit, a redrive).
    pub(crate) fn from_record(record: &impl rdkafka::Message) -> Message {
        use rdkafka::message::Headers as _;

        let mut msg = Message::new(record.topic(), record.partition(), record.offset());
        if let Some(key) = record.key() {
            msg = msg.with_key(key);
        }
        if let Some(value) = record.payload() {
            msg = msg.with_value(value);
        }
        if let Some(millis) = record.timestamp().to_millis() {
            msg = msg.with_timestamp(millis);
        }
        if let Some(headers) = record.headers() {
            let list = headers
                .iter()
                .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                .collect();
            msg.headers = Some(Box::new(Headers(list)));
        }
        msg
    }

    /// Copies a record out of librdkafka into `bytes`, a buffer whose contents are replaced;
    /// its headers too when `with_headers`. With `check_text`, the key and value are checked
    /// as UTF-8 while they are in this thread's cache, for a handler that reads them as text.
    ///
    /// # Safety
    ///
    /// `native` is a live message of `topic` that librdkafka delivered without an error.
    pub(crate) unsafe fn from_native(
        topic: &'static str,
        native: *const rdsys::rd_kafka_message_t,
        mut bytes: Vec<u8>,
        with_headers: bool,
        check_text: bool,
    ) -> Self {
        // SAFETY: the caller's promise; key and payload are `key_len` and `len` bytes when not
        // null, and are read before `native` goes.
        let (record, key, value, timestamp) = unsafe {
            let record = &*native;
            let bytes_at = |ptr: *mut c_void, len: usize| {
                (!ptr.is_null()).then(|| slice::from_raw_parts(ptr.cast::<u8>(), len))
            };
            let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
            let timestamp = rdsys::rd_kafka_message_timestamp(native, &mut kind);
            let timestamp =
                if kind == rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE {
                    NO_TIMESTAMP
                } else {
                    timestamp
                };
            (
                record,
                bytes_at(record.key, record.key_len),
                bytes_at(record.payload, record.len),
                timestamp,
            )
        };
        let headers = if with_headers {
            // SAFETY: as above.
            unsafe { read_headers(native) }
        } else {
            None
        };
        let key_bytes = key.unwrap_or_default();
        let value_bytes = value.unwrap_or_default();
        bytes.clear();
        bytes.reserve(key_bytes.len() + value_bytes.len());
        bytes.extend_from_slice(key_bytes);
        bytes.extend_from_slice(value_bytes);
        let part = |there: bool, bytes: &[u8]| match there {
            false => Part::Absent,
            true if check_text && std::str::from_utf8(bytes).is_ok() => Part::Text,
            true => Part::Bytes,
        };
        Message {
            topic: Topic::Interned(topic),
            partition: record.partition,
            offset: record.offset,
            timestamp,
            bytes,
            // librdkafka's lengths are 32-bit.
            key_len: key_bytes.len() as u32,
            key: part(key.is_some(), key_bytes),
            value: part(value.is_some(), value_bytes),
            headers,
        }
    }

    /// Gives the key and value buffer back for reuse.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The topic the message was read from.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
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
        (self.timestamp != NO_TIMESTAMP).then_some(self.timestamp)
    }

    /// The key bytes, if the record has a key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key
            .is_present()
            .then(|| &self.bytes[..self.key_len as usize])
    }

    /// The value bytes, if the record is not a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        self.value
            .is_present()
            .then(|| &self.bytes[self.key_len as usize..])
    }

    /// The key as UTF-8 text; a missing key reads as `""`, as in go-queue.
    pub fn key_str(&self) -> Result<&str, std::str::Utf8Error> {
        text(self.key, self.key().unwrap_or_default())
    }

    /// The value as UTF-8 text; a missing value reads as `""`, as in go-queue.
    pub fn value_str(&self) -> Result<&str, std::str::Utf8Error> {
        text(self.value, self.value().unwrap_or_default())
    }

    /// The record's headers, in the order the producer wrote them.
    ///
    /// A queue reads them only when something can see them: a handler that may read them
    /// ([`Handler::reads_headers`](crate::Handler::reads_headers); a `#[kq::consumer]`
    /// function that takes `&kq::Message`), the application's error handler, a dead-letter
    /// topic (dead letters carry them on), or trace context with the `opentelemetry` feature.
    /// Otherwise they are empty.
    pub fn headers(&self) -> &Headers {
        self.headers.as_deref().unwrap_or(&NO_HEADERS)
    }
}

/// `bytes`, the part `part` of a message, as text.
fn text(part: Part, bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if part == Part::Text {
        // SAFETY: `Part::Text` is set only on bytes that were checked when the message was
        // built, and a message's bytes change only in its builders, which set a new key or
        // value as `Part::Bytes` and leave the other part's bytes as they were.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

// Two messages are equal when what a handler can read of them is: whether their text was
// checked is not part of that.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.partition == other.partition
            && self.offset == other.offset
            && self.timestamp == other.timestamp
            && self.key() == other.key()
            && self.value() == other.value()
            && self.headers == other.headers
    }
}

impl Eq for Message {}

/// A message's topic name. Consumed messages share their queue's interned name: a reference
/// count per message would be touched by the fetch thread and by a processor, one cache line
/// passed between two cores for every message.
#[derive(Clone)]
enum Topic {
    Interned(&'static str),
    Shared(Arc<str>),
}

impl Topic {
    fn as_str(&self) -> &str {
        match self {
            Topic::Interned(name) => name,
            Topic::Shared(name) => name,
        }
    }
}

impl PartialEq for Topic {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Topic {}

/// The process's one copy of a topic name, kept for its life: topics come from the
/// configuration, so there are few.
pub(crate) fn intern_topic(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = lock(NAMES.get_or_init(Mutex::default));
    match names.get(name) {
        Some(interned) => interned,
        None => {
            let interned: &'static str = Box::leak(name.into());
            names.insert(interned);
            interned
        }
    }
}

/// Copies a record's headers out of librdkafka.
///
/// rdkafka's header accessors panic on a name that is not UTF-8, and a producer can write
/// any bytes there: one such record would stop the consumer, and again after every restart.
/// Names are read here instead, and an invalid one is kept with its bad bytes replaced.
///
/// # Safety
///
/// `record` is a live message.
unsafe fn read_headers(record: *const rdsys::rd_kafka_message_t) -> Option<Box<Headers>> {
    let mut native: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: the headers librdkafka returns belong to `record` and are only read here.
    let err = unsafe { rdsys::rd_kafka_message_headers(record, &mut native) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        // No headers, or a header block librdkafka cannot parse: the record is delivered
        // without them rather than not at all.
        return None;
    }
    // SAFETY: as above, `native` is valid for as long as `record` is.
    let count = unsafe { rdsys::rd_kafka_header_cnt(native) };
    let mut headers = Vec::with_capacity(count);
    for index in 0..count {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size = 0;
        // SAFETY: `index` is below the count; the pointers written are owned by the headers
        // and read before `record` goes.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka keeps every header name NUL-terminated, and a value of `size`
        // bytes at `value` unless the value is null.
        let (name, value) = unsafe {
            (
                CStr::from_ptr(name).to_string_lossy().into_owned(),
                (!value.is_null())
                    .then(|| slice::from_raw_parts(value.cast::<u8>(), size).to_vec()),
            )
        };
        headers.push((name, value));
    }
    // Kept as none rather than as an empty list, so that messages compare alike either way.
    (!headers.is_empty()).then(|| Box::new(Headers(headers)))
}

impl fmt::Debug for Message {
    // Payloads stay out of Debug output: they may hold personal data and can be large.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic.as_str())
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key_len", &self.key().map(<[u8]>::len))
            .field("value_len", &self.value().map(<[u8]>::len))
            .field("headers", &self.headers().len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_is_interned_once() {
        let first = intern_topic("orders");
        assert!(std::ptr::eq(first, intern_topic(&String::from("orders"))));
        let consumed = Message {
            topic: Topic::Interned(first),
            ..Message::new("t", 0, 0)
        };
        assert_eq!(consumed, Message::new("orders", 0, 0));
    }

    #[test]
    fn key_and_value_are_kept_apart() {
        let msg = Message::new("t", 0, 0);
        assert_eq!((msg.key(), msg.value()), (None, None));
        let msg = msg.with_value("v1").with_key("key").with_value("value");
        assert_eq!(msg.key(), Some(&b"key"[..]));
        assert_eq!(msg.value(), Some(&b"value"[..]));
        let msg = Message::new("t", 0, 0).with_key("");
        assert_eq!((msg.key(), msg.value()), (Some(&b""[..]), None));
        assert_eq!((msg.key_str(), msg.value_str()), (Ok(""), Ok("")));
    }

    #[test]
    fn timestamp_and_headers_read_as_none_until_set() {
        let msg = Message::new("t", 0, 0);
        assert_eq!((msg.timestamp(), msg.headers().len()), (None, 0));
        assert_eq!(msg, Message::new("t", 0, 0));
        let msg = msg.with_timestamp(-1).with_header("h", "v");
        assert_eq!(msg.timestamp(), Some(-1));
        assert_eq!(msg.headers().get_str("h"), Some("v"));
    }

    #[test]
    fn a_message_stays_small() {
        // It is written on the fetch thread and read on a processor: every cache line it
        // takes crosses between cores, once per message.
        assert!(
            std::mem::size_of::<Message>() <= 88,
            "{}",
            std::mem::size_of::<Message>()
        );
    }
}

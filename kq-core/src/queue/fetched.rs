//! The member's fetch queue: librdkafka forwards every partition assigned to the member into
//! one queue of kq's, which the fetch loop empties a batch at a time.
//!
//! Taking messages one by one through the consumer's poll reads the clock several times per
//! message and goes through librdkafka's event layer for each; taking a batch does that once.
//! The consumer's own queue keeps what is not a message (rebalances, commit results, errors)
//! and is still served through rdkafka, whose rebalance handling needs it; anything arriving
//! there wakes a wait on the fetch queue.

use std::collections::BTreeSet;
use std::ffi::{c_int, c_void, CString};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::error::Error;
use crate::sync::lock;

/// One member's fetch queue, with the consumer queue whose events wake a wait on it.
///
/// It must be dropped before its consumer: librdkafka requires the queues taken from a
/// consumer to be released before the consumer closes.
pub(crate) struct FetchQueue {
    client: NonNull<rdsys::rd_kafka_t>,
    topic: CString,
    /// Where librdkafka puts the messages of every assigned partition.
    messages: NonNull<rdsys::rd_kafka_queue_t>,
    /// The consumer's own queue.
    events: NonNull<rdsys::rd_kafka_queue_t>,
    /// The partitions routed and not revoked since: the member's assignment.
    routed: Mutex<BTreeSet<i32>>,
}

// SAFETY: librdkafka's handles and queues may be used from any thread; the pointers are only
// passed to librdkafka.
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    /// A fetch queue for `consumer`, which consumes `topic` in a group.
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<Self, Error> {
        let topic = CString::new(topic).map_err(|_| {
            Error::Kafka(KafkaError::ClientCreation(format!(
                "the topic name {topic:?} holds a NUL byte"
            )))
        })?;
        let client = NonNull::new(consumer.client().native_ptr())
            .ok_or_else(|| Error::Kafka(KafkaError::ClientCreation("no consumer handle".into())))?;
        // SAFETY: `client` is the live consumer's handle. Both queue handles are references
        // of this value's own, released in `drop`, which runs before the consumer closes.
        unsafe {
            let events = NonNull::new(rdsys::rd_kafka_queue_get_consumer(client.as_ptr()));
            let Some(events) = events else {
                return Err(Error::Kafka(KafkaError::ClientCreation(
                    "the consumer has no group queue".into(),
                )));
            };
            let Some(messages) = NonNull::new(rdsys::rd_kafka_queue_new(client.as_ptr())) else {
                rdsys::rd_kafka_queue_destroy(events.as_ptr());
                return Err(Error::Kafka(KafkaError::ClientCreation(
                    "librdkafka could not create a queue".into(),
                )));
            };
            // librdkafka calls this with the consumer queue's lock held whenever the queue
            // turns non-empty; `drop` turns it off under the same lock, so no call can
            // outlive `messages`.
            rdsys::rd_kafka_queue_cb_event_enable(
                events.as_ptr(),
                Some(wake),
                messages.as_ptr().cast::<c_void>(),
            );
            Ok(FetchQueue {
                client,
                topic,
                messages,
                events,
                routed: Mutex::default(),
            })
        }
    }

    /// Routes these partitions' messages into the fetch queue. Called with each assignment,
    /// before librdkafka starts fetching them: it clears a partition's route when it stops
    /// fetching it, and leaves a route the application set alone when it starts again.
    pub fn forward(&self, partitions: &[i32]) {
        self.routed().extend(partitions);
        for &partition in partitions {
            if !self.route(partition) {
                // Its messages then arrive on the consumer queue, which the loop serves too.
                tracing::warn!(
                    topic = ?self.topic,
                    partition,
                    "librdkafka has no queue for the partition; its messages take the slower path"
                );
            }
        }
    }

    /// Forgets revoked partitions; `None`, every partition.
    pub fn unroute(&self, partitions: Option<&[i32]>) {
        let mut routed = self.routed();
        match partitions {
            Some(partitions) => partitions.iter().for_each(|p| {
                routed.remove(p);
            }),
            None => routed.clear(),
        }
    }

    /// Routes every assigned partition again.
    ///
    /// In a group, the next assignment comes only after librdkafka stopped fetching what was
    /// revoked, so `forward` follows the stop that clears a route. Were a stop to land after
    /// the route all the same, the partition's messages would wait in its own queue, where
    /// nothing takes them; the fetch loop calls this on every commit interval so that they
    /// cannot. Routing a routed partition again changes nothing, and one whose messages wait
    /// in its own queue has them moved over, in order. (A partition queue's length counts its
    /// route's, so the two cannot be told apart to route only the one.)
    pub fn route_again(&self) {
        let routed: Vec<i32> = self.routed().iter().copied().collect();
        for partition in routed {
            self.route(partition);
        }
    }

    fn routed(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        // A set of numbers is whole at every point a panic could happen.
        lock(&self.routed)
    }

    /// Routes one partition; false when librdkafka has no queue for it.
    fn route(&self, partition: i32) -> bool {
        // SAFETY: the handle and the topic are live; the partition queue is a reference of
        // our own, released at once, while the route it set stays with the partition.
        unsafe {
            let queue = rdsys::rd_kafka_queue_get_partition(
                self.client.as_ptr(),
                self.topic.as_ptr(),
                partition,
            );
            if queue.is_null() {
                return false;
            }
            rdsys::rd_kafka_queue_forward(queue, self.messages.as_ptr());
            rdsys::rd_kafka_queue_destroy(queue);
            true
        }
    }

    /// Whether the consumer queue holds events to serve.
    pub fn has_events(&self) -> bool {
        // SAFETY: `events` is a live queue handle.
        unsafe { rdsys::rd_kafka_queue_length(self.events.as_ptr()) > 0 }
    }

    /// Takes up to `max` messages into `taken`, which must be empty, waiting up to `wait` for
    /// the first one. Returns early, maybe with none, when an event arrives on the consumer
    /// queue.
    pub fn take(&self, taken: &mut Taken, max: usize, wait: Duration) {
        debug_assert!(taken.is_empty());
        taken.clear();
        taken.ptrs.reserve(max);
        let wait = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `ptrs` has room for `max` pointers, and librdkafka writes at most `max`; the
        // first `n` it reports are live messages that `taken` now owns.
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(
                self.messages.as_ptr(),
                wait,
                taken.ptrs.as_mut_ptr(),
                max,
            );
            // -1 means an invalid queue, which ours never is.
            taken.ptrs.set_len(usize::try_from(n).unwrap_or(0).min(max));
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: turning the wake-up off takes the consumer queue's lock, which every call
        // of `wake` holds: none runs after this, so `messages` can go. Both handles are ours.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.events.as_ptr(), None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.events.as_ptr());
            rdsys::rd_kafka_queue_destroy(self.messages.as_ptr());
        }
    }
}

/// Wakes a wait on the fetch queue (`opaque`) when the consumer queue gets an event, so that
/// a rebalance is served at once rather than after the wait.
unsafe extern "C" fn wake(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the fetch queue, live until the wake-up is turned off (see `new`).
    unsafe { rdsys::rd_kafka_queue_yield(opaque.cast::<rdsys::rd_kafka_queue_t>()) }
}

/// Messages taken from librdkafka and not yet looked at; it destroys what it still holds
/// when dropped.
#[derive(Default)]
pub(crate) struct Taken {
    ptrs: Vec<*mut rdsys::rd_kafka_message_t>,
    next: usize,
}

// SAFETY: librdkafka's messages may be read and destroyed on any thread.
unsafe impl Send for Taken {}

impl Taken {
    /// Whether every message was looked at.
    pub fn is_empty(&self) -> bool {
        self.next == self.ptrs.len()
    }

    fn clear(&mut self) {
        self.ptrs.clear();
        self.next = 0;
    }

    /// The next message, in the order librdkafka delivered them.
    pub fn next(&mut self) -> Option<NativeMessage> {
        let ptr = *self.ptrs.get(self.next)?;
        self.next += 1;
        NonNull::new(ptr).map(NativeMessage)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        while let Some(message) = self.next() {
            drop(message);
        }
    }
}

/// One message owned by kq until it is dropped.
pub(crate) struct NativeMessage(NonNull<rdsys::rd_kafka_message_t>);

// SAFETY: librdkafka's messages may be read and destroyed on any thread.
unsafe impl Send for NativeMessage {}

impl NativeMessage {
    /// The message's pointer, for reading it; valid while `self` lives.
    pub fn as_ptr(&self) -> *const rdsys::rd_kafka_message_t {
        self.0.as_ptr()
    }

    /// The partition it came from.
    pub fn partition(&self) -> i32 {
        // SAFETY: a live message.
        unsafe { self.0.as_ref().partition }
    }

    /// Its offset.
    pub fn offset(&self) -> i64 {
        // SAFETY: a live message.
        unsafe { self.0.as_ref().offset }
    }

    /// The bytes of its key and value.
    pub fn len(&self) -> usize {
        // SAFETY: a live message.
        let message = unsafe { self.0.as_ref() };
        message.len + message.key_len
    }

    /// The error librdkafka delivered in place of a message, if it is one.
    pub fn error(&self) -> Option<KafkaError> {
        // SAFETY: a live message.
        let err = unsafe { self.0.as_ref().err };
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(err.into()))
    }
}

impl Drop for NativeMessage {
    fn drop(&mut self) {
        // SAFETY: the message is ours and nothing reads it after this.
        unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Instant;

    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::broker::EmbeddedBroker;

    fn config() -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set(
            "bootstrap.servers",
            EmbeddedBroker::get().unwrap().bootstrap_servers(),
        );
        config
    }

    /// Fills `topic`, a topic of the test's own: the tests of one process share the broker.
    fn fill(topic: &str, partitions: i32, per_partition: usize) {
        EmbeddedBroker::get()
            .unwrap()
            .create_topic(topic, partitions)
            .unwrap();
        let producer: BaseProducer = config().create().unwrap();
        for partition in 0..partitions {
            for i in 0..per_partition {
                let key = format!("{partition}-{i}");
                let record = BaseRecord::to(topic)
                    .key(&key)
                    .payload("v")
                    .partition(partition);
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    fn from_start(topic: &str, partitions: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        list
    }

    /// Takes until `expected` messages came or `limit` passed; returns what came.
    fn take_for(queue: &FetchQueue, expected: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut taken = Taken::default();
        let mut count = 0;
        while count < expected && Instant::now() < deadline {
            queue.take(&mut taken, 64, Duration::from_millis(100));
            while let Some(message) = taken.next() {
                assert!(message.error().is_none());
                count += 1;
            }
        }
        count
    }

    fn take_all(queue: &FetchQueue, expected: usize) -> usize {
        take_for(queue, expected, Duration::from_secs(10))
    }

    fn consumer(group: &str) -> BaseConsumer {
        config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    #[test]
    fn assigned_partitions_arrive_on_the_fetch_queue_and_again_after_a_reassignment() {
        let topic = "fetched-unit-reassigned";
        fill(topic, 2, 5);
        let consumer = consumer(topic);
        let queue = FetchQueue::new(&consumer, topic).unwrap();

        queue.forward(&[0, 1]);
        consumer.assign(&from_start(topic, 2)).unwrap();
        // Routing a routed partition again changes nothing: each message comes once.
        queue.route_again();
        assert_eq!(take_for(&queue, 11, Duration::from_secs(2)), 10);
        assert!(
            consumer.poll(Duration::from_millis(200)).is_none(),
            "no message takes the consumer queue"
        );

        // Stopping a partition's fetch clears its route: each assignment sets it again, once
        // the stop is through, as a group's next assignment always is.
        consumer.unassign().unwrap();
        thread::sleep(Duration::from_millis(500));
        queue.forward(&[0, 1]);
        consumer.assign(&from_start(topic, 2)).unwrap();
        assert_eq!(take_all(&queue, 10), 10);

        drop(queue);
    }

    #[test]
    fn messages_left_in_a_partition_queue_are_routed_again() {
        let topic = "fetched-unit-stranded";
        fill(topic, 2, 5);
        let consumer = consumer(topic);
        let queue = FetchQueue::new(&consumer, topic).unwrap();
        queue.forward(&[0, 1]);
        // Routed nowhere, as a stop landing after the route would leave them: the
        // partitions' messages wait in their own queues.
        for partition in 0..2 {
            // SAFETY: the consumer is live; the queue reference is released at once.
            unsafe {
                let own = rdsys::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    queue.topic.as_ptr(),
                    partition,
                );
                rdsys::rd_kafka_queue_forward(own, std::ptr::null_mut());
                rdsys::rd_kafka_queue_destroy(own);
            }
        }
        consumer.assign(&from_start(topic, 2)).unwrap();
        assert_eq!(take_for(&queue, 10, Duration::from_secs(1)), 0);

        queue.route_again();
        assert_eq!(take_all(&queue, 10), 10);

        drop(queue);
    }

    #[test]
    fn an_event_on_the_consumer_queue_ends_a_wait_for_messages() {
        let topic = "fetched-unit-events";
        EmbeddedBroker::get()
            .unwrap()
            .create_topic(topic, 2)
            .unwrap();
        let consumer = consumer(topic);
        let queue = FetchQueue::new(&consumer, topic).unwrap();
        // Joining the group puts the assignment on the consumer queue.
        consumer.subscribe(&[topic]).unwrap();
        let started = Instant::now();
        let mut taken = Taken::default();
        queue.take(&mut taken, 1, Duration::from_secs(60));
        let waited = started.elapsed();
        assert!(
            taken.is_empty(),
            "nothing fetched before the assignment is served"
        );
        assert!(queue.has_events());
        assert!(waited < Duration::from_secs(30), "woken after {waited:?}");
        drop(queue);

        // The assignment is served before the consumer closes. Left waiting, rdkafka's drop
        // would apply it while the group terminates, and librdkafka drops such a call
        // unanswered: the drop would then wait forever (see `MemberContext::rebalance`).
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().unwrap().count() == 0 && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(100));
        }
        assert_eq!(consumer.assignment().unwrap().count(), 2);
    }
}

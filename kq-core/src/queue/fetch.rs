//! The fetch loop of one group member: polls librdkafka on a thread of its own, hands
//! messages to the dispatcher, pauses partitions when the queue is full, commits on
//! `CommitInterval`, and drains and commits on shutdown.
//!
//! One loop per member keeps a partition's messages in offset order up to the dispatcher;
//! librdkafka already fetches from every broker on threads of its own.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio::sync::oneshot;

use super::commit;
use super::dispatch::Dispatcher;
use super::offsets::PartitionState;
use super::processor;
use super::rebalance::{Member, MemberContext};
use super::QueueShared;
use crate::broker::{Connection, EmbeddedBroker, EMBEDDED_PARTITIONS};
use crate::conf::KqConf;
use crate::error::Error;
use crate::message::Message;
use crate::service::Shutdown;

/// How long one poll waits when nothing is held back.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long one poll waits while messages are held back for want of room, so that they are
/// dispatched soon after room frees up.
const BUSY_POLL: Duration = Duration::from_millis(2);
/// The longest pause after repeated poll errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// Creates the member's consumer, its processors and its fetch thread. The returned future
/// completes when the member has stopped.
pub(crate) fn spawn_member(
    queue: Arc<QueueShared>,
    index: usize,
    shutdown: Shutdown,
) -> Result<impl Future<Output = Result<(), Error>>, Error> {
    let conf = &queue.conf;
    let member = Arc::new(Member::new(queue.clone(), index));
    let consumer: BaseConsumer<MemberContext> =
        consumer_config(conf)?.create_with_context(MemberContext {
            member: member.clone(),
        })?;
    consumer.subscribe(&[&conf.topic])?;

    let (dispatcher, lanes) = Dispatcher::new(
        conf.processors,
        conf.effective_ordering(),
        member.in_flight.clone(),
    );
    for lane in lanes {
        tokio::spawn(processor::run(queue.clone(), lane, shutdown.clone()));
    }

    let (stopped_tx, stopped_rx) = oneshot::channel();
    let name = format!("kq-fetch-{}-{index}", queue.name);
    let fetch = FetchLoop {
        member,
        consumer,
        dispatcher,
        shutdown,
        held: BTreeMap::new(),
        paused: HashSet::new(),
        last_commit: Instant::now(),
        errors_in_a_row: 0,
    };
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let result = fetch.run();
            let _ = stopped_tx.send(result);
        })
        .map_err(|e| Error::Stopped {
            consumer: queue.name.clone(),
            reason: format!("cannot start the fetch thread: {e}"),
        })?;
    let consumer_name = queue.name.clone();
    Ok(async move {
        stopped_rx.await.unwrap_or_else(|_| {
            Err(Error::Stopped {
                consumer: consumer_name,
                reason: "the fetch thread panicked".into(),
            })
        })
    })
}

/// librdkafka's consumer settings for a `KqConf`.
fn consumer_config(conf: &KqConf) -> Result<ClientConfig, Error> {
    let connection = Connection {
        name: &conf.name,
        brokers: &conf.brokers,
        ca_file: &conf.ca_file,
        username: &conf.username,
        password: &conf.password,
    };
    if connection.is_embedded() {
        EmbeddedBroker::get()?.create_topic(&conf.topic, EMBEDDED_PARTITIONS)?;
    }
    let mut config = connection.client_config()?;
    config
        .set("group.id", &conf.group)
        // kq commits watermarks itself; librdkafka's automatic commits would pass unfinished
        // messages.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", conf.offset.auto_offset_reset())
        .set("partition.assignment.strategy", conf.assignor.keyword())
        .set("fetch.min.bytes", conf.min_bytes.to_string())
        .set("fetch.max.bytes", conf.max_bytes.to_string())
        .set("fetch.wait.max.ms", conf.max_wait.as_millis().to_string())
        .set(
            "session.timeout.ms",
            conf.session_timeout.as_millis().to_string(),
        );
    // librdkafka refuses a fetch.max.bytes below its message.max.bytes (1000000 by default);
    // a smaller MaxBytes lowers both, as kafka-go's MaxBytes bounds the message size too.
    if conf.max_bytes < 1_000_000 {
        let bytes = conf.max_bytes.max(1000).to_string();
        config
            .set("message.max.bytes", &bytes)
            .set("max.partition.fetch.bytes", &bytes)
            .set("fetch.max.bytes", &bytes);
    }
    Ok(config)
}

struct FetchLoop {
    member: Arc<Member>,
    consumer: BaseConsumer<MemberContext>,
    dispatcher: Dispatcher,
    shutdown: Shutdown,
    /// Messages fetched while there was no room, per partition, in offset order.
    held: BTreeMap<i32, VecDeque<(Arc<PartitionState>, Message)>>,
    paused: HashSet<i32>,
    last_commit: Instant,
    errors_in_a_row: u32,
}

impl FetchLoop {
    fn run(mut self) -> Result<(), Error> {
        let queue = self.member.queue.clone();
        tracing::info!(
            consumer = %queue.name,
            member = self.member.index,
            topic = %queue.conf.topic,
            group = %queue.conf.group,
            "consumer started"
        );
        while !self.shutdown.is_triggered() {
            self.dispatch_held();
            let wait = if self.held.is_empty() {
                IDLE_POLL
            } else {
                BUSY_POLL
            };
            match self.consumer.poll(wait) {
                None => {}
                Some(Ok(record)) => {
                    self.errors_in_a_row = 0;
                    let partition = self.member.partition(rdkafka::Message::partition(&record));
                    let msg = Message::from_kafka(self.member.topic.clone(), &record);
                    drop(record);
                    self.offer(partition, msg);
                }
                Some(Err(e)) => self.back_off(e),
            }
            self.commit_if_due();
        }
        let member = self.member.index;
        self.stop();
        tracing::info!(
            consumer = %queue.name,
            member,
            "consumer stopped"
        );
        Ok(())
    }

    /// Dispatches a message, or holds it back and pauses its partition when there is no room.
    fn offer(&mut self, partition: Arc<PartitionState>, msg: Message) {
        let p = partition.partition();
        let queued_behind = self.held.get(&p).is_some_and(|q| !q.is_empty());
        if queued_behind || !self.has_room(&partition) {
            self.held.entry(p).or_default().push_back((partition, msg));
            self.pause(p);
        } else {
            self.dispatcher.dispatch(partition, msg);
        }
    }

    /// Room for one more message: the member's in-flight count and the partition's
    /// uncommitted window are both under `QueueCapacity`.
    fn has_room(&self, partition: &PartitionState) -> bool {
        let capacity = self.member.queue.conf.queue_capacity;
        self.dispatcher.in_flight() < capacity && partition.window_len() < capacity
    }

    fn dispatch_held(&mut self) {
        let mut drained = Vec::new();
        for (&p, queue) in self.held.iter_mut() {
            while let Some((partition, _)) = queue.front() {
                if partition.is_revoked() {
                    // Fetched under an assignment that is gone; the next owner reads it again.
                    queue.clear();
                    break;
                }
                let capacity = self.member.queue.conf.queue_capacity;
                if self.dispatcher.in_flight() >= capacity || partition.window_len() >= capacity {
                    break;
                }
                if let Some((partition, msg)) = queue.pop_front() {
                    self.dispatcher.dispatch(partition, msg);
                }
            }
            if queue.is_empty() {
                drained.push(p);
            }
        }
        for p in drained {
            self.held.remove(&p);
            self.resume(p);
        }
    }

    fn pause(&mut self, partition: i32) {
        if self.paused.insert(partition) {
            if let Err(e) = self.consumer.pause(&self.partition_list(partition)) {
                tracing::debug!(partition, error = %e, "pause failed");
            }
        }
    }

    fn resume(&mut self, partition: i32) {
        if self.paused.remove(&partition) {
            // Fails only when the partition was revoked meanwhile, which needs no resume.
            let _ = self.consumer.resume(&self.partition_list(partition));
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(&self.member.topic, partition);
        list
    }

    fn back_off(&mut self, error: KafkaError) {
        self.errors_in_a_row = self.errors_in_a_row.saturating_add(1);
        let wait = Duration::from_millis(50)
            .saturating_mul(2u32.saturating_pow(self.errors_in_a_row.min(16) - 1))
            .min(MAX_ERROR_BACKOFF);
        tracing::warn!(
            consumer = %self.member.queue.name,
            topic = %self.member.topic,
            error = %error,
            retry_in = ?wait,
            "fetch failed"
        );
        // Sleep in slices so that a shutdown is not held up by the wait.
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.shutdown.is_triggered() {
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn commit_if_due(&mut self) {
        if self.last_commit.elapsed() >= self.member.queue.conf.commit_interval {
            self.last_commit = Instant::now();
            commit::commit_moved(&self.consumer, &self.member.topic, &self.member.owned());
        }
    }

    /// Stops fetching, lets running handlers finish within `ShutdownTimeout`, commits, and
    /// leaves the group (when the consumer is dropped).
    fn stop(mut self) {
        self.held.clear();
        let owned: Vec<i32> = self.member.owned().iter().map(|p| p.partition()).collect();
        // Releasing everything also leaves nothing for the rebalance callback that closing
        // the consumer triggers.
        self.member.release(&self.consumer, &owned);
        // self.consumer.unsubscribe();
    }
}

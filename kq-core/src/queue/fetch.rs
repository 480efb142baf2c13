//! The fetch loop of one group member: polls librdkafka on a thread of its own, hands
//! messages to the dispatcher, stops polling while the queue is full, commits on
//! `CommitInterval`, and drains and commits on shutdown.
//!
//! One loop per member keeps a partition's messages in offset order up to the dispatcher;
//! librdkafka already fetches from every broker on threads of its own.
//!
//! Backpressure is by not polling: the message in hand waits for room, and librdkafka stops
//! fetching once its own prefetch queue (`queued.max.messages.kbytes`) is full. Pausing
//! partitions instead would discard what librdkafka already fetched and refetch it from the
//! middle of a record batch on resume, which some Kafka-compatible brokers never answer.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

use super::commit;
use super::dispatch::Dispatcher;
use super::offsets::PartitionState;
use super::processor;
use super::rebalance::{Member, MemberContext};
use super::QueueShared;
use crate::conf::KqConf;
use crate::error::Error;
use crate::message::Message;
use crate::service::Shutdown;

/// How long one poll waits for a message.
const POLL: Duration = Duration::from_millis(100);
/// Messages taken from librdkafka at most before they are handed to the lanes.
pub(super) const BURST: usize = 256;
/// How long the loop sleeps between checks for room while the queue is full.
const ROOM_CHECK: Duration = Duration::from_micros(200);
/// librdkafka's `fetch.queue.backoff.ms` for kq consumers.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How often librdkafka reports statistics (consumer lag) while metrics are collected.
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How long a stopped member may take to leave its group: one round trip to the coordinator
/// when all goes well.
const LEAVE_LIMIT: Duration = Duration::from_secs(10);
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
    let created = consumer_config(conf, queue.observed.is_some()).and_then(|config| {
        let consumer: BaseConsumer<MemberContext> = config.create_with_context(MemberContext {
            member: member.clone(),
        })?;
        consumer.subscribe(&[&conf.topic])?;
        Ok(consumer)
    });
    let consumer = match created {
        Ok(consumer) => consumer,
        Err(e) => {
            // A member that never started is as dead as one whose loop ended.
            if let Some(health) = &member.health {
                health.stopped(true);
            }
            return Err(e);
        }
    };

    let (dispatcher, lanes) = Dispatcher::new(
        conf.processors,
        conf.effective_ordering(),
        member.in_flight.clone(),
        member.buffers.clone(),
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
        held: None,
        spare_buffers: Vec::new(),
        last_partition: None,
        last_commit: Instant::now(),
        errors_in_a_row: 0,
    };
    let (left_tx, left_rx) = oneshot::channel::<()>();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            let health = fetch.member.health.clone();
            let consumer = fetch.member.queue.name.clone();
            // A panic ends the member like an error, and the health endpoint sees it at once
            // rather than when the queue gets round to awaiting this member.
            let (result, closing) = match panic::catch_unwind(AssertUnwindSafe(|| fetch.run())) {
                Ok((closing, result)) => (result, Some(closing)),
                Err(_) => {
                    let reason = "the fetch thread panicked".into();
                    (Err(Error::Stopped { consumer, reason }), None)
                }
            };
            if let Some(health) = health {
                health.stopped(result.is_err());
            }
            // Everything is committed by now; what is left is leaving the group.
            let _ = stopped_tx.send(result);
            drop(closing);
            let _ = left_tx.send(());
        })
        .map_err(|e| Error::Stopped {
            consumer: queue.name.clone(),
            reason: format!("cannot start the fetch thread: {e}"),
        })?;
    let consumer_name = queue.name.clone();
    Ok(async move {
        let result = stopped_rx.await.unwrap_or_else(|_| {
            Err(Error::Stopped {
                consumer: consumer_name.clone(),
                reason: "the fetch thread ended without a result".into(),
            })
        });
        // Closing a librdkafka consumer can wait forever when a rebalance races the group's
        // termination. The offsets are committed already, so the queue stops waiting rather
        // than hold the service's exit; the group then drops the member when its session
        // expires, as it would a killed process.
        if tokio::time::timeout(LEAVE_LIMIT, left_rx).await.is_err() {
            tracing::warn!(
                consumer = %consumer_name,
                member = index,
                waited = ?LEAVE_LIMIT,
                "the consumer did not leave its group in time; the group drops it when its session expires"
            );
        }
        result
    })
}

/// librdkafka's consumer settings for a `KqConf`.
fn consumer_config(conf: &KqConf, observed: bool) -> Result<ClientConfig, Error> {
    let connection = conf.connection();
    connection.ensure_embedded_topic(&conf.topic)?;
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
        )
        // The loop stops polling while its queue is full, which fills librdkafka's prefetch
        // queue; with the default 1 s backoff a partition would then idle long after room
        // frees up.
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    if observed {
        // Consumer lag for the metrics comes with librdkafka's statistics.
        config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    }
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

/// The current state of a partition; the last one is kept in `last`, as consecutive messages
/// mostly come from the same partition.
fn partition_state<'a>(
    member: &Member,
    last: &'a mut Option<Arc<PartitionState>>,
    partition: i32,
) -> &'a Arc<PartitionState> {
    let state = match last.take() {
        Some(state) if state.partition() == partition && !state.is_revoked() => state,
        _ => member.partition(partition),
    };
    last.insert(state)
}

/// Room for one more message: the member's in-flight count and the partition's uncommitted
/// window are both under `QueueCapacity`.
fn has_room(member: &Member, dispatcher: &Dispatcher, partition: &PartitionState) -> bool {
    let capacity = member.queue.conf.queue_capacity;
    dispatcher.in_flight() < capacity && partition.window_len() < capacity
}

struct FetchLoop {
    member: Arc<Member>,
    consumer: BaseConsumer<MemberContext>,
    dispatcher: Dispatcher,
    shutdown: Shutdown,
    /// The message polled while there was no room; nothing more is polled until it goes.
    held: Option<(Arc<PartitionState>, Message)>,
    /// Buffers taken back from the processors, to copy the next messages into.
    spare_buffers: Vec<Vec<u8>>,
    last_partition: Option<Arc<PartitionState>>,
    last_commit: Instant,
    errors_in_a_row: u32,
}

impl FetchLoop {
    /// Fetches until shutdown, or until a processor is lost; returns the consumer, its
    /// partitions released and committed, and whether the member stopped on its own.
    fn run(mut self) -> (BaseConsumer<MemberContext>, Result<(), Error>) {
        let queue = self.member.queue.clone();
        tracing::info!(
            consumer = %queue.name,
            member = self.member.index,
            topic = %queue.conf.topic,
            group = %queue.conf.group,
            "consumer started"
        );
        let mut result = Ok(());
        while !self.shutdown.is_triggered() {
            if self.dispatcher.processor_lost() {
                // What the processor had started or was given can never finish, and its
                // partitions' commits would wait on it for good: stop, commit what is done,
                // and let the next owner deliver the rest again.
                result = Err(Error::Stopped {
                    consumer: queue.name.clone(),
                    reason: "one of its processors died".into(),
                });
                break;
            }
            if let Some(health) = &self.member.health {
                health.beat();
            }
            if let Some(observed) = &queue.observed {
                observed.set_in_flight(self.dispatcher.in_flight());
            }
            if let Some((partition, msg)) = self.held.take() {
                if partition.is_revoked() {
                    // Fetched under an assignment that is gone; the next owner reads it again.
                } else if has_room(&self.member, &self.dispatcher, &partition) {
                    self.dispatcher.dispatch(&partition, msg);
                    self.dispatcher.flush();
                } else {
                    self.held = Some((partition, msg));
                    thread::sleep(ROOM_CHECK);
                    self.commit_if_due();
                    continue;
                }
            }
            // Wait for one message, then take what librdkafka already holds without waiting,
            // up to a burst: the lanes get one batch each instead of a wake-up per message.
            let mut wait = POLL;
            for _ in 0..BURST {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(record)) => {
                        self.errors_in_a_row = 0;
                        if self.spare_buffers.is_empty() {
                            self.member.buffers.take_all(&mut self.spare_buffers);
                        }
                        let buffer = self.spare_buffers.pop().unwrap_or_default();
                        let msg = Message::from_kafka(self.member.topic.clone(), &record, buffer);
                        drop(record);
                        let partition = partition_state(
                            &self.member,
                            &mut self.last_partition,
                            msg.partition(),
                        );
                        if has_room(&self.member, &self.dispatcher, partition) {
                            self.dispatcher.dispatch(partition, msg);
                        } else {
                            self.held = Some((partition.clone(), msg));
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        self.back_off(e);
                        break;
                    }
                }
                wait = Duration::ZERO;
            }
            self.dispatcher.flush();
            self.commit_if_due();
        }
        let member = self.member.index;
        let consumer = self.stop();
        tracing::info!(
            consumer = %queue.name,
            member,
            "consumer stopped"
        );
        (consumer, result)
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

    /// Stops fetching, lets running handlers finish within `ShutdownTimeout` and commits.
    /// Returns the consumer, which leaves the group when it is dropped.
    fn stop(mut self) -> BaseConsumer<MemberContext> {
        self.held = None;
        let owned: Vec<i32> = self.member.owned().iter().map(|p| p.partition()).collect();
        // Releasing everything also leaves nothing for the rebalance callback that closing
        // the consumer triggers.
        self.member.release(&self.consumer, &owned);
        self.consumer
    }
}

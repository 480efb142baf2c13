//! The fetch loop of one group member: takes messages from librdkafka in batches on a thread
//! of its own, hands them to the dispatcher, stops taking while the queue is full, serves the
//! consumer's events (rebalances, commit results), stores watermarks for librdkafka's
//! commits, and drains and commits on shutdown.
//!
//! One loop per member keeps a partition's messages in offset order up to the dispatcher;
//! librdkafka already fetches from every broker on threads of its own.
//!
//! Backpressure is by not taking: messages in hand wait for room in the stash (see `stash`),
//! which reads ahead at most `MaxBytes`, and librdkafka stops fetching once its own prefetch
//! queue (`queued.max.messages.kbytes`) is full. Pausing partitions instead would discard
//! what librdkafka already fetched, to fetch it again from the middle of a record batch on
//! resume.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

use super::buffers::BufferPool;
use super::commit;
use super::dispatch::{self, Dispatcher};
use super::fetched::{FetchQueue, NativeMessage, Taken};
use super::holds::Holds;
use super::offsets::PartitionState;
use super::processor;
use super::rebalance::{Member, MemberContext};
use super::stash::{self, Stash};
use super::QueueShared;
use crate::broker;
use crate::conf::KqConf;
use crate::error::Error;
use crate::message::Message;
use crate::shutdown::Shutdown;

/// How long the loop waits for a message before it comes round anyway (health, commits).
const POLL: Duration = Duration::from_millis(100);
/// Messages handed to the lanes at most per round of the loop. Each hand-off
/// wakes the processors, which have usually run out of work and parked by then; larger bursts
/// wake them less often, but leave them idle longer while the loop fills the next one.
pub(super) const BURST: usize = 512;

/// A round's burst: `BURST`, or for a batch consumer a batch for each processor, so that a
/// lane's share of a hand-off fills a batch rather than half of one, which left its
/// processor waiting for the next hand-off (at most half the queue, so that the processors
/// have the other half meanwhile).
fn burst(queue: &QueueShared) -> usize {
    if queue.batching() {
        let batches = queue.conf.batch.size.saturating_mul(queue.conf.processors);
        BURST.max(batches.min(queue.capacity() / 2))
    } else {
        BURST
    }
}
/// Consumer events served at most per round, so that a flood of them cannot hold up messages.
const EVENTS_PER_ROUND: usize = 64;
/// How long the loop waits for the processors to make room in a full queue at most: they wake
/// it when they have, so this bounds how late it serves a rebalance or a commit meanwhile.
const ROOM_WAIT: Duration = Duration::from_millis(5);
/// How long the loop sleeps between checks while every stashed partition's uncommitted window
/// is full.
const WINDOW_CHECK: Duration = Duration::from_micros(200);
/// A partition's uncommitted window, in offsets, is bounded by this many times
/// `QueueCapacity`. librdkafka hands over messages a partition at a time, up to a fetch
/// response's worth, so most of the queue is often one partition's; under key ordering they
/// spread over every lane, and the partition's watermark waits for the busiest one. A window
/// no larger than the queue left the other processors idle meanwhile. The window holds
/// offsets, 16 bytes each; the messages themselves stay bounded by `QueueCapacity`.
const WINDOW_PER_CAPACITY: usize = 32;
/// librdkafka keeps this many times `QueueCapacity` messages fetched ahead (see
/// `prefetch_messages`).
const PREFETCH_PER_CAPACITY: usize = 20;
/// A fetch asks a partition for this fraction of `MaxBytes` (see `partition_fetch_bytes`).
const PARTITION_FETCHES_PER_MAX_BYTES: usize = 20;
/// librdkafka's `fetch.queue.backoff.ms` for kq consumers.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// How often librdkafka reports statistics (consumer lag) while metrics are collected.
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How often moved watermarks are stored for librdkafka's auto-commit, at most (and at least
/// once per `CommitInterval`): each store takes librdkafka's client-wide lock once per
/// partition.
const STORE_EVERY: Duration = Duration::from_millis(10);
/// kq commits offset maps that changed under a watermark that stayed where it was every
/// `CommitInterval`, or every this when that is shorter; the watermark must have stayed as
/// long.
const MAP_COMMIT_EVERY: Duration = Duration::from_millis(100);
/// How long a stopped member may take to leave its group: one round trip to the coordinator
/// when all goes well.
const LEAVE_LIMIT: Duration = Duration::from_secs(10);
/// The longest pause after repeated poll errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// The fetch thread waiting for room in the queue, and the processors waking it once they
/// have made enough: half of `QueueCapacity`, so that it comes back to a burst's worth rather
/// than to a few messages at a time. The dispatcher's lanes hold it, where the processors
/// reach it.
pub(super) struct RoomWait {
    /// Set while the fetch thread waits; the processor that wakes it clears it.
    waiting: AtomicBool,
    fetch_thread: OnceLock<Thread>,
    /// Messages in flight at most for the wait to end.
    low_water: usize,
}

impl RoomWait {
    pub fn new(capacity: usize) -> Self {
        RoomWait {
            waiting: AtomicBool::new(false),
            fetch_thread: OnceLock::new(),
            low_water: capacity / 2,
        }
    }

    /// Parks the fetch thread, up to `limit`, until the messages `in_flight` are down to the
    /// low water mark.
    pub fn wait(&self, in_flight: &AtomicUsize, limit: Duration) {
        self.fetch_thread.get_or_init(thread::current);
        // Sequentially consistent with the processors' count and `waiting`, so that one of the
        // two sees the other: the thread does not park, or it is woken.
        self.waiting.store(true, AtomicOrdering::SeqCst);
        if in_flight.load(AtomicOrdering::SeqCst) > self.low_water {
            thread::park_timeout(limit);
        }
        self.waiting.store(false, AtomicOrdering::SeqCst);
    }

    /// A processor released messages, and `left` are in flight: wakes the fetch thread if it
    /// waits and there is room enough now.
    pub fn made(&self, left: usize) {
        if left <= self.low_water
            && self.waiting.load(AtomicOrdering::SeqCst)
            && self.waiting.swap(false, AtomicOrdering::SeqCst)
        {
            if let Some(fetch_thread) = self.fetch_thread.get() {
                fetch_thread.unpark();
            }
        }
    }
}

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
        let consumer: BaseConsumer<MemberContext> =
            config.create_with_context(MemberContext::new(member.clone()))?;
        // Routed before subscribing, so that the first assignment already finds it.
        let fetch_queue = Arc::new(FetchQueue::new(&consumer, &conf.topic)?);
        consumer.context().route_to(&fetch_queue);
        consumer.subscribe(&[&conf.topic])?;
        Ok((consumer, fetch_queue))
    });
    let (consumer, fetch_queue) = match created {
        Ok(created) => created,
        Err(e) => {
            // A member that never started is as dead as one whose loop ended.
            if let Some(health) = &member.health {
                health.stopped(true);
            }
            return Err(e);
        }
    };

    let (dispatcher, intakes) = Dispatcher::new(
        conf.processors,
        conf.effective_ordering(),
        queue.capacity(),
        queue.batching(),
        member.in_flight.clone(),
        member.buffers.clone(),
    );
    let holds = Holds::new(conf.hold.clone());
    for intake in intakes {
        tokio::spawn(processor::run(
            queue.clone(),
            intake,
            shutdown.clone(),
            holds.clone(),
        ));
    }
    tokio::spawn(dispatch::announcer(&dispatcher));

    let (stopped_tx, stopped_rx) = oneshot::channel();
    let name = format!("kq-fetch-{}-{index}", queue.name);
    let copier = Copier {
        topic: member.topic,
        buffers: member.buffers.clone(),
        spare: Vec::new(),
        with_headers: queue.reads_headers(),
        check_text: queue.reads_text(),
    };
    let fetch = FetchLoop {
        holds,
        burst: burst(&queue),
        copier,
        taken: Taken::default(),
        stash: Stash::new(conf.max_bytes),
        fetch_queue,
        member,
        consumer,
        dispatcher,
        shutdown,
        last_partition: None,
        room: Room::default(),
        blocked: false,
        last_store: Instant::now(),
        last_upkeep: Instant::now(),
        last_map_commit: Instant::now(),
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
    broker::ensure_embedded_topic(&connection, &conf.topic)?;
    let mut config = broker::client_config(&connection)?;
    config
        .set("group.id", &conf.group)
        // librdkafka commits what kq stores, the watermarks, and nothing else: its automatic
        // store would pass unfinished messages. Its auto-commit waits while the group
        // rebalances, when a commit can only be refused.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", auto_commit_interval_ms(conf))
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
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("queued.min.messages", prefetch_messages(conf).to_string())
        .set(
            "queued.max.messages.kbytes",
            prefetch_kbytes(conf).to_string(),
        )
        .set(
            "max.partition.fetch.bytes",
            partition_fetch_bytes(conf).to_string(),
        );
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

/// How many messages librdkafka keeps fetched ahead of the fetch loop (`queued.min.messages`:
/// it fetches again whenever its queue holds fewer): twenty times `QueueCapacity`. librdkafka's
/// default of 100,000 held most of a backlogged member's memory (90 MiB at peak with 100-byte
/// messages); at 20,000 a backlog read no slower, at less CPU, and at 10,000 it read slower.
fn prefetch_messages(conf: &KqConf) -> usize {
    const LIBRDKAFKA_MAX: usize = 10_000_000;
    conf.queue_capacity
        .saturating_mul(PREFETCH_PER_CAPACITY)
        .min(LIBRDKAFKA_MAX)
}

/// The message data librdkafka keeps fetched ahead, in KiB (`queued.max.messages.kbytes`):
/// `MaxBytes`, as much as the fetch loop reads ahead itself, where librdkafka's default is
/// 64 MiB.
fn prefetch_kbytes(conf: &KqConf) -> usize {
    (conf.max_bytes / 1024).max(1)
}

/// The most a fetch asks of one partition (`max.partition.fetch.bytes`; librdkafka fetches
/// a larger message whole anyway): a twentieth of `MaxBytes`, 512 KiB by default, where
/// librdkafka's default is 1 MiB. A message waiting in kq's read-ahead keeps its whole fetch
/// response in memory, so smaller responses hold less: a slow handler's backlog peaked at
/// 45 to 49 MiB instead of 61 to 68, and a backlog read no slower.
fn partition_fetch_bytes(conf: &KqConf) -> usize {
    (conf.max_bytes / PARTITION_FETCHES_PER_MAX_BYTES).max(1)
}

/// `CommitInterval` in librdkafka's terms: 0 (kafka-go's synchronous commits) is as often as
/// librdkafka commits at all, once a millisecond.
fn auto_commit_interval_ms(conf: &KqConf) -> String {
    let interval = conf
        .commit_interval
        .clamp(Duration::from_millis(1), crate::conf::MAX_COMMIT_INTERVAL);
    interval.as_millis().to_string()
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

/// The room left in one round of the loop: in the member's queue (`QueueCapacity` less the
/// messages in flight), and in the uncommitted window of the partition being dispatched
/// (`WINDOW_PER_CAPACITY`). Both are read once and counted down as messages go,
/// rather than read for every message from counters the processors write.
#[derive(Default)]
struct Room {
    /// `QueueCapacity`.
    capacity: usize,
    member: usize,
    /// The partition `partition_left` counts for.
    partition: Option<Arc<PartitionState>>,
    partition_left: usize,
}

impl Room {
    fn new(capacity: usize, in_flight: usize) -> Self {
        Room {
            capacity,
            member: capacity.saturating_sub(in_flight),
            ..Room::default()
        }
    }

    /// Takes room for one more message of `partition`, if both have it.
    fn take(&mut self, partition: &Arc<PartitionState>, dispatcher: &mut Dispatcher) -> bool {
        if self.member == 0 {
            return false;
        }
        if !self
            .partition
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, partition))
        {
            // Offsets dispatched and not yet recorded would be missing from the window.
            dispatcher.record_fetched();
            self.partition_left =
                (WINDOW_PER_CAPACITY * self.capacity).saturating_sub(partition.window_len());
            self.partition = Some(partition.clone());
        }
        if self.partition_left == 0 {
            return false;
        }
        self.partition_left -= 1;
        self.member -= 1;
        true
    }
}

/// Copies messages out of librdkafka, into buffers the processors gave back.
struct Copier {
    topic: &'static str,
    buffers: Arc<BufferPool>,
    /// Buffers taken back from the processors, to copy the next messages into.
    spare: Vec<Vec<u8>>,
    /// Whether messages carry their headers (see `QueueShared::reads_headers`).
    with_headers: bool,
    /// Whether key and value are checked as text (see `QueueShared::reads_text`).
    check_text: bool,
}

impl Copier {
    /// # Safety
    ///
    /// `native` is a live message of the member's topic, delivered without an error.
    unsafe fn copy(&mut self, native: *const rdkafka::bindings::rd_kafka_message_t) -> Message {
        if self.spare.is_empty() {
            self.buffers.take_all(&mut self.spare);
        }
        let buffer = self.spare.pop().unwrap_or_default();
        // SAFETY: the caller's promise.
        unsafe {
            Message::from_native(
                self.topic,
                native,
                buffer,
                self.with_headers,
                self.check_text,
            )
        }
    }
}

/// A message waiting in the stash: as librdkafka delivered it, or already copied (one that
/// came through the consumer queue).
enum Fetched {
    Native(NativeMessage),
    /// Boxed: the stash moves its messages twice, and most are pointers.
    Copied(Box<Message>),
}

struct FetchLoop {
    // Dropped before the consumer, as librdkafka requires of its messages and queues, also
    // when the loop unwinds.
    taken: Taken,
    /// Messages taken and waiting for room.
    stash: Stash<Fetched>,
    /// Messages handed to the lanes at most per round.
    burst: usize,
    /// The member's holds, whose tasks may die as processors may.
    holds: Arc<Holds>,
    fetch_queue: Arc<FetchQueue>,
    member: Arc<Member>,
    consumer: BaseConsumer<MemberContext>,
    dispatcher: Dispatcher,
    shutdown: Shutdown,
    copier: Copier,
    last_partition: Option<Arc<PartitionState>>,
    room: Room,
    /// The last round dispatched nothing, though the stash held messages.
    blocked: bool,
    last_store: Instant,
    last_upkeep: Instant,
    last_map_commit: Instant,
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
            if self.dispatcher.processor_lost() || self.holds.lost() {
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
                observed.set_held(self.holds.messages());
            }
            self.room = Room::new(queue.capacity(), self.dispatcher.in_flight());
            let full = self.room.member == 0;
            // Rebalances run here, on this thread, between batches.
            self.serve_events();
            // Blocked: the stashed partitions' windows are full, and others may have messages
            // behind them.
            self.read_ahead(full || self.blocked);
            if self.stash.is_empty() && !full {
                // librdkafka holds nothing: wait for the first message (or an event), and
                // take what came with it.
                self.fetch_queue.take(&mut self.taken, 1, POLL);
                self.stash_taken();
                self.read_ahead(full);
            }
            let dispatched = self.dispatch_stashed();
            self.blocked = !full && dispatched == 0 && !self.stash.is_empty();
            if full {
                // The processors wake the loop when they have made room.
                self.dispatcher.wait_for_room(ROOM_WAIT);
            } else if self.blocked {
                // Every stashed partition's window is full until its oldest messages finish.
                thread::sleep(WINDOW_CHECK);
            }
            self.store_if_due();
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

    /// Serves what waits on the consumer queue: rebalances, commit results and errors, and
    /// the messages of a partition that could not be routed to the fetch queue.
    fn serve_events(&mut self) {
        for _ in 0..EVENTS_PER_ROUND {
            if !self.fetch_queue.has_events() {
                return;
            }
            match self.consumer.poll(Duration::ZERO) {
                None => {}
                Some(Ok(record)) => {
                    self.errors_in_a_row = 0;
                    // SAFETY: `record` lives until the end of this arm, and rdkafka returns
                    // only messages without an error as `Ok`.
                    let msg = unsafe { self.copier.copy(record.ptr()) };
                    drop(record);
                    let bytes = msg.key().map_or(0, <[u8]>::len)
                        + msg.value().map_or(0, <[u8]>::len)
                        + stash::OVERHEAD_BYTES;
                    let partition =
                        partition_state(&self.member, &mut self.last_partition, msg.partition());
                    self.stash
                        .push(partition, Fetched::Copied(Box::new(msg)), bytes);
                }
                Some(Err(e)) => self.back_off(e),
            }
        }
    }

    /// Takes what librdkafka holds into the stash: the round's room's worth, or `further`,
    /// until the stash is full. Reading further ahead only while the processors are behind
    /// leaves the messages in librdkafka's queue, under its prefetch bound, when they are not.
    fn read_ahead(&mut self, further: bool) {
        let wanted = if further {
            usize::MAX
        } else {
            self.room.member.min(self.burst)
        };
        while !self.stash.is_full() && self.stash.len() < wanted {
            let max = (wanted - self.stash.len()).min(self.burst);
            self.fetch_queue.take(&mut self.taken, max, Duration::ZERO);
            if self.taken.is_empty() {
                return;
            }
            self.stash_taken();
        }
    }

    /// Moves the taken messages into the stash; an error in place of a message backs off.
    fn stash_taken(&mut self) {
        while let Some(native) = self.taken.next() {
            if let Some(e) = native.error() {
                self.back_off(e);
                continue;
            }
            self.errors_in_a_row = 0;
            let bytes = native.len() + stash::OVERHEAD_BYTES;
            let partition =
                partition_state(&self.member, &mut self.last_partition, native.partition());
            self.stash.push(partition, Fetched::Native(native), bytes);
        }
    }

    /// Hands stashed messages to the dispatcher while their partitions have room, a share of
    /// the round's room for each; returns how many.
    fn dispatch_stashed(&mut self) -> usize {
        let FetchLoop {
            stash,
            room,
            dispatcher,
            copier,
            burst,
            member,
            ..
        } = self;
        let metrics = member.queue.observed.as_deref();
        let dispatched = stash.serve(room.member.min(*burst), |partition, fetched| {
            let offset = match &fetched {
                Fetched::Native(native) => native.offset(),
                Fetched::Copied(msg) => msg.offset(),
            };
            // A previous owner finished it (the committed offset map says so): done already.
            if partition.finished_before(offset) {
                dispatcher.record_fetched();
                partition.fetched_done(offset);
                if let Some(metrics) = metrics {
                    metrics.skipped(1);
                }
                return Ok(());
            }
            if !room.take(partition, dispatcher) {
                return Err(fetched);
            }
            let msg = match fetched {
                // SAFETY: `native` is live until it drops here, and delivered without an
                // error (see `stash_taken`).
                Fetched::Native(native) => unsafe { copier.copy(native.as_ptr()) },
                Fetched::Copied(msg) => *msg,
            };
            dispatcher.dispatch(partition, msg);
            Ok(())
        });
        self.dispatcher.flush();
        dispatched
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

    fn store_if_due(&mut self) {
        let interval = self.member.queue.conf.commit_interval;
        let metrics = self.member.queue.observed.as_deref();
        if self.last_store.elapsed() >= interval.min(STORE_EVERY) {
            self.last_store = Instant::now();
            commit::store_moved(
                &self.consumer,
                self.member.topic,
                &self.member.owned(),
                metrics,
            );
        }
        let map_every = interval.max(MAP_COMMIT_EVERY);
        if self.last_map_commit.elapsed() >= map_every {
            self.last_map_commit = Instant::now();
            commit::commit_changed_maps(
                &self.consumer,
                self.member.topic,
                &self.member.owned(),
                map_every,
                metrics,
            );
        }
        if self.last_upkeep.elapsed() >= interval {
            self.last_upkeep = Instant::now();
            // A route lost to a race with a stop is set again (see `route_again`).
            self.fetch_queue.route_again();
        }
    }

    /// Stops fetching, lets running handlers finish within `ShutdownTimeout` and commits.
    /// Returns the consumer, which leaves the group when it is dropped.
    fn stop(self) -> BaseConsumer<MemberContext> {
        let FetchLoop {
            taken,
            stash,
            fetch_queue,
            member,
            consumer,
            ..
        } = self;
        drop(stash);
        member.stop(&consumer);
        // librdkafka's messages and queues go before the consumer closes.
        drop(taken);
        drop(fetch_queue);
        consumer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (queued.min.messages, queued.max.messages.kbytes, max.partition.fetch.bytes)
    fn prefetch(conf: &KqConf) -> (usize, usize, usize) {
        (
            prefetch_messages(conf),
            prefetch_kbytes(conf),
            partition_fetch_bytes(conf),
        )
    }

    #[test]
    fn librdkafkas_prefetch_follows_the_queue_and_max_bytes() {
        let mut conf = KqConf::new(["127.0.0.1:9092"], "group", "topic");
        assert_eq!(prefetch(&conf), (20_000, 10_240, 524_288));
        conf.queue_capacity = 1;
        conf.max_bytes = 1;
        assert_eq!(prefetch(&conf), (20, 1, 1));
        // librdkafka's bounds.
        conf.queue_capacity = usize::MAX;
        conf.max_bytes = 2_147_483_135;
        assert_eq!(prefetch(&conf), (10_000_000, 2_097_151, 107_374_156));
    }
}

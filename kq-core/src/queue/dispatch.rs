//! Routing fetched messages to processor lanes: by key for per-key order, by partition for
//! strict partition order, or to any free processor when order does not matter.
//!
//! The fetch thread queues a hand-off's runs on every lane before it wakes anything, and then
//! wakes one task, the announcer, which wakes the processors with work from inside the
//! runtime. Waking each processor from the fetch thread instead made the first one woken
//! preempt it, run its share and park again before the next lane was even queued: several
//! thread switches per hand-off where one does.
//!
//! Memory crosses the threads in one direction only: the message vectors of runs, like the
//! message buffers, go back to the fetch thread to be filled again rather than being freed
//! on a processor. With glibc's allocator, freeing on one thread what another allocated takes
//! the allocating thread's arena lock, on which the fetch thread then waits.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use tokio::sync::Notify;

use super::buffers::BufferPool;
use super::fetch::BURST;
use super::offsets::PartitionState;
use crate::conf::Ordering;
use crate::message::Message;
use crate::sync::lock;

/// Consecutive messages of one partition on their way to a processor, with the partition
/// state they report back to: one shared reference per run rather than per message. Each
/// message counts as in flight from `dispatch` until its processor is done with it.
pub(crate) struct Run {
    pub partition: Arc<PartitionState>,
    pub msgs: Vec<Message>,
}

/// Emptied message vectors kept for reuse at most, per member.
const MAX_SPARE_RUNS: usize = 256;

/// The queues of one member's lanes, shared by its dispatcher, its processors and the
/// announcer.
struct Lanes {
    queues: Vec<LaneQueue>,
    /// Set when the dispatcher is gone: processors end once their queue is empty.
    closed: AtomicBool,
    /// Wakes the announcer after a hand-off.
    handed_off: Notify,
    /// Message vectors the processors emptied, for the dispatcher to fill again.
    spare_runs: Mutex<Vec<Vec<Message>>>,
    room: RoomWait,
}

/// The fetch thread waiting for room in the queue, and the processors waking it once they
/// have made enough: half of `QueueCapacity`, so that it comes back to a burst's worth rather
/// than to a few messages at a time.
struct RoomWait {
    /// Set while the fetch thread waits; the processor that wakes it clears it.
    waiting: AtomicBool,
    fetch_thread: OnceLock<Thread>,
    /// Messages in flight at most for the wait to end.
    low_water: usize,
}

/// One lane's runs, in order.
#[derive(Default)]
struct LaneQueue {
    runs: Mutex<VecDeque<Run>>,
    /// Wakes a processor waiting for work.
    ready: Notify,
    /// Runs were queued since the announcer last woke the lane.
    unannounced: AtomicBool,
}

impl Lanes {
    fn close(&self) {
        self.closed.store(true, AtomicOrdering::Release);
        for queue in &self.queues {
            queue.ready.notify_waiters();
        }
        self.handed_off.notify_one();
    }
}

/// Wakes the processors of lanes that were handed runs, until the lanes close. It runs as a
/// task of the runtime, so that the wakes are the runtime's own and cost no thread switch.
pub(crate) fn announcer(dispatcher: &Dispatcher) -> impl Future<Output = ()> + Send + 'static {
    let lanes = dispatcher.lanes.clone();
    async move {
        loop {
            let mut handed_off = pin!(lanes.handed_off.notified());
            // Registered before the flags are read, so that a hand-off after the read wakes it.
            handed_off.as_mut().enable();
            for queue in &lanes.queues {
                if queue.unannounced.swap(false, AtomicOrdering::AcqRel) {
                    queue.ready.notify_one();
                }
            }
            if lanes.closed.load(AtomicOrdering::Acquire) {
                return;
            }
            handed_off.await;
        }
    }
}

/// Where a processor takes its jobs from, and the member's in-flight count it releases.
pub(crate) struct Lane {
    lanes: Arc<Lanes>,
    /// The queue it takes from: its own, or with no ordering the one every processor shares.
    queue: usize,
    /// Whether other processors take from the same queue.
    shared: bool,
    in_flight: Arc<AtomicUsize>,
    buffers: Arc<BufferPool>,
    /// The member's count of lanes still held by a processor.
    processors_alive: Arc<AtomicUsize>,
}

impl Drop for Lane {
    // A processor holds its lane until it ends, whether it returns, panics or is dropped with
    // its runtime.
    fn drop(&mut self) {
        self.processors_alive.fetch_sub(1, AtomicOrdering::Release);
    }
}

impl Lane {
    /// Moves the next runs into `runs`, in order, waiting for one if there is none: every run
    /// queued on its own lane, one run from a shared queue so that the other processors take
    /// the next ones. `false` once the dispatcher is gone and the queue is empty.
    pub async fn next(&mut self, runs: &mut Vec<Run>) -> bool {
        let queue = &self.lanes.queues[self.queue];
        loop {
            let mut ready = pin!(queue.ready.notified());
            // Registered before the queue is read, so that a wake after the read is not lost.
            ready.as_mut().enable();
            let more = {
                let mut queued = lock(&queue.runs);
                if self.shared {
                    runs.extend(queued.pop_front());
                } else {
                    runs.extend(queued.drain(..));
                }
                !queued.is_empty()
            };
            if !runs.is_empty() {
                if more {
                    // The announcer woke one processor of the shared queue; it passes the wake
                    // on while runs are left.
                    queue.ready.notify_one();
                }
                return true;
            }
            if self.lanes.closed.load(AtomicOrdering::Acquire) {
                return false;
            }
            ready.await;
        }
    }

    /// Releases the places in the queue of messages done with, whatever became of them, and
    /// hands their buffers back to the fetch thread, which is woken if it waits for the room.
    pub fn done(&self, buffers: &mut Vec<Vec<u8>>) {
        let released = buffers.len();
        self.buffers.put_all(buffers);
        // Sequentially consistent with the fetch thread's `waiting` and count, so that one of
        // the two sees the other: it does not wait, or it is woken.
        let left = self.in_flight.fetch_sub(released, AtomicOrdering::SeqCst) - released;
        let room = &self.lanes.room;
        if left <= room.low_water
            && room.waiting.load(AtomicOrdering::SeqCst)
            && room.waiting.swap(false, AtomicOrdering::SeqCst)
        {
            if let Some(fetch_thread) = room.fetch_thread.get() {
                fetch_thread.unpark();
            }
        }
    }

    /// Hands runs' emptied message vectors back to the fetch thread, leaving `emptied` empty.
    pub fn recycle(&self, emptied: &mut Vec<Vec<Message>>) {
        debug_assert!(emptied.iter().all(Vec::is_empty));
        let mut spare = lock(&self.lanes.spare_runs);
        let kept = emptied
            .len()
            .min(MAX_SPARE_RUNS.saturating_sub(spare.len()));
        spare.extend(emptied.drain(..kept));
        drop(spare);
        // What the fetch thread has no room for is freed outside its lock.
        emptied.clear();
    }
}

/// The sending side of the lanes. Messages gather per lane until `flush`.
pub(crate) struct Dispatcher {
    lanes: Arc<Lanes>,
    /// Each lane's runs since the last flush.
    pending: Vec<Vec<Run>>,
    /// Message vectors taken back from the processors.
    spare_runs: Vec<Vec<Message>>,
    /// The partition of the offsets in `fetched`.
    fetched_partition: Option<Arc<PartitionState>>,
    /// Offsets of one partition dispatched and not yet recorded as fetched, ascending.
    fetched: Vec<i64>,
    /// Messages dispatched since the last flush, added to `in_flight` when they are sent:
    /// once per flush rather than per message, on a counter the processors also write.
    unsent: usize,
    ordering: Ordering,
    in_flight: Arc<AtomicUsize>,
    processors: usize,
    processors_alive: Arc<AtomicUsize>,
}

impl Dispatcher {
    /// Creates `processors` lanes for this ordering, for a queue of `capacity` messages.
    pub fn new(
        processors: usize,
        ordering: Ordering,
        capacity: usize,
        in_flight: Arc<AtomicUsize>,
        buffers: Arc<BufferPool>,
    ) -> (Self, Vec<Lane>) {
        let processors_alive = Arc::new(AtomicUsize::new(processors));
        // Without ordering, every processor takes from one queue, a message at a time.
        let shared = ordering == Ordering::None;
        let queues = if shared { 1 } else { processors };
        let lanes = Arc::new(Lanes {
            queues: (0..queues).map(|_| LaneQueue::default()).collect(),
            closed: AtomicBool::new(false),
            handed_off: Notify::new(),
            spare_runs: Mutex::default(),
            room: RoomWait {
                waiting: AtomicBool::new(false),
                fetch_thread: OnceLock::new(),
                low_water: capacity / 2,
            },
        });
        let receivers = (0..processors)
            .map(|processor| Lane {
                lanes: lanes.clone(),
                queue: if shared { 0 } else { processor },
                shared,
                in_flight: in_flight.clone(),
                buffers: buffers.clone(),
                processors_alive: processors_alive.clone(),
            })
            .collect();
        let dispatcher = Dispatcher {
            pending: (0..queues).map(|_| Vec::new()).collect(),
            spare_runs: Vec::new(),
            fetched_partition: None,
            fetched: Vec::new(),
            unsent: 0,
            lanes,
            ordering,
            in_flight,
            processors,
            processors_alive,
        };
        (dispatcher, receivers)
    }

    /// Whether a processor is gone. Processors end only when the dispatcher is dropped, so
    /// this means one died: what it had started, and what was queued for it, will never
    /// finish, and the member must stop rather than wait for it.
    pub fn processor_lost(&self) -> bool {
        self.processors_alive.load(AtomicOrdering::Acquire) < self.processors
    }

    /// Messages in flight (queued or running) now, up to the last flush.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(AtomicOrdering::Acquire)
    }

    /// Waits on the fetch thread, up to `limit`, until the processors have made room in a
    /// full queue.
    pub fn wait_for_room(&self, limit: Duration) {
        let room = &self.lanes.room;
        room.fetch_thread.get_or_init(thread::current);
        room.waiting.store(true, AtomicOrdering::SeqCst);
        if self.in_flight.load(AtomicOrdering::SeqCst) > room.low_water {
            thread::park_timeout(limit);
        }
        room.waiting.store(false, AtomicOrdering::SeqCst);
    }

    /// Adds the message to its lane's next run.
    pub fn dispatch(&mut self, partition: &Arc<PartitionState>, msg: Message) {
        let same_partition = self
            .fetched_partition
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, partition));
        if !same_partition {
            self.record_fetched();
            self.fetched_partition = Some(partition.clone());
        }
        self.fetched.push(msg.offset());
        self.unsent += 1;
        let lane = self.lane_of(&msg);
        // Without ordering every message is a run of its own, for any processor to take.
        let joins_last_run = self.ordering != Ordering::None
            && self.pending[lane]
                .last()
                .is_some_and(|run| Arc::ptr_eq(&run.partition, partition));
        if joins_last_run {
            if let Some(run) = self.pending[lane].last_mut() {
                run.msgs.push(msg);
            }
            return;
        }
        let mut msgs = self.spare_run();
        msgs.push(msg);
        self.pending[lane].push(Run {
            partition: partition.clone(),
            msgs,
        });
    }

    /// An empty message vector: one a processor gave back, or a new one sized for a lane's
    /// share of a burst, so that a run is not copied as it grows.
    fn spare_run(&mut self) -> Vec<Message> {
        if self.spare_runs.is_empty() {
            self.spare_runs.append(&mut lock(&self.lanes.spare_runs));
        }
        self.spare_runs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BURST.div_ceil(self.pending.len())))
    }

    /// Records what was dispatched as fetched, then queues every lane's runs and wakes the
    /// announcer.
    pub fn flush(&mut self) {
        self.record_fetched();
        // Counted before any processor can see them, so that the count never goes below zero.
        if self.unsent > 0 {
            self.in_flight
                .fetch_add(std::mem::take(&mut self.unsent), AtomicOrdering::AcqRel);
        }
        let mut handed_off = false;
        for (runs, queue) in self.pending.iter_mut().zip(&self.lanes.queues) {
            if runs.is_empty() {
                continue;
            }
            // A lane whose processor died keeps its runs unhandled until the member stops,
            // which it does on seeing the loss (see `processor_lost`); their offsets stay
            // below the watermark, to be delivered again.
            lock(&queue.runs).extend(runs.drain(..));
            queue.unannounced.store(true, AtomicOrdering::Release);
            handed_off = true;
        }
        if handed_off {
            self.lanes.handed_off.notify_one();
        }
    }

    /// Records dispatched offsets in their partition's tracker, before any processor can
    /// finish them: one lock per run of offsets from the same partition.
    pub fn record_fetched(&mut self) {
        if let Some(partition) = &self.fetched_partition {
            partition.fetched_all(&self.fetched);
        }
        self.fetched.clear();
    }

    fn lane_of(&self, msg: &Message) -> usize {
        let lanes = self.pending.len();
        // Partition numbers and lane counts are small: a 32-bit remainder costs a fraction of
        // a 64-bit one, which was a tenth of the dispatch.
        let by_partition = || (msg.partition() as u32 % lanes as u32) as usize;
        match self.ordering {
            Ordering::None => 0,
            Ordering::Partition => by_partition(),
            Ordering::Key => match msg.key() {
                // The hash scaled to the lanes by its high bits: a multiplication rather than
                // a division.
                Some(key) => ((u128::from(key_hash(key)) * lanes as u128) >> 64) as usize,
                None => by_partition(),
            },
        }
    }
}

impl Drop for Dispatcher {
    // Processors finish what is queued, then end.
    fn drop(&mut self) {
        self.lanes.close();
    }
}

/// A key's hash, the same across runs and platforms, with every byte of the key mixed into
/// its high bits. It takes the key eight bytes at a time: a hash of a byte at a time (FNV)
/// chains a multiplication per byte, which was a sixth of the fetch thread's dispatch.
fn key_hash(key: &[u8]) -> u64 {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |hash: u64, word: u64| (hash ^ word).wrapping_mul(MULTIPLIER).rotate_left(29);
    let mut words = key.chunks_exact(8);
    let mut hash = (key.len() as u64).wrapping_mul(MULTIPLIER);
    for word in &mut words {
        hash = mix(
            hash,
            u64::from_le_bytes(word.try_into().unwrap_or_default()),
        );
    }
    let mut tail = [0; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    hash = mix(hash, u64::from_le_bytes(tail));
    // The last step's rotation leaves its product's high bits low: mix them up once more.
    (hash ^ (hash >> 32)).wrapping_mul(MULTIPLIER)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(ordering: Ordering, msgs: &[Message]) -> Vec<usize> {
        let (dispatcher, _lanes) =
            Dispatcher::new(8, ordering, 1000, Arc::default(), Arc::default());
        msgs.iter().map(|m| dispatcher.lane_of(m)).collect()
    }

    #[test]
    fn a_lost_processor_is_seen_whatever_the_ordering() {
        for ordering in [Ordering::Key, Ordering::Partition, Ordering::None] {
            let (dispatcher, mut lanes) =
                Dispatcher::new(4, ordering, 1000, Arc::default(), Arc::default());
            assert!(!dispatcher.processor_lost(), "{ordering:?}");
            drop(lanes.remove(2));
            assert!(dispatcher.processor_lost(), "{ordering:?}");
        }
    }

    /// Offsets a lane was handed, in order, until it closed.
    async fn offsets(mut lane: Lane) -> Vec<i64> {
        let mut offsets = Vec::new();
        let mut runs = Vec::new();
        while lane.next(&mut runs).await {
            let mut emptied = Vec::new();
            for mut run in runs.drain(..) {
                offsets.extend(run.msgs.iter().map(Message::offset));
                run.msgs.clear();
                emptied.push(run.msgs);
            }
            lane.recycle(&mut emptied);
        }
        offsets
    }

    /// A dispatcher with its announcer and a task per lane collecting what it is handed.
    fn start(
        processors: usize,
        ordering: Ordering,
    ) -> (Dispatcher, Vec<tokio::task::JoinHandle<Vec<i64>>>) {
        let (dispatcher, lanes) =
            Dispatcher::new(processors, ordering, 1000, Arc::default(), Arc::default());
        tokio::spawn(announcer(&dispatcher));
        let lanes = lanes
            .into_iter()
            .map(|l| tokio::spawn(offsets(l)))
            .collect();
        (dispatcher, lanes)
    }

    /// What each lane was handed, once the dispatcher is gone and the lanes have ended.
    async fn handed(
        dispatcher: Dispatcher,
        lanes: Vec<tokio::task::JoinHandle<Vec<i64>>>,
    ) -> Vec<Vec<i64>> {
        drop(dispatcher);
        let mut handed = Vec::new();
        for lane in lanes {
            let offsets = tokio::time::timeout(Duration::from_secs(10), lane)
                .await
                .expect("the lane ended")
                .unwrap();
            handed.push(offsets);
        }
        handed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_gets_its_batches_in_order_and_ends_when_the_dispatcher_goes() {
        let (mut dispatcher, lanes) = start(2, Ordering::Partition);
        let (even, odd) = (PartitionState::new(0), PartitionState::new(1));
        for offset in 0..300 {
            dispatcher.dispatch(&even, Message::new("t", 0, offset));
            dispatcher.dispatch(&odd, Message::new("t", 1, offset));
            if offset % 64 == 0 {
                dispatcher.flush();
                // Some hand-offs find the processors waiting, others busy.
                tokio::task::yield_now().await;
            }
        }
        dispatcher.flush();
        assert_eq!(dispatcher.in_flight(), 600);
        for got in handed(dispatcher, lanes).await {
            assert_eq!(got, (0..300).collect::<Vec<_>>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_ordering_every_message_goes_to_exactly_one_processor() {
        let (mut dispatcher, lanes) = start(4, Ordering::None);
        let partition = PartitionState::new(0);
        for offset in 0..1000 {
            dispatcher.dispatch(&partition, Message::new("t", 0, offset));
            if offset % 100 == 0 {
                dispatcher.flush();
                tokio::task::yield_now().await;
            }
        }
        dispatcher.flush();
        let mut got: Vec<i64> = handed(dispatcher, lanes).await.concat();
        got.sort_unstable();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn same_key_same_lane_whatever_the_partition() {
        let msgs: Vec<_> = (0..4)
            .map(|p| Message::new("t", p, 0).with_key("order-7"))
            .collect();
        let lanes = route(Ordering::Key, &msgs);
        assert!(lanes.iter().all(|&l| l == lanes[0]), "{lanes:?}");
    }

    #[test]
    fn keys_spread_over_lanes() {
        let msgs: Vec<_> = (0..64)
            .map(|i| Message::new("t", 0, i).with_key(format!("key-{i}")))
            .collect();
        let mut used = route(Ordering::Key, &msgs);
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn keys_spread_evenly_however_many_lanes() {
        let shapes: [fn(u64) -> String; 4] = [
            |i| format!("order-{i}"),
            |i| format!("key-{}", i % 10_000),
            |i| i.to_string(),
            |i| format!("{:032x}", i * 7919),
        ];
        for processors in [3, 8, 64] {
            let (dispatcher, _lanes) = Dispatcher::new(
                processors,
                Ordering::Key,
                1000,
                Arc::default(),
                Arc::default(),
            );
            for shape in shapes {
                let mut per_lane = vec![0usize; processors];
                for i in 0..64_000 {
                    let msg = Message::new("t", 0, 0).with_key(shape(i));
                    per_lane[dispatcher.lane_of(&msg)] += 1;
                }
                let even = 64_000 / processors;
                assert!(
                    per_lane
                        .iter()
                        .all(|&n| n > even * 8 / 10 && n < even * 12 / 10),
                    "{processors} lanes, keys like {:?}: {per_lane:?}",
                    shape(1)
                );
            }
        }
    }

    #[test]
    fn partition_order_uses_the_partition_only() {
        let msgs = [
            Message::new("t", 3, 0).with_key("a"),
            Message::new("t", 3, 1).with_key("b"),
        ];
        assert_eq!(route(Ordering::Partition, &msgs), vec![3, 3]);
    }
}

//! Routing fetched messages to lanes, and processors taking them: a lane holds the messages
//! that must run one after another (a key's, under key order; a partition's, under partition
//! order), and any processor free takes the next lane with work, one processor per lane at a
//! time. With no ordering, every processor takes from one lane, a message at a time.
//!
//! There are several lanes per processor. Were each processor to own one lane, the processor
//! with the most work would set the pace: keys spread over 64 lanes unevenly, and a run of
//! 200,000 distinct keys put 4% more than the average on the busiest lane, which the other 63
//! processors then waited for. With lanes free to any processor, a lane's surplus is one of
//! many small shares, and idle processors take the other lanes' work meanwhile.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::buffers::BufferPool;
use super::fetch::{RoomWait, BURST};
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

/// Lanes per processor under key or partition order. A batch consumer has one per processor,
/// so that a lane fills a batch rather than a few lanes a part of one each.
const LANES_PER_PROCESSOR: usize = 4;

/// Emptied message vectors kept for reuse at most, per member.
const MAX_SPARE_RUNS: usize = 256;

/// One member's lanes, shared by its dispatcher, its processors and the announcer.
struct Lanes {
    /// Every lane's runs; with no ordering there is one lane.
    lanes: Vec<Mutex<Lane>>,
    /// Under key or partition order, the lanes with runs that no processor holds, in the
    /// order they got them.
    ready: Mutex<VecDeque<usize>>,
    /// Whether every processor takes from lane 0, a run at a time (no ordering).
    shared: bool,
    /// Wakes a processor waiting for work.
    work: Notify,
    /// Lanes made ready (with no ordering, hand-offs) since the announcer last woke
    /// processors for them.
    unannounced: AtomicUsize,
    /// Set when the dispatcher is gone: processors end once no lane has work.
    closed: AtomicBool,
    /// Wakes the announcer after a hand-off.
    handed_off: Notify,
    /// Message vectors the processors emptied, for the dispatcher to fill again.
    spare_runs: Mutex<Vec<Vec<Message>>>,
    room: RoomWait,
    /// A batch consumer's, one per lane under key or partition order: wakes the processor
    /// that holds the lane and waits for more messages to fill its batch.
    fill_wakes: Vec<Notify>,
    /// Lanes given runs while their processor waited for them, for the announcer to wake.
    refilled: Mutex<Vec<usize>>,
}

/// One lane's runs, in order.
#[derive(Default)]
struct Lane {
    runs: VecDeque<Run>,
    /// In the ready queue or held by a processor: the lane is not to be queued again.
    scheduled: bool,
    /// Held by a processor waiting for more messages to fill its batch.
    filling: bool,
}

impl Lanes {
    fn close(&self) {
        self.closed.store(true, AtomicOrdering::Release);
        self.work.notify_waiters();
        self.handed_off.notify_one();
    }
}

/// Wakes processors for the lanes made ready by hand-offs, until the lanes close. It runs as
/// a task of the runtime, so that the wakes are the runtime's own and cost no thread switch.
pub(crate) fn announcer(dispatcher: &Dispatcher) -> impl Future<Output = ()> + Send + 'static {
    let lanes = dispatcher.lanes.clone();
    let processors = dispatcher.processors;
    async move {
        let mut refilled = Vec::new();
        loop {
            let mut handed_off = pin!(lanes.handed_off.notified());
            // Registered before the count is read, so that a hand-off after the read wakes it.
            handed_off.as_mut().enable();
            let ready = lanes.unannounced.swap(0, AtomicOrdering::AcqRel);
            if !lanes.fill_wakes.is_empty() {
                refilled.append(&mut lock(&lanes.refilled));
                for lane in refilled.drain(..) {
                    lanes.fill_wakes[lane].notify_one();
                }
            }
            // A wake with no processor waiting is kept for the next one that looks; the
            // processors that are busy look for the other ready lanes when they are done.
            for _ in 0..ready.min(processors) {
                lanes.work.notify_one();
            }
            if lanes.closed.load(AtomicOrdering::Acquire) {
                return;
            }
            handed_off.await;
        }
    }
}

/// Where a processor takes its jobs from, and the member's in-flight count it releases.
pub(crate) struct Intake {
    lanes: Arc<Lanes>,
    /// The lane whose runs the processor was last given: its own until it asks for more.
    held: Option<usize>,
    in_flight: Arc<AtomicUsize>,
    buffers: Arc<BufferPool>,
    /// The member's count of processors still running.
    processors_alive: Arc<AtomicUsize>,
}

impl Drop for Intake {
    // A processor holds its intake until it ends, whether it returns, panics or is dropped
    // with its runtime.
    fn drop(&mut self) {
        self.processors_alive.fetch_sub(1, AtomicOrdering::Release);
    }
}

impl Intake {
    /// Moves the next runs into `runs`, in order, waiting for one if there is none: every run
    /// queued on the next ready lane, which the processor then holds until it asks again, or
    /// with no ordering one run of the shared lane, so that the other processors take the
    /// next ones. The runs handed out before must be done with. `false` once the dispatcher
    /// is gone and no lane has work.
    pub async fn next(&mut self, runs: &mut Vec<Run>) -> bool {
        self.next_up_to(runs, 1).await
    }

    /// `next`, where with no ordering the runs taken from the shared lane hold up to `limit`
    /// messages (at least one run).
    async fn next_up_to(&mut self, runs: &mut Vec<Run>, limit: usize) -> bool {
        let lanes = &*self.lanes;
        // A lane left with runs goes to the back of the ready queue, behind those waiting.
        let mut put_back = self.held.take().filter(|&held| {
            let mut lane = lock(&lanes.lanes[held]);
            lane.scheduled = !lane.runs.is_empty();
            lane.scheduled
        });
        if let Some(held) = put_back {
            lock(&lanes.ready).push_back(held);
        }
        loop {
            let mut woken = pin!(lanes.work.notified());
            // Registered before the lanes are read, so that a wake after the read is not lost.
            woken.as_mut().enable();
            if lanes.shared {
                let more = {
                    let mut lane = lock(&lanes.lanes[0]);
                    let mut taken = 0;
                    while taken < limit {
                        let Some(run) = lane.runs.pop_front() else {
                            break;
                        };
                        taken += run.msgs.len();
                        runs.push(run);
                    }
                    !lane.runs.is_empty()
                };
                if more {
                    // The announcer wakes one processor for a hand-off's runs; each passes
                    // the wake on while runs are left.
                    lanes.work.notify_one();
                }
            } else {
                let taken = lock(&lanes.ready).pop_front();
                // The lane put back waits for a processor that nothing has woken, unless
                // this one takes it again.
                if put_back
                    .take()
                    .is_some_and(|held| taken.is_some_and(|taken| taken != held))
                {
                    lanes.work.notify_one();
                }
                if let Some(taken) = taken {
                    runs.extend(lock(&lanes.lanes[taken]).runs.drain(..));
                    self.held = Some(taken);
                }
            }
            if !runs.is_empty() {
                return true;
            }
            if lanes.closed.load(AtomicOrdering::Acquire) {
                return false;
            }
            woken.await;
        }
    }

    /// Moves the next batch's first runs into `runs`, as `next` does, then `fill`s them up to
    /// `size` messages until `wait` has passed. Returns when that wait ends, for the runs
    /// taken that do not make a full batch, or `None` once the dispatcher is gone and no lane
    /// has work.
    pub async fn next_batch(
        &mut self,
        runs: &mut Vec<Run>,
        size: usize,
        wait: Duration,
    ) -> Option<tokio::time::Instant> {
        if !self.next_up_to(runs, size).await {
            return None;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let count: usize = runs.iter().map(|run| run.msgs.len()).sum();
        if count < size {
            self.fill(runs, size - count, deadline).await;
        }
        Some(deadline)
    }

    /// Takes more runs into `runs` as they arrive, until they hold `wanted` messages, or
    /// `deadline` passes, or the lanes close: under key or partition order from the lane held
    /// (its processor keeps it meanwhile, so that no other runs the lane's later messages),
    /// with no ordering from the shared lane. A hand-off to the lane wakes the processor
    /// through the announcer: no timer but the deadline's.
    pub async fn fill(
        &mut self,
        runs: &mut Vec<Run>,
        wanted: usize,
        deadline: tokio::time::Instant,
    ) {
        let lanes = self.lanes.clone();
        let wake = match self.held {
            _ if lanes.shared => &lanes.work,
            Some(held) => &lanes.fill_wakes[held],
            None => return,
        };
        let mut expired = pin!(tokio::time::sleep_until(deadline));
        let mut count = 0;
        loop {
            let mut woken = pin!(wake.notified());
            // Registered before the lane is read, so that a hand-off after the read wakes it.
            woken.as_mut().enable();
            count += self.take_more(runs, wanted - count);
            if count >= wanted || lanes.closed.load(AtomicOrdering::Acquire) {
                break;
            }
            tokio::select! {
                () = woken => {}
                () = &mut expired => break,
            }
        }
        if let Some(held) = self.held.filter(|_| !lanes.shared) {
            lock(&lanes.lanes[held]).filling = false;
        }
    }

    /// Whether the dispatcher is gone: no more messages will come.
    pub fn closed(&self) -> bool {
        self.lanes.closed.load(AtomicOrdering::Acquire)
    }

    /// Takes runs of the lane held, or up to `wanted` messages' of the shared lane; returns
    /// how many messages. A held lane that has fewer is marked as filling, for the next
    /// hand-off to it to wake its processor.
    fn take_more(&mut self, runs: &mut Vec<Run>, wanted: usize) -> usize {
        let lanes = &*self.lanes;
        let mut taken = 0;
        if lanes.shared {
            let mut lane = lock(&lanes.lanes[0]);
            while taken < wanted {
                let Some(run) = lane.runs.pop_front() else {
                    break;
                };
                taken += run.msgs.len();
                runs.push(run);
            }
            if !lane.runs.is_empty() {
                // Passed on, as `next_up_to` does, for the runs left.
                lanes.work.notify_one();
            }
        } else if let Some(held) = self.held {
            let mut lane = lock(&lanes.lanes[held]);
            for run in lane.runs.drain(..) {
                taken += run.msgs.len();
                runs.push(run);
            }
            lane.filling = taken < wanted;
        }
        taken
    }

    /// Releases the places in the queue of messages done with, whatever became of them, and
    /// hands their buffers back to the fetch thread, which is woken if it waits for the room.
    pub fn done(&self, buffers: &mut Vec<Vec<u8>>) {
        let released = buffers.len();
        self.buffers.put_all(buffers);
        // Sequentially consistent with the fetch thread's `waiting` and count, so that one of
        // the two sees the other: it does not wait, or it is woken.
        let left = self.in_flight.fetch_sub(released, AtomicOrdering::SeqCst) - released;
        self.lanes.room.made(left);
    }

    /// Gives up the places in the queue of `count` messages that leave it to wait on a hold
    /// (see `holds`), which has room of its own for them.
    pub fn set_aside(&self, count: usize) {
        let left = self.in_flight.fetch_sub(count, AtomicOrdering::SeqCst) - count;
        self.lanes.room.made(left);
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
    /// Lanes that were idle and were given runs in this flush: queued for the processors
    /// once all of them are filled, under one lock of the ready queue.
    made_ready: Vec<usize>,
    /// Lanes given runs in this flush while their processor waited for them.
    refilled: Vec<usize>,
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
    /// Creates the lanes for `processors` processors under this ordering, for a queue of
    /// `capacity` messages, and an intake for each processor; `batching` for a batch
    /// consumer's.
    pub fn new(
        processors: usize,
        ordering: Ordering,
        capacity: usize,
        batching: bool,
        in_flight: Arc<AtomicUsize>,
        buffers: Arc<BufferPool>,
    ) -> (Self, Vec<Intake>) {
        let processors_alive = Arc::new(AtomicUsize::new(processors));
        let shared = ordering == Ordering::None;
        let count = match (shared, batching) {
            (true, _) => 1,
            (false, true) => processors,
            (false, false) => processors * LANES_PER_PROCESSOR,
        };
        let lanes = Arc::new(Lanes {
            lanes: (0..count).map(|_| Mutex::default()).collect(),
            ready: Mutex::new(VecDeque::with_capacity(count)),
            shared,
            work: Notify::new(),
            unannounced: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            handed_off: Notify::new(),
            spare_runs: Mutex::default(),
            room: RoomWait::new(capacity),
            fill_wakes: match (shared, batching) {
                (false, true) => (0..count).map(|_| Notify::new()).collect(),
                _ => Vec::new(),
            },
            refilled: Mutex::default(),
        });
        let intakes = (0..processors)
            .map(|_| Intake {
                lanes: lanes.clone(),
                held: None,
                in_flight: in_flight.clone(),
                buffers: buffers.clone(),
                processors_alive: processors_alive.clone(),
            })
            .collect();
        let dispatcher = Dispatcher {
            pending: (0..count).map(|_| Vec::new()).collect(),
            spare_runs: Vec::new(),
            made_ready: Vec::new(),
            refilled: Vec::new(),
            fetched_partition: None,
            fetched: Vec::new(),
            unsent: 0,
            lanes,
            ordering,
            in_flight,
            processors,
            processors_alive,
        };
        (dispatcher, intakes)
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
        self.lanes.room.wait(&self.in_flight, limit);
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
        for (index, (runs, lane)) in self.pending.iter_mut().zip(&self.lanes.lanes).enumerate() {
            if runs.is_empty() {
                continue;
            }
            // A lane held by a processor that died keeps its runs unhandled until the member
            // stops, which it does on seeing the loss (see `processor_lost`); their offsets
            // stay below the watermark, to be delivered again.
            let mut lane = lock(lane);
            lane.runs.extend(runs.drain(..));
            if !self.lanes.shared && !lane.scheduled {
                lane.scheduled = true;
                self.made_ready.push(index);
            }
            if lane.filling {
                lane.filling = false;
                self.refilled.push(index);
            }
            handed_off = true;
        }
        if !handed_off {
            return;
        }
        let woken = if self.lanes.shared {
            1
        } else {
            let made_ready = self.made_ready.len();
            lock(&self.lanes.ready).extend(self.made_ready.drain(..));
            made_ready
        };
        let refilled = !self.refilled.is_empty();
        if refilled {
            lock(&self.lanes.refilled).append(&mut self.refilled);
        }
        if woken > 0 || refilled {
            self.lanes
                .unannounced
                .fetch_add(woken, AtomicOrdering::AcqRel);
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
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn route(ordering: Ordering, msgs: &[Message]) -> Vec<usize> {
        let (dispatcher, _intakes) =
            Dispatcher::new(8, ordering, 1000, false, Arc::default(), Arc::default());
        msgs.iter().map(|m| dispatcher.lane_of(m)).collect()
    }

    #[test]
    fn a_lost_processor_is_seen_whatever_the_ordering() {
        for ordering in [Ordering::Key, Ordering::Partition, Ordering::None] {
            let (dispatcher, mut intakes) =
                Dispatcher::new(4, ordering, 1000, false, Arc::default(), Arc::default());
            assert!(!dispatcher.processor_lost(), "{ordering:?}");
            drop(intakes.remove(2));
            assert!(dispatcher.processor_lost(), "{ordering:?}");
        }
    }

    /// A message taken up: its partition, offset and key.
    type TakenUp = (i32, i64, Option<Vec<u8>>);

    /// The messages every processor took up, in the order they were taken up, and what must
    /// run one at a time that runs now.
    #[derive(Default)]
    struct Taken {
        log: Mutex<Vec<TakenUp>>,
        running: Mutex<HashSet<Vec<u8>>>,
    }

    impl Taken {
        fn offsets_where(&self, wanted: impl Fn(i32, Option<&[u8]>) -> bool) -> Vec<i64> {
            let log = lock(&self.log);
            log.iter()
                .filter(|(partition, _, key)| wanted(*partition, key.as_deref()))
                .map(|(_, offset, _)| *offset)
                .collect()
        }

        fn offsets_of(&self, partition: i32) -> Vec<i64> {
            self.offsets_where(|p, _| p == partition)
        }
    }

    /// What must run one at a time under `ordering`: the message's key (its partition when
    /// it has none), its partition, or nothing.
    fn order_unit(ordering: Ordering, msg: &Message) -> Option<Vec<u8>> {
        let partition = || msg.partition().to_be_bytes().to_vec();
        match ordering {
            Ordering::Key => Some(msg.key().map_or_else(partition, <[u8]>::to_vec)),
            Ordering::Partition => Some(partition()),
            Ordering::None => None,
        }
    }

    /// A processor of these tests: takes up each message it is handed, yields as handlers
    /// that wait would, and checks that nothing else that must run one at a time with it
    /// runs meanwhile. It stops for good at the offset `stuck_at`.
    async fn process(
        mut intake: Intake,
        taken: Arc<Taken>,
        ordering: Ordering,
        stuck_at: Option<i64>,
    ) -> usize {
        let mut handled = 0;
        let mut runs = Vec::new();
        while intake.next(&mut runs).await {
            let mut emptied = Vec::new();
            for mut run in runs.drain(..) {
                for msg in run.msgs.drain(..) {
                    let key = msg.key().map(<[u8]>::to_vec);
                    lock(&taken.log).push((msg.partition(), msg.offset(), key));
                    if Some(msg.offset()) == stuck_at {
                        std::future::pending::<()>().await;
                    }
                    let unit = order_unit(ordering, &msg);
                    if let Some(unit) = &unit {
                        let first = lock(&taken.running).insert(unit.clone());
                        assert!(first, "two messages of {unit:?} ran at once");
                    }
                    // Long enough for hand-offs to come in while the message runs.
                    tokio::time::sleep(Duration::from_micros(100)).await;
                    if let Some(unit) = &unit {
                        lock(&taken.running).remove(unit);
                    }
                    handled += 1;
                }
                emptied.push(run.msgs);
            }
            intake.recycle(&mut emptied);
        }
        handled
    }

    /// A dispatcher with its announcer and a task per processor.
    fn start(
        processors: usize,
        ordering: Ordering,
        stuck_at: Option<i64>,
    ) -> (Dispatcher, Arc<Taken>, Vec<tokio::task::JoinHandle<usize>>) {
        let (dispatcher, intakes) = Dispatcher::new(
            processors,
            ordering,
            1000,
            false,
            Arc::default(),
            Arc::default(),
        );
        tokio::spawn(announcer(&dispatcher));
        let taken = Arc::new(Taken::default());
        let tasks = intakes
            .into_iter()
            .map(|intake| tokio::spawn(process(intake, taken.clone(), ordering, stuck_at)))
            .collect();
        (dispatcher, taken, tasks)
    }

    /// How many messages each processor handled, once the dispatcher is gone and the
    /// processors have ended.
    async fn handled(
        dispatcher: Dispatcher,
        tasks: Vec<tokio::task::JoinHandle<usize>>,
    ) -> Vec<usize> {
        drop(dispatcher);
        let mut handled = Vec::new();
        for task in tasks {
            let count = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the processor ended")
                .unwrap();
            handled.push(count);
        }
        handled
    }

    /// A batch that is not full is completed by the next hand-off to its lane, long before its
    /// wait ends: the hand-off wakes the processor, which polls no timer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_off_completes_a_waiting_batch_at_once() {
        for ordering in [Ordering::Key, Ordering::Partition, Ordering::None] {
            let (mut dispatcher, mut intakes) =
                Dispatcher::new(1, ordering, 1000, true, Arc::default(), Arc::default());
            tokio::spawn(announcer(&dispatcher));
            let mut intake = intakes.remove(0);
            let batch = tokio::spawn(async move {
                let mut runs = Vec::new();
                let started = tokio::time::Instant::now();
                intake
                    .next_batch(&mut runs, 10, Duration::from_secs(30))
                    .await
                    .expect("a batch");
                let count: usize = runs.iter().map(|run| run.msgs.len()).sum();
                (count, started.elapsed())
            });
            let partition = PartitionState::new(0);
            for offset in 0..4 {
                let msg = Message::new("t", 0, offset).with_key("k");
                dispatcher.dispatch(&partition, msg);
            }
            dispatcher.flush();
            // The processor has taken the first four, and waits for more.
            tokio::time::sleep(Duration::from_millis(50)).await;
            for offset in 4..10 {
                let msg = Message::new("t", 0, offset).with_key("k");
                dispatcher.dispatch(&partition, msg);
            }
            dispatcher.flush();
            let (count, took) = tokio::time::timeout(Duration::from_secs(5), batch)
                .await
                .expect("the batch was handed over before its wait ended")
                .unwrap();
            assert_eq!(count, 10, "{ordering:?}");
            assert!(took < Duration::from_secs(5), "{ordering:?}: {took:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_runs_in_order_one_message_at_a_time_whichever_processor_takes_it() {
        let (mut dispatcher, taken, tasks) = start(3, Ordering::Partition, None);
        let partitions: Vec<_> = (0..4).map(PartitionState::new).collect();
        for offset in 0..300 {
            for (number, partition) in partitions.iter().enumerate() {
                dispatcher.dispatch(partition, Message::new("t", number as i32, offset));
            }
            if offset % 64 == 0 {
                dispatcher.flush();
                // Some hand-offs find the processors waiting, others busy.
                tokio::task::yield_now().await;
            }
        }
        dispatcher.flush();
        assert_eq!(dispatcher.in_flight(), 1200);
        let handled = handled(dispatcher, tasks).await;
        assert_eq!(handled.iter().sum::<usize>(), 1200);
        for partition in 0..4 {
            assert_eq!(taken.offsets_of(partition), (0..300).collect::<Vec<_>>());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_runs_in_order_one_message_at_a_time_across_partitions_and_processors() {
        let (mut dispatcher, taken, tasks) = start(8, Ordering::Key, None);
        let partitions: Vec<_> = (0..2).map(PartitionState::new).collect();
        let key_of = |offset: i64| format!("key-{}", offset % 40);
        for offset in 0..2000 {
            let number = (offset / 7 % 2) as i32;
            let msg = Message::new("t", number, offset).with_key(key_of(offset));
            dispatcher.dispatch(&partitions[number as usize], msg);
            if offset % 50 == 0 {
                dispatcher.flush();
                // Hand-offs keep coming while the processors are in the middle of their lanes.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        dispatcher.flush();
        let handled = handled(dispatcher, tasks).await;
        assert_eq!(handled.iter().sum::<usize>(), 2000);
        for k in 0..40 {
            let key = key_of(k);
            let got = taken.offsets_where(|_, got| got == Some(key.as_bytes()));
            let sent: Vec<i64> = (0..2000).filter(|o| key_of(*o) == key).collect();
            assert_eq!(got, sent, "{key}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_message_holds_up_its_own_lane_and_no_other() {
        let (mut dispatcher, taken, _tasks) = start(2, Ordering::Key, Some(0));
        let partition = PartitionState::new(0);
        let msgs: Vec<_> = (0..200)
            .map(|offset| Message::new("t", 0, offset).with_key(format!("key-{offset}")))
            .collect();
        let stuck_lane = dispatcher.lane_of(&msgs[0]);
        let expected: Vec<i64> = msgs
            .iter()
            .filter(|m| m.offset() == 0 || dispatcher.lane_of(m) != stuck_lane)
            .map(Message::offset)
            .collect();
        assert!(expected.len() > 150, "{} lanes", dispatcher.pending.len());
        for msg in msgs {
            dispatcher.dispatch(&partition, msg);
        }
        dispatcher.flush();
        // One of the two processors waits for good on offset 0; the other handles the rest
        // of every other lane, as each lane is free to any processor.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = taken.offsets_of(0);
            got.sort_unstable();
            if got == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "handled {} of the {} messages outside the waiting lane",
                got.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_ordering_every_message_goes_to_exactly_one_processor() {
        let (mut dispatcher, taken, tasks) = start(4, Ordering::None, None);
        let partition = PartitionState::new(0);
        for offset in 0..1000 {
            dispatcher.dispatch(&partition, Message::new("t", 0, offset));
            if offset % 100 == 0 {
                dispatcher.flush();
                tokio::task::yield_now().await;
            }
        }
        dispatcher.flush();
        let handled = handled(dispatcher, tasks).await;
        assert_eq!(handled.iter().sum::<usize>(), 1000);
        let mut got = taken.offsets_of(0);
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
    fn keys_spread_over_every_lane() {
        let msgs: Vec<_> = (0..1000)
            .map(|i| Message::new("t", 0, i).with_key(format!("key-{i}")))
            .collect();
        let mut used = route(Ordering::Key, &msgs);
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 8 * LANES_PER_PROCESSOR);
    }

    #[test]
    fn keys_spread_evenly_however_many_lanes() {
        let shapes: [fn(u64) -> String; 4] = [
            |i| format!("order-{i}"),
            |i| format!("key-{}", i % 10_000),
            |i| i.to_string(),
            |i| format!("{:032x}", i * 7919),
        ];
        for processors in [3, 8, 16] {
            let (dispatcher, _intakes) = Dispatcher::new(
                processors,
                Ordering::Key,
                1000,
                false,
                Arc::default(),
                Arc::default(),
            );
            let lanes = dispatcher.pending.len();
            for shape in shapes {
                let mut per_lane = vec![0usize; lanes];
                for i in 0..lanes as u64 * 1000 {
                    let msg = Message::new("t", 0, 0).with_key(shape(i));
                    per_lane[dispatcher.lane_of(&msg)] += 1;
                }
                assert!(
                    per_lane.iter().all(|&n| n > 800 && n < 1200),
                    "{lanes} lanes, keys like {:?}: {per_lane:?}",
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

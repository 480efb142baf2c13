//! Routing fetched messages to processor lanes: by key for per-key order, by partition for
//! strict partition order, or to any free processor when order does not matter.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex;

use super::buffers::BufferPool;
use super::fetch::BURST;
use super::offsets::PartitionState;
use crate::conf::Ordering;
use crate::message::Message;

/// Consecutive messages of one partition on their way to a processor, with the partition
/// state they report back to: one shared reference per run rather than per message. Each
/// message counts as in flight from `dispatch` until its processor is done with it.
pub(crate) struct Run {
    pub partition: Arc<PartitionState>,
    pub msgs: Vec<Message>,
}

/// Runs sent to a lane together, in order.
pub(crate) type Batch = Vec<Run>;

/// Where a processor takes its jobs from, and the member's in-flight count it releases.
pub(crate) struct Lane {
    jobs: LaneJobs,
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

enum LaneJobs {
    /// Its own queue: the jobs routed to it, in order.
    Own(UnboundedReceiver<Batch>),
    /// A queue shared by every processor (no ordering); its batches hold one message each,
    /// so that any free processor takes the next message.
    Shared(Arc<Mutex<UnboundedReceiver<Batch>>>),
}

impl Lane {
    pub async fn next(&mut self) -> Option<Batch> {
        match &mut self.jobs {
            LaneJobs::Own(jobs) => jobs.recv().await,
            LaneJobs::Shared(jobs) => jobs.lock().await.recv().await,
        }
    }

    /// Releases the places in the queue of messages done with, whatever became of them, and
    /// hands their buffers back to the fetch thread.
    pub fn done(&self, buffers: &mut Vec<Vec<u8>>) {
        self.in_flight
            .fetch_sub(buffers.len(), AtomicOrdering::AcqRel);
        self.buffers.put_all(buffers);
    }
}

/// The sending side of the lanes. Messages gather per lane until `flush`.
pub(crate) struct Dispatcher {
    lanes: Vec<UnboundedSender<Batch>>,
    pending: Vec<Batch>,
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
    /// Creates `processors` lanes for this ordering.
    pub fn new(
        processors: usize,
        ordering: Ordering,
        in_flight: Arc<AtomicUsize>,
        buffers: Arc<BufferPool>,
    ) -> (Self, Vec<Lane>) {
        let processors_alive = Arc::new(AtomicUsize::new(processors));
        let lane = |jobs| Lane {
            jobs,
            in_flight: in_flight.clone(),
            buffers: buffers.clone(),
            processors_alive: processors_alive.clone(),
        };
        let (lanes, receivers) = if ordering == Ordering::None {
            let (tx, rx) = unbounded_channel();
            let rx = Arc::new(Mutex::new(rx));
            let receivers = (0..processors)
                .map(|_| lane(LaneJobs::Shared(rx.clone())))
                .collect();
            (vec![tx], receivers)
        } else {
            (0..processors)
                .map(|_| {
                    let (tx, rx) = unbounded_channel();
                    (tx, lane(LaneJobs::Own(rx)))
                })
                .unzip()
        };
        let dispatcher = Dispatcher {
            pending: (0..lanes.len()).map(|_| Vec::new()).collect(),
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

    /// Adds the message to its lane's next batch.
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
        if self.ordering == Ordering::None {
            self.record_fetched();
            self.in_flight.fetch_add(1, AtomicOrdering::AcqRel);
            let run = Run {
                partition: partition.clone(),
                msgs: vec![msg],
            };
            self.send(0, vec![run]);
            return;
        }
        let lane = self.lane_of(&msg);
        let lane = &mut self.pending[lane];
        match lane.last_mut() {
            Some(run) if Arc::ptr_eq(&run.partition, partition) => {
                self.unsent += 1;
                run.msgs.push(msg);
            }
            _ => {
                self.unsent += 1;
                // Sized for a lane's share of a burst, so that a run is not copied as it grows.
                let mut msgs = Vec::with_capacity(BURST.div_ceil(self.lanes.len()));
                msgs.push(msg);
                lane.push(Run {
                    partition: partition.clone(),
                    msgs,
                });
            }
        }
    }

    /// Records what was dispatched as fetched, then sends every lane its batch.
    pub fn flush(&mut self) {
        self.record_fetched();
        // Counted before any processor can see them, so that the count never goes below zero.
        if self.unsent > 0 {
            self.in_flight
                .fetch_add(std::mem::take(&mut self.unsent), AtomicOrdering::AcqRel);
        }
        for lane in 0..self.pending.len() {
            if !self.pending[lane].is_empty() {
                let batch = std::mem::take(&mut self.pending[lane]);
                self.send(lane, batch);
            }
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

    fn send(&self, lane: usize, batch: Batch) {
        // Only a dead processor drops its lane's receiver (see `processor_lost`). The messages
        // are dropped unhandled; their offsets stay below the watermark, to be delivered again.
        let _ = self.lanes[lane].send(batch);
    }

    fn lane_of(&self, msg: &Message) -> usize {
        let lanes = self.lanes.len() as u64;
        let by_partition = || msg.partition() as u64 % lanes;
        let lane = match self.ordering {
            Ordering::None => 0,
            Ordering::Partition => by_partition(),
            Ordering::Key => match msg.key() {
                Some(key) => fnv1a(key) % lanes,
                None => by_partition(),
            },
        };
        lane as usize
    }
}

/// FNV-1a: fast on short keys and stable across runs and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ordering: Ordering, msgs: &[Message]) -> Vec<usize> {
        let (dispatcher, _lanes) =
            Dispatcher::new(8, ordering, Arc::new(AtomicUsize::new(0)), Arc::default());
        msgs.iter().map(|m| dispatcher.lane_of(m)).collect()
    }

    #[test]
    fn a_lost_processor_is_seen_whatever_the_ordering() {
        for ordering in [Ordering::Key, Ordering::Partition, Ordering::None] {
            let (dispatcher, mut lanes) =
                Dispatcher::new(4, ordering, Arc::new(AtomicUsize::new(0)), Arc::default());
            assert!(!dispatcher.processor_lost(), "{ordering:?}");
            drop(lanes.remove(2));
            assert!(dispatcher.processor_lost(), "{ordering:?}");
        }
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
    fn partition_order_uses_the_partition_only() {
        let msgs = [
            Message::new("t", 3, 0).with_key("a"),
            Message::new("t", 3, 1).with_key("b"),
        ];
        assert_eq!(route(Ordering::Partition, &msgs), vec![3, 3]);
    }
}

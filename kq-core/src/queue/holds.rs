//! Holds: a message that failed and waits to run again holds only what must run after it —
//! the messages of its key under key order, of its partition under partition order, nothing
//! under no order — while its lane's other messages run on.
//!
//! The failed message leaves its processor for a task of its own (see `processor::run_held`),
//! which retries it under the error policy, then runs the messages set aside behind it, in
//! order, and releases the hold once none are left. A processor that meets a message of a
//! held key sets it aside behind the hold. What is set aside gives up its place in the queue
//! (`QueueCapacity`), so that a held key does not stop the member from taking the other keys'
//! messages; it is bounded on its own, by `Hold.Messages` and `Hold.Bytes`. A processor that
//! would go past them waits, holding its lane, until a hold gives back room.
//!
//! The held message's offset stays unfinished, so the committed watermark stays below it; the
//! offsets finished above it travel in the commit's metadata (see `offset_map`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::offsets::PartitionState;
use crate::conf::{HoldConf, Ordering};
use crate::message::Message;
use crate::sync::lock;

/// What runs in order: a key's messages (a message without a key: its partition's), or a
/// partition's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Key(Box<[u8]>),
    Partition(i32),
}

impl Unit {
    /// What `msg` runs in order with under `ordering`; nothing under no order.
    pub fn of(ordering: Ordering, msg: &Message) -> Option<Unit> {
        match ordering {
            Ordering::None => None,
            Ordering::Partition => Some(Unit::Partition(msg.partition())),
            Ordering::Key => Some(match msg.key() {
                Some(key) => Unit::Key(key.into()),
                None => Unit::Partition(msg.partition()),
            }),
        }
    }
}

/// A message set aside, with its partition.
pub(crate) struct Waiting {
    pub msg: Message,
    pub partition: Arc<PartitionState>,
}

/// One member's holds.
pub(crate) struct Holds {
    /// Each held unit's messages waiting behind its held one, in order.
    held: Mutex<HashMap<Unit, VecDeque<Waiting>>>,
    /// Units held, readable without the lock: none, nearly always.
    units: AtomicUsize,
    /// Messages out of the queue on holds' account: held ones and those waiting behind them.
    messages: AtomicUsize,
    bytes: AtomicUsize,
    limits: HoldConf,
    /// Wakes processors waiting for room.
    room: Notify,
    /// Set when a held message's task died: what it held can never finish.
    lost: AtomicBool,
}

impl Holds {
    pub fn new(limits: HoldConf) -> Arc<Holds> {
        Arc::new(Holds {
            held: Mutex::default(),
            units: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            limits,
            room: Notify::new(),
            lost: AtomicBool::new(false),
        })
    }

    /// A held message's task died, as a processor may: its member must stop (see
    /// `Dispatcher::processor_lost`).
    pub fn lose(&self) {
        self.lost.store(true, AtomicOrdering::Release);
    }

    /// Whether a held message's task died.
    pub fn lost(&self) -> bool {
        self.lost.load(AtomicOrdering::Acquire)
    }

    /// Whether no unit is held: the common case, read without a lock.
    pub fn none(&self) -> bool {
        self.units.load(AtomicOrdering::Acquire) == 0
    }

    /// Messages out of the queue on holds' account now.
    pub fn messages(&self) -> usize {
        self.messages.load(AtomicOrdering::Acquire)
    }

    /// Whether `unit` is held.
    pub fn is_held(&self, unit: &Unit) -> bool {
        !self.none() && lock(&self.held).contains_key(unit)
    }

    /// Sets `waiting` aside behind its unit's hold, or gives it back when the unit is not
    /// held. The caller has taken room for it (`take_room`).
    pub fn set_aside(&self, unit: &Unit, waiting: Waiting) -> Result<(), Waiting> {
        match lock(&self.held).get_mut(unit) {
            Some(queue) => {
                queue.push_back(waiting);
                Ok(())
            }
            None => Err(waiting),
        }
    }

    /// Holds `unit`, whose failed message a task of its own now retries. The caller has taken
    /// room for the message.
    pub fn hold(&self, unit: Unit) {
        let mut held = lock(&self.held);
        if held.insert(unit, VecDeque::new()).is_none() {
            self.units.fetch_add(1, AtomicOrdering::AcqRel);
        }
    }

    /// The next message waiting behind `unit`'s hold; `None` releases the hold.
    pub fn next(&self, unit: &Unit) -> Option<Waiting> {
        let mut held = lock(&self.held);
        let next = held.get_mut(unit).and_then(VecDeque::pop_front);
        if next.is_none() && held.remove(unit).is_some() {
            self.units.fetch_sub(1, AtomicOrdering::AcqRel);
        }
        next
    }

    /// Takes room for a message of `bytes` out of the queue, waiting while the holds are at
    /// their bounds. One message always fits when nothing is out, whatever its size.
    /// `false` if `stopping` ends the wait first.
    pub async fn take_room(&self, bytes: usize, stopping: impl std::future::Future) -> bool {
        let mut stopping = std::pin::pin!(stopping);
        loop {
            let mut freed = std::pin::pin!(self.room.notified());
            freed.as_mut().enable();
            if self.try_take(bytes) {
                return true;
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = &mut stopping => return false,
            }
        }
    }

    fn try_take(&self, bytes: usize) -> bool {
        let messages = self.messages.load(AtomicOrdering::Acquire);
        let taken = self.bytes.load(AtomicOrdering::Acquire);
        let fits = messages == 0
            || (messages < self.limits.messages && taken + bytes <= self.limits.bytes);
        if fits {
            self.messages.fetch_add(1, AtomicOrdering::AcqRel);
            self.bytes.fetch_add(bytes, AtomicOrdering::AcqRel);
        }
        fits
    }

    /// Gives back the room of a message done with.
    pub fn give_back(&self, bytes: usize) {
        self.messages.fetch_sub(1, AtomicOrdering::AcqRel);
        self.bytes.fetch_sub(bytes, AtomicOrdering::AcqRel);
        self.room.notify_waiters();
    }
}

/// A message's size on holds' account: its key and value.
pub(crate) fn size_of(msg: &Message) -> usize {
    msg.key().map_or(0, <[u8]>::len) + msg.value().map_or(0, <[u8]>::len)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(messages: usize, bytes: usize) -> HoldConf {
        HoldConf { messages, bytes }
    }

    fn waiting(offset: i64, key: &str) -> Waiting {
        Waiting {
            msg: Message::new("t", 0, offset).with_key(key),
            partition: PartitionState::new(0),
        }
    }

    #[test]
    fn a_unit_is_what_runs_in_order() {
        let keyed = Message::new("t", 3, 0).with_key("k");
        let unkeyed = Message::new("t", 3, 0);
        assert_eq!(
            Unit::of(Ordering::Key, &keyed),
            Some(Unit::Key(b"k"[..].into()))
        );
        assert_eq!(Unit::of(Ordering::Key, &unkeyed), Some(Unit::Partition(3)));
        assert_eq!(
            Unit::of(Ordering::Partition, &keyed),
            Some(Unit::Partition(3))
        );
        assert_eq!(Unit::of(Ordering::None, &keyed), None);
    }

    #[test]
    fn messages_wait_behind_their_held_unit_in_order_and_the_hold_ends_with_them() {
        let holds = Holds::new(limits(10, 1000));
        let unit = Unit::Key(b"k"[..].into());
        assert!(holds.none());
        assert!(holds.set_aside(&unit, waiting(1, "k")).is_err(), "not held");
        holds.hold(unit.clone());
        assert!(holds.is_held(&unit));
        assert!(!holds.is_held(&Unit::Key(b"other"[..].into())));
        for offset in 1..4 {
            assert!(holds.set_aside(&unit, waiting(offset, "k")).is_ok());
        }
        let order: Vec<i64> = std::iter::from_fn(|| holds.next(&unit))
            .map(|w| w.msg.offset())
            .collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(holds.none(), "released once empty");
        assert!(holds.set_aside(&unit, waiting(4, "k")).is_err());
    }

    #[tokio::test]
    async fn room_is_bounded_by_messages_and_bytes_and_given_back() {
        let holds = Holds::new(limits(2, 100));
        let never = std::future::pending::<()>;
        assert!(holds.take_room(500, never()).await, "one always fits");
        assert!(!holds.try_take(1), "the bytes are spent");
        holds.give_back(500);
        assert!(holds.take_room(40, never()).await);
        assert!(holds.take_room(40, never()).await);
        assert_eq!(holds.messages(), 2);
        assert!(!holds.try_take(1), "the messages are spent");
        // A waiter is woken when room comes back, and a stop ends a wait.
        let stopped = tokio::time::sleep(Duration::from_millis(20));
        assert!(!holds.take_room(1, stopped).await);
        let holds = Arc::new(holds);
        let waiter = tokio::spawn({
            let holds = holds.clone();
            async move { holds.take_room(10, never()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        holds.give_back(40);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap());
    }
}

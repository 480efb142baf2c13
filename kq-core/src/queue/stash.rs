//! Messages taken from librdkafka and waiting for room in the queue, in one line per
//! partition: a partition without room holds up none of the others, and every partition with
//! messages waiting gets its share of the room.
//!
//! librdkafka hands over a fetch response a partition at a time, often thousands of one
//! partition's messages in a row. Taking them only as room frees would fill `QueueCapacity`
//! with that partition's messages, and under partition order one lane would work while the
//! others sat idle until the loop got through them. The stash reads ahead past them, up to a
//! bound of its own in bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use super::offsets::PartitionState;

/// What a stashed message counts for besides its key and value: librdkafka's record of it.
pub(super) const OVERHEAD_BYTES: usize = 128;

/// Messages waiting for room, per partition, in the order they were taken.
pub(super) struct Stash<T> {
    lines: Vec<Line<T>>,
    /// The line offered a share first in the next round: each round starts one further on,
    /// so that no partition always comes first.
    first: usize,
    len: usize,
    bytes: usize,
    max_bytes: usize,
}

/// One partition's waiting messages, each with the bytes it counts for.
struct Line<T> {
    partition: Arc<PartitionState>,
    items: VecDeque<(T, usize)>,
}

impl<T> Stash<T> {
    /// A stash that is full from `max_bytes` on.
    pub fn new(max_bytes: usize) -> Self {
        Stash {
            lines: Vec::new(),
            first: 0,
            len: 0,
            bytes: 0,
            max_bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds its bound's worth: nothing more is taken until some goes.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// Adds a message of `partition` that counts for `bytes`, behind the others of its
    /// partition.
    pub fn push(&mut self, partition: &Arc<PartitionState>, item: T, bytes: usize) {
        self.bytes += bytes;
        self.len += 1;
        // Consecutive messages are mostly of one partition: the last line first.
        if let Some(line) = self
            .lines
            .iter_mut()
            .rev()
            .find(|line| Arc::ptr_eq(&line.partition, partition))
        {
            line.items.push_back((item, bytes));
            return;
        }
        self.lines.push(Line {
            partition: partition.clone(),
            items: VecDeque::from([(item, bytes)]),
        });
    }

    /// Offers up to `budget` messages to `offer`, in each partition's order: first an equal
    /// share to every partition with messages waiting, then what some left to the others.
    /// `offer` hands a message back when its partition has no room, and that partition is
    /// offered nothing more this round. Messages of revoked partitions are dropped unoffered:
    /// the partition's next owner reads them again. Returns how many `offer` took.
    pub fn serve(
        &mut self,
        budget: usize,
        mut offer: impl FnMut(&Arc<PartitionState>, T) -> Result<(), T>,
    ) -> usize {
        let (mut dropped, mut dropped_bytes) = (0, 0);
        self.lines.retain(|line| {
            let revoked = line.partition.is_revoked();
            if revoked {
                dropped += line.items.len();
                dropped_bytes += line.items.iter().map(|(_, bytes)| bytes).sum::<usize>();
            }
            !revoked
        });
        self.len -= dropped;
        self.bytes -= dropped_bytes;
        let count = self.lines.len();
        if count == 0 || budget == 0 {
            return 0;
        }
        let first = self.first % count;
        self.first = first + 1;
        let share = budget.div_ceil(count);
        let mut taken = 0;
        let mut refused = vec![false; count];
        for limit in [share, budget] {
            for turn in 0..count {
                let at = (first + turn) % count;
                if refused[at] {
                    continue;
                }
                let line = &mut self.lines[at];
                let mut given = 0;
                while given < limit && taken < budget {
                    let Some((item, bytes)) = line.items.pop_front() else {
                        break;
                    };
                    match offer(&line.partition, item) {
                        Ok(()) => {
                            given += 1;
                            taken += 1;
                            self.len -= 1;
                            self.bytes -= bytes;
                        }
                        Err(item) => {
                            line.items.push_front((item, bytes));
                            refused[at] = true;
                            break;
                        }
                    }
                }
            }
        }
        self.lines.retain(|line| !line.items.is_empty());
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `budget`, with `room` places per partition; returns (partition, item) in the
    /// order offered and taken.
    fn serve(stash: &mut Stash<u32>, budget: usize, room: &mut [usize]) -> Vec<(i32, u32)> {
        let mut out = Vec::new();
        stash.serve(budget, |partition, item| {
            let left = &mut room[partition.partition() as usize];
            if *left == 0 {
                return Err(item);
            }
            *left -= 1;
            out.push((partition.partition(), item));
            Ok(())
        });
        out
    }

    fn filled(partitions: &[Arc<PartitionState>], counts: &[u32]) -> Stash<u32> {
        let mut stash = Stash::new(1_000_000);
        for (partition, &count) in partitions.iter().zip(counts) {
            for item in 0..count {
                stash.push(partition, item, 10);
            }
        }
        stash
    }

    #[test]
    fn each_partition_waiting_gets_a_share_and_the_rest_goes_to_those_with_more() {
        let partitions: Vec<_> = (0..3).map(PartitionState::new).collect();
        let mut stash = filled(&partitions, &[50, 5, 0]);
        let served = serve(&mut stash, 40, &mut [100, 100, 100]);
        // Two partitions wait: a share of 20 each; partition 1 has only 5, so partition 0
        // takes the 15 it left. Each partition's messages come in order.
        let of = |p: i32| -> Vec<u32> {
            served
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, i)| *i)
                .collect()
        };
        assert_eq!(of(0), (0..35).collect::<Vec<_>>());
        assert_eq!(of(1), (0..5).collect::<Vec<_>>());
        assert_eq!(serve(&mut stash, 40, &mut [100, 100, 100]).len(), 15);
        assert!(stash.is_empty());
    }

    #[test]
    fn a_partition_without_room_holds_up_none_of_the_others() {
        let partitions: Vec<_> = (0..2).map(PartitionState::new).collect();
        let mut stash = filled(&partitions, &[10, 10]);
        let served = serve(&mut stash, 20, &mut [3, 100]);
        assert_eq!(served.iter().filter(|(p, _)| *p == 0).count(), 3);
        assert_eq!(served.iter().filter(|(p, _)| *p == 1).count(), 10);
        // What partition 0 could not take waits, in order, for its room.
        let later = serve(&mut stash, 20, &mut [100, 100]);
        assert_eq!(later, (3..10).map(|i| (0, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_round_starts_with_another_partition_each_time() {
        let partitions: Vec<_> = (0..2).map(PartitionState::new).collect();
        let mut stash = filled(&partitions, &[10, 10]);
        let turns: Vec<i32> = (0..4)
            .flat_map(|_| serve(&mut stash, 1, &mut [100, 100]))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(turns, vec![0, 1, 0, 1]);
    }

    #[test]
    fn it_is_full_at_its_bound_and_drops_what_a_revoked_partition_left() {
        let partitions: Vec<_> = (0..2).map(PartitionState::new).collect();
        let mut stash = Stash::new(100);
        for item in 0..5 {
            stash.push(&partitions[0], item, 10);
            stash.push(&partitions[1], item, 10);
        }
        assert!(stash.is_full());
        partitions[0].revoke();
        let served = serve(&mut stash, 100, &mut [100, 100]);
        assert_eq!(served, (0..5).map(|i| (1, i)).collect::<Vec<_>>());
        assert!(stash.is_empty() && !stash.is_full());
        assert_eq!(stash.len(), 0);
    }
}

//! Message buffers handed back from the processors to the fetch thread.
//!
//! Every message's key and value are copied out of librdkafka into a buffer allocated on the
//! fetch thread and freed on a processor. With glibc's allocator each such pair takes an
//! arena lock on both threads; reusing the buffers makes it one lock per run of messages.

use std::sync::{Mutex, MutexGuard};

use crate::sync::lock;

/// Buffers larger than this are freed, not kept: large messages are rare, and their copy
/// costs more than their allocation.
const MAX_KEPT_CAPACITY: usize = 4096;
/// At most this many buffers wait to be reused (at most 4 MiB), whatever `QueueCapacity` is.
const MAX_KEPT: usize = 1024;

/// The buffers waiting for reuse, shared by one member's fetch thread and its processors.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    fn free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A Vec of buffers is whole at every point a panic could happen.
        lock(&self.free)
    }

    /// Moves every waiting buffer into `spare`, which the fetch thread drains before asking
    /// again.
    pub fn take_all(&self, spare: &mut Vec<Vec<u8>>) {
        spare.append(&mut self.free());
    }

    /// Keeps the buffers of `returned` worth keeping, up to the pool's bound; frees the rest.
    pub fn put_all(&self, returned: &mut Vec<Vec<u8>>) {
        returned.retain(|buffer| buffer.capacity() <= MAX_KEPT_CAPACITY);
        let mut free = self.free();
        let room = MAX_KEPT.saturating_sub(free.len());
        let keep = returned.len().min(room);
        free.extend(returned.drain(..keep));
        drop(free);
        returned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_small_buffers_up_to_the_bound() {
        let pool = BufferPool::default();
        let mut returned: Vec<Vec<u8>> = (0..MAX_KEPT + 10)
            .map(|_| Vec::with_capacity(100))
            .collect();
        returned.push(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        pool.put_all(&mut returned);
        assert!(returned.is_empty());
        let mut spare = Vec::new();
        pool.take_all(&mut spare);
        assert_eq!(spare.len(), MAX_KEPT);
        assert!(spare.iter().all(|b| b.capacity() <= MAX_KEPT_CAPACITY));
    }
}

//! Processors of a batch consumer: each takes a lane's messages in batches of up to
//! `Batch.Size`, waiting up to `Batch.Wait` for a batch to fill, and runs the handler once per
//! batch under the error policy.
//!
//! A batch is consecutive messages of one lane, so under key order a key's messages in it are
//! in offset order, and no two batches holding a key run at once; under partition order a
//! batch is cut where the partition changes; with no ordering it is any messages. A batch's
//! messages are finished together when the handler returns `Ok`. An `Err` at a message
//! finishes those before it and retries from it on; once that message is out of retries, it
//! alone goes through the error policy, as a single message would, and the rest run on. A
//! message the handler cannot take (a value that does not decode) goes through the policy
//! alone at once, and the batch runs without it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use super::dispatch::{Intake, Run};
use super::offsets::PartitionState;
use super::processor::{backoff, give_up, wait_unless_stopped, GiveUp, Settled};
use super::timing;
use super::{Outcome, QueueShared};
use crate::batch::{BatchError, BatchHandler, Rejected};
use crate::conf::Ordering;
use crate::handler::{HandlerError, HandlerErrorKind};
use crate::message::Message;
use crate::shutdown::Shutdown;

/// Runs batches of the lanes it takes until the lanes close.
pub(crate) async fn run(
    queue: Arc<QueueShared>,
    handler: Arc<dyn BatchHandler>,
    mut intake: Intake,
    shutdown: Shutdown,
) {
    let (size, wait) = (queue.conf.batch.size, queue.conf.batch.wait);
    let by_partition = queue.conf.effective_ordering() == Ordering::Partition;
    let mut runs: Vec<Run> = Vec::new();
    let mut batch = Batch::default();
    // When the batch being filled is handed over, full or not.
    let mut deadline = tokio::time::Instant::now();
    let mut released = Vec::new();
    let mut emptied = Vec::new();
    loop {
        if batch.msgs.is_empty() {
            match intake.next_batch(&mut runs, size, wait).await {
                Some(until) => deadline = until,
                None => break,
            }
        } else {
            // What is left of the runs taken before makes a batch that is not full: the lane
            // is still held, so that its next messages can join it.
            tokio::select! {
                () = intake.fill(&mut runs, size - batch.msgs.len(), deadline) => {}
                () = shutdown.wait() => {}
            }
        }
        let taken = tokio::time::Instant::now();
        for mut run in runs.drain(..) {
            run.partition.enter(run.msgs.len());
            for msg in run.msgs.drain(..) {
                let cut = batch.msgs.len() == size
                    || (by_partition
                        && batch
                            .partitions
                            .last()
                            .is_some_and(|last| !Arc::ptr_eq(last, &run.partition)));
                if cut {
                    settle(&queue, &*handler, &mut batch, &shutdown, &mut released).await;
                    // The next batch starts with messages taken now.
                    deadline = taken + wait;
                }
                batch.push(&run.partition, msg);
            }
            emptied.push(run.msgs);
        }
        let due = batch.msgs.len() >= size
            || tokio::time::Instant::now() >= deadline
            || intake.closed()
            || shutdown.is_triggered();
        if due && !batch.msgs.is_empty() {
            settle(&queue, &*handler, &mut batch, &shutdown, &mut released).await;
        }
        intake.done(&mut released);
        intake.recycle(&mut emptied);
    }
}

/// Messages on their way to one handler call, each with its partition's state.
#[derive(Default)]
struct Batch {
    msgs: Vec<Message>,
    /// Each message's partition, an index into `partitions`.
    part_of: Vec<usize>,
    /// One reference per run of messages of a partition, not one per message: the count of
    /// references is one that every processor writes.
    partitions: Vec<Arc<PartitionState>>,
}

impl Batch {
    fn push(&mut self, partition: &Arc<PartitionState>, msg: Message) {
        if !self
            .partitions
            .last()
            .is_some_and(|last| Arc::ptr_eq(last, partition))
        {
            self.partitions.push(partition.clone());
        }
        self.part_of.push(self.partitions.len() - 1);
        self.msgs.push(msg);
    }

    /// The partition of the message at `index`.
    fn partition(&self, index: usize) -> &Arc<PartitionState> {
        &self.partitions[self.part_of[index]]
    }
}

/// Runs `batch` until every message of it is done with: finished, or given up for the next
/// owner of its partition. `batch` is empty afterwards, the messages' buffers in `released`.
async fn settle(
    queue: &QueueShared,
    handler: &dyn BatchHandler,
    batch: &mut Batch,
    shutdown: &Shutdown,
    released: &mut Vec<Vec<u8>>,
) {
    // The message that failed last, by partition and offset, and how often it has.
    let mut failing: Option<(i32, i64)> = None;
    let mut failures = 0u32;
    let mut rejected = Vec::new();
    while !batch.msgs.is_empty() {
        // A revoked partition's messages belong to its next owner; all of them on a stop.
        let mut gone = Done::default();
        for index in 0..batch.msgs.len() {
            if shutdown.is_triggered() || batch.partition(index).is_revoked() {
                gone.abandon(index);
            }
        }
        if gone.apply(batch, released) {
            return;
        }
        let mut done = Done::default();
        let started = Instant::now();
        let attempt = start_handler(handler, &batch.msgs, &mut rejected);
        // What the handler cannot take goes through the error policy on its own before the
        // rest runs, so that the messages after it with its key still follow it.
        let mut hold = false;
        for Rejected { index, error } in rejected.drain(..) {
            let Some(msg) = batch.msgs.get(index) else {
                continue;
            };
            let partition = batch.partition(index);
            match give_up(queue, partition, msg, shutdown, None, &error, 1).await {
                GiveUp::Settled(Settled::Done(outcome, _)) => {
                    // Counted as every settled message is; the handler never ran it, so it
                    // took none of the handler's time.
                    timing::record_batch_message(queue, outcome, Duration::ZERO);
                    done.finish(index);
                }
                GiveUp::Settled(Settled::Abandoned) => done.abandon(index),
                // `ForceCommit: false`: the batch waits with it, and runs again.
                GiveUp::Hold => {
                    hold = true;
                    break;
                }
            }
        }
        if hold {
            drop(attempt);
            done.apply(batch, released);
            continue;
        }
        let result = attempt.await;
        let elapsed = started.elapsed();
        let taken = batch.msgs.len() - done.len();
        // Each message's share of the call, for the handler-time metrics.
        let share = elapsed / u32::try_from(taken.max(1)).unwrap_or(u32::MAX);
        match result {
            Ok(()) => {
                for index in 0..batch.msgs.len() {
                    if !done.has(index) {
                        done.finish(index);
                    }
                }
                if taken > 0 {
                    timing::record_batch(queue, taken, share, taken, elapsed);
                }
            }
            Err(error) => {
                let (index, error) = error.into_parts();
                // Every message the handler took may be done already (all rejected): then
                // the failure is about none of them.
                if let Some(index) = done.failed_index(index, batch.msgs.len()) {
                    let before = (0..index).filter(|&i| !done.has(i)).count();
                    for earlier in 0..index {
                        if !done.has(earlier) {
                            done.finish(earlier);
                        }
                    }
                    timing::record_batch(queue, before, share, taken, elapsed);
                    let (msg, partition) = (&batch.msgs[index], batch.partition(index));
                    let identity = (msg.partition(), msg.offset());
                    failures = if failing == Some(identity) {
                        failures + 1
                    } else {
                        1
                    };
                    failing = Some(identity);
                    let policy = &queue.conf.retry;
                    // A payload that cannot be decoded will not decode on a second try.
                    if failures < policy.attempts && error.kind() != HandlerErrorKind::Decode {
                        timing::record_batch_message(queue, Outcome::Retried, share);
                        let wait = backoff(policy.backoff, policy.max_backoff, failures);
                        tracing::warn!(
                            consumer = %queue.name,
                            topic = msg.topic(),
                            partition = msg.partition(),
                            offset = msg.offset(),
                            batch = taken,
                            attempt = failures,
                            retry_in = ?wait,
                            error = %error,
                            "batch handler failed at this message, retrying from it"
                        );
                        // A stop or a revoke during the wait is seen above.
                        wait_unless_stopped(wait, partition, shutdown).await;
                    } else {
                        match give_up(queue, partition, msg, shutdown, None, &error, failures).await
                        {
                            GiveUp::Settled(Settled::Done(outcome, _)) => {
                                timing::record_batch_message(queue, outcome, share);
                                done.finish(index);
                                failing = None;
                            }
                            GiveUp::Settled(Settled::Abandoned) => done.abandon(index),
                            // `ForceCommit: false`: it runs again, at the head of the rest.
                            GiveUp::Hold => {}
                        }
                    }
                }
            }
        }
        done.apply(batch, released);
    }
}

/// The messages of a batch done with in one round: finished, or abandoned to the next owner.
#[derive(Default)]
struct Done {
    /// Indices in the batch, ascending, with whether each finished.
    indices: Vec<(usize, bool)>,
}

impl Done {
    fn finish(&mut self, index: usize) {
        self.insert(index, true);
    }

    fn abandon(&mut self, index: usize) {
        self.insert(index, false);
    }

    fn insert(&mut self, index: usize, finished: bool) {
        if let Err(at) = self.indices.binary_search_by_key(&index, |&(i, _)| i) {
            self.indices.insert(at, (index, finished));
        }
    }

    fn has(&self, index: usize) -> bool {
        self.indices
            .binary_search_by_key(&index, |&(i, _)| i)
            .is_ok()
    }

    fn len(&self) -> usize {
        self.indices.len()
    }

    /// The message a failure at `index` is about: the first message not done at or after
    /// it, or before it (an index past the batch, or at a message already done, says
    /// nothing better); `None` when every message is done.
    fn failed_index(&self, index: usize, len: usize) -> Option<usize> {
        (index.min(len)..len)
            .chain(0..index.min(len))
            .find(|&i| !self.has(i))
    }

    /// Marks the finished messages done in their partitions, one lock per partition's run
    /// of them, and releases the place of all of them, removing them from the batch; `true`
    /// when it is empty.
    fn apply(self, batch: &mut Batch, released: &mut Vec<Vec<u8>>) -> bool {
        let mut offsets = Vec::new();
        let mut abandoned = 0;
        let mut indices = self.indices.iter().peekable();
        while let Some(&(index, finished)) = indices.next() {
            let part = batch.part_of[index];
            if finished {
                offsets.push(batch.msgs[index].offset());
            } else {
                abandoned += 1;
            }
            if indices
                .peek()
                .is_none_or(|&&(next, _)| batch.part_of[next] != part)
            {
                batch.partitions[part].finish_all(&offsets);
                batch.partitions[part].skip(abandoned);
                offsets.clear();
                abandoned = 0;
            }
        }
        // The messages left move to the front, in order; those done with go.
        let mut done = self.indices.iter().map(|&(index, _)| index).peekable();
        let mut kept = 0;
        for index in 0..batch.msgs.len() {
            if done.next_if_eq(&index).is_none() {
                batch.msgs.swap(kept, index);
                batch.part_of.swap(kept, index);
                kept += 1;
            }
        }
        released.extend(batch.msgs.drain(kept..).map(Message::into_bytes));
        batch.part_of.truncate(kept);
        if kept == 0 {
            batch.partitions.clear();
        }
        kept == 0
    }
}

/// Starts the handler on `msgs`: its rejections are in `rejected` when this returns, and the
/// future runs the rest. A panic, on the call or while running, fails the whole batch.
fn start_handler<'a>(
    handler: &'a dyn BatchHandler,
    msgs: &'a [Message],
    rejected: &mut Vec<Rejected>,
) -> futures_util::future::BoxFuture<'a, Result<(), BatchError>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle_batch(msgs, rejected))) {
        Ok(future) => AssertUnwindSafe(future)
            .catch_unwind()
            .map(|ran| {
                ran.unwrap_or_else(|panic| Err(BatchError::whole(HandlerError::panicked(&*panic))))
            })
            .boxed(),
        Err(panic) => {
            let error = BatchError::whole(HandlerError::panicked(&*panic));
            futures_util::future::ready(Err(error)).boxed()
        }
    }
}

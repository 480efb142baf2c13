//! One group member's shared state, and the rebalance callbacks that drain a revoked
//! partition before it is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::buffers::BufferPool;
use super::commit::{self, Unsaved};
use super::fetched::FetchQueue;
use super::offsets::PartitionState;
use super::QueueShared;
use crate::conf::Assignor;
use crate::observe::{self, MemberHealth};
use crate::sync::lock;

/// How long an assignment waits for the committed offset maps, and for a partition's end.
const MAP_WAIT: Duration = Duration::from_secs(10);

/// A group member: one librdkafka consumer and the partitions it currently owns.
pub(crate) struct Member {
    pub queue: Arc<QueueShared>,
    pub topic: &'static str,
    pub index: usize,
    /// Messages dispatched and not yet dropped (finished, abandoned or skipped).
    pub in_flight: Arc<AtomicUsize>,
    /// Buffers of handled messages, for the next ones.
    pub buffers: Arc<BufferPool>,
    /// Liveness for the health endpoint, when collection is on.
    pub health: Option<Arc<MemberHealth>>,
    partitions: Mutex<HashMap<i32, Arc<PartitionState>>>,
    /// Set once the stop has committed and released everything: the revoke that closing the
    /// consumer triggers then has nothing left to do or say.
    stopped: AtomicBool,
}

impl Member {
    pub fn new(queue: Arc<QueueShared>, index: usize) -> Self {
        /// How long past `ShutdownTimeout` a fetch loop may go without coming round.
        const STUCK_MARGIN: Duration = Duration::from_secs(30);
        // A revoke may hold the loop for ShutdownTimeout; anything longer is stuck.
        let health = queue
            .observed
            .as_ref()
            .map(|observed| observed.member(index, queue.conf.shutdown_timeout + STUCK_MARGIN));
        Member {
            topic: crate::message::intern_topic(&queue.conf.topic),
            queue,
            index,
            in_flight: Arc::new(AtomicUsize::new(0)),
            buffers: Arc::default(),
            health,
            partitions: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        }
    }

    fn partitions(&self) -> MutexGuard<'_, HashMap<i32, Arc<PartitionState>>> {
        lock(&self.partitions)
    }

    /// The current assignment's state of a partition, created on its first message.
    pub fn partition(&self, partition: i32) -> Arc<PartitionState> {
        self.partitions()
            .entry(partition)
            .or_insert_with(|| PartitionState::new(partition))
            .clone()
    }

    /// Every partition owned now.
    pub fn owned(&self) -> Vec<Arc<PartitionState>> {
        self.partitions().values().cloned().collect()
    }

    /// Removes partitions from those owned, and stops their queued messages from starting.
    fn take(&self, partitions: &[i32]) -> Vec<Arc<PartitionState>> {
        let taken: Vec<_> = {
            let mut owned = self.partitions();
            partitions.iter().filter_map(|p| owned.remove(p)).collect()
        };
        for state in &taken {
            state.revoke();
        }
        taken
    }

    /// Gives revoked partitions up: queued messages stop starting, running handlers get up
    /// to `ShutdownTimeout` to finish, and the watermarks are committed, sent again within
    /// the same time if the broker refuses them for a moment. Whatever did not finish stays
    /// above the committed offset and goes to the next owner. Runs in the revoke callback,
    /// before librdkafka unassigns: the partitions are still this member's, with a
    /// generation the broker accepts.
    pub fn release(&self, consumer: &BaseConsumer<MemberContext>, partitions: &[i32]) {
        let deadline = Instant::now() + self.queue.conf.shutdown_timeout;
        let released = self.take(partitions);
        self.drain(&released, deadline);
        let saved = commit::save(
            consumer,
            self.topic,
            || released.clone(),
            deadline,
            None,
            self.queue.observed.as_deref(),
        );
        self.report_release(partitions, saved);
    }

    /// Gives up partitions the group took away without a revoke (this member's session
    /// expired, or its generation was fenced): they are someone else's already, so nothing
    /// is committed for them, not even by librdkafka on unassign. Running handlers still
    /// finish first, so that a partition that comes back here never has two handlers for one
    /// key.
    pub fn lose(&self, consumer: &BaseConsumer<MemberContext>, partitions: &[i32]) {
        let lost = self.take(partitions);
        self.drain(&lost, Instant::now() + self.queue.conf.shutdown_timeout);
        commit::forget(consumer, self.topic, partitions.iter().copied());
        tracing::warn!(
            consumer = %self.queue.name,
            member = self.index,
            topic = %self.topic,
            ?partitions,
            "partitions lost: the group moved on without this member; what was handled since their last commit is handled again by their next owner"
        );
    }

    /// Stops the member: every owned partition stops starting messages, running handlers get
    /// until `ShutdownTimeout` to finish, and the watermarks are committed before the member
    /// leaves its group. A rebalance under way does not stop the commit: the consumer is
    /// polled so that librdkafka completes it, a revoke meanwhile commits what it takes, and
    /// the rest is committed again with the new generation, until the deadline.
    pub fn stop(&self, consumer: &BaseConsumer<MemberContext>) {
        let deadline = Instant::now() + self.queue.conf.shutdown_timeout;
        let owned = self.owned();
        for state in &owned {
            state.revoke();
        }
        self.drain(&owned, deadline);
        drop(owned);
        let mut settle = |wait: Duration| serve_while_stopping(consumer, wait);
        let saved = commit::save(
            consumer,
            self.topic,
            || self.owned(),
            deadline,
            Some(&mut settle),
            self.queue.observed.as_deref(),
        );
        let assigned: Vec<i32> = consumer
            .assignment()
            .map(|list| partitions_of(&list))
            .unwrap_or_default();
        self.partitions().clear();
        self.stopped.store(true, Ordering::Release);
        self.report_release(&assigned, saved);
    }

    /// Waits until no message of these partitions is in progress, for at most until
    /// `deadline`, and warns of those still running then.
    fn drain(&self, states: &[Arc<PartitionState>], deadline: Instant) {
        let abandoned = wait_for_running(states, deadline);
        if abandoned > 0 {
            tracing::warn!(
                consumer = %self.queue.name,
                topic = %self.topic,
                abandoned,
                "messages still in progress after the shutdown timeout; they will be delivered again"
            );
        }
    }

    fn report_release(&self, partitions: &[i32], saved: Result<Vec<(i32, i64)>, Unsaved>) {
        match saved {
            Ok(committed) => tracing::info!(
                consumer = %self.queue.name,
                member = self.index,
                topic = %self.topic,
                ?partitions,
                ?committed,
                "partitions released"
            ),
            Err(unsaved) => tracing::warn!(
                consumer = %self.queue.name,
                member = self.index,
                topic = %self.topic,
                ?partitions,
                not_committed = ?unsaved.offsets,
                error = %unsaved.error,
                "partitions released without their final commit; their next owner handles again what came after their last commit"
            ),
        }
    }
}

/// Polls a stopping member's consumer for `wait`, so that librdkafka can complete a
/// rebalance: its callbacks run here. Messages that reach the consumer's own queue are
/// dropped: they belong to whoever consumes their partition next.
fn serve_while_stopping(consumer: &BaseConsumer<MemberContext>, wait: Duration) {
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(Err(e)) = consumer.poll(left.min(Duration::from_millis(20))) {
            tracing::debug!(error = %e, "consumer error while stopping");
        }
    }
}

/// Waits until no message of these partitions is in progress, for at most until `deadline`;
/// returns how many still are.
fn wait_for_running(states: &[Arc<PartitionState>], deadline: Instant) -> usize {
    loop {
        let running: usize = states.iter().map(|s| s.running()).sum();
        if running == 0 || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The librdkafka callbacks of a member.
pub(crate) struct MemberContext {
    pub member: Arc<Member>,
    /// Where assigned partitions' messages go. Not owned: the fetch loop drops the queue
    /// before the consumer closes, and a revoke served while it closes routes nothing.
    fetch_queue: OnceLock<Weak<FetchQueue>>,
}

impl MemberContext {
    pub fn new(member: Arc<Member>) -> Self {
        MemberContext {
            member,
            fetch_queue: OnceLock::new(),
        }
    }

    /// Routes the partitions of every assignment from now on into `queue`.
    pub fn route_to(&self, queue: &Arc<FetchQueue>) {
        let _ = self.fetch_queue.set(Arc::downgrade(queue));
    }
}

impl ClientContext for MemberContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(observed) = &self.member.queue.observed {
            observe::record_lag(observed, &statistics);
        }
    }
}

impl ConsumerContext for MemberContext {
    // rdkafka's own handler first asks librdkafka for the group's rebalance protocol. That
    // request, like the (un)assign after it, waits without limit for the group's thread, which
    // drops it unanswered if the group terminates meanwhile: a revoke served while the
    // consumer closes could then hang the member for good. The protocol follows from the
    // assignor kq configured, so it is not asked for, and a closed group is not called at all.
    // The (un)assign can still meet a group terminating at that very moment; the wait for a
    // stopped member to leave its group is bounded for that (`fetch::LEAVE_LIMIT`).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let list = &*list;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(list),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(list),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let incremental = self.member.queue.conf.assignor == Assignor::CooperativeSticky;
        if let Some(queue) = self.fetch_queue.get().and_then(Weak::upgrade) {
            match (&rebalance, incremental) {
                // Before librdkafka starts fetching them.
                (Rebalance::Assign(list), _) => queue.forward(&partitions_of(list)),
                (_, true) => queue.unroute(Some(&partitions_of(list))),
                (_, false) => queue.unroute(None),
            }
        }
        if !consumer.closed() {
            let applied = match (&rebalance, incremental) {
                (Rebalance::Assign(list), true) => consumer.incremental_assign(list),
                (Rebalance::Assign(list), false) => consumer.assign(list),
                // A failed rebalance gives the partitions up, as a revoke does.
                (_, true) => consumer.incremental_unassign(list),
                (_, false) => consumer.unassign(),
            };
            if let Err(e) = applied {
                tracing::warn!(
                    consumer = %self.member.queue.name,
                    member = self.member.index,
                    error = %e,
                    "applying the rebalance failed"
                );
            }
        }
        self.post_rebalance(consumer, &rebalance);
    }

    // Runs on the fetch thread inside `poll`, before librdkafka unassigns: the only moment a
    // member can still commit for partitions it is losing.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if self.member.stopped.load(Ordering::Acquire) {
                return;
            }
            if let Some(observed) = &self.member.queue.observed {
                observed.rebalanced("revoke");
            }
            let partitions = partitions_of(list);
            // Read before the unassign, which clears it.
            if consumer.assignment_lost() {
                self.member.lose(consumer, &partitions);
                return;
            }
            tracing::info!(
                consumer = %self.member.queue.name,
                member = self.member.index,
                topic = %self.member.topic,
                ?partitions,
                "partitions revoked"
            );
            self.member.release(consumer, &partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // Before any of their messages is taken: this runs on the fetch thread. A
                // member that is stopping (librdkafka serves a pending assignment as it
                // closes) takes none, and its handle can no longer ask the broker.
                if !self.member.stopped.load(Ordering::Acquire) {
                    let partitions = partitions_of(list);
                    let topic = self.member.topic;
                    for (partition, finished) in
                        commit::committed_maps(consumer, topic, &partitions, MAP_WAIT)
                    {
                        self.member.partition(partition).skip_finished(finished);
                    }
                }
                if let Some(health) = &self.member.health {
                    health.joined();
                }
                if let Some(observed) = &self.member.queue.observed {
                    observed.rebalanced("assign");
                }
                tracing::info!(
                    consumer = %self.member.queue.name,
                    member = self.member.index,
                    topic = %self.member.topic,
                    partitions = ?partitions_of(list),
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(
                consumer = %self.member.queue.name,
                error = %e,
                "rebalance failed"
            ),
        }
    }

    // Answers librdkafka's own commits: the auto-commits of stored watermarks, and the commit
    // of a partition's stored offset when it is unassigned. kq's own commits answer their
    // caller.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let refused: Vec<(i32, i64, String)> = offsets
            .elements()
            .iter()
            .filter_map(|e| {
                let error = match (&result, e.error()) {
                    // rdkafka files a partition's error under "offset fetch"; the code says it.
                    (_, Err(e)) => e
                        .rdkafka_error_code()
                        .map_or_else(|| e.to_string(), |code| code.to_string()),
                    (Err(e), Ok(())) => e.to_string(),
                    (Ok(()), Ok(())) => return None,
                };
                match e.offset() {
                    Offset::Offset(offset) => Some((e.partition(), offset, error)),
                    _ => None,
                }
            })
            .collect();
        if refused.is_empty() {
            if let (Ok(()), Some(observed)) = (&result, &self.member.queue.observed) {
                observed.committed();
            }
            return;
        }
        tracing::warn!(
            consumer = %self.member.queue.name,
            topic = %self.member.topic,
            not_committed = ?refused.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            error = %refused[0].2,
            "commit refused; while the partitions stay assigned, it is sent again at the next commit"
        );
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

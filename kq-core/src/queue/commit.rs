//! Committing watermarks, so that a restart or a partition's next owner resumes after the
//! messages already handled, and never after one that is not.
//!
//! - While a member owns partitions, the fetch loop stores their watermarks as they move
//!   (`store_moved`) and librdkafka's auto-commit sends them every `CommitInterval`. It sends
//!   nothing while the group rebalances, when a commit carries a generation about to change
//!   and can only be refused.
//! - A partition given up (revoked, or the member stopping) is committed by kq itself, which
//!   waits for the broker's answer (`save`): a refusal that a rebalance explains is sent again
//!   once librdkafka has rejoined the group, a transient one after a pause, until the
//!   deadline.
//! - A partition lost (the group moved on without this member) is never committed (`forget`):
//!   its next owner may be past it already.

use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::offset_map::{self, Finished, TooLarge};
use super::offsets::{CommitPoint, PartitionState};
use crate::observe::ConsumerMetrics;

/// How long a commit that meets a deadline already passed still gets: a member that spent its
/// `ShutdownTimeout` waiting for a handler still tries once.
const LAST_TRY: Duration = Duration::from_secs(1);
/// The first pause between two tries of a refused commit; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// A partition's commit: its watermark, and the offset map of what finished above it.
#[derive(Debug)]
pub(crate) struct Mark {
    pub partition: i32,
    pub offset: i64,
    pub map: Option<String>,
}

impl Mark {
    /// The mark of `partition` at `point`; an offset map too large to fit is left out and
    /// counted.
    fn of(
        partition: i32,
        (offset, map): CommitPoint,
        topic: &str,
        metrics: Option<&ConsumerMetrics>,
    ) -> Mark {
        let map = map.unwrap_or_else(|TooLarge| {
            tracing::debug!(
                topic,
                partition,
                offset,
                "the offset map does not fit the commit's metadata; committing the plain watermark"
            );
            if let Some(metrics) = metrics {
                metrics.offset_map_too_large();
            }
            None
        });
        Mark {
            partition,
            offset,
            map,
        }
    }
}

/// The marks of the partitions `point` gives a commit point of.
fn marks_of(
    states: &[Arc<PartitionState>],
    point: impl Fn(&PartitionState) -> Option<CommitPoint>,
    topic: &str,
    metrics: Option<&ConsumerMetrics>,
) -> Vec<Mark> {
    states
        .iter()
        .filter_map(|state| Some(Mark::of(state.partition(), point(state)?, topic, metrics)))
        .collect()
}

/// The list of `marks`, each with its offset map as metadata.
fn list_of(topic: &str, marks: &[Mark]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(marks.len());
    for mark in marks {
        let mut element = list.add_partition(topic, mark.partition);
        // Only fails for an invalid offset, which a watermark never is.
        let _ = element.set_offset(Offset::Offset(mark.offset));
        if let Some(map) = &mark.map {
            element.set_metadata(map);
        }
    }
    list
}

/// Stores the watermarks that moved since the last call, with their offset maps, for
/// librdkafka's next auto-commit.
pub(crate) fn store_moved<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    states: &[Arc<PartitionState>],
    metrics: Option<&ConsumerMetrics>,
) {
    let marks = marks_of(states, PartitionState::take_store, topic, metrics);
    // Called every few milliseconds, often with nothing moved: no list is built then.
    if !marks.is_empty() {
        store(consumer, topic, &list_of(topic, &marks));
    }
}

/// Commits the offset maps that changed while their watermarks stayed for `stuck` or more,
/// as while a key is held: librdkafka's auto-commit sends nothing for an offset it has
/// committed already. Nobody waits for the answer: a refusal (the group rebalancing, say)
/// leaves the map to the next call, or to the final commit of a revoke or a stop.
pub(crate) fn commit_changed_maps<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    states: &[Arc<PartitionState>],
    stuck: Duration,
    metrics: Option<&ConsumerMetrics>,
) {
    let mut marks = marks_of(states, |state| state.take_map_change(stuck), topic, metrics);
    marks.retain(|mark| mark.map.is_some());
    if marks.is_empty() {
        return;
    }
    let list = list_of(topic, &marks);
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live consumer's handle. The reply queue is dropped at once: a
    // pending commit holds its own reference to it, and librdkafka drops the answer, which it
    // would otherwise log as a failure when no one takes it. It copies `list` first.
    unsafe {
        let queue = rdsys::rd_kafka_queue_new(client);
        if !queue.is_null() {
            rdsys::rd_kafka_commit_queue(client, list.ptr(), queue, None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(queue);
        }
    }
}

/// The offset maps committed for `partitions`, read from the group's coordinator as they are
/// assigned: for each partition whose committed offset carries a record of kq's that holds up
/// against the partition (see `offset_map::read` and `Finished::within`), the messages a
/// previous owner finished above it. A record that does not hold up is ignored with a warning; one that cannot be
/// read leaves every message after the committed offset to be handled.
pub(crate) fn committed_maps<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    wait: Duration,
) -> Vec<(i32, Finished)> {
    let mut list = TopicPartitionList::with_capacity(partitions.len());
    for &partition in partitions {
        list.add_partition(topic, partition);
    }
    let committed = match consumer.committed_offsets(list, wait) {
        Ok(committed) => committed,
        // The consumer is closing: it takes no messages.
        Err(error)
            if matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::BrokerDestroy | RDKafkaErrorCode::DestroyBroker)
            ) =>
        {
            tracing::debug!(topic, %error, "the committed offset maps were not read: closing");
            return Vec::new();
        }
        Err(error) => {
            tracing::warn!(
                topic,
                ?partitions,
                %error,
                "the committed offset maps could not be read: every message after the committed offsets is handled"
            );
            return Vec::new();
        }
    };
    let mut maps = Vec::new();
    for (partition, offset, metadata) in committed_metadata(&committed) {
        let (Offset::Offset(offset), Some(metadata)) = (offset, metadata) else {
            continue;
        };
        // Commit metadata is text to Kafka; anything else is not kq's.
        let Ok(text) = std::str::from_utf8(&metadata) else {
            continue;
        };
        let ignore = |invalid: offset_map::Invalid| {
            tracing::warn!(
                topic,
                partition,
                offset,
                reason = %invalid,
                "ignoring the committed offset map: every message after the committed offset is handled"
            )
        };
        let finished = match offset_map::read(text, offset) {
            Ok(Some(finished)) => finished,
            Ok(None) => continue,
            Err(invalid) => {
                ignore(invalid);
                continue;
            }
        };
        // A record, so the broker is asked for the partition's end, which no offset it names
        // may reach.
        let end = match consumer.fetch_watermarks(topic, partition, wait) {
            Ok((_, high)) => high,
            Err(error) => {
                tracing::warn!(
                    topic,
                    partition,
                    %error,
                    "the partition's end could not be read: its committed offset map is ignored"
                );
                continue;
            }
        };
        match finished.within(end) {
            Ok(finished) => {
                tracing::debug!(
                    topic,
                    partition,
                    offset,
                    finished = finished.len(),
                    "skipping the messages the committed offset map says were finished"
                );
                maps.push((partition, finished));
            }
            Err(invalid) => ignore(invalid),
        }
    }
    maps
}

/// Each element's partition, offset and metadata, read as bytes: rdkafka's accessor panics on
/// metadata that is not UTF-8, and a commit's metadata is anyone's to write.
fn committed_metadata(list: &TopicPartitionList) -> Vec<(i32, Offset, Option<Vec<u8>>)> {
    // SAFETY: `list` owns its elements for as long as it is borrowed; each element's metadata
    // is `metadata_size` bytes when not null.
    unsafe {
        let raw = &*list.ptr();
        let count = usize::try_from(raw.cnt).unwrap_or(0);
        if raw.elems.is_null() || count == 0 {
            return Vec::new();
        }
        std::slice::from_raw_parts(raw.elems, count)
            .iter()
            .map(|element| {
                let metadata =
                    (!element.metadata.is_null() && element.metadata_size > 0).then(|| {
                        std::slice::from_raw_parts(
                            element.metadata.cast::<u8>(),
                            element.metadata_size,
                        )
                        .to_vec()
                    });
                (
                    element.partition,
                    Offset::from_raw(element.offset),
                    metadata,
                )
            })
            .collect()
    }
}

/// Why the broker (or librdkafka) refused a commit, which says whether sending it again can
/// help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The group is rebalancing, or this member's generation or member id is out of date.
    /// Once librdkafka has rejoined, the member commits what it still owns with the new
    /// generation.
    Rebalance,
    /// The coordinator moved, is loading, or did not answer in time: the same commit may be
    /// taken after a pause.
    Transient,
    /// Sending it again cannot help: the request is wrong (metadata too large, an invalid
    /// offset), not allowed, fenced by another instance, or the consumer is closing.
    Final,
}

impl Refusal {
    pub fn of(code: RDKafkaErrorCode) -> Refusal {
        use RDKafkaErrorCode as E;
        match code {
            E::RebalanceInProgress
            | E::IllegalGeneration
            | E::UnknownMemberId
            | E::StaleMemberEpoch => Refusal::Rebalance,
            E::NotCoordinator
            | E::CoordinatorNotAvailable
            | E::CoordinatorLoadInProgress
            | E::WaitingForCoordinator
            | E::RequestTimedOut
            | E::OperationTimedOut
            | E::TimedOutQueue
            | E::NetworkException
            | E::BrokerTransportFailure
            | E::AllBrokersDown
            | E::Resolve
            | E::UnknownTopicOrPartition
            | E::LeaderNotAvailable
            | E::NotLeaderForPartition
            | E::UnstableOffsetCommit
            | E::Retry
            | E::InProgress => Refusal::Transient,
            _ => Refusal::Final,
        }
    }
}

/// What a member does after a refused commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Lets librdkafka complete the rebalance (the member polls its consumer), then commits
    /// again what it still owns.
    AfterRejoin,
    /// Pauses, then commits the same again.
    AfterPause,
    /// Stops trying: what is left cannot be saved.
    GiveUp,
}

impl Next {
    /// `can_rejoin`: the member can poll its consumer between tries. Inside a rebalance
    /// callback it cannot, and librdkafka does not rejoin until the callback returns, so a
    /// rebalance refusal is final there.
    /// `lost`: librdkafka found the assignment lost: the group moved on without this member,
    /// and its partitions are someone else's.
    pub fn after(refusal: Refusal, can_rejoin: bool, lost: bool, time_left: bool) -> Next {
        match refusal {
            _ if lost || !time_left => Next::GiveUp,
            Refusal::Final => Next::GiveUp,
            Refusal::Transient => Next::AfterPause,
            Refusal::Rebalance if can_rejoin => Next::AfterRejoin,
            Refusal::Rebalance => Next::GiveUp,
        }
    }
}

/// The watermarks a commit could not save, for the log: the next owner of these partitions
/// handles again what came after their last commit.
#[derive(Debug)]
pub(crate) struct Unsaved {
    /// (partition, watermark)
    pub offsets: Vec<(i32, i64)>,
    pub error: RDKafkaErrorCode,
}

/// Commits the watermarks of the partitions `owned` returns and waits for the broker to take
/// them, sending them again while a refusal can still be overcome and `deadline` has not
/// passed. `owned` is asked again before every try: a partition given up or lost meanwhile is
/// left out. `settle` polls the consumer for the time given, so that librdkafka completes a
/// rebalance; `None` inside a rebalance callback, where it cannot. Returns what was saved.
pub(crate) fn save<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    mut owned: impl FnMut() -> Vec<Arc<PartitionState>>,
    deadline: Instant,
    mut settle: Option<&mut dyn FnMut(Duration)>,
    metrics: Option<&ConsumerMetrics>,
) -> Result<Vec<(i32, i64)>, Unsaved> {
    let mut pause = FIRST_PAUSE;
    let mut first = true;
    loop {
        let points = marks_of(&owned(), PartitionState::commit_point, topic, metrics);
        let marks: Vec<(i32, i64)> = points.iter().map(|m| (m.partition, m.offset)).collect();
        if marks.is_empty() {
            return Ok(marks);
        }
        // librdkafka commits a partition's stored offset when it is unassigned: that one must
        // never be older than what kq commits here.
        let list = list_of(topic, &points);
        store(consumer, topic, &list);
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if first { left.max(LAST_TRY) } else { left };
        first = false;
        let error = match commit_and_wait(consumer, &list, wait) {
            Ok(()) => {
                tracing::debug!(topic, offsets = ?marks, "committed");
                if let Some(metrics) = metrics {
                    metrics.committed();
                }
                // Saved: librdkafka need not send the same again on unassign.
                forget(consumer, topic, marks.iter().map(|&(p, _)| p));
                return Ok(marks);
            }
            Err(error) => error,
        };
        let refusal = Refusal::of(error);
        let time_left = Instant::now() + pause < deadline;
        let next = Next::after(
            refusal,
            settle.is_some(),
            consumer.assignment_lost(),
            time_left,
        );
        match next {
            Next::AfterRejoin => tracing::info!(
                topic,
                offsets = ?marks,
                %error,
                "commit refused while the group rebalances; sent again once librdkafka has rejoined"
            ),
            Next::AfterPause => tracing::info!(
                topic,
                offsets = ?marks,
                %error,
                "commit refused for a moment; sent again after a pause"
            ),
            Next::GiveUp => {}
        }
        match (next, settle.as_mut()) {
            (Next::GiveUp, _) => {
                return Err(Unsaved {
                    offsets: marks,
                    error,
                })
            }
            (_, Some(settle)) => settle(pause),
            (_, None) => std::thread::sleep(pause),
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Clears the stored offsets of `partitions`, so that librdkafka commits nothing for them
/// when they are unassigned.
pub(crate) fn forget<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let _ = list.add_partition_offset(topic, partition, Offset::Invalid);
    }
    store(consumer, topic, &list);
}

/// Stores `list`'s offsets for librdkafka's commits. Only a partition no longer assigned
/// refuses a store: it is not this member's.
fn store<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, list: &TopicPartitionList) {
    if list.count() > 0 {
        if let Err(e) = consumer.store_offsets(list) {
            tracing::debug!(topic, error = %e, "storing offsets failed");
        }
    }
}

/// Commits `list` and waits up to `wait` for the broker's answer. librdkafka's synchronous
/// commit waits as long as librdkafka does (up to the session timeout for a missing
/// coordinator); this one answers on a queue of its own, read with the member's deadline.
/// Returns the first error, the request's or a partition's.
fn commit_and_wait<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
    wait: Duration,
) -> Result<(), RDKafkaErrorCode> {
    let client = consumer.client().native_ptr();
    let timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `client` is the live consumer's handle for the whole block. The queue is ours
    // and destroyed before the block ends; a pending commit holds its own reference to it, so
    // an answer after the wait is dropped by librdkafka. librdkafka copies `list` before
    // returning. The event, when there is one, is read and destroyed here.
    unsafe {
        let queue = rdsys::rd_kafka_queue_new(client);
        if queue.is_null() {
            return Err(RDKafkaErrorCode::Fail);
        }
        let err = rdsys::rd_kafka_commit_queue(client, list.ptr(), queue, None, ptr::null_mut());
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            rdsys::rd_kafka_queue_destroy(queue);
            return Err(err.into());
        }
        let event = rdsys::rd_kafka_queue_poll(queue, timeout_ms);
        rdsys::rd_kafka_queue_destroy(queue);
        if event.is_null() {
            return Err(RDKafkaErrorCode::OperationTimedOut);
        }
        let result = if rdsys::rd_kafka_event_type(event) != rdsys::RD_KAFKA_EVENT_OFFSET_COMMIT {
            // Nothing else is sent to this queue; an answer of another kind is no commit.
            Err(RDKafkaErrorCode::Fail)
        } else {
            match rdsys::rd_kafka_event_error(event) {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
                    first_refusal(rdsys::rd_kafka_event_topic_partition_list(event))
                }
                err => Err(err.into()),
            }
        };
        rdsys::rd_kafka_event_destroy(event);
        result
    }
}

/// The first partition's error in a commit's answer, if any partition was refused.
///
/// # Safety
///
/// `partitions` is null or a list librdkafka owns that lives for the call.
unsafe fn first_refusal(
    partitions: *const rdsys::rd_kafka_topic_partition_list_t,
) -> Result<(), RDKafkaErrorCode> {
    // SAFETY: the caller's promise; a list with elements has a non-null array of `cnt`.
    let elements = unsafe {
        match partitions.as_ref() {
            Some(list) if list.cnt > 0 && !list.elems.is_null() => {
                std::slice::from_raw_parts(list.elems, list.cnt as usize)
            }
            _ => return Ok(()),
        }
    };
    match elements
        .iter()
        .find(|e| e.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
    {
        Some(refused) => Err(refused.err.into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebalance_refusal_waits_for_the_rejoin() {
        for code in [
            RDKafkaErrorCode::RebalanceInProgress,
            RDKafkaErrorCode::IllegalGeneration,
            RDKafkaErrorCode::UnknownMemberId,
            RDKafkaErrorCode::StaleMemberEpoch,
        ] {
            assert_eq!(Refusal::of(code), Refusal::Rebalance, "{code:?}");
            assert_eq!(
                Next::after(Refusal::of(code), true, false, true),
                Next::AfterRejoin,
                "{code:?} while stopping"
            );
            // librdkafka cannot rejoin while the callback that would wait for it runs.
            assert_eq!(
                Next::after(Refusal::of(code), false, false, true),
                Next::GiveUp,
                "{code:?} in a rebalance callback"
            );
        }
    }

    #[test]
    fn a_transient_refusal_is_sent_again_after_a_pause() {
        for code in [
            RDKafkaErrorCode::NotCoordinator,
            RDKafkaErrorCode::CoordinatorNotAvailable,
            RDKafkaErrorCode::CoordinatorLoadInProgress,
            RDKafkaErrorCode::WaitingForCoordinator,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert_eq!(Refusal::of(code), Refusal::Transient, "{code:?}");
            for can_rejoin in [true, false] {
                assert_eq!(
                    Next::after(Refusal::of(code), can_rejoin, false, true),
                    Next::AfterPause,
                    "{code:?}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_retrying_cannot_help_ends_the_tries() {
        for code in [
            RDKafkaErrorCode::OffsetMetadataTooLarge,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidCommitOffsetSize,
            RDKafkaErrorCode::FencedInstanceId,
            RDKafkaErrorCode::FencedMemberEpoch,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::BrokerDestroy,
        ] {
            assert_eq!(Refusal::of(code), Refusal::Final, "{code:?}");
            assert_eq!(
                Next::after(Refusal::of(code), true, false, true),
                Next::GiveUp,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_lost_assignment_is_never_committed_again() {
        // The group moved on without the member: its partitions are someone else's, whatever
        // the refusal said.
        for refusal in [Refusal::Rebalance, Refusal::Transient, Refusal::Final] {
            for can_rejoin in [true, false] {
                assert_eq!(
                    Next::after(refusal, can_rejoin, true, true),
                    Next::GiveUp,
                    "{refusal:?}"
                );
            }
        }
    }

    #[test]
    fn no_try_goes_past_the_deadline() {
        for refusal in [Refusal::Rebalance, Refusal::Transient] {
            assert_eq!(Next::after(refusal, true, false, false), Next::GiveUp);
        }
    }
}

//! Committing watermarks: asynchronously on `CommitInterval`, synchronously when partitions
//! are released or the member stops.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::PartitionState;
use crate::observe::ConsumerMetrics;

/// Commits the watermarks that moved since the last commit, without waiting; counts the
/// commit sent in `metrics`.
pub(crate) fn commit_moved<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    states: &[Arc<PartitionState>],
    metrics: Option<&ConsumerMetrics>,
) {
    let list = offsets(topic, states, PartitionState::take_commit);
    if list.count() == 0 {
        return;
    }
    match consumer.commit(&list, CommitMode::Async) {
        Ok(()) => {
            if let Some(metrics) = metrics {
                metrics.committed();
            }
        }
        Err(e) => tracing::warn!(topic, error = %e, "commit failed; the next commit covers it"),
    }
}

/// Commits the current watermarks and waits for the broker to confirm; counts the confirmed
/// commit in `metrics`.
pub(crate) fn commit_sync<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    states: &[Arc<PartitionState>],
    metrics: Option<&ConsumerMetrics>,
) {
    let list = offsets(topic, states, PartitionState::watermark);
    if list.count() == 0 {
        return;
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => {
            tracing::debug!(topic, offsets = ?list, "committed");
            if let Some(metrics) = metrics {
                metrics.committed();
            }
        }
        Err(e) => tracing::warn!(
            topic,
            error = %e,
            "final commit failed; messages after the last successful commit will be delivered again"
        ),
    }
}

fn offsets(
    topic: &str,
    states: &[Arc<PartitionState>],
    mark: impl Fn(&PartitionState) -> Option<i64>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(states.len());
    for state in states {
        if let Some(offset) = mark(state) {
            // Only fails for an invalid offset, which a watermark never is.
            let _ = list.add_partition_offset(topic, state.partition(), Offset::Offset(offset));
        }
    }
    list
}

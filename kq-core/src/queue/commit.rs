//! Committing watermarks: asynchronously on `CommitInterval`, synchronously when partitions
//! are released or the member stops.

use std::ptr;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::PartitionState;
use crate::observe::ConsumerMetrics;

/// Commits the watermarks that moved since the last commit, without waiting. The broker's
/// answer reaches the member's `commit_callback`, which counts the commit or has a refused
/// watermark sent again.
pub(crate) fn commit_moved<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    states: &[Arc<PartitionState>],
) {
    let list = offsets(topic, states, PartitionState::take_commit);
    if list.count() == 0 {
        return;
    }
    match commit_async(consumer, &list) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(topic, error = %e, "commit failed; it is sent again at the next commit");
            for element in list.elements() {
                if let (Offset::Offset(offset), Some(state)) = (
                    element.offset(),
                    states.iter().find(|s| s.partition() == element.partition()),
                ) {
                    state.commit_failed(offset);
                }
            }
        }
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

/// Sends a commit without waiting, with its result routed to the consumer's own queue, where
/// polling hands it to `ConsumerContext::commit_callback`. rdkafka's
/// `commit(.., CommitMode::Async)` gives librdkafka no queue to answer on, so a refused
/// commit would go unnoticed.
fn commit_async<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
) -> KafkaResult<()> {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is the live consumer's handle for the whole block. The queue handle is
    // a reference of our own, released before the block ends; the pending commit holds its
    // own reference to the queue. librdkafka copies `list` before returning.
    let err = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(client);
        if queue.is_null() {
            return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownGroup));
        }
        let err = rdsys::rd_kafka_commit_queue(client, list.ptr(), queue, None, ptr::null_mut());
        rdsys::rd_kafka_queue_destroy(queue);
        err
    };
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(err.into()))
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

//! go-queue's defaults, where they are not a type's own `Default`.

use std::time::Duration;

pub(super) fn conns() -> usize {
    1
}
pub(super) fn consumers() -> usize {
    8
}
pub(super) fn processors() -> usize {
    8
}
pub(super) fn min_bytes() -> usize {
    10 * 1024
}
pub(super) fn max_bytes() -> usize {
    10 * 1024 * 1024
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn commit_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn queue_capacity() -> usize {
    1000
}
pub(super) fn max_wait() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn shutdown_timeout() -> Duration {
    // go-zero's default for a service group's graceful stop.
    Duration::from_millis(5500)
}
pub(super) fn session_timeout() -> Duration {
    // librdkafka's and Kafka's default.
    Duration::from_secs(45)
}
pub(super) fn chunk_size() -> usize {
    // go-queue's default chunk: 1 MiB.
    1024 * 1024
}
pub(super) fn flush_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn message_timeout() -> Duration {
    Duration::from_secs(30)
}

//! What became of each message: the outcomes kq counts, and the application's hook for them.

use std::time::Duration;

/// What became of a message, as reported to [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded.
    Ok,
    /// The handler failed and the message will be tried again.
    Retried,
    /// The handler failed for good; the message was committed past (`ForceCommit: true`).
    Failed,
    /// The message was written to the dead-letter topic.
    DeadLettered,
}

/// Receives the outcome and handler time of every message (go-queue's `WithMetrics`).
pub trait Metrics: Send + Sync + 'static {
    /// Called once per handler run.
    fn record(&self, consumer: &str, outcome: Outcome, elapsed: Duration);
}

/// Where tallies and counters keep each outcome.
pub(super) fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Retried => 2,
        Outcome::DeadLettered => 3,
    }
}

/// The `outcome` label of `kq_messages_total`, by `outcome_index`.
pub(super) const OUTCOME_LABELS: [&str; 4] = ["ok", "error", "retried", "dead_lettered"];

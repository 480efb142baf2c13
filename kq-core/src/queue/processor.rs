//! Processors: run the handler for each job under the error policy — retries with backoff,
//! then the dead-letter topic if there is one (its write tried until it succeeds), otherwise
//! commit past it (`ForceCommit: true`) or hold it and keep trying (`ForceCommit: false`). A
//! panic is a failure like any other. A message that failed leaves its processor for a task of
//! its own, which holds only the messages that must run after it (see `holds`).

use std::future::{poll_fn, Future as _};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use rdkafka::message::{Header, OwnedHeaders};
use tracing::Instrument as _;

use super::dispatch::Intake;
use super::holds::{self, Holds, Unit, Waiting};
use super::offsets::PartitionState;
use super::timing::{self, Recorder};
use super::{Consume, Outcome, QueueShared};
use crate::handler::Handler;
use crate::handler::{HandlerError, HandlerErrorKind};
use crate::message::Message;
use crate::shutdown::Shutdown;
use crate::trace;

/// Header names of a dead letter, next to the original headers.
pub mod dead_letter_headers {
    /// The topic the message was consumed from.
    pub const TOPIC: &str = "kq.source.topic";
    /// Its partition there.
    pub const PARTITION: &str = "kq.source.partition";
    /// Its offset there.
    pub const OFFSET: &str = "kq.source.offset";
    /// The last error's text.
    pub const ERROR: &str = "kq.error";
    /// How many times the handler ran.
    pub const ATTEMPTS: &str = "kq.attempts";
    /// How many times `--redrive` has pushed the message back to its topic: on the message
    /// pushed back, and on its dead letter if it fails again.
    pub const REDRIVES: &str = "kq.redrives";
    /// What the names of kq's headers start with. A redrive removes them all.
    pub const PREFIX: &str = "kq.";
}

/// How a job ended.
pub(super) enum Settled {
    /// Finished for good, with the outcome of its last handler run and when that run started
    /// (when timed): its offset may be committed.
    Done(Outcome, Option<Instant>),
    /// Given up because the partition was revoked or the service is stopping: its offset
    /// must stay uncommitted so that the next owner handles it.
    Abandoned,
}

/// Runs the messages of the lanes it takes until the lanes close: one at a time, or in
/// batches for a batch consumer (see `batch`).
///
/// Application code runs under guards of its own, so a panic that reaches this far is kq's, or
/// comes from what kq calls on the way (a `tracing` subscriber). It is logged here; the intake
/// drops with the processor, and its member stops when it sees that.
pub(crate) async fn run(
    queue: Arc<QueueShared>,
    intake: Intake,
    shutdown: Shutdown,
    holds: Arc<Holds>,
) {
    let name = queue.name.clone();
    let work = match &queue.consume {
        Consume::Each(handler) => {
            let handler = handler.clone();
            run_lanes(queue, handler, intake, shutdown, holds).boxed()
        }
        Consume::Batch(handler) => {
            let handler = handler.clone();
            super::batch::run(queue, handler, intake, shutdown).boxed()
        }
    };
    if let Err(panic) = AssertUnwindSafe(work).catch_unwind().await {
        tracing::error!(
            consumer = %name,
            panic = crate::handler::panic_detail(&*panic),
            "a processor panicked; its member stops"
        );
    }
}

async fn run_lanes(
    queue: Arc<QueueShared>,
    handler: Arc<dyn Handler>,
    mut intake: Intake,
    shutdown: Shutdown,
    holds: Arc<Holds>,
) {
    let ordering = queue.conf.effective_ordering();
    // Offsets done and not yet reported to their partition: reported once per run of
    // messages, or before waiting on a handler, rather than one lock per message.
    let mut finished = Vec::new();
    // Buffers of the messages done with, for the intake to release, and the runs' emptied
    // message vectors.
    let mut released = Vec::new();
    let mut emptied = Vec::new();
    let mut recorder = Recorder::new(queue.clone());
    let mut runs = Vec::new();
    while intake.next(&mut runs).await {
        for mut run in runs.drain(..) {
            let partition = &run.partition;
            partition.enter(run.msgs.len());
            let mut skipped = 0;
            for msg in run.msgs.drain(..) {
                // Revoked or stopping: a message that has not started belongs to whoever
                // consumes the partition next. A stop is checked here and not only when the
                // fetch thread gets round to revoking: a message abandoned mid-retry by the
                // stop must not be overtaken by the next one with its key.
                if shutdown.is_triggered() || partition.is_revoked() {
                    skipped += 1;
                    released.push(msg.into_bytes());
                    continue;
                }
                // A message of a held key waits behind the held one, out of the lane.
                let msg = if holds.none() {
                    msg
                } else {
                    match set_aside(&holds, ordering, msg, partition, &intake, &shutdown).await {
                        Some(msg) => msg,
                        None => continue,
                    }
                };
                recorder.begin();
                let first = {
                    let span = trace::message_span(&queue.name, &queue.conf.group, &msg);
                    let mut running = pin!(run_handler(&*handler, &msg).instrument(span));
                    match poll_fn(|cx| Poll::Ready(running.as_mut().poll(cx))).await {
                        Poll::Ready(Ok(())) => FirstRun::AtOnce,
                        Poll::Ready(Err(error)) => FirstRun::Failed {
                            error,
                            started: recorder.started(),
                            span: running.span().clone(),
                        },
                        Poll::Pending => {
                            let started = recorder.started();
                            // The handler waits: what is done must not wait behind it.
                            report(partition, &mut finished, &intake, &mut released);
                            recorder.report();
                            match running.as_mut().await {
                                Ok(()) => FirstRun::Waited { started },
                                Err(error) => FirstRun::Failed {
                                    error,
                                    started,
                                    span: running.span().clone(),
                                },
                            }
                        }
                    }
                };
                match first {
                    FirstRun::AtOnce => {
                        recorder.finished_at_once();
                        finished.push(msg.offset());
                    }
                    FirstRun::Waited { started } => {
                        recorder.record(Outcome::Ok, started);
                        finished.push(msg.offset());
                    }
                    FirstRun::Failed {
                        error,
                        started,
                        span,
                    } => {
                        // What is done must not wait behind its retries.
                        report(partition, &mut finished, &intake, &mut released);
                        recorder.report();
                        // Its retries' waits are no part of the next message's time.
                        recorder.forget_clock();
                        let unit = Unit::of(ordering, &msg);
                        if !holds.take_room(holds::size_of(&msg), shutdown.wait()).await {
                            partition.abandon();
                            released.push(msg.into_bytes());
                            continue;
                        }
                        if let Some(unit) = &unit {
                            holds.hold(unit.clone());
                        }
                        intake.set_aside(1);
                        let failed = Failed {
                            waiting: Waiting {
                                msg,
                                partition: partition.clone(),
                            },
                            error,
                            started,
                        };
                        let held = run_held(
                            queue.clone(),
                            handler.clone(),
                            holds.clone(),
                            shutdown.clone(),
                            unit,
                            failed,
                        );
                        tokio::spawn(guard_held(queue.clone(), holds.clone(), held, span));
                        continue;
                    }
                }
                released.push(msg.into_bytes());
            }
            partition.finish_all(&finished);
            finished.clear();
            partition.skip(skipped);
            emptied.push(run.msgs);
        }
        // Once per lane taken rather than per run: a lane's runs are one per partition and
        // hand-off, often of a few messages each, and these take locks the fetch thread and
        // the other processors share.
        intake.done(&mut released);
        intake.recycle(&mut emptied);
        recorder.report();
    }
}

/// Sets `msg` aside behind its unit's hold, if its unit is held; gives it back otherwise, or
/// `None` when it was set aside or the service stops while it waits for room.
async fn set_aside(
    holds: &Holds,
    ordering: crate::conf::Ordering,
    msg: Message,
    partition: &Arc<PartitionState>,
    intake: &Intake,
    shutdown: &Shutdown,
) -> Option<Message> {
    let Some(unit) = Unit::of(ordering, &msg).filter(|unit| holds.is_held(unit)) else {
        return Some(msg);
    };
    let size = holds::size_of(&msg);
    if !holds.take_room(size, shutdown.wait()).await {
        // Stopping: the message is not started; the next owner handles it.
        partition.skip(1);
        return None;
    }
    let waiting = Waiting {
        msg,
        partition: partition.clone(),
    };
    match holds.set_aside(&unit, waiting) {
        Ok(()) => {
            intake.set_aside(1);
            None
        }
        // Released meanwhile: it runs now.
        Err(waiting) => {
            holds.give_back(size);
            Some(waiting.msg)
        }
    }
}

/// Runs a held message's task, whose panic, as a processor's, is kq's own (application code
/// runs guarded): what it held can never finish, so its member stops.
async fn guard_held(
    queue: Arc<QueueShared>,
    holds: Arc<Holds>,
    held: impl std::future::Future<Output = ()>,
    span: tracing::Span,
) {
    if let Err(panic) = AssertUnwindSafe(held.instrument(span)).catch_unwind().await {
        tracing::error!(
            consumer = %queue.name,
            panic = crate::handler::panic_detail(&*panic),
            "a held message's task panicked; its member stops"
        );
        holds.lose();
    }
}

/// A message whose first handler run failed.
struct Failed {
    waiting: Waiting,
    error: HandlerError,
    started: Option<Instant>,
}

/// Runs a failed message under the error policy on a task of its own, then the messages set
/// aside behind it, in order, each under the policy too, and releases its unit once none
/// are left.
async fn run_held(
    queue: Arc<QueueShared>,
    handler: Arc<dyn Handler>,
    holds: Arc<Holds>,
    shutdown: Shutdown,
    unit: Option<Unit>,
    failed: Failed,
) {
    let mut recorder = Recorder::new(queue.clone());
    let Failed {
        waiting: Waiting { msg, partition },
        error,
        started,
    } = failed;
    let settled = recover(
        &queue, &*handler, &partition, &msg, &shutdown, started, error,
    )
    .await;
    settle(&mut recorder, &partition, &msg, settled);
    holds.give_back(holds::size_of(&msg));
    let Some(unit) = unit else {
        recorder.report();
        return;
    };
    while let Some(Waiting { msg, partition }) = holds.next(&unit) {
        if shutdown.is_triggered() || partition.is_revoked() {
            partition.skip(1);
        } else {
            recorder.begin();
            let span = trace::message_span(&queue.name, &queue.conf.group, &msg);
            let run = async {
                let started = recorder.started();
                match run_handler(&*handler, &msg).await {
                    Ok(()) => Settled::Done(Outcome::Ok, started),
                    Err(error) => {
                        recover(
                            &queue, &*handler, &partition, &msg, &shutdown, started, error,
                        )
                        .await
                    }
                }
            };
            let settled = run.instrument(span).await;
            settle(&mut recorder, &partition, &msg, settled);
        }
        holds.give_back(holds::size_of(&msg));
    }
    recorder.report();
}

/// Records how a message held or waiting behind a hold was done with, in its partition.
fn settle(recorder: &mut Recorder, partition: &PartitionState, msg: &Message, settled: Settled) {
    match settled {
        Settled::Done(outcome, started) => {
            recorder.record(outcome, started);
            partition.finish_all(&[msg.offset()]);
        }
        Settled::Abandoned => {
            recorder.forget_clock();
            partition.abandon();
        }
    }
}

/// How a message's first handler run went.
enum FirstRun {
    /// It succeeded on its first poll.
    AtOnce,
    /// It succeeded after waiting; it is timed on its own, from `started`.
    Waited { started: Option<Instant> },
    /// It failed, after `started`; the error policy takes over, in the message's span.
    Failed {
        error: HandlerError,
        started: Option<Instant>,
        span: tracing::Span,
    },
}

/// Marks `finished` offsets done in their partition and releases the messages done with.
fn report(
    partition: &PartitionState,
    finished: &mut Vec<i64>,
    intake: &Intake,
    released: &mut Vec<Vec<u8>>,
) {
    partition.finish_all(finished);
    finished.clear();
    intake.done(released);
}

/// Applies the error policy to a message whose handler failed with `error` on its first run,
/// which started at `started` (when runs are timed), running it again until it is done with.
/// The outcomes of runs before the last are recorded here, the last one's by the caller.
async fn recover(
    queue: &QueueShared,
    handler: &dyn Handler,
    partition: &PartitionState,
    msg: &Message,
    shutdown: &Shutdown,
    mut started: Option<Instant>,
    mut error: HandlerError,
) -> Settled {
    let policy = &queue.conf.retry;
    let mut attempt: u32 = 1;
    loop {
        // A payload that cannot be decoded will not decode on a second try.
        let retry = attempt < policy.attempts && error.kind() != HandlerErrorKind::Decode;
        if retry {
            timing::record_retried(queue, started);
            let wait = backoff(policy.backoff, policy.max_backoff, attempt);
            tracing::warn!(
                consumer = %queue.name,
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                attempt,
                retry_in = ?wait,
                error = %error,
                "handler failed, retrying"
            );
            if !wait_unless_stopped(wait, partition, shutdown).await {
                return Settled::Abandoned;
            }
            attempt += 1;
        } else {
            match give_up(queue, partition, msg, shutdown, started, &error, attempt).await {
                GiveUp::Settled(settled) => return settled,
                GiveUp::Hold => attempt = attempt.saturating_add(1),
            }
        }
        started = started.map(|_| Instant::now());
        match run_handler(handler, msg).await {
            Ok(()) => return Settled::Done(Outcome::Ok, started),
            Err(next) => error = next,
        }
    }
}

/// What the error policy does once a message has no retries left.
pub(super) enum GiveUp {
    Settled(Settled),
    /// `ForceCommit: false`: the message holds its partition and runs again.
    Hold,
}

/// The error policy for a message out of retries: the error handler, then the dead-letter
/// topic if there is one, else commit past it (`ForceCommit: true`) or hold it.
pub(super) async fn give_up(
    queue: &QueueShared,
    partition: &PartitionState,
    msg: &Message,
    shutdown: &Shutdown,
    started: Option<Instant>,
    error: &HandlerError,
    attempt: u32,
) -> GiveUp {
    let policy = &queue.conf.retry;
    queue.guarded("error handler", || (queue.error_handler)(msg, error));
    if let Some(dead_letter) = &queue.dead_letter {
        // A message bound for the dead-letter topic finishes only once it is there: a failed
        // write holds its key and its partition's commits, and is tried again, whatever
        // `ForceCommit` says, since committing past it would lose the message.
        loop {
            let headers = dead_letter_headers(msg, error, attempt);
            match dead_letter
                .send(msg.key(), msg.value(), Some(headers))
                .await
            {
                Ok(_) => {
                    tracing::warn!(
                        consumer = %queue.name,
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        dead_letter_topic = dead_letter.name(),
                        "message dead-lettered"
                    );
                    return GiveUp::Settled(Settled::Done(Outcome::DeadLettered, started));
                }
                Err(e) => tracing::error!(
                    consumer = %queue.name,
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    dead_letter_topic = dead_letter.name(),
                    error = %e,
                    retry_in = ?policy.max_backoff,
                    "dead letter not written; holding this message and its key until it is"
                ),
            }
            if !wait_unless_stopped(policy.max_backoff, partition, shutdown).await {
                return GiveUp::Settled(Settled::Abandoned);
            }
        }
    }
    if queue.conf.force_commit {
        return GiveUp::Settled(Settled::Done(Outcome::Failed, started));
    }
    timing::record_retried(queue, started);
    tracing::warn!(
        consumer = %queue.name,
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        retry_in = ?policy.max_backoff,
        "holding this message and its key until it succeeds (ForceCommit: false)"
    );
    if !wait_unless_stopped(policy.max_backoff, partition, shutdown).await {
        return GiveUp::Settled(Settled::Abandoned);
    }
    GiveUp::Hold
}

/// Runs the handler once, turning a panic into an error so the processor survives it.
async fn run_handler(handler: &dyn Handler, msg: &Message) -> Result<(), HandlerError> {
    let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(msg))) {
        Ok(future) => future,
        Err(panic) => return Err(HandlerError::panicked(&*panic)),
    };
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(HandlerError::panicked(&*panic)))
}

/// The wait before attempt `attempt + 1`: `initial`, doubling each time, capped at `max`.
pub(super) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    initial.saturating_mul(factor).min(max)
}

/// Sleeps, but wakes early and returns `false` when the service stops or the partition is
/// revoked, so that a retrying message never delays a rebalance or a shutdown.
pub(super) async fn wait_unless_stopped(
    wait: Duration,
    partition: &PartitionState,
    shutdown: &Shutdown,
) -> bool {
    const SLICE: Duration = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if shutdown.is_triggered() || partition.is_revoked() {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep((deadline - now).min(SLICE)) => {}
            () = shutdown.wait() => return false,
        }
    }
}

fn dead_letter_headers(msg: &Message, error: &HandlerError, attempts: u32) -> OwnedHeaders {
    use dead_letter_headers::*;
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers().len() + 5);
    for (name, value) in msg.headers().iter() {
        headers = headers.insert(Header { key: name, value });
    }
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let error = error.to_string();
    let attempts = attempts.to_string();
    for (key, value) in [
        (TOPIC, msg.topic()),
        (PARTITION, &partition),
        (OFFSET, &offset),
        (ERROR, &error),
        (ATTEMPTS, &attempts),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<_> = (1..=6).map(|a| backoff(ms(100), ms(1000), a)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(backoff(ms(100), ms(1000), u32::MAX), ms(1000));
    }
}

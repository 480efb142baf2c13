//! Timing handler runs for the metrics, with as few clock reads as the metrics can tell apart.
//!
//! Reading the clock costs about as much as the rest of what a processor does for a message
//! whose handler returns at once. The metrics sort handler times into buckets whose smallest
//! holds everything up to 0.1 ms, and the stat line shows tenths of a millisecond: for
//! messages that finish on their handler's first poll, one clock read after a group of them
//! sorts every one exactly whenever the whole group took no longer than that. So while
//! handlers are that fast, a processor reads the clock once per group of up to `GROUP`
//! messages and counts each with the group's average; the sum of all times stays exact.
//!
//! A group that takes longer than the smallest bucket is counted as one slow message among
//! fast ones, which is what a slow message arriving among fast ones looks like, and the
//! processor then times every message on its own until `TIMED_ALONE` in a row have been
//! fast again. A message that waits or fails is always timed on its own; so is every
//! message when the application has set its own `Metrics`, which it sees one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Outcome, QueueShared};
use crate::observe::{Tally, SMALLEST_HANDLER_TIME_BOUND};

/// Messages at most in a group timed by one clock read.
const GROUP: u32 = 16;
/// A message timed on its own counts as fast when a group of such would still fit the
/// smallest bucket.
const FAST: Duration = SMALLEST_HANDLER_TIME_BOUND
    .checked_div(GROUP)
    .expect("GROUP > 0");
/// Messages timed on their own after one that was not fast, before grouping again.
const TIMED_ALONE: u32 = 64;

/// Times one processor's handler runs and records their outcomes: in a tally that goes to
/// kq's metrics once per run of messages, and to the app's `Metrics` one by one.
pub(super) struct Recorder {
    queue: Arc<QueueShared>,
    tally: Option<Tally>,
    /// Whether runs are timed at all: something records them.
    timed: bool,
    /// Whether messages may be timed in groups: only kq's metrics see them.
    groups: bool,
    /// When the current message started, or with a group open, when the group did; `None`
    /// after a wait, so that the wait counts as nobody's.
    mark: Option<Instant>,
    /// Messages of the open group, finished since `mark`.
    grouped: u32,
    /// Messages still to be timed on their own before grouping again.
    alone: u32,
    /// The average time of the last group that fit the smallest bucket, for the fast
    /// messages of one that did not.
    fast_average: Duration,
}

impl Recorder {
    pub fn new(queue: Arc<QueueShared>) -> Self {
        let tally = queue.observed.as_ref().map(|_| Tally::default());
        Recorder {
            timed: tally.is_some() || queue.metrics.is_some(),
            groups: queue.metrics.is_none(),
            tally,
            queue,
            mark: None,
            grouped: 0,
            alone: TIMED_ALONE,
            fast_average: Duration::ZERO,
        }
    }

    /// A message's handler is about to run for the first time.
    pub fn begin(&mut self) {
        if self.timed && self.mark.is_none() {
            self.mark = Some(Instant::now());
        }
    }

    /// The message finished on its handler's first poll, and succeeded.
    pub fn finished_at_once(&mut self) {
        if !self.timed {
            return;
        }
        if self.groups && self.alone == 0 {
            self.grouped += 1;
            if self.grouped == GROUP {
                self.close_group(Instant::now());
            }
            return;
        }
        let now = Instant::now();
        let elapsed = self.mark.map_or(Duration::ZERO, |mark| now - mark);
        self.alone = if elapsed <= FAST {
            self.alone.saturating_sub(1)
        } else {
            TIMED_ALONE
        };
        self.count(Outcome::Ok, elapsed);
        self.mark = Some(now);
    }

    /// When the current message started, for a message that waits or failed and is timed on
    /// its own. An open group ends here; the message's first poll counts as part of it.
    pub fn started(&mut self) -> Option<Instant> {
        if !self.timed {
            return None;
        }
        if self.grouped > 0 {
            self.close_group(Instant::now());
        }
        self.alone = TIMED_ALONE;
        self.mark
    }

    /// Records the last run of a message timed on its own, which started at `started`.
    pub fn record(&mut self, outcome: Outcome, started: Option<Instant>) {
        let Some(started) = started else { return };
        let now = Instant::now();
        self.count(outcome, now - started);
        self.mark = Some(now);
    }

    fn count(&mut self, outcome: Outcome, elapsed: Duration) {
        app_metrics(&self.queue, outcome, elapsed);
        if let Some(tally) = &mut self.tally {
            tally.record(outcome, elapsed);
        }
    }

    /// Counts the open group's messages, which ended by `now`.
    fn close_group(&mut self, now: Instant) {
        let runs = std::mem::take(&mut self.grouped);
        let Some(mark) = self.mark.replace(now) else {
            return;
        };
        let Some(tally) = &mut self.tally else { return };
        let total = now - mark;
        if total <= SMALLEST_HANDLER_TIME_BOUND {
            self.fast_average = total / runs;
            tally.record_many(Outcome::Ok, self.fast_average, u64::from(runs));
        } else {
            let fast = runs - 1;
            let fast_total = self.fast_average * fast;
            tally.record_many(Outcome::Ok, self.fast_average, u64::from(fast));
            tally.record(Outcome::Ok, total.saturating_sub(fast_total));
            self.alone = TIMED_ALONE;
        }
    }

    /// The processor is about to wait: what it tallied goes to the metrics, and the time
    /// spent waiting will not count as the next message's.
    pub fn report(&mut self) {
        if self.grouped > 0 {
            self.close_group(Instant::now());
        }
        if let (Some(observed), Some(tally)) = (&self.queue.observed, &mut self.tally) {
            observed.add(tally);
        }
        self.forget_clock();
    }

    /// The next message starts when it starts, not when the last recorded run ended.
    pub fn forget_clock(&mut self) {
        self.mark = None;
    }
}

/// Records a run of a message that is tried again, at once: retries are rare, and what
/// happened before the wait for the next attempt should be in the metrics during it.
pub(super) fn record_retried(queue: &QueueShared, started: Option<Instant>) {
    let Some(started) = started else { return };
    let elapsed = started.elapsed();
    app_metrics(queue, Outcome::Retried, elapsed);
    if let Some(observed) = &queue.observed {
        let mut tally = Tally::default();
        tally.record(Outcome::Retried, elapsed);
        observed.add(&mut tally);
    }
}

/// Records a batch handler's call: `finished` of its messages done with it, each counted
/// with `share`, its equal share of the call's time; and the call's size (`taken`
/// messages) and time.
pub(super) fn record_batch(
    queue: &QueueShared,
    finished: usize,
    share: Duration,
    taken: usize,
    elapsed: Duration,
) {
    for _ in 0..finished {
        app_metrics(queue, Outcome::Ok, share);
    }
    if let Some(observed) = &queue.observed {
        let mut tally = Tally::default();
        tally.record_many(Outcome::Ok, share, finished as u64);
        observed.add(&mut tally);
        observed.record_batch(taken, elapsed);
    }
}

/// Records one message of a batch whose call failed at it: a retry, or what the error policy
/// made of it, with its share of the call's time.
pub(super) fn record_batch_message(queue: &QueueShared, outcome: Outcome, share: Duration) {
    app_metrics(queue, outcome, share);
    if let Some(observed) = &queue.observed {
        let mut tally = Tally::default();
        tally.record(outcome, share);
        observed.add(&mut tally);
    }
}

/// Reports a run to the application's `Metrics`, if it set any.
fn app_metrics(queue: &QueueShared, outcome: Outcome, elapsed: Duration) {
    if let Some(metrics) = &queue.metrics {
        queue.guarded("metrics", || metrics.record(&queue.name, outcome, elapsed));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::thread::sleep;

    use super::*;
    use crate::conf::KqConf;
    use crate::handler::{BoxFuture, Handler, HandlerError};
    use crate::message::Message;
    use crate::queue::Metrics;

    struct Noop;

    impl Handler for Noop {
        fn handle<'a>(&'a self, _: &'a Message) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Every handler time the application's metrics saw.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Duration>>);

    impl Metrics for Arc<Seen> {
        fn record(&self, _: &str, _: Outcome, elapsed: Duration) {
            self.0.lock().unwrap().push(elapsed);
        }
    }

    fn recorder(metrics: Option<Arc<Seen>>) -> Recorder {
        crate::observe::enable();
        let conf = KqConf::new(["127.0.0.1:9092"], "g", "timing-unit");
        Recorder::new(Arc::new(QueueShared {
            name: "timing-unit".into(),
            observed: crate::observe::ConsumerMetrics::new("timing-unit", "timing-unit"),
            consume: crate::queue::Consume::Each(Arc::new(Noop)),
            error_handler: Arc::new(|_, _| {}),
            custom_error_handler: false,
            metrics: metrics.map(|m| Arc::new(m) as Arc<dyn Metrics>),
            dead_letter: None,
            conf,
        }))
    }

    fn finish_fast(recorder: &mut Recorder, messages: u32) {
        for _ in 0..messages {
            recorder.begin();
            recorder.finished_at_once();
        }
    }

    /// Finishes fast messages until the recorder groups them, with no group open. (A message
    /// that is slow by chance, on a busy machine, puts grouping off.)
    fn until_grouping(recorder: &mut Recorder) {
        for _ in 0..100_000 {
            if recorder.alone == 0 && recorder.grouped == 0 {
                return;
            }
            finish_fast(recorder, 1);
        }
        panic!("never grouped");
    }

    /// Runs counted in the smallest bucket, in the others, and their times in all.
    fn tallied(recorder: &Recorder) -> (u64, u64, f64) {
        let (buckets, seconds) = recorder.tally.as_ref().expect("metrics on").buckets();
        (buckets[0], buckets[1..].iter().sum(), seconds)
    }

    #[test]
    fn fast_messages_are_counted_in_groups_and_every_one_is_counted() {
        let mut recorder = recorder(None);
        until_grouping(&mut recorder);
        let (fast, slow, _) = tallied(&recorder);
        finish_fast(&mut recorder, 3);
        // Three messages and no clock read yet: the group is open.
        assert_eq!(recorder.grouped, 3);
        assert_eq!(tallied(&recorder).0, fast);
        finish_fast(&mut recorder, 10 * GROUP);
        // As before the processor waits, which also hands the tally on.
        recorder.close_group(Instant::now());
        let (fast_after, slow_after, _) = tallied(&recorder);
        assert_eq!(
            fast_after + slow_after,
            fast + slow + u64::from(10 * GROUP + 3)
        );
    }

    #[test]
    fn a_slow_message_among_fast_ones_is_counted_as_one_and_ends_grouping() {
        let mut recorder = recorder(None);
        until_grouping(&mut recorder);
        let (fast, slow, seconds) = tallied(&recorder);
        finish_fast(&mut recorder, GROUP - 1);
        // The group's last message takes 3 ms.
        recorder.begin();
        sleep(Duration::from_millis(3));
        recorder.finished_at_once();
        let (fast_after, slow_after, seconds_after) = tallied(&recorder);
        assert_eq!(fast_after, fast + u64::from(GROUP - 1));
        assert_eq!(slow_after, slow + 1);
        assert!(
            seconds_after - seconds >= 0.003,
            "{seconds} {seconds_after}"
        );
        assert_eq!(recorder.alone, TIMED_ALONE);
    }

    #[test]
    fn a_message_that_waits_is_timed_on_its_own() {
        let mut recorder = recorder(None);
        until_grouping(&mut recorder);
        finish_fast(&mut recorder, 5);
        let (fast, slow, _) = tallied(&recorder);
        recorder.begin();
        let started = recorder.started();
        assert!(started.is_some());
        // The group it interrupted is counted first.
        assert_eq!(tallied(&recorder).0 + tallied(&recorder).1, fast + slow + 5);
        sleep(Duration::from_millis(2));
        recorder.record(Outcome::Ok, started);
        assert_eq!(tallied(&recorder).1, slow + 1);
        assert_eq!(recorder.alone, TIMED_ALONE);
    }

    #[test]
    fn the_applications_metrics_see_every_message_on_its_own() {
        let seen = Arc::new(Seen::default());
        let mut recorder = recorder(Some(seen.clone()));
        finish_fast(&mut recorder, TIMED_ALONE + 3 * GROUP);
        assert_eq!(
            seen.0.lock().unwrap().len(),
            (TIMED_ALONE + 3 * GROUP) as usize
        );
        assert_eq!(recorder.grouped, 0);
    }
}

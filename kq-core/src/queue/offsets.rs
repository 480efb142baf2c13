//! Per-partition progress: which fetched offsets are queued, running or done, and the
//! watermark — the offset below which every message is done — that is safe to commit.
//!
//! A commit tells Kafka "everything before this offset is handled". Committing the highest
//! finished offset (go-queue's behaviour) loses every slower message below it on a crash, so
//! kq commits only the watermark.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::offset_map::{self, Finished, TooLarge};
use crate::sync::lock;

/// What a commit of a partition carries: its watermark, and the offset map of the messages
/// finished above it (`None` when there are none; `TooLarge` when it would not fit).
pub(crate) type CommitPoint = (i64, Result<Option<String>, TooLarge>);

#[derive(Debug)]
struct Progress {
    /// Offsets fetched and not yet below the watermark, ascending, with whether each is done.
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset fetched, so the watermark when the window is empty.
    next: i64,
    /// The last watermark stored for librdkafka's commits.
    stored: i64,
    /// A message above the watermark finished since the offset map was last taken.
    map_changed: bool,
    /// When the watermark last moved, as stored.
    moved_at: Instant,
}

/// One assignment of one partition to this group member. A revoked partition that comes
/// back later gets a fresh `PartitionState`, so late work from the old assignment can never
/// move the new one's watermark.
///
/// `enter`, `running` and `is_revoked` take no lock: they run on the processors while the
/// fetch thread records new offsets. `revoke` and `enter` order themselves through the two
/// sequentially consistent atomics: a message either sees the revoke and does not start, or
/// the revoke's drain sees it counted as running.
#[derive(Debug)]
pub(crate) struct PartitionState {
    partition: i32,
    revoked: AtomicBool,
    running: AtomicUsize,
    /// `progress.window.len()`, readable without the lock.
    window_len: AtomicUsize,
    progress: Mutex<Progress>,
    /// Offsets a previous owner finished, per the offset map committed with the offset this
    /// assignment started from: skipped as they are fetched again.
    finished_before: Mutex<Finished>,
    /// The offset after the last of them, readable without the lock; `i64::MIN` for none.
    finished_before_end: AtomicI64,
}

impl PartitionState {
    pub fn new(partition: i32) -> Arc<Self> {
        Arc::new(PartitionState {
            partition,
            revoked: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            window_len: AtomicUsize::new(0),
            progress: Mutex::new(Progress {
                window: VecDeque::new(),
                next: -1,
                stored: -1,
                map_changed: false,
                moved_at: Instant::now(),
            }),
            finished_before: Mutex::default(),
            finished_before_end: AtomicI64::new(i64::MIN),
        })
    }

    /// Takes the offsets a previous owner finished, to skip them as they are fetched.
    pub fn skip_finished(&self, finished: Finished) {
        let end = finished.end().unwrap_or(i64::MIN);
        *lock(&self.finished_before) = finished;
        self.finished_before_end.store(end, Ordering::Release);
    }

    /// Whether a previous owner finished `offset`. Asked of each offset fetched, ascending.
    pub fn finished_before(&self, offset: i64) -> bool {
        if offset >= self.finished_before_end.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.finished_before).take(offset)
    }

    /// Records a fetched offset that is done already (a previous owner finished it): in the
    /// window, and so in the offset map, as done.
    pub fn fetched_done(&self, offset: i64) {
        let mut p = self.progress();
        if !p.window.is_empty() {
            p.window.push_back((offset, true));
            p.map_changed = true;
        }
        p.next = offset + 1;
        self.window_len.store(p.window.len(), Ordering::Release);
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        // A panic while the lock is held cannot leave `Progress` half-updated (each method
        // finishes its change before anything can panic), so a poisoned lock is still sound.
        lock(&self.progress)
    }

    /// Records fetched offsets under one lock. Offsets arrive in ascending order per
    /// partition.
    pub fn fetched_all(&self, offsets: &[i64]) {
        let Some(&last) = offsets.last() else { return };
        let mut p = self.progress();
        p.window.extend(offsets.iter().map(|&o| (o, false)));
        p.next = last + 1;
        self.window_len.store(p.window.len(), Ordering::Release);
    }

    /// Counts a run of `messages` as running before the first of them starts: one atomic
    /// for the run, not one per message, on a counter every processor shares. Each message
    /// then starts only if `is_revoked` is false after this, since a revoked partition's
    /// queued messages belong to its next owner; each leaves the count through `finish_all`,
    /// `abandon` or `skip`.
    pub fn enter(&self, messages: usize) {
        self.running.fetch_add(messages, Ordering::SeqCst);
    }

    /// Leaves `messages` of a run that did not start (revoked, or the service stopping).
    pub fn skip(&self, messages: usize) {
        if messages > 0 {
            self.running.fetch_sub(messages, Ordering::SeqCst);
        }
    }

    /// Marks started offsets as done and slides the watermark past every done offset in
    /// front.
    pub fn finish_all(&self, offsets: &[i64]) {
        if offsets.is_empty() {
            return;
        }
        {
            let mut p = self.progress();
            for &offset in offsets {
                if let Some(i) = position(&p.window, offset) {
                    p.window[i].1 = true;
                    // Above the watermark, it changes the offset map.
                    p.map_changed |= i > 0;
                }
            }
            while matches!(p.window.front(), Some((_, true))) {
                p.window.pop_front();
            }
            self.window_len.store(p.window.len(), Ordering::Release);
        }
        self.running.fetch_sub(offsets.len(), Ordering::SeqCst);
    }

    /// Gives up a started offset without finishing it, so the watermark stays below it and it
    /// is delivered again.
    pub fn abandon(&self) {
        self.skip(1);
    }

    /// The offset to commit: the first one not done, or one past the last fetched.
    #[cfg(test)]
    pub fn watermark(&self) -> Option<i64> {
        let p = self.progress();
        watermark_of(&p)
    }

    /// The commit point if the watermark moved since the last call, recording it as stored.
    /// librdkafka sends a stored offset again until a commit of it succeeds.
    pub fn take_store(&self) -> Option<CommitPoint> {
        self.point_if(|p, mark| {
            if mark <= p.stored {
                return false;
            }
            p.stored = mark;
            p.map_changed = false;
            p.moved_at = Instant::now();
            true
        })
    }

    /// The commit point if the watermark has stayed where it was stored for `stuck` or more
    /// (a key held, a slow handler) while the offset map changed: librdkafka sends no commit
    /// for an offset it committed already, so kq sends this one itself.
    pub fn take_map_change(&self, stuck: Duration) -> Option<CommitPoint> {
        self.point_if(|p, mark| {
            if !p.map_changed || mark != p.stored || p.moved_at.elapsed() < stuck {
                return false;
            }
            p.map_changed = false;
            true
        })
    }

    /// The commit point now, for a commit kq sends itself.
    pub fn commit_point(&self) -> Option<CommitPoint> {
        self.point_if(|_, _| true)
    }

    /// The commit point if `take` says so of the progress and its watermark (recording what
    /// it takes). The offsets finished above the watermark are read under the lock, and
    /// encoded after it.
    fn point_if(&self, take: impl FnOnce(&mut Progress, i64) -> bool) -> Option<CommitPoint> {
        let (mark, finished) = {
            let mut p = self.progress();
            let mark = watermark_of(&p)?;
            if !take(&mut p, mark) {
                return None;
            }
            (mark, finished_above(&p))
        };
        Some((mark, offset_map::encode(mark, finished)))
    }

    /// Offsets fetched but not yet below the watermark.
    pub fn window_len(&self) -> usize {
        self.window_len.load(Ordering::Acquire)
    }

    /// Messages of runs in progress: running, or waiting behind one that runs.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops queued messages from starting; running ones finish.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }
}

/// The offsets finished above the watermark, ascending.
fn finished_above(p: &Progress) -> Vec<i64> {
    p.window
        .iter()
        .filter(|&&(_, done)| done)
        .map(|&(offset, _)| offset)
        .collect()
}

fn watermark_of(p: &Progress) -> Option<i64> {
    match p.window.front() {
        Some(&(offset, _)) => Some(offset),
        None if p.next >= 0 => Some(p.next),
        None => None,
    }
}

/// Where `offset` sits in the window. Offsets are mostly consecutive, so its distance from the
/// front is tried first; compacted topics and transaction markers leave gaps, which the
/// binary search covers.
fn position(window: &VecDeque<(i64, bool)>, offset: i64) -> Option<usize> {
    let front = window.front()?.0;
    let guess = usize::try_from(offset.checked_sub(front)?).ok()?;
    if window.get(guess).is_some_and(|&(o, _)| o == offset) {
        return Some(guess);
    }
    window.binary_search_by_key(&offset, |&(o, _)| o).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(offsets: impl IntoIterator<Item = i64>) -> Arc<PartitionState> {
        let state = PartitionState::new(0);
        let offsets: Vec<i64> = offsets.into_iter().collect();
        state.fetched_all(&offsets);
        state
    }

    #[test]
    fn nothing_fetched_nothing_to_commit() {
        assert_eq!(PartitionState::new(0).watermark(), None);
    }

    #[test]
    fn watermark_never_passes_an_unfinished_offset() {
        let state = fetched(10..15);
        state.enter(5);
        for o in (11..15).rev() {
            state.finish_all(&[o]);
            assert_eq!(state.watermark(), Some(10), "after finishing {o}");
        }
        state.finish_all(&[10]);
        assert_eq!(state.watermark(), Some(15));
        assert_eq!(state.window_len(), 0);
        assert_eq!(state.running(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        // Compacted topics and transaction markers leave holes in the offset sequence.
        let state = fetched([3, 7, 8, 20]);
        state.enter(4);
        state.finish_all(&[7]);
        state.finish_all(&[3]);
        assert_eq!(state.watermark(), Some(8));
        state.finish_all(&[20]);
        state.finish_all(&[8]);
        assert_eq!(state.watermark(), Some(21));
    }

    #[test]
    fn offsets_are_found_with_and_without_gaps() {
        let consecutive: VecDeque<_> = (100..110).map(|o| (o, false)).collect();
        assert_eq!(position(&consecutive, 100), Some(0));
        assert_eq!(position(&consecutive, 107), Some(7));
        assert_eq!(position(&consecutive, 99), None);
        assert_eq!(position(&consecutive, 110), None);
        let gapped: VecDeque<_> = [3, 7, 8, 20].into_iter().map(|o| (o, false)).collect();
        assert_eq!(position(&gapped, 20), Some(3));
        assert_eq!(position(&gapped, 8), Some(2));
        assert_eq!(position(&gapped, 5), None);
        assert_eq!(position(&VecDeque::new(), 0), None);
    }

    #[test]
    fn take_store_reports_each_watermark_once() {
        let state = fetched(0..3);
        assert_eq!(state.take_store(), Some((0, Ok(None))));
        assert_eq!(state.take_store(), None);
        state.enter(2);
        state.finish_all(&[0]);
        state.finish_all(&[1]);
        assert_eq!(state.take_store(), Some((2, Ok(None))));
        assert_eq!(state.take_store(), None);
    }

    #[test]
    fn a_revoke_waits_for_the_run_in_progress_whose_rest_is_skipped() {
        let state = fetched(0..3);
        state.enter(3);
        assert!(!state.is_revoked(), "offset 0 starts");
        state.revoke();
        assert!(state.is_revoked(), "offsets 1 and 2 do not");
        assert_eq!(state.running(), 3, "the drain waits for the whole run");
        state.finish_all(&[0]);
        state.skip(2);
        assert_eq!(state.running(), 0);
        assert_eq!(state.watermark(), Some(1));
    }

    #[test]
    fn what_finished_above_the_watermark_travels_in_its_offset_map() {
        let state = fetched(10..20);
        state.enter(10);
        state.finish_all(&[12, 13, 15]);
        let (mark, record) = state.take_store().unwrap();
        assert_eq!(mark, 10);
        let text = record.unwrap().unwrap();
        let mut finished = offset_map::decode(&text, 10, 20).unwrap().unwrap();
        let skipped: Vec<i64> = (10..20).filter(|&o| finished.take(o)).collect();
        assert_eq!(skipped, [12, 13, 15]);
        // The watermark stays; the map changes, and is taken once.
        assert_eq!(state.take_store(), None);
        assert_eq!(state.take_map_change(Duration::ZERO), None);
        state.finish_all(&[18]);
        assert_eq!(
            state.take_map_change(Duration::from_secs(60)),
            None,
            "not stuck for long yet"
        );
        let (mark, record) = state.take_map_change(Duration::ZERO).unwrap();
        assert_eq!(mark, 10);
        assert!(record.unwrap().is_some());
        assert_eq!(state.take_map_change(Duration::ZERO), None);
    }

    #[test]
    fn offsets_a_previous_owner_finished_are_skipped_and_count_as_done() {
        let state = fetched(10..11);
        let text = offset_map::encode(10, [11, 12]).unwrap().unwrap();
        state.skip_finished(offset_map::decode(&text, 10, 20).unwrap().unwrap());
        assert!(!state.finished_before(10));
        assert!(state.finished_before(11));
        state.fetched_done(11);
        assert!(state.finished_before(12));
        state.fetched_done(12);
        assert!(!state.finished_before(13));
        assert_eq!(state.watermark(), Some(10));
        state.enter(1);
        state.finish_all(&[10]);
        assert_eq!(state.watermark(), Some(13));
    }

    #[test]
    fn abandoned_work_holds_the_watermark() {
        let state = fetched(0..2);
        state.enter(2);
        state.finish_all(&[1]);
        state.abandon();
        assert_eq!(state.running(), 0);
        assert_eq!(state.watermark(), Some(0));
    }
}

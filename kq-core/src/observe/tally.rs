//! What processors count: outcomes and handler times, tallied per processor and added to the
//! `kq_handler_duration_seconds` histogram and the stat window once per run of messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::outcome::{outcome_index, Outcome, OUTCOME_LABELS};
use super::stat::MAX_SAMPLES;

/// How many upper bounds the handler time buckets have; one more bucket holds the rest.
const HANDLER_TIME_BOUND_COUNT: usize = 10;
/// Handler time buckets: the bounds and the one above them all.
const HANDLER_TIME_BUCKETS: usize = HANDLER_TIME_BOUND_COUNT + 1;

/// Upper bounds of the handler time buckets in nanoseconds: 0.1 ms to 26 s, by fours. A
/// handler run is sorted by an integer comparison, where a message takes a fraction of a
/// microsecond; the histogram shows them in seconds (`bound_seconds`).
const HANDLER_TIME_BOUNDS_NANOS: [u64; HANDLER_TIME_BOUND_COUNT] = {
    let mut bounds = [0; HANDLER_TIME_BOUND_COUNT];
    let (mut i, mut bound) = (0, 100_000);
    while i < HANDLER_TIME_BOUND_COUNT {
        bounds[i] = bound;
        bound *= 4;
        i += 1;
    }
    bounds
};

/// The smallest handler time bucket's bound: the metrics tell no two times below it apart,
/// and neither does the stat line, which shows tenths of a millisecond.
pub(crate) const SMALLEST_HANDLER_TIME_BOUND: Duration =
    Duration::from_nanos(HANDLER_TIME_BOUNDS_NANOS[0]);

/// A bucket's bound in seconds, as the histogram shows it.
fn bound_seconds(nanos: u64) -> f64 {
    // Divided rather than scaled by 1e-9, so that 0.1 ms reads as 0.0001 exactly.
    nanos as f64 / 1e9
}

/// The outcomes and handler times one processor saw since it last reported them.
///
/// Every processor tallies on its own and adds its tally to the shared metrics once per run of
/// messages: recording each message there took two locks, which the processors contended for.
#[derive(Default)]
pub(crate) struct Tally {
    /// Counts by `outcome_index`.
    pub(super) outcomes: [u64; OUTCOME_LABELS.len()],
    /// Counts by handler time bucket (`HANDLER_TIME_BOUNDS_NANOS`, then one above them all).
    buckets: [u64; HANDLER_TIME_BUCKETS],
    seconds: f64,
    /// Handler times in milliseconds for the stat line.
    pub(super) millis: Vec<f64>,
}

impl Tally {
    /// Counts one handler run.
    pub fn record(&mut self, outcome: Outcome, elapsed: Duration) {
        self.record_many(outcome, elapsed, 1);
    }

    /// Counts `runs` handler runs that took `elapsed` each.
    pub fn record_many(&mut self, outcome: Outcome, elapsed: Duration, runs: u64) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.outcomes[outcome_index(outcome)] += runs;
        let bucket = HANDLER_TIME_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(HANDLER_TIME_BOUND_COUNT);
        self.buckets[bucket] += runs;
        let seconds = elapsed.as_secs_f64();
        self.seconds += seconds * runs as f64;
        let room = MAX_SAMPLES.saturating_sub(self.millis.len());
        let samples = usize::try_from(runs).unwrap_or(usize::MAX).min(room);
        self.millis
            .extend(std::iter::repeat_n(seconds * 1000.0, samples));
    }

    pub(super) fn handled(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// Runs counted by handler time bucket, and their times in all.
    #[cfg(test)]
    pub fn buckets(&self) -> (&[u64], f64) {
        (&self.buckets, self.seconds)
    }

    pub(super) fn clear(&mut self) {
        self.outcomes = [0; OUTCOME_LABELS.len()];
        self.buckets = [0; HANDLER_TIME_BUCKETS];
        self.seconds = 0.0;
        self.millis.clear();
    }
}

/// The `handler_duration_seconds` histogram. Unlike `prometheus_client`'s histogram, which
/// takes a lock per observation, it takes a processor's whole tally with a few atomic adds.
#[derive(Debug, Clone)]
pub(super) struct HandlerTimes(Arc<HandlerTimesInner>);

#[derive(Debug)]
struct HandlerTimesInner {
    /// Counts by bucket, as in `Tally::buckets`.
    buckets: [AtomicU64; HANDLER_TIME_BUCKETS],
    /// The sum of all times in seconds, as `f64` bits.
    seconds: AtomicU64,
}

impl HandlerTimes {
    pub(super) fn new() -> Self {
        HandlerTimes(Arc::new(HandlerTimesInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub(super) fn add(&self, tally: &Tally) {
        for (bucket, &n) in self.0.buckets.iter().zip(&tally.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Ordering::Relaxed);
            }
        }
        // Never fails: the closure always returns a value.
        let _ = self
            .0
            .seconds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + tally.seconds).to_bits())
            });
    }
}

impl TypedMetric for HandlerTimes {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HandlerTimes {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self
            .0
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = HANDLER_TIME_BOUNDS_NANOS
            .iter()
            .map(|&nanos| bound_seconds(nanos))
            // The text format writes the last bucket's bound as `+Inf`.
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        let seconds = f64::from_bits(self.0.seconds.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(seconds, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn handler_times_add_up_tallies_in_prometheus_buckets() {
        let times = HandlerTimes::new();
        let mut tally = Tally::default();
        // 0.05 ms and 0.1 ms fall in the first bucket (le 0.0001), 1 ms in the third
        // (le 0.0016), a minute above every bound.
        for micros in [50, 100, 1000, 60_000_000] {
            tally.record(Outcome::Ok, Duration::from_micros(micros));
        }
        times.add(&tally);
        times.add(&tally);
        let mut registry = Registry::default();
        registry.register("handler", "Handler times", times);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "handler_bucket{le=\"0.0001\"} 4",
            "handler_bucket{le=\"0.0004\"} 4",
            "handler_bucket{le=\"0.0016\"} 6",
            "handler_bucket{le=\"26.2144\"} 6",
            "handler_bucket{le=\"+Inf\"} 8",
            "handler_count 8",
            "handler_sum 120.002",
        ] {
            assert!(text.contains(line), "{line} is not in\n{text}");
        }
    }

    #[test]
    fn runs_are_sorted_by_the_bounds_the_histogram_shows() {
        // 0.1 ms to 26 s by fours, as the histogram has always shown them.
        let mut expected = 0.0001;
        for &nanos in &HANDLER_TIME_BOUNDS_NANOS {
            assert_eq!(bound_seconds(nanos), expected, "{nanos} ns");
            expected *= 4.0;
        }
        let mut tally = Tally::default();
        tally.record_many(Outcome::Ok, Duration::from_nanos(100_000), 3);
        tally.record(Outcome::Ok, Duration::from_nanos(100_001));
        assert_eq!(tally.buckets[..2], [3, 1]);
        assert_eq!(tally.handled(), 4);
        let expected = [0.1, 0.1, 0.1, 0.100001];
        assert_eq!(tally.millis.len(), expected.len());
        for (got, want) in tally.millis.iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{:?}", tally.millis);
        }
    }
}

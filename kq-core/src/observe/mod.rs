//! Operations: Prometheus metrics, health and readiness over HTTP, and go-zero's stat log.
//!
//! Nothing here costs anything until [`serve`] (or `kq::main!` with `DevServer` or
//! `Prometheus` configured) turns it on: queues started after that record every message's
//! outcome and handler time, members report their liveness, and pushers count deliveries.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::queue::Outcome;
use crate::sync::lock;

/// go-zero's `DevServer` block: where metrics, health and readiness are served.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DevServerConf {
    /// Serve at all (go-zero's default: no).
    pub enabled: bool,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on.
    pub port: u16,
    /// Prometheus metrics.
    pub metrics_path: String,
    /// Liveness: 200 while every consumer loop runs, 503 once one died or is stuck.
    pub health_path: String,
    /// Readiness (kq's key): 200 once every consumer joined its group and is fetching.
    pub ready_path: String,
}

impl Default for DevServerConf {
    fn default() -> Self {
        DevServerConf {
            enabled: false,
            host: "0.0.0.0".into(),
            port: 6060,
            metrics_path: "/metrics".into(),
            health_path: "/healthz".into(),
            ready_path: "/readyz".into(),
        }
    }
}

/// go-zero's `Prometheus` block: metrics only, on a port of their own.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PrometheusConf {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 (the default) means no Prometheus server.
    pub port: u16,
    /// The metrics path.
    pub path: String,
}

impl Default for PrometheusConf {
    fn default() -> Self {
        PrometheusConf {
            host: "0.0.0.0".into(),
            port: 0,
            path: "/metrics".into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    consumer: String,
    topic: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    consumer: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    consumer: String,
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebalanceLabels {
    consumer: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PusherLabels {
    topic: String,
}

/// Every metric kq exports, and the members whose health it reports.
struct Observer {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    handler_seconds: Family<ConsumerLabels, HandlerTimes>,
    in_flight: Family<ConsumerLabels, Gauge>,
    lag: Family<PartitionLabels, Gauge>,
    commits: Family<TopicLabels, Counter>,
    rebalances: Family<RebalanceLabels, Counter>,
    pushed: Family<PusherLabels, Counter>,
    push_failed: Family<PusherLabels, Counter>,
    members: Mutex<Vec<Arc<MemberHealth>>>,
    started: Instant,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static OBSERVER: OnceLock<Observer> = OnceLock::new();

fn observer() -> &'static Observer {
    OBSERVER.get_or_init(|| {
        let mut registry = Registry::with_prefix("kq");
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages handled, by outcome: ok, error (failed for good), retried, dead_lettered",
            messages.clone(),
        );
        let handler_seconds =
            Family::<ConsumerLabels, HandlerTimes>::new_with_constructor(HandlerTimes::new);
        registry.register(
            "handler_duration_seconds",
            "Time of one handler run",
            handler_seconds.clone(),
        );
        let in_flight = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "in_flight",
            "Messages fetched and not yet done (queued or running)",
            in_flight.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the partition's end and the consumer's position",
            lag.clone(),
        );
        let commits = Family::<TopicLabels, Counter>::default();
        registry.register(
            "commits",
            "Offset commits sent on CommitInterval, and confirmed ones on revoke and stop",
            commits.clone(),
        );
        let rebalances = Family::<RebalanceLabels, Counter>::default();
        registry.register(
            "rebalances",
            "Partition assignments and revocations",
            rebalances.clone(),
        );
        let pushed = Family::<PusherLabels, Counter>::default();
        registry.register(
            "pusher_delivered",
            "Messages the broker acknowledged",
            pushed.clone(),
        );
        let push_failed = Family::<PusherLabels, Counter>::default();
        registry.register(
            "pusher_failed",
            "Messages that could not be delivered",
            push_failed.clone(),
        );
        Observer {
            registry,
            messages,
            handler_seconds,
            in_flight,
            lag,
            commits,
            rebalances,
            pushed,
            push_failed,
            members: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    })
}

/// Whether metrics and health are being collected.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Starts collecting, without serving: for services that serve [`render_metrics`] and
/// [`health`] from an HTTP server of their own.
pub fn enable() {
    observer();
    ENABLED.store(true, Ordering::Release);
}

/// The metrics in Prometheus' text format.
pub fn render_metrics() -> String {
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &observer().registry);
    text
}

/// The health of every consumer member started since collecting began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// No consumer loop died or is stuck.
    pub live: bool,
    /// Live, and every running member joined its group and is fetching.
    pub ready: bool,
    /// One line per member: consumer, member, state.
    pub detail: String,
}

/// Liveness and readiness now.
pub fn health() -> Health {
    let observer = observer();
    let members = lock(&observer.members);
    let now = observer.millis();
    let mut live = true;
    let mut ready = !members.is_empty();
    let mut detail = String::new();
    for member in members.iter() {
        let state = match member.state.load(Ordering::Acquire) {
            FAILED => {
                live = false;
                "failed"
            }
            STOPPED => "stopped",
            _ if now.saturating_sub(member.heartbeat.load(Ordering::Acquire))
                > member.stuck_after.as_millis() as u64 =>
            {
                live = false;
                "stuck"
            }
            _ if !member.joined.load(Ordering::Acquire) => "joining",
            _ => "fetching",
        };
        if state != "fetching" {
            ready = false;
        }
        let _ = writeln!(
            detail,
            "{} member {}: {state}",
            member.consumer, member.index
        );
    }
    Health {
        live,
        ready: live && ready,
        detail,
    }
}

/// Serves metrics, health and readiness on `listener` until the task is dropped, and turns
/// collection on.
pub async fn serve(listener: TcpListener, conf: DevServerConf) -> std::io::Result<()> {
    enable();
    let conf = Arc::new(conf);
    loop {
        let (stream, _) = listener.accept().await?;
        let conf = conf.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &conf).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        });
    }
}

/// Answers one HTTP/1.1 GET and closes the connection.
async fn answer(mut stream: TcpStream, conf: &DevServerConf) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" {
        ("405 Method Not Allowed", "text/plain", String::new())
    } else if path == conf.metrics_path {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render_metrics(),
        )
    } else if path == conf.health_path || path == conf.ready_path {
        let health = health();
        let ok = if path == conf.health_path {
            health.live
        } else {
            health.ready
        };
        let status = if ok {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        (status, "text/plain; charset=utf-8", health.detail)
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

impl Observer {
    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const FAILED: u8 = 2;

/// One member's liveness, reported by its fetch loop and rebalance callbacks.
pub(crate) struct MemberHealth {
    consumer: String,
    index: usize,
    joined: AtomicBool,
    heartbeat: AtomicU64,
    state: AtomicU8,
    /// A loop that has not come round for this long is stuck (a revoke may legitimately
    /// hold it for `ShutdownTimeout`).
    stuck_after: Duration,
}

impl MemberHealth {
    pub fn beat(&self) {
        self.heartbeat.store(observer().millis(), Ordering::Release);
    }

    pub fn joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    pub fn stopped(&self, failed: bool) {
        let state = if failed { FAILED } else { STOPPED };
        self.state.store(state, Ordering::Release);
    }
}

/// A consumer's handles on its metrics, taken once so that recording takes no lookups.
pub(crate) struct ConsumerMetrics {
    name: String,
    topic: String,
    /// `kq_messages_total` by outcome, by `outcome_index`.
    outcomes: [Counter; OUTCOME_LABELS.len()],
    handler_seconds: HandlerTimes,
    in_flight: Gauge,
    commits: Counter,
    stats: Mutex<StatWindow>,
}

impl ConsumerMetrics {
    /// The consumer's metrics, or `None` while collection is off.
    pub fn new(name: &str, topic: &str) -> Option<Arc<Self>> {
        if !enabled() {
            return None;
        }
        let o = observer();
        let outcome = |outcome| {
            o.messages
                .get_or_create(&MessageLabels {
                    consumer: name.into(),
                    topic: topic.into(),
                    outcome,
                })
                .clone()
        };
        let consumer = ConsumerLabels {
            consumer: name.into(),
        };
        Some(Arc::new(ConsumerMetrics {
            name: name.into(),
            topic: topic.into(),
            outcomes: OUTCOME_LABELS.map(outcome),
            handler_seconds: o.handler_seconds.get_or_create(&consumer).clone(),
            in_flight: o.in_flight.get_or_create(&consumer).clone(),
            commits: o
                .commits
                .get_or_create(&TopicLabels {
                    consumer: name.into(),
                    topic: topic.into(),
                })
                .clone(),
            stats: Mutex::default(),
        }))
    }

    /// Registers a member for health reports.
    pub fn member(&self, index: usize, stuck_after: Duration) -> Arc<MemberHealth> {
        let o = observer();
        let health = Arc::new(MemberHealth {
            consumer: self.name.clone(),
            index,
            joined: AtomicBool::new(false),
            heartbeat: AtomicU64::new(o.millis()),
            state: AtomicU8::new(RUNNING),
            stuck_after,
        });
        lock(&o.members).push(health.clone());
        health
    }

    /// Adds what a processor tallied to the metrics and the stat window, and empties the tally.
    pub fn add(&self, tally: &mut Tally) {
        if tally.handled() == 0 {
            return;
        }
        for (counter, n) in self.outcomes.iter().zip(tally.outcomes) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.handler_seconds.add(tally);
        lock(&self.stats).add(tally);
        tally.clear();
    }

    pub fn set_in_flight(&self, messages: usize) {
        self.in_flight.set(messages as i64);
    }

    pub fn committed(&self) {
        self.commits.inc();
    }

    pub fn rebalanced(&self, kind: &'static str) {
        observer()
            .rebalances
            .get_or_create(&RebalanceLabels {
                consumer: self.name.clone(),
                kind,
            })
            .inc();
    }

    pub fn set_lag(&self, partition: i32, lag: i64) {
        observer()
            .lag
            .get_or_create(&PartitionLabels {
                consumer: self.name.clone(),
                topic: self.topic.clone(),
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// go-zero's stat line for the window since the last call, which starts a new window.
    pub fn stat_line(&self, window: Duration) -> String {
        let stats = std::mem::take(&mut *lock(&self.stats));
        stats.line(&self.name, window)
    }
}

/// Counts delivered and failed pushes of one topic.
pub(crate) fn pusher_counters(topic: &str) -> Option<(Counter, Counter)> {
    if !enabled() {
        return None;
    }
    let labels = PusherLabels {
        topic: topic.into(),
    };
    let o = observer();
    Some((
        o.pushed.get_or_create(&labels).clone(),
        o.push_failed.get_or_create(&labels).clone(),
    ))
}

/// Where tallies and counters keep each outcome.
fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Retried => 2,
        Outcome::DeadLettered => 3,
    }
}

/// The `outcome` label of `kq_messages_total`, by `outcome_index`.
const OUTCOME_LABELS: [&str; 4] = ["ok", "error", "retried", "dead_lettered"];

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
    outcomes: [u64; OUTCOME_LABELS.len()],
    /// Counts by handler time bucket (`HANDLER_TIME_BOUNDS_NANOS`, then one above them all).
    buckets: [u64; HANDLER_TIME_BUCKETS],
    seconds: f64,
    /// Handler times in milliseconds for the stat line.
    millis: Vec<f64>,
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

    fn handled(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// Runs counted by handler time bucket, and their times in all.
    #[cfg(test)]
    pub fn buckets(&self) -> (&[u64], f64) {
        (&self.buckets, self.seconds)
    }

    fn clear(&mut self) {
        self.outcomes = [0; OUTCOME_LABELS.len()];
        self.buckets = [0; HANDLER_TIME_BUCKETS];
        self.seconds = 0.0;
        self.millis.clear();
    }
}

/// The `handler_duration_seconds` histogram. Unlike `prometheus_client`'s histogram, which
/// takes a lock per observation, it takes a processor's whole tally with a few atomic adds.
#[derive(Debug, Clone)]
struct HandlerTimes(Arc<HandlerTimesInner>);

#[derive(Debug)]
struct HandlerTimesInner {
    /// Counts by bucket, as in `Tally::buckets`.
    buckets: [AtomicU64; HANDLER_TIME_BUCKETS],
    /// The sum of all times in seconds, as `f64` bits.
    seconds: AtomicU64,
}

impl HandlerTimes {
    fn new() -> Self {
        HandlerTimes(Arc::new(HandlerTimesInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            seconds: AtomicU64::new(0f64.to_bits()),
        }))
    }

    fn add(&self, tally: &Tally) {
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

/// Handler times of one stat window (go-zero's `stat.Metrics`).
#[derive(Default)]
struct StatWindow {
    handled: u64,
    drops: u64,
    /// Handler times in milliseconds; at most `MAX_SAMPLES` are kept, the count is exact.
    millis: Vec<f64>,
}

const MAX_SAMPLES: usize = 100_000;

impl StatWindow {
    fn add(&mut self, tally: &Tally) {
        self.handled += tally.handled();
        self.drops += tally.outcomes[outcome_index(Outcome::Failed)];
        let room = MAX_SAMPLES.saturating_sub(self.millis.len());
        self.millis.extend(tally.millis.iter().take(room).copied());
    }

    fn line(mut self, name: &str, window: Duration) -> String {
        let qps = self.handled as f64 / window.as_secs_f64().max(1e-9);
        self.millis.sort_by(f64::total_cmp);
        let at = |q: f64| match self.millis.len() {
            0 => 0.0,
            n => self.millis[((n - 1) as f64 * q).round() as usize],
        };
        let avg = match self.millis.len() {
            0 => 0.0,
            n => self.millis.iter().sum::<f64>() / n as f64,
        };
        format!(
            "({name}) - qps: {qps:.1}/s, drops: {}, avg time: {avg:.1}ms, med: {:.1}ms, 90th: {:.1}ms, 99th: {:.1}ms, 99.9th: {:.1}ms",
            self.drops,
            at(0.5),
            at(0.9),
            at(0.99),
            at(0.999)
        )
    }
}

/// Parses a member's librdkafka statistics into lag gauges: `consumer_lag` per partition of
/// the member's topic (-1, unknown, is skipped).
pub(crate) fn record_lag(metrics: &ConsumerMetrics, stats: &rdkafka::Statistics) {
    let Some(topic) = stats.topics.get(&metrics.topic) else {
        return;
    };
    // Partition -1 is librdkafka's internal unassigned partition.
    for p in topic.partitions.values() {
        if p.partition >= 0 && p.consumer_lag >= 0 {
            metrics.set_lag(p.partition, p.consumer_lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_has_go_zeros_fields() {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.record(Outcome::Ok, Duration::from_millis(ms));
        }
        tally.record(Outcome::Failed, Duration::from_millis(1));
        let mut window = StatWindow::default();
        window.add(&tally);
        let line = window.line("payments", Duration::from_secs(60));
        assert!(
            line.starts_with("(payments) - qps: 1.7/s, drops: 1, avg time: 50.0ms, med: 50.0ms, 90th: 90.0ms, 99th: 99.0ms"),
            "{line}"
        );
    }

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

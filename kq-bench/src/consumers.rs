//! The scenarios: each runs kq and its raw rdkafka baseline against the same topic.

use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use kq::__private::ConsumerRegistration;
use kq::{HandlerContext, KqConf, PusherConf, Queue, Shutdown};
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{
    BaseRecord, FutureProducer, FutureRecord, Producer as _, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};

use crate::measure::{cpu_time, peak_rss_mib, quantile, Row};
use crate::Settings;

/// Counts handled messages and remembers when the first and the last arrived.
///
/// Each thread counts on a cache line of its own. The raw loops count in a local variable;
/// one count shared by kq's processors on two workers would cost the kq subject a contended
/// atomic per message, which the handler of no consumer needs. The handler therefore cannot
/// tell which message was the last: `watch` sums the lines, more often as the count nears
/// its target.
pub struct Counter {
    target: u64,
    lines: [CountLine; COUNT_LINES],
    first: OnceLock<Instant>,
    last: OnceLock<Instant>,
    latencies_us: Mutex<Vec<f64>>,
}

/// Threads counting at once on lines of their own, at most; more share them.
const COUNT_LINES: usize = 16;

/// One thread's count, alone on its cache lines (128 bytes: the adjacent-line prefetcher
/// pairs lines).
#[derive(Default)]
#[repr(align(128))]
struct CountLine(AtomicU64);

/// The line the current thread counts on.
fn count_line() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static LINE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % COUNT_LINES as u64) as usize;
    }
    LINE.with(|line| *line)
}

impl Counter {
    fn new(target: u64) -> Arc<Counter> {
        Arc::new(Counter {
            target,
            lines: Default::default(),
            first: OnceLock::new(),
            last: OnceLock::new(),
            latencies_us: Mutex::default(),
        })
    }

    fn hit(&self) {
        self.hit_many(1);
    }

    /// Counts `n` messages handled in one call.
    fn hit_many(&self, n: usize) {
        // Reading the clock once, as the raw loops do: it costs as much as a no-op handler.
        if self.first.get().is_none() {
            let _ = self.first.set(Instant::now());
        }
        self.lines[count_line()]
            .0
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Messages counted so far.
    fn count(&self) -> u64 {
        self.lines.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }

    /// Whether the target was reached; the first call that sees it notes the time.
    fn done(&self) -> bool {
        if self.last.get().is_some() {
            return true;
        }
        if self.count() >= self.target {
            let _ = self.last.set(Instant::now());
            return true;
        }
        false
    }

    /// Waits, on a thread of its own, until the target is reached or `limit` passes. It looks
    /// again after half the time the rest should take at the rate so far (at least 20 µs, at
    /// most 10 ms), so that the last message's time is noted within microseconds with a few
    /// dozen looks: its wake-ups count in the process's CPU time.
    async fn watch(self: &Arc<Self>, limit: Duration) -> bool {
        let counter = self.clone();
        let deadline = Instant::now() + limit;
        tokio::task::spawn_blocking(move || loop {
            if counter.done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let counted = counter.count();
            let wait = match counter.first.get() {
                Some(first) if counted > 0 => {
                    let left = counter.target.saturating_sub(counted) as f64;
                    let rest = first.elapsed().as_secs_f64() * left / counted as f64;
                    Duration::from_secs_f64(rest / 2.0)
                }
                _ => Duration::MAX,
            };
            std::thread::sleep(wait.clamp(Duration::from_micros(20), Duration::from_millis(10)));
        })
        .await
        .unwrap_or(false)
    }

    /// Time from the first message to the last.
    fn span(&self) -> Duration {
        match (self.first.get(), self.last.get()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }
}

/// go-queue's `Consume(key, value)`, doing nothing with them.
#[kq::consumer(conf = "Noop")]
async fn noop(counter: &kq::State<Counter>, _key: &str, _value: &str) {
    counter.hit();
}

/// A single-message consumer doing nothing with its message, which it takes whole, headers
/// and all, as a batch consumer of `&[kq::Message]` does.
#[kq::consumer(conf = "NoopMessage")]
async fn noop_message(counter: &kq::State<Counter>, _msg: &kq::Message) {
    counter.hit();
}

/// A batch consumer doing nothing with its batch.
#[kq::consumer(conf = "NoopBatch")]
async fn noop_batch(counter: &kq::State<Counter>, batch: &[kq::Message]) {
    counter.hit_many(batch.len());
}

/// A sink whose call waits 1 ms for a reply however many messages it carries, as a bulk
/// insert or a bulk index request does.
#[kq::consumer(conf = "WaitingBatch")]
async fn waiting_batch(counter: &kq::State<Counter>, batch: &[kq::Message]) -> std::io::Result<()> {
    reply_after(Duration::from_millis(1)).await?;
    counter.hit_many(batch.len());
    Ok(())
}

#[kq::consumer(conf = "Waiting")]
async fn waiting(counter: &kq::State<Counter>, _msg: &kq::Message) -> std::io::Result<()> {
    reply_after(Duration::from_millis(1)).await?;
    counter.hit();
    Ok(())
}

/// Waits `delay` as a handler waits for a reply over a pooled connection: on a kernel timer
/// (`timerfd`) taken from a pool, which wakes the task through the runtime's I/O driver, as
/// a socket that becomes readable does.
///
/// Tokio's timer wheel ticks in whole milliseconds and rounds a 1 ms sleep up to about 2 ms,
/// which would measure the wheel rather than the consumer. A timer created and registered for
/// every wait would cost several times the CPU kq spends on the message in system calls.
#[cfg(target_os = "linux")]
async fn reply_after(delay: Duration) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use tokio::io::unix::AsyncFd;

    static POOL: Mutex<Vec<AsyncFd<OwnedFd>>> = Mutex::new(Vec::new());
    let pooled = POOL.lock().unwrap().pop();
    let timer = match pooled {
        Some(timer) => timer,
        None => {
            // SAFETY: timerfd_create takes no pointers; the descriptor it returns is owned by
            // `OwnedFd` from here on, which keeps it open, and the same, until it drops.
            unsafe {
                let fd = libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)?
            }
        }
    };
    let due = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: delay.as_secs() as libc::time_t,
            tv_nsec: delay.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `due` is a valid itimerspec; the old setting is not asked for.
    if unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &due, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    loop {
        let mut ready = timer.readable().await?;
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into `expirations`, which has them.
        let read = unsafe {
            libc::read(
                timer.as_raw_fd(),
                std::ptr::from_mut(&mut expirations).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        // Read or not, the readiness seen is used up: the next wait is for the next expiry.
        ready.clear_ready();
        if read == std::mem::size_of::<u64>() as isize {
            break;
        }
    }
    POOL.lock().unwrap().push(timer);
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn reply_after(delay: Duration) -> std::io::Result<()> {
    tokio::time::sleep(delay).await;
    Ok(())
}

#[kq::consumer(conf = "Slow")]
async fn slow(counter: &kq::State<Counter>, _msg: &kq::Message) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    counter.hit();
}

#[kq::consumer(conf = "Latency")]
async fn latency_probe(counter: &kq::State<Counter>, key: &str, _value: &str) {
    if let Ok(sent_ns) = key.parse::<u128>() {
        let now = now_ns();
        let micros = now.saturating_sub(sent_ns) as f64 / 1000.0;
        counter.latencies_us.lock().unwrap().push(micros);
    }
    counter.hit();
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        now_ns() % 1_000_000_000_000
    )
}

fn client(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config
}

fn raw_consumer_config(settings: &Settings, group: &str) -> ClientConfig {
    let mut config = client(settings);
    config.set("group.id", group);
    for (key, value) in settings.fetch_config() {
        config.set(key, value);
    }
    config
}

fn kq_conf(settings: &Settings, topic: &str, processors: usize) -> KqConf {
    let mut conf = KqConf::new([settings.brokers.clone()], unique("kq"), topic);
    conf.offset = kq::Offset::First;
    conf.processors = processors;
    conf.max_wait = settings.max_wait;
    conf.min_bytes = settings.min_bytes;
    conf.max_bytes = settings.max_bytes;
    conf
}

/// Creates a topic with a name of its own and the suite's partitions.
async fn new_topic(settings: &Settings, prefix: &str) -> anyhow::Result<String> {
    let topic = unique(prefix);
    if settings.embedded {
        kq::EmbeddedBroker::get()?.create_topic(&topic, settings.partitions)?;
    } else {
        kq::create_topic(
            std::slice::from_ref(&settings.brokers),
            &topic,
            settings.partitions,
        )
        .await?;
    }
    Ok(topic)
}

/// Creates a topic and fills it with `messages` values of `value_bytes`, keys spread over
/// `keys` distinct values, partitions dealt round-robin.
async fn fill(settings: &Settings, messages: u64, keys: u64) -> anyhow::Result<String> {
    let topic = new_topic(settings, "bench").await?;
    let producer: ThreadedProducer<_> = client(settings)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let value = vec![b'x'; settings.value_bytes];
    let started = Instant::now();
    for i in 0..messages {
        let key = format!("key-{}", i % keys);
        let mut record = BaseRecord::to(&topic)
            .key(key.as_bytes())
            .payload(value.as_slice())
            .partition((i % settings.partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    println!(
        "filled {topic}: {messages} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(topic)
}

/// Checks that the broker still has a topic an earlier run filled: a consumer of a topic the
/// broker does not have waits for it to appear, which would look like a stalled run.
fn check_topic(settings: &Settings, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client(settings).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let known = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    anyhow::ensure!(
        known,
        "KQ_BENCH_TOPIC: the broker at {} has no topic `{topic}`; a filled topic lasts only as \
         long as its broker (KQ_BENCH_KEEP_BROKER=1 keeps it)",
        settings.brokers
    );
    Ok(())
}

/// Runs a registered kq consumer until `counter` is done or `limit` passes.
async fn run_kq(
    consumer: &str,
    conf: KqConf,
    counter: &Arc<Counter>,
    limit: Duration,
) -> anyhow::Result<()> {
    let handler = ConsumerRegistration::find(consumer)
        .context("registered")?
        .bind(HandlerContext::new(counter.clone()))
        .map_err(anyhow::Error::msg)?;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(Queue::registered(consumer, conf, handler).run(shutdown.clone()));
    let done = counter.watch(limit).await;
    shutdown.trigger();
    task.await??;
    anyhow::ensure!(done, "kq handled {} of {}", counter.count(), counter.target);
    Ok(())
}

/// Runs a registered kq consumer over `n` messages: its row, timed from the first message
/// handled to the last, with the process's CPU over the run.
async fn kq_row(
    scenario: &'static str,
    subject: impl Into<String>,
    consumer: &str,
    conf: KqConf,
    n: u64,
) -> anyhow::Result<Row> {
    let counter = Counter::new(n);
    let cpu = cpu_time();
    run_kq(consumer, conf, &counter, Duration::from_secs(300)).await?;
    let cpu = cpu_time() - cpu;
    Ok(Row::throughput(
        scenario,
        subject,
        n,
        counter.span(),
        Some(cpu),
    ))
}

/// The consume scenario's subjects, by the names `KQ_BENCH_ONLY` takes, in the order
/// `consume_throughput` numbers them (0 is kq).
const CONSUME_SUBJECTS: [&str; 4] = ["kq", "stream", "base", "batch"];

/// The batch-consume scenario's subjects, by the names `KQ_BENCH_ONLY` takes, in the order
/// `batch_consume` numbers them.
const BATCH_CONSUME_SUBJECTS: [&str; 4] = ["kq-batch", "kq", "batch", "kq-message"];

/// Which of a scenario's subjects run: all of them, or those `KQ_BENCH_ONLY` names
/// (comma-separated), to profile one side alone.
fn chosen_subjects<const N: usize>(subjects: [&str; N]) -> anyhow::Result<[bool; N]> {
    let Ok(only) = std::env::var("KQ_BENCH_ONLY") else {
        return Ok([true; N]);
    };
    let mut chosen = [false; N];
    for name in only.split(',').map(str::trim) {
        match subjects.iter().position(|s| *s == name) {
            Some(i) => chosen[i] = true,
            None => anyhow::bail!(
                "KQ_BENCH_ONLY: unknown subject `{name}`; expected some of {subjects:?}"
            ),
        }
    }
    Ok(chosen)
}

/// Scenario 1: no-op handler, 1M pre-produced messages.
pub async fn consume_throughput(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let chosen = chosen_subjects(CONSUME_SUBJECTS)?;
    let n = settings.messages;
    // A topic an earlier run filled with as many messages, to profile without refilling.
    let topic = match std::env::var("KQ_BENCH_TOPIC") {
        Ok(topic) => {
            let (on, named) = (settings.clone(), topic.clone());
            tokio::task::spawn_blocking(move || check_topic(&on, &named)).await??;
            topic
        }
        Err(_) => fill(settings, n, 10_000).await?,
    };
    let mut rows = Vec::new();
    for rep in 0..settings.reps {
        // Each repetition starts with the next subject, so that none is always the first
        // to read the freshly filled topic.
        let subjects = CONSUME_SUBJECTS.len();
        for subject in (0..subjects).map(|i| (i + rep) % subjects) {
            if !chosen[subject] {
                continue;
            }
            let cpu = cpu_time();
            let (name, span, notes) = match subject {
                0 => {
                    let counter = Counter::new(n);
                    run_kq(
                        "noop",
                        kq_conf(settings, &topic, 8),
                        &counter,
                        Duration::from_secs(300),
                    )
                    .await?;
                    ("kq (Processors 8)", counter.span(), "commits every 1s")
                }
                1 => (
                    "baseline StreamConsumer",
                    raw_stream(settings, &topic, n).await?,
                    "auto commit",
                ),
                3 => (
                    "baseline batch consume",
                    raw_batch(settings, &topic, n).await?,
                    "rd_kafka_consume_batch_queue, auto commit",
                ),
                _ => (
                    "baseline BaseConsumer",
                    raw_base(settings, &topic, n).await?,
                    "auto commit",
                ),
            };
            let row =
                Row::throughput("consume", name, n, span, Some(cpu_time() - cpu)).noted(notes);
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn raw_stream(settings: &Settings, topic: &str, n: u64) -> anyhow::Result<Duration> {
    let consumer: StreamConsumer = raw_consumer_config(settings, &unique("raw")).create()?;
    consumer.subscribe(&[topic])?;
    let mut first = None;
    for _ in 0..n {
        let message = consumer.recv().await?;
        std::hint::black_box(&message);
        first.get_or_insert_with(Instant::now);
    }
    Ok(first.map(|f| f.elapsed()).unwrap_or_default())
}

async fn raw_base(settings: &Settings, topic: &str, n: u64) -> anyhow::Result<Duration> {
    let config = raw_consumer_config(settings, &unique("raw"));
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        consumer.subscribe(&[&topic])?;
        let mut first = None;
        let mut seen = 0;
        while seen < n {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                std::hint::black_box(message?);
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
        }
        anyhow::Ok(first.map(|f| f.elapsed()).unwrap_or_default())
    })
    .await?
}

/// Routes each assigned partition into one queue of the application's, as kq's fetch loop
/// does, so that the batch baseline takes messages the same way.
struct RouteToQueue {
    queue: AtomicPtr<rdsys::rd_kafka_queue_t>,
    topic: CString,
}

impl ClientContext for RouteToQueue {}

impl ConsumerContext for RouteToQueue {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        for element in list.elements() {
            // SAFETY: the consumer and the routed-to queue are live while it serves a
            // rebalance; the partition queue reference is released at once.
            unsafe {
                let partition = rdsys::rd_kafka_queue_get_partition(
                    consumer.client().native_ptr(),
                    self.topic.as_ptr(),
                    element.partition(),
                );
                if !partition.is_null() {
                    rdsys::rd_kafka_queue_forward(partition, self.queue.load(Ordering::Acquire));
                    rdsys::rd_kafka_queue_destroy(partition);
                }
            }
        }
    }
}

/// The fastest raw loop: batches of up to 256 taken with `rd_kafka_consume_batch_queue` from
/// a queue every partition is routed to, and dropped.
async fn raw_batch(settings: &Settings, topic: &str, n: u64) -> anyhow::Result<Duration> {
    const BATCH: usize = 256;
    let config = raw_consumer_config(settings, &unique("raw"));
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<RouteToQueue> = config.create_with_context(RouteToQueue {
            queue: AtomicPtr::default(),
            topic: CString::new(topic.as_str())?,
        })?;
        // SAFETY: the queue is released below, before the consumer.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        anyhow::ensure!(!queue.is_null(), "no queue");
        consumer.context().queue.store(queue, Ordering::Release);
        consumer.subscribe(&[&topic])?;
        let mut taken = vec![std::ptr::null_mut::<rdsys::rd_kafka_message_t>(); BATCH];
        let mut first = None;
        let mut seen = 0;
        while seen < n {
            // Rebalances.
            consumer.poll(Duration::ZERO);
            // SAFETY: `taken` has room for the count asked for; the messages written are
            // destroyed below, each once.
            let count = unsafe {
                match rdsys::rd_kafka_consume_batch_queue(queue, 0, taken.as_mut_ptr(), BATCH) {
                    0 => rdsys::rd_kafka_consume_batch_queue(queue, 100, taken.as_mut_ptr(), 1),
                    count => count,
                }
            };
            for &message in &taken[..usize::try_from(count).unwrap_or(0)] {
                // SAFETY: a live message, destroyed once.
                unsafe {
                    std::hint::black_box((*message).err);
                    rdsys::rd_kafka_message_destroy(message);
                }
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
        }
        let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
        consumer
            .context()
            .queue
            .store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: nothing uses the queue after this.
        unsafe { rdsys::rd_kafka_queue_destroy(queue) };
        anyhow::Ok(elapsed)
    })
    .await?
}

/// Scenario 2: an I/O-bound handler that waits 1 ms for a reply (see `reply_after`),
/// Processors 64, against the ideal of 64 messages per millisecond, and against what the
/// runtime reaches with the same waits and no consumer: 64 tasks waiting in a loop.
pub async fn io_bound(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    const PROCESSORS: usize = 64;
    const WAIT: Duration = Duration::from_millis(1);
    let n = (settings.messages / 5).max(1000);
    let topic = fill(settings, n, n).await?;
    let ideal = PROCESSORS as f64 / WAIT.as_secs_f64();
    let reply = || async {
        reply_after(WAIT).await.expect("a kernel timer");
    };
    let one_reply = measure_wait(reply).await;
    let one_sleep = measure_wait(|| tokio::time::sleep(WAIT)).await;
    // `KQ_BENCH_ONLY=kq` leaves the baseline out, to profile kq alone.
    let baseline = !std::env::var("KQ_BENCH_ONLY").is_ok_and(|only| only.trim() == "kq");
    let mut rows = Vec::new();
    for _ in 0..settings.reps {
        if baseline {
            let cpu = cpu_time();
            let (waits, took) = wait_loops(PROCESSORS, n.div_ceil(PROCESSORS as u64), reply).await;
            let row = Row::throughput(
                "io",
                "baseline 64 tasks waiting",
                waits,
                took,
                Some(cpu_time() - cpu),
            );
            let ratio = row.msgs_per_sec / ideal;
            let (reply_ms, sleep_ms) =
                (one_reply.as_secs_f64() * 1e3, one_sleep.as_secs_f64() * 1e3);
            rows.push(row.noted(format!(
                "{ratio:.2}× the ideal {ideal:.0}/s, no consumer; one wait alone takes \
                 {reply_ms:.3} ms, a 1 ms Tokio sleep {sleep_ms:.3} ms"
            )));
        }

        let conf = kq_conf(settings, &topic, PROCESSORS);
        let row = kq_row("io", "kq (Processors 64)", "waiting", conf, n).await?;
        let ratio = row.msgs_per_sec / ideal;
        rows.push(row.noted(format!("{ratio:.2}× the ideal {ideal:.0}/s")));
    }
    Ok(rows)
}

/// Scenario: a sink whose call takes 1 ms however many messages it carries. The batch
/// consumer at kq's defaults (Processors 8, `Batch.Size` 100), and with batches of 500,
/// against the single-message consumer at Processors 64, all reading one topic of a million
/// messages with fresh groups; the single-message one stops after a fifth of it, which takes
/// it long enough.
pub async fn batch_io(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    const PROCESSORS: usize = 64;
    let n = settings.messages;
    let topic = fill(settings, n, n).await?;
    let mut rows = Vec::new();
    for _ in 0..settings.reps {
        let conf = kq_conf(settings, &topic, PROCESSORS);
        let subject = "baseline single-message kq (Processors 64)";
        let single_n = (n / 5).max(1000);
        rows.push(kq_row("batch-io", subject, "waiting", conf, single_n).await?);
        for size in [100, 500] {
            let mut conf = kq_conf(settings, &topic, 8);
            conf.batch.size = size;
            let wait = conf.batch.wait;
            let subject = format!("kq batch (Processors 8, Batch.Size {size})");
            let row = kq_row("batch-io", subject, "waiting_batch", conf, n).await?;
            let ideal = 8.0 * size as f64 / 1e-3;
            rows.push(row.noted(format!(
                "Batch.Wait {wait:?}; 8 calls of {size} a millisecond would be {ideal:.0}/s"
            )));
        }
    }
    Ok(rows)
}

/// Scenario: what a batch consumer costs per message. A no-op batch consumer at kq's defaults
/// against the raw `rd_kafka_consume_batch_queue` loop, with single-message no-op consumers
/// beside them: go-queue's shape, and one that takes the whole message as the batch's
/// elements are (headers included). One million messages each, the subjects taking turns
/// going first.
pub async fn batch_consume(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let chosen = chosen_subjects(BATCH_CONSUME_SUBJECTS)?;
    let n = settings.messages;
    let topic = fill(settings, n, 10_000).await?;
    let mut rows = Vec::new();
    for rep in 0..settings.reps {
        let subjects = BATCH_CONSUME_SUBJECTS.len();
        for subject in (0..subjects).map(|i| (i + rep) % subjects) {
            if !chosen[subject] {
                continue;
            }
            let conf = kq_conf(settings, &topic, 8);
            let row = match subject {
                0 => {
                    let subject = "kq batch no-op of &[kq::Message] (Processors 8, Batch.Size 100)";
                    kq_row("batch-consume", subject, "noop_batch", conf, n).await?
                }
                1 => {
                    let subject = "kq no-op of (&str, &str) (Processors 8)";
                    kq_row("batch-consume", subject, "noop", conf, n).await?
                }
                3 => {
                    let subject = "kq no-op of &kq::Message (Processors 8)";
                    kq_row("batch-consume", subject, "noop_message", conf, n).await?
                }
                _ => {
                    let cpu = cpu_time();
                    let span = raw_batch(settings, &topic, n).await?;
                    let cpu = cpu_time() - cpu;
                    Row::throughput(
                        "batch-consume",
                        "baseline batch consume",
                        n,
                        span,
                        Some(cpu),
                    )
                }
            };
            rows.push(row);
        }
    }
    Ok(rows)
}

/// `tasks` tasks each waiting `rounds` times in a row: how many waits, in how long.
async fn wait_loops<F, W>(tasks: usize, rounds: u64, wait: W) -> (u64, Duration)
where
    F: std::future::Future + Send + 'static,
    W: Fn() -> F + Clone + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|_| {
            let wait = wait.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    wait().await;
                }
            })
        })
        .collect();
    let waits = tasks.len() as u64 * rounds;
    for task in tasks {
        let _ = task.await;
    }
    (waits, started.elapsed())
}

/// How long a wait takes on this runtime, on average over 200 in a row.
async fn measure_wait<F: std::future::Future>(wait: impl Fn() -> F) -> Duration {
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        wait().await;
    }
    started.elapsed() / rounds
}

/// Scenario 3: pushing 100-byte values, kq's async pusher against a raw FutureProducer.
pub async fn push_throughput(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let n = settings.messages;
    let value = vec![b'x'; settings.value_bytes];
    let mut rows = Vec::new();
    for _ in 0..settings.reps {
        let topic = new_topic(settings, "push").await?;
        let mut conf = PusherConf::new([settings.brokers.clone()], &topic);
        conf.flush_interval = Duration::from_millis(5);
        let pusher = kq::Pusher::from_conf(&conf)?;
        let cpu = cpu_time();
        let started = Instant::now();
        for i in 0..n {
            pusher.kpush(format!("key-{}", i % 10_000), &value).await?;
        }
        pusher.close().await?;
        rows.push(
            Row::throughput(
                "push",
                "kq Pusher (async)",
                n,
                started.elapsed(),
                Some(cpu_time() - cpu),
            )
            .noted("until close() returns"),
        );
        drop(pusher);

        let topic = new_topic(settings, "push").await?;
        let producer: FutureProducer = client(settings)
            .set("partitioner", "murmur2_random")
            .set("batch.size", conf.chunk_size.to_string())
            .set("linger.ms", "5")
            .set("compression.codec", conf.compression.keyword())
            .create()?;
        let cpu = cpu_time();
        let started = Instant::now();
        for i in 0..n {
            let key = format!("key-{}", i % 10_000);
            let mut record = FutureRecord::to(&topic).key(&key).payload(&value);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        drop(delivery);
                        break;
                    }
                    Err((_, returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        rows.push(
            Row::throughput(
                "push",
                "baseline FutureProducer",
                n,
                started.elapsed(),
                Some(cpu_time() - cpu),
            )
            .noted("until flush() returns"),
        );
    }
    Ok(rows)
}

/// Scenario 4: end-to-end latency at a fixed 10,000 messages/s, push to handler, for kq and
/// for a raw BaseConsumer on the same broker, one after the other.
///
/// It runs on the suite's broker and again on the embedded broker (librdkafka's mock cluster,
/// in this process). Kafka answers a fetch as soon as `fetch.min.bytes` (1 here) is there. The
/// embedded broker answers a fetch at once when it has data and otherwise waits
/// `fetch.wait.max.ms` without being woken by new data; at 1 ms there, both sides get an
/// answer soon after data arrives, as from Kafka. 100,000 messages of 100 bytes fit in its
/// 5 MiB per partition.
pub async fn latency(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let embedded = Settings {
        brokers: kq::EmbeddedBroker::get()?.bootstrap_servers().to_owned(),
        embedded: true,
        max_wait: Duration::from_millis(1),
        ..settings.clone()
    };
    // The first run on a broker started for the suite was the slowest, whichever subject it
    // was (p99 11 ms against 7 to 8 ms after it, with the broker's data on tmpfs): a short
    // run of each that is not counted goes first.
    for with_kq in [true, false] {
        let warm_up = latency_run(settings, with_kq, 3).await?;
        println!("warm-up, not counted: {warm_up}");
    }
    let mut rows = Vec::new();
    for rep in 0..settings.reps {
        for on in [settings, &embedded] {
            // Which subject goes first alternates, as in the consume scenario.
            for with_kq in [rep % 2 == 0, rep % 2 == 1] {
                rows.push(latency_run(on, with_kq, 10).await?);
            }
        }
    }
    Ok(rows)
}

async fn latency_run(settings: &Settings, with_kq: bool, seconds: u64) -> anyhow::Result<Row> {
    // Messages per second; a multiple of 1,000, since they go out once a millisecond.
    let rate = (crate::env_u64("KQ_BENCH_LATENCY_RATE", 10_000) / 1000).max(1) * 1000;
    let n = rate * seconds;
    let topic = new_topic(settings, "latency").await?;
    let counter = Counter::new(n + 1);
    let stop = Shutdown::new();
    let consumer = if with_kq {
        let mut conf = kq_conf(settings, &topic, 8);
        conf.min_bytes = 1;
        let handler = ConsumerRegistration::find("latency_probe")
            .context("registered")?
            .bind(HandlerContext::new(counter.clone()))
            .map_err(anyhow::Error::msg)?;
        let queue = Queue::new("latency_probe", conf, handler);
        let stop = stop.clone();
        tokio::spawn(async move { queue.run(stop).await.map_err(anyhow::Error::from) })
    } else {
        let mut config = raw_consumer_config(settings, &unique("raw"));
        config.set("fetch.min.bytes", "1");
        let (counter, stop, topic) = (counter.clone(), stop.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            consumer.subscribe(&[&topic])?;
            while !stop.is_triggered() {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    let key = rdkafka::Message::key(&message).unwrap_or_default();
                    if let Some(sent_ns) = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.parse::<u128>().ok())
                    {
                        let micros = now_ns().saturating_sub(sent_ns) as f64 / 1000.0;
                        counter.latencies_us.lock().unwrap().push(micros);
                    }
                    counter.hit();
                }
            }
            anyhow::Ok(())
        })
    };

    let mut pusher_conf = PusherConf::new([settings.brokers.clone()], &topic);
    // The producer's linger (`FlushInterval`). At 1 ms, 10,000 messages a second over eight
    // partitions make record batches of one or two messages, and the embedded broker, which
    // answers a fetch with at most one record batch per partition, held both consumers below
    // the rate. At 5 ms the path keeps up on both brokers, and the consumers' latency shows.
    let linger_ms = crate::env_u64("KQ_BENCH_LATENCY_LINGER_MS", 5);
    pusher_conf.flush_interval = Duration::from_millis(linger_ms);
    let pusher = kq::Pusher::from_conf(&pusher_conf)?;
    // One message first, to be sure the consumer has joined before the clock starts.
    pusher.kpush("warmup", "warmup").await?;
    while counter.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let value = vec![b'x'; settings.value_bytes];
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = rate / 1000;
    let started = Instant::now();
    for _ in 0..(n / per_tick) {
        ticker.tick().await;
        for _ in 0..per_tick {
            pusher.kpush(now_ns().to_string(), &value).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !counter.done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.trigger();
    consumer.await??;
    let mut latencies = counter.latencies_us.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    let subject = if with_kq {
        "kq push → handler"
    } else {
        "baseline BaseConsumer"
    };
    let scenario = if settings.embedded {
        "latency (embedded broker)"
    } else {
        "latency"
    };
    let mut row = Row::throughput(scenario, subject, latencies.len() as u64, elapsed, None);
    row.notes = format!(
        "at {rate}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (fetch.wait.max.ms {}, linger.ms {linger_ms})",
        quantile(&latencies, 0.5) / 1000.0,
        quantile(&latencies, 0.99) / 1000.0,
        quantile(&latencies, 0.999) / 1000.0,
        latencies.last().copied().unwrap_or(f64::NAN) / 1000.0,
        settings.max_wait.as_millis()
    );
    Ok(row)
}

/// Scenario 5: peak RSS of a kq consumer whose handler is slow while 1M messages wait.
pub async fn memory(settings: &Settings) -> anyhow::Result<Vec<Row>> {
    let topic = fill(settings, settings.messages, 10_000).await?;
    let exe = std::env::current_exe()?;
    let brokers = settings.brokers.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["memory-child", &brokers, &topic])
            .output()
    })
    .await??;
    anyhow::ensure!(
        output.status.success(),
        "memory child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8(output.stdout)?;
    let mut fields = report.split_whitespace();
    let handled: u64 = fields.next().context("handled")?.parse()?;
    let rss: f64 = fields.next().context("rss")?.parse()?;
    let mut row = Row::throughput(
        "memory",
        "kq (slow handler, 10 ms)",
        handled,
        Duration::from_secs(15),
        None,
    );
    row.notes = format!(
        "peak RSS {rss:.1} MiB with {} messages waiting",
        settings.messages
    );
    Ok(vec![row])
}

/// The memory scenario's consumer process: runs for 15 s, then prints `handled peak_rss_mib`.
pub fn memory_child(args: &[String]) -> anyhow::Result<()> {
    let [brokers, topic] = args else {
        anyhow::bail!("usage: memory-child BROKERS TOPIC");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let counter = Counter::new(u64::MAX);
        let mut conf = KqConf::new([brokers.clone()], unique("memory"), topic.as_str());
        conf.offset = kq::Offset::First;
        conf.max_wait = Duration::from_millis(10);
        let handler = ConsumerRegistration::find("slow")
            .context("registered")?
            .bind(HandlerContext::new(counter.clone()))
            .map_err(anyhow::Error::msg)?;
        let shutdown = Shutdown::new();
        let task = tokio::spawn(Queue::new("slow", conf, handler).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(15)).await;
        shutdown.trigger();
        task.await??;
        println!(
            "{} {:.1}",
            counter.count(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        anyhow::Ok(())
    })
}

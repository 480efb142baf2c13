//! Registered consumers against a broker, through the public API: every pushed message is
//! handled, per-key order holds, the error policy retries and commits, a panic, an
//! undecodable payload or a malformed header name does not kill a worker, a worker that dies
//! anyway stops its member without losing anything, and shutdown commits what was handled,
//! even while the group is still forming.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, unique, Running};
use kq::Pusher;

/// What handlers saw, for the test to check.
#[derive(Default)]
struct Seen {
    records: Mutex<Vec<Record>>,
    attempts: Mutex<HashMap<String, usize>>,
    failures: Mutex<Vec<(i64, String)>>,
}

#[derive(Debug, Clone)]
struct Record {
    key: String,
    value: String,
    partition: i32,
    offset: i64,
}

impl Seen {
    fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    fn values(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.value.clone())
            .collect()
    }

    /// Records a value alone, for handlers that only care what arrived.
    fn record_value(&self, value: impl Into<String>) {
        self.records.lock().unwrap().push(Record {
            key: String::new(),
            value: value.into(),
            partition: 0,
            offset: 0,
        });
    }

    fn attempt(&self, value: &str) -> usize {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(value.to_owned()).or_default();
        *n += 1;
        *n
    }
}

async fn pusher(topic: &str) -> Pusher {
    Pusher::from_conf(&pusher_conf(topic)).expect("pusher")
}

const WAIT: Duration = Duration::from_secs(60);

#[kq::consumer(conf = "Orders")]
async fn record_order(seen: &kq::State<Seen>, key: &str, value: &str, msg: &kq::Message) {
    // Uneven handler times make completions finish out of order across lanes.
    let jitter = msg.offset() as u64 % 3;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    seen.records.lock().unwrap().push(Record {
        key: key.to_owned(),
        value: value.to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_message_is_handled_once_in_key_order() {
    let topic = unique("orders");
    create_topic(&topic, 4).await;
    let pusher = pusher(&topic).await;
    const KEYS: usize = 10;
    const PER_KEY: usize = 30;
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            pusher
                .kpush(format!("key-{k}"), format!("{k}:{seq}"))
                .await
                .expect("push");
        }
    }

    let seen = Arc::new(Seen::default());
    let running = Running::start("record_order", consumer_conf(&topic), &seen);
    assert!(
        eventually(WAIT, || seen.count() >= KEYS * PER_KEY).await,
        "handled {} of {}",
        seen.count(),
        KEYS * PER_KEY
    );
    // Give a stray duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    let records = seen.records.lock().unwrap().clone();
    assert_eq!(records.len(), KEYS * PER_KEY, "each message exactly once");
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for r in &records {
        let (k, seq) = r.value.split_once(':').unwrap();
        assert_eq!(r.key, format!("key-{k}"));
        by_key
            .entry(r.key.clone())
            .or_default()
            .push(seq.parse().unwrap());
    }
    for (key, seqs) in by_key {
        assert_eq!(seqs, (0..PER_KEY).collect::<Vec<_>>(), "order of {key}");
    }
    // Same key, same partition: the pusher's partitioner is keyed.
    let mut partitions: HashMap<&str, i32> = HashMap::new();
    for r in &records {
        let p = *partitions.entry(&r.key).or_insert(r.partition);
        assert_eq!(p, r.partition, "{} moved partitions", r.key);
        assert!(r.offset >= 0);
    }
}

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct Payment {
    order: String,
    cents: u64,
}

#[kq::consumer(conf = "Payments")]
async fn record_payment(
    seen: &kq::State<Seen>,
    msg: &kq::Message,
    kq::Json(payment): kq::Json<Payment>,
) -> Result<(), String> {
    let trace = msg
        .headers()
        .get_str("trace-id")
        .unwrap_or("none")
        .to_owned();
    assert!(msg.timestamp().is_some(), "the broker stamps records");
    seen.records.lock().unwrap().push(Record {
        key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
        value: format!(
            "{}={} trace={trace} topic={}",
            payment.order,
            payment.cents,
            msg.topic()
        ),
        partition: msg.partition(),
        offset: msg.offset(),
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payloads_headers_and_message_details_reach_the_handler() {
    let topic = unique("payments");
    create_topic(&topic, 2).await;
    let pusher = pusher(&topic).await;
    let payment = Payment {
        order: "o-1".into(),
        cents: 1200,
    };
    let body = serde_json::to_vec(&payment).unwrap();
    let delivery = pusher
        .push_with_headers("o-1", &body, [("trace-id", b"abc".as_slice())])
        .await
        .expect("push")
        .expect("sync pushes report their delivery");
    pusher
        .push_json(
            "o-2",
            &Payment {
                order: "o-2".into(),
                cents: 5,
            },
        )
        .await
        .expect("push json");
    // Headers ride on every push path: JSON, and keyless values too.
    pusher
        .message_json(&Payment {
            order: "o-3".into(),
            cents: 7,
        })
        .expect("encodes")
        .key("o-3")
        .header("trace-id", "def")
        .send()
        .await
        .expect("push json with headers");
    let keyless = serde_json::to_vec(&Payment {
        order: "o-4".into(),
        cents: 9,
    })
    .unwrap();
    pusher
        .message(&keyless)
        .header("trace-id", "ghi")
        .send()
        .await
        .expect("push keyless with headers");

    let seen = Arc::new(Seen::default());
    let running = Running::start("record_payment", consumer_conf(&topic), &seen);
    assert!(eventually(WAIT, || seen.count() >= 4).await);
    running.stop().await;

    let records = seen.records.lock().unwrap().clone();
    let first = records
        .iter()
        .find(|r| r.key == "o-1")
        .expect("o-1 handled");
    assert_eq!(first.value, format!("o-1=1200 trace=abc topic={topic}"));
    assert_eq!(
        (first.partition, first.offset),
        (delivery.partition, delivery.offset)
    );
    let second = records
        .iter()
        .find(|r| r.key == "o-2")
        .expect("o-2 handled");
    assert_eq!(second.value, format!("o-2=5 trace=none topic={topic}"));
    let values: Vec<&str> = records.iter().map(|r| r.value.as_str()).collect();
    assert!(values.contains(&format!("o-3=7 trace=def topic={topic}").as_str()));
    let keyless = records
        .iter()
        .find(|r| r.value.starts_with("o-4="))
        .expect("o-4 handled");
    assert_eq!(keyless.value, format!("o-4=9 trace=ghi topic={topic}"));
    assert!(
        keyless.key.parse::<u128>().is_ok(),
        "a keyless push gets go-queue's time key, got {:?}",
        keyless.key
    );
}

#[kq::consumer(conf = "Flaky")]
async fn flaky(seen: &kq::State<Seen>, _key: &str, value: &str) -> anyhow::Result<()> {
    let attempt = seen.attempt(value);
    match value {
        "poison" => anyhow::bail!("cannot handle {value} (attempt {attempt})"),
        "panics" if attempt == 1 => panic!("boom on {value}"),
        "third-time-lucky" if attempt < 3 => anyhow::bail!("not yet"),
        _ => {}
    }
    seen.record_value(value);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_reported_and_committed_past() {
    let topic = unique("flaky");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    for value in ["third-time-lucky", "poison", "panics", "after"] {
        pusher.kpush("same-key", value).await.expect("push");
    }

    let seen = Arc::new(Seen::default());
    let conf = consumer_conf(&topic);
    let group = conf.group.clone();
    let failures = seen.clone();
    let running = Running::start_queue("flaky", conf, &seen, move |queue| {
        queue.with_error_handler(move |msg, error| {
            failures
                .failures
                .lock()
                .unwrap()
                .push((msg.offset(), error.to_string()));
        })
    });
    assert!(
        eventually(WAIT, || seen.count() >= 3).await,
        "{:?}",
        seen.values()
    );
    running.stop().await;

    // Same key, one lane: the order holds through retries and failures.
    assert_eq!(seen.values(), ["third-time-lucky", "panics", "after"]);
    let attempts = seen.attempts.lock().unwrap().clone();
    assert_eq!(attempts["third-time-lucky"], 3);
    assert_eq!(attempts["poison"], 3, "Retry.Attempts defaults to 3");
    assert_eq!(
        attempts["panics"], 2,
        "a panic is a failure, and the worker survives it"
    );
    let failures = seen.failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, 1, "the poison message's offset");
    assert!(
        failures[0].1.contains("cannot handle poison (attempt 3)"),
        "{failures:?}"
    );

    // ForceCommit: true committed past the poison message: the group does not see it again.
    let again = Arc::new(Seen::default());
    let mut conf = consumer_conf(&topic);
    conf.group = group;
    let running = Running::start("flaky", conf, &again);
    pusher.kpush("same-key", "fresh").await.expect("push");
    assert!(eventually(WAIT, || again.count() >= 1).await);
    running.stop().await;
    assert_eq!(again.values(), ["fresh"]);
}

#[kq::consumer(conf = "Decoded")]
async fn decoded(seen: &kq::State<Seen>, kq::Json(payment): kq::Json<Payment>) {
    seen.record_value(payment.order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_goes_through_the_error_policy() {
    let topic = unique("decoded");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    pusher
        .push_with_headers("k", "{not json", [("trace-id", b"t-9".as_slice())])
        .await
        .expect("push");
    pusher
        .push_json(
            "k",
            &Payment {
                order: "good".into(),
                cents: 1,
            },
        )
        .await
        .expect("push");

    let seen = Arc::new(Seen::default());
    let failures = seen.clone();
    let running = Running::start_queue("decoded", consumer_conf(&topic), &seen, move |queue| {
        // The handler takes no headers, but the application's error handler sees them.
        queue.with_error_handler(move |msg, error| {
            assert_eq!(error.kind(), kq::HandlerErrorKind::Decode);
            let trace = msg.headers().get_str("trace-id").unwrap_or("none");
            failures
                .failures
                .lock()
                .unwrap()
                .push((msg.offset(), format!("{error} (trace-id {trace})")));
        })
    });
    assert!(eventually(WAIT, || seen.count() >= 1).await);
    running.stop().await;
    assert_eq!(seen.values(), ["good"]);
    let failures = seen.failures.lock().unwrap().clone();
    assert_eq!(
        failures.len(),
        1,
        "decode errors are not retried: {failures:?}"
    );
    assert!(failures[0].1.contains("not valid JSON"), "{failures:?}");
    assert!(failures[0].1.ends_with("(trace-id t-9)"), "{failures:?}");
}

#[kq::consumer(conf = "Texts")]
async fn texts(seen: &kq::State<Seen>, key: &str, value: &str) {
    seen.record_value(format!("{key}={value}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_or_value_that_is_not_utf8_is_a_decode_error_and_text_reads_whole() {
    let topic = unique("texts");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    let records: [(&[u8], &[u8]); 5] = [
        (b"k", b"bad-\xff-value"),
        (b"bad-\xc3-key", b"v"),
        ("ключ".as_bytes(), "значение ✓".as_bytes()),
        (b"", b""),
        (b"k", b"plain"),
    ];
    for (key, value) in records {
        pusher.kpush(key, value).await.expect("push");
    }

    let seen = Arc::new(Seen::default());
    let failures = seen.clone();
    let running = Running::start_queue("texts", consumer_conf(&topic), &seen, move |queue| {
        queue.with_error_handler(move |msg, error| {
            assert_eq!(error.kind(), kq::HandlerErrorKind::Decode);
            failures
                .failures
                .lock()
                .unwrap()
                .push((msg.offset(), error.to_string()));
        })
    });
    assert!(eventually(WAIT, || seen.count() >= 3).await);
    running.stop().await;
    // Different keys go to different processors: in any order.
    let mut values = seen.values();
    values.sort();
    assert_eq!(values, ["=", "k=plain", "ключ=значение ✓"]);
    let mut failures = seen.failures.lock().unwrap().clone();
    failures.sort();
    assert_eq!(
        failures.len(),
        2,
        "decode errors are not retried: {failures:?}"
    );
    assert_eq!(failures[0].0, 0, "{failures:?}");
    assert!(
        failures[0].1.contains("value is not valid UTF-8"),
        "{failures:?}"
    );
    assert_eq!(failures[1].0, 1, "{failures:?}");
    assert!(
        failures[1].1.contains("key is not valid UTF-8"),
        "{failures:?}"
    );
}

#[kq::consumer(conf = "Resumed")]
async fn resumed(seen: &kq::State<Seen>, _key: &str, value: &str) {
    seen.record_value(value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_so_a_restart_resumes_where_it_stopped() {
    let topic = unique("resumed");
    create_topic(&topic, 3).await;
    let pusher = pusher(&topic).await;
    for i in 0..20 {
        pusher
            .kpush(format!("k{i}"), format!("first-{i}"))
            .await
            .unwrap();
    }
    let mut conf = consumer_conf(&topic);
    // Only the shutdown commit can save the progress: the interval never fires.
    conf.commit_interval = Duration::from_secs(3600);

    let seen = Arc::new(Seen::default());
    let running = Running::start("resumed", conf.clone(), &seen);
    assert!(eventually(WAIT, || seen.count() >= 20).await);
    running.stop().await;

    for i in 0..20 {
        pusher
            .kpush(format!("k{i}"), format!("second-{i}"))
            .await
            .unwrap();
    }
    let again = Arc::new(Seen::default());
    let running = Running::start("resumed", conf, &again);
    assert!(eventually(WAIT, || again.count() >= 20).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    let values = again.values();
    assert_eq!(values.len(), 20, "{values:?}");
    assert!(
        values.iter().all(|v| v.starts_with("second-")),
        "{values:?}"
    );
}

#[kq::consumer(conf = "Forming")]
async fn forming(seen: &kq::State<Seen>, _key: &str, value: &str) {
    seen.record_value(value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_group_forms_completes_and_loses_nothing() {
    let topic = unique("forming");
    create_topic(&topic, 8).await;
    let pusher = pusher(&topic).await;
    let pushed: BTreeSet<String> = (0..80).map(|i| format!("forming-{i}")).collect();
    for (i, value) in pushed.iter().enumerate() {
        pusher.kpush(format!("k{i}"), value).await.unwrap();
    }
    let mut conf = consumer_conf(&topic);
    // Eight members join one by one, so the group rebalances again and again at first.
    conf.conns = 8;
    let seen = Arc::new(Seen::default());
    // A stop before the first join, during the joins, and once partitions are assigned.
    for delay in [0, 300, 1000, 2500] {
        let running = Running::start("forming", conf.clone(), &seen);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Generous: handlers get ShutdownTimeout and each member some seconds to leave.
        let stopped = tokio::time::timeout(WAIT, running.stop()).await;
        assert!(stopped.is_ok(), "a stop {delay} ms after the start hung");
    }
    let running = Running::start("forming", conf, &seen);
    let all_seen = || seen.values().into_iter().collect::<BTreeSet<_>>() == pushed;
    assert!(eventually(WAIT, all_seen).await, "{:?}", seen.values());
    running.stop().await;
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

#[kq::consumer(conf = "Slow")]
async fn slow(seen: &kq::State<Seen>, _key: &str, value: &str) {
    STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.record_value(value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_commits_them() {
    let topic = unique("slow");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    for i in 0..4 {
        pusher
            .kpush(format!("k{i}"), format!("slow-{i}"))
            .await
            .unwrap();
    }
    let mut conf = consumer_conf(&topic);
    conf.commit_interval = Duration::from_secs(3600);
    let seen = Arc::new(Seen::default());
    let running = Running::start("slow", conf.clone(), &seen);
    assert!(eventually(WAIT, || STARTED.load(Ordering::SeqCst) >= 4).await);
    // All four are mid-handler (different keys, different lanes) when the stop comes.
    running.stop().await;
    assert_eq!(
        seen.count(),
        4,
        "running handlers finish before the member leaves"
    );

    pusher.kpush("k", "after-restart").await.unwrap();
    let again = Arc::new(Seen::default());
    let running = Running::start("slow", conf, &again);
    assert!(eventually(WAIT, || again.count() >= 1).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.stop().await;
    assert_eq!(
        again.values(),
        ["after-restart"],
        "the drained ones were committed"
    );
}

#[kq::consumer(conf = "PartitionOrder")]
async fn partition_order(seen: &kq::State<Seen>, _key: &str, value: &str, msg: &kq::Message) {
    tokio::time::sleep(Duration::from_millis(2)).await;
    seen.records.lock().unwrap().push(Record {
        key: String::new(),
        value: value.to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_partition_order_a_backlog_runs_on_every_partition_at_once_in_order() {
    const PARTITIONS: usize = 4;
    const N: usize = 400;
    let topic = unique("partition-order");
    create_topic(&topic, PARTITIONS as i32).await;
    // Pushed ahead and batched: the broker hands each partition's messages over in a run of
    // their own, far more than the queue holds.
    let mut conf = pusher_conf(&topic);
    conf.sync_push = false;
    let pusher = Pusher::from_conf(&conf).unwrap();
    for i in 0..N {
        pusher.kpush(format!("k{i}"), format!("{i}")).await.unwrap();
    }
    pusher.close().await.unwrap();

    let mut conf = consumer_conf(&topic);
    conf.ordering = kq::Ordering::Partition;
    conf.processors = PARTITIONS;
    conf.queue_capacity = 8;
    let seen = Arc::new(Seen::default());
    let running = Running::start("partition_order", conf, &seen);
    let all = eventually(WAIT, || seen.count() >= N).await;
    running.stop().await;
    let records = seen.records.lock().unwrap().clone();
    assert!(all, "handled {} of {N}", records.len());

    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    assert_eq!(
        by_partition.len(),
        PARTITIONS,
        "the keys spread over every partition"
    );
    for (partition, offsets) in &by_partition {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order or twice: {offsets:?}"
        );
    }
    // No partition waits for another's backlog: by the time the first of them is half done,
    // every one has started.
    let mut done: BTreeMap<i32, usize> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let count = done.entry(r.partition).or_default();
        *count += 1;
        if *count * 2 >= by_partition[&r.partition].len() {
            let started: BTreeSet<i32> = records[..=i].iter().map(|r| r.partition).collect();
            assert_eq!(
                started.len(),
                PARTITIONS,
                "partition {} was half done before any of {:?} had started",
                r.partition,
                by_partition
                    .keys()
                    .filter(|p| !started.contains(p))
                    .collect::<Vec<_>>()
            );
            break;
        }
    }
}

#[kq::consumer(conf = "Backpressure")]
async fn backpressure(seen: &kq::State<Seen>, key: &str, value: &str) {
    seen.records.lock().unwrap().push(Record {
        key: key.to_owned(),
        value: value.to_owned(),
        partition: 0,
        offset: 0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_stops_fetching_and_loses_nothing() {
    let topic = unique("backpressure");
    create_topic(&topic, 4).await;
    let mut conf = pusher_conf(&topic);
    conf.sync_push = false;
    let pusher = Pusher::from_conf(&conf).unwrap();
    const N: usize = 3000;
    for i in 0..N {
        pusher
            .kpush(format!("k{}", i % 50), format!("{i}"))
            .await
            .unwrap();
    }
    pusher.close().await.unwrap();

    let mut conf = consumer_conf(&topic);
    // A queue far smaller than the backlog: the fetch loop waits for room all the time.
    conf.queue_capacity = 8;
    conf.processors = 4;
    let seen = Arc::new(Seen::default());
    let running = Running::start("backpressure", conf, &seen);
    let all = eventually(WAIT, || seen.count() >= N).await;
    running.stop().await;
    let mut values: Vec<usize> = seen.values().iter().map(|v| v.parse().unwrap()).collect();
    assert!(all, "handled {} of {N}", values.len());
    values.sort();
    values.dedup();
    assert_eq!(values.len(), N, "every message, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_error_handler_does_not_stop_its_processor() {
    let topic = unique("panicking-error-handler");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    for value in ["poison", "after"] {
        pusher.kpush("same-key", value).await.expect("push");
    }
    let mut conf = consumer_conf(&topic);
    conf.retry.attempts = 1;

    let seen = Arc::new(Seen::default());
    let running = Running::start_queue("flaky", conf, &seen, |queue| {
        queue.with_error_handler(|_, _| panic!("the error handler fails too"))
    });
    // Same key, one lane: "after" runs only if the processor outlived the panic.
    assert!(
        eventually(WAIT, || seen.count() >= 1).await,
        "nothing handled after the error handler panicked"
    );
    running.stop().await;
    assert_eq!(seen.values(), ["after"]);
}

/// A `tracing` layer that panics on the first warning a processor logs: a panic where no
/// application code runs, as a bug in kq or in a subscriber would raise.
struct PanicOnFirstProcessorWarning(std::sync::atomic::AtomicBool);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnFirstProcessorWarning {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN
            && meta.target().contains("processor")
            && !self.0.swap(true, Ordering::SeqCst)
        {
            panic!("the subscriber fails on {:?}", meta.name());
        }
    }
}

// Single-threaded, so that the processors run on this thread, under this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_processor_that_dies_stops_its_member_and_loses_nothing() {
    use tracing_subscriber::layer::SubscriberExt as _;

    let topic = unique("dying-processor");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic).await;
    for value in ["panics", "after"] {
        pusher.kpush("same-key", value).await.expect("push");
    }
    let subscriber = tracing_subscriber::registry().with(PanicOnFirstProcessorWarning(
        std::sync::atomic::AtomicBool::new(false),
    ));
    let _subscriber = tracing::subscriber::set_default(subscriber);

    // "panics" fails its first attempt; logging the retry kills the processor.
    let seen = Arc::new(Seen::default());
    let mut conf = consumer_conf(&topic);
    conf.shutdown_timeout = Duration::from_secs(1);
    let group = conf.group.clone();
    let running = Running::start("flaky", conf.clone(), &seen);
    let error = tokio::time::timeout(WAIT, running.failure())
        .await
        .expect("the member went on without its processor");
    assert!(error.to_string().contains("processors died"), "{error}");
    assert!(seen.values().is_empty(), "{:?}", seen.values());

    // Nothing was committed past the message the processor died on.
    conf.group = group;
    let running = Running::start("flaky", conf, &seen);
    assert!(
        eventually(WAIT, || seen.count() >= 2).await,
        "{:?}",
        seen.values()
    );
    running.stop().await;
    assert_eq!(seen.values(), ["panics", "after"]);
}

#[kq::consumer(conf = "RawHeaders")]
async fn record_headers(seen: &kq::State<Seen>, msg: &kq::Message) {
    let headers: Vec<String> = msg
        .headers()
        .iter()
        .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value.unwrap_or(b"-"))))
        .collect();
    seen.records.lock().unwrap().push(Record {
        key: msg.key_str().unwrap_or_default().to_owned(),
        value: headers.join(","),
        partition: msg.partition(),
        offset: msg.offset(),
    });
}

/// Writes one record whose header name is not UTF-8, which kq's Pusher cannot write.
fn push_with_raw_header_name(topic: &str, key: &str, name: &[u8], value: &[u8]) {
    use rdkafka::bindings as rdsys;
    use rdkafka::producer::{BaseProducer, Producer as _};
    use std::ffi::{c_void, CString};

    let brokers = if common::real_broker() {
        common::brokers().join(",")
    } else {
        kq::EmbeddedBroker::get()
            .expect("embedded broker")
            .bootstrap_servers()
            .to_owned()
    };
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let topic = CString::new(topic).unwrap();
    let name = CString::new(name).unwrap();
    let fields = [
        rdsys::rd_kafka_vu_t {
            vtype: rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
            u: rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic.as_ptr(),
            },
        },
        rdsys::rd_kafka_vu_t {
            vtype: rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
            u: rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                mem: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                    ptr: key.as_ptr() as *mut c_void,
                    size: key.len(),
                },
            },
        },
        rdsys::rd_kafka_vu_t {
            vtype: rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADER,
            u: rdsys::rd_kafka_vu_s__bindgen_ty_1 {
                header: rdsys::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                    name: name.as_ptr(),
                    val: value.as_ptr().cast(),
                    size: value.len() as isize,
                },
            },
        },
    ];
    // SAFETY: every pointer in `fields` outlives the call, which copies what it points to.
    let error = unsafe {
        rdsys::rd_kafka_produceva(
            producer.client().native_ptr(),
            fields.as_ptr(),
            fields.len(),
        )
    };
    assert!(error.is_null(), "produceva refused the record");
    producer.flush(Duration::from_secs(30)).expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_neither_stops_the_consumer_nor_loses_the_record() {
    let topic = unique("raw-headers");
    create_topic(&topic, 1).await;
    let raw_topic = topic.clone();
    tokio::task::spawn_blocking(move || {
        push_with_raw_header_name(&raw_topic, "odd", b"bad-\xff-name", b"v")
    })
    .await
    .unwrap();
    pusher(&topic)
        .await
        .push_with_headers("after", "x", [("good", b"g".as_slice())])
        .await
        .expect("push");

    let seen = Arc::new(Seen::default());
    let running = Running::start("record_headers", consumer_conf(&topic), &seen);
    assert!(eventually(WAIT, || seen.count() >= 2).await);
    running.stop().await;

    let records = seen.records.lock().unwrap().clone();
    let by_key: BTreeMap<&str, &str> = records
        .iter()
        .map(|r| (r.key.as_str(), r.value.as_str()))
        .collect();
    // The name's invalid byte reads as U+FFFD; the value is untouched.
    assert_eq!(by_key.get("odd"), Some(&"bad-\u{fffd}-name=v"));
    assert_eq!(by_key.get("after"), Some(&"good=g"));
}

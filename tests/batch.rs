//! Batch consumers against a broker, through the public API: batches fill from a backlog and
//! keep per-key order, a trickle is handed over within `Batch.Wait`, a failure at one message
//! retries only what follows it, a message out of retries goes through the error policy
//! alone, an undecodable element is settled on its own, and a rebalance waits for a running
//! batch.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    consumer_conf, create_topic, eventually, push_rounds, pusher_conf, real_broker, unique, Running,
};
use kq::{BatchError, KqConf, Pusher};

const WAIT: Duration = Duration::from_secs(60);

/// What the batch handlers saw.
#[derive(Default)]
struct Seen {
    /// Every batch, as the values it held, in the order the handler ran.
    batches: Mutex<Vec<Vec<String>>>,
    /// How often each value reached a handler.
    attempts: Mutex<HashMap<String, usize>>,
    /// Values that reached the error handler.
    failed: Mutex<Vec<String>>,
    /// Set by a test to hold handlers up.
    slow: AtomicBool,
}

impl Seen {
    fn values(&self) -> Vec<String> {
        self.batches.lock().unwrap().concat()
    }

    fn count(&self) -> usize {
        self.batches.lock().unwrap().iter().map(Vec::len).sum()
    }

    fn attempt(&self, value: &str) -> usize {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(value.to_owned()).or_default();
        *n += 1;
        *n
    }
}

fn value_of(msg: &kq::Message) -> String {
    msg.value_str().unwrap_or_default().to_owned()
}

fn pusher(topic: &str) -> Pusher {
    Pusher::from_conf(&pusher_conf(topic)).expect("pusher")
}

/// Pushes `rounds` rounds of one message per key, values `k{k}:{seq}`.
async fn push_keyed(topic: &str, keys: usize, rounds: usize) -> usize {
    push_rounds(topic, keys, rounds, |k, seq| {
        (format!("k{k}"), format!("k{k}:{seq}"))
    })
    .await
}

/// Each key's values, in the order first handled.
fn by_key(values: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut keys: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for value in values {
        let (key, seq) = value.split_once(':').unwrap();
        let seq = seq.parse().unwrap();
        let seqs = keys.entry(key.to_owned()).or_default();
        if !seqs.contains(&seq) {
            seqs.push(seq);
        }
    }
    keys
}

fn batch_conf(topic: &str, size: usize, wait: Duration) -> KqConf {
    let mut conf = consumer_conf(topic);
    conf.batch.size = size;
    conf.batch.wait = wait;
    conf
}

#[kq::consumer(conf = "Ledger")]
async fn ledger(seen: &kq::State<Seen>, batch: &[kq::Message]) -> anyhow::Result<()> {
    if seen.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen.batches
        .lock()
        .unwrap()
        .push(batch.iter().map(value_of).collect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_handled_in_full_batches_once_in_key_order() {
    let topic = unique("batch-backlog");
    create_topic(&topic, 4).await;
    let pushed = push_keyed(&topic, 12, 100).await;
    let seen = Arc::new(Seen::default());
    let running = Running::start(
        "ledger",
        batch_conf(&topic, 50, Duration::from_millis(200)),
        &seen,
    );
    assert!(
        eventually(WAIT, || seen.count() >= pushed).await,
        "handled {} of {pushed}",
        seen.count()
    );
    running.stop().await;

    let values = seen.values();
    assert_eq!(values.len(), pushed, "each message once");
    for (key, seqs) in by_key(&values) {
        assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "{key} in order");
    }
    let batches = seen.batches.lock().unwrap();
    assert!(
        batches.iter().all(|b| b.len() <= 50),
        "no batch over Batch.Size"
    );
    let full = batches.iter().filter(|b| b.len() == 50).count();
    assert!(
        full * 50 >= pushed / 2,
        "a backlog yields full batches: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_is_handed_over_within_batch_wait() {
    let topic = unique("batch-trickle");
    create_topic(&topic, 1).await;
    let seen = Arc::new(Seen::default());
    let running = Running::start(
        "ledger",
        batch_conf(&topic, 100, Duration::from_millis(300)),
        &seen,
    );
    // The first message tells when the member has joined.
    let pusher = pusher(&topic);
    pusher.kpush("k", "first").await.unwrap();
    assert!(eventually(WAIT, || seen.count() >= 1).await);
    let pushed = Instant::now();
    pusher.kpush("k", "lone").await.unwrap();
    assert!(eventually(WAIT, || seen.count() >= 2).await);
    let took = pushed.elapsed();
    running.stop().await;
    let batches = seen.batches.lock().unwrap().clone();
    assert_eq!(batches, [vec!["first"], vec!["lone"]], "partial batches go");
    // Generous: the batch waits 300 ms for more, the fetch up to 50 ms.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[kq::consumer(conf = "Partial")]
async fn partial(seen: &kq::State<Seen>, batch: &[kq::Message]) -> Result<(), BatchError> {
    let values: Vec<String> = batch.iter().map(value_of).collect();
    seen.batches.lock().unwrap().push(values.clone());
    for (i, value) in values.iter().enumerate() {
        // `m3` fails its first two attempts; the messages before it are done each time.
        if value == "m3" && seen.attempt(value) <= 2 {
            return Err(BatchError::at(i, "m3 is not ready"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_one_message_retries_only_it_and_what_follows() {
    let topic = unique("batch-partial");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic);
    for i in 0..6 {
        pusher.kpush("k", format!("m{i}")).await.unwrap();
    }
    let seen = Arc::new(Seen::default());
    let running = Running::start(
        "partial",
        batch_conf(&topic, 10, Duration::from_millis(300)),
        &seen,
    );
    assert!(eventually(WAIT, || seen.attempts.lock().unwrap().get("m3") == Some(&3)).await);
    assert!(
        eventually(WAIT, || seen.values().iter().filter(|v| *v == "m5").count()
            >= 1)
        .await
    );
    running.stop().await;
    let batches = seen.batches.lock().unwrap().clone();
    assert_eq!(
        batches,
        [
            vec!["m0", "m1", "m2", "m3", "m4", "m5"],
            vec!["m3", "m4", "m5"],
            vec!["m3", "m4", "m5"],
        ],
        "m0 to m2 ran once; m3 on was retried"
    );
}

#[kq::consumer(conf = "Poisoned")]
async fn poisoned(seen: &kq::State<Seen>, batch: &[kq::Message]) -> Result<(), BatchError> {
    let values: Vec<String> = batch.iter().map(value_of).collect();
    seen.batches.lock().unwrap().push(values.clone());
    match values.iter().position(|v| v == "poison") {
        Some(i) => Err(BatchError::at(i, "cannot book poison")),
        None => Ok(()),
    }
}

#[kq::consumer(conf = "Dead")]
async fn dead_letters(seen: &kq::State<Seen>, msg: &kq::Message) {
    let header = |name: &str| msg.headers().get_str(name).unwrap_or_default().to_owned();
    seen.failed.lock().unwrap().push(format!(
        "{}|{}|{}",
        value_of(msg),
        header("kq.error"),
        header("kq.attempts")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_out_of_retries_alone_is_dead_lettered_and_the_rest_go_on() {
    let topic = unique("batch-poison");
    let dead_letter_topic = format!("{topic}-dlq");
    create_topic(&topic, 1).await;
    create_topic(&dead_letter_topic, 1).await;
    let pusher = pusher(&topic);
    for value in ["a", "b", "poison", "c", "d"] {
        pusher.kpush("k", value).await.unwrap();
    }
    let seen = Arc::new(Seen::default());
    let mut conf = batch_conf(&topic, 10, Duration::from_millis(300));
    conf.retry.attempts = 2;
    conf.dead_letter_topic = dead_letter_topic.clone();
    let running = Running::start("poisoned", conf, &seen);
    let letters = Arc::new(Seen::default());
    let reader = Running::start("dead_letters", consumer_conf(&dead_letter_topic), &letters);
    assert!(eventually(WAIT, || !letters.failed.lock().unwrap().is_empty()).await);
    assert!(eventually(WAIT, || seen.values().contains(&"d".to_owned())).await);
    reader.stop().await;
    running.stop().await;
    assert_eq!(
        *letters.failed.lock().unwrap(),
        ["poison|cannot book poison|2"],
        "only the failing message, with its story"
    );
    let batches = seen.batches.lock().unwrap().clone();
    assert_eq!(
        batches,
        [
            vec!["a", "b", "poison", "c", "d"],
            vec!["poison", "c", "d"],
            vec!["c", "d"],
        ]
    );
}

#[derive(serde::Deserialize)]
struct Payment {
    order: String,
}

#[kq::consumer(conf = "Decoded")]
async fn decoded(seen: &kq::State<Seen>, payments: Vec<kq::Json<Payment>>) {
    seen.batches
        .lock()
        .unwrap()
        .push(payments.into_iter().map(|kq::Json(p)| p.order).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_element_goes_through_the_error_policy_alone() {
    let topic = unique("batch-decode");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic);
    for value in [r#"{"order":"o1"}"#, "not json", r#"{"order":"o2"}"#] {
        pusher.kpush("k", value).await.unwrap();
    }
    let seen = Arc::new(Seen::default());
    let failed = seen.clone();
    let running = Running::start_queue(
        "decoded",
        batch_conf(&topic, 10, Duration::from_millis(300)),
        &seen,
        move |queue| {
            queue.with_error_handler(move |msg, error| {
                failed
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{}: {error}", value_of(msg)));
            })
        },
    );
    assert!(eventually(WAIT, || seen.count() >= 2).await);
    running.stop().await;
    assert_eq!(
        seen.values(),
        ["o1", "o2"],
        "the batch ran without it, once"
    );
    let failed = seen.failed.lock().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("not json: value is not valid JSON"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_waits_for_a_running_batch() {
    let topic = unique("batch-rebalance");
    create_topic(&topic, 4).await;
    let mut conf = batch_conf(&topic, 20, Duration::from_millis(50));
    if !real_broker() {
        // The embedded broker's coordinator does not complete cooperative rebalances.
        conf.assignor = kq::Assignor::Range;
    }
    let pushed = push_keyed(&topic, 8, 40).await;
    let first = Arc::new(Seen::default());
    first.slow.store(true, Ordering::SeqCst);
    let one = Running::start("ledger", conf.clone(), &first);
    assert!(eventually(WAIT, || first.count() >= 20).await);
    // A second member joins while the first runs its slow batches.
    let second = Arc::new(Seen::default());
    let two = Running::start("ledger", conf, &second);
    assert!(
        eventually(WAIT, || {
            let mut all = first.values();
            all.extend(second.values());
            all.sort();
            all.dedup();
            all.len() >= pushed
        })
        .await
    );
    one.stop().await;
    two.stop().await;
    // Each key's messages were first handled in order, across both members: a partition
    // moved only once the batch running on it was done.
    let mut first_values = first.values();
    first_values.extend(second.values());
    for (key, seqs) in by_key(&first_values) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted.len(), 40, "{key}: every message");
    }
}

//! A failing key holds only itself, and what is finished is not done again: while one key's
//! handler fails, the other keys' messages run, in the same lanes and partitions; once it
//! recovers, the key's messages run in order; a restart during the hold skips what the commit's
//! offset map says was finished; a hostile map makes kq skip nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{brokers, consumer_conf, create_topic, eventually, unique, Running};
use kq::KqConf;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(60);
/// The key whose handler fails while `down` is set.
const FAILING: &str = "key-0";

/// What the handlers saw.
#[derive(Default)]
struct Seen {
    /// Each key's values, in the order they were handled, successes only.
    handled: Mutex<HashMap<String, Vec<usize>>>,
    /// Set while the failing key's downstream is down.
    down: AtomicBool,
}

impl Seen {
    fn count(&self, key: &str) -> usize {
        self.handled.lock().unwrap().get(key).map_or(0, Vec::len)
    }

    fn others(&self) -> usize {
        let handled = self.handled.lock().unwrap();
        handled
            .iter()
            .filter(|(key, _)| *key != FAILING)
            .map(|(_, values)| values.len())
            .sum()
    }
}

#[kq::consumer(conf = "Holds")]
async fn keyed(seen: &kq::State<Seen>, key: &str, value: &str) -> Result<(), String> {
    if key == FAILING && seen.down.load(Ordering::Acquire) {
        return Err("downstream down".into());
    }
    let seq: usize = value
        .parse()
        .map_err(|_| format!("not a number: {value}"))?;
    seen.handled
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_default()
        .push(seq);
    Ok(())
}

/// Pushes `rounds` rounds of one message per key, keys `key-{n}`, values the round's number.
async fn push_rounds(topic: &str, keys: usize, rounds: usize) {
    common::push_rounds(topic, keys, rounds, |key, round| {
        (format!("key-{key}"), round.to_string())
    })
    .await;
}

/// A conf that retries for good while the failing key is down: `ForceCommit: false`.
fn holding_conf(topic: &str) -> KqConf {
    let mut conf = consumer_conf(topic);
    conf.force_commit = false;
    conf.retry.attempts = 3;
    conf.retry.max_backoff = Duration::from_millis(100);
    conf
}

/// Starts the consumer on a new topic of `partitions` with the failing key down and two
/// processors (the failing key shares its lane with a quarter of the others), `tune` applied
/// to its conf, then pushes `rounds` rounds of `keys` keys.
async fn start_down(
    partitions: i32,
    (keys, rounds): (usize, usize),
    tune: impl FnOnce(&mut KqConf),
) -> (Arc<Seen>, Running) {
    let topic = unique("holds");
    create_topic(&topic, partitions).await;
    let seen = Arc::new(Seen::default());
    seen.down.store(true, Ordering::Release);
    let mut conf = holding_conf(&topic);
    conf.processors = 2;
    tune(&mut conf);
    let running = Running::start("keyed", conf, &seen);
    push_rounds(&topic, keys, rounds).await;
    (seen, running)
}

/// Checks that every key's messages were handled once each, in order.
fn assert_in_order(seen: &Seen, rounds: usize) {
    let handled = seen.handled.lock().unwrap();
    for (key, values) in handled.iter() {
        assert_eq!(
            *values,
            (0..rounds).collect::<Vec<_>>(),
            "{key} out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_key_holds_only_its_own_messages() {
    const KEYS: usize = 32;
    const ROUNDS: usize = 100;
    let (seen, running) = start_down(2, (KEYS, ROUNDS), |_| {}).await;

    let others = (KEYS - 1) * ROUNDS;
    assert!(
        eventually(WAIT, || seen.others() == others).await,
        "{} of the other keys' {others} messages handled while one key was down",
        seen.others()
    );
    assert_eq!(seen.count(FAILING), 0);

    seen.down.store(false, Ordering::Release);
    assert!(
        eventually(WAIT, || seen.count(FAILING) == ROUNDS).await,
        "{} of the failing key's {ROUNDS} messages handled after it recovered",
        seen.count(FAILING)
    );
    running.stop().await;
    assert_in_order(&seen, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_hold_skips_what_was_finished() {
    let topic = unique("holds-restart");
    create_topic(&topic, 2).await;
    const KEYS: usize = 16;
    const ROUNDS: usize = 50;
    let first = Arc::new(Seen::default());
    first.down.store(true, Ordering::Release);
    let conf = holding_conf(&topic);
    let running = Running::start("keyed", conf.clone(), &first);
    push_rounds(&topic, KEYS, ROUNDS).await;
    let others = (KEYS - 1) * ROUNDS;
    assert!(eventually(WAIT, || first.others() == others).await);
    // Long enough for the offset maps of the last messages to be committed.
    tokio::time::sleep(conf.commit_interval * 3).await;
    running.stop().await;

    // The same group again, with the key up: only what was not finished runs.
    let second = Arc::new(Seen::default());
    let running = Running::start("keyed", conf, &second);
    assert!(
        eventually(WAIT, || second.count(FAILING) == ROUNDS).await,
        "{} of the held key's {ROUNDS} messages handled after the restart",
        second.count(FAILING)
    );
    // Anything else would have come before the held key's messages, which it shares
    // partitions with; give a straggler a moment anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_eq!(
        second.others(),
        0,
        "finished messages handled again after the restart"
    );
    let handled = second.handled.lock().unwrap();
    assert_eq!(handled[FAILING], (0..ROUNDS).collect::<Vec<_>>());
}

/// Commits `offset` with `metadata` for `group` on every partition of `topic`, as another
/// client might.
fn commit_with_metadata(group: &str, topic: &str, partitions: i32, offset: i64, metadata: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers_for_rdkafka())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        let mut element = list.add_partition(topic, partition);
        element.set_offset(Offset::Offset(offset)).unwrap();
        element.set_metadata(metadata);
    }
    consumer
        .commit(&list, CommitMode::Sync)
        .expect("commit with metadata");
}

/// The test broker's address for a plain rdkafka client.
fn brokers_for_rdkafka() -> String {
    let brokers = brokers();
    if brokers == ["embedded"] {
        kq::EmbeddedBroker::get()
            .expect("the embedded broker")
            .bootstrap_servers()
            .to_owned()
    } else {
        brokers.join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_offset_map_makes_kq_skip_nothing() {
    const ROUNDS: usize = 20;
    let records = [
        // Not base64.
        "kq1:!!!".to_owned(),
        // Another version.
        "kq9:AAAA".to_owned(),
        // Runs naming offsets far past the partition's end: base 0, then a million
        // offsets from 1 on.
        "kq1:AAAAwIQ9".to_owned(),
        // A record for another committed offset.
        "kq1:AAcAAQ".to_owned(),
    ];
    for record in records {
        let topic = unique("holds-hostile");
        create_topic(&topic, 1).await;
        push_rounds(&topic, 1, ROUNDS).await;
        let conf = consumer_conf(&topic);
        let (group, topic_name) = (conf.group.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            commit_with_metadata(&group, &topic_name, 1, 0, &record)
        })
        .await
        .unwrap();
        let seen = Arc::new(Seen::default());
        let running = Running::start("keyed", conf, &seen);
        assert!(
            eventually(WAIT, || seen.count(FAILING) == ROUNDS).await,
            "{} of {ROUNDS} handled",
            seen.count(FAILING)
        );
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_of_what_waits_the_held_keys_lane_backs_up_and_nothing_is_lost() {
    const KEYS: usize = 32;
    const ROUNDS: usize = 60;
    // The held message and nine behind it: the tenth meets the bound.
    let (seen, running) = start_down(1, (KEYS, ROUNDS), |conf| conf.hold.messages = 10).await;

    // The lane of the held key waits once the bound is reached, and with it the keys that
    // share the lane; the other lanes run to the end.
    let others = (KEYS - 1) * ROUNDS;
    let settled = |seen: &Seen| seen.others();
    assert!(eventually(WAIT, || settled(&seen) > 0).await, "nothing ran");
    let mut before = settled(&seen);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = settled(&seen);
        if now == before {
            break;
        }
        before = now;
    }
    assert!(
        before < others,
        "every other key's message ran although the held key's lane was at the bound"
    );
    assert_eq!(seen.count(FAILING), 0);

    seen.down.store(false, Ordering::Release);
    assert!(
        eventually(WAIT, || seen.count(FAILING) == ROUNDS
            && seen.others() == others)
        .await,
        "{} of the held key's and {} of the others' messages after it recovered",
        seen.count(FAILING),
        seen.others()
    );
    running.stop().await;
    assert_in_order(&seen, ROUNDS);
}

/// What the partition-order test's handler saw: each message handled, by partition, and the
/// first offset of the failing key that failed.
#[derive(Default)]
struct ByPartition {
    handled: Mutex<HashMap<i32, Vec<i64>>>,
    failed_at: Mutex<Option<(i32, i64)>>,
    down: AtomicBool,
}

#[kq::consumer(conf = "Holds")]
async fn by_partition(seen: &kq::State<ByPartition>, msg: &kq::Message) -> Result<(), String> {
    if msg.key() == Some(FAILING.as_bytes()) && seen.down.load(Ordering::Acquire) {
        seen.failed_at
            .lock()
            .unwrap()
            .get_or_insert((msg.partition(), msg.offset()));
        return Err("downstream down".into());
    }
    seen.handled
        .lock()
        .unwrap()
        .entry(msg.partition())
        .or_default()
        .push(msg.offset());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_partition_order_a_failing_message_holds_its_partition_only() {
    let topic = unique("holds-partition");
    create_topic(&topic, 2).await;
    let seen = Arc::new(ByPartition::default());
    seen.down.store(true, Ordering::Release);
    let mut conf = holding_conf(&topic);
    conf.ordering = kq::Ordering::Partition;
    let running = Running::start("by_partition", conf, &seen);
    push_rounds(&topic, 16, 40).await;
    let count =
        |seen: &ByPartition| -> usize { seen.handled.lock().unwrap().values().map(Vec::len).sum() };
    assert!(eventually(WAIT, || seen.failed_at.lock().unwrap().is_some()).await);
    // Until nothing more runs.
    let mut before = count(&seen);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if count(&seen) == before {
            break;
        }
        before = count(&seen);
    }
    let (held, at) = seen.failed_at.lock().unwrap().unwrap();
    let during: HashMap<i32, Vec<i64>> = seen.handled.lock().unwrap().clone();

    seen.down.store(false, Ordering::Release);
    assert!(
        eventually(WAIT, || count(&seen) == 16 * 40).await,
        "{}",
        count(&seen)
    );
    running.stop().await;
    let after = seen.handled.lock().unwrap();
    for (partition, offsets) in after.iter() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} out of order"
        );
        let before_recovery = during.get(partition).map_or(0, Vec::len);
        if *partition == held {
            // Nothing after the failing message ran while it was held.
            assert!(
                during
                    .get(partition)
                    .is_none_or(|offsets| offsets.iter().all(|&o| o < at)),
                "partition {held} ran past its held offset {at}"
            );
        } else {
            assert_eq!(
                before_recovery,
                offsets.len(),
                "partition {partition} waited for the other's held message"
            );
        }
    }
}

//! The pusher: delivery failures are surfaced on every path, keys keep their partition and
//! order, and neither `close` nor dropping the last clone loses what was pushed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, real_broker, unique, Running};
use kq::{PushError, Pusher, PusherConf};

const WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counted {
    count: AtomicUsize,
}

#[kq::consumer(conf = "Counted")]
async fn counted(counter: &kq::State<Counted>, _msg: &kq::Message) {
    counter.count.fetch_add(1, Ordering::SeqCst);
}

/// Consumes `topic` from the start until `expected` messages were handled; returns how many.
async fn consume_all(topic: &str, expected: usize) -> usize {
    let counter = Arc::new(Counted::default());
    let running = Running::start("counted", consumer_conf(topic), &counter);
    eventually(WAIT, || counter.count.load(Ordering::SeqCst) >= expected).await;
    // Anything beyond `expected` would be a message pushed twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    counter.count.load(Ordering::SeqCst)
}

fn async_conf(topic: &str) -> PusherConf {
    let mut conf = pusher_conf(topic);
    conf.sync_push = false;
    conf.flush_interval = Duration::from_millis(5);
    conf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_everything_pushed_under_load() {
    let topic = unique("load");
    create_topic(&topic, 8).await;
    let pusher = Pusher::from_conf(&async_conf(&topic)).unwrap();
    const N: usize = 20_000;
    let value = [b'x'; 100];
    for i in 0..N {
        pusher.kpush(format!("k{}", i % 500), value).await.unwrap();
    }
    pusher.close().await.expect("every message delivered");
    assert_eq!((pusher.delivered(), pusher.failed()), (N as u64, 0));
    assert_eq!(consume_all(&topic, N).await, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_clone_delivers_what_was_pushed() {
    let topic = unique("dropped");
    create_topic(&topic, 4).await;
    let pusher = Pusher::from_conf(&async_conf(&topic)).unwrap();
    let clone = pusher.clone();
    for i in 0..2000 {
        clone.kpush(format!("k{i}"), "v").await.unwrap();
    }
    drop(clone);
    // The drop of the last clone flushes (bounded by MessageTimeout) instead of purging.
    tokio::task::spawn_blocking(move || drop(pusher))
        .await
        .unwrap();
    assert_eq!(consume_all(&topic, 2000).await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_goes_to_the_same_partition_in_order() {
    let topic = unique("keyed");
    create_topic(&topic, 8).await;
    let pusher = Pusher::from_conf(&pusher_conf(&topic)).unwrap();
    let mut placed: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for seq in 0..10 {
        for k in 0..20 {
            let key = format!("user-{k}");
            let delivery = pusher.kpush(&key, format!("{seq}")).await.unwrap().unwrap();
            placed
                .entry(key)
                .or_default()
                .push((delivery.partition, delivery.offset));
        }
    }
    let mut partitions_used: Vec<i32> = Vec::new();
    for (key, deliveries) in &placed {
        let partition = deliveries[0].0;
        partitions_used.push(partition);
        assert!(
            deliveries.iter().all(|d| d.0 == partition),
            "{key} moved: {deliveries:?}"
        );
        assert!(
            deliveries.windows(2).all(|w| w[0].1 < w[1].1),
            "{key} out of order"
        );
    }
    partitions_used.sort();
    partitions_used.dedup();
    assert!(partitions_used.len() > 1, "keys spread over partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_failures_are_surfaced_on_every_path() {
    let mut sync_conf = if real_broker() {
        // A topic that does not exist, with auto-creation off.
        PusherConf::new(common::brokers(), unique("missing"))
    } else {
        pusher_conf(&unique("outage"))
    };
    sync_conf.sync_push = true;
    sync_conf.message_timeout = Duration::from_secs(2);
    let mut async_conf = sync_conf.clone();
    async_conf.sync_push = false;
    async_conf.flush_interval = Duration::from_millis(5);
    let sync_pusher = Pusher::from_conf(&sync_conf).unwrap();
    let async_pusher = Pusher::from_conf(&async_conf).unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    {
        let failures = failures.clone();
        async_pusher.on_delivery_failure(move |failure| {
            failures.lock().unwrap().push(failure.key.clone());
        });
    }
    if !real_broker() {
        kq::EmbeddedBroker::get().unwrap().set_up(false).unwrap();
    }

    // A synchronous push returns the failure.
    let error = sync_pusher.kpush("k", "v").await.unwrap_err();
    assert!(matches!(error, PushError::Delivery { .. }), "{error}");

    // Asynchronous pushes return once queued; each failure reaches the callback and the
    // counter, and the next close reports them.
    for i in 0..5 {
        assert!(async_pusher
            .kpush(format!("k{i}"), "v")
            .await
            .unwrap()
            .is_none());
    }
    let closed = async_pusher.close().await;
    if !real_broker() {
        kq::EmbeddedBroker::get().unwrap().set_up(true).unwrap();
    }
    match closed {
        Err(PushError::Undelivered { failed, .. }) => assert_eq!(failed, 5),
        other => panic!("close reported {other:?}"),
    }
    assert_eq!(async_pusher.failed(), 5);
    let mut keys: Vec<_> = failures.lock().unwrap().iter().flatten().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        (0..5)
            .map(|i| format!("k{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    // Reported once: a second close has nothing left to report.
    async_pusher.close().await.unwrap();
}

//! Across a broker restart: what was pushed and what a group committed are still there, so a
//! consumer resumes exactly where it stopped. Runs in the real-broker suite
//! (`scripts/test.sh --real`); it starts, stops and starts again a Kafka broker of its own
//! with `scripts/broker.sh`, leaving the suite's shared one alone.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, unique, Running};
use kq::{KqConf, Pusher, PusherConf};

fn broker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

/// The broker instance this test restarts.
const INSTANCE: &str = "durability";

fn own_broker(command: &str) -> String {
    let output = Command::new(broker_script())
        .args([command, INSTANCE])
        .output()
        .expect("run scripts/broker.sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Stops the test's broker, and deletes its data, however the test ends.
struct Stop;

impl Drop for Stop {
    fn drop(&mut self) {
        own_broker("wipe");
    }
}

#[derive(Default)]
struct Seen {
    values: Mutex<Vec<String>>,
}

#[kq::consumer(conf = "Durable")]
async fn durable(seen: &kq::State<Seen>, _key: &str, value: &str) {
    seen.values.lock().unwrap().push(value.to_owned());
}

async fn consume(brokers: &str, group: &str, topic: &str, expected: usize) -> Vec<String> {
    let seen = Arc::new(Seen::default());
    let mut conf = KqConf::new([brokers], group, topic);
    conf.offset = kq::Offset::First;
    conf.max_wait = Duration::from_millis(50);
    conf.min_bytes = 1;
    conf.session_timeout = Duration::from_secs(6);
    let running = Running::start("durable", conf, &seen);
    eventually(Duration::from_secs(90), || {
        seen.values.lock().unwrap().len() >= expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    let values = seen.values.lock().unwrap().clone();
    values
}

async fn push(brokers: &str, topic: &str, values: impl IntoIterator<Item = String>) {
    let mut conf = PusherConf::new([brokers], topic);
    conf.sync_push = false;
    let pusher = Pusher::from_conf(&conf).unwrap();
    for (i, value) in values.into_iter().enumerate() {
        pusher.kpush(format!("k{}", i % 3), value).await.unwrap();
    }
    // Delivered in ordinary batches before the broker restarts.
    pusher.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_messages_and_committed_offsets_survive_a_broker_restart() {
    if !common::real_broker() {
        eprintln!("skipped: runs with the real-broker suite (scripts/test.sh --real)");
        return;
    }
    let _stop = Stop;
    let brokers = own_broker("up");
    let topic = unique("durable");
    let group = unique("durable-group");
    kq::create_topic(std::slice::from_ref(&brokers), &topic, 2)
        .await
        .unwrap();
    push(&brokers, &topic, (0..10).map(|i| format!("before-{i}"))).await;
    let first = consume(&brokers, &group, &topic, 10).await;
    assert_eq!(first.len(), 10, "{first:?}");

    own_broker("down");
    let brokers = own_broker("up");
    push(&brokers, &topic, (0..5).map(|i| format!("after-{i}"))).await;
    let second = consume(&brokers, &group, &topic, 5).await;
    let mut second_sorted = second.clone();
    second_sorted.sort();
    assert_eq!(
        second_sorted,
        (0..5).map(|i| format!("after-{i}")).collect::<Vec<_>>(),
        "the group resumed from its committed offsets"
    );
}

//! The delivery guarantees, each tested through the public API: gap-free commits when
//! handlers finish out of order, holding a partition with `ForceCommit: false`, the
//! dead-letter topic, a stop during a retry, members joining and leaving while messages flow,
//! a commit or a dead letter the broker refuses, and riding out a broker outage.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, pusher_conf, real_broker, unique, Running};
use kq::{KqConf, Pusher};

const WAIT: Duration = Duration::from_secs(60);

/// What a handler saw: `(member, key, value)` in the order handled.
#[derive(Default)]
struct Log {
    entries: Mutex<Vec<(usize, String, String)>>,
    attempts: Mutex<HashMap<String, usize>>,
    /// Lets a test release a handler it is holding up.
    release: AtomicBool,
}

impl Log {
    fn push(&self, member: usize, key: &str, value: &str) {
        self.entries
            .lock()
            .unwrap()
            .push((member, key.to_owned(), value.to_owned()));
    }

    fn values(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.2.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Distinct values handled: a message delivered again counts once.
    fn distinct(&self) -> usize {
        let mut values = self.values();
        values.sort();
        values.dedup();
        values.len()
    }

    fn attempt(&self, value: &str) -> usize {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(value.to_owned()).or_default();
        *n += 1;
        *n
    }
}

/// The log plus which member a queue is, so one handler serves several members.
struct Member {
    id: usize,
    log: Arc<Log>,
}

fn start(consumer: &str, conf: KqConf, id: usize, log: &Arc<Log>) -> Running {
    let member = Arc::new(Member {
        id,
        log: log.clone(),
    });
    Running::start(consumer, conf, &member)
}

fn pusher(topic: &str) -> Pusher {
    Pusher::from_conf(&pusher_conf(topic)).expect("pusher")
}

/// A broker of the test's own (librdkafka's mock cluster), so that the faults it is told to
/// inject reach no other test's requests, with a fresh topic of `partitions` and a pusher
/// that waits for each delivery.
fn own_broker(
    name: &str,
    partitions: i32,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    Pusher,
) {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("broker");
    let topic = unique(name);
    cluster.create_topic(&topic, partitions, 1).expect("topic");
    let mut conf = kq::PusherConf::new([cluster.bootstrap_servers()], topic.as_str());
    conf.sync_push = true;
    let pusher = Pusher::from_conf(&conf).expect("pusher");
    (cluster, topic, pusher)
}

#[kq::consumer(conf = "OutOfOrder")]
async fn out_of_order(member: &kq::State<Member>, key: &str, value: &str) {
    if value == "slow" {
        // Finishes long after everything behind it, unless the test releases it.
        for _ in 0..100 {
            if member.log.release.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    member.log.push(member.id, key, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_pass_a_message_that_has_not_finished() {
    let topic = unique("out-of-order");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic);
    pusher.kpush("a", "slow").await.unwrap();
    for i in 0..20 {
        pusher
            .kpush(format!("k{i}"), format!("fast-{i}"))
            .await
            .unwrap();
    }
    let mut conf = consumer_conf(&topic);
    conf.shutdown_timeout = Duration::from_millis(100);
    conf.commit_interval = Duration::from_millis(50);
    // Any free processor takes the next message, so nothing waits behind the slow one.
    conf.ordering = kq::Ordering::None;

    let log = Arc::new(Log::default());
    let running = start("out_of_order", conf.clone(), 0, &log);
    // Everything behind the slow message finishes, and several commit intervals pass.
    assert!(eventually(WAIT, || log.count() >= 20).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!log.values().contains(&"slow".to_owned()));
    // The stop gives up on the slow handler after ShutdownTimeout.
    running.stop().await;
    log.release.store(true, Ordering::SeqCst);

    // Had any commit passed offset 0, the slow message would be lost to the group. The group
    // resumes at it; the messages finished behind it are named in the commit's offset map and
    // are not handled again.
    let again = Arc::new(Log::default());
    again.release.store(true, Ordering::SeqCst);
    let running = start("out_of_order", conf, 1, &again);
    assert!(eventually(WAIT, || again.count() >= 1).await);
    // A finished message handled again would come within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_eq!(
        again.values(),
        ["slow"],
        "redelivered from the first unfinished offset, and only it"
    );
}

#[kq::consumer(conf = "Held")]
async fn held(member: &kq::State<Member>, key: &str, value: &str) -> Result<(), String> {
    let attempt = member.log.attempt(value);
    if value == "stuck" && attempt <= 4 {
        return Err(format!("not yet ({attempt})"));
    }
    member.log.push(member.id, key, value);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_commit_false_holds_the_message_until_it_succeeds() {
    let topic = unique("held");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic);
    for value in ["before", "stuck", "after"] {
        pusher.kpush("same-key", value).await.unwrap();
    }
    let mut conf = consumer_conf(&topic);
    conf.force_commit = false;
    conf.retry.attempts = 2;

    let log = Arc::new(Log::default());
    let running = start("held", conf, 0, &log);
    assert!(eventually(WAIT, || log.count() >= 3).await);
    running.stop().await;
    assert_eq!(
        log.values(),
        ["before", "stuck", "after"],
        "never skipped, order kept"
    );
    assert_eq!(
        log.attempts.lock().unwrap()["stuck"],
        5,
        "retried past Retry.Attempts"
    );
}

#[kq::consumer(conf = "Interrupted")]
async fn interrupted(member: &kq::State<Member>, key: &str, value: &str) -> Result<(), String> {
    member.log.attempt(value);
    if value == "failing" && !member.log.release.load(Ordering::SeqCst) {
        return Err("not yet".into());
    }
    member.log.push(member.id, key, value);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_retry_does_not_let_the_next_message_of_its_key_overtake_it() {
    let topic = unique("interrupted");
    create_topic(&topic, 1).await;
    let pusher = pusher(&topic);
    for value in ["failing", "next"] {
        pusher.kpush("same-key", value).await.unwrap();
    }
    let mut conf = consumer_conf(&topic);
    // The stop comes while the first message waits for its second attempt.
    conf.retry.attempts = 5;
    conf.retry.backoff = Duration::from_secs(5);
    conf.retry.max_backoff = Duration::from_secs(5);

    let log = Arc::new(Log::default());
    let running = start("interrupted", conf.clone(), 0, &log);
    let tried = |value: &str| log.attempts.lock().unwrap().contains_key(value);
    assert!(eventually(WAIT, || tried("failing")).await);
    running.stop().await;
    assert!(
        !tried("next"),
        "the message behind an abandoned one with the same key started: {:?}",
        log.values()
    );

    // The abandoned message was not committed: a restart handles both, in order.
    let again = Arc::new(Log::default());
    again.release.store(true, Ordering::SeqCst);
    let running = start("interrupted", conf, 1, &again);
    assert!(eventually(WAIT, || again.count() >= 2).await);
    running.stop().await;
    assert_eq!(again.values(), ["failing", "next"]);
}

#[kq::consumer(conf = "Poisoned")]
async fn poisoned(_member: &kq::State<Member>, _key: &str, value: &str) -> anyhow::Result<()> {
    anyhow::bail!("cannot handle {value}")
}

#[kq::consumer(conf = "DeadLetters")]
async fn dead_letters(member: &kq::State<Member>, msg: &kq::Message, key: &str, value: &str) {
    use kq::dead_letter_headers::*;
    let header = |name: &str| msg.headers().get_str(name).unwrap_or("-").to_owned();
    member.log.push(
        member.id,
        key,
        &format!(
            "{value}|{}|{}|{}|{}|{}|{}",
            header("trace-id"),
            header(TOPIC),
            header(PARTITION),
            header(OFFSET),
            header(ERROR),
            header(ATTEMPTS)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_messages_go_to_the_dead_letter_topic_with_their_story() {
    let topic = unique("poisoned");
    let dead_letter_topic = format!("{topic}-dlq");
    create_topic(&topic, 1).await;
    create_topic(&dead_letter_topic, 1).await;
    let pusher = pusher(&topic);
    let delivery = pusher
        .push_with_headers("order-1", "poison", [("trace-id", b"t-1".as_slice())])
        .await
        .unwrap()
        .unwrap();

    let mut conf = consumer_conf(&topic);
    conf.dead_letter_topic = dead_letter_topic.clone();
    let ignored = Arc::new(Log::default());
    let running = start("poisoned", conf, 0, &ignored);

    let log = Arc::new(Log::default());
    let reader = start("dead_letters", consumer_conf(&dead_letter_topic), 1, &log);
    assert!(eventually(WAIT, || log.count() >= 1).await);
    reader.stop().await;
    running.stop().await;
    let entries = log.entries.lock().unwrap().clone();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1, "order-1", "the original key");
    assert_eq!(
        entries[0].2,
        format!(
            "poison|t-1|{topic}|{}|{}|cannot handle poison|3",
            delivery.partition, delivery.offset
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_is_written_again_not_skipped() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    if real_broker() {
        // Refusing writes is the in-process broker's fault injection.
        return;
    }
    let (cluster, topic, pusher) = own_broker("dead-letter-refused", 1);
    let brokers = cluster.bootstrap_servers();
    let dead_letter_topic = format!("{topic}-dlq");
    cluster
        .create_topic(&dead_letter_topic, 1, 1)
        .expect("topic");
    pusher.kpush("order-1", "poison").await.unwrap();

    // The next two writes, the dead letter's first two tries, fail for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let mut conf = consumer_conf(&topic);
    conf.brokers = vec![brokers.clone()];
    conf.retry.attempts = 1;
    // The default: a failure the policy gives up on is committed past, but not before its
    // dead letter is written.
    assert!(conf.force_commit);
    conf.dead_letter_topic = dead_letter_topic.clone();
    let running = start("poisoned", conf, 0, &Arc::new(Log::default()));

    let mut reader_conf = consumer_conf(&dead_letter_topic);
    reader_conf.brokers = vec![brokers];
    let log = Arc::new(Log::default());
    let reader = start("dead_letters", reader_conf, 1, &log);
    assert!(
        eventually(WAIT, || log.count() >= 1).await,
        "the dead letter never arrived"
    );
    reader.stop().await;
    running.stop().await;
    let values = log.values();
    assert_eq!(values.len(), 1, "{values:?}");
    assert!(values[0].starts_with("poison|"), "{values:?}");
}

#[kq::consumer(conf = "Rebalanced")]
async fn rebalanced(member: &kq::State<Member>, key: &str, value: &str) {
    tokio::time::sleep(Duration::from_millis(2)).await;
    member.log.push(member.id, key, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_while_messages_flow_lose_nothing() {
    let topic = unique("rebalanced");
    create_topic(&topic, 6).await;
    let mut conf = consumer_conf(&topic);
    if !real_broker() {
        // The embedded broker's coordinator does not complete incremental (cooperative)
        // rebalances; the real broker run covers cooperative-sticky, this one eager.
        conf.assignor = kq::Assignor::Range;
    }
    let log = Arc::new(Log::default());
    const KEYS: usize = 12;
    const MAX_ROUNDS: usize = 2000;

    // Messages flow until after the first member has left.
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producing = {
        let pusher = pusher(&topic);
        let stop = stop_producing.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while rounds < MAX_ROUNDS && !stop.load(Ordering::SeqCst) {
                for k in 0..KEYS {
                    pusher
                        .kpush(format!("k{k}"), format!("{k}:{rounds}"))
                        .await
                        .unwrap();
                }
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            rounds
        })
    };
    let first = start("rebalanced", conf.clone(), 0, &log);
    assert!(eventually(WAIT, || log.count() >= 50).await);
    let second = start("rebalanced", conf.clone(), 1, &log);
    assert!(
        eventually(WAIT, || log
            .entries
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.0 == 1))
        .await
    );
    // The first member leaves while messages still flow; the second takes everything over.
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_producing.store(true, Ordering::SeqCst);
    let pushed = producing.await.unwrap() * KEYS;
    let all = eventually(WAIT, || {
        let mut values = log.values();
        values.sort();
        values.dedup();
        values.len() >= pushed
    })
    .await;
    second.stop().await;

    let entries = log.entries.lock().unwrap().clone();
    let mut distinct: Vec<&String> = entries.iter().map(|e| &e.2).collect();
    distinct.sort();
    distinct.dedup();
    assert!(all, "handled {} distinct of {pushed}", distinct.len());
    let duplicates = entries.len() - distinct.len();
    eprintln!(
        "join and leave: {} handled, {duplicates} duplicates",
        entries.len()
    );
    if real_broker() {
        // Commits on revoke keep re-deliveries to what ran out of order past a partition's
        // first unfinished message when it moved. The embedded broker's coordinator refuses
        // every commit from the moment a member asks to join until all have rejoined (Kafka
        // accepts them while preparing a rebalance), so there the group re-reads everything
        // since the last commit before the join.
        assert!(
            duplicates <= pushed / 100,
            "{duplicates} duplicates of {pushed}"
        );
    }

    // Per key, messages were first handled in order, across both members: a partition's
    // running handlers finish before it moves. Re-deliveries go back, to a message already
    // handled.
    let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (member, key, value) in &entries {
        let seq: usize = value.split_once(':').unwrap().1.parse().unwrap();
        if seen.insert(value) {
            if let Some(&previous) = newest.get(key.as_str()) {
                assert!(
                    seq > previous,
                    "member {member} first ran {key} {seq} after {previous}"
                );
            }
            newest.insert(key, seq);
        }
    }
}

#[kq::consumer(conf = "Refused")]
async fn refused_commits(member: &kq::State<Member>, key: &str, value: &str) {
    member.log.push(member.id, key, value);
}

/// The offset `group` has committed for partition 0 of `topic`, as the broker reports it.
fn committed_offset(brokers: &str, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(5))
        .ok()?;
    match committed.find_partition(topic, 0)?.offset() {
        rdkafka::Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_is_sent_again_though_the_watermark_has_not_moved() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    if real_broker() {
        // Refusing commits is the in-process broker's fault injection.
        return;
    }
    let (cluster, topic, pusher) = own_broker("refused-commits", 1);
    let brokers = cluster.bootstrap_servers();
    for i in 0..5 {
        pusher.kpush("k", format!("m{i}")).await.unwrap();
    }

    // More refusals than the watermark has positions to move through: without sending a
    // refused watermark again, the group's commit would stay behind for as long as the
    // partition is quiet.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let mut conf = consumer_conf(&topic);
    conf.brokers = vec![brokers.clone()];
    let group = conf.group.clone();
    let log = Arc::new(Log::default());
    let running = start("refused_commits", conf, 0, &log);
    assert!(eventually(WAIT, || log.count() >= 5).await);
    let committed = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let committed = committed_offset(&brokers, &group, &topic);
            if committed == Some(5) || std::time::Instant::now() >= deadline {
                return committed;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(committed, Some(5), "committed while the consumer runs");
    running.stop().await;
}

static OUTAGE_SEEN: AtomicUsize = AtomicUsize::new(0);

#[kq::consumer(conf = "Outage")]
async fn outage(member: &kq::State<Member>, key: &str, value: &str) {
    OUTAGE_SEEN.fetch_add(1, Ordering::SeqCst);
    member.log.push(member.id, key, value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_ridden_out() {
    if real_broker() {
        // Taking the broker down is the embedded broker's fault injection.
        return;
    }
    let topic = unique("outage");
    create_topic(&topic, 2).await;
    let mut conf = pusher_conf(&topic);
    conf.sync_push = false;
    let pusher = Pusher::from_conf(&conf).unwrap();
    let log = Arc::new(Log::default());
    let running = start("outage", consumer_conf(&topic), 0, &log);
    for i in 0..10 {
        pusher
            .kpush(format!("k{i}"), format!("before-{i}"))
            .await
            .unwrap();
    }
    assert!(eventually(WAIT, || log.distinct() >= 10).await);

    let broker = kq::EmbeddedBroker::get().unwrap();
    broker.set_up(false).unwrap();
    for i in 0..10 {
        // Queued locally while the broker is down, delivered when it is back.
        pusher
            .kpush(format!("k{i}"), format!("during-{i}"))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.set_up(true).unwrap();
    pusher
        .close()
        .await
        .expect("everything delivered once the broker is back");
    // At least once: a member that lost its group in the outage, or a commit that did not
    // get through, delivers some messages again, so the wait is for every message, not for a
    // count of deliveries.
    assert!(
        eventually(WAIT, || log.distinct() >= 20).await,
        "handled {} distinct messages in {} deliveries",
        log.distinct(),
        log.count()
    );
    running.stop().await;
    assert_eq!(log.distinct(), 20);
}

#[kq::consumer(conf = "Lost")]
async fn lost(member: &kq::State<Member>, key: &str, value: &str) {
    member.log.push(member.id, key, value);
}

/// kq's own log lines, from every thread (rebalances run on a member's fetch thread).
fn kq_log() -> &'static Mutex<Vec<String>> {
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Records the text of every event from kq.
    struct Record;

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Record {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            if event.metadata().target().starts_with("kq") {
                let mut message = Message(String::new());
                event.record(&mut message);
                kq_log().lock().unwrap().push(message.0);
            }
        }
    }

    static LOG: std::sync::OnceLock<Mutex<Vec<String>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        // Global, as the fetch thread logs outside the test's own thread.
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Record));
        Mutex::new(Vec::new())
    })
}

/// A member the group drops (its coordinator answers a heartbeat with UNKNOWN_MEMBER_ID, as it
/// does once the member's session expired) has lost its partitions: kq commits nothing for
/// them, since their next owner may be past what it handled, rejoins, and has every message
/// handled again from the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_loses_its_partitions_commits_nothing_and_rejoins() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    if real_broker() {
        // Refusing heartbeats is the in-process broker's fault injection.
        return;
    }
    let log_lines = kq_log();
    let (cluster, topic, pusher) = own_broker("lost", 2);
    let brokers = cluster.bootstrap_servers();
    for i in 0..10 {
        pusher
            .kpush(format!("k{i}"), format!("m{i}"))
            .await
            .unwrap();
    }

    let mut conf = consumer_conf(&topic);
    conf.brokers = vec![brokers];
    // Nothing is committed on the interval: what the member handled is saved only by a
    // commit on release, which a lost partition must not get.
    conf.commit_interval = Duration::from_secs(3600);
    let log = Arc::new(Log::default());
    let running = start("lost", conf, 0, &log);
    assert!(
        eventually(WAIT, || log.count() >= 10).await,
        "first delivery"
    );

    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
    );
    // The group gives the partitions back, from their last commit: none.
    assert!(
        eventually(WAIT, || log.count() >= 20).await,
        "handled {} after the loss: {:?}",
        log.count(),
        log.values()
    );
    running.stop().await;
    assert_eq!(log.distinct(), 10);
    let lines = log_lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("partitions lost")),
        "{lines:#?}"
    );
}

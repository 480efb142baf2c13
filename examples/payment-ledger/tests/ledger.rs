//! The ledger's binary, run as a deployment runs it, and its SQLite file read after:
//! - on the embedded broker, its demo payments: each good one written once, the refused one
//!   and the undecodable one through the error policy alone, and a second run over the same
//!   payments writing nothing twice;
//! - on the real broker named by `KQ_TEST_BROKERS`, SIGKILLs in the middle of batches: every
//!   payment written, and written once.

#[path = "../../support/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use process::{real_broker, sigkill, sigterm, spawn_binary, stopped, unique, Scratch};

const SERVICE: &str = env!("CARGO_BIN_EXE_payment-ledger");

/// kq's lines and the ledger's, each batch's start included.
const LOG: &str = "info,payment_ledger=debug";

/// A running ledger and what it has printed so far.
struct Service {
    child: Child,
    reader: Option<JoinHandle<()>>,
    lines: mpsc::Receiver<((), String)>,
    printed: Vec<serde_json::Value>,
}

impl Service {
    fn start(config: &Path) -> Service {
        let (tx, lines) = mpsc::channel();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (child, reader) = spawn_binary(SERVICE, dir, Some(config), Some(LOG), (), tx);
        Service {
            child,
            reader: Some(reader),
            lines,
            printed: Vec::new(),
        }
    }

    /// Collects what the service prints until `done` holds of it, for at most `limit`.
    fn collect_until(&mut self, limit: Duration, done: impl Fn(&Service) -> bool) -> bool {
        let until = Instant::now() + limit;
        while !done(self) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            if let Ok(((), line)) = self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                self.take(&line);
            }
        }
        true
    }

    /// Collects the rest of what a stopped service printed.
    fn collect_rest(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        while let Ok(((), line)) = self.lines.try_recv() {
            self.take(&line);
        }
    }

    fn take(&mut self, line: &str) {
        if let Ok(line) = serde_json::from_str(line) {
            self.printed.push(line);
        }
    }

    /// The lines whose message is `message`.
    fn lines<'a>(&'a self, message: &'a str) -> impl Iterator<Item = &'a serde_json::Value> {
        self.printed
            .iter()
            .filter(move |line| line["message"] == message)
    }

    /// The sum of the field `field` over the batches the ledger wrote.
    fn written(&self, field: &str) -> u64 {
        self.lines("ledger: batch written")
            .map(|line| line[field].as_u64().unwrap())
            .sum()
    }

    /// Batches begun and not written: those a kill interrupted.
    fn unfinished_batches(&self) -> usize {
        self.lines("ledger: writing a batch")
            .count()
            .saturating_sub(self.lines("ledger: batch written").count())
    }
}

/// A config for the ledger on `brokers`, writing `database`.
fn config(scratch: &Scratch, brokers: &str, topic: &str, database: &Path, extra: &str) -> PathBuf {
    let yaml = format!(
        "Name: ledger\nHost: 0.0.0.0\nPort: 8889\nLog: {{Encoding: json}}\n\
         Database: {database}\n{extra}\
         KqPusherConf:\n  Brokers: [{brokers}]\n  Topic: {topic}\n\
         KqConsumerConf:\n  Name: ledger\n  Brokers: [{brokers}]\n  Group: ledger-{topic}\n  \
         Topic: {topic}\n  Offset: first\n  Processors: 4\n  MaxWait: 100ms\n  \
         SessionTimeout: 6s\n  Batch: {{Size: 200, Wait: 20ms}}\n  \
         Retry: {{Attempts: 2, Backoff: 10ms}}\n  DeadLetterTopic: {topic}-dlq\n",
        database = database.display()
    );
    scratch.file(&format!("{topic}.yaml"), &yaml)
}

/// The ledger's payments and balances, read from its file; `None` before it has its tables.
fn read_ledger(database: &Path) -> Option<(BTreeMap<String, i64>, BTreeMap<String, i64>)> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let connection = rusqlite::Connection::open_with_flags(database, flags).ok()?;
    connection.busy_timeout(Duration::from_secs(5)).ok()?;
    let table = |sql: &str| -> rusqlite::Result<BTreeMap<String, i64>> {
        let mut statement = connection.prepare(sql)?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    };
    let payments = table("SELECT order_id, cents FROM payments").ok()?;
    let balances = table("SELECT user, cents FROM balances").ok()?;
    Some((payments, balances))
}

fn payment_count(database: &Path) -> usize {
    read_ledger(database).map_or(0, |(payments, _)| payments.len())
}

/// What the ledger must hold once the demo payments `1..=n` are written: every one but the
/// refused 7th and the undecodable 13th, and each user's sum.
fn expected(n: u32, bad: &[u32]) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut payments = BTreeMap::new();
    let mut balances = BTreeMap::new();
    for n in (1..=n).filter(|n| !bad.contains(n)) {
        let cents = i64::from(n) * 100;
        payments.insert(format!("order-{n}"), cents);
        *balances.entry(format!("user-{}", n % 5)).or_default() += cents;
    }
    (payments, balances)
}

#[test]
fn the_demo_writes_each_payment_once_and_sends_the_bad_ones_through_the_error_policy() {
    let scratch = Scratch::new("ledger-demo");
    let database = scratch.path("ledger.db");
    const PAYMENTS: u32 = 1000;
    let config = config(
        &scratch,
        "embedded",
        "payments",
        &database,
        &format!("DemoPayments: {PAYMENTS}\n"),
    );
    let (payments, balances) = expected(PAYMENTS, &[7, 13]);

    let mut service = Service::start(&config);
    let settled = service.collect_until(Duration::from_secs(60), |service| {
        payment_count(&database) == payments.len()
            && service.lines("message dead-lettered").count() == 2
    });
    sigterm(&mut service.child);
    assert!(stopped(&mut service.child).success());
    service.collect_rest();
    assert!(
        settled,
        "{} of {} payments written, {} dead letters",
        payment_count(&database),
        payments.len(),
        service.lines("message dead-lettered").count()
    );
    assert_eq!(
        read_ledger(&database),
        Some((payments.clone(), balances.clone()))
    );
    assert_eq!(service.written("new"), payments.len() as u64);
    assert_eq!(service.written("already"), 0);

    // The refused payment was retried from where the batch stopped, then given up alone; the
    // undecodable one was given up without a retry. Each reached the dead-letter topic.
    let failures: Vec<&str> = service
        .lines("message failed")
        .map(|line| {
            assert_eq!(line["consumer"], "ledger", "{line}");
            line["error"].as_str().unwrap()
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures
        .iter()
        .any(|e| e.contains("CHECK constraint failed")));
    assert!(failures.iter().any(|e| e.contains("not valid JSON")));
    let retries: Vec<_> = service
        .lines("batch handler failed at this message, retrying from it")
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(retries[0]["error"]
        .as_str()
        .unwrap()
        .contains("CHECK constraint failed"));

    // A second run over the same demo payments (a new embedded broker, a new topic) finds
    // every one written already and changes nothing.
    let mut again = Service::start(&config);
    let settled = again.collect_until(Duration::from_secs(60), |again| {
        again.written("already") == payments.len() as u64
            && again.lines("message dead-lettered").count() == 2
    });
    sigterm(&mut again.child);
    assert!(stopped(&mut again.child).success());
    again.collect_rest();
    assert!(settled, "{} found written", again.written("already"));
    assert_eq!(again.written("new"), 0);
    assert_eq!(read_ledger(&database), Some((payments, balances)));
}

#[test]
fn a_sigkill_mid_batch_loses_no_payment_and_writes_none_twice() {
    let Some(brokers) = real_broker() else { return };
    let topic = unique("ledger-kill");
    let scratch = Scratch::new(&topic);
    let database = scratch.path("ledger.db");
    const PAYMENTS: u32 = 20_000;
    // Each transaction stays open 20 ms, so that a kill finds batches under way.
    let config = config(&scratch, &brokers, &topic, &database, "DemoWork: 20ms\n");
    push_payments(&brokers, &topic, PAYMENTS);
    let (payments, balances) = expected(PAYMENTS, &[]);

    // Killed three times once it has written something, at different points of its batches.
    let mut runs = Vec::new();
    let mut interrupted = 0;
    for kill in 0..3u64 {
        let mut service = Service::start(&config);
        let written_before = payment_count(&database);
        let writing = service.collect_until(Duration::from_secs(60), |service| {
            service.lines("ledger: batch written").count() > 0
        });
        assert!(writing, "run {kill} wrote nothing within a minute");
        std::thread::sleep(Duration::from_millis(100 + kill * 170));
        sigkill(&mut service.child);
        service.collect_rest();
        let written_after = payment_count(&database);
        eprintln!(
            "run {kill}: {written_before} → {written_after} payments, {} batches interrupted",
            service.unfinished_batches()
        );
        assert!(
            written_after < payments.len(),
            "run {kill} finished before its kill"
        );
        interrupted += service.unfinished_batches();
        runs.push(service);
    }
    assert!(interrupted > 0, "no kill landed in a batch");

    let mut last = Service::start(&config);
    let finished = last.collect_until(Duration::from_secs(120), |_| {
        payment_count(&database) == payments.len()
    });
    sigterm(&mut last.child);
    assert!(stopped(&mut last.child).success());
    last.collect_rest();
    assert!(
        finished,
        "{} of {} payments written",
        payment_count(&database),
        payments.len()
    );
    assert_eq!(read_ledger(&database), Some((payments.clone(), balances)));
    runs.push(last);
    // A balance moved once per payment: the batches the kills interrupted left nothing behind
    // (their transactions rolled back), and what was delivered again was found written.
    let new: u64 = runs.iter().map(|run| run.written("new")).sum();
    let again: u64 = runs.iter().map(|run| run.written("already")).sum();
    assert!(
        new <= payments.len() as u64,
        "{new} payments written as new"
    );
    eprintln!("{new} written as new after the kills' rolled back batches, {again} delivered again");
    assert_eq!(
        runs.iter()
            .map(|run| run.lines("message failed").count())
            .sum::<usize>(),
        0
    );
}

/// Pushes the payments `1..=n` to a new topic of four partitions on `brokers`.
fn push_payments(brokers: &str, topic: &str, n: u32) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        kq::create_topic(&[brokers.to_owned()], topic, 4)
            .await
            .expect("create the topic");
        let conf = kq::PusherConf::new(vec![brokers.to_owned()], topic);
        let pusher = kq::Pusher::from_conf(&conf).expect("a pusher");
        for n in 1..=n {
            let payment = serde_json::json!({
                "order": format!("order-{n}"),
                "user": format!("user-{}", n % 5),
                "cents": i64::from(n) * 100,
            });
            pusher
                .kpush(&format!("order-{n}"), payment.to_string())
                .await
                .expect("push a payment");
        }
        pusher.close().await.expect("flush the payments");
    });
}

//! Rebalances as a deployment lives through them, with the service's processes on the real
//! broker named by `KQ_TEST_BROKERS` (the embedded broker lives inside one process): members
//! join and leave by SIGTERM while keyed messages flow and handlers finish out of order.
//!
//! Every test reads what each process logged (JSON lines with the handler's message span, and
//! kq's own lines on partitions assigned, released and lost) and checks:
//! - nothing is lost: every message pushed is handled;
//! - per-key order: a key's messages are first handled in the order they were pushed;
//! - no partition is handled by two members at once, and a member handles a partition only
//!   while it owns it (from "partitions assigned" to "partitions released" or "lost");
//! - no message is handled again below the watermark its partition's previous owner
//!   committed, and re-deliveries stay under 1%;
//! - no commit is refused for good, no periodic commit is refused, no partition is lost.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{real_broker, sigkill, sigterm, spawn_service, stopped, unique, Scratch};

/// What the handler and kq log at these levels is what the checks read.
const LOG: &str = "info,kq::consume=debug";

/// The service's processes in one group, started and stopped as a deployment does.
struct Fleet {
    scratch: Scratch,
    brokers: String,
    topic: String,
    group: String,
    lines_tx: mpsc::Sender<(usize, String)>,
    lines: mpsc::Receiver<(usize, String)>,
    members: Vec<(Child, JoinHandle<()>)>,
    /// Members killed with SIGKILL, which exit with no code.
    killed: HashSet<usize>,
    /// Every line printed so far, tagged with its member.
    printed: Vec<(usize, String)>,
}

impl Fleet {
    /// A fresh topic of `partitions` and a group for it.
    fn new(name: &str, brokers: String, partitions: i32) -> Fleet {
        let topic = unique(name);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(kq::create_topic(
                std::slice::from_ref(&brokers),
                &topic,
                partitions,
            ))
            .expect("create topic");
        let (lines_tx, lines) = mpsc::channel();
        Fleet {
            scratch: Scratch::new(&topic),
            group: format!("group-{topic}"),
            brokers,
            topic,
            lines_tx,
            lines,
            members: Vec::new(),
            killed: HashSet::new(),
            printed: Vec::new(),
        }
    }

    /// Starts one more member, whose handlers take up to `work` each; returns its number.
    fn join(&mut self, work: Duration) -> usize {
        self.join_with(work, "", "")
    }

    /// `join`, with lines added to the config's top level and to its consumer block.
    fn join_with(&mut self, work: Duration, top: &str, consumer: &str) -> usize {
        let member = self.members.len();
        let Fleet {
            brokers,
            topic,
            group,
            ..
        } = self;
        let yaml = format!(
            "Name: member-{member}\nHost: 0.0.0.0\nPort: 8888\nLog: {{Encoding: json}}\n\
             DemoWork: {}ms\n{top}\
             KqPusherConf:\n  Brokers: [{brokers}]\n  Topic: {topic}\n\
             KqConsumerConf:\n  Name: kqConsumer\n  Brokers: [{brokers}]\n  Group: {group}\n  \
             Topic: {topic}\n  Offset: first\n  MaxWait: 100ms\n{consumer}",
            work.as_millis()
        );
        let file = self.scratch.file(&format!("member-{member}.yaml"), &yaml);
        self.members.push(spawn_service(
            Some(&file),
            Some(LOG),
            member,
            self.lines_tx.clone(),
        ));
        member
    }

    /// Asks a member to stop, as a rolling deploy does; does not wait.
    fn leave(&mut self, member: usize) {
        sigterm(&mut self.members[member].0);
    }

    /// Kills a member at once, as a crash does.
    fn kill(&mut self, member: usize) {
        sigkill(&mut self.members[member].0);
        self.killed.insert(member);
    }

    /// Waits for a member asked to stop; returns how it exited.
    fn stopped(&mut self, member: usize) -> ExitStatus {
        stopped(&mut self.members[member].0)
    }

    /// Collects what the members print for `time`.
    fn collect(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => self.printed.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Collects until the first line of `member` containing `text`, for at most `limit`.
    fn wait_for(&mut self, member: usize, text: &str, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let from = self.printed.len();
        loop {
            if self.printed[from..]
                .iter()
                .any(|(m, line)| *m == member && line.contains(text))
            {
                return true;
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            if let Ok(line) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                self.printed.push(line);
            }
        }
    }

    /// Collects until every value of `pushed` was handled, for at most `limit`.
    fn wait_for_all(&mut self, pushed: usize, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut values: HashSet<String> = HashSet::new();
        let mut read = 0;
        loop {
            for (_, line) in &self.printed[read..] {
                if let Some(handled) = Handled::parse(0, line) {
                    values.insert(handled.value);
                }
            }
            read = self.printed.len();
            if values.len() >= pushed {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.collect(Duration::from_millis(200));
        }
    }

    /// Collects until every message of keys other than `key` was handled, `count` of them,
    /// for at most `limit`.
    fn wait_for_others(&mut self, key: &str, count: usize, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let handled: HashSet<String> = self
                .printed
                .iter()
                .filter_map(|(_, line)| Handled::parse(0, line))
                .filter(|h| h.key != key)
                .map(|h| h.value)
                .collect();
            if handled.len() >= count {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            self.collect(Duration::from_millis(200));
        }
    }

    /// Stops the members still running, waits for every one, and reads what they printed.
    fn finish(mut self) -> Record {
        for (member, (child, _)) in self.members.iter_mut().enumerate() {
            if self.killed.contains(&member) {
                continue;
            }
            if child.try_wait().unwrap().is_none() {
                sigterm(child);
            }
            let status = stopped(child);
            assert_eq!(
                status.code(),
                Some(0),
                "member {member} exited with {status}"
            );
        }
        drop(self.lines_tx);
        for (_, reader) in self.members.drain(..) {
            reader.join().unwrap();
        }
        self.printed.extend(self.lines.try_iter());
        Record::read(&self.printed)
    }
}

/// Pushes `rounds` rounds of one message per key, `keys` keys, spread over `time`, in
/// ordinary batches; values are `key:seq`. Returns how many were pushed.
fn push_while(
    brokers: &str,
    topic: &str,
    keys: usize,
    rounds: usize,
    time: Duration,
) -> JoinHandle<usize> {
    let mut conf = kq::PusherConf::new([brokers], topic);
    conf.flush_interval = Duration::from_millis(5);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let pusher = kq::Pusher::from_conf(&conf).expect("pusher");
            let pause = time / rounds as u32;
            let start = tokio::time::Instant::now();
            for seq in 0..rounds {
                for k in 0..keys {
                    pusher
                        .kpush(format!("k{k}"), format!("k{k}:{seq}"))
                        .await
                        .expect("pushed");
                }
                tokio::time::sleep_until(start + pause * (seq as u32 + 1)).await;
            }
            pusher.close().await.expect("every push delivered");
            keys * rounds
        })
    })
}

/// A message a member's handler ran.
#[derive(Debug, Clone)]
struct Handled {
    member: usize,
    /// RFC 3339 with microseconds: sorts as it reads.
    at: String,
    partition: i64,
    offset: i64,
    key: String,
    value: String,
}

impl Handled {
    fn parse(member: usize, line: &str) -> Option<Handled> {
        if !line.contains("PaymentSuccess key: ") {
            return None;
        }
        let logged: serde_json::Value = serde_json::from_str(line).ok()?;
        let text = logged["message"].as_str()?;
        let (_, rest) = text.split_once("PaymentSuccess key: ")?;
        let (key, value) = rest.split_once(", val: ")?;
        Some(Handled {
            member,
            at: logged["timestamp"].as_str()?.to_owned(),
            partition: logged["span"]["partition"].as_i64()?,
            offset: logged["span"]["offset"].as_i64()?,
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    fn seq(&self) -> usize {
        self.value.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

/// Who owned which partition when, from kq's log lines.
#[derive(Debug, Default)]
struct Ownership {
    /// Per partition, (member, from, until) with RFC 3339 times; `until` is "~" (after any
    /// time) while the member still held it when it stopped.
    spans: BTreeMap<i64, Vec<(usize, String, String)>>,
}

/// What a fleet's members did.
struct Record {
    handled: Vec<Handled>,
    ownership: Ownership,
    /// Warnings and errors kq logged, with their member.
    trouble: Vec<(usize, String)>,
    /// Commits refused and sent again, with their member.
    retried: Vec<(usize, String)>,
    /// The watermarks members committed as they released partitions:
    /// (member, when, partition, offset).
    releases: Vec<(usize, String, i64, i64)>,
}

impl Record {
    fn read(printed: &[(usize, String)]) -> Record {
        let mut handled = Vec::new();
        let mut ownership = Ownership::default();
        let mut open: HashMap<(usize, i64), String> = HashMap::new();
        let mut trouble = Vec::new();
        let mut retried = Vec::new();
        let mut releases = Vec::new();
        for (member, line) in printed {
            if let Some(h) = Handled::parse(*member, line) {
                handled.push(h);
                continue;
            }
            let Ok(logged) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let at = logged["timestamp"].as_str().unwrap_or_default().to_owned();
            let message = logged["message"].as_str().unwrap_or_default();
            if matches!(logged["level"].as_str(), Some("WARN" | "ERROR")) {
                trouble.push((*member, line.clone()));
            }
            if message.starts_with("commit refused") {
                retried.push((*member, line.clone()));
            }
            let partitions = || -> Vec<i64> {
                let list = logged["partitions"].as_str().unwrap_or("[]");
                serde_json::from_str(list).unwrap_or_default()
            };
            match message {
                "partitions assigned" => {
                    for p in partitions() {
                        open.insert((*member, p), at.clone());
                    }
                }
                "partitions released" | "partitions lost" => {
                    let committed = logged["committed"].as_str().unwrap_or_default();
                    for (p, offset) in pairs(committed) {
                        releases.push((*member, at.clone(), p, offset));
                    }
                    for p in partitions() {
                        if let Some(from) = open.remove(&(*member, p)) {
                            ownership
                                .spans
                                .entry(p)
                                .or_default()
                                .push((*member, from, at.clone()));
                        }
                    }
                }
                "consumer stopped" => {
                    let held: Vec<i64> = open
                        .keys()
                        .filter(|(m, _)| m == member)
                        .map(|&(_, p)| p)
                        .collect();
                    for p in held {
                        let from = open.remove(&(*member, p)).unwrap_or_default();
                        ownership
                            .spans
                            .entry(p)
                            .or_default()
                            .push((*member, from, at.clone()));
                    }
                }
                _ => {}
            }
        }
        for ((member, p), from) in open {
            ownership
                .spans
                .entry(p)
                .or_default()
                .push((member, from, "~".into()));
        }
        handled.sort_by(|a, b| a.at.cmp(&b.at));
        Record {
            handled,
            ownership,
            trouble,
            retried,
            releases,
        }
    }

    fn distinct(&self) -> usize {
        self.handled
            .iter()
            .map(|h| &h.value)
            .collect::<HashSet<_>>()
            .len()
    }

    fn duplicates(&self) -> usize {
        self.handled.len() - self.distinct()
    }

    /// Messages first handled after a later message of their key.
    fn order_breaks(&self) -> Vec<String> {
        let mut newest: HashMap<&str, usize> = HashMap::new();
        let mut seen = HashSet::new();
        let mut breaks = Vec::new();
        for h in &self.handled {
            if !seen.insert(&h.value) {
                continue;
            }
            let seq = h.seq();
            if let Some(&previous) = newest.get(h.key.as_str()) {
                if seq < previous {
                    breaks.push(format!(
                        "member {} first handled {} at {} after {}:{previous}",
                        h.member, h.value, h.at, h.key
                    ));
                }
            }
            let newest = newest.entry(&h.key).or_insert(seq);
            *newest = (*newest).max(seq);
        }
        breaks
    }

    /// Messages handled again although the member that first handled them released their
    /// partition with a commit past them: a commit that went backwards, or never landed.
    /// Those past the commit are the re-deliveries a move is allowed: they finished out of
    /// order beyond the partition's first unfinished message.
    fn redelivered_below_the_commit(&self) -> (Vec<String>, usize) {
        let mut first: HashMap<&str, &Handled> = HashMap::new();
        let mut faults = Vec::new();
        let mut past_the_commit = 0;
        for h in &self.handled {
            let Some(earlier) = first.get(h.value.as_str()) else {
                first.insert(&h.value, h);
                continue;
            };
            let release = self.releases.iter().find(|(m, at, p, _)| {
                *m == earlier.member && *p == earlier.partition && *at >= earlier.at
            });
            if let Some((_, at, _, committed)) = release {
                if earlier.offset >= *committed {
                    past_the_commit += 1;
                } else {
                    faults.push(format!(
                        "{} (partition {} offset {}) handled by member {} at {}, released at {} with {committed}, handled again by member {} at {}",
                        h.value, h.partition, h.offset, earlier.member, earlier.at, at, h.member, h.at
                    ));
                }
            }
        }
        (faults, past_the_commit)
    }

    /// Two members owning one partition at once, or a member handling a partition outside
    /// its ownership.
    fn ownership_faults(&self) -> Vec<String> {
        let mut faults = Vec::new();
        for (partition, spans) in &self.ownership.spans {
            for (i, a) in spans.iter().enumerate() {
                for b in &spans[i + 1..] {
                    if a.0 != b.0 && a.1 < b.2 && b.1 < a.2 {
                        faults.push(format!(
                            "partition {partition}: member {} owned it from {} to {} and member {} from {} to {}",
                            a.0, a.1, a.2, b.0, b.1, b.2
                        ));
                    }
                }
            }
        }
        for h in &self.handled {
            let owned = self.ownership.spans.get(&h.partition).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|(m, from, until)| *m == h.member && *from <= h.at && h.at <= *until)
            });
            if !owned {
                faults.push(format!(
                    "member {} handled partition {} offset {} at {} without owning it",
                    h.member, h.partition, h.offset, h.at
                ));
            }
        }
        faults
    }

    /// Prints what happened and checks the promises every test holds the service to.
    fn check(&self, name: &str, pushed: usize, duplicates_allowed: usize) {
        let per_member = self.handled.iter().fold(BTreeMap::new(), |mut counts, h| {
            *counts.entry(h.member).or_insert(0) += 1;
            counts
        });
        eprintln!(
            "{name}: {} pushed, {} handled ({per_member:?} by member), {} distinct, {} duplicates",
            pushed,
            self.handled.len(),
            self.distinct(),
            self.duplicates()
        );
        for (member, line) in self.trouble.iter().chain(&self.retried) {
            eprintln!("{name}: member {member} logged: {line}");
        }
        assert_eq!(self.distinct(), pushed, "{name}: every message handled");
        // No commit refused and given up on, no periodic commit refused, no partition lost.
        let commit_trouble: Vec<_> = self
            .trouble
            .iter()
            .filter(|(_, line)| line.contains("commit") || line.contains("partitions lost"))
            .collect();
        assert!(commit_trouble.is_empty(), "{name}: {commit_trouble:#?}");
        let breaks = self.order_breaks();
        assert!(
            breaks.is_empty(),
            "{name}: per-key order broken: {breaks:#?}"
        );
        let faults = self.ownership_faults();
        assert!(faults.is_empty(), "{name}: {faults:#?}");
        let (below, past) = self.redelivered_below_the_commit();
        eprintln!("{name}: {past} re-deliveries past their previous owner's released commit");
        assert!(below.is_empty(), "{name}: {below:#?}");
        assert!(
            self.duplicates() <= duplicates_allowed,
            "{name}: {} duplicates, at most {duplicates_allowed} expected",
            self.duplicates()
        );
    }
}

/// The `(partition, offset)` pairs of a logged list such as `[(4, 96), (5, 48)]`.
fn pairs(list: &str) -> Vec<(i64, i64)> {
    list.split('(')
        .filter_map(|pair| {
            let (partition, offset) = pair.split_once(',')?;
            let offset = offset.trim().split(')').next()?;
            Some((partition.trim().parse().ok()?, offset.parse().ok()?))
        })
        .collect()
}

/// A fleet on a fresh topic of `partitions`, with `keys` × `rounds` messages flowing into it
/// over `time` (see `push_while`): the pushing thread returns how many it pushed.
fn flowing(
    name: &str,
    brokers: String,
    partitions: i32,
    (keys, rounds, time): (usize, usize, Duration),
) -> (Fleet, JoinHandle<usize>) {
    let fleet = Fleet::new(name, brokers, partitions);
    let pushing = push_while(&fleet.brokers, &fleet.topic, keys, rounds, time);
    (fleet, pushing)
}

/// The rolling deploy a Kubernetes Deployment does: three members join 6 s apart, then the
/// first two leave by SIGTERM, while 40,000 keyed messages flow and handlers take 0 to 6 ms.
#[test]
fn a_rolling_deploy_loses_nothing_and_redelivers_next_to_nothing() {
    let Some(brokers) = real_broker() else {
        return;
    };
    const WORK: Duration = Duration::from_millis(6);
    let flow = (64, 625, Duration::from_secs(30));
    let (mut fleet, pushing) = flowing("rolling", brokers, 8, flow);
    let first = fleet.join(WORK);
    fleet.collect(Duration::from_secs(6));
    let second = fleet.join(WORK);
    fleet.collect(Duration::from_secs(6));
    fleet.join(WORK);
    fleet.collect(Duration::from_secs(6));
    fleet.leave(first);
    fleet.collect(Duration::from_secs(6));
    fleet.leave(second);
    let pushed = pushing.join().unwrap();
    fleet.wait_for_all(pushed, Duration::from_secs(60));
    assert_eq!(fleet.stopped(first).code(), Some(0));
    assert_eq!(fleet.stopped(second).code(), Some(0));
    let record = fleet.finish();
    // Only what ran out of order past a partition's first unfinished message when it moved
    // comes again: well under 1%.
    record.check("rolling deploy", pushed, pushed / 100);
}

/// Each new member starts as the previous one is told to stop, four times over, while
/// messages flow: every leave meets a join.
#[test]
fn members_leaving_while_others_join_lose_nothing() {
    let Some(brokers) = real_broker() else {
        return;
    };
    const WORK: Duration = Duration::from_millis(4);
    let flow = (32, 500, Duration::from_secs(20));
    let (mut fleet, pushing) = flowing("relay", brokers, 6, flow);
    let mut current = fleet.join(WORK);
    fleet.collect(Duration::from_secs(4));
    for _ in 0..4 {
        let next = fleet.join(WORK);
        fleet.leave(current);
        fleet.collect(Duration::from_secs(4));
        assert_eq!(fleet.stopped(current).code(), Some(0));
        current = next;
    }
    let pushed = pushing.join().unwrap();
    fleet.wait_for_all(pushed, Duration::from_secs(60));
    let record = fleet.finish();
    record.check("relay", pushed, pushed / 100);
}

/// A member told to stop while the group is in the middle of a rebalance: its final commit
/// meets a group that is not ready for it. Member 1's handlers take up to a second, so that
/// when a third member joins, member 1 holds the group's next rebalance open while it drains
/// the partitions it gives up; member 0, quick, has rejoined by then and waits for the
/// rebalance to complete, still owning partitions, when it is told to stop. Its final commit
/// must still land, so that nothing it handled is handled again.
#[test]
fn a_final_commit_that_meets_a_rebalance_still_lands() {
    let Some(brokers) = real_broker() else {
        return;
    };
    let flow = (12, 40, Duration::from_secs(16));
    let (mut fleet, pushing) = flowing("final-commit", brokers, 6, flow);
    let quick = fleet.join(Duration::from_millis(5));
    fleet.collect(Duration::from_secs(3));
    let slow = fleet.join(Duration::from_secs(1));
    assert!(
        fleet.wait_for(slow, "partitions assigned", Duration::from_secs(30)),
        "the slow member got no partitions"
    );
    fleet.collect(Duration::from_secs(3));
    fleet.join(Duration::from_millis(5));
    // The slow member's drain of what it gives up holds the group's next rebalance open.
    assert!(
        fleet.wait_for(slow, "partitions revoked", Duration::from_secs(30)),
        "the third member's join revoked nothing from the slow one"
    );
    std::thread::sleep(Duration::from_millis(300));
    fleet.leave(quick);
    assert_eq!(fleet.stopped(quick).code(), Some(0));
    let pushed = pushing.join().unwrap();
    fleet.wait_for_all(pushed, Duration::from_secs(90));
    let record = fleet.finish();
    record.check("final commit in a rebalance", pushed, pushed / 100);
    eprintln!(
        "final commit in a rebalance: the quick member's commits refused and sent again: {}",
        record.retried.iter().filter(|(m, _)| *m == quick).count()
    );
    // What the slow member was running when a partition moved may come again; nothing of the
    // quick member's.
    let quick_values: HashSet<&String> = record
        .handled
        .iter()
        .filter(|h| h.member == quick)
        .map(|h| &h.value)
        .collect();
    let again: Vec<&Handled> = record
        .handled
        .iter()
        .filter(|h| h.member != quick && quick_values.contains(&h.value))
        .collect();
    assert!(
        again.is_empty(),
        "handled again after the quick member stopped: {again:#?}"
    );
}

/// The flow of the hold tests: 64 keys, 940 messages each, on 8 partitions.
const HOLD_FLOW: (usize, usize, Duration) = (64, 940, Duration::from_secs(4));
/// The key whose downstream is down in the hold tests.
const DOWN: &str = "k7";
/// The consumer block of the hold tests: a failing message is retried until it succeeds, and
/// a killed member's partitions move on within seconds.
const HOLDING: &str =
    "  ForceCommit: false\n  Retry: {Attempts: 3, Backoff: 100ms, MaxBackoff: 1s}\n  SessionTimeout: 6s\n";

impl Record {
    /// Messages of keys other than `key`, distinct, and the time from the first handled
    /// message to the last of them.
    fn others(&self, key: &str) -> (usize, Duration) {
        let others: Vec<&Handled> = self.handled.iter().filter(|h| h.key != key).collect();
        let distinct = others
            .iter()
            .map(|h| &h.value)
            .collect::<HashSet<_>>()
            .len();
        let time = |at: &str| -> f64 {
            // HH:MM:SS.ffffff of an RFC 3339 time: the tests run well within a day.
            let clock = &at[11..at.len() - 1];
            let mut parts = clock.split(':');
            let h: f64 = parts.next().unwrap().parse().unwrap();
            let m: f64 = parts.next().unwrap().parse().unwrap();
            let s: f64 = parts.next().unwrap().parse().unwrap();
            h * 3600.0 + m * 60.0 + s
        };
        let span = match (self.handled.first(), others.last()) {
            (Some(first), Some(last)) => time(&last.at) - time(&first.at),
            _ => 0.0,
        };
        (distinct, Duration::from_secs_f64(span.max(0.0)))
    }

    /// Checks order and completeness, and that what `before` finished was handled again at
    /// most `allowed` times by the others.
    fn check_redone(&self, name: &str, pushed: usize, before: usize, allowed_share: f64) {
        assert_eq!(self.distinct(), pushed, "{name}: every message handled");
        let breaks = self.order_breaks();
        assert!(
            breaks.is_empty(),
            "{name}: per-key order broken: {breaks:#?}"
        );
        let finished: HashSet<&String> = self
            .handled
            .iter()
            .filter(|h| h.member == before)
            .map(|h| &h.value)
            .collect();
        let redone = self
            .handled
            .iter()
            .filter(|h| h.member != before && finished.contains(&h.value))
            .count();
        let share = redone as f64 / finished.len().max(1) as f64;
        eprintln!(
            "{name}: member {before} finished {}, {redone} of them handled again ({:.2}%)",
            finished.len(),
            share * 100.0
        );
        assert!(
            share <= allowed_share,
            "{name}: {redone} of {} finished messages handled again",
            finished.len()
        );
    }
}

/// One key's downstream is down while a backlog is read: the other keys' messages are
/// handled at the pace of a member without the outage, the key's wait; the member is killed
/// during the hold, and its successor handles the held key's messages, in order, and little of
/// what was finished: the commit's offset map says what.
#[test]
fn a_key_down_holds_only_itself_and_a_kill_redoes_next_to_nothing() {
    let Some(brokers) = real_broker() else {
        return;
    };
    // The pace without the outage, on a topic of its own.
    let (mut clear, pushing) = flowing("hold-clear", brokers.clone(), 8, HOLD_FLOW);
    let pushed = pushing.join().unwrap();
    clear.join_with(Duration::ZERO, "", HOLDING);
    assert!(clear.wait_for_all(pushed, Duration::from_secs(90)));
    let (_, unimpeded) = clear.finish().others(DOWN);

    let (mut fleet, pushing) = flowing("hold", brokers, 8, HOLD_FLOW);
    let pushed = pushing.join().unwrap();
    let down = format!("DemoDownKey: {DOWN}\nDemoDownFor: 300s\n");
    let first = fleet.join_with(Duration::ZERO, &down, HOLDING);
    let others = pushed - pushed / HOLD_FLOW.0;
    assert!(
        fleet.wait_for_others(DOWN, others, Duration::from_secs(90)),
        "the other keys' messages were not all handled during the outage"
    );
    // The offset maps of the last ones committed (CommitInterval 1s).
    fleet.collect(Duration::from_secs(3));
    fleet.kill(first);
    let during = Record::read(&fleet.printed);
    let (handled, took) = during.others(DOWN);
    let pace = |n: usize, time: Duration| n as f64 / time.as_secs_f64().max(1e-3);
    eprintln!(
        "one key down: the other keys' {handled} messages in {took:?} ({:.0}/s); without the outage {others} in {unimpeded:?} ({:.0}/s)",
        pace(handled, took),
        pace(others, unimpeded)
    );
    assert_eq!(handled, others);
    assert!(
        during.handled.iter().all(|h| h.key != DOWN),
        "the key that was down was handled"
    );
    // A successor with the downstream back.
    fleet.join_with(Duration::ZERO, "", HOLDING);
    assert!(fleet.wait_for_all(pushed, Duration::from_secs(90)));
    let record = fleet.finish();
    record.check_redone("kill during a hold", pushed, first, 0.02);
}

/// A second member joins while one key is held and the first member leaves by SIGTERM: the
/// partitions move with the offset maps of their commits, and the second member skips what
/// the first finished.
#[test]
fn a_rebalance_during_a_hold_hands_over_what_was_finished() {
    let Some(brokers) = real_broker() else {
        return;
    };
    let (mut fleet, pushing) = flowing("hold-move", brokers, 8, HOLD_FLOW);
    let pushed = pushing.join().unwrap();
    let down = format!("DemoDownKey: {DOWN}\nDemoDownFor: 300s\n");
    let first = fleet.join_with(Duration::ZERO, &down, HOLDING);
    let others = pushed - pushed / HOLD_FLOW.0;
    assert!(fleet.wait_for_others(DOWN, others, Duration::from_secs(90)));
    fleet.collect(Duration::from_secs(2));
    let second = fleet.join_with(Duration::ZERO, "", HOLDING);
    assert!(
        fleet.wait_for(second, "partitions assigned", Duration::from_secs(30)),
        "the second member got no partitions"
    );
    fleet.leave(first);
    assert_eq!(fleet.stopped(first).code(), Some(0));
    assert!(fleet.wait_for_all(pushed, Duration::from_secs(90)));
    let record = fleet.finish();
    record.check_redone("rebalance during a hold", pushed, first, 0.02);
}

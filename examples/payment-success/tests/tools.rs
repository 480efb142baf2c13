//! The service binary's tools on a real broker: `--reset-offsets` and `--redrive`. Real broker
//! only: the embedded broker lives inside one process.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

const LIMIT: Duration = Duration::from_secs(60);

/// A config for this test's topic and group on `brokers`, with `extra` top-level keys and
/// `consumer` keys in the consumer's block.
fn config(brokers: &str, topic: &str, group: &str, extra: &str, consumer: &str) -> String {
    format!(
        "Name: mq\nHost: 0.0.0.0\nPort: 8888\nLog: {{Encoding: plain}}\n{extra}\
         KqPusherConf:\n  Brokers: [{brokers}]\n  Topic: {topic}\n\
         KqConsumerConf:\n  Name: kqConsumer\n  Brokers: [{brokers}]\n  Group: {group}\n  \
         Topic: {topic}\n  Offset: first\n  CommitInterval: 100ms\n  MaxWait: 10ms\n  \
         SessionTimeout: 6s\n{consumer}"
    )
}

fn create_topics(brokers: &str, topics: &[&str], partitions: i32) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for topic in topics {
        runtime
            .block_on(kq::create_topic(&[brokers.to_owned()], topic, partitions))
            .expect("create topic");
    }
}

/// Runs the binary with `-f file` and `args` to its end.
fn tool(file: &Path, args: &[&str]) -> Output {
    Command::new(SERVICE)
        .arg("-f")
        .arg(file)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A tool's run that must succeed: its stdout.
fn tool_ok(file: &Path, args: &[&str]) -> String {
    let output = tool(file, args);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    stdout(&output)
}

/// The `partition P: OLD -> NEW` lines of a reset, as (partition, old, new); `none` is -1.
fn moves(printed: &str) -> Vec<(i32, i64, i64)> {
    printed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("partition "))
        .map(|line| {
            let (partition, rest) = line.split_once(": ").unwrap();
            let (old, new) = rest.split_once(" -> ").unwrap();
            (
                partition.parse().unwrap(),
                old.parse().unwrap_or(-1),
                new.parse().unwrap(),
            )
        })
        .collect()
}

/// Runs the service until it has handled `payments` payments and, if given, printed a line
/// with `seen` in it, then stops it; returns the keys handled.
fn handle(file: &Path, payments: usize, seen: Option<&str>) -> Vec<String> {
    let (tx, lines) = mpsc::channel();
    let (mut child, reader) = spawn_service(Some(file), Some("info"), (), tx);
    let deadline = Instant::now() + LIMIT;
    let mut keys = Vec::new();
    let mut waiting_for = seen;
    let take = |line: &str, keys: &mut Vec<String>, waiting_for: &mut Option<&str>| {
        keys.extend(handled_key(line));
        if waiting_for.is_some_and(|seen| line.contains(seen)) {
            *waiting_for = None;
        }
    };
    while (keys.len() < payments || waiting_for.is_some()) && Instant::now() < deadline {
        if let Ok(((), line)) = lines.recv_timeout(Duration::from_millis(200)) {
            take(&line, &mut keys, &mut waiting_for);
        }
    }
    sigterm(&mut child);
    assert_eq!(stopped(&mut child).code(), Some(0));
    reader.join().unwrap();
    for ((), line) in lines.try_iter() {
        take(&line, &mut keys, &mut waiting_for);
    }
    assert!(
        keys.len() >= payments && waiting_for.is_none(),
        "handled only {keys:?}, and waiting for {waiting_for:?}, after {LIMIT:?}"
    );
    keys
}

fn handled_key(line: &str) -> Option<String> {
    let at = line.find("PaymentSuccess key: ")?;
    let rest = &line[at + "PaymentSuccess key: ".len()..];
    Some(rest.split(", val: ").next()?.to_owned())
}

/// `millis` since the epoch as an RFC 3339 time in UTC.
fn rfc3339(millis: u128) -> String {
    let secs = (millis / 1000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        millis % 1000
    )
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn the_time_format_of_the_tests_is_rfc_3339() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_796_117_400_250), "2026-12-01T09:30:00.250Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
}

/// An idle group is moved to the first offsets, to a time and to the end; each reset prints
/// what it moved from, which the next dry run shows committed, and the service then consumes
/// from where it was put.
#[test]
fn reset_offsets_moves_an_idle_group_to_first_a_time_and_last() {
    let Some(brokers) = real_broker() else {
        return;
    };
    let topic = unique("reset");
    let group = unique("reset-group");
    create_topics(&brokers, &[&topic], 2);
    let scratch = Scratch::new(&topic);
    let file = scratch.file(
        "mq.yaml",
        &config(&brokers, &topic, &group, "DemoPayments: 10\n", ""),
    );
    // Ten payments before the time and ten after it, each run committing all it handled.
    handle(&file, 10, None);
    std::thread::sleep(Duration::from_millis(1100));
    let time = rfc3339(now_millis());
    std::thread::sleep(Duration::from_millis(1100));
    handle(&file, 10, None);

    let printed = tool_ok(&file, &["--reset-offsets", "first", "--dry-run"]);
    assert!(
        printed.starts_with(&format!(
            "consumer payment_success: group {group}, topic {topic}, reset to first (dry run)\n"
        )),
        "{printed}"
    );
    assert!(
        printed.ends_with("dry run: nothing committed\n"),
        "{printed}"
    );
    let at_end = moves(&printed);
    assert_eq!(at_end.len(), 2, "{printed}");
    assert_eq!(
        at_end.iter().map(|(_, old, _)| old).sum::<i64>(),
        20,
        "{printed}"
    );
    assert!(at_end.iter().all(|(_, _, new)| *new == 0), "{printed}");

    let printed = tool_ok(&file, &["--reset-offsets", &time]);
    assert!(printed.ends_with("committed\n"), "{printed}");
    let at_time = moves(&printed);
    let after_time: i64 = at_end
        .iter()
        .zip(&at_time)
        .map(|((_, end, _), (_, old, new))| {
            assert_eq!(old, end, "{printed}");
            end - new
        })
        .sum();
    assert_eq!(after_time, 10, "the payments after {time}: {printed}");

    // The service takes up from the time: the second ten again, and nothing else.
    let quiet = scratch.file("quiet.yaml", &config(&brokers, &topic, &group, "", ""));
    let keys = handle(&quiet, 10, None);
    assert_eq!(keys.len(), 10, "{keys:?}");

    let printed = tool_ok(&file, &["--reset-offsets", "first"]);
    assert!(
        moves(&printed).iter().all(|(_, _, new)| *new == 0),
        "{printed}"
    );
    let printed = tool_ok(
        &file,
        &["--reset-offsets", "last", "--consumer", "payment_success"],
    );
    let to_last = moves(&printed);
    assert!(
        to_last.iter().all(|(_, old, _)| *old == 0),
        "first was committed: {printed}"
    );
    assert_eq!(
        to_last.iter().map(|(_, _, new)| new).sum::<i64>(),
        20,
        "{printed}"
    );
    let printed = tool_ok(&file, &["--reset-offsets", "last", "--dry-run"]);
    assert!(
        moves(&printed)
            .iter()
            .zip(&to_last)
            .all(|(now, last)| now.1 == last.2),
        "last was committed: {printed}"
    );
}

/// While the service runs, a reset is refused with exit code 2, naming the group.
#[test]
fn reset_offsets_refuses_a_group_with_members() {
    let Some(brokers) = real_broker() else {
        return;
    };
    let topic = unique("refuse");
    let group = unique("refuse-group");
    create_topics(&brokers, &[&topic], 2);
    let scratch = Scratch::new(&topic);
    let file = scratch.file(
        "mq.yaml",
        &config(&brokers, &topic, &group, "DemoPayments: 1\n", ""),
    );
    let (tx, lines) = mpsc::channel();
    let (mut child, reader) = spawn_service(Some(&file), Some("info"), (), tx);
    let deadline = Instant::now() + LIMIT;
    // Handling a payment means the member has joined and owns partitions.
    while Instant::now() < deadline {
        if let Ok(((), line)) = lines.recv_timeout(Duration::from_millis(200)) {
            if handled_key(&line).is_some() {
                break;
            }
        }
    }
    let refused = tool(&file, &["--reset-offsets", "first"]);
    sigterm(&mut child);
    stopped(&mut child);
    reader.join().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: group {group} (consumer payment_success) has 1 active member(s)"
        )),
        "{stderr}"
    );
    assert!(stdout(&refused).is_empty(), "nothing printed: {refused:?}");

    // Once the service has stopped, the same reset goes through.
    let printed = tool_ok(&file, &["--reset-offsets", "first"]);
    assert!(printed.ends_with("committed\n"), "{printed}");
}

/// A payment whose downstream was down is dead-lettered; once it is back, a redrive pushes
/// the dead letter back to its topic and the service handles it. A message in the dead-letter
/// topic without kq's headers is reported and left alone, and a second redrive has nothing
/// left to do.
#[test]
fn redriven_dead_letters_are_handled_once_their_cause_is_fixed() {
    let Some(brokers) = real_broker() else {
        return;
    };
    let topic = unique("redrive");
    let dead_letters = format!("{topic}-dlq");
    let group = unique("redrive-group");
    create_topics(&brokers, &[&topic, &dead_letters], 2);
    let scratch = Scratch::new(&topic);
    let policy = format!(
        "  DeadLetterTopic: {dead_letters}\n  Retry:\n    Attempts: 2\n    Backoff: 10ms\n"
    );
    let down = scratch.file(
        "down.yaml",
        &config(
            &brokers,
            &topic,
            &group,
            "DemoPayments: 6\nDemoDownKey: order-3\nDemoDownFor: 1h\n",
            &policy,
        ),
    );
    let keys = handle(&down, 5, Some("message dead-lettered"));
    assert!(!keys.contains(&"order-3".to_owned()), "{keys:?}");
    // Something else wrote to the dead-letter topic: no kq headers, nowhere to go.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pusher = kq::Pusher::new([brokers.clone()], &dead_letters).unwrap();
        pusher.kpush("stray", "not a dead letter").await.unwrap();
        pusher.close().await.unwrap();
    });

    // The dead letter is written before its offset is committed, so before the stop ends.
    let printed = tool_ok(&down, &["--redrive", &dead_letters, "--dry-run"]);
    assert!(
        printed.starts_with(&format!(
            "redrive of {dead_letters} with group {group}.redrive (dry run)\n"
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(" -> {topic}, key \"order-3\"\n")),
        "{printed}"
    );
    assert!(
        printed.ends_with(&format!(
            "1 message(s) to push back, 1 skipped (without a kq.source.topic header)\n  {topic}: 1\n"
        )),
        "{printed}"
    );

    let printed = tool_ok(&down, &["--redrive", &dead_letters]);
    assert!(
        printed.ends_with(&format!(
            "1 message(s) pushed back, 1 skipped (without a kq.source.topic header)\n  {topic}: 1\n"
        )),
        "{printed}"
    );
    let printed = tool_ok(&down, &["--redrive", &dead_letters]);
    assert!(
        printed
            .ends_with("0 message(s) pushed back, 0 skipped (without a kq.source.topic header)\n"),
        "committed as it went: {printed}"
    );

    // The downstream is back: the redriven payment succeeds.
    let fixed = scratch.file("fixed.yaml", &config(&brokers, &topic, &group, "", &policy));
    let keys = handle(&fixed, 1, Some("PaymentSuccess key: order-3"));
    assert_eq!(keys, ["order-3"]);
}

/// A redrive killed after its first commit, then run again: every dead letter is back in its
/// topic, with its own headers and a redrive count, and none of kq's.
#[test]
fn a_redrive_killed_midway_loses_nothing() {
    let Some(brokers) = real_broker() else {
        return;
    };
    const LETTERS: usize = 20_000;
    let topic = unique("rekill");
    let dead_letters = format!("{topic}-dlq");
    create_topics(&brokers, &[&topic, &dead_letters], 4);
    let scratch = Scratch::new(&topic);
    let file = scratch.file(
        "mq.yaml",
        &config(
            &brokers,
            &topic,
            &unique("rekill-group"),
            "",
            &format!("  DeadLetterTopic: {dead_letters}\n"),
        ),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conf = kq::PusherConf::new([brokers.clone()], &dead_letters);
        conf.flush_interval = Duration::from_millis(5);
        let pusher = kq::Pusher::from_conf(&conf).unwrap();
        for n in 0..LETTERS {
            let (key, value) = (format!("k{}", n % 50), format!("v{n}"));
            pusher
                .message(&value)
                .key(&key)
                .header("tenant", "acme")
                .header(kq::dead_letter_headers::TOPIC, &topic)
                .header(kq::dead_letter_headers::ERROR, "down")
                .send()
                .await
                .unwrap();
        }
        pusher.close().await.unwrap();
    });

    let mut child = Command::new(SERVICE)
        .arg("-f")
        .arg(&file)
        .args(["--redrive", &dead_letters])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first_run = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let committed = line.starts_with("committed ");
        first_run.push(line);
        if committed {
            break;
        }
    }
    sigkill(&mut child);
    assert!(
        first_run
            .last()
            .is_some_and(|l| l.starts_with("committed "))
            && !first_run.iter().any(|l| l.contains("pushed back")),
        "killed after a commit, before the end: {first_run:?}"
    );

    let printed = tool_ok(&file, &["--redrive", &dead_letters]);
    let pushed: usize = printed
        .lines()
        .find_map(|l| {
            l.strip_suffix(" message(s) pushed back, 0 skipped (without a kq.source.topic header)")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(pushed < LETTERS, "the first run committed some: {printed}");

    // Everything is in the topic, some of it twice.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("rekill-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut total = 0;
    for partition in 0..4 {
        let (_, high) = reader
            .fetch_watermarks(&topic, partition, Duration::from_secs(10))
            .unwrap();
        total += high;
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&assignment).unwrap();
    let mut values = BTreeSet::new();
    let mut read = 0;
    let deadline = Instant::now() + LIMIT;
    while read < total && Instant::now() < deadline {
        let Some(record) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let record = record.unwrap();
        read += 1;
        let headers: Vec<(String, String)> = record
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            headers,
            [
                ("tenant".to_owned(), "acme".to_owned()),
                ("kq.redrives".to_owned(), "1".to_owned())
            ]
        );
        values.insert(String::from_utf8_lossy(record.payload().unwrap()).into_owned());
    }
    assert_eq!(read, total, "read the topic to its end");
    assert_eq!(values.len(), LETTERS, "every dead letter pushed back");
    assert!(total as usize >= LETTERS);
}

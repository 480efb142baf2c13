//! The service binary as a user runs it: the seed's service pushes and consumes its
//! payments and stops cleanly on SIGTERM; every kind of bad config is one line on stderr
//! naming the file and the key, with exit code 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{package_dir, real_broker, sigterm, spawn_service, stopped, Scratch, SERVICE};

#[test]
fn the_seed_service_consumes_its_payments_and_stops_on_sigterm() {
    let (lines_tx, lines) = mpsc::channel();
    let (mut child, reader) = spawn_service(None, Some("info"), (), lines_tx);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handled = Vec::new();
    while handled.len() < 5 && Instant::now() < deadline {
        if let Ok(((), line)) = lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(at) = line.find("PaymentSuccess key: ") {
                handled.push(line[at..].to_owned());
            }
        }
    }
    sigterm(&mut child);
    handled.sort();
    assert_eq!(handled.len(), 5, "{handled:#?}");
    for (n, line) in (1..=5).zip(&handled) {
        assert!(
            line.starts_with(&format!("PaymentSuccess key: order-{n}, val: {{")),
            "{line}"
        );
    }

    stops_gracefully(&mut child, reader, &lines, "consumer stopped");
}

/// SIGTERM while the service is still starting (its runtime up, its state and consumers not
/// yet): the signal is not the default action, which kills the process, but a graceful stop
/// once it has started.
#[test]
fn a_sigterm_while_starting_is_a_graceful_stop() {
    let (_scratch, file) = seed_with(
        "starting",
        "Port: 8888\n",
        "Port: 8888\nDevServer: {Enabled: true, Host: 127.0.0.1, Port: 0}\n",
    );
    let (lines_tx, lines) = mpsc::channel();
    let (mut child, reader) = spawn_service(Some(&file), Some("info"), (), lines_tx);
    // Logged once signals are caught and before the state is built.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(((), line)) if line.contains("serving metrics and health") => break,
            Ok(((), line)) => seen.push(line),
            Err(_) => assert!(Instant::now() < deadline, "never started: {seen:#?}"),
        }
    }
    sigterm(&mut child);
    stops_gracefully(&mut child, reader, &lines, "signal received");
}

/// Waits for a service sent SIGTERM: it exits with 0, having printed `expected` since the
/// lines last read.
fn stops_gracefully(
    child: &mut Child,
    reader: JoinHandle<()>,
    lines: &mpsc::Receiver<((), String)>,
    expected: &str,
) {
    let status = stopped(child);
    assert_eq!(status.code(), Some(0), "a graceful stop exits with 0");
    // Every line is read once the reader has seen the output close.
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().map(|((), line)| line).collect();
    assert!(rest.iter().any(|l| l.contains(expected)), "{rest:#?}");
}

fn run_with(file: &Path) -> Output {
    Command::new(SERVICE)
        .arg("-f")
        .arg(file)
        .current_dir(package_dir())
        .output()
        .expect("run the service")
}

/// Writes `etc/mq.yaml` with one change into a scratch directory, which goes when the first
/// half of the pair drops.
fn seed_with(name: &str, from: &str, to: &str) -> (Scratch, PathBuf) {
    let seed = std::fs::read_to_string(package_dir().join("etc/mq.yaml")).unwrap();
    assert!(seed.contains(from), "{from:?} is not in the seed");
    let scratch = Scratch::new(&format!("cli-{name}"));
    let path = scratch.file("mq.yaml", &seed.replace(from, to));
    (scratch, path)
}

/// Exit code 2 and one line on stderr that names the file and every given fragment.
fn assert_config_error(output: &Output, file: &Path, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(&file.display().to_string()),
        "names the file: {stderr}"
    );
    for fragment in fragments {
        assert!(
            lines[0].contains(fragment),
            "mentions {fragment:?}: {stderr}"
        );
    }
}

#[test]
fn a_missing_file_exits_with_2() {
    let file = Path::new("etc/missing.yaml");
    assert_config_error(&run_with(file), file, &["cannot read"]);
}

#[test]
fn malformed_yaml_exits_with_2() {
    let (_scratch, file) = seed_with("malformed", "Offset: first", "Offset: [first");
    assert_config_error(&run_with(&file), &file, &["cannot parse"]);
}

#[test]
fn a_wrong_type_exits_with_2_naming_the_key() {
    let (_scratch, file) = seed_with("wrong-type", "Processors: 8", "Processors: eight");
    assert_config_error(&run_with(&file), &file, &["KqConsumerConf.Processors"]);
}

#[test]
fn a_wrong_value_exits_with_2_naming_the_key() {
    let (_scratch, file) = seed_with("wrong-value", "Offset: first", "Offset: earliest");
    assert_config_error(
        &run_with(&file),
        &file,
        &["KqConsumerConf.Offset", "`first`, `last`"],
    );

    let (_scratch, file) = seed_with("zero", "Processors: 8", "Processors: 0");
    assert_config_error(
        &run_with(&file),
        &file,
        &["`KqConsumerConf.Processors` must be at least 1"],
    );
}

#[test]
fn a_missing_block_exits_with_2_naming_it() {
    let (_scratch, file) = seed_with("no-consumer", "KqConsumerConf:", "OtherConf:");
    assert_config_error(&run_with(&file), &file, &["KqConsumerConf"]);
}

#[test]
fn help_lists_the_config_flag() {
    let output = Command::new(SERVICE).arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("-f, --file <FILE>") && help.contains("etc/mq.yaml"),
        "{help}"
    );
}

/// A consumer process killed with SIGKILL at random moments while keyed, numbered messages
/// flow, restarted until everything is handled: every message is handled at least once, each
/// key's messages are first handled in order, and the duplicates (re-deliveries of what was
/// in flight or handled after the last commit) are counted and reported. Real broker only:
/// the embedded broker dies with the process.
#[test]
fn killed_consumers_lose_nothing_and_keep_key_order() {
    let Some(brokers) = real_broker() else {
        return;
    };
    const KEYS: usize = 20;
    const PER_KEY: usize = 40;
    let seed = std::process::id() as u64;
    let mut random = seed;
    let mut next_random = move |below: u64| {
        random = random
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (random >> 33) % below
    };
    let id = format!("{seed}-crash");
    let topic = format!("crash-{id}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(kq::create_topic(std::slice::from_ref(&brokers), &topic, 4))
        .expect("create topic");
    let scratch = Scratch::new(&format!("crash-{id}"));
    let file = scratch.file(
        "mq.yaml",
        &format!(
            // Plain log lines: the test reads keys and values from them.
            "Name: mq\nHost: 0.0.0.0\nPort: 8888\nLog: {{Encoding: plain}}\n\
             KqPusherConf:\n  Brokers: [{brokers}]\n  Topic: {topic}\n\
             KqConsumerConf:\n  Name: kqConsumer\n  Brokers: [{brokers}]\n  Group: group-{id}\n  Topic: {topic}\n  Offset: first\n  CommitInterval: 100ms\n  MaxWait: 10ms\n  MinBytes: 1\n  SessionTimeout: 6s\n"
        ),
    );

    // Messages flow while consumers die: a round of one message per key every 1.2 s, in
    // ordinary batches.
    let pushing = {
        let mut conf = kq::PusherConf::new([brokers.clone()], &topic);
        conf.sync_push = false;
        conf.flush_interval = Duration::from_millis(5);
        let pusher = runtime
            .block_on(async { kq::Pusher::from_conf(&conf) })
            .unwrap();
        runtime.spawn(async move {
            for seq in 0..PER_KEY {
                for k in 0..KEYS {
                    pusher
                        .kpush(format!("k{k}"), format!("{k}:{seq}"))
                        .await
                        .unwrap();
                }
                // Spread over the whole test, so that every kill lands while messages flow.
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            pusher.close().await.expect("every push delivered");
        })
    };

    let parse = |line: &str| {
        let at = line.find("PaymentSuccess key: ")?;
        let rest = &line[at + 20..];
        let (key, val) = rest.split_once(", val: ")?;
        Some((key.to_owned(), val.trim().to_owned()))
    };
    // Each run's handled messages, in order.
    let mut runs: Vec<Vec<(String, String)>> = Vec::new();
    let run = || {
        let (tx, rx) = mpsc::channel();
        let (child, reader) = spawn_service(Some(&file), Some("info"), (), tx);
        (child, rx, reader)
    };

    let mut kills = 0;
    for _ in 0..6 {
        // A restarted member gets partitions only once the group has given up on the killed
        // one (SessionTimeout, 6 s): kill after that, at a random moment.
        let kill_after = Duration::from_millis(7000 + next_random(4000));
        let (mut child, rx, reader) = run();
        std::thread::sleep(kill_after);
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        kills += 1;
        reader.join().unwrap();
        runs.push(rx.try_iter().filter_map(|((), l)| parse(&l)).collect());
    }
    runtime.block_on(pushing).unwrap();

    // A last run, left alone until everything is handled.
    let distinct = |runs: &Vec<Vec<(String, String)>>| {
        let mut all: Vec<&String> = runs.iter().flatten().map(|(_, v)| v).collect();
        all.sort();
        all.dedup();
        all.len()
    };
    let (mut child, rx, reader) = run();
    let mut last_run = Vec::new();
    // Stopped only once it has started, even when the killed runs handled everything: the
    // exit status checked below is that of a graceful stop.
    let mut started = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(((), line)) = rx.recv_timeout(Duration::from_millis(100)) {
            started |= line.contains("consumer started");
            if let Some(entry) = parse(&line) {
                last_run.push(entry);
            }
        }
        let mut with_last = runs.clone();
        with_last.push(last_run.clone());
        if started && distinct(&with_last) >= KEYS * PER_KEY {
            break;
        }
    }
    sigterm(&mut child);
    let status = stopped(&mut child);
    reader.join().unwrap();
    last_run.extend(rx.try_iter().filter_map(|((), l)| parse(&l)));
    runs.push(last_run);

    let total: usize = runs.iter().map(Vec::len).sum();
    let handled = distinct(&runs);
    let duplicates = total - handled;
    eprintln!(
        "crash test (seed {seed}): {kills} kills, {} runs handled {:?}, {handled} distinct of {}, {duplicates} duplicates",
        runs.len(),
        runs.iter().map(Vec::len).collect::<Vec<_>>(),
        KEYS * PER_KEY
    );
    assert_eq!(
        handled,
        KEYS * PER_KEY,
        "every message at least once; seed {seed}"
    );
    assert_eq!(status.code(), Some(0));
    // Across all runs, each key's messages are first handled in order.
    let mut newest: std::collections::HashMap<String, usize> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for (key, value) in runs.iter().flatten() {
        let seq: usize = value.split_once(':').unwrap().1.parse().unwrap();
        if seen.insert(value.clone()) {
            if let Some(&previous) = newest.get(key) {
                assert!(
                    seq > previous,
                    "{key}: {seq} first handled after {previous}; seed {seed}"
                );
            }
            newest.insert(key.clone(), seq);
        }
    }
}

#[test]
fn check_validates_and_lists_the_consumers_without_running() {
    let output = Command::new(SERVICE)
        .arg("--check")
        .current_dir(package_dir())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines[0], "etc/mq.yaml: ok, 1 consumer(s)", "{stdout}");
    assert!(
        lines[1].starts_with("payment_success\tconf KqConsumerConf\ttopic payment-success\tgroup kqConsumer\tbrokers embedded\t"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("PaymentSuccess key"),
        "nothing ran: {stdout}"
    );

    // A consumer with a dead-letter topic: where its dead letters go, and the group that
    // `--redrive` reads them with.
    let (_scratch, file) = seed_with(
        "check-dlq",
        "  Processors: 8",
        "  Processors: 8\n  DeadLetterTopic: payment-dlq",
    );
    let output = check(&file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "\tbrokers embedded\tdead letters payment-dlq (redrive group kqConsumer.redrive)\t"
        ),
        "{stdout}"
    );

    // A bad file fails the check as it fails a start.
    let (_scratch, file) = seed_with("check", "Processors: 8", "Processors: 0");
    assert_config_error(&check(&file), &file, &["KqConsumerConf.Processors"]);
}

fn check(file: &Path) -> Output {
    Command::new(SERVICE)
        .arg("--check")
        .arg("-f")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn describe_prints_the_topology_as_asyncapi() {
    let output = Command::new(SERVICE)
        .arg("--describe")
        .current_dir(package_dir())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(document["asyncapi"], "2.6.0");
    assert_eq!(document["servers"]["kafka1"]["url"], "embedded");
    let channel = &document["channels"]["payment-success"];
    assert_eq!(channel["publish"]["operationId"], "payment_success");
    assert_eq!(channel["publish"]["x-kq-conf"], "KqConsumerConf");
    assert_eq!(
        channel["publish"]["bindings"]["kafka"]["groupId"]["enum"][0],
        "kqConsumer"
    );
    assert_eq!(channel["subscribe"]["operationId"], "kq_pusher_conf");
}

/// Runs the service on `file` without `RUST_LOG` until it logged its five payments or `limit`
/// passed, stops it, and returns every line it printed and its exit code.
fn output_of_a_run(file: &Path, limit: Duration) -> (Vec<String>, Option<i32>) {
    let (lines_tx, lines) = mpsc::channel();
    let (mut child, reader) = spawn_service(Some(file), None, (), lines_tx);
    let deadline = Instant::now() + limit;
    let mut printed = Vec::new();
    while payments(&printed) < 5 && Instant::now() < deadline {
        printed.extend(
            lines
                .recv_timeout(Duration::from_millis(200))
                .map(|((), line)| line),
        );
    }
    sigterm(&mut child);
    let status = stopped(&mut child);
    reader.join().unwrap();
    printed.extend(lines.try_iter().map(|((), line)| line));
    (printed, status.code())
}

/// The lines the handler logged for payments.
fn payment_lines(printed: &[String]) -> impl Iterator<Item = &String> {
    printed
        .iter()
        .filter(|line| line.contains("PaymentSuccess key"))
}

fn payments(printed: &[String]) -> usize {
    payment_lines(printed).count()
}

#[test]
fn a_queue_log_block_sets_the_encoding() {
    // go-queue's KqConf embeds go-zero's ServiceConf: its `Log` block counts when the top
    // level has none.
    let (_scratch, file) = seed_with(
        "json-log",
        "  Processors: 8\n",
        "  Processors: 8\n  Log:\n    Encoding: json\n",
    );
    let (printed, code) = output_of_a_run(&file, Duration::from_secs(60));
    assert_eq!((payments(&printed), code), (5, Some(0)), "{printed:#?}");
    for line in &printed {
        let logged: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(logged["level"].is_string(), "{line}");
    }
    assert!(
        printed
            .iter()
            .any(|line| line.contains(r#""level":"INFO""#)),
        "{printed:#?}"
    );
    // The message's span is a debug span: at info a handler's lines go without it.
    for line in payment_lines(&printed) {
        assert!(!line.contains("kq.consume"), "{line}");
    }
}

#[test]
fn at_debug_level_a_handlers_lines_carry_its_message() {
    let (_scratch, file) = seed_with(
        "debug-log",
        "Port: 8888\n",
        "Port: 8888\nLog:\n  Level: debug\n  Encoding: json\n",
    );
    let (printed, code) = output_of_a_run(&file, Duration::from_secs(60));
    assert_eq!((payments(&printed), code), (5, Some(0)), "{printed:#?}");
    for line in payment_lines(&printed) {
        let logged: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        let span = &logged["span"];
        assert_eq!(span["name"], "kq.consume", "{line}");
        assert_eq!(span["topic"], "payment-success", "{line}");
        assert!(span["partition"].is_number(), "{line}");
        assert!(span["offset"].is_number(), "{line}");
    }
}

#[test]
fn the_top_level_log_block_wins() {
    let (_scratch, file) = seed_with(
        "plain-log",
        "  Processors: 8\n",
        "  Processors: 8\n  Log:\n    Encoding: json\n",
    );
    let yaml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("Port: 8888\n", "Port: 8888\nLog:\n  Encoding: plain\n");
    std::fs::write(&file, yaml).unwrap();
    let (printed, code) = output_of_a_run(&file, Duration::from_secs(60));
    assert_eq!((payments(&printed), code), (5, Some(0)), "{printed:#?}");
    assert!(
        printed.iter().all(|line| !line.starts_with('{')),
        "{printed:#?}"
    );
}

#[test]
fn the_log_level_holds_back_lower_levels() {
    let (_scratch, file) = seed_with(
        "error-log",
        "Port: 8888\n",
        "Port: 8888\nLog:\n  Level: error\n",
    );
    // Nothing goes wrong in this run, so at `error` it prints nothing at all.
    let (printed, code) = output_of_a_run(&file, Duration::from_secs(3));
    assert_eq!(code, Some(0), "it ran and stopped cleanly");
    assert!(printed.is_empty(), "{printed:#?}");
}

#[test]
fn help_describes_the_tools() {
    let output = Command::new(SERVICE).arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--reset-offsets <POSITION>",
        "--redrive <TOPIC>",
        "--consumer <NAME>",
        "--dry-run",
        "first|last|<time>",
        "<consumer group>.redrive",
        "Refused (exit 2) while the group has members",
    ] {
        assert!(help.contains(option), "{option}: {help}");
    }
}

/// A tool with a wrong argument, or on a config it cannot act on, exits with 2 and one line
/// saying why, before it connects to anything.
#[test]
fn a_tool_that_cannot_act_exits_with_2() {
    let run = |args: &[&str]| {
        let output = Command::new(SERVICE)
            .args(args)
            .current_dir(package_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
        stderr
    };
    let stderr = run(&["--reset-offsets", "yesterday"]);
    assert!(
        stderr.contains("`yesterday` is neither `first`, `last` nor an RFC 3339 time"),
        "{stderr}"
    );
    run(&["--dry-run"]);
    run(&["--consumer", "payment_success"]);
    run(&["--check", "--redrive", "payments-dlq"]);
    run(&["--reset-offsets", "first", "--redrive", "payments-dlq"]);

    let stderr = run(&["--reset-offsets", "first", "--consumer", "nobody"]);
    assert_eq!(
        stderr,
        "error: --consumer: no consumer `nobody` runs with this config (consumers: payment_success)\n"
    );
    let stderr = run(&["--redrive", "payments-dlq"]);
    assert!(
        stderr.starts_with(
            "error: --redrive payments-dlq: no consumer has `DeadLetterTopic: payments-dlq`"
        ),
        "{stderr}"
    );
    // etc/mq.yaml runs on the embedded broker, whose data is gone with the service.
    let stderr = run(&["--reset-offsets", "last"]);
    assert!(stderr.contains("runs on the embedded broker"), "{stderr}");

    // A bad config fails a tool as it fails a start.
    let (_scratch, file) = seed_with("tool", "Processors: 8", "Processors: 0");
    let output = Command::new(SERVICE)
        .arg("-f")
        .arg(&file)
        .args(["--reset-offsets", "first"])
        .output()
        .unwrap();
    assert_config_error(&output, &file, &["KqConsumerConf.Processors"]);
}

//! The service binary as a user runs it: the seed's service pushes and consumes its
//! payments and stops cleanly on SIGTERM; every kind of bad config is one line on stderr
//! naming the file and the key, with exit code 2.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SERVICE: &str = env!("CARGO_BIN_EXE_payment-success");

fn package_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_seed_service_consumes_its_payments_and_stops_on_sigterm() {
    let mut child = Command::new(SERVICE)
        .current_dir(package_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the service");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handled = Vec::new();
    while handled.len() < 5 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            if let Some(at) = line.find("PaymentSuccess key: ") {
                handled.push(line[at..].to_owned());
            }
        }
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    handled.sort();
    assert_eq!(handled.len(), 5, "{handled:#?}");
    for (n, line) in (1..=5).zip(&handled) {
        assert!(
            line.starts_with(&format!("PaymentSuccess key: order-{n}, val: {{")),
            "{line}"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a graceful stop exits with 0");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("consumer stopped")),
        "{rest:#?}"
    );
}

fn run_with(file: &Path) -> Output {
    Command::new(SERVICE)
        .arg("-f")
        .arg(file)
        .current_dir(package_dir())
        .output()
        .expect("run the service")
}

/// Writes `etc/mq.yaml` with one change into a scratch directory.
fn seed_with(name: &str, from: &str, to: &str) -> PathBuf {
    let seed = std::fs::read_to_string(package_dir().join("etc/mq.yaml")).unwrap();
    assert!(seed.contains(from), "{from:?} is not in the seed");
    let dir = std::env::temp_dir().join(format!("kq-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mq.yaml");
    std::fs::write(&path, seed.replace(from, to)).unwrap();
    path
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
    let file = seed_with("malformed", "Offset: first", "Offset: [first");
    assert_config_error(&run_with(&file), &file, &["cannot parse"]);
}

#[test]
fn a_wrong_type_exits_with_2_naming_the_key() {
    let file = seed_with("wrong-type", "Processors: 8", "Processors: eight");
    assert_config_error(&run_with(&file), &file, &["KqConsumerConf.Processors"]);
}

#[test]
fn a_wrong_value_exits_with_2_naming_the_key() {
    let file = seed_with("wrong-value", "Offset: first", "Offset: earliest");
    assert_config_error(
        &run_with(&file),
        &file,
        &["KqConsumerConf.Offset", "`first`, `last`"],
    );

    let file = seed_with("zero", "Processors: 8", "Processors: 0");
    assert_config_error(
        &run_with(&file),
        &file,
        &["`KqConsumerConf.Processors` must be at least 1"],
    );
}

#[test]
fn a_missing_block_exits_with_2_naming_it() {
    let file = seed_with("no-consumer", "KqConsumerConf:", "OtherConf:");
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

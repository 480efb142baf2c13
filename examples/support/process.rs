//! What the examples' process tests share: starting a service's binary, stopping it as a
//! process manager does or killing it, scratch config files, and the real broker's address.
//! Each example's `tests/common` includes it with `#[path]`.

#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts `binary` in `dir` (with `-f file` when given) and sends each line it prints, tagged
/// with `tag`, to `lines`. Returns the process and the thread reading it. `RUST_LOG` is `log`,
/// or unset for `None`: the config's `Log` block decides.
pub fn spawn_binary<T: Send + Clone + 'static>(
    binary: &str,
    dir: &Path,
    file: Option<&Path>,
    log: Option<&str>,
    tag: T,
    lines: mpsc::Sender<(T, String)>,
) -> (Child, JoinHandle<()>) {
    let mut command = Command::new(binary);
    if let Some(file) = file {
        command.arg("-f").arg(file);
    }
    match log {
        Some(log) => command.env("RUST_LOG", log),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send((tag.clone(), line));
        }
    });
    (child, reader)
}

/// Asks a running service to stop, as a process manager does.
pub fn sigterm(child: &mut Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
}

/// Kills a running service at once, as a crash or the OOM killer does, and reaps it.
pub fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL the service");
    child.wait().expect("reap the service");
}

/// How long a service may take to stop after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Waits for a service sent SIGTERM to exit. One still running after `STOP_LIMIT` is killed
/// and fails the test.
pub fn stopped(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + STOP_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service did not stop within {STOP_LIMIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real broker named by `KQ_TEST_BROKERS`, if any.
pub fn real_broker() -> Option<String> {
    let brokers = std::env::var("KQ_TEST_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    if brokers.is_none() {
        eprintln!("skipped: needs a real broker (scripts/test.sh --real sets KQ_TEST_BROKERS)");
    }
    brokers
}

/// A name no other test, nor an earlier run against the same broker, uses.
pub use kq::testing::unique;

/// A directory of a test's own under the temp dir, removed with its files when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kq-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The path of the file `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the file `name` in the directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

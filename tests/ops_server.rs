//! The metrics and health server under clients that misbehave: idle connections, more of
//! them than it keeps, heads that never end, and a process out of file descriptors. And what
//! it answers, framed as HTTP/1.1 says, to `GET`, `HEAD` and the other methods.

mod common;

use std::time::{Duration, Instant};

use common::{http_request, read_answer};
use kq::observe::{self, DevServerConf, HEAD_READ_TIMEOUT, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Starts a server with the default paths on a free loopback port, and returns the port.
async fn start() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(observe::serve(listener, DevServerConf::default()));
    port
}

/// Waits until the server closes `stream` (an end of file or a reset), reading and dropping
/// whatever it sends before; false if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_until_closed = async { while let Ok(1..) = stream.read(&mut buf).await {} };
    tokio::time::timeout(limit, read_until_closed).await.is_ok()
}

/// How long past its deadline a connection may take to be closed: the margin of a loaded
/// machine, not a promise of the server.
const MARGIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_are_answered_with_their_length_and_other_methods_are_refused() {
    let port = start().await;
    let openmetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let text = "text/plain; charset=utf-8";
    // No consumer runs in this process: alive, not ready.
    for (path, status, content_type) in [
        ("/metrics", 200, openmetrics),
        ("/metrics?name=kq", 200, openmetrics),
        ("/healthz", 200, text),
        ("/readyz", 503, text),
    ] {
        let get = http_request(port, "GET", path).await.unwrap();
        assert_eq!(get.status, status, "GET {path}");
        assert_eq!(get.header("content-type"), Some(content_type), "GET {path}");
        // The helper has checked that `content-length` framed the body exactly.
        let head = http_request(port, "HEAD", path).await.unwrap();
        assert_eq!(head.status, status, "HEAD {path}");
        assert_eq!(
            head.header("content-type"),
            Some(content_type),
            "HEAD {path}"
        );
        assert!(head.body.is_empty(), "HEAD {path}: {:?}", head.body);
        if !path.starts_with("/metrics") {
            // The metrics may grow between the two requests; the others stay the same.
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "HEAD {path}"
            );
        }
    }
    let metrics = http_request(port, "HEAD", "/metrics").await.unwrap();
    let length: usize = metrics
        .header("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap();
    assert!(length > 0, "{metrics:?}");

    for (method, path) in [
        ("POST", "/metrics"),
        ("PUT", "/healthz"),
        ("DELETE", "/readyz"),
    ] {
        let refused = http_request(port, method, path).await.unwrap();
        assert_eq!(refused.status, 405, "{method} {path}");
        assert_eq!(
            refused.header("allow"),
            Some("GET, HEAD"),
            "{method} {path}"
        );
    }
    for (method, path) in [("GET", "/nothing"), ("HEAD", "/"), ("POST", "/nothing")] {
        let missing = http_request(port, method, path).await.unwrap();
        assert_eq!(missing.status, 404, "{method} {path}");
        assert_eq!(
            missing.header("content-length"),
            Some("0"),
            "{method} {path}"
        );
    }

    // Kept alive: answers follow one another on one connection, each framed by its length.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for (method, path) in [
        ("GET", "/healthz"),
        ("HEAD", "/metrics"),
        ("GET", "/metrics"),
    ] {
        let request = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream, method).await.unwrap();
        assert_eq!(answer.status, 200, "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_whole_head_is_closed_after_the_deadline() {
    let port = start().await;
    let connect = move || TcpStream::connect(("127.0.0.1", port));

    // Sends nothing at all.
    let silent = tokio::spawn(async move {
        let mut stream = connect().await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut stream, HEAD_READ_TIMEOUT + MARGIN).await);
        started.elapsed()
    });

    // Sends a byte of its head now and then, never the end: the deadline is for the whole
    // head, not for each read.
    let trickling = tokio::spawn(async move {
        let mut stream = connect().await.unwrap();
        let started = Instant::now();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        loop {
            if closed_within(&mut stream, Duration::from_millis(500)).await
                || stream.write_all(b"a").await.is_err()
                || started.elapsed() > HEAD_READ_TIMEOUT + MARGIN
            {
                return started.elapsed();
            }
        }
    });

    // Asks once, keeps the connection and asks nothing more: the deadline runs again from
    // the end of the answer.
    let kept_alive = tokio::spawn(async move {
        let mut stream = connect().await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream, "GET").await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection"), None, "kept alive");
        let answered = Instant::now();
        assert!(closed_within(&mut stream, HEAD_READ_TIMEOUT + MARGIN).await);
        answered.elapsed()
    });

    // Not closed before the deadline (less a second for timer slack), nor long after.
    let early = HEAD_READ_TIMEOUT - Duration::from_secs(1);
    for (name, task) in [
        ("silent", silent),
        ("trickling", trickling),
        ("kept alive", kept_alive),
    ] {
        let lasted = task.await.unwrap();
        assert!(
            lasted >= early && lasted < HEAD_READ_TIMEOUT + MARGIN,
            "{name}: closed after {lasted:?}"
        );
    }
    assert_eq!(
        http_request(port, "GET", "/healthz").await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_idle_connections_past_the_cap_keeps_scrapes_out_only_until_the_deadline() {
    let port = start().await;
    let burst = 2 * MAX_CONNECTIONS;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..burst {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        idle.push(tokio::spawn(async move {
            let closed = closed_within(&mut stream, HEAD_READ_TIMEOUT + 2 * MARGIN).await;
            assert!(closed, "an idle connection was never closed");
            Instant::now()
        }));
    }

    // A scrape gets through once the idle connections in the server's slots reach their
    // deadline, if not before.
    let mut scraped = None;
    while started.elapsed() < HEAD_READ_TIMEOUT + MARGIN {
        match http_request(port, "GET", "/metrics").await {
            Ok(answer) => {
                scraped = Some(answer.status);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(scraped, Some(200), "no scrape in {:?}", started.elapsed());

    // No connection was accepted before `started`, so one closed before `started` and the
    // deadline was closed by the cap, at once: all those past the cap, and only those.
    let mut closed_at_once = 0;
    for task in idle {
        if task.await.unwrap() < started + HEAD_READ_TIMEOUT {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, burst - MAX_CONNECTIONS);
}

/// The variable that makes `serve_with_few_file_descriptors` serve, in the child process
/// that `the_server_outlives_running_out_of_file_descriptors` starts.
#[cfg(target_os = "linux")]
const CHILD: &str = "KQ_TEST_SERVE_WITH_FEW_FDS";

/// The file descriptors the child can open past those it has when it starts serving.
#[cfg(target_os = "linux")]
const SPARE_FDS: u64 = 8;

/// Not a test of its own: in the child process that
/// `the_server_outlives_running_out_of_file_descriptors` starts, it lowers the file limit to
/// a few descriptors past those open, serves, prints its port, and exits when its standard
/// input closes (so a parent that dies takes it along). Elsewhere it does nothing.
#[cfg(target_os = "linux")]
#[test]
fn serve_with_few_file_descriptors() {
    use std::io::Write as _;

    if std::env::var_os(CHILD).is_none() {
        return;
    }
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            // A new descriptor takes the lowest free number, which must be below the limit:
            // the limit leaves `SPARE_FDS` free numbers, whatever the ones open (some inherited,
            // with high numbers).
            let open: Vec<u64> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            let mut fds = SPARE_FDS;
            let free_below = |fds: u64| fds - open.iter().filter(|&&fd| fd < fds).count() as u64;
            while free_below(fds) < SPARE_FDS {
                fds += 1;
            }
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: both calls get a valid pointer to a `rlimit` that outlives them.
            unsafe {
                assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
                limit.rlim_cur = fds;
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
            }
            println!("listening on {port}");
            std::io::stdout().flush().unwrap();
            observe::serve(listener, DevServerConf::default()).await
        })
        .unwrap();
}

/// Kills the child process when the test ends, whichever way.
#[cfg(target_os = "linux")]
struct KillOnDrop(std::process::Child);

#[cfg(target_os = "linux")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child writes to `from`, sent on as they come.
#[cfg(target_os = "linux")]
fn lines(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;

    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

/// Waits up to `limit` for a line containing `text`; the lines read on the way are kept in
/// `seen`.
#[cfg(target_os = "linux")]
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    text: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let line = lines.recv_timeout(left).ok()?;
        seen.push(line.clone());
        if line.contains(text) {
            return Some(line);
        }
    }
    None
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_outlives_running_out_of_file_descriptors() {
    use std::process::{Command, Stdio};

    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "serve_with_few_file_descriptors",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = lines(child.0.stdout.take().unwrap());
    let stderr = lines(child.0.stderr.take().unwrap());
    let mut seen = Vec::new();
    let port: u16 = wait_for_line(&stdout, "listening on ", MARGIN, &mut seen)
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the child did not start: {seen:?}"));
    assert_eq!(
        http_request(port, "GET", "/healthz").await.unwrap().status,
        200
    );

    // More idle connections than the child has descriptors left: the kernel completes
    // them all, the server accepts until it has none.
    let idle: Vec<std::net::TcpStream> = (0..3 * SPARE_FDS)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut logged = Vec::new();
    let failed = wait_for_line(&stderr, "Too many open files", MARGIN, &mut logged);
    assert!(failed.is_some(), "no failed accept logged: {logged:?}");
    // Through several pauses of its backoff, it keeps running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the server process ended: {logged:?}"
    );

    drop(idle);
    let started = Instant::now();
    let mut health = None;
    while started.elapsed() < HEAD_READ_TIMEOUT + MARGIN {
        match http_request(port, "GET", "/healthz").await {
            Ok(answer) => {
                health = Some(answer.status);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(health, Some(200), "logged: {logged:?}");
    let recovered = wait_for_line(&stderr, "accepts connections again", MARGIN, &mut logged);
    assert!(recovered.is_some(), "no recovery logged: {logged:?}");
    // Logged once, however many accepts failed.
    let warnings = logged
        .iter()
        .filter(|line| line.contains("cannot accept a connection"))
        .count();
    assert_eq!(warnings, 1, "{logged:?}");
}

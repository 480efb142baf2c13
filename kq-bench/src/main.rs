//! kq against raw rdkafka, side by side, on a real broker process.
//!
//! ```text
//! cargo run --release -p kq-bench -- all            # every scenario
//! cargo run --release -p kq-bench -- consume push   # some of them
//! KQ_BENCH_ONLY=kq cargo run --release -p kq-bench -- consume   # one side, to profile it
//! KQ_BENCH_TOPIC=bench-... cargo run --release -p kq-bench -- consume  # a topic filled before
//! ```
//!
//! The broker is Apache Kafka, an instance of its own started by `scripts/broker.sh` (its jars
//! fetched the first time) and deleted afterwards, unless `KQ_BENCH_BROKERS` names another;
//! the latency scenario runs again on the embedded broker. Each scenario runs kq
//! and its raw rdkafka baseline in the same run, alternating, with the same librdkafka fetch
//! settings, prints a table and writes `target/kq-bench.json`.

mod consumers;
mod measure;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use measure::Row;

/// Settings both sides use; printed with the results.
#[derive(Clone)]
pub struct Settings {
    pub brokers: String,
    /// Whether `brokers` is the process's embedded broker (librdkafka's mock cluster).
    pub embedded: bool,
    pub messages: u64,
    pub partitions: i32,
    pub value_bytes: usize,
    pub reps: usize,
    /// `fetch.wait.max.ms`: how long the broker holds a fetch that has less than
    /// `fetch.min.bytes` for it.
    pub max_wait: Duration,
    pub min_bytes: usize,
    pub max_bytes: usize,
}

impl Settings {
    /// The librdkafka fetch settings of both sides.
    pub fn fetch_config(&self) -> Vec<(&'static str, String)> {
        vec![
            ("fetch.wait.max.ms", self.max_wait.as_millis().to_string()),
            ("fetch.min.bytes", self.min_bytes.to_string()),
            ("fetch.max.bytes", self.max_bytes.to_string()),
            ("fetch.queue.backoff.ms", "10".into()),
            ("auto.offset.reset", "earliest".into()),
        ]
    }
}

const SCENARIOS: &[&str] = &[
    "consume",
    "io",
    "push",
    "latency",
    "memory",
    "batch-io",
    "batch-consume",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("memory-child") {
        // The memory scenario measures a consumer in a process of its own.
        return consumers::memory_child(&args[1..]);
    }
    let mut chosen: Vec<&str> = Vec::new();
    for arg in &args {
        match arg.as_str() {
            "all" => chosen.extend(SCENARIOS),
            name if SCENARIOS.contains(&name) => {
                chosen.push(SCENARIOS[SCENARIOS.iter().position(|s| *s == name).unwrap_or(0)])
            }
            other => bail!("unknown scenario `{other}`; expected `all` or some of {SCENARIOS:?}"),
        }
    }
    if chosen.is_empty() {
        bail!("name the scenarios to run: `all` or some of {SCENARIOS:?}");
    }
    chosen.dedup();

    let (brokers, started) = broker()?;
    let settings = Settings {
        brokers,
        embedded: false,
        messages: env_u64("KQ_BENCH_MESSAGES", 1_000_000),
        partitions: 8,
        value_bytes: 100,
        reps: env_u64("KQ_BENCH_REPS", 2) as usize,
        max_wait: Duration::from_millis(10),
        min_bytes: 10_240,
        max_bytes: 10_485_760,
    };
    println!(
        "broker: {} ({})",
        settings.brokers,
        if started {
            "Apache Kafka, started for this run"
        } else {
            "KQ_BENCH_BROKERS"
        }
    );
    println!(
        "machine: {} cores; messages: {}, {} bytes each, {} partitions; {} repetitions, alternating",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        settings.messages,
        settings.value_bytes,
        settings.partitions,
        settings.reps
    );
    println!(
        "fetch settings on both sides: {:?}",
        settings.fetch_config()
    );

    // What `kq::main!` sets up for a service: JSON log lines at info, and metrics, health and
    // the stat log collected. kq is measured as it runs there.
    let _logs = kq::telemetry::init(&kq::LogConf::default(), None, "kq-bench")
        .map_err(anyhow::Error::msg)?;
    kq::observe::enable();
    // Tokio's default, one worker per core, as `kq::main!` builds it, unless
    // KQ_BENCH_WORKERS says otherwise.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("KQ_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build()?;
    let mut rows: Vec<Row> = Vec::new();
    let result = runtime.block_on(async {
        for scenario in &chosen {
            println!("\n== {scenario}");
            let new_rows = match *scenario {
                "consume" => consumers::consume_throughput(&settings).await?,
                "io" => consumers::io_bound(&settings).await?,
                "push" => consumers::push_throughput(&settings).await?,
                "latency" => consumers::latency(&settings).await?,
                "memory" => consumers::memory(&settings).await?,
                "batch-io" => consumers::batch_io(&settings).await?,
                "batch-consume" => consumers::batch_consume(&settings).await?,
                _ => Vec::new(),
            };
            for row in &new_rows {
                println!("{row}");
            }
            rows.extend(new_rows);
        }
        anyhow::Ok(())
    });
    if started && std::env::var_os("KQ_BENCH_KEEP_BROKER").is_none() {
        // A million-message run leaves gigabytes of log segments behind.
        let _ = Command::new(broker_script())
            .args(["wipe", BROKER_INSTANCE])
            .status();
    }
    result?;

    println!("\n{}", measure::table(&rows));
    let json_path = workspace_root().join("target").join("kq-bench.json");
    std::fs::create_dir_all(json_path.parent().unwrap_or(&workspace_root()))?;
    let json = serde_json::json!({
        "broker": settings.brokers,
        "messages": settings.messages,
        "value_bytes": settings.value_bytes,
        "partitions": settings.partitions,
        "fetch_settings": settings.fetch_config().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "rows": rows,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    println!("written: {}", json_path.display());
    Ok(())
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn broker_script() -> PathBuf {
    workspace_root().join("scripts").join("broker.sh")
}

/// The broker script's instance for the benchmark, apart from the tests' broker.
const BROKER_INSTANCE: &str = "bench";

/// `KQ_BENCH_BROKERS`, or a Kafka broker started by the broker script.
fn broker() -> anyhow::Result<(String, bool)> {
    if let Ok(brokers) = std::env::var("KQ_BENCH_BROKERS") {
        if !brokers.trim().is_empty() {
            return Ok((brokers, false));
        }
    }
    let mut command = Command::new(broker_script());
    command.args(["up", BROKER_INSTANCE]);
    // Log segments in memory, where the host has a tmpfs: with them on disk, the latency runs
    // after the push scenario (which writes 4M messages) stalled for 0.15 to 0.4 s at a time,
    // both subjects alike, and on tmpfs they did not.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        command.env(
            "KQ_BROKER_DATA",
            shm.join(format!("kq-bench-{}", std::process::id())),
        );
    }
    let output = command.output().context("running scripts/broker.sh")?;
    if !output.status.success() {
        bail!(
            "scripts/broker.sh up failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((String::from_utf8(output.stdout)?.trim().to_owned(), true))
}

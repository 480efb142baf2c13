//! What `kq::main!` runs: the command line, the config file, the service state, every
//! registered consumer, and the exit code.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::conf::{KqConf, LogConf, TelemetryConf};
use crate::handler::HandlerContext;
use crate::load::{ConfigFile, LoadError};
use crate::observe::{self, DevServerConf, PrometheusConf};
use crate::queue::Queue;
use crate::registry::{ConsumerRegistration, KqConfig};
use crate::service::ServiceGroup;
use crate::telemetry;

/// The default config file, as go-zero's services have it.
pub const DEFAULT_CONFIG_FILE: &str = "etc/mq.yaml";

/// Exit code of a bad config file or registration, as for a command-line usage error.
const EXIT_CONFIG: u8 = 2;
/// Exit code of a failure while running.
const EXIT_FAILURE: u8 = 1;

/// Runs a service: parses `-f <file>`, loads the config, builds the state with
/// `build_state` (inside the Tokio runtime, so it may spawn tasks), starts every registered
/// consumer and runs until SIGINT or SIGTERM.
///
/// Config and registration errors print one line naming the file and the key and exit
/// with code 2; failures while running exit with code 1; a graceful stop exits with 0.
pub fn run_main<C, S>(build_state: impl FnOnce(&C) -> Result<S, String>) -> ExitCode
where
    C: KqConfig,
    S: Send + Sync + 'static,
{
    let args = parse_args();
    match run(&args, build_state) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl Display) -> Self {
        Failure {
            code: EXIT_CONFIG,
            message: message.to_string(),
        }
    }

    fn run(message: impl Display) -> Self {
        Failure {
            code: EXIT_FAILURE,
            message: message.to_string(),
        }
    }
}

fn run<C, S>(args: &Args, build_state: impl FnOnce(&C) -> Result<S, String>) -> Result<(), Failure>
where
    C: KqConfig,
    S: Send + Sync + 'static,
{
    let file = args.file.as_path();
    let parsed = ConfigFile::read(file).map_err(Failure::config)?;
    let config: C = parsed.deserialize().map_err(Failure::config)?;
    config
        .check()
        .map_err(|problems| Failure::config(LoadError::new(file, problems.join("; "))))?;
    // Read before `--check` returns, so that it validates these keys too.
    let service: ServiceKeys = parsed.deserialize().map_err(Failure::config)?;
    let service = service.or_from_queues(&config);
    service
        .validate()
        .map_err(|problem| Failure::config(LoadError::new(file, problem)))?;
    if args.mode != Mode::Run {
        let (consumers, problems) = resolve(&config);
        if !problems.is_empty() {
            return Err(Failure::config(format!(
                "{}: {}",
                file.display(),
                problems.join("; ")
            )));
        }
        match args.mode {
            Mode::Check => print_check(file, &consumers),
            _ => println!("{}", describe(&binary_name(), &config, &consumers)),
        }
        return Ok(());
    }
    let log = service.log.clone().unwrap_or_default();
    let _telemetry =
        telemetry::init(&log, service.telemetry.as_ref(), &service.name).map_err(Failure::run)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        // Metrics, health and the stat log are on in services; the servers only when asked.
        observe::enable();
        for (listen, conf) in service.servers() {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| Failure::run(format!("cannot listen on {listen}: {e}")))?;
            tracing::info!(address = %listen, metrics = %conf.metrics_path, health = %conf.health_path, ready = %conf.ready_path, "serving metrics and health");
            // `serve` waits out failed accepts and so does not return; were it to, the
            // service would go on without its probes, which is worth an error.
            tokio::spawn(async move {
                if let Err(e) = observe::serve(listener, conf).await {
                    tracing::error!(address = %listen, error = %e, "the metrics server stopped: metrics, health and readiness are no longer served");
                }
            });
        }
        let state = build_state(&config)
            .map_err(|e| Failure::run(format!("cannot build the service state: {e}")))?;
        let context = HandlerContext::new(Arc::new(state));
        let queues = registered_queues(&config, &context).map_err(|errors| {
            Failure::config(format!("{}: {}", file.display(), errors.join("; ")))
        })?;
        let mut group = ServiceGroup::new();
        for queue in queues {
            group.add(queue);
        }
        group.run().await.map_err(Failure::run)
    })
}

/// go-zero's `ServiceConf` keys that kq serves from: at the top of the config file, or, where
/// the top has no such block, in the first queue's `KqConf` that has one (a go-queue `KqConf`
/// embeds `ServiceConf`).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceKeys {
    name: String,
    log: Option<LogConf>,
    telemetry: Option<TelemetryConf>,
    dev_server: Option<DevServerConf>,
    prometheus: Option<PrometheusConf>,
}

impl ServiceKeys {
    /// Fills the blocks the top level lacks from the queues' confs, in key order.
    fn or_from_queues<C: KqConfig>(mut self, config: &C) -> Self {
        for conf in config.kq_confs().values() {
            if self.name.is_empty() {
                self.name.clone_from(&conf.name);
            }
            self.log = self.log.or_else(|| conf.log.clone());
            self.telemetry = self.telemetry.or_else(|| conf.telemetry.clone());
            self.dev_server = self.dev_server.or_else(|| conf.dev_server.clone());
            self.prometheus = self.prometheus.or_else(|| conf.prometheus.clone());
        }
        self
    }

    fn validate(&self) -> Result<(), String> {
        match &self.telemetry {
            Some(telemetry) => telemetry.validate().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The servers to start: `DevServer` when enabled, and `Prometheus` (metrics only) when it
    /// has a port of its own.
    fn servers(&self) -> Vec<(String, DevServerConf)> {
        let mut servers = Vec::new();
        let dev_server = self.dev_server.clone().unwrap_or_default();
        if dev_server.enabled {
            servers.push((
                format!("{}:{}", dev_server.host, dev_server.port),
                dev_server.clone(),
            ));
        }
        let prometheus = self.prometheus.clone().unwrap_or_default();
        let same_port = dev_server.enabled && prometheus.port == dev_server.port;
        if prometheus.port != 0 && !same_port {
            let conf = DevServerConf {
                metrics_path: prometheus.path.clone(),
                ..DevServerConf::default()
            };
            servers.push((format!("{}:{}", prometheus.host, prometheus.port), conf));
        }
        servers
    }
}

/// What the command line asks for.
struct Args {
    file: PathBuf,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    /// Validate the config and list the consumers, then exit.
    Check,
    /// Print the service's topology as an AsyncAPI document, then exit.
    Describe,
}

/// Parses the command line: `-f <file>`, go-zero's flag, defaulting to `etc/mq.yaml`, and
/// `--check` or `--describe`.
fn parse_args() -> Args {
    let command = clap::Command::new(binary_name())
        .about("A kq service: consumes Kafka topics with the handlers registered in it")
        .arg(
            clap::Arg::new("file")
                .short('f')
                .long("file")
                .value_name("FILE")
                .default_value(DEFAULT_CONFIG_FILE)
                .value_parser(clap::value_parser!(PathBuf))
                .help("the config file (.yaml, .yml, .json or .toml)"),
        )
        .arg(
            clap::Arg::new("check")
                .long("check")
                .action(clap::ArgAction::SetTrue)
                .conflicts_with("describe")
                .help("validate the config, list the registered consumers, and exit"),
        )
        .arg(
            clap::Arg::new("describe")
                .long("describe")
                .action(clap::ArgAction::SetTrue)
                .help("print the service's topology as an AsyncAPI document, and exit"),
        );
    let matches = command.get_matches();
    let mode = if matches.get_flag("check") {
        Mode::Check
    } else if matches.get_flag("describe") {
        Mode::Describe
    } else {
        Mode::Run
    };
    Args {
        file: matches
            .get_one::<PathBuf>("file")
            .cloned()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE)),
        mode,
    }
}

fn binary_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kq-service".to_owned())
}

/// A queue for every registered consumer, bound to `context`. Every problem is reported,
/// not only the first: a conf key the config lacks, two consumers on one conf, a `State<S>`
/// of the wrong type.
pub fn registered_queues<C: KqConfig>(
    config: &C,
    context: &HandlerContext,
) -> Result<Vec<Queue>, Vec<String>> {
    let (consumers, mut problems) = resolve(config);
    let mut queues = Vec::new();
    for (registration, conf) in consumers {
        match registration.bind(context.clone()) {
            Ok(handler) => queues.push(Queue::new(registration.name, conf, handler)),
            Err(e) => problems.push(format!("{}: {e}", located(registration))),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if queues.is_empty() {
        tracing::warn!("no consumer is registered with #[kq::consumer]");
    }
    Ok(queues)
}

/// Every registered consumer whose conf was found, with the configuration it runs with, and
/// every problem with the others.
fn resolve<C: KqConfig>(config: &C) -> (Vec<(&'static ConsumerRegistration, KqConf)>, Vec<String>) {
    let registrations = ConsumerRegistration::all();
    let mut consumers = Vec::new();
    let mut problems = Vec::new();
    for (i, registration) in registrations.iter().enumerate() {
        let at = located(registration);
        if let Some(first) = registrations[..i]
            .iter()
            .find(|r| r.conf == registration.conf)
        {
            problems.push(format!(
                "{at} and {} both consume with `{}`; give each its own KqConf block",
                located(first),
                registration.conf
            ));
            continue;
        }
        match config.kq_conf(registration.conf) {
            Some(conf) => consumers.push((*registration, registration.conf(conf))),
            None => {
                let known: Vec<_> = config.kq_confs().into_keys().collect();
                problems.push(format!(
                    "{at} consumes with `{}`, which is not a KqConf field of `{}` (KqConf fields: {})",
                    registration.conf,
                    std::any::type_name::<C>(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
    }
    (consumers, problems)
}

fn located(registration: &ConsumerRegistration) -> String {
    format!(
        "consumer `{}` ({}:{})",
        registration.name, registration.file, registration.line
    )
}

/// `--check`: the config is valid; one line per consumer.
fn print_check(file: &Path, consumers: &[(&'static ConsumerRegistration, KqConf)]) {
    println!("{}: ok, {} consumer(s)", file.display(), consumers.len());
    for (registration, conf) in consumers {
        println!(
            "{}\tconf {}\ttopic {}\tgroup {}\tbrokers {}\t{}:{}",
            registration.name,
            registration.conf,
            conf.topic,
            conf.group,
            conf.brokers.join(","),
            registration.file,
            registration.line
        );
    }
}

/// `--describe`: the service's topology as an AsyncAPI 2.6 document (JSON). Each consumer is
/// an operation on its topic's channel that the service receives (`publish` in AsyncAPI 2's
/// terms, seen from the outside), each pusher one it sends (`subscribe`).
pub fn describe<C: KqConfig>(
    title: &str,
    config: &C,
    consumers: &[(&'static ConsumerRegistration, KqConf)],
) -> String {
    use serde_json::{json, Map, Value};

    let mut servers = Map::new();
    let mut channels: Map<String, Value> = Map::new();
    let mut server_of = |brokers: &[String]| {
        let url = brokers.join(",");
        let existing = servers
            .iter()
            .find(|(_, s)| s["url"] == url.as_str())
            .map(|(name, _)| name.clone());
        existing.unwrap_or_else(|| {
            let name = format!("kafka{}", servers.len() + 1);
            servers.insert(name.clone(), json!({"url": url, "protocol": "kafka"}));
            name
        })
    };
    for (registration, conf) in consumers {
        let server = server_of(&conf.brokers);
        let channel = channels
            .entry(conf.topic.clone())
            .or_insert_with(|| json!({"servers": [server]}));
        channel["publish"] = json!({
            "operationId": registration.name,
            "summary": format!("consumed by {} ({})", registration.name, registration.module_path),
            "bindings": {"kafka": {
                "groupId": {"type": "string", "enum": [conf.group]},
                "clientId": {"type": "string", "enum": [conf.name]},
            }},
            "x-kq-conf": registration.conf,
        });
    }
    for field in config.kq_fields() {
        if let Some(pusher) = field.value.downcast_ref::<crate::conf::PusherConf>() {
            let server = server_of(&pusher.brokers);
            let channel = channels
                .entry(pusher.topic.clone())
                .or_insert_with(|| json!({"servers": [server]}));
            channel["subscribe"] = json!({
                "operationId": field.rust_name,
                "summary": format!("pushed by the pusher configured in {}", field.serde_name),
            });
        }
    }
    let document = json!({
        "asyncapi": "2.6.0",
        "info": {"title": title, "version": "unversioned"},
        "servers": servers,
        "channels": channels,
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// How `kq::main!` accepts a state builder returning either `S` or `Result<S, E>`: method
/// resolution on `(&&value).kq_state_kind()` picks `ResultState` for a `Result` and
/// `PlainState` for anything else.
#[doc(hidden)]
pub mod state_kind {
    use std::fmt::Display;

    pub struct ResultTag;
    pub struct PlainTag;

    pub trait ResultState {
        fn kq_state_kind(&self) -> ResultTag {
            ResultTag
        }
    }
    impl<S, E: Display> ResultState for &Result<S, E> {}

    pub trait PlainState {
        fn kq_state_kind(&self) -> PlainTag {
            PlainTag
        }
    }
    impl<T> PlainState for &&T {}

    impl ResultTag {
        pub fn into_state<S, E: Display>(self, value: Result<S, E>) -> Result<S, String> {
            value.map_err(|e| format!("{e:#}"))
        }
    }

    impl PlainTag {
        pub fn into_state<S>(self, value: S) -> Result<S, String> {
            Ok(value)
        }
    }
}

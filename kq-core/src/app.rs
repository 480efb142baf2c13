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
use crate::registry::{block, ConsumerRegistration, KqConfig, RegisteredHandler};
use crate::service::{ServiceGroup, TerminationSignals};
use crate::telemetry;
use crate::tools::{self, Position, Target, ToolError};

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

    /// A refusal is the operator's to mend, as a config error is; a failure is the brokers'.
    fn tool(error: ToolError) -> Self {
        match error {
            ToolError::Refused(message) => Failure::config(message),
            ToolError::Failed(message) => Failure::run(message),
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
    // Against the state's type, not a state: building one may connect to services or spawn
    // work, which `--check` must not do and a start need not do to find a mismatch.
    let (consumers, problems) = bind_all(&config, &HandlerContext::of_type::<S>());
    if !problems.is_empty() {
        return Err(Failure::config(format!(
            "{}: {}",
            file.display(),
            problems.join("; ")
        )));
    }
    // The consumers that would start, with their confs: what `--describe` and the tools act on.
    let started: Vec<_> = consumers.started().collect();
    match &args.mode {
        Mode::Run => {}
        Mode::Check => {
            print_check(file, &consumers);
            return Ok(());
        }
        Mode::Describe => {
            say!("{}", describe(&binary_name(), &config, &started));
            return Ok(());
        }
        Mode::ResetOffsets(position) => {
            return Target::chosen(&started, args.consumer.as_deref())
                .and_then(|targets| tools::reset_offsets(&targets, position, args.dry_run))
                .map_err(Failure::tool);
        }
        Mode::Redrive(topic) => {
            let target = Target::redriving(&started, args.consumer.as_deref(), topic)
                .map_err(Failure::tool)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
            return runtime
                .block_on(tools::redrive(&target, topic, args.dry_run))
                .map_err(Failure::tool);
        }
    }
    let log = service.log.clone().unwrap_or_default();
    let _telemetry =
        telemetry::init(&log, service.telemetry.as_ref(), &service.name).map_err(Failure::run)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        // Caught from here on: a signal while the state is built or the clients start stops
        // the service once it has started, with a graceful exit, instead of killing it.
        let signals = TerminationSignals::listen();
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
        group
            .run_until_signalled(signals)
            .await
            .map_err(Failure::run)
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
    /// `--consumer`: the one consumer a tool acts on.
    consumer: Option<String>,
    /// `--dry-run`: a tool prints what it would do, and does nothing.
    dry_run: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum Mode {
    Run,
    /// Validate the config and list the consumers, then exit.
    Check,
    /// Print the service's topology as an AsyncAPI document, then exit.
    Describe,
    /// Move the consumers' committed offsets, then exit.
    ResetOffsets(Position),
    /// Push a dead-letter topic's messages back to their topics, then exit.
    Redrive(String),
}

/// What `--help` says after the options.
const TOOLS_HELP: &str = "\
Instead of consuming, with the same config file:
  --reset-offsets first|last|<time>  commits, for each consumer's group (or --consumer's),
      the first offset, the end, or the first offset at or after an RFC 3339 time
      (2026-12-01T09:30:00Z) in every partition of its topic, and prints old -> new.
      Refused (exit 2) while the group has members.
  --redrive <topic>  pushes the dead letters of <topic> back to the topics they came from,
      with their keys, values and headers, the kq.* headers replaced by kq.redrives; reads
      with the group <consumer group>.redrive, the consumer being the one whose
      DeadLetterTopic is <topic> (or --consumer's); commits as it goes, and exits once
      caught up. A message without kq.source.topic is skipped and reported.
  --dry-run  prints what either would do, and changes nothing.

Exit codes: 0 done, 1 failed while running, 2 config, usage or refusal.";

/// Parses the command line: `-f <file>`, go-zero's flag, defaulting to `etc/mq.yaml`, and
/// `--check`, `--describe`, or a tool with its options.
fn parse_args() -> Args {
    use clap::{Arg, ArgAction, ArgGroup};

    let command = clap::Command::new(binary_name())
        .about("A kq service: consumes Kafka topics with the handlers registered in it")
        .after_help(TOOLS_HELP)
        .arg(
            Arg::new("file")
                .short('f')
                .long("file")
                .value_name("FILE")
                .default_value(DEFAULT_CONFIG_FILE)
                .value_parser(clap::value_parser!(PathBuf))
                .help("the config file (.yaml, .yml, .json or .toml)"),
        )
        .arg(
            Arg::new("check")
                .long("check")
                .action(ArgAction::SetTrue)
                .help("validate the config, list the registered consumers, and exit"),
        )
        .arg(
            Arg::new("describe")
                .long("describe")
                .action(ArgAction::SetTrue)
                .help("print the service's topology as an AsyncAPI document, and exit"),
        )
        .arg(
            Arg::new("reset-offsets")
                .long("reset-offsets")
                .value_name("POSITION")
                .value_parser(|text: &str| text.parse::<Position>())
                .help("move the consumers' committed offsets to first, last or an RFC 3339 time, and exit"),
        )
        .arg(
            Arg::new("redrive")
                .long("redrive")
                .value_name("TOPIC")
                .help("push the dead letters of TOPIC back to their topics, and exit"),
        )
        .group(
            ArgGroup::new("mode")
                .args(["check", "describe", "reset-offsets", "redrive"])
                .multiple(false),
        )
        .group(ArgGroup::new("tool").args(["reset-offsets", "redrive"]))
        .arg(
            Arg::new("consumer")
                .long("consumer")
                .value_name("NAME")
                .requires("tool")
                .help("the consumer a tool acts on (by default every one, or for --redrive the one whose DeadLetterTopic it is)"),
        )
        .arg(
            Arg::new("dry-run")
                .long("dry-run")
                .action(ArgAction::SetTrue)
                .requires("tool")
                .help("print what a tool would do, and change nothing"),
        );
    let matches = command.get_matches();
    let mode = if matches.get_flag("check") {
        Mode::Check
    } else if matches.get_flag("describe") {
        Mode::Describe
    } else if let Some(position) = matches.get_one::<Position>("reset-offsets") {
        Mode::ResetOffsets(position.clone())
    } else if let Some(topic) = matches.get_one::<String>("redrive") {
        Mode::Redrive(topic.clone())
    } else {
        Mode::Run
    };
    Args {
        file: matches
            .get_one::<PathBuf>("file")
            .cloned()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE)),
        mode,
        consumer: matches.get_one::<String>("consumer").cloned(),
        dry_run: matches.get_flag("dry-run"),
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
/// not only the first: a conf key the config lacks, two consumers on one conf or with one
/// name, a `State<S>` of the wrong type. A consumer whose `Option<KqConf>` block the file
/// leaves out gets no queue.
pub fn registered_queues<C: KqConfig>(
    config: &C,
    context: &HandlerContext,
) -> Result<Vec<Queue>, Vec<String>> {
    let (bound, problems) = bind_all(config, context);
    if !problems.is_empty() {
        return Err(problems);
    }
    for registration in &bound.absent {
        tracing::info!(
            consumer = registration.name,
            conf = registration.conf,
            "not started: the config file has no `{}` block",
            registration.conf
        );
    }
    let queues: Vec<_> = bound
        .started
        .into_iter()
        .map(|(registration, conf, handler)| Queue::registered(registration.name, conf, handler))
        .collect();
    if queues.is_empty() {
        tracing::warn!("no consumer to start: none is registered with #[kq::consumer], or every one's block is absent");
    }
    Ok(queues)
}

/// The registered consumers, matched to the config and bound to `context`.
pub(crate) struct Bound {
    /// Those to start, with the configuration each runs with.
    pub started: Vec<(&'static ConsumerRegistration, KqConf, RegisteredHandler)>,
    /// Those whose `Option<KqConf>` block the file leaves out.
    pub absent: Vec<&'static ConsumerRegistration>,
}

impl Bound {
    fn started(&self) -> impl Iterator<Item = (&'static ConsumerRegistration, KqConf)> + '_ {
        self.started
            .iter()
            .map(|(registration, conf, _)| (*registration, conf.clone()))
    }
}

/// Matches every registered consumer to its conf and binds it to `context`; with every
/// problem, each naming the consumer and where it is.
fn bind_all<C: KqConfig>(config: &C, context: &HandlerContext) -> (Bound, Vec<String>) {
    bind_chosen(config, context, |_| true)
}

/// The same for the registered consumers whose names `chosen` accepts: the others are
/// neither matched nor checked.
pub(crate) fn bind_chosen<C: KqConfig>(
    config: &C,
    context: &HandlerContext,
    chosen: impl Fn(&str) -> bool,
) -> (Bound, Vec<String>) {
    let registrations: Vec<_> = ConsumerRegistration::all()
        .into_iter()
        .filter(|registration| chosen(registration.name))
        .collect();
    let mut bound = Bound {
        started: Vec::new(),
        absent: Vec::new(),
    };
    let mut problems = Vec::new();
    for (i, registration) in registrations.iter().enumerate() {
        let at = registration.located();
        let earlier = &registrations[..i];
        // Logs, metrics and `ConsumerRegistration::find` tell consumers apart by name.
        if let Some(first) = earlier.iter().find(|r| r.name == registration.name) {
            problems.push(format!(
                "{at} and {} have the same name; give one another with `name = \"...\"`",
                first.located()
            ));
        }
        if let Some(first) = earlier.iter().find(|r| r.conf == registration.conf) {
            problems.push(format!(
                "{at} and {} both consume with `{}`; give each its own KqConf block",
                first.located(),
                registration.conf
            ));
            continue;
        }
        let conf = match config.find_field(registration.conf).map(block::<KqConf>) {
            Some(Some(Some(conf))) => conf,
            Some(Some(None)) => {
                bound.absent.push(registration);
                continue;
            }
            Some(None) => {
                problems.push(format!(
                    "{at} consumes with `{}`, which is a field of `{}` but not a KqConf{}",
                    registration.conf,
                    std::any::type_name::<C>(),
                    kq_conf_fields(config, registration.conf)
                ));
                continue;
            }
            None => {
                problems.push(format!(
                    "{at} consumes with `{}`, which is not a KqConf field of `{}`{}",
                    registration.conf,
                    std::any::type_name::<C>(),
                    kq_conf_fields(config, registration.conf)
                ));
                continue;
            }
        };
        match registration.bind(context.clone()) {
            Ok(handler) => bound
                .started
                .push((registration, registration.conf(conf), handler)),
            Err(e) => problems.push(e),
        }
    }
    (bound, problems)
}

/// ` (KqConf fields: A, B); did you mean `A`?`, for a conf key that names no KqConf field:
/// the fields there are, by key, and the one `key` is likely a typo of.
fn kq_conf_fields<C: KqConfig>(config: &C, key: &str) -> String {
    let fields: Vec<_> = config
        .kq_fields()
        .into_iter()
        .filter(|f| block::<KqConf>(f.value).is_some())
        .collect();
    let mut keys: Vec<_> = fields.iter().map(|f| f.serde_name).collect();
    keys.sort_unstable();
    let listed = if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(", ")
    };
    // Either name finds the field, so either may be the one mistyped.
    let names = fields.iter().flat_map(|f| [f.serde_name, f.rust_name]);
    match closest(key, names) {
        Some(name) => format!(" (KqConf fields: {listed}); did you mean `{name}`?"),
        None => format!(" (KqConf fields: {listed})"),
    }
}

/// The candidate nearest to `name` by edit distance, ignoring case, when it is near enough to
/// be a typo of it: at most one edit per three characters (at least one). Of equally near
/// ones, the nearest with case counted, then the first.
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (lower.chars().count() / 3).max(1);
    let mut best: Option<((usize, usize), &str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&lower, &candidate.to_lowercase());
        if distance > limit {
            continue;
        }
        let rank = (distance, edit_distance(name, candidate));
        if best.is_none_or(|(nearest, _)| rank < nearest) {
            best = Some((rank, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between `a` and `b`: the fewest characters to insert, delete or
/// replace to turn one into the other.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // The distances from the prefix of `a` read so far to each prefix of `b`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let replace = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = replace.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `--check`: the config is valid; one line per consumer, and one per consumer whose
/// `Option<KqConf>` block is absent.
fn print_check(file: &Path, consumers: &Bound) {
    if consumers.absent.is_empty() {
        say!(
            "{}: ok, {} consumer(s)",
            file.display(),
            consumers.started.len()
        );
    } else {
        say!(
            "{}: ok, {} consumer(s), {} not started (no block)",
            file.display(),
            consumers.started.len(),
            consumers.absent.len()
        );
    }
    for (registration, conf) in consumers.started() {
        let dead_letters = match conf.dead_letter_topic.as_str() {
            "" => String::new(),
            topic => format!(
                "\tdead letters {topic} (redrive group {})",
                tools::redrive_group(&conf.group)
            ),
        };
        say!(
            "{}\tconf {}\ttopic {}\tgroup {}\tbrokers {}{dead_letters}\t{}:{}",
            registration.name,
            registration.conf,
            conf.topic,
            conf.group,
            conf.brokers.join(","),
            registration.file,
            registration.line
        );
    }
    for registration in &consumers.absent {
        say!(
            "{}\tconf {}\tnot started: the file has no such block\t{}:{}",
            registration.name,
            registration.conf,
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
        if let Some(Some(pusher)) = block::<crate::conf::PusherConf>(field.value) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{BoxFuture, FromMessage, HandlerError, State};
    use crate::message::Message;
    use crate::registry::{ConfigField, Entry, PolicyOverrides};

    #[test]
    fn edit_distance_counts_insertions_deletions_and_replacements() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("KqConf", "KqConf"), 0);
        assert_eq!(edit_distance("KqConsumerConf", "KqConsumerConfs"), 1);
        assert_eq!(edit_distance("KqConsumerConf", "KqConsumrConf"), 1);
        assert_eq!(edit_distance("KqConsumerConf", "KqConsumerCnof"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        // Characters, not bytes: `ä` is two bytes in UTF-8.
        assert_eq!(edit_distance("Zählung", "Zahlung"), 1);
    }

    #[test]
    fn closest_suggests_only_a_likely_typo() {
        let fields = ["KqConsumerConf", "kq_consumer_conf", "Refunds", "refunds"];
        assert_eq!(closest("KqConsumerConfig", fields), Some("KqConsumerConf"));
        assert_eq!(closest("kqconsumerconf", fields), Some("KqConsumerConf"));
        assert_eq!(closest("kq_consumer_cof", fields), Some("kq_consumer_conf"));
        assert_eq!(closest("Refund", fields), Some("Refunds"));
        assert_eq!(closest("refund", fields), Some("refunds"));
        assert_eq!(closest("Shipments", fields), None);
        assert_eq!(closest("Ab", ["Ac", "Xy"]), Some("Ac"));
        assert_eq!(closest("Ab", ["Xy"]), None);
        assert_eq!(closest("Orders", []), None);
    }

    // Consumers as `#[kq::consumer]` registers them, for the tests below. They are all in
    // this test binary's registry, so each test reads the problems about its own.

    struct TestState;

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct TestConfig {
        payments: KqConf,
        refunds: KqConf,
        #[serde(default)]
        audit: Option<KqConf>,
    }

    impl KqConfig for TestConfig {
        fn kq_fields(&self) -> Vec<ConfigField<'_>> {
            vec![
                ConfigField {
                    serde_name: "Payments",
                    rust_name: "payments",
                    value: &self.payments,
                },
                ConfigField {
                    serde_name: "Refunds",
                    rust_name: "refunds",
                    value: &self.refunds,
                },
                ConfigField {
                    serde_name: "Audit",
                    rust_name: "audit",
                    value: &self.audit,
                },
            ]
        }
    }

    fn handler<'a>(
        _: &'a Message,
        _: &'a HandlerContext,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }

    fn takes_test_state(ctx: &HandlerContext) -> Result<(), String> {
        <&State<TestState> as FromMessage<'_>>::check(ctx)
    }

    fn takes_string_state(ctx: &HandlerContext) -> Result<(), String> {
        <State<String> as FromMessage<'_>>::check(ctx)
    }

    fn takes_no_state(_: &HandlerContext) -> Result<(), String> {
        Ok(())
    }

    fn no_headers() -> bool {
        false
    }

    macro_rules! register {
        ($name:literal, $conf:literal, $check:expr) => {
            inventory::submit! {
                ConsumerRegistration {
                    name: $name,
                    conf: $conf,
                    module_path: module_path!(),
                    file: file!(),
                    line: line!(),
                    handler: Entry::Message(handler),
                    check: $check,
                    reads_headers: no_headers,
                    reads_text: false,
                    policy: PolicyOverrides {
                        retry_attempts: None,
                        dead_letter_topic: None,
                        force_commit: None,
                        batch_size: None,
                        batch_wait: None,
                    },
                }
            }
        };
    }

    register!("payments", "Payments", takes_test_state);
    register!("refunds", "Refunds", takes_string_state);
    register!("audit", "Audit", takes_no_state);
    register!("payments", "payment", takes_no_state);

    fn config(audit: bool) -> TestConfig {
        let conf = |topic: &str| KqConf::new(["embedded"], "g", topic);
        TestConfig {
            payments: conf("payments"),
            refunds: conf("refunds"),
            audit: audit.then(|| conf("audit")),
        }
    }

    fn problems(config: &TestConfig, context: &HandlerContext) -> Vec<String> {
        bind_all(config, context).1
    }

    fn about<'a>(problems: &'a [String], fragment: &str) -> Vec<&'a String> {
        problems.iter().filter(|p| p.contains(fragment)).collect()
    }

    #[test]
    fn two_consumers_with_one_name_are_reported_with_both_places() {
        let problems = problems(&config(true), &HandlerContext::of_type::<TestState>());
        let same = about(&problems, "have the same name");
        assert_eq!(same.len(), 1, "{problems:#?}");
        let line = same[0].as_str();
        let places = line
            .matches("consumer `payments` (kq-core/src/app.rs:")
            .count();
        assert_eq!(places, 2, "{line}");
        assert!(line.contains("`name = \"...\"`"), "{line}");
    }

    #[test]
    fn a_conf_key_that_names_no_field_suggests_the_nearest() {
        let problems = problems(&config(true), &HandlerContext::of_type::<TestState>());
        let missing = about(&problems, "consumes with `payment`");
        assert_eq!(missing.len(), 1, "{problems:#?}");
        assert!(
            missing[0].ends_with(
                "which is not a KqConf field of `kq_core::app::tests::TestConfig` \
                 (KqConf fields: Audit, Payments, Refunds); did you mean `payments`?"
            ),
            "{}",
            missing[0]
        );
    }

    #[test]
    fn a_state_of_another_type_is_reported_without_building_the_state() {
        let problems = problems(&config(true), &HandlerContext::of_type::<TestState>());
        let state = about(&problems, "the service state is");
        assert_eq!(state.len(), 1, "{problems:#?}");
        assert!(
            state[0].starts_with("consumer `refunds` (kq-core/src/app.rs:")
                && state[0].ends_with(
                    "): the handler takes `State<alloc::string::String>` \
                     but the service state is `kq_core::app::tests::TestState`"
                ),
            "{}",
            state[0]
        );
    }

    #[test]
    fn a_consumer_whose_optional_block_is_absent_is_not_started() {
        let context = HandlerContext::of_type::<TestState>();
        let (bound, problems) = bind_all(&config(false), &context);
        assert!(about(&problems, "`audit`").is_empty(), "{problems:#?}");
        let absent: Vec<_> = bound.absent.iter().map(|r| r.name).collect();
        assert_eq!(absent, ["audit"]);
        let started: Vec<_> = bound.started().map(|(r, c)| (r.name, c.topic)).collect();
        assert_eq!(started, [("payments", "payments".to_owned())]);

        let (bound, _) = bind_all(&config(true), &context);
        assert!(bound.absent.is_empty());
        let started: Vec<_> = bound.started().map(|(r, c)| (r.name, c.topic)).collect();
        assert_eq!(
            started,
            [
                ("audit", "audit".to_owned()),
                ("payments", "payments".to_owned())
            ]
        );
    }

    #[test]
    fn an_absent_optional_block_is_neither_found_nor_checked() {
        let mut config = config(false);
        assert!(config.kq_conf("Audit").is_none());
        assert!(config.find_field("Audit").is_some());
        assert_eq!(config.kq_confs().len(), 2);
        assert_eq!(config.check(), Ok(()));

        config.audit = Some(KqConf::new(["embedded"], "", "audit"));
        assert_eq!(
            config.kq_conf("audit").map(|c| c.topic.as_str()),
            Some("audit")
        );
        assert_eq!(config.kq_confs().len(), 3);
        let problems = config.check().expect_err("an empty Group");
        assert!(problems[0].starts_with("`Audit.Group`"), "{problems:?}");
    }

    #[test]
    fn check_fails_with_code_2_on_a_state_of_another_type_and_builds_no_state() {
        let file = std::env::temp_dir().join(format!("kq-app-check-{}.yaml", std::process::id()));
        let block = |topic: &str| format!("  Brokers: [embedded]\n  Group: g\n  Topic: {topic}\n");
        let yaml = format!(
            "Payments:\n{}Refunds:\n{}",
            block("payments"),
            block("refunds")
        );
        std::fs::write(&file, yaml).expect("write the config file");
        let args = Args {
            file: file.clone(),
            mode: Mode::Check,
            consumer: None,
            dry_run: false,
        };
        let outcome =
            run::<TestConfig, TestState>(&args, |_| panic!("--check built the service state"));
        let _ = std::fs::remove_file(&file);

        let Err(Failure { code, message }) = outcome else {
            panic!("--check passed");
        };
        assert_eq!(code, EXIT_CONFIG);
        assert!(
            message.starts_with(&format!("{}: ", file.display())),
            "{message}"
        );
        assert!(
            message.contains(
                "): the handler takes `State<alloc::string::String>` \
                 but the service state is `kq_core::app::tests::TestState`"
            ),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

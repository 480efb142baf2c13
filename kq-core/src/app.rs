//! What `kq::main!` runs: the command line, the config file, the service state, every
//! registered consumer, and the exit code.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::handler::HandlerContext;
use crate::load::{load_config, LoadError};
use crate::queue::Queue;
use crate::registry::{ConsumerRegistration, KqConfig};
use crate::service::ServiceGroup;

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
    let file = config_file_arg();
    init_tracing();
    match run(&file, build_state) {
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

fn run<C, S>(file: &Path, build_state: impl FnOnce(&C) -> Result<S, String>) -> Result<(), Failure>
where
    C: KqConfig,
    S: Send + Sync + 'static,
{
    let config: C = load_config(file).map_err(Failure::config)?;
    config
        .check()
        .map_err(|problems| Failure::config(LoadError::new(file, problems.join("; "))))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
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

/// Parses the command line: `-f <file>`, go-zero's flag, defaulting to `etc/mq.yaml`.
fn config_file_arg() -> PathBuf {
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
        );
    let matches = command.get_matches();
    matches
        .get_one::<PathBuf>("file")
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE))
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

/// Logs to stdout at `info`, or as `RUST_LOG` says (`info,kq_core=debug`, ...).
fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .try_init();
}

/// A queue for every registered consumer, bound to `context`. Every problem is reported,
/// not only the first: a conf key the config lacks, two consumers on one conf, a `State<S>`
/// of the wrong type.
pub fn registered_queues<C: KqConfig>(
    config: &C,
    context: &HandlerContext,
) -> Result<Vec<Queue>, Vec<String>> {
    let registrations = ConsumerRegistration::all();
    let mut queues = Vec::new();
    let mut problems = Vec::new();
    for (i, registration) in registrations.iter().enumerate() {
        let at = format!(
            "consumer `{}` ({}:{})",
            registration.name, registration.file, registration.line
        );
        if let Some(first) = registrations[..i]
            .iter()
            .find(|r| r.conf == registration.conf)
        {
            problems.push(format!(
                "{at} and consumer `{}` ({}:{}) both consume with `{}`; give each its own KqConf block",
                first.name, first.file, first.line, registration.conf
            ));
            continue;
        }
        let Some(conf) = config.kq_conf(registration.conf) else {
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
            continue;
        };
        match registration.bind(context.clone()) {
            Ok(handler) => queues.push(Queue::new(
                registration.name,
                registration.conf(conf),
                handler,
            )),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    if problems.is_empty() {
        if queues.is_empty() {
            tracing::warn!("no consumer is registered with #[kq::consumer]");
        }
        Ok(queues)
    } else {
        Err(problems)
    }
}

/// How `kq::main!` accepts a state builder returning either `S` or `Result<S, E>`: method
/// resolution on `(&&value).kq_state_kind()` picks [`ResultState`] for a `Result` and
/// [`PlainState`] for anything else.
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

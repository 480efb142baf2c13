//! # kq
//!
//! Kafka consumers for Rust services, declared with attributes: the Rust port of go-queue's
//! `kq`, the Kafka queue of the go-zero ecosystem, with at-least-once delivery that never
//! commits past an unfinished message, per-key order under concurrency, retries and a
//! dead-letter topic.
//!
//! A service is a config struct, handlers, and `kq::main!`:
//!
//! ```no_run
//! // The config file, etc/mq.yaml, as a go-zero service has it:
//! //
//! //   Name: mq
//! //   KqConsumerConf:
//! //     Name: kqConsumer
//! //     Brokers: [127.0.0.1:9092]
//! //     Group: kqConsumer
//! //     Topic: payment-success
//! //     Offset: first
//!
//! #[derive(serde::Deserialize, kq::KqConfig)]
//! #[serde(rename_all = "PascalCase")]
//! struct Config {
//!     name: String,
//!     kq_consumer_conf: kq::KqConf,
//! }
//!
//! #[kq::consumer(conf = "KqConsumerConf")]
//! async fn payment_success(key: &str, value: &str) -> Result<(), std::io::Error> {
//!     println!("PaymentSuccess key: {key}, value: {value}");
//!     Ok(())
//! }
//!
//! kq::main!(Config);
//! ```
//!
//! Run it with `-f etc/mq.yaml` (the default). `Brokers: [embedded]` runs an in-process broker
//! instead of a cluster, for trying things out and for tests.
//!
//! Tests run a service's registered consumers, with their config, state and error policy,
//! through [`testing`]. The generated binary also replays a topic (`--reset-offsets`) and
//! pushes dead letters back to their topics (`--redrive`); `--help` lists them.
//!
//! The guide is in the repository's `docs/`: configuration reference, semantics, operations,
//! the pusher, migration from go-queue, benchmarks.

#![warn(missing_docs)]

pub use kq_core::{
    conf, dead_letter_headers, observe, telemetry, Acks, Assignor, BatchConf, BatchError,
    BatchHandler, BoxFuture, Compression, Delivery, DeliveryFailure, EmbeddedBroker, Error,
    ErrorHandler, FromBatch, FromContext, FromMessage, Handler, HandlerContext, HandlerError,
    HandlerErrorKind, Headers, HoldConf, IntoHandlerResult, Json, KqConf, KqConfig, LoadError,
    LogConf, Mechanism, Message, Metrics, Offset, Ordering, Outcome, Partitioner, Push, PushError,
    Pusher, PusherConf, Queue, Rejected, RetryConf, ServiceGroup, Shutdown, State, TelemetryConf,
};
pub use kq_core::{create_topic, load_config, registered_queues, sleep, spawn, testing};

/// Registers an `async fn` as the handler of a consumer queue.
///
/// `conf` names the config key of the queue's [`KqConf`]: the serde name of a field of the
/// `#[derive(KqConfig)]` struct (`KqConsumerConf`) or its Rust name (`kq_consumer_conf`).
/// `kq::main!` starts one queue per registered consumer. The function stays an ordinary
/// function that tests can call.
///
/// Parameters, in any order:
/// - `key: &str, value: &str`: go-queue's `Consume(key, value)` pair (the first `&str` is
///   the key, the second the value; a missing key or value reads as `""`);
/// - `&kq::Message`: the whole record: headers, topic, partition, offset, timestamp, bytes
///   (a consumer that takes it has its queue read each record's headers, which costs
///   librdkafka an allocation per message; the other parameters need none);
/// - `&kq::State<S>`: the service state built by `kq::main!` (by value, `kq::State<S>`, it is
///   an `Arc` of it cloned for every message, to keep past the handler);
/// - `kq::Json<T>`: the value decoded from JSON into any `T: Deserialize`.
///
/// A parameter that cannot be taken (invalid UTF-8, undecodable JSON) is a decode error for
/// the error policy; it never crashes a worker. The return type is `()` or
/// `Result<(), E>` for any `E: Display`, so `anyhow::Result<()>` works.
///
/// **Batch consumers.** A function whose parameter is `&[kq::Message]` or
/// `Vec<kq::Json<T>>` runs once per batch of up to `Batch.Size` messages (100 by default),
/// handed over once full or after `Batch.Wait` (10 ms); beside its batch it may take
/// `&kq::State<S>` only. It returns what a single consumer returns, which fails the whole
/// batch, or `Result<(), kq::BatchError>`, whose [`BatchError::at`] says which message
/// failed, so that those before it are done and only it and those after it run again. Each
/// message of a batch keeps every promise a single message has: per-key order, gap-free
/// commits, the error policy (a message out of retries goes through it alone), the drain on
/// revoke and stop. See `docs/semantics.md`.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Payment {
///     order: String,
/// }
///
/// #[kq::consumer(conf = "KqConsumerConf", batch_size = 500)]
/// async fn index(payments: Vec<kq::Json<Payment>>) -> Result<(), kq::BatchError> {
///     for (i, kq::Json(payment)) in payments.iter().enumerate() {
///         if payment.order.is_empty() {
///             return Err(kq::BatchError::at(i, "a payment without an order"));
///         }
///     }
///     Ok(())
/// }
/// ```
///
/// Arguments: `conf = "Key"` (required), `name = "..."` (the consumer's name in logs and
/// metrics; the function's name by default), `crate = "path"` (when `kq` is renamed), the
/// error policy, which overrides the conf's keys of the same meaning:
/// `retry_attempts = 5` (`Retry.Attempts`), `dead_letter_topic = "payments-dlq"`
/// (`DeadLetterTopic`), `force_commit = false` (`ForceCommit`), and for a batch consumer
/// `batch_size = 500` (`Batch.Size`) and `batch_wait = "50ms"` (`Batch.Wait`).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Payment {
///     order: String,
/// }
///
/// #[kq::consumer(conf = "KqConsumerConf")]
/// async fn payment_success(msg: &kq::Message, kq::Json(payment): kq::Json<Payment>) {
///     println!("{} at offset {}", payment.order, msg.offset());
/// }
/// ```
///
/// What it expands to, roughly:
///
/// ```ignore
/// async fn payment_success(key: &str, value: &str) -> anyhow::Result<()> { /* as written */ }
///
/// const _: () = {
///     fn __kq_handler<'a>(msg: &'a Message, ctx: &'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>> {
///         Box::pin(async move {
///             let key = key_str(msg)?;
///             let value = value_str(msg)?;
///             payment_success(key, value).await.into_handler_result()
///         })
///     }
///     inventory::submit! {
///         ConsumerRegistration { name: "payment_success", conf: "KqConsumerConf", handler: __kq_handler, /* ... */ }
///     }
/// };
/// ```
///
/// The attribute goes on a free function: the registration beside it calls the function by
/// its name, which an associated function in an `impl` block does not have in its module, and
/// a registration cannot sit in an `impl` block. Such a function does not compile (the
/// compiler says that `consume` is not found, and that `const` items there need a name), nor
/// does one that is not `async`, is generic, takes `self`, `&mut` or `String`, or names no
/// `conf`:
///
/// ```compile_fail
/// #[kq::consumer(conf = "KqConsumerConf")]
/// fn not_async(key: &str, value: &str) {}
/// ```
pub use kq_macros::consumer;

/// Lets the runtime find the [`KqConf`] and [`PusherConf`] fields of the service's config
/// struct by key.
///
/// Derive it next to `serde::Deserialize` on a struct with named fields. A field is found by
/// its key in the file, honouring `#[serde(rename = "...")]` and
/// `#[serde(rename_all = "...")]`, or by its Rust name. Any other fields are the
/// application's own. `#[kq(crate = "path")]` names a renamed `kq` dependency.
///
/// A block the file may leave out is an `Option<KqConf>` (or `Option<PusherConf>`) field: when
/// the file has no such block, the consumer whose `conf` names it is not started (the start
/// logs it, and `--check` lists it as not started), and when it has one, it is validated and
/// used as any other. A `KqConf` or `PusherConf` field cannot be `#[serde(flatten)]`, and the
/// derive refuses one: the runtime finds a block by its key, which a flattened field does not
/// have, and the flattened keys would mix with the file's top level, where go-zero's `Name`
/// and `Log` are the service's own. A flattened field of another type stays the
/// application's, and the derive does not look inside it.
///
/// ```
/// #[derive(serde::Deserialize, kq::KqConfig)]
/// #[serde(rename_all = "PascalCase")]
/// struct Config {
///     name: String,
///     kq_pusher_conf: kq::PusherConf,
///     kq_consumer_conf: kq::KqConf,
/// }
/// # use kq::KqConfig as _;
/// # let config: Config = serde_json::from_str(r#"{"Name": "mq",
/// #   "KqPusherConf": {"Brokers": ["embedded"], "Topic": "t"},
/// #   "KqConsumerConf": {"Brokers": ["embedded"], "Group": "g", "Topic": "t"}}"#).unwrap();
/// assert!(config.kq_conf("KqConsumerConf").is_some());
/// assert!(config.kq_conf("kq_consumer_conf").is_some());
/// assert!(config.pusher_conf("KqPusherConf").is_some());
/// ```
pub use kq_macros::KqConfig;

/// Generates `fn main` for a kq service.
///
/// `kq::main!(Config)` or `kq::main!(Config, ServiceContext::new)`, where `Config` derives
/// `Deserialize` and [`KqConfig`], and the second argument is a `fn(&Config) -> S` or a
/// `fn(&Config) -> Result<S, E>` (`E: Display`) building the state that handlers read
/// through [`State<S>`]. It runs inside the Tokio runtime, so it may spawn tasks.
///
/// The generated `main`:
/// 1. parses `-f <file>` (default `etc/mq.yaml`, as go-zero services have it);
/// 2. loads the file (YAML, or JSON/TOML by extension), validates every `KqConf` block, and
///    matches every consumer to its block and its `State<S>` parameters to the state's type;
/// 3. builds the state and starts every registered [`consumer`];
/// 4. runs until SIGINT or SIGTERM, then stops gracefully (a second signal exits at once).
///
/// A missing or malformed file, a wrong type or value, a consumer naming a conf that the
/// config lacks (with the key it is likely a typo of), two consumers with one name or on one
/// conf, or a consumer taking a `State<S>` of another type than the state's (found before the
/// state is built, and by `--check` too): one line naming the file and the key on stderr,
/// exit code 2. A failure while running: exit code 1. A graceful stop: exit code 0.
///
/// What it expands to:
///
/// ```ignore
/// fn main() -> std::process::ExitCode {
///     kq::__private::run_main::<Config, _>(|config| Ok(ServiceContext::new(config)))
/// }
/// ```
#[macro_export]
macro_rules! main {
    ($config:ty $(,)?) => {
        $crate::main!($config, |_: &$config| ());
    };
    ($config:ty, $state:expr $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            // Named first, so that a config struct without the derive is reported here, on
            // the type, and not as a bound of the function below.
            let _ = <$config as $crate::__private::KqConfig>::kq_fields;
            $crate::__private::run_main::<$config, _>(|config: &$config| {
                #[allow(unused_imports)]
                use $crate::__private::state_kind::{PlainState as _, ResultState as _};
                let state = ($state)(config);
                (&&state).kq_state_kind().into_state(state)
            })
        }
    };
}

/// The paths generated code uses: kq-core's, in one place. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use kq_core::__private::*;
}

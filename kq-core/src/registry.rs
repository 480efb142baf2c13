//! The handlers that `#[kq::consumer]` registered, and how a config struct names its blocks.

use std::any::Any;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::batch::{BatchError, BatchHandler, Rejected};
use crate::conf::{KqConf, PusherConf};
use crate::handler::{BoxFuture, Handler, HandlerContext, HandlerError};
use crate::message::Message;

/// The generated entry point of a registered consumer of single messages.
pub type HandlerFn =
    for<'a> fn(&'a Message, &'a HandlerContext) -> BoxFuture<'a, Result<(), HandlerError>>;

/// The generated entry point of a registered batch consumer (see [`BatchHandler`]).
pub type BatchHandlerFn = for<'a> fn(
    &'a [Message],
    &'a HandlerContext,
    &mut Vec<Rejected>,
) -> BoxFuture<'a, Result<(), BatchError>>;

/// How a registered consumer takes its messages.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// One message per call.
    Message(HandlerFn),
    /// A batch of messages per call.
    Batch(BatchHandlerFn),
}

/// One `#[kq::consumer]` function, as submitted to the registry at compile time.
#[derive(Debug)]
pub struct ConsumerRegistration {
    /// The consumer's name (the function's, unless `name = "..."` says otherwise).
    pub name: &'static str,
    /// The config key of the `KqConf` it consumes with.
    pub conf: &'static str,
    /// Where the function is, for error messages: `module::path`.
    pub module_path: &'static str,
    /// Source file of the function.
    pub file: &'static str,
    /// Source line of the function.
    pub line: u32,
    /// Runs the function for one message, or for a batch.
    pub handler: Entry,
    /// Checks the parameters against the service state once, at startup.
    pub check: fn(&HandlerContext) -> Result<(), String>,
    /// Whether a parameter reads the message's headers (`FromMessage::READS_HEADERS`).
    pub reads_headers: fn() -> bool,
    /// Whether a parameter is the key or the value as `&str`.
    pub reads_text: bool,
    /// The error policy given in the attribute, which overrides the YAML block's.
    pub policy: PolicyOverrides,
}

/// Error-policy settings written in `#[kq::consumer(...)]`. Set ones override the consumer's
/// `KqConf`: the handler's author knows whether it is safe to skip a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    /// `retry_attempts = N`: `Retry.Attempts`.
    pub retry_attempts: Option<u32>,
    /// `dead_letter_topic = "..."`: `DeadLetterTopic`.
    pub dead_letter_topic: Option<&'static str>,
    /// `force_commit = bool`: `ForceCommit`.
    pub force_commit: Option<bool>,
    /// `batch_size = N`: `Batch.Size`.
    pub batch_size: Option<usize>,
    /// `batch_wait = "10ms"`: `Batch.Wait`.
    pub batch_wait: Option<Duration>,
}

impl PolicyOverrides {
    /// `conf` with these settings applied.
    pub fn apply(&self, mut conf: KqConf) -> KqConf {
        if let Some(attempts) = self.retry_attempts {
            conf.retry.attempts = attempts;
        }
        if let Some(topic) = self.dead_letter_topic {
            conf.dead_letter_topic = topic.to_owned();
        }
        if let Some(force_commit) = self.force_commit {
            conf.force_commit = force_commit;
        }
        if let Some(size) = self.batch_size {
            conf.batch.size = size;
        }
        if let Some(wait) = self.batch_wait {
            conf.batch.wait = wait;
        }
        conf
    }
}

inventory::collect!(ConsumerRegistration);

impl ConsumerRegistration {
    /// Every consumer registered in this binary, sorted by name (then by where it is).
    pub fn all() -> Vec<&'static ConsumerRegistration> {
        let mut all: Vec<_> = inventory::iter::<ConsumerRegistration>().collect();
        all.sort_by_key(|r| (r.name, r.module_path, r.file, r.line));
        all
    }

    /// The registered consumer with this name (the first in [`ConsumerRegistration::all`]'s
    /// order, should two have it, which a service refuses to start with).
    pub fn find(name: &str) -> Option<&'static ConsumerRegistration> {
        Self::all().into_iter().find(|r| r.name == name)
    }

    /// The consumer's configuration: its `KqConf` with the attribute's policy applied.
    pub fn conf(&self, conf: &KqConf) -> KqConf {
        self.policy.apply(conf.clone())
    }

    /// Whether the consumer takes a batch of messages per call.
    pub fn takes_batches(&self) -> bool {
        matches!(self.handler, Entry::Batch(_))
    }

    /// Binds the function to the service state, as a [`Handler`] or a [`BatchHandler`].
    pub fn bind(&'static self, ctx: HandlerContext) -> Result<RegisteredHandler, String> {
        (self.check)(&ctx).map_err(|e| format!("{}: {e}", self.located()))?;
        Ok(RegisteredHandler {
            registration: self,
            ctx,
        })
    }

    /// The consumer for error messages: its name and where it is, `consumer `name` (file:line)`.
    pub(crate) fn located(&self) -> String {
        format!("consumer `{}` ({}:{})", self.name, self.file, self.line)
    }
}

/// A registered consumer bound to the service state.
#[derive(Debug, Clone)]
pub struct RegisteredHandler {
    registration: &'static ConsumerRegistration,
    ctx: HandlerContext,
}

impl RegisteredHandler {
    /// The registration it came from.
    pub fn registration(&self) -> &'static ConsumerRegistration {
        self.registration
    }
}

impl Handler for RegisteredHandler {
    fn handle<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), HandlerError>> {
        match self.registration.handler {
            Entry::Message(handler) => handler(msg, &self.ctx),
            // `Queue::registered` runs a batch consumer with `handle_batch`.
            Entry::Batch(handler) => {
                let mut rejected = Vec::new();
                let batch = handler(std::slice::from_ref(msg), &self.ctx, &mut rejected);
                Box::pin(async move {
                    if let Some(rejected) = rejected.pop() {
                        return Err(rejected.error);
                    }
                    batch.await.map_err(|e| e.into_parts().1)
                })
            }
        }
    }

    fn reads_headers(&self) -> bool {
        (self.registration.reads_headers)()
    }

    fn reads_text(&self) -> bool {
        self.registration.reads_text
    }
}

impl BatchHandler for RegisteredHandler {
    fn handle_batch<'a>(
        &'a self,
        msgs: &'a [Message],
        rejected: &mut Vec<Rejected>,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        match self.registration.handler {
            Entry::Batch(handler) => handler(msgs, &self.ctx, rejected),
            // `Queue::registered` runs a consumer of single messages with `handle`: here
            // each message runs on its own, in order, until one fails.
            Entry::Message(handler) => Box::pin(async move {
                for (index, msg) in msgs.iter().enumerate() {
                    handler(msg, &self.ctx)
                        .await
                        .map_err(|e| BatchError::with_error(index, e))?;
                }
                Ok(())
            }),
        }
    }

    fn reads_headers(&self) -> bool {
        (self.registration.reads_headers)()
    }
}

/// A config struct whose `KqConf` and `PusherConf` fields the runtime can find by key.
///
/// Derive it with `#[derive(kq::KqConfig)]` next to `serde::Deserialize`; the derive knows
/// each field's serde name (honouring `rename` and `rename_all`) and its Rust name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a kq config struct",
    label = "not a `KqConfig`",
    note = "derive it next to `serde::Deserialize`: `#[derive(serde::Deserialize, kq::KqConfig)]`"
)]
pub trait KqConfig: serde::de::DeserializeOwned + Send + Sync + 'static {
    /// Every field, by serde name and Rust name.
    fn kq_fields(&self) -> Vec<ConfigField<'_>>;

    /// The `KqConf` under this key (serde name or Rust field name): a `KqConf` field, or an
    /// `Option<KqConf>` one whose block the file has.
    fn kq_conf(&self, key: &str) -> Option<&KqConf> {
        block::<KqConf>(self.find_field(key)?).flatten()
    }

    /// The `PusherConf` under this key (serde name or Rust field name): a `PusherConf` field,
    /// or an `Option<PusherConf>` one whose block the file has.
    fn pusher_conf(&self, key: &str) -> Option<&PusherConf> {
        block::<PusherConf>(self.find_field(key)?).flatten()
    }

    /// The field under this key, whatever its type.
    fn find_field(&self, key: &str) -> Option<&dyn Any> {
        self.kq_fields()
            .into_iter()
            .find(|f| f.serde_name == key || f.rust_name == key)
            .map(|f| f.value)
    }

    /// Checks every `KqConf` and `PusherConf` block for values that deserialize but cannot
    /// work; each problem names `Block.Key`.
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for field in self.kq_fields() {
            let invalid = if let Some(conf) = block::<KqConf>(field.value) {
                conf.and_then(|conf| conf.validate().err())
            } else if let Some(conf) = block::<PusherConf>(field.value) {
                conf.and_then(|conf| conf.validate().err())
            } else {
                None
            };
            if let Some(e) = invalid {
                problems.push(format!("`{}.{}` {}", field.serde_name, e.key, e.reason));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Every `KqConf` field, and every `Option<KqConf>` one whose block the file has, by
    /// serde name.
    fn kq_confs(&self) -> BTreeMap<&'static str, &KqConf> {
        self.kq_fields()
            .into_iter()
            .filter_map(|f| Some((f.serde_name, block::<KqConf>(f.value)??)))
            .collect()
    }
}

/// A field's value as a config block of type `T`: `Some(Some(_))` for a `T`, or an
/// `Option<T>` whose block the file has, `Some(None)` for an `Option<T>` whose block it lacks,
/// `None` for a field of another type.
pub(crate) fn block<T: Any>(value: &dyn Any) -> Option<Option<&T>> {
    if let Some(block) = value.downcast_ref::<T>() {
        return Some(Some(block));
    }
    value.downcast_ref::<Option<T>>().map(Option::as_ref)
}

/// One field of a [`KqConfig`] struct.
pub struct ConfigField<'a> {
    /// The key it has in the file.
    pub serde_name: &'static str,
    /// Its name in Rust.
    pub rust_name: &'static str,
    /// The value.
    pub value: &'a dyn Any,
}

impl std::fmt::Debug for ConfigField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigField")
            .field("serde_name", &self.serde_name)
            .field("rust_name", &self.rust_name)
            .finish()
    }
}

//! What runs for each message: the [`Handler`] trait, the parameters a `#[kq::consumer]`
//! function may take ([`FromMessage`]), and what it may return ([`IntoHandlerResult`]).

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;

/// A boxed, `Send` future, as handlers return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler did not finish a message. Its text is what logs and dead letters carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    kind: HandlerErrorKind,
    text: String,
}

/// The broad reason a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// The handler returned an error.
    Failed,
    /// The handler panicked.
    Panicked,
    /// A parameter could not be taken from the message (bad UTF-8, undecodable JSON).
    Decode,
}

impl HandlerError {
    /// An error the handler returned; the alternate form is used so that error chains (such
    /// as `anyhow`'s) keep their causes.
    pub fn failed(error: impl fmt::Display) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Failed,
            text: format!("{error:#}"),
        }
    }

    /// A message whose payload or key could not be decoded into a parameter.
    pub fn decode(error: impl fmt::Display) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Decode,
            text: error.to_string(),
        }
    }

    pub(crate) fn panicked(payload: &(dyn Any + Send)) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Panicked,
            text: format!("handler panicked: {}", panic_detail(payload)),
        }
    }

    /// The broad reason.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for HandlerError {}

/// Runs for every message of a queue.
///
/// `#[kq::consumer]` implements it for annotated functions; implement it directly to build a
/// [`Queue`](crate::Queue) in code, as go-queue's `ConsumeHandler`.
///
/// ```
/// use kq_core::{BoxFuture, Handler, HandlerError, Message};
///
/// struct Print;
///
/// impl Handler for Print {
///     fn handle<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), HandlerError>> {
///         Box::pin(async move {
///             let value = msg.value_str().map_err(HandlerError::decode)?;
///             println!("{}: {value}", msg.offset());
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. An `Err` goes to the queue's error policy.
    fn handle<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Whether `handle` may read [`Message::headers`]. A handler that never does can return
    /// `false`: its queue then skips reading headers from librdkafka, which costs an
    /// allocation per message, unless something else needs them (see
    /// [`Message::headers`]).
    fn reads_headers(&self) -> bool {
        true
    }

    /// Whether `handle` reads the key or the value as text ([`Message::key_str`],
    /// [`Message::value_str`]). A handler that does can return `true`: its queue then checks
    /// them as UTF-8 while it copies them out of librdkafka, on the thread whose cache still
    /// holds them, and those calls skip the check. A `#[kq::consumer]` function with `&str`
    /// parameters says so.
    fn reads_text(&self) -> bool {
        false
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn handle<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(msg)
    }

    fn reads_headers(&self) -> bool {
        (**self).reads_headers()
    }

    fn reads_text(&self) -> bool {
        (**self).reads_text()
    }
}

/// What extractors see besides the message: the application state built by `kq::main!`.
#[derive(Clone)]
pub struct HandlerContext {
    /// A `State<S>`, which a `&State<S>` parameter borrows; `None` in a context that only
    /// knows the state's type, for checking handlers against it.
    state: Option<Arc<dyn Any + Send + Sync>>,
    /// `S`, kept so that a `State<S>` parameter is checked without a call through `state`'s
    /// vtable for every message.
    state_type_id: TypeId,
    state_type: &'static str,
}

impl HandlerContext {
    /// A context holding `state`, which `State<S>` parameters read.
    pub fn new<S: Send + Sync + 'static>(state: Arc<S>) -> Self {
        HandlerContext {
            state: Some(Arc::new(State(state))),
            state_type_id: TypeId::of::<S>(),
            state_type: std::any::type_name::<S>(),
        }
    }

    /// A context that knows the state's type and holds no state: binding handlers to it
    /// checks their `State<S>` parameters without building the state, which may connect to
    /// services or spawn work. A handler run with it finds no state.
    pub(crate) fn of_type<S: Send + Sync + 'static>() -> Self {
        HandlerContext {
            state: None,
            state_type_id: TypeId::of::<S>(),
            state_type: std::any::type_name::<S>(),
        }
    }

    /// A context with no application state (`()`).
    pub fn empty() -> Self {
        HandlerContext::new(Arc::new(()))
    }

    /// The name of the state's type, for error messages.
    pub fn state_type(&self) -> &'static str {
        self.state_type
    }

    pub(crate) fn state<S: Send + Sync + 'static>(&self) -> Option<&State<S>> {
        let state = self.state.as_ref()?;
        if !self.holds::<S>() {
            return None;
        }
        let state = Arc::as_ptr(state).cast::<State<S>>();
        // SAFETY: `new` put a `State<S>` behind `state`, and `state_type_id` is `S`, so this
        // is the reference `downcast_ref::<State<S>>` would give, borrowed from `self`.
        Some(unsafe { &*state })
    }

    fn holds<S: 'static>(&self) -> bool {
        self.state_type_id == TypeId::of::<S>()
    }

    /// Whether the state is an `S`, for a `State<S>` parameter; the mismatch said otherwise.
    pub(crate) fn check_state<S: Send + Sync + 'static>(&self) -> Result<(), String> {
        if self.holds::<S>() {
            Ok(())
        } else {
            Err(state_mismatch::<S>(self))
        }
    }
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("state_type", &self.state_type)
            .finish()
    }
}

/// A parameter type of a `#[kq::consumer]` function, taken from each message.
///
/// Implemented for [`&Message`](Message), [`&State<S>`](State) (and `State<S>` by value) and
/// [`Json<T>`]. Two `&str`
/// parameters, go-queue's `(key, value)`, are handled by the macro itself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a kq consumer",
    label = "unsupported parameter type",
    note = "a consumer takes `key: &str, value: &str`, `&kq::Message`, `&kq::State<S>` or `kq::Json<T>`"
)]
pub trait FromMessage<'a>: Sized {
    /// Whether `from_message` hands on or reads the message's headers; when no parameter of a
    /// consumer does, its queue skips reading them (see [`Handler::reads_headers`]).
    const READS_HEADERS: bool = true;

    /// Takes the parameter from the message. An `Err` goes to the error policy as a decode error.
    fn from_message(msg: &'a Message, ctx: &'a HandlerContext) -> Result<Self, HandlerError>;

    /// Checked once at startup, so that a mismatch (a `State<S>` of the wrong type) stops the
    /// service before any message is read rather than failing every message.
    fn check(_ctx: &HandlerContext) -> Result<(), String> {
        Ok(())
    }
}

impl<'a> FromMessage<'a> for &'a Message {
    fn from_message(msg: &'a Message, _: &'a HandlerContext) -> Result<Self, HandlerError> {
        Ok(msg)
    }
}

/// The application state that `kq::main!` built (the go-zero `ServiceContext`), shared by all
/// handlers. It derefs to the state.
///
/// Take it as `&kq::State<S>`: that borrows the queue's own for the handler's run. Taken by
/// value, it is a clone of the state's `Arc` for every message, counted on one cache line that
/// the processors on every core write: the more cores, the dearer. Clone it, or its `Arc`, to
/// keep it past the handler, for a task the handler spawns.
///
/// ```
/// # struct ServiceContext { greeting: String }
/// #[kq::consumer(conf = "KqConsumerConf")]
/// async fn greet(svc: &kq::State<ServiceContext>, key: &str, value: &str) {
///     println!("{} {key}={value}", svc.greeting);
/// }
/// ```
pub struct State<S>(pub Arc<S>);

impl<S> Deref for State<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> Clone for State<S> {
    fn clone(&self) -> Self {
        State(self.0.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for State<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&self.0).finish()
    }
}

impl<'a, S: Send + Sync + 'static> FromMessage<'a> for &'a State<S> {
    const READS_HEADERS: bool = false;

    fn from_message(_: &'a Message, ctx: &'a HandlerContext) -> Result<Self, HandlerError> {
        ctx.state::<S>().ok_or_else(|| {
            // `check` refuses this at startup; reaching it means a queue was built by hand.
            HandlerError::decode(state_mismatch::<S>(ctx))
        })
    }

    fn check(ctx: &HandlerContext) -> Result<(), String> {
        <State<S> as FromMessage<'a>>::check(ctx)
    }
}

impl<'a, S: Send + Sync + 'static> FromMessage<'a> for State<S> {
    const READS_HEADERS: bool = false;

    fn from_message(msg: &'a Message, ctx: &'a HandlerContext) -> Result<Self, HandlerError> {
        <&State<S>>::from_message(msg, ctx).cloned()
    }

    fn check(ctx: &HandlerContext) -> Result<(), String> {
        ctx.check_state::<S>()
    }
}

pub(crate) fn state_mismatch<S>(ctx: &HandlerContext) -> String {
    format!(
        "the handler takes `State<{}>` but the service state is `{}`",
        std::any::type_name::<S>(),
        ctx.state_type()
    )
}

/// A message value decoded from JSON. An undecodable value is a decode error for the
/// error policy, never a crash.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Payment { order: String, cents: u64 }
///
/// #[kq::consumer(conf = "KqConsumerConf")]
/// async fn paid(kq::Json(payment): kq::Json<Payment>) -> Result<(), std::io::Error> {
///     println!("{} paid {}", payment.order, payment.cents);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<'a, T: serde::Deserialize<'a>> FromMessage<'a> for Json<T> {
    const READS_HEADERS: bool = false;

    fn from_message(msg: &'a Message, _: &'a HandlerContext) -> Result<Self, HandlerError> {
        serde_json::from_slice(msg.value().unwrap_or_default())
            .map(Json)
            .map_err(|e| HandlerError::decode(format!("value is not valid JSON: {e}")))
    }
}

/// What a `#[kq::consumer]` function may return: `()` or `Result<(), E>` with `E: Display`.
#[diagnostic::on_unimplemented(
    message = "a kq consumer must return `()` or `Result<(), E>` where `E: Display`, not `{Self}`",
    label = "unsupported return type"
)]
pub trait IntoHandlerResult {
    /// Converts the return value.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: fmt::Display> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(HandlerError::failed)
    }
}

/// Support for the code `#[kq::consumer]` generates, re-exported in `__private`.
pub(crate) mod generated {
    use super::*;

    /// go-queue's `key` parameter: the key as text, `""` when there is none.
    pub fn key_str(msg: &Message) -> Result<&str, HandlerError> {
        msg.key_str()
            .map_err(|e| HandlerError::decode(format!("key is not valid UTF-8: {e}")))
    }

    /// go-queue's `value` parameter: the value as text, `""` for a tombstone.
    pub fn value_str(msg: &Message) -> Result<&str, HandlerError> {
        msg.value_str()
            .map_err(|e| HandlerError::decode(format!("value is not valid UTF-8: {e}")))
    }
}

/// What a panic said, when it said it with a string.
pub(crate) fn panic_detail(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload")
}

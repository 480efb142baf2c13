//! What runs for each batch of a batch consumer: the [`BatchHandler`] trait, the batch
//! parameter a `#[kq::consumer]` function may take ([`FromBatch`]: `&[kq::Message]` or
//! `Vec<kq::Json<T>>`), the state it may take beside it ([`FromContext`]), and how it says
//! which of its messages failed ([`BatchError`]).

use std::fmt;

use crate::handler::{BoxFuture, HandlerContext, HandlerError, Json, State};
use crate::message::Message;

/// Runs for every batch of a batch consumer's messages.
///
/// `#[kq::consumer]` implements it for a function that takes `&[kq::Message]` or
/// `Vec<kq::Json<T>>`; implement it directly to build a [`Queue`](crate::Queue) with
/// [`Queue::batch`](crate::Queue::batch).
///
/// ```
/// use kq_core::{BatchError, BatchHandler, BoxFuture, Message, Rejected};
///
/// struct Count;
///
/// impl BatchHandler for Count {
///     fn handle_batch<'a>(
///         &'a self,
///         msgs: &'a [Message],
///         _rejected: &mut Vec<Rejected>,
///     ) -> BoxFuture<'a, Result<(), BatchError>> {
///         Box::pin(async move {
///             println!("{} messages, the first at offset {}", msgs.len(), msgs[0].offset());
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles `msgs` (never empty), in order. A message the handler cannot take at all, a
    /// value that does not decode, is left out of what it runs and pushed to `rejected`
    /// before the future is returned: kq settles it on its own, through the error policy. An
    /// `Err` says which message failed; those before it are done (see [`BatchError`]).
    fn handle_batch<'a>(
        &'a self,
        msgs: &'a [Message],
        rejected: &mut Vec<Rejected>,
    ) -> BoxFuture<'a, Result<(), BatchError>>;

    /// Whether the handler may read [`Message::headers`]; see
    /// [`Handler::reads_headers`](crate::Handler::reads_headers).
    fn reads_headers(&self) -> bool {
        true
    }
}

impl<H: BatchHandler + ?Sized> BatchHandler for std::sync::Arc<H> {
    fn handle_batch<'a>(
        &'a self,
        msgs: &'a [Message],
        rejected: &mut Vec<Rejected>,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        (**self).handle_batch(msgs, rejected)
    }

    fn reads_headers(&self) -> bool {
        (**self).reads_headers()
    }
}

/// A message of a batch that its handler could not take: where it is in the batch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its index in the batch.
    pub index: usize,
    /// Why it could not be taken; a decode error.
    pub error: HandlerError,
}

/// How a batch failed: the messages before [`index`](BatchError::index) are done, the one
/// at it failed, and those after it did not run. kq retries from the failed message on.
///
/// A batch consumer returns `Result<(), kq::BatchError>` to say which message failed;
/// `anyhow::Result<()>` or any `Result<(), E: Display>` fails the whole batch, as
/// [`BatchError::all`] does. With `?`, any `std::error::Error` fails the whole batch.
///
/// ```
/// # struct Payment { order: String }
/// # async fn insert(_: &Payment) -> Result<(), std::io::Error> { Ok(()) }
/// #[kq::consumer(conf = "KqConsumerConf", batch_size = 500)]
/// async fn index(payments: Vec<kq::Json<Payment>>) -> Result<(), kq::BatchError> {
///     for (i, kq::Json(payment)) in payments.iter().enumerate() {
///         insert(payment).await.map_err(|e| kq::BatchError::at(i, e))?;
///     }
///     Ok(())
/// }
/// # impl<'de> serde::Deserialize<'de> for Payment {
/// #     fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
/// #         String::deserialize(d).map(|order| Payment { order })
/// #     }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    index: usize,
    error: HandlerError,
}

impl BatchError {
    /// The messages before `index` (in what the handler was given) are done; the one at
    /// `index` failed with `error`; the rest did not run.
    pub fn at(index: usize, error: impl fmt::Display) -> Self {
        BatchError {
            index,
            error: HandlerError::failed(error),
        }
    }

    /// The whole batch failed: no message is known to be done. kq takes the first to be the
    /// one that failed.
    pub fn all(error: impl fmt::Display) -> Self {
        BatchError::at(0, error)
    }

    /// A whole-batch failure with an error already made.
    pub(crate) fn whole(error: HandlerError) -> Self {
        BatchError::with_error(0, error)
    }

    /// A failure at `index` with an error already made, whose kind it keeps.
    pub(crate) fn with_error(index: usize, error: HandlerError) -> Self {
        BatchError { index, error }
    }

    /// The first message not done.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Why it failed.
    pub fn error(&self) -> &HandlerError {
        &self.error
    }

    /// Takes the error apart.
    pub fn into_parts(self) -> (usize, HandlerError) {
        (self.index, self.error)
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message {} of the batch failed: {}",
            self.index, self.error
        )
    }
}

// Not `std::error::Error`, so that `?` turns any error into a whole-batch failure.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for BatchError {
    fn from(error: E) -> Self {
        BatchError::all(error)
    }
}

/// The batch parameter of a batch consumer, taken from the messages of a batch.
///
/// Implemented for `&[kq::Message]` and `Vec<kq::Json<T>>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the batch of a kq consumer",
    label = "unsupported batch type",
    note = "a batch consumer takes `&[kq::Message]` or `Vec<kq::Json<T>>`"
)]
pub trait FromBatch<'a>: Sized {
    /// Whether the parameter hands on the messages' headers (see
    /// [`BatchHandler::reads_headers`]).
    const READS_HEADERS: bool = true;

    /// Takes the parameter from `msgs`. A message that cannot be taken is pushed to
    /// `rejected` and left out; then `positions` gets, for each element taken, its index in
    /// `msgs`. It stays empty when every message is taken, in order.
    fn from_batch(
        msgs: &'a [Message],
        rejected: &mut Vec<Rejected>,
        positions: &mut Vec<usize>,
    ) -> Self;
}

impl<'a> FromBatch<'a> for &'a [Message] {
    fn from_batch(msgs: &'a [Message], _: &mut Vec<Rejected>, _: &mut Vec<usize>) -> Self {
        msgs
    }
}

impl<'a, T: serde::Deserialize<'a>> FromBatch<'a> for Vec<Json<T>> {
    const READS_HEADERS: bool = false;

    fn from_batch(
        msgs: &'a [Message],
        rejected: &mut Vec<Rejected>,
        positions: &mut Vec<usize>,
    ) -> Self {
        let mut taken = Vec::with_capacity(msgs.len());
        for (index, msg) in msgs.iter().enumerate() {
            match serde_json::from_slice(msg.value().unwrap_or_default()) {
                Ok(value) => {
                    if !rejected.is_empty() {
                        positions.push(index);
                    }
                    taken.push(Json(value));
                }
                Err(e) => {
                    if rejected.is_empty() {
                        // The elements so far were taken in order: their positions are
                        // their indices.
                        positions.extend(0..index);
                    }
                    rejected.push(Rejected {
                        index,
                        error: HandlerError::decode(format!("value is not valid JSON: {e}")),
                    });
                }
            }
        }
        taken
    }
}

/// A parameter of a batch consumer besides its batch: the service state, `&kq::State<S>` or
/// `kq::State<S>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a parameter of a kq batch consumer",
    label = "unsupported parameter type",
    note = "a batch consumer takes its batch (`&[kq::Message]` or `Vec<kq::Json<T>>`) and may take `&kq::State<S>`"
)]
pub trait FromContext<'a>: Sized {
    /// Takes the parameter from the handler's context.
    fn from_context(ctx: &'a HandlerContext) -> Result<Self, HandlerError>;

    /// Checked once at startup (a `State<S>` of the wrong type).
    fn check(ctx: &HandlerContext) -> Result<(), String>;
}

impl<'a, S: Send + Sync + 'static> FromContext<'a> for &'a State<S> {
    fn from_context(ctx: &'a HandlerContext) -> Result<Self, HandlerError> {
        ctx.state::<S>()
            .ok_or_else(|| HandlerError::decode(crate::handler::state_mismatch::<S>(ctx)))
    }

    fn check(ctx: &HandlerContext) -> Result<(), String> {
        ctx.check_state::<S>()
    }
}

impl<'a, S: Send + Sync + 'static> FromContext<'a> for State<S> {
    fn from_context(ctx: &'a HandlerContext) -> Result<Self, HandlerError> {
        <&State<S>>::from_context(ctx).cloned()
    }

    fn check(ctx: &HandlerContext) -> Result<(), String> {
        ctx.check_state::<S>()
    }
}

/// Support for the code `#[kq::consumer]` generates for a batch consumer, re-exported in
/// `__private`.
pub(crate) mod generated {
    use super::*;
    use crate::handler::IntoHandlerResult;

    /// A batch consumer's result, with the failed message's index in the batch the consumer
    /// was given: `positions` maps the consumer's elements to it when some were rejected. An
    /// index past the consumer's elements fails the whole batch, as no message is known
    /// done.
    pub fn batch_result(
        result: Result<(), BatchError>,
        positions: &[usize],
        len: usize,
    ) -> Result<(), BatchError> {
        result.map_err(|mut error| {
            error.index = if error.index >= len {
                0
            } else if positions.is_empty() {
                error.index
            } else {
                positions[error.index]
            };
            error
        })
    }

    /// How a batch consumer's return value becomes a batch result: `Result<(), BatchError>`
    /// as it is, anything else as a single consumer's would, a failure of the whole batch.
    /// Method resolution on `(&&value).kq_batch_kind()` picks [`ExactKind`] for a
    /// `Result<(), BatchError>` and [`WholeKind`] for anything else.
    #[doc(hidden)]
    pub mod batch_kind {
        use super::*;

        pub struct ExactTag;
        pub struct WholeTag;

        pub trait ExactKind {
            fn kq_batch_kind(&self) -> ExactTag {
                ExactTag
            }
        }
        impl ExactKind for &Result<(), BatchError> {}

        pub trait WholeKind {
            fn kq_batch_kind(&self) -> WholeTag {
                WholeTag
            }
        }
        impl<T: IntoHandlerResult> WholeKind for &&T {}

        impl ExactTag {
            pub fn into_batch_result(
                self,
                value: Result<(), BatchError>,
            ) -> Result<(), BatchError> {
                value
            }
        }

        impl WholeTag {
            pub fn into_batch_result(
                self,
                value: impl IntoHandlerResult,
            ) -> Result<(), BatchError> {
                value.into_handler_result().map_err(BatchError::whole)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::generated::batch_kind::{ExactKind as _, WholeKind as _};
    use super::generated::batch_result;
    use super::*;

    fn message(value: &str) -> Message {
        Message::new("t", 0, 0).with_value(value)
    }

    #[test]
    fn undecodable_elements_are_rejected_and_the_rest_keep_their_positions() {
        let msgs: Vec<Message> = ["1", "x", "3", "y", "5"].map(message).into();
        let (mut rejected, mut positions) = (Vec::new(), Vec::new());
        let taken = <Vec<Json<u32>>>::from_batch(&msgs, &mut rejected, &mut positions);
        assert_eq!(taken, [Json(1), Json(3), Json(5)]);
        assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(positions, [0, 2, 4]);
        // The consumer's third element failed: the batch's fifth message.
        let failed = batch_result(Err(BatchError::at(2, "no")), &positions, taken.len());
        assert_eq!(failed.unwrap_err().index(), 4);
    }

    #[test]
    fn a_batch_that_decodes_whole_needs_no_positions() {
        let msgs: Vec<Message> = ["1", "2"].map(message).into();
        let (mut rejected, mut positions) = (Vec::new(), Vec::new());
        let taken = <Vec<Json<u32>>>::from_batch(&msgs, &mut rejected, &mut positions);
        assert_eq!(taken.len(), 2);
        assert!(rejected.is_empty() && positions.is_empty());
        let failed = batch_result(Err(BatchError::at(1, "no")), &positions, 2);
        assert_eq!(failed.unwrap_err().index(), 1);
    }

    #[test]
    fn an_index_past_the_batch_fails_all_of_it() {
        let failed = batch_result(Err(BatchError::at(7, "no")), &[], 3);
        assert_eq!(failed.unwrap_err().index(), 0);
    }

    #[test]
    fn return_values_become_batch_results() {
        let exact: Result<(), BatchError> = Err(BatchError::at(3, "no"));
        let result = (&&exact).kq_batch_kind().into_batch_result(exact.clone());
        assert_eq!(result.unwrap_err().index(), 3);
        let whole: Result<(), std::io::Error> = Err(std::io::Error::other("down"));
        let result = (&&whole).kq_batch_kind().into_batch_result(whole);
        let error = result.unwrap_err();
        assert_eq!(
            (error.index(), error.error().to_string()),
            (0, "down".into())
        );
        let unit = ();
        assert!((&&unit).kq_batch_kind().into_batch_result(unit).is_ok());
    }

    #[test]
    fn question_mark_fails_the_whole_batch() {
        fn insert() -> Result<(), BatchError> {
            Err(std::io::Error::other("disk full"))?;
            Ok(())
        }
        assert_eq!(insert().unwrap_err().index(), 0);
    }
}

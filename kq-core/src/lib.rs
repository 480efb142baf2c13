//! The runtime of [kq](https://docs.rs/kq): consumer queues, the pusher, configuration, the
//! handler registry and the service group.
//!
//! Applications depend on the `kq` facade, which re-exports everything here together with
//! the macros.

#![warn(missing_docs)]

/// `println!` that a closed standard output (`--check | head`) does not panic: what the
/// binary was asked to do goes on, and its exit code still says how it ended.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod app;
pub mod batch;
pub mod broker;
pub mod conf;
pub mod error;
pub mod handler;
pub mod load;
pub mod message;
pub mod observe;
pub mod pusher;
pub mod queue;
mod registry;
pub mod service;
mod shutdown;
mod sync;
pub mod telemetry;
pub mod testing;
mod tools;
mod trace;

pub use app::registered_queues;
pub use batch::{BatchError, BatchHandler, FromBatch, FromContext, Rejected};
pub use broker::{create_topic, EmbeddedBroker};
pub use conf::{
    Acks, Assignor, BatchConf, Batcher, Compression, HoldConf, KqConf, LogConf, LogEncoding,
    LogLevel, Mechanism, Offset, Ordering, Partitioner, PusherConf, RetryConf, TelemetryConf,
};
pub use error::Error;
pub use handler::{
    BoxFuture, FromMessage, Handler, HandlerContext, HandlerError, HandlerErrorKind,
    IntoHandlerResult, Json, State,
};
pub use load::{load_config, LoadError};
pub use message::{Headers, Message};
pub use pusher::{Delivery, DeliveryFailure, Push, PushError, Pusher};
pub use queue::{dead_letter_headers, ErrorHandler, Metrics, Outcome, Queue};
pub use registry::KqConfig;
pub use service::{ServiceGroup, Shutdown};

/// Everything the code of kq's macros names, in one place, reached through the facade's own
/// `__private`. Not a public API: it changes with the macros.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde::de::DeserializeOwned;

    pub use crate::app::{run_main, state_kind};
    pub use crate::batch::generated::{batch_kind, batch_result};
    pub use crate::handler::generated::{key_str, value_str};
    pub use crate::registry::{
        BatchHandlerFn, ConfigField, ConsumerRegistration, Entry, HandlerFn, PolicyOverrides,
        RegisteredHandler,
    };
    pub use crate::{BatchError, FromBatch, FromContext, Rejected};
    pub use crate::{
        BoxFuture, FromMessage, HandlerContext, HandlerError, IntoHandlerResult, KqConfig, Message,
    };
}

/// Spawns a task on the service's Tokio runtime (`tokio::spawn`), for work a service state
/// starts beside its consumers.
pub use tokio::spawn;

/// Waits on the service's Tokio runtime (`tokio::time::sleep`).
pub use tokio::time::sleep;

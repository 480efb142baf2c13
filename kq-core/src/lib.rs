//! The runtime of [kq](https://docs.rs/kq): consumer queues, the pusher, configuration, the
//! handler registry and the service group.
//!
//! Applications depend on the `kq` facade, which re-exports everything here together with
//! the macros.

#![warn(missing_docs)]

pub mod app;
pub mod broker;
pub mod conf;
pub mod error;
pub mod handler;
pub mod load;
pub mod message;
pub mod observe;
pub mod pusher;
pub mod queue;
pub mod registry;
pub mod service;
mod shutdown;
mod sync;
pub mod telemetry;
mod trace;

pub use broker::{create_topic, EmbeddedBroker};
pub use conf::{
    Acks, Assignor, Batcher, Compression, KqConf, LogConf, LogEncoding, LogLevel, Mechanism,
    Offset, Ordering, Partitioner, PusherConf, RetryConf, TelemetryConf,
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
pub use registry::{
    ConfigField, ConsumerRegistration, KqConfig, PolicyOverrides, RegisteredHandler,
};
pub use service::{ServiceGroup, Shutdown};

/// Crates the `kq` facade's generated code reaches through it. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use serde::de::DeserializeOwned;
}

/// Spawns a task on the service's Tokio runtime (`tokio::spawn`), for work a service state
/// starts beside its consumers.
pub use tokio::spawn;

/// Waits on the service's Tokio runtime (`tokio::time::sleep`).
pub use tokio::time::sleep;

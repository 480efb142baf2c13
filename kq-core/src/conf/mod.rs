//! The YAML configuration blocks: [`KqConf`] for a consumer queue and [`PusherConf`] for a
//! producer, with go-queue's keys and defaults.
//!
//! go-zero decodes YAML keys into Go struct fields by their exact names, so every field here is
//! renamed to go-queue's spelling (`Brokers`, `Group`, `MinBytes`, ...) and every default is
//! go-queue's own. A block copied from a go-zero service's `etc/mq.yaml` deserializes unchanged.
//!
//! One file per job: `consumer` and `pusher` hold the two blocks, `connection` the keys they
//! share, `service` go-zero's service blocks (`Log`, `Telemetry`, `DevServer`,
//! `Prometheus`), `keywords` the enumerated values, `validate` what serde cannot check,
//! `defaults` go-queue's defaults and `duration` Go's duration format.

mod connection;
mod consumer;
mod defaults;
pub mod duration;
mod keywords;
mod pusher;
mod service;
mod validate;

pub(crate) use connection::Connection;
pub use connection::EMBEDDED;
pub(crate) use consumer::MAX_COMMIT_INTERVAL;
pub use consumer::{BatchConf, HoldConf, KqConf, RetryConf};
pub use keywords::{
    Acks, Assignor, Batcher, Compression, LogEncoding, LogLevel, Mechanism, Offset, Ordering,
    Partitioner,
};
pub use pusher::PusherConf;
pub use service::{DevServerConf, LogConf, PrometheusConf, TelemetryConf};

pub use crate::error::InvalidConf;

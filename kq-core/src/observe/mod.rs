//! Operations: Prometheus metrics, health and readiness over HTTP, and go-zero's stat log.
//!
//! Nothing here costs anything until [`serve`] (or `kq::main!` with `DevServer` or
//! `Prometheus` configured) turns it on: queues started after that record every message's
//! outcome and handler time, members report their liveness, and pushers count deliveries.
//!
//! One file per job: `registry` holds the metric families, `consumer` a consumer's handles on
//! them, `tally` what processors count, `stat` go-zero's stat line, `health` liveness and
//! readiness, `server` the HTTP server, `outcome` what became of a message.

mod consumer;
mod health;
mod outcome;
mod registry;
mod server;
mod stat;
mod tally;

pub(crate) use consumer::{record_lag, ConsumerMetrics};
pub(crate) use health::MemberHealth;
pub use health::{health, Health};
pub use outcome::{Metrics, Outcome};
pub(crate) use registry::pusher_counters;
pub use registry::{enable, enabled, render_metrics};
pub use server::{serve, HEAD_READ_TIMEOUT, MAX_CONNECTIONS};
pub(crate) use tally::{Tally, SMALLEST_HANDLER_TIME_BOUND};

pub use crate::conf::{DevServerConf, PrometheusConf};

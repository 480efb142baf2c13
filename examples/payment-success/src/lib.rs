//! go-zero's payment-success consumer, ported file for file: `etc/mq.yaml`, the config, a
//! service context holding a `Pusher`, the handler in `mqs/`, and `main`.
//!
//! The service's parts are this library, so that its tests run its consumer with
//! `kq::testing`; `main.rs` runs them as a service.

pub mod config;
pub mod mqs;
pub mod svc;

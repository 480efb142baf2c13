//! go-zero's payment-success consumer, ported file for file: `etc/mq.yaml`, the config, a
//! service context holding a `Pusher`, the handler in `mqs/`, and `main`.
//!
//! Run it from this directory with `cargo run`; with `Brokers: [embedded]` it needs no Kafka.
//! It pushes a few payments at start-up and prints each one its consumer handles. Stop it
//! with Ctrl-C. Point `Brokers` at a cluster to run it for real; no code changes.

mod config;
mod mqs;
mod svc;

kq::main!(config::Config, svc::ServiceContext::new);

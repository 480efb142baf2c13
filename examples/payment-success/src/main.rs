//! The payment-success service.
//!
//! Run it from this directory with `cargo run`; with `Brokers: [embedded]` it needs no Kafka.
//! It pushes a few payments at start-up and prints each one its consumer handles. Stop it
//! with Ctrl-C. Point `Brokers` at a cluster to run it for real; no code changes.

kq::main!(
    payment_success::config::Config,
    payment_success::svc::ServiceContext::new
);

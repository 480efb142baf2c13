//! A batch sink: payments consumed in batches and written to SQLite, one transaction a batch.
//!
//! Run it from this directory with `cargo run`; with `Brokers: [embedded]` it needs no Kafka.
//! It pushes a few payments at start-up (two of them bad), writes them to `ledger.db`, and logs
//! each batch it writes. Stop it with Ctrl-C; run it again and the payments it pushes again
//! are found in the ledger already, not written twice.

mod config;
mod ledger;
mod mqs;
mod svc;

kq::main!(config::Config, svc::ServiceContext::new);

//! The service's config.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The SQLite file of the ledger, relative to the working directory.
    pub database: PathBuf,
    /// Payments pushed at start-up, to have something to consume.
    #[serde(default)]
    pub demo_payments: u32,
    /// How long each batch's transaction stays open before it commits, as a busier database
    /// would keep it (a Go duration; none by default).
    #[serde(default, deserialize_with = "kq::conf::duration::deserialize")]
    pub demo_work: Duration,
    pub kq_pusher_conf: kq::PusherConf,
    pub kq_consumer_conf: kq::KqConf,
}

//! The service's config, `internal/config/config.go` in go-zero.

#[derive(Debug, serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Payments pushed at start-up, to have something to consume.
    #[serde(default)]
    pub demo_payments: u32,
    /// The pause between two demo payments (a Go duration such as `5ms`).
    #[serde(default, deserialize_with = "kq::conf::duration::deserialize")]
    pub demo_interval: std::time::Duration,
    /// The longest a payment's handling takes: each waits a part of this that its payload
    /// picks, as a call to a downstream service would (a Go duration; none by default).
    #[serde(default, deserialize_with = "kq::conf::duration::deserialize")]
    pub demo_work: std::time::Duration,
    /// Payments of this key fail until `DemoDownFor` after the start, as when one tenant's
    /// downstream service is down (none by default).
    #[serde(default)]
    pub demo_down_key: String,
    /// How long `DemoDownKey`'s downstream is down (a Go duration).
    #[serde(default, deserialize_with = "kq::conf::duration::deserialize")]
    pub demo_down_for: std::time::Duration,
    pub kq_pusher_conf: kq::PusherConf,
    pub kq_consumer_conf: kq::KqConf,
}

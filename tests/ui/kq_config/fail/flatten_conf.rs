#[derive(serde::Deserialize, kq::KqConfig)]
struct Config {
    #[serde(flatten)]
    consumer: kq::KqConf,
    #[serde(flatten)]
    optional: Option<kq::KqConf>,
    #[serde(default, flatten)]
    pusher: kq::PusherConf,
    // The application's own flattened keys are fine.
    #[serde(flatten)]
    rest: std::collections::HashMap<String, serde_json::Value>,
}

fn main() {}

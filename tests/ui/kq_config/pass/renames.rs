use kq::KqConfig as _;

#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
struct Config {
    name: String,
    kq_pusher_conf: kq::PusherConf,
    kq_consumer_conf: kq::KqConf,
    #[serde(rename = "Refunds")]
    refund_conf: kq::KqConf,
    #[serde(flatten)]
    rest: std::collections::HashMap<String, serde_json::Value>,
}

#[derive(serde::Deserialize, kq::KqConfig)]
struct Generic<T> {
    inner: T,
    conf: kq::KqConf,
}

fn main() {
    let config: Config = serde_json::from_str(
        r#"{"Name": "mq", "Extra": 1,
            "KqPusherConf": {"Brokers": ["b:1"], "Topic": "t"},
            "KqConsumerConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "t"},
            "Refunds": {"Brokers": ["b:1"], "Group": "g", "Topic": "r"}}"#,
    )
    .unwrap();
    assert_eq!(config.name, "mq");
    assert_eq!(config.kq_conf("Refunds").unwrap().topic, "r");
    assert_eq!(config.kq_conf("refund_conf").unwrap().topic, "r");
    assert!(config.pusher_conf("KqPusherConf").is_some());
    assert!(config.rest.contains_key("Extra"));

    let generic: Generic<u8> = serde_json::from_str(
        r#"{"inner": 1, "conf": {"Brokers": ["b:1"], "Group": "g", "Topic": "t"}}"#,
    )
    .unwrap();
    assert_eq!(generic.inner, 1);
    assert!(generic.kq_conf("conf").is_some());
}

// A block that may be absent: an `Option<KqConf>` (or `Option<PusherConf>`) field is found by
// its key when the file has the block, and reads as absent when it does not.

use kq::KqConfig as _;

#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
struct Config {
    kq_consumer_conf: kq::KqConf,
    audit_conf: Option<kq::KqConf>,
    kq_pusher_conf: Option<kq::PusherConf>,
}

fn main() {
    let without: Config = serde_json::from_str(
        r#"{"KqConsumerConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "t"}}"#,
    )
    .unwrap();
    assert!(without.kq_conf("KqConsumerConf").is_some());
    assert!(without.kq_conf("AuditConf").is_none());
    assert!(without.pusher_conf("KqPusherConf").is_none());
    assert!(without.find_field("AuditConf").is_some());
    assert_eq!(without.kq_confs().len(), 1);

    let with: Config = serde_json::from_str(
        r#"{"KqConsumerConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "t"},
            "AuditConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "audit"},
            "KqPusherConf": {"Brokers": ["b:1"], "Topic": "out"}}"#,
    )
    .unwrap();
    assert_eq!(with.kq_conf("audit_conf").unwrap().topic, "audit");
    assert_eq!(with.pusher_conf("KqPusherConf").unwrap().topic, "out");
    assert_eq!(with.kq_confs().len(), 2);
}

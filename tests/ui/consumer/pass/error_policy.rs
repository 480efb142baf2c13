// The error policy written in the attribute overrides the conf's keys.

#[kq::consumer(
    conf = "Payments",
    retry_attempts = 5,
    dead_letter_topic = "payments-dlq",
    force_commit = false
)]
async fn payments(_key: &str, _value: &str) -> anyhow::Result<()> {
    Ok(())
}

#[kq::consumer(conf = "Orders")]
async fn orders(_key: &str, _value: &str) {}

fn main() {
    let payments = kq::__private::ConsumerRegistration::find("payments").unwrap();
    let conf = payments.conf(&kq::KqConf::new(["b:1"], "g", "t"));
    assert_eq!(conf.retry.attempts, 5);
    assert_eq!(conf.dead_letter_topic, "payments-dlq");
    assert!(!conf.force_commit);

    let orders = kq::__private::ConsumerRegistration::find("orders").unwrap();
    let conf = orders.conf(&kq::KqConf::new(["b:1"], "g", "t"));
    assert_eq!(conf.retry.attempts, 3, "the conf's own value stays");
    assert!(conf.force_commit);
}

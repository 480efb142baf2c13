// go-queue's Consume(key, value string) error, as an annotated async fn.

#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(key: &str, val: &str) -> anyhow::Result<()> {
    println!("PaymentSuccess key: {key}, val: {val}");
    Ok(())
}

fn main() {
    // The function stays an ordinary function.
    let _future = payment_success("k", "v");
    let registered = kq::__private::ConsumerRegistration::find("payment_success").expect("registered");
    assert_eq!(registered.conf, "KqConsumerConf");
}

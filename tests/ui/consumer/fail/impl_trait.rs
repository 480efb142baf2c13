#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(_value: impl AsRef<str>) {}

fn main() {}

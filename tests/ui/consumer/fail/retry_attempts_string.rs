#[kq::consumer(conf = "KqConsumerConf", retry_attempts = "3")]
async fn payment_success(_key: &str, _value: &str) {}

fn main() {}

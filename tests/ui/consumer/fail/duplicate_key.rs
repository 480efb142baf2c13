#[kq::consumer(conf = "KqConsumerConf", conf = "Other")]
async fn payment_success(_key: &str, _val: &str) {}

fn main() {}

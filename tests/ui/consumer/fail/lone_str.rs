#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(_val: &str) {}

#[kq::consumer(conf = "Other")]
async fn three(_key: &str, _val: &str, _extra: &str) {}

fn main() {}

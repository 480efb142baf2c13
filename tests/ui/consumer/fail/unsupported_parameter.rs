#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(_key: &str, _val: &str, _retries: u32) {}

fn main() {}

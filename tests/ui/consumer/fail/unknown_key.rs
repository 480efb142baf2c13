#[kq::consumer(conf = "KqConsumerConf", topic = "payments")]
async fn payment_success(_key: &str, _val: &str) {}

fn main() {}

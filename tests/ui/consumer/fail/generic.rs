#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success<T: Default>(_key: &str, _val: &str) {}

fn main() {}

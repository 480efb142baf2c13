#[kq::consumer(conf = "KqConsumerConf")]
fn payment_success(_key: &str, _val: &str) {}

fn main() {}

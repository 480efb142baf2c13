#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(_value: String) {}

fn main() {}

#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(_msg: &mut kq::Message) {}

fn main() {}

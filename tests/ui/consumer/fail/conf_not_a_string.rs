#[kq::consumer(conf = KqConsumerConf)]
async fn payment_success(_key: &str, _val: &str) {}

#[kq::consumer(conf = "")]
async fn empty(_key: &str, _val: &str) {}

fn main() {}

#[kq::consumer(conf = "KqConsumerConf")]
struct PaymentSuccess;

fn main() {}

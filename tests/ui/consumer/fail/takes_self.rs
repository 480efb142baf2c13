struct PaymentSuccess;

impl PaymentSuccess {
    #[kq::consumer(conf = "KqConsumerConf")]
    async fn consume(&self, key: &str, val: &str) {}
}

fn main() {}

struct PaymentSuccess;

impl PaymentSuccess {
    #[kq::consumer(conf = "KqConsumerConf")]
    async fn consume(_key: &str, _value: &str) {}
}

fn main() {}

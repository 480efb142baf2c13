#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(key: &str, val: &str) -> usize {
    key.len() + val.len()
}

fn main() {}

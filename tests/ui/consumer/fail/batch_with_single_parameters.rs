// A batch consumer runs once per batch: a parameter of one message has no message to come
// from.

#[kq::consumer(conf = "KqConsumerConf")]
async fn ledger(batch: &[kq::Message], key: &str, value: &str, msg: &kq::Message) {
    let _ = (batch, key, value, msg);
}

fn main() {}

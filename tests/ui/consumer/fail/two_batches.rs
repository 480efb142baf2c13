#[derive(serde::Deserialize)]
struct Payment {}

#[kq::consumer(conf = "KqConsumerConf")]
async fn ledger(batch: &[kq::Message], payments: Vec<kq::Json<Payment>>) {
    let _ = (batch, payments);
}

fn main() {}

#[kq::consumer(conf = "KqConsumerConf")]
async fn ledger(batch: Vec<String>) {
    let _ = batch;
}

fn main() {}

// `batch_size` and `batch_wait` are for batch consumers; their values are checked too.

#[kq::consumer(conf = "KqConsumerConf", batch_size = 100, batch_wait = "10ms")]
async fn single(key: &str, value: &str) {
    let _ = (key, value);
}

#[kq::consumer(conf = "Batch", batch_size = 0, batch_wait = "soon")]
async fn batch(batch: &[kq::Message]) {
    let _ = batch;
}

fn main() {}

use std::rc::Rc;

#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(key: &str, val: &str) {
    let seen = Rc::new(key.len());
    tokio::task::yield_now().await;
    println!("{seen} {val}");
}

fn main() {}

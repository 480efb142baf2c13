#[kq::consumer]
async fn payment_success(_key: &str, _val: &str) {}

#[kq::consumer(name = "named")]
async fn named(_key: &str, _val: &str) {}

fn main() {}

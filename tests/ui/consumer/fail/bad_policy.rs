#[kq::consumer(conf = "Payments", retry_attempts = 0)]
async fn no_attempts(_key: &str, _value: &str) {}

#[kq::consumer(conf = "Payments", force_commit = "no")]
async fn not_a_bool(_key: &str, _value: &str) {}

#[kq::consumer(conf = "Payments", dead_letter_topic = " ")]
async fn no_topic(_key: &str, _value: &str) {}

fn main() {}

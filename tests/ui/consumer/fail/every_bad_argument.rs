// Every bad argument of one attribute is reported, each under its value.
#[kq::consumer(
    conf = KqConsumerConf,
    retry_attempts = "3",
    force_commit = "no",
    topic = "payments",
    name = "",
    dead_letter_topic,
    crate = "not a path",
    conf = "Again",
)]
async fn payment_success(_key: &str, _value: &str) {}

fn main() {}

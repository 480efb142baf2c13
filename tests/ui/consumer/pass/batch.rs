// A batch consumer takes `&[kq::Message]` or `Vec<kq::Json<T>>`, with or without the service
// state, and returns what a consumer of single messages returns, or `Result<(), BatchError>`.

use std::time::Duration;

struct Svc;

#[derive(serde::Deserialize)]
struct Payment {
    #[allow(dead_code)]
    order: String,
}

#[kq::consumer(conf = "KqConsumerConf")]
async fn ledger(_svc: &kq::State<Svc>, _batch: &[kq::Message]) -> anyhow::Result<()> {
    Ok(())
}

#[kq::consumer(conf = "Index", batch_size = 500, batch_wait = "50ms")]
async fn index(payments: Vec<kq::Json<Payment>>) -> Result<(), kq::BatchError> {
    if payments.is_empty() {
        return Err(kq::BatchError::all("nothing to index"));
    }
    Ok(())
}

#[kq::consumer(conf = "Audit")]
async fn audit(_svc: kq::State<Svc>, _batch: &[kq::Message]) {}

fn main() {
    for name in ["ledger", "index", "audit"] {
        let registration = kq::__private::ConsumerRegistration::find(name).unwrap();
        assert!(registration.takes_batches(), "{name}");
    }
    let index = kq::__private::ConsumerRegistration::find("index").unwrap();
    let conf = index.conf(&kq::KqConf::new(["b:1"], "g", "t"));
    assert_eq!(conf.batch.size, 500);
    assert_eq!(conf.batch.wait, Duration::from_millis(50));
    // `Vec<Json<T>>` reads no headers; `&[kq::Message]` hands them on.
    assert!(!(index.reads_headers)());
    let ledger = kq::__private::ConsumerRegistration::find("ledger").unwrap();
    assert!((ledger.reads_headers)());
}

// Every supported parameter and return type, in any order.

use std::sync::atomic::AtomicUsize;

struct ServiceContext {
    handled: AtomicUsize,
}

#[derive(serde::Deserialize)]
struct Payment<'a> {
    order: &'a str,
}

#[kq::consumer(conf = "Payments", name = "payments")]
async fn with_state_and_json(
    svc: &kq::State<ServiceContext>,
    kq::Json(payment): kq::Json<Payment<'_>>,
    msg: &kq::Message,
) -> Result<(), String> {
    svc.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    println!("{} at {}/{}", payment.order, msg.partition(), msg.offset());
    Ok(())
}

// By value, the state is the caller's to keep: here past the handler, on another thread.
#[kq::consumer(conf = "Owned")]
async fn owned_state(svc: kq::State<ServiceContext>, _key: &str, _value: &str) {
    std::thread::spawn(move || svc.handled.load(std::sync::atomic::Ordering::Relaxed));
}

#[kq::consumer(conf = "Plain")]
async fn returns_unit(msg: &kq::Message, key: &str, value: &str) {
    let _ = (msg.headers().get("trace"), key, value);
}

#[kq::consumer(conf = "Io", crate = "kq")]
async fn io_error(_msg: &kq::Message) -> std::io::Result<()> {
    Ok(())
}

#[kq::consumer(conf = "Raw")]
async fn r#async(_key: &str, _value: &str) {}

fn main() {
    let names: Vec<_> = kq::__private::ConsumerRegistration::all().iter().map(|r| r.name).collect();
    assert_eq!(names, ["async", "io_error", "owned_state", "payments", "returns_unit"]);
}

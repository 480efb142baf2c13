//! The service context: the ledger the consumer writes, and the demo payments.

use std::sync::Arc;

use crate::config::Config;
use crate::ledger::{Ledger, Payment};

pub struct ServiceContext {
    pub ledger: Arc<Ledger>,
}

impl ServiceContext {
    pub fn new(c: &Config) -> anyhow::Result<Self> {
        let ledger = Ledger::open(&c.database, c.demo_work)?;
        let pusher = kq::Pusher::from_conf(&c.kq_pusher_conf)?;
        spawn_demo_payments(pusher, c.demo_payments);
        Ok(ServiceContext {
            ledger: Arc::new(ledger),
        })
    }
}

/// The demo payment number `n`: order `order-{n}` of one of five users, `n` × 100 cents,
/// except that the 7th has no amount and the 13th is not JSON at all.
pub fn demo_payment(n: u32) -> String {
    match n {
        13 => format!("order-{n}: not a payment"),
        _ => {
            let payment = Payment {
                order: format!("order-{n}"),
                user: format!("user-{}", n % 5),
                cents: if n == 7 { 0 } else { i64::from(n) * 100 },
            };
            serde_json::to_string(&payment).expect("a payment serializes")
        }
    }
}

fn spawn_demo_payments(pusher: kq::Pusher, payments: u32) {
    kq::spawn(async move {
        for n in 1..=payments {
            if let Err(e) = pusher.kpush(&format!("order-{n}"), demo_payment(n)).await {
                tracing::error!("demo payment not pushed: {e}");
            }
        }
        if let Err(e) = pusher.close().await {
            tracing::error!("demo pusher not closed: {e}");
        }
    });
}

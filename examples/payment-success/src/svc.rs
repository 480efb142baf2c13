//! The service context, `internal/svc/servicecontext.go` in go-zero: what handlers share.

use crate::config::Config;

pub struct ServiceContext {
    pub config_name: String,
    /// `DemoWork`: the longest a payment's handling waits.
    pub demo_work: std::time::Duration,
    /// `DemoDownKey`, and until when its downstream is down.
    demo_down: Option<(String, std::time::Instant)>,
    /// For handlers that push follow-up messages; the demo task below uses a clone.
    #[allow(dead_code)]
    pub kq_pusher_client: kq::Pusher,
}

impl ServiceContext {
    pub fn new(c: &Config) -> Result<Self, kq::Error> {
        let kq_pusher_client = kq::Pusher::from_conf(&c.kq_pusher_conf)?;
        // In a real service a request handler pushes; here a task pushes a few payments so
        // that the consumer has work as soon as it starts.
        spawn_demo_payments(kq_pusher_client.clone(), c.demo_payments, c.demo_interval);
        Ok(ServiceContext {
            config_name: c.name.clone(),
            demo_work: c.demo_work,
            demo_down: (!c.demo_down_key.is_empty()).then(|| {
                (
                    c.demo_down_key.clone(),
                    std::time::Instant::now() + c.demo_down_for,
                )
            }),
            kq_pusher_client,
        })
    }
}

fn spawn_demo_payments(pusher: kq::Pusher, payments: u32, interval: std::time::Duration) {
    kq::spawn(async move {
        for n in 1..=payments {
            if !interval.is_zero() {
                kq::sleep(interval).await;
            }
            let key = format!("order-{n}");
            let value = format!(
                r#"{{"order":"{key}","user":"zhangSan","cents":{}}}"#,
                n * 100
            );
            if let Err(e) = pusher.kpush(&key, value).await {
                tracing::error!("KqPusherClient Push Error, err: {e}");
            }
        }
        if let Err(e) = pusher.close().await {
            tracing::error!("KqPusherClient Close Error, err: {e}");
        }
    });
}

impl ServiceContext {
    /// Stands in for the work of handling `payment` (a call downstream): waits a part of
    /// `DemoWork` that the payment picks, so that payments finish out of order.
    pub async fn demo_work(&self, payment: &str) {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};

        if self.demo_work.is_zero() {
            return;
        }
        let share = BuildHasherDefault::<DefaultHasher>::default().hash_one(payment) % 1001;
        kq::sleep(self.demo_work.mul_f64(share as f64 / 1000.0)).await;
    }
}

impl ServiceContext {
    /// Stands in for a downstream call that fails for `DemoDownKey` while it is down.
    pub fn demo_downstream(&self, key: &str) -> anyhow::Result<()> {
        match &self.demo_down {
            Some((down, until)) if down == key && std::time::Instant::now() < *until => {
                anyhow::bail!("downstream for {key} is down")
            }
            _ => Ok(()),
        }
    }
}

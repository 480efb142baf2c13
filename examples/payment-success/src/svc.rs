//! The service context, `internal/svc/servicecontext.go` in go-zero: what handlers share.

use crate::config::Config;

pub struct ServiceContext {
    pub config_name: String,
    /// For handlers that push follow-up messages; the demo task below uses a clone.
    #[allow(dead_code)]
    pub kq_pusher_client: kq::Pusher,
}

impl ServiceContext {
    pub fn new(c: &Config) -> Result<Self, kq::Error> {
        let kq_pusher_client = kq::Pusher::from_conf(&c.kq_pusher_conf)?;
        // In a real service a request handler pushes; here a task pushes a few payments so
        // that the consumer has work as soon as it starts.
        tokio_spawn_demo(kq_pusher_client.clone(), c.demo_payments);
        Ok(ServiceContext {
            config_name: c.name.clone(),
            kq_pusher_client,
        })
    }
}

fn tokio_spawn_demo(pusher: kq::Pusher, payments: u32) {
    kq::spawn(async move {
        for n in 1..=payments {
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

//! The payment-success consumer, `internal/mqs/paymentSuccess.go` in go-zero.

use crate::svc::ServiceContext;

#[kq::consumer(conf = "KqConsumerConf")]
async fn payment_success(
    svc: &kq::State<ServiceContext>,
    key: &str,
    val: &str,
) -> anyhow::Result<()> {
    svc.demo_downstream(key)?;
    svc.demo_work(val).await;
    tracing::info!("{}: PaymentSuccess key: {key}, val: {val}", svc.config_name);
    Ok(())
}

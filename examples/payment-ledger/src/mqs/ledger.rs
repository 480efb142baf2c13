//! The ledger's batch consumer: each call writes up to `Batch.Size` payments in one
//! transaction.

use crate::ledger::Payment;
use crate::svc::ServiceContext;

/// A payment that does not decode never reaches this function: kq sends it through the error
/// policy alone (the error handler, then `DeadLetterTopic`) and hands over the rest.
#[kq::consumer(conf = "KqConsumerConf")]
async fn ledger(
    svc: &kq::State<ServiceContext>,
    payments: Vec<kq::Json<Payment>>,
) -> Result<(), kq::BatchError> {
    let payments: Vec<Payment> = payments.into_iter().map(|kq::Json(p)| p).collect();
    tracing::debug!(payments = payments.len(), "ledger: writing a batch");
    let ledger = svc.ledger.clone();
    // SQLite's calls block: they run on Tokio's blocking threads, not on the processors'.
    let written = tokio::task::spawn_blocking(move || ledger.record(&payments)).await??;
    tracing::info!(
        new = written.new,
        already = written.already,
        "ledger: batch written"
    );
    match written.refused {
        // The payments before `index` are in the ledger: kq counts them done and tries again
        // from the refused one, which, once its retries are spent, goes through the error
        // policy alone while the rest of the batch goes on.
        Some((index, error)) => Err(kq::BatchError::at(index, error)),
        None => Ok(()),
    }
}

//! The shutdown signal every part of a service shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A one-way switch telling every part of a service to stop. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug, Default)]
struct ShutdownInner {
    triggered: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// A switch that is not yet triggered.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Triggers it; every waiter wakes.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether it was triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Waits until it is triggered.
    pub async fn wait(&self) {
        loop {
            // Register interest before checking, so a trigger in between is not missed.
            let notified = self.inner.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}

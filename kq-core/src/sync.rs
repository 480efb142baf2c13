//! Locking shared state that stays whole when a holder panics.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over from a holder that panicked: kq's locked state is changed in
/// steps that each leave it whole, so a poisoned lock still guards sound data, and a panic
/// in one processor must not spread to every thread that shares the lock.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

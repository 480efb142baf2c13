//! The service's consumers, `internal/mqs` in go-zero. Each one registers itself with
//! `#[kq::consumer]`; there is no list to keep in sync.

mod payment_success;

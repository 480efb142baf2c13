//! The service's consumers.

mod ledger;

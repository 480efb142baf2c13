//! The ledger: a SQLite file of payments and of each user's balance.
//!
//! A payment is written at most once, keyed by its order, and a user's balance moves only when
//! one is: a batch that is delivered again after a crash (kq delivers at least once) finds its
//! payments written already and changes nothing.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection};

/// A payment as pushed to the topic.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub order: String,
    pub user: String,
    pub cents: i64,
}

/// What a batch's transaction did.
#[derive(Default)]
pub struct Written {
    /// Payments written now.
    pub new: usize,
    /// Payments found written already.
    pub already: usize,
    /// The payment the schema refused, which ended the batch: the payments before it are
    /// written, those after it were not tried.
    pub refused: Option<(usize, rusqlite::Error)>,
}

pub struct Ledger {
    /// One connection: SQLite takes one writer at a time anyway.
    connection: Mutex<Connection>,
    /// `DemoWork`: how long each transaction stays open before it commits.
    work: Duration,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS payments (
        order_id TEXT PRIMARY KEY,
        user     TEXT NOT NULL,
        cents    INTEGER NOT NULL CHECK (cents > 0)
    );
    CREATE TABLE IF NOT EXISTS balances (
        user  TEXT PRIMARY KEY,
        cents INTEGER NOT NULL
    );
";

impl Ledger {
    /// Opens the ledger at `path`, creating the file and its tables when missing.
    pub fn open(path: &Path, work: Duration) -> anyhow::Result<Ledger> {
        let connection = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("Database: cannot open {}: {e}", path.display()))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Ledger {
            connection: Mutex::new(connection),
            work,
        })
    }

    /// Writes `payments` in one transaction. A payment the schema refuses ends the batch:
    /// those before it are committed, and [`Written::refused`] names it. An error is the
    /// whole batch's: nothing was written.
    pub fn record(&self, payments: &[Payment]) -> rusqlite::Result<Written> {
        // A panic while the lock was held rolled its transaction back; the connection is fine.
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut transaction = connection.transaction()?;
        let mut written = Written::default();
        for (index, payment) in payments.iter().enumerate() {
            // Each payment in a savepoint of its own: a refused one leaves no half behind
            // (a payment without its balance), and those before it stay.
            let written_one = transaction.savepoint().and_then(|savepoint| {
                let new = insert(&savepoint, payment)?;
                savepoint.commit()?;
                Ok(new)
            });
            match written_one {
                Ok(true) => written.new += 1,
                Ok(false) => written.already += 1,
                Err(error) => {
                    written.refused = Some((index, error));
                    break;
                }
            }
        }
        if !self.work.is_zero() {
            std::thread::sleep(self.work);
        }
        transaction.commit()?;
        Ok(written)
    }
}

/// Writes one payment and moves its user's balance, unless the order is written already.
/// Returns whether it was new.
fn insert(connection: &Connection, payment: &Payment) -> rusqlite::Result<bool> {
    let new = connection
        .prepare_cached(
            "INSERT INTO payments (order_id, user, cents) VALUES (?1, ?2, ?3)
             ON CONFLICT (order_id) DO NOTHING",
        )?
        .execute(params![payment.order, payment.user, payment.cents])?
        == 1;
    if new {
        connection
            .prepare_cached(
                "INSERT INTO balances (user, cents) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET cents = cents + excluded.cents",
            )?
            .execute(params![payment.user, payment.cents])?;
    }
    Ok(new)
}

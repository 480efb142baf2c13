//! Liveness and readiness: each consumer member reports whether its fetch loop runs and has
//! joined its group.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use super::registry::observer;
use crate::sync::lock;

/// The health of every consumer member started since collecting began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// No consumer loop died or is stuck.
    pub live: bool,
    /// Live, and every running member joined its group and is fetching.
    pub ready: bool,
    /// One line per member: consumer, member, state.
    pub detail: String,
}

/// Liveness and readiness now.
pub fn health() -> Health {
    let observer = observer();
    let members = lock(&observer.members);
    let now = observer.millis();
    let mut live = true;
    let mut ready = !members.is_empty();
    let mut detail = String::new();
    for member in members.iter() {
        let state = match member.state.load(Ordering::Acquire) {
            FAILED => {
                live = false;
                "failed"
            }
            STOPPED => "stopped",
            _ if now.saturating_sub(member.heartbeat.load(Ordering::Acquire))
                > member.stuck_after.as_millis() as u64 =>
            {
                live = false;
                "stuck"
            }
            _ if !member.joined.load(Ordering::Acquire) => "joining",
            _ => "fetching",
        };
        if state != "fetching" {
            ready = false;
        }
        let _ = writeln!(
            detail,
            "{} member {}: {state}",
            member.consumer, member.index
        );
    }
    Health {
        live,
        ready: live && ready,
        detail,
    }
}

pub(super) const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const FAILED: u8 = 2;

/// One member's liveness, reported by its fetch loop and rebalance callbacks.
pub(crate) struct MemberHealth {
    pub(super) consumer: String,
    pub(super) index: usize,
    pub(super) joined: AtomicBool,
    pub(super) heartbeat: AtomicU64,
    pub(super) state: AtomicU8,
    /// A loop that has not come round for this long is stuck (a revoke may legitimately
    /// hold it for `ShutdownTimeout`).
    pub(super) stuck_after: Duration,
}

impl MemberHealth {
    pub fn beat(&self) {
        self.heartbeat.store(observer().millis(), Ordering::Release);
    }

    pub fn joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    pub fn stopped(&self, failed: bool) {
        let state = if failed { FAILED } else { STOPPED };
        self.state.store(state, Ordering::Release);
    }
}

//! The checks that serde cannot make: required values and ranges, each naming the key at
//! fault; and the redaction of secrets in `Debug` output.

use std::fmt;
use std::time::Duration;

use super::connection::EMBEDDED;
use super::duration;
use crate::error::InvalidConf;

pub(super) fn require(key: &'static str, value: &str) -> Result<(), InvalidConf> {
    if value.trim().is_empty() {
        return Err(InvalidConf::new(key, "must not be empty"));
    }
    Ok(())
}

pub(super) fn require_brokers(brokers: &[String]) -> Result<(), InvalidConf> {
    if brokers.is_empty() {
        return Err(InvalidConf::new("Brokers", "must list at least one broker"));
    }
    if brokers.iter().any(|b| b.trim().is_empty()) {
        return Err(InvalidConf::new(
            "Brokers",
            "must not contain an empty entry",
        ));
    }
    if brokers.len() > 1 && brokers.iter().any(|b| b == EMBEDDED) {
        return Err(InvalidConf::new(
            "Brokers",
            "`embedded` must be the only entry when it is used",
        ));
    }
    Ok(())
}

pub(super) fn at_least(key: &'static str, value: usize, min: usize) -> Result<(), InvalidConf> {
    if value < min {
        return Err(InvalidConf::new(
            key,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

pub(super) fn count_at_most(
    key: &'static str,
    value: usize,
    max: usize,
) -> Result<(), InvalidConf> {
    if value > max {
        return Err(InvalidConf::new(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

pub(super) fn at_most(
    key: &'static str,
    value: Duration,
    max: Duration,
) -> Result<(), InvalidConf> {
    if value > max {
        return Err(InvalidConf::new(
            key,
            format!(
                "must be at most {}, got {}",
                duration::format(max),
                duration::format(value)
            ),
        ));
    }
    Ok(())
}

/// A secret in `Debug` output: whether it is set, never what it is.
pub(super) struct Redacted<'a>(pub &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"<redacted>\"")
        }
    }
}

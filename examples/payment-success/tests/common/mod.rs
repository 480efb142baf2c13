//! What the service's process tests share: the examples' process helpers, and starting this
//! service's binary.

#![allow(dead_code)]

#[path = "../../../support/process.rs"]
mod process;

use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use process::*;

pub const SERVICE: &str = env!("CARGO_BIN_EXE_payment-success");

pub fn package_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the service in its package directory (with `-f file` when given); see
/// [`spawn_binary`].
pub fn spawn_service<T: Send + Clone + 'static>(
    file: Option<&Path>,
    log: Option<&str>,
    tag: T,
    lines: mpsc::Sender<(T, String)>,
) -> (Child, JoinHandle<()>) {
    spawn_binary(SERVICE, package_dir(), file, log, tag, lines)
}

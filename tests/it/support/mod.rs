//! Shared helpers for the `it` integration-test crate: real ZooKeeper servers
//! ([`ZkServer`], [`shared_zk`], [`ZkEnsemble`]), a ZooKeeper client and small polling
//! utilities.
//!

pub mod client;
pub mod fixtures;
pub mod freeze;
pub mod history;
pub mod kerberos;
pub mod proxy;
mod runner;
pub mod secure;
mod spawner;
mod zk;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long any single wait in these tests may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Fault tests (and the randomized run) take turns: each starts its own servers, and they are
/// sensitive to a starved CPU.
pub fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

pub use client::Zk;
pub use runner::*;
pub use zk::{four_letter, four_letter_timeout, free_ports, shared_zk, ZkEnsemble, ZkOptions, ZkServer, READY_TIMEOUT};

/// A fresh lock path, `/it/<name>-<8 hex chars>`, so tests sharing [`shared_zk`] never
/// collide. Neither it nor `/it` is created.
pub fn unique_lock_path(name: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("/it/{name}-{}", &id[..8])
}

/// Polls `f` every 10 ms until it returns true; panics with `what` after `timeout`.
/// Blocks the thread.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the file at `path` exists and contains `needle`; returns its whole content.
/// Panics after `timeout`, quoting what the file held.
pub fn wait_for_file_line(path: impl AsRef<Path>, needle: &str, timeout: Duration) -> String {
    let path = path.as_ref();
    let mut content = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            content = String::from_utf8_lossy(&bytes).into_owned();
            if content.contains(needle) {
                return content;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {needle:?} in {}; content:\n{content}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

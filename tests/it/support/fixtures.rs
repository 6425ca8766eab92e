//! Fixtures of the fault tests: the history checked at the end of a test, and the holder and
//! waiter that most scenarios start with.

use std::time::{Duration, Instant};

use super::history::{check, Run};
use super::{Bed, Zk, PATIENCE};

/// Waits (with patience) until `lock` has no children; returns what is left.
pub fn settle(zk: &Zk, lock: &str, patience: Duration) -> Vec<String> {
    let deadline = Instant::now() + patience;
    loop {
        let left = zk.children(lock);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the history and panics with it on failure.
pub fn verify(bed: &Bed, zk: &Zk, lock: &str, runs: &[Run]) {
    let leaked = settle(zk, lock, PATIENCE);
    let report = check(&bed.history.events(), runs, &leaked);
    if std::env::var_os("ZKLOCK_FAULTS_SHOW").is_some() {
        eprintln!("{}--- history ---\n{}", report.describe(), bed.history.dump());
    }
    report.assert_ok(&bed.history);
}

/// `-v --session-timeout T`, as the fault tests run zklock.
pub fn opts(session_timeout: &'static str) -> [&'static str; 3] {
    ["-v", "--session-timeout", session_timeout]
}

//! Fixtures of the fault tests: the history checked at the end of a test, and the holder and
//! waiter that most scenarios start with.

use std::time::{Duration, Instant};

use super::history::{check, Hold, Run};
use super::{Bed, Zk, Zklock, PATIENCE};

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

/// How one zklock of a scenario connects: its connect string and options.
pub type Via<'a> = (&'a str, &'a [&'a str]);

impl Bed {
    /// Starts zklock `holder` on `lock`, its command running until the test releases `h.go`,
    /// and waits until the command runs.
    pub fn holder(&self, lock: &str, tick: Duration, (connect, opts): Via<'_>) -> Zklock {
        let holder = self.spawn("holder", connect, tick, lock, opts, self.until("h.go"));
        self.history.wait_event("holder", "start", PATIENCE);
        holder
    }

    /// The start of most fault scenarios: a [`Bed::holder`], and zklock `waiter` queued behind
    /// it (the lock has both nodes, as `zk` sees it), its command holding for `hold`.
    pub fn holder_and_waiter(
        &self,
        zk: &Zk,
        lock: &str,
        tick: Duration,
        holder: Via<'_>,
        (connect, opts): Via<'_>,
        hold: Hold,
    ) -> (Zklock, Zklock) {
        let holder = self.holder(lock, tick, holder);
        let waiter = self.spawn("waiter", connect, tick, lock, opts, hold);
        zk.wait_children(lock, 2);
        (holder, waiter)
    }
}

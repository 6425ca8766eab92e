//! The deadline enforcer: an OS thread of its own that sends the stop signal and SIGKILL when
//! the watchdog says so, whatever the async runtime is doing (a stalled runtime — a blocked
//! write, a slow system call — must not delay them).
//!
//! The thread and the supervisor's loop share one [`Watchdog`] under a mutex; whichever looks
//! first performs a due action, and each action happens once. Signals are sent before anything
//! is logged.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{error, warn};

use crate::child::Signaller;
use crate::clock::Clock;
use crate::session::{Action, Loss, Watchdog};
use crate::zk::Confirmed;

/// Longest sleep between checks. The condvar sleeps on CLOCK_MONOTONIC, which stops while the
/// host is suspended: waking at least this often bounds how late a deadline that passed during
/// a suspend is noticed.
const MAX_NAP: Duration = Duration::from_millis(250);

struct State {
    watchdog: Watchdog,
    done: bool,
}

struct Shared<G> {
    state: Mutex<State>,
    wake: Condvar,
    group: G,
    stop_signal: Signal,
}

/// Handle on the enforcer; cheap to share with the supervisor.
pub struct Enforcer<G: Signaller> {
    shared: Arc<Shared<G>>,
}

impl<G: Signaller> Shared<G> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the enforcement: take the state as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Performs every action due at `now`; returns when the next one is due.
    fn act(&self, state: &mut State, now: Duration) -> Option<Duration> {
        if state.done {
            return None;
        }
        let mut due = Vec::new();
        while let Some(action) = state.watchdog.poll(now) {
            due.push(action);
        }
        let killing = due.contains(&Action::Kill);
        for action in due {
            match action {
                Action::Stop(why) => {
                    // A member stopped (Ctrl-Z, SIGTTIN) must run to handle the signal — unless
                    // SIGKILL follows at once: then it must not run at all.
                    if killing {
                        let _ = self.group.signal(self.stop_signal);
                    } else {
                        self.group.stop(self.stop_signal);
                    }
                    if why == Loss::MaxHold {
                        warn!("{why}; sent {} to the command", self.stop_signal);
                    } else {
                        error!("lock lost: {why}; sent {} to the command", self.stop_signal);
                    }
                }
                Action::Kill => {
                    if self.group.signal(Signal::SIGKILL) {
                        warn!("the command was still running: sent SIGKILL to its group");
                    }
                }
            }
        }
        state.watchdog.next_wake()
    }
}

impl<G: Signaller> Enforcer<G> {
    /// Enforcing `watchdog` on `group` from the supervisor's loop alone, without a thread of
    /// its own (for tests on a paused clock, which another thread cannot read).
    pub fn inline(watchdog: Watchdog, group: G, stop_signal: Signal) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { watchdog, done: false }),
            wake: Condvar::new(),
            group,
            stop_signal,
        });
        Enforcer { shared }
    }

    /// Starts enforcing `watchdog` on `group`. Should the thread not start, the supervisor's
    /// loop still enforces the deadlines (with a warning).
    pub fn start<C: Clock>(watchdog: Watchdog, group: G, stop_signal: Signal, clock: C) -> Self {
        let enforcer = Enforcer::inline(watchdog, group, stop_signal);
        let shared = enforcer.shared.clone();
        let started = std::thread::Builder::new().name("zklock-deadline".into()).spawn(move || {
            let mut state = shared.lock();
            loop {
                if state.done {
                    return;
                }
                let now = clock.now();
                let nap = shared.act(&mut state, now).map_or(MAX_NAP, |at| at.saturating_sub(now).min(MAX_NAP));
                state = match shared.wake.wait_timeout(state, nap) {
                    Ok((state, _)) => state,
                    Err(e) => e.into_inner().0,
                };
            }
        });
        if let Err(e) = started {
            warn!("cannot start the deadline thread ({e}); deadlines are enforced by the main loop only");
        }
        enforcer
    }

    /// Performs what is due at `now`; returns when the next action is due.
    pub fn act(&self, now: Duration) -> Option<Duration> {
        let mut state = self.shared.lock();
        self.shared.act(&mut state, now)
    }

    /// A heartbeat was confirmed by the leader; returns the new SIGKILL instant if `t_ok`
    /// moved forward (the guard's renewal).
    pub fn confirmed(&self, proof: Confirmed) -> Option<Duration> {
        let mut state = self.shared.lock();
        state.watchdog.confirmed(proof).then(|| state.watchdog.kill_instant())
    }

    /// The lock is known to be lost: the stop signal goes out now.
    pub fn lost(&self, now: Duration, why: Loss) {
        let mut state = self.shared.lock();
        state.watchdog.lost(now, why);
        self.shared.act(&mut state, now);
        self.shared.wake.notify_all();
    }

    /// Why the lock was lost, once it was.
    pub fn loss(&self) -> Option<Loss> {
        self.shared.lock().watchdog.loss()
    }

    /// See [`Watchdog::straggler_grace`].
    pub fn straggler_grace(&self, now: Duration) -> Duration {
        self.shared.lock().watchdog.straggler_grace(now)
    }

    /// Stops enforcing: the command's group is gone. Nothing is sent after this returns.
    pub fn finish(&self) {
        self.shared.lock().done = true;
        self.shared.wake.notify_all();
    }
}

impl<G: Signaller> Drop for Enforcer<G> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::{Group, Signaller};
    use crate::clock::BootClock;
    use crate::config::{Budget, BudgetRequest};
    use std::os::unix::process::CommandExt;

    fn budget() -> Budget {
        Budget::compute(BudgetRequest {
            session_timeout: Duration::from_millis(2_000),
            tick: Duration::from_millis(100),
            threshold: Some(Duration::from_millis(300)),
            grace: Some(Duration::from_millis(300)),
        })
        .unwrap()
    }

    /// A process group that ignores TERM; returns its leader.
    fn stubborn_group() -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.01; done"])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// An enforcer on `group`, its t_ok now.
    fn enforce(group: &std::process::Child) -> Enforcer<Group> {
        let clock = BootClock;
        let t_ok = Confirmed::for_test(clock.now());
        Enforcer::start(Watchdog::new(&budget(), t_ok), Group::of(group.id()), Signal::SIGTERM, clock)
    }

    #[test]
    fn the_thread_kills_on_its_own_while_the_caller_is_blocked() {
        let mut group = stubborn_group();
        let enforcer = enforce(&group);
        // Nobody calls act(): only the thread can send TERM and, after the grace, SIGKILL.
        let status = group.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert_eq!(enforcer.loss(), Some(Loss::Deadline));
    }

    #[test]
    fn finished_enforcer_sends_nothing() {
        let mut group = stubborn_group();
        let enforcer = enforce(&group);
        enforcer.finish();
        std::thread::sleep(Duration::from_millis(900));
        assert!(group.try_wait().unwrap().is_none(), "the group must still run");
        assert_eq!(enforcer.act(BootClock.now()), None);
        assert_eq!(enforcer.loss(), None);
        let _ = Group::of(group.id()).signal(Signal::SIGKILL);
        let _ = group.wait();
    }
}

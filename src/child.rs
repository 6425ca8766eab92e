//! The command: spawned in its own process group (process-wrap), killed with zklock (the
//! leader by PR_SET_PDEATHSIG, the whole group by a guard process), signalled as a group, and
//! drained of stragglers before the lock is released.
//!
//! Supervision sees the command through [`Supervised`] and signals it through [`Signaller`],
//! so that the supervisor can be tested with a fake command; [`Child`] and [`Group`] are the
//! real ones.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use process_wrap::tokio::{CommandWrap, ProcessGroup};
use tokio::sync::oneshot;

mod guard;
pub use guard::Guard;

/// How often the group is polled while waiting for stragglers to go.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// Sends signals to the command's whole process group.
pub trait Signaller: Clone + Send + Sync + 'static {
    /// Sends `sig` to every process of the group; returns whether any was there to get it. A
    /// group already gone is not an error.
    fn signal(&self, sig: Signal) -> bool;

    /// Sends the stop signal `sig`, then SIGCONT: a member stopped (Ctrl-Z, SIGTTIN) must run
    /// to handle it.
    fn stop(&self, sig: Signal) {
        self.signal(sig);
        self.signal(Signal::SIGCONT);
    }
}

/// A process group, by its leader's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group(Pid);

#[cfg(test)]
impl Group {
    /// The group led by `pid`.
    pub fn of(pid: u32) -> Group {
        Group(Pid::from_raw(pid as i32))
    }
}

impl Signaller for Group {
    fn signal(&self, sig: Signal) -> bool {
        match killpg(self.0, sig) {
            Ok(()) => true,
            Err(Errno::ESRCH) => false,
            Err(e) => {
                tracing::warn!("cannot send {sig} to the command's group: {e}");
                false
            }
        }
    }
}

/// What supervision needs of the command.
pub trait Supervised {
    type Group: Signaller;

    /// The command's process group.
    fn group(&self) -> Self::Group;

    /// Resolves when the leader exits (cancel-safe: poll it in a loop).
    fn exited(&mut self) -> impl Future<Output = io::Result<ExitStatus>>;

    /// Reaps what it can and tells whether any process of the group is still alive. Only
    /// called after the leader was reaped.
    fn group_alive(&self) -> bool;

    /// Moves the guard's SIGKILL instant (on the deadline clock) forward to `kill_at`.
    fn renew(&self, kill_at: Duration);

    /// Waits up to `limit` for the group to be gone; true if it is.
    fn wait_group_gone(&self, limit: Duration) -> impl Future<Output = bool> {
        async move {
            let until = tokio::time::Instant::now() + limit;
            loop {
                if !self.group_alive() {
                    return true;
                }
                if tokio::time::Instant::now() >= until {
                    return false;
                }
                tokio::time::sleep(GROUP_POLL).await;
            }
        }
    }

    /// After the leader exited: stops what is left of its group (stop signal, then SIGKILL
    /// after `grace`) and waits for it to be gone. Returns whether stragglers were found.
    fn drain(&self, stop: Signal, grace: Duration) -> impl Future<Output = bool> {
        async move {
            if !self.group_alive() {
                return false;
            }
            tracing::warn!("the command exited but left processes in its group; stopping them with {stop}");
            self.group().stop(stop);
            if !self.wait_group_gone(grace).await {
                tracing::warn!("processes of the command's group survived {stop}; sending SIGKILL");
                self.group().signal(Signal::SIGKILL);
                if !self.wait_group_gone(Duration::from_secs(5)).await {
                    tracing::error!("processes of the command's group are still alive after SIGKILL");
                }
            }
            true
        }
    }
}

/// A running command, leader of its own process group, with its guard process.
pub struct Child {
    pgid: Pid,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
    /// Until disarmed.
    guard: Option<Guard>,
}

/// Why the command was not started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The guard could not be armed: nothing would stop the command if zklock froze or died.
    #[error("refusing to start the command unprotected: {0}")]
    Unprotected(io::Error),
    /// The command itself could not be started.
    #[error("{0}")]
    Spawn(io::Error),
}

/// Makes zklock the reaper of orphaned descendants, so that a grandchild left behind by the
/// command can be waited for before the lock is released.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!("PR_SET_CHILD_SUBREAPER failed: {e}");
    }
}

/// Spawns `argv` directly (no shell) in a new process group, with `env` added, inheriting
/// stdin, stdout and stderr; `program` is `argv[0]` already resolved along PATH (argv[0] itself
/// is passed on unchanged). The command gets SIGKILL if zklock dies, and its whole group gets
/// SIGKILL from `guard` at `kill_at` (CLOCK_BOOTTIME) unless the guard is renewed: the guard
/// is armed first, and without it the command is not started.
pub fn spawn(
    program: &std::path::Path,
    argv: &[OsString],
    env: &[(&str, String)],
    mut guard: Guard,
    kill_at: Duration,
) -> Result<Child, SpawnError> {
    guard.arm(kill_at).map_err(SpawnError::Unprotected)?;
    let parent = nix::unistd::getpid();
    let mut cmd = CommandWrap::with_new(program, |cmd| {
        cmd.arg0(&argv[0]);
        cmd.args(&argv[1..]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // zklock may have died between fork and prctl: then nobody would kill us.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::other("zklock exited before the command started"));
                }
                Ok(())
            });
        }
    });
    cmd.wrap(ProcessGroup::leader());
    let child = cmd.spawn().map_err(SpawnError::Spawn)?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let pgid = Pid::from_raw(pid as i32);
    if let Err(e) = guard.set_group(pgid) {
        // No guard: the command must not run. It is killed with its group before it can do
        // much (it has only just been exec'd).
        let _ = killpg(pgid, Signal::SIGKILL);
        return Err(SpawnError::Unprotected(e));
    }
    // Wait for the leader on its own task, so that the supervisor can select on its exit
    // while it signals the group.
    let mut leader = child.into_inner();
    let (tx, exit) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(leader.wait().await);
    });
    Ok(Child { pgid, exit, guard: Some(guard) })
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// The group is gone: the guard stands down. Returns it, to be reaped once the lock is
    /// released (reaping waits for it to exit, which must not hold up the release).
    pub fn disarm(&mut self) -> Option<Guard> {
        let mut guard = self.guard.take()?;
        guard.disarm();
        Some(guard)
    }
}

impl Supervised for Child {
    type Group = Group;

    fn group(&self) -> Group {
        Group(self.pgid)
    }

    async fn exited(&mut self) -> io::Result<ExitStatus> {
        match (&mut self.exit).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("lost track of the command")),
        }
    }

    fn group_alive(&self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-self.pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        !matches!(killpg(self.pgid, None), Err(Errno::ESRCH))
    }

    fn renew(&self, kill_at: Duration) {
        if let Some(guard) = &self.guard {
            guard.renew(kill_at);
        }
    }
}

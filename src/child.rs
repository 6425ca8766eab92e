//! The command: spawned in its own process group (process-wrap), killed with zklock (the
//! leader by PR_SET_PDEATHSIG, the whole group by a guard process), signalled as a group, and
//! drained of stragglers before the lock is released.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use process_wrap::tokio::{CommandWrap, ProcessGroup};
use tokio::sync::oneshot;

/// How often the group is polled while waiting for stragglers to go.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// A running command, leader of its own process group.
pub struct Child {
    pgid: Pid,
    exit: oneshot::Receiver<io::Result<ExitStatus>>,
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
/// is passed on unchanged). The command gets SIGKILL if zklock dies.
pub fn spawn(program: &std::path::Path, argv: &[OsString], env: &[(&str, String)]) -> io::Result<Child> {
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
    let child = cmd.spawn()?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let pgid = Pid::from_raw(pid as i32);
    // Wait for the leader on its own task, so that the supervisor can select on its exit
    // while it signals the group.
    let mut leader = child.into_inner();
    let (tx, exit) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(leader.wait().await);
    });
    Ok(Child { pgid, exit })
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// The command's process group (its leader's pid).
    pub fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Sends `sig` to the whole group. A group already gone is not an error.
    pub fn signal(&self, sig: Signal) {
        match killpg(self.pgid, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!("cannot send {sig} to the command's group: {e}"),
        }
    }

    /// Resolves when the leader exits (cancel-safe: poll it in a loop).
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        match (&mut self.exit).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("lost track of the command")),
        }
    }

    /// Reaps what we can and tells whether any process of the group is still alive. Only
    /// call after the leader was reaped.
    pub fn group_alive(&self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-self.pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        !matches!(killpg(self.pgid, None), Err(Errno::ESRCH))
    }

    /// Waits up to `limit` for the group to be gone; true if it is.
    pub async fn wait_group_gone(&self, limit: Duration) -> bool {
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

    /// After the leader exited: stops what is left of its group (stop signal, then SIGKILL
    /// after `grace`) and waits for it to be gone. Returns whether stragglers were found.
    pub async fn drain(&self, stop: Signal, grace: Duration) -> bool {
        if !self.group_alive() {
            return false;
        }
        tracing::warn!("the command exited but left processes in its group; stopping them with {stop}");
        self.signal(stop);
        if !self.wait_group_gone(grace).await {
            tracing::warn!("processes of the command's group survived {stop}; sending SIGKILL");
            self.signal(Signal::SIGKILL);
            if !self.wait_group_gone(Duration::from_secs(5)).await {
                tracing::error!("processes of the command's group are still alive after SIGKILL");
            }
        }
        true
    }
}

/// A small process outside the command's group that SIGKILLs the whole group if zklock dies
/// without disarming it. PR_SET_PDEATHSIG only covers the group leader: the leader's own
/// children (`sh -c 'a | b'`) would otherwise run on without the lock after `kill -9` of zklock.
pub struct Guard {
    pid: Pid,
    pipe: Option<std::os::fd::OwnedFd>,
}

/// What the guard reads when zklock is done with the group.
const DISARM: u8 = b'd';

impl Child {
    /// Starts the guard for this command's group.
    pub fn guard(&self) -> io::Result<Guard> {
        use nix::unistd::{fork, ForkResult};
        use std::os::fd::AsRawFd;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let pgid = self.pgid.as_raw();
        // SAFETY: the child only makes async-signal-safe system calls, then _exit()s.
        match unsafe { fork() }? {
            ForkResult::Child => unsafe { guard_main(read_end.as_raw_fd(), pgid) },
            ForkResult::Parent { child } => {
                drop(read_end);
                Ok(Guard { pid: child, pipe: Some(write_end) })
            }
        }
    }
}

/// The guard's whole life: keep only the pipe, ignore job-control and terminal signals, leave
/// zklock's process group (a signal to zklock's job must not kill the guard), wait for the pipe
/// to say "done" or to close, and SIGKILL the command's group if it closed without "done".
unsafe fn guard_main(pipe: i32, pgid: i32) -> ! {
    use nix::libc;
    libc::syscall(libc::SYS_close_range, 0u32, (pipe - 1) as u32, 0u32);
    libc::syscall(libc::SYS_close_range, (pipe + 1) as u32, u32::MAX, 0u32);
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ] {
        libc::signal(sig, libc::SIG_IGN);
    }
    libc::setpgid(0, 0);
    let mut byte = 0u8;
    let n = loop {
        let n = libc::read(pipe, (&mut byte as *mut u8).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break n;
    };
    if !(n == 1 && byte == DISARM) {
        libc::kill(-pgid, libc::SIGKILL);
    }
    libc::_exit(0)
}

impl Guard {
    /// The group is gone: the guard exits without killing anything. Does not wait for it; it
    /// is reaped when the `Guard` is dropped.
    pub fn disarm(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = nix::unistd::write(&pipe, &[DISARM]);
        }
    }
}

impl Drop for Guard {
    /// Reaps the guard. Dropped without being disarmed (an error path), the closed pipe makes
    /// the guard kill the group first.
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = waitpid(self.pid, None);
    }
}

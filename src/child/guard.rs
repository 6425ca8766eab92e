//! The guard: a small process outside the command's group that SIGKILLs the whole group if
//! zklock dies without disarming it.

use std::io;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::Child;

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

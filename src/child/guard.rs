//! The guard process of a running command (see [`Guard`]).

use std::io;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::Child;

/// A small process outside the command's group that SIGKILLs the whole group if zklock dies
/// without disarming it. PR_SET_PDEATHSIG only covers the group leader: the leader's own
/// children (`sh -c 'a | b'`) would otherwise run on without the lock after `kill -9` of zklock.
///
/// The guard is a process (it must outlive zklock) that shares zklock's memory (`clone` with
/// `CLONE_VM`, as `posix_spawn` does before its `exec`): starting it copies no page tables, and
/// zklock's writes afterwards take no copy-on-write faults, which a `fork` cost on every cycle.
/// It runs on a stack of its own and touches nothing else of zklock's memory (see [`guard_main`]).
pub struct Guard {
    pid: Pid,
    pipe: Option<std::os::fd::OwnedFd>,
    /// The guard's stack: freed only once the guard is reaped.
    stack: Option<Box<[u8]>>,
}

/// What the guard reads when zklock is done with the group.
const DISARM: u8 = b'd';

/// The guard's stack: `guard_main` needs a few hundred bytes.
const STACK: usize = 64 * 1024;

impl Child {
    /// Starts the guard for this command's group.
    pub fn guard(&self) -> io::Result<Guard> {
        use nix::libc;
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        use std::os::fd::AsRawFd;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (pipe, pgid) = (read_end.as_raw_fd(), self.pgid.as_raw());
        let mut stack = vec![0u8; STACK].into_boxed_slice();
        // The top of the stack, 16-byte aligned as the ABI wants.
        let top = stack.as_mut_ptr().wrapping_add(STACK);
        let top = top.wrapping_sub(top as usize % 16);
        // The guard's two numbers travel in clone's argument itself, not in memory that could
        // change under it.
        let arg = (((pipe as u32 as u64) << 32) | pgid as u32 as u64) as usize as *mut libc::c_void;
        // All signals blocked across the clone: the guard starts with them blocked, so that
        // none of zklock's handlers can run in it (they would touch zklock's memory).
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))?;
        // SAFETY: CLONE_VM without CLONE_THREAD: a new process on `stack`, sharing our memory,
        // with copies of our descriptors and signal dispositions. `guard_entry` uses only its
        // own stack and system calls, and never returns; `stack` is freed only after the guard
        // is reaped.
        let pid = unsafe { libc::clone(guard_entry, top.cast(), libc::CLONE_VM | libc::SIGCHLD, arg) };
        let cloned = io::Error::last_os_error();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
        if pid < 0 {
            return Err(cloned);
        }
        drop(read_end);
        Ok(Guard { pid: Pid::from_raw(pid), pipe: Some(write_end), stack: Some(stack) })
    }
}

extern "C" fn guard_entry(arg: *mut nix::libc::c_void) -> nix::libc::c_int {
    let arg = arg as usize as u64;
    // SAFETY: see `Child::guard`.
    unsafe { guard_main((arg >> 32) as u32 as i32, arg as u32 as i32) }
}

/// The guard's whole life: keep only the pipe, leave zklock's process group (a signal to
/// zklock's job must not kill the guard), wait for the pipe to say "done" or to close, and
/// SIGKILL the command's group if it closed without "done". Every signal stays blocked, as it
/// was at the clone: none can stop, end or interrupt the guard, but SIGKILL and SIGSTOP.
///
/// It shares zklock's memory, so it runs on its own stack and makes nothing but system calls:
/// through rustix, which touches no thread-local state (no errno; the thread pointer is
/// zklock's), except `close_range` and `_exit` through libc, whose errno is written only on a
/// failure their arguments rule out.
unsafe fn guard_main(pipe: i32, pgid: i32) -> ! {
    use nix::libc;
    use rustix::fd::BorrowedFd;
    use rustix::process::{kill_process_group, setpgid, Pid as RawPid, Signal as RawSignal};
    if pipe > 0 {
        libc::syscall(libc::SYS_close_range, 0u32, (pipe - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (pipe + 1) as u32, u32::MAX, 0u32);
    let _ = setpgid(None, None);
    let fd = BorrowedFd::borrow_raw(pipe);
    let mut byte = [0u8; 1];
    let disarmed = loop {
        match rustix::io::read(fd, &mut byte) {
            Ok(n) => break n == 1 && byte[0] == DISARM,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break false,
        }
    };
    if !disarmed {
        if let Some(group) = RawPid::from_raw(pgid) {
            let _ = kill_process_group(group, RawSignal::KILL);
        }
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
        let reaped = loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.is_ok(),
            }
        };
        if !reaped {
            // Not reaped, so maybe still running on its stack: never free it.
            std::mem::forget(self.stack.take());
        }
    }
}

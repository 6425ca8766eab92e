//! The guard process of a running command (see [`Guard`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

// The guard shares zklock's memory and thread pointer: its system calls must never touch
// thread-local state (errno). rustix's linux_raw backend makes them without libc; close_range
// (which rustix lacks) and close are made below with an inline `syscall`. Both hold only on
// these targets.
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
compile_error!(
    "the guard process (src/child/guard.rs) needs Linux on x86_64 or aarch64: its raw system calls write no errno only there"
);
#[cfg(rustix_use_libc)]
compile_error!(
    "the guard process needs rustix's linux_raw backend (no errno); do not build with --cfg rustix_use_libc"
);

/// A small process outside the command's group: the dead-man's switch of the command.
///
/// - If zklock dies without disarming it (`kill -9`), the socket to zklock reads end-of-file
///   and the guard SIGKILLs the command's whole group: PR_SET_PDEATHSIG only covers the group
///   leader, and the leader's own children (`sh -c 'a | b'`) would run on without the lock.
/// - It is armed with the instant (on CLOCK_BOOTTIME) by which it must hear from zklock again:
///   zklock's own SIGKILL instant (`D - K`, from the last confirmed heartbeat), which zklock
///   renews each time `t_ok` advances. With no renewal by then, the guard SIGKILLs the group
///   itself: a zklock that is stopped (SIGSTOP, a debugger), hung or starved of CPU cannot
///   leave its command running after the server may hand the lock on.
///
/// The guard is a process (it must outlive zklock) that shares zklock's memory (`clone` with
/// `CLONE_VM`, as `posix_spawn` does before its `exec`): starting it copies no page tables, and
/// zklock's writes afterwards take no copy-on-write faults. It runs on a stack of its own in a
/// [`Block`] that zklock never frees while it may run, touches no other memory of zklock's,
/// allocates nothing, and knows nothing of ZooKeeper: it acts on what zklock last told it.
pub struct Guard {
    pid: Pid,
    /// zklock's end of the socket pair; closing it (or zklock's death) is the alarm.
    sock: Option<OwnedFd>,
    /// The guard's timer (the same open timer as the guard's): zklock arms it.
    timer: OwnedFd,
    /// Whether the guard said it holds none of zklock's descriptors.
    ready: bool,
    /// Freed only once the guard is reaped.
    block: Option<Box<Block>>,
}

/// What the guard reads when zklock is done with the group.
const DISARM: u8 = b'd';
/// What it reads, followed by the pgid (4 bytes, native order), once the command is spawned.
const GROUP: u8 = b'g';
/// What the guard writes once it holds no descriptor of zklock's but its own.
const READY: u8 = b'r';
/// What it writes when it could not close them: zklock must not start the command.
const FAILED: u8 = b'f';

/// The guard's stack: `guard_main` needs a few hundred bytes.
const STACK: usize = 64 * 1024;

/// The most descriptors the one-by-one fallback closes.
const MAX_FDS: u64 = 1 << 20;

/// What zklock and the guard share: the guard's arguments (written before the clone, never
/// changed after), the two cells zklock updates, and the guard's stack.
#[repr(C, align(16))]
struct Block {
    args: Args,
    /// zklock's SIGKILL instant, nanoseconds on CLOCK_BOOTTIME; only ever moves forward.
    kill_at_ns: AtomicU64,
    stack: [u8; STACK],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Args {
    /// The guard's end of the socket pair.
    sock: i32,
    /// zklock's end: the guard must not hold it, or it would never see zklock die.
    peer: i32,
    /// A timerfd on CLOCK_BOOTTIME, armed by zklock at the first SIGKILL instant.
    timer: i32,
    /// Fault injection for the tests (debug builds only): 1 = close_range fails, 2 = closing
    /// one by one fails too.
    fault: u8,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

fn timespec(ns: u64) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 }
}

fn fault_injected() -> u8 {
    if cfg!(debug_assertions) {
        match std::env::var("ZKLOCK_TEST_GUARD_FAULT").as_deref() {
            Ok("close_range") => 1,
            Ok("close") => 2,
            _ => 0,
        }
    } else {
        0
    }
}

impl Guard {
    /// Starts the guard, not armed yet: it holds nothing but its own descriptors and waits.
    /// Started early (while the lock is being acquired), so that its start is not part of
    /// the time between a release and the next command; [`Guard::arm`] arms it before the
    /// command starts.
    pub fn start() -> io::Result<Guard> {
        use nix::libc;
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        // SOCK_SEQPACKET: each message arrives whole, and end-of-file when zklock is gone.
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let timer = timerfd_create(TimerfdClockId::Boottime, TimerfdFlags::CLOEXEC)?;
        let args = Args {
            sock: theirs.as_raw_fd(),
            peer: ours.as_raw_fd(),
            timer: timer.as_raw_fd(),
            fault: fault_injected(),
        };
        let mut block = Box::new(Block { args, kill_at_ns: AtomicU64::new(u64::MAX), stack: [0; STACK] });
        // The top of the stack, 16-byte aligned as the ABI wants.
        let top = block.stack.as_mut_ptr().wrapping_add(STACK);
        let top = top.wrapping_sub(top as usize % 16);
        let arg: *mut libc::c_void = (&mut *block as *mut Block).cast();
        // All signals blocked across the clone: the guard starts with them blocked, so that
        // none of zklock's handlers can run in it (they would touch zklock's memory).
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old))?;
        // SAFETY: CLONE_VM without CLONE_THREAD: a new process on the block's stack, sharing
        // our memory, with copies of our descriptors and signal dispositions. `guard_entry`
        // uses only its block and system calls that write no errno, and never returns. The
        // block is freed only after the guard is reaped (or never, see `Drop`), and nothing
        // fallible runs between here and the moment `Guard` owns it.
        let pid = unsafe { libc::clone(guard_entry, top.cast(), libc::CLONE_VM | libc::SIGCHLD, arg) };
        let cloned = io::Error::last_os_error();
        let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        if pid < 0 {
            return Err(cloned);
        }
        // From here the guard may run on the block: `Guard` owns it, so every early return
        // below goes through `Drop`, which reaps the guard before freeing it.
        let guard = Guard { pid: Pid::from_raw(pid), sock: Some(ours), timer, ready: false, block: Some(block) };
        drop(theirs);
        restored?;
        Ok(guard)
    }

    /// Arms the guard to SIGKILL the command's group at `kill_at` (CLOCK_BOOTTIME), once it
    /// said it holds none of zklock's descriptors. `Err` means the command must not be
    /// started: nothing would stop it if zklock froze or died.
    pub fn arm(&mut self, kill_at: Duration) -> io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        if !self.ready {
            self.wait_ready()?;
            self.ready = true;
        }
        let ns = nanos(kill_at).max(1);
        if let Some(block) = &self.block {
            block.kill_at_ns.store(ns, Ordering::Release);
        }
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        timerfd_settime(
            &self.timer,
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec { it_interval: zero, it_value: timespec(ns) },
        )?;
        Ok(())
    }

    /// The guard's first word: it holds no descriptor of zklock's but its own.
    fn wait_ready(&mut self) -> io::Result<()> {
        let sock = self.sock.as_ref().expect("armed");
        let mut byte = [0u8; 1];
        let n = loop {
            match nix::unistd::read(sock.as_raw_fd(), &mut byte) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        match (n, byte[0]) {
            (1, READY) => Ok(()),
            (1, FAILED) => Err(io::Error::other(
                "the guard process could not close zklock's descriptors (close_range failed, and so did closing them one by one), \
                 so it would not see zklock die",
            )),
            _ => Err(io::Error::other("the guard process exited before it was armed")),
        }
    }

    /// The command's group, once it is spawned: what the guard kills. Should the guard's
    /// instant have passed before it knew the group (zklock stopped between arming it and
    /// spawning), it kills the group as soon as it is told. `Err`: the guard is gone, and the
    /// command must not run.
    pub fn set_group(&self, pgid: Pid) -> io::Result<()> {
        let sock = self.sock.as_ref().expect("armed");
        let mut msg = [GROUP, 0, 0, 0, 0];
        msg[1..].copy_from_slice(&pgid.as_raw().to_ne_bytes());
        let sent = nix::sys::socket::send(sock.as_raw_fd(), &msg, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)?;
        if sent != msg.len() {
            return Err(io::Error::other("the guard process was not told the command's group"));
        }
        Ok(())
    }

    /// Moves the guard's SIGKILL instant forward (never back) to `kill_at` (CLOCK_BOOTTIME).
    /// One atomic store: the guard reads it when its timer fires.
    pub fn renew(&self, kill_at: Duration) {
        if let Some(block) = &self.block {
            block.kill_at_ns.fetch_max(nanos(kill_at), Ordering::AcqRel);
        }
    }

    /// The group is gone: the guard exits without killing anything. Does not wait for it; it
    /// is reaped when the `Guard` is dropped.
    pub fn disarm(&mut self) {
        if let Some(sock) = self.sock.take() {
            // MSG_NOSIGNAL: a guard that already acted and exited is no SIGPIPE.
            let _ = nix::sys::socket::send(sock.as_raw_fd(), &[DISARM], nix::sys::socket::MsgFlags::MSG_NOSIGNAL);
        }
    }
}

impl Drop for Guard {
    /// Reaps the guard. Dropped without being disarmed (an error path), the closed socket makes
    /// the guard kill the group first.
    fn drop(&mut self) {
        drop(self.sock.take());
        let reaped = loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.is_ok(),
            }
        };
        if !reaped {
            // Not reaped, so maybe still running on its block: never free it.
            std::mem::forget(self.block.take());
        }
    }
}

extern "C" fn guard_entry(arg: *mut nix::libc::c_void) -> nix::libc::c_int {
    // SAFETY: `arg` is the block `Guard::arm` passed to clone, alive while the guard runs.
    unsafe { guard_main(&*(arg as *const Block)) }
}

/// A system call with three arguments, made directly: `Err` with the kernel's errno, which is
/// never written anywhere (libc's `syscall` writes errno; rustix's `close` asserts success in
/// debug builds, and most descriptors the fallback closes are not open).
///
/// # Safety
/// As for the system call `nr` itself.
unsafe fn syscall3(nr: nix::libc::c_long, a0: usize, a1: usize, a2: usize) -> Result<usize, isize> {
    let ret: isize;
    #[cfg(target_arch = "x86_64")]
    core::arch::asm!(
        "syscall",
        inlateout("rax") nr as isize => ret,
        in("rdi") a0,
        in("rsi") a1,
        in("rdx") a2,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    #[cfg(target_arch = "aarch64")]
    core::arch::asm!(
        "svc 0",
        in("x8") nr as isize,
        inlateout("x0") a0 as isize => ret,
        in("x1") a1,
        in("x2") a2,
        options(nostack),
    );
    if (-4095..0).contains(&ret) {
        Err(-ret)
    } else {
        Ok(ret as usize)
    }
}

/// Now on CLOCK_BOOTTIME, nanoseconds, by a raw system call (no vDSO lookup to initialise).
fn boottime_ns() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given, and nothing else.
    let r = unsafe {
        syscall3(nix::libc::SYS_clock_gettime, nix::libc::CLOCK_BOOTTIME as usize, &mut ts as *mut _ as usize, 0)
    };
    match r {
        Ok(_) => ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        // Cannot fail for CLOCK_BOOTTIME; were it to, act as if the instant had come.
        Err(_) => u64::MAX,
    }
}

/// close_range(2) of `first..=last`.
///
/// # Safety
/// Closes descriptors of the calling process; the caller must not use them afterwards.
unsafe fn close_range(first: u32, last: u32) -> Result<(), isize> {
    syscall3(nix::libc::SYS_close_range, first as usize, last as usize, 0).map(|_| ())
}

/// Closes every descriptor but `keep` (sorted, no duplicates): close_range between them, or,
/// where that fails (a kernel before 5.9, a seccomp filter), one by one.
///
/// # Safety
/// Only for the guard, which uses no descriptor but those in `keep` afterwards.
unsafe fn close_all_but(keep: &[i32; 3], fault: u8) {
    let mut ranged = fault == 0;
    let mut first: u32 = 0;
    for &k in keep.iter() {
        if ranged && (k as u32) > first {
            ranged = close_range(first, k as u32 - 1).is_ok();
        }
        first = k as u32 + 1;
    }
    if ranged {
        ranged = close_range(first, u32::MAX).is_ok();
    }
    if ranged || fault == 2 {
        return;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let max = limit.current.unwrap_or(MAX_FDS).max(limit.maximum.unwrap_or(0)).min(MAX_FDS);
    for fd in 0..max as i32 {
        if !keep.contains(&fd) {
            // EBADF for the many that are not open.
            let _ = syscall3(nix::libc::SYS_close, fd as usize, 0, 0);
        }
    }
}

/// The guard's whole life: keep only its socket, its timer and stderr; say whether that
/// worked; leave zklock's process group (a signal to zklock's job must not kill the guard);
/// then wait for one of three things:
/// - "group" on the socket: the command's group, spawned (killed at once if the instant passed
///   before);
/// - "disarm" on the socket: exit, killing nothing;
/// - end-of-file on the socket (zklock died): SIGKILL the command's group;
/// - the timer, at the SIGKILL instant: if zklock renewed it meanwhile, re-arm it at the new
///   instant; if not, SIGKILL the command's group and say so on stderr.
///
/// Every signal stays blocked, as it was at the clone: none can stop, end or interrupt the
/// guard, but SIGKILL and SIGSTOP.
///
/// # Safety
/// Runs in the guard process only, which shares zklock's memory and thread pointer: it must
/// touch nothing but `block` and its own stack, and make no call that writes errno or other
/// thread-local state (rustix's linux_raw backend, and the raw close_range above).
unsafe fn guard_main(block: &Block) -> ! {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::fd::BorrowedFd;
    use rustix::process::setpgid;
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let args = block.args;
    // stderr, for the guard's one line; unless zklock started without one and its end of the
    // socket pair took number 2.
    let stderr = if args.peer == 2 { args.sock } else { 2 };
    let mut keep = [stderr, args.sock, args.timer];
    keep.sort_unstable();
    close_all_but(&keep, args.fault);
    let sock = BorrowedFd::borrow_raw(args.sock);
    let timer = BorrowedFd::borrow_raw(args.timer);
    let stderr = BorrowedFd::borrow_raw(stderr);
    // Holding zklock's end, the guard would never read end-of-file when zklock dies.
    let closed = rustix::io::fcntl_getfd(BorrowedFd::borrow_raw(args.peer)).is_err();
    let _ = rustix::io::write(sock, &[if closed { READY } else { FAILED }]);
    if !closed {
        exit(1);
    }
    let _ = setpgid(None, None);
    // The command's group, 0 until zklock says; `expired`: the instant passed before that.
    let mut pgid = 0;
    let mut expired = false;
    const FROZEN: &[u8] =
        b"zklock: guard: no word from zklock by its SIGKILL instant (frozen, hung or starved?); sent SIGKILL to the command's group\n";
    loop {
        let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::IN), PollFd::from_borrowed_fd(timer, PollFlags::IN)];
        if let Err(e) = poll(&mut fds, None) {
            if e == rustix::io::Errno::INTR {
                continue;
            }
            kill_group(pgid, stderr, b"zklock: guard: cannot wait for zklock; sent SIGKILL to the command's group\n");
        }
        let (sock_ready, timer_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if sock_ready {
            let mut msg = [0u8; 8];
            match rustix::io::read(sock, &mut msg) {
                Ok(1) if msg[0] == DISARM => exit(0),
                Ok(5) if msg[0] == GROUP => {
                    pgid = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
                    if expired {
                        kill_group(pgid, stderr, FROZEN);
                    }
                }
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                // End-of-file: zklock is gone (killed) without disarming.
                _ => kill_group(pgid, stderr, b""),
            }
        }
        if timer_ready {
            let mut expirations = [0u8; 8];
            let _ = rustix::io::read(timer, &mut expirations);
            let kill_at = block.kill_at_ns.load(Ordering::Acquire);
            if boottime_ns() >= kill_at {
                if pgid != 0 {
                    kill_group(pgid, stderr, FROZEN);
                }
                // Not spawned yet: kill it once zklock says which group it is.
                expired = true;
                continue;
            }
            // Renewed meanwhile: wait for the new instant.
            let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
            let spec = Itimerspec { it_interval: zero, it_value: timespec(kill_at) };
            if timerfd_settime(timer, TimerfdTimerFlags::ABSTIME, &spec).is_err() {
                kill_group(
                    pgid,
                    stderr,
                    b"zklock: guard: cannot re-arm its timer; sent SIGKILL to the command's group\n",
                );
            }
        }
    }
}

/// SIGKILLs the command's group `pgid` (0: not spawned), says `why` on stderr if that found
/// processes, and ends the guard.
///
/// # Safety
/// As [`guard_main`].
unsafe fn kill_group(pgid: i32, stderr: rustix::fd::BorrowedFd<'_>, why: &[u8]) -> ! {
    use rustix::process::{kill_process_group, Pid as RawPid, Signal as RawSignal};
    if let Some(group) = RawPid::from_raw(pgid) {
        if kill_process_group(group, RawSignal::KILL).is_ok() && !why.is_empty() {
            let _ = rustix::io::write(stderr, why);
        }
    }
    exit(0)
}

/// Ends the guard: `_exit` never returns, so it writes no errno.
///
/// # Safety
/// As [`guard_main`].
unsafe fn exit(code: i32) -> ! {
    nix::libc::_exit(code)
}

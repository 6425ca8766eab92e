//! Freezing a holder, as a stopped zklock or a paused VM would: zklock alone, or the whole
//! holder (zklock, its guard process and the command's process group).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The direct children of `pid` (every thread's), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The process group of `pid`, from /proc/<pid>/stat.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// zklock's guard process: its child outside the command's group `command_pgid`. Waits up to
/// `patience` for it to appear.
pub fn guard_of(zklock: u32, command_pgid: u32, patience: Duration) -> u32 {
    let until = Instant::now() + patience;
    loop {
        let guard = children_of(zklock).into_iter().find(|&c| pgid_of(c).is_some_and(|g| g != command_pgid));
        if let Some(g) = guard {
            return g;
        }
        assert!(Instant::now() < until, "zklock {zklock} has no guard process outside group {command_pgid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A frozen whole holder; [`WholeHolder::thaw`] continues it.
pub struct WholeHolder {
    pub zklock: u32,
    pub guard: u32,
    pub pgid: u32,
}

impl WholeHolder {
    /// Stops zklock, its guard and every process of the command's group, in that order.
    pub fn freeze(zklock: u32, command_pgid: u32) -> WholeHolder {
        let guard = guard_of(zklock, command_pgid, Duration::from_secs(5));
        let _ = kill(Pid::from_raw(zklock as i32), Signal::SIGSTOP);
        let _ = kill(Pid::from_raw(guard as i32), Signal::SIGSTOP);
        let _ = killpg(Pid::from_raw(command_pgid as i32), Signal::SIGSTOP);
        WholeHolder { zklock, guard, pgid: command_pgid }
    }

    /// Continues zklock and its guard first, then the command's group (as a host thaws every
    /// process at once; here the guard gets its chance first).
    pub fn thaw(&self) {
        let _ = kill(Pid::from_raw(self.guard as i32), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(self.zklock as i32), Signal::SIGCONT);
        let _ = killpg(Pid::from_raw(self.pgid as i32), Signal::SIGCONT);
    }
}

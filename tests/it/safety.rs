//! What goes beyond a scheduled zklock (`shared/design/safety.md`, "Beyond a scheduled zklock"):
//! the guard as a dead-man's switch, and the lock-delay after a holder vanished without a clean
//! release (scenario 11), with every place where a clean release must cost no delay. zklock
//! stopped alone (scenario 8) is in faults.rs, which uses the helpers below.
//!
//! The servers' tickTime is 500 ms; T = 4 s: heartbeat 400 ms, SIGKILL (zklock's and the
//! guard's) 2.66 s after the last heartbeat confirmed through the leader, expiry by the server
//! 4 s or more after it last heard from the client.

use std::time::{Duration, Instant};

use crate::faults::history::Event;
use crate::faults::{serial, Bed};
use crate::support::freeze::{guard_of, pgid_of};
use crate::support::{shared_zk, unique_lock_path};
use crate::util::{alive, output, read_pid, run_shared, stderr, wait_status, Zk, PATIENCE};

/// Prepended to the history script by [`with_grandchild`]: a background subshell (a grandchild
/// of zklock, in the command's group) that beats in the history under the run's id, and a
/// `grandchild <pid>` line; then the history script itself, by `exec`.
const GRANDCHILD: &str = r#"
h=$1 id=$2
shift 4
( while :; do echo "${EPOCHREALTIME//[.,]/}000 $id beat" >> "$h"; sleep 0.05; done ) &
echo "${EPOCHREALTIME//[.,]/}000 $id grandchild $!" >> "$h"
exec "$@"
"#;

/// zklock options for `Bed::spawn(id, .., lock, opts, ..)` that make the command a shell with
/// a grandchild in its group: they end with `LOCK -- bash -c GRANDCHILD grandchild <history>
/// <id>`, to which `Bed::spawn` appends `LOCK -- <history command>`, run by `exec`. The
/// history's last sign of life of `id` is then the whole group's, not only its leader's.
pub(crate) fn with_grandchild(bed: &Bed, id: &str, lock: &str, opts: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    let history = bed.history.path().to_string_lossy().into_owned();
    out.extend([lock, "--", "bash", "-c", GRANDCHILD, "grandchild", &history, id].map(String::from));
    out
}

/// The pid of `id`'s grandchild (see [`with_grandchild`]).
pub(crate) fn grandchild_of(bed: &Bed, id: &str) -> i32 {
    let e = bed.history.wait_event(id, "grandchild", PATIENCE);
    e.args[0].parse().expect("a pid")
}

/// The live (not zombie) processes of process group `pgid`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| pgid_of(p) == Some(pgid) && alive(p as i32))
        .collect()
}

/// Polls until `id`'s command starts. Notes in the history (`test group-gone <pgid>`) the
/// first poll that found process group `pgid` empty, and returns that note's time (an
/// observation: the group was gone by then) with the start event.
pub(crate) fn watch_group_until_start(bed: &Bed, pgid: u32, id: &str) -> (Event, Option<u64>) {
    let until = Instant::now() + PATIENCE;
    let mut gone = None;
    loop {
        if gone.is_none() && group_members(pgid).is_empty() {
            gone = Some(bed.history.note("test", &format!("group-gone {pgid}")));
        }
        if let Some(e) = bed.history.events().into_iter().find(|e| e.id == id && e.kind == "start") {
            return (e, gone);
        }
        assert!(Instant::now() < until, "'{id} start' not in the history after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The kinds of the descriptors `pid` holds (`pipe`, `socket`, `anon_inode:[timerfd]`, a
/// path), sorted: numbers and inodes left out.
fn descriptor_kinds(pid: u32) -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| {
            let t = t.to_string_lossy().into_owned();
            match t.split_once(":[") {
                Some((kind, _)) if kind == "pipe" || kind == "socket" => kind.to_owned(),
                _ => t,
            }
        })
        .collect();
    kinds.sort();
    kinds
}

/// Runs a command under zklock with `ZKLOCK_TEST_GUARD_FAULT=fault` (if any) and returns the
/// kinds of descriptors its guard holds while the command runs, and zklock's exit code.
fn guard_descriptors(lock: &str, dir: &std::path::Path, fault: Option<&str>) -> (Vec<String>, i32) {
    let name = fault.unwrap_or("none");
    let (pid, go) = (dir.join(format!("{name}.pid")), dir.join(format!("{name}.go")));
    let script = format!("echo $$ > '{}'; while [ ! -e '{}' ]; do sleep 0.02; done", pid.display(), go.display());
    let mut cmd = run_shared(lock, &[], &["sh", "-c", &script]);
    if let Some(f) = fault {
        cmd.env("ZKLOCK_TEST_GUARD_FAULT", f);
    }
    let mut zklock = cmd.stdout(std::process::Stdio::null()).spawn().expect("spawn zklock");
    let pgid = read_pid(&pid) as u32;
    let guard = guard_of(zklock.id(), pgid, PATIENCE);
    let kinds = descriptor_kinds(guard);
    std::fs::write(&go, "").unwrap();
    (kinds, wait_status(&mut zklock).code().expect("an exit code"))
}

/// The guard's fault injection (debug builds): with close_range(2) failing, the guard closes
/// zklock's descriptors one by one and the run works, the guard holding the same kinds of
/// descriptors as one whose close_range worked; with closing failing too, zklock refuses to
/// start the command unprotected: exit 125, one error line, nothing run, no node left.
#[test]
fn a_guard_that_cannot_close_zklocks_descriptors_is_refused_and_one_without_close_range_falls_back() {
    let _turn = serial();
    let zk = Zk::connect(&shared_zk().connect_string());
    let lock = unique_lock_path("guard-fault");
    let dir = tempfile::TempDir::new().unwrap();

    let (normal, code) = guard_descriptors(&lock, dir.path(), None);
    assert_eq!(code, 0);
    let (fallback, code) = guard_descriptors(&lock, dir.path(), Some("close_range"));
    assert_eq!(code, 0, "the guard's fallback failed the run");
    assert_eq!(fallback, normal, "the one-by-one fallback left the guard other descriptors than close_range does");

    let ran = dir.path().join("ran");
    let mut cmd = run_shared(&lock, &[], &["touch", ran.to_str().unwrap()]);
    cmd.env("ZKLOCK_TEST_GUARD_FAULT", "close");
    let out = output(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("error:") && err.contains("guard"), "{err}");
    assert!(!ran.exists(), "the command ran without a guard");
    assert!(zk.children(&lock).is_empty(), "a node was left: {:?}", zk.children(&lock));
}

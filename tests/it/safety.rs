//! What goes beyond a scheduled zklock (`shared/design/safety.md`, "Beyond a scheduled zklock"):
//! the guard as a dead-man's switch, and the lock-delay after a holder vanished without a clean
//! release (scenario 11), with every place where a clean release must cost no delay. zklock
//! stopped alone (scenario 8) is in faults.rs, which uses the helpers below.
//!
//! The servers' tickTime is 500 ms; T = 4 s: heartbeat 400 ms, SIGKILL (zklock's and the
//! guard's) 2.66 s after the last heartbeat confirmed through the leader, expiry by the server
//! 4 s or more after it last heard from the client.

use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::support::fixtures::{settle, verify};
use crate::support::freeze::{guard_of, pgid_of, WholeHolder};
use crate::support::history::{check, Bound, Event, Hold, Report, Run};
use crate::support::proxy::{expire_session, Mode, Proxy};
use crate::support::{addr, serial, Bed, Zklock};
use crate::support::{alive, output, read_pid, run_shared, stderr, wait_status, Zk, PATIENCE};
use crate::support::{shared_zk, unique_lock_path, wait_until, ZkServer};

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

/// The line with which a contender says it waits the lock-delay.
fn delay_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.contains("vanished without a clean release") || l.contains("lock-delay"))
}

fn assert_delayed(who: &Zklock) {
    let err = who.stderr();
    let line = delay_line(&err).unwrap_or_else(|| panic!("{} did not wait the lock-delay:\n{err}", who.id));
    assert!(line.contains("vanished without a clean release") && line.contains("lock-delay"), "{line}");
}

/// `next`'s command started at `started`, with no lock-delay, soon after the lock was freed
/// at `freed` (by a release that cost no delay). The holders' lock-delay is 20 s, so a wrong
/// delay is unmistakable; 10 s is a wide margin, not a speed.
fn assert_not_delayed(stage: &str, next: &Zklock, freed: u64, started: u64) {
    let err = next.stderr();
    assert!(delay_line(&err).is_none(), "{stage}: {} waited a lock-delay:\n{err}", next.id);
    let after = Duration::from_nanos(started.saturating_sub(freed));
    assert!(after < Duration::from_secs(10), "{stage}: {} started {after:?} after the lock was freed:\n{err}", next.id);
}

/// Waits until `z`'s command starts and returns when it did; fails at once if `z` says it waits
/// a lock-delay instead (rather than after it).
fn started_undelayed(bed: &Bed, z: &Zklock) -> u64 {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Some(e) = bed.history.events().into_iter().find(|e| e.id == z.id && e.kind == "start") {
            return e.ts;
        }
        let err = z.stderr();
        assert!(delay_line(&err).is_none(), "{} waits a lock-delay:\n{err}", z.id);
        assert!(Instant::now() < until, "{} did not start in {PATIENCE:?}:\n{err}", z.id);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const T: &str = "4s";

/// A frozen holder that a failing test leaves running (so that its processes can end).
struct ThawOnPanic(WholeHolder);

impl Drop for ThawOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.thaw();
        }
    }
}

/// The whole holder (zklock, its guard, the command's group with a grandchild) frozen for
/// 6.5 s, T < 6.5 s, with a waiter queued; both run with `--lock-delay lock_delay`. The thaw
/// continues the command's group first (a host thaws in no order of ours) and waits until
/// it shows life, then the guard and zklock. Returns the checker's report and the waiter's
/// start, the first instant the holder's group was seen gone, when its node was seen gone,
/// and the waiter.
fn whole_holder_frozen_past_the_session(
    lock: &str,
    lock_delay: &str,
) -> (Report, Bed, Event, Option<u64>, u64, Zklock) {
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let bed = Bed::new();
    let opts = ["-v", "--session-timeout", T, "--lock-delay", lock_delay];
    let holder_opts = with_grandchild(&bed, "holder", lock, &opts);
    let mut holder =
        bed.spawn("holder", &server.connect_string(), server.tick(), lock, &strs(&holder_opts), bed.until("h.go"));
    bed.history.wait_event("holder", "start", PATIENCE);
    grandchild_of(&bed, "holder");
    let pgid = bed.history.commands()["holder"].pid as u32;
    let holder_node = zk.wait_children(lock, 1).remove(0);
    let mut waiter = bed.spawn("waiter", &server.connect_string(), server.tick(), lock, &opts, Hold::Beats(3));
    zk.wait_children(lock, 2);

    bed.history.note("test", "freeze the whole holder");
    let frozen = ThawOnPanic(WholeHolder::freeze(holder.pid(), pgid));
    let since = Instant::now();
    // The fault's length, watching for the moment the server hands the lock on.
    let mut vanished = None;
    while since.elapsed() < Duration::from_millis(6_500) {
        if vanished.is_none() && !zk.children(lock).contains(&holder_node) {
            vanished = Some(bed.history.note("test", "holder's node gone"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let vanished = vanished.expect("the server did not expire the frozen holder's session in 6.5 s");
    if lock_delay == "0s" {
        // Nothing holds the waiter back: it starts while the holder is frozen.
        bed.history.wait_event("waiter", "start", PATIENCE);
    }
    let thawing = bed.history.note("test", "thaw the command's group");
    killpg(Pid::from_raw(pgid as i32), Signal::SIGCONT).unwrap();
    wait_until(PATIENCE, "the thawed command to show life", || {
        bed.history.events().iter().any(|e| e.id == "holder" && e.kind == "beat" && e.ts > thawing)
    });
    bed.history.note("test", "thaw the guard and zklock");
    frozen.0.thaw();
    let (waiter_start, gone) = watch_group_until_start(&bed, pgid, "waiter");

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    let leaked = settle(&zk, lock, PATIENCE);
    let report = check(&bed.history.events(), &runs, &leaked);
    if std::env::var_os("ZKLOCK_FAULTS_SHOW").is_some() {
        eprintln!("{}--- history ---\n{}", report.describe(), bed.history.dump());
    }
    (report, bed, waiter_start, gone, vanished, waiter)
}

/// Scenario 11: the whole holder frozen for T < 6.5 s < T + lock-delay (6 s). The server hands
/// the lock on, but the waiter starts its command only after the lock-delay, and by then the
/// thawed holder's command (its whole group) is dead: no overlap, nothing excused.
#[test]
fn whole_holder_frozen_for_less_than_t_plus_the_lock_delay_is_dead_before_the_waiter_starts() {
    let _turn = serial();
    let (report, bed, waiter_start, gone, vanished, waiter) =
        whole_holder_frozen_past_the_session("/safety/whole-frozen", "6s");
    report.assert_ok(&bed.history);
    let gone = gone.expect("the holder's group was never seen gone");
    assert!(gone < waiter_start.ts, "the holder's group was still alive when the waiter started");
    let cmds = bed.history.commands();
    assert!(cmds["holder"].last < waiter_start.ts);
    assert!(cmds["waiter"].token > cmds["holder"].token);
    assert_delayed(&waiter);
    let delay = Duration::from_nanos(waiter_start.ts.saturating_sub(vanished));
    assert!(delay >= Duration::from_millis(5_900), "the waiter started {delay:?} after the holder's node vanished");
}

/// The same run without a lock-delay: the waiter starts while the holder is frozen, and the
/// thawed command shows life after it started: the checker finds the overlap that the delay
/// prevents.
#[test]
fn whole_holder_frozen_past_the_session_without_a_lock_delay_overlaps_the_waiter() {
    let _turn = serial();
    let (report, bed, _, _, _, _) = whole_holder_frozen_past_the_session("/safety/whole-frozen-no-delay", "0s");
    assert_eq!(report.overlaps.len(), 1, "{}\n{}", report.describe(), bed.history.dump());
    assert!(
        report.token_errors.is_empty() && report.leaked.is_empty() && report.unexpected_exits.is_empty(),
        "{}\n{}",
        report.describe(),
        bed.history.dump()
    );
    let cmds = bed.history.commands();
    assert!(cmds["waiter"].token > cmds["holder"].token);
}

/// A waiter through a proxy, its session expired from outside: refused reconnects until the
/// session is closed, so it cannot re-attach first. Returns the time just before the expiry.
fn expire_through(bed: &Bed, proxy: &Proxy, server: &ZkServer) -> u64 {
    let session = proxy.wait_session(PATIENCE);
    proxy.set_mode(Mode::Refuse);
    let expiring = bed.history.note("test", &format!("expire session {:#x}", session.id));
    expire_session(addr(server.port()), &session).expect("expire the session");
    bed.history.note("test", "expired");
    proxy.set_mode(Mode::Pass);
    expiring
}

/// Every lock-delay 20 s, so that a wrong delay is unmistakable.
const NO_DELAY_OPTS: [&str; 5] = ["-v", "--session-timeout", T, "--lock-delay", "20s"];

/// [`NO_DELAY_OPTS`] and `extra`.
fn no_delay_opts(extra: &[&'static str]) -> Vec<&'static str> {
    NO_DELAY_OPTS.iter().chain(extra).copied().collect()
}

/// A server of its own: it, a client on it, its connect string and its tick.
fn own_server() -> (ZkServer, Zk, String, std::time::Duration) {
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let (connect, tick) = (server.connect_string(), server.tick());
    (server, zk, connect, tick)
}

fn wait_queued(z: &Zklock) {
    wait_until(PATIENCE, &format!("{} to queue", z.id), || z.stderr().contains("waiting for"));
}

/// No lock-delay where the lock was freed cleanly, with every holder's lock-delay 20 s: after
/// the holder's own release, and after it when a waiter that gave up (`--wait`) or one whose
/// session expired while it only waited stood between it and the next holder.
#[test]
fn no_lock_delay_after_a_clean_release_a_waiter_giving_up_or_a_waiter_expired_while_waiting() {
    let _turn = serial();
    let (server, zk, connect, tick) = own_server();
    let (opts, with) = (NO_DELAY_OPTS, no_delay_opts);
    let cmd = |bed: &Bed, id: &str| bed.history.commands()[id].clone();

    // The holder's own release.
    let (bed, lock) = (Bed::new(), "/safety/clean/release");
    let mut holder = bed.spawn("holder", &connect, tick, lock, &opts, bed.until("h.go"));
    bed.history.wait_event("holder", "start", PATIENCE);
    let mut next = bed.spawn("next", &connect, tick, lock, &opts, Hold::Beats(3));
    zk.wait_children(lock, 2);
    bed.release("h.go");
    let started = started_undelayed(&bed, &next);
    let runs = [Run::new("holder", holder.wait(), &[0]), Run::new("next", next.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    assert_not_delayed("clean release", &next, cmd(&bed, "holder").last, started);

    // A waiter that gave up, then the holder's release.
    let (bed, lock) = (Bed::new(), "/safety/clean/gave-up");
    let mut holder = bed.spawn("holder", &connect, tick, lock, &opts, bed.until("h.go"));
    bed.history.wait_event("holder", "start", PATIENCE);
    let mut quitter = bed.spawn("quitter", &connect, tick, lock, &with(&["--wait", "2s"]), Hold::Beats(3));
    zk.wait_children(lock, 2);
    let mut next = bed.spawn("next", &connect, tick, lock, &opts, Hold::Beats(3));
    zk.wait_children(lock, 3);
    let quitter_code = quitter.wait();
    bed.release("h.go");
    let started = started_undelayed(&bed, &next);
    let runs = [
        Run::new("holder", holder.wait(), &[0]),
        Run::new("quitter", quitter_code, &[75]),
        Run::new("next", next.wait(), &[0]),
    ];
    verify(&bed, &zk, lock, &runs);
    assert_not_delayed("a waiter gave up", &next, cmd(&bed, "holder").last, started);

    // A waiter whose session expired while it waited (it queues again at the end), then the
    // holder's release.
    let (bed, lock) = (Bed::new(), "/safety/clean/expired-waiter");
    let proxy = Proxy::to_port("expired", server.port());
    let mut holder = bed.spawn("holder", &connect, tick, lock, &opts, bed.until("h.go"));
    bed.history.wait_event("holder", "start", PATIENCE);
    let mut expired = bed.spawn("expired", &proxy.connect_string(), tick, lock, &opts, Hold::Beats(3));
    wait_queued(&expired);
    let mut next = bed.spawn("next", &connect, tick, lock, &opts, Hold::Beats(3));
    zk.wait_children(lock, 3);
    expire_through(&bed, &proxy, &server);
    wait_until(PATIENCE, "the expired waiter to queue again", || expired.stderr().contains("queueing again"));
    bed.release("h.go");
    let started = started_undelayed(&bed, &next);
    let started_after = started_undelayed(&bed, &expired);
    let runs = [
        Run::new("holder", holder.wait(), &[0]),
        Run::new("next", next.wait(), &[0]),
        Run::new("expired", expired.wait(), &[0]),
    ];
    verify(&bed, &zk, lock, &runs);
    assert_not_delayed("a waiter expired", &next, cmd(&bed, "holder").last, started);
    assert_not_delayed("after the next holder", &expired, cmd(&bed, "next").last, started_after);
}

/// A writer that never held, ahead of a reader, lets that reader in at once when it leaves:
/// by giving up (`--wait`) or by its session expiring while it waited. Neither is a holder
/// vanishing: no lock-delay (every lock-delay is 20 s, so a wrong one is unmistakable).
#[test]
fn a_reader_let_in_by_a_writer_that_gave_up_or_expired_while_waiting_waits_no_lock_delay() {
    let _turn = serial();
    let (server, zk, connect, tick) = own_server();
    let with = no_delay_opts;

    // A writer that gave up waiting.
    let (bed, lock) = (Bed::new(), "/safety/clean/rw-gave-up");
    let shared = with(&["--shared"]);
    let mut reader = bed.spawn("reader", &connect, tick, lock, &shared, bed.until("r.go"));
    bed.history.wait_event("reader", "start", PATIENCE);
    let mut writer = bed.spawn("writer", &connect, tick, lock, &with(&["--write", "--wait", "2s"]), Hold::Beats(3));
    zk.wait_children(lock, 2);
    let mut next = bed.spawn("next", &connect, tick, lock, &shared, Hold::Beats(3));
    zk.wait_children(lock, 3);
    let writer_code = writer.wait();
    let gave_up = bed.history.events().iter().rfind(|e| e.id == "writer" && e.kind == "zklock-exit").unwrap().ts;
    let next_start = started_undelayed(&bed, &next);
    bed.release("r.go");
    let runs = [
        Run::new("reader", reader.wait(), &[0]).on(lock, Bound::Reader),
        Run::new("writer", writer_code, &[75]).on(lock, Bound::Alone),
        Run::new("next", next.wait(), &[0]).on(lock, Bound::Reader),
    ];
    verify(&bed, &zk, lock, &runs);
    assert_not_delayed("a writer gave up", &next, gave_up, next_start);

    // A writer whose session expired while it waited (it queues again at the end).
    let (bed, lock) = (Bed::new(), "/safety/clean/rw-expired");
    let proxy = Proxy::to_port("writer", server.port());
    let mut reader = bed.spawn("reader", &connect, tick, lock, &shared, bed.until("r.go"));
    bed.history.wait_event("reader", "start", PATIENCE);
    let mut writer = bed.spawn("writer", &proxy.connect_string(), tick, lock, &with(&["--write"]), Hold::Beats(3));
    wait_queued(&writer);
    let mut next = bed.spawn("next", &connect, tick, lock, &shared, Hold::Beats(3));
    zk.wait_children(lock, 3);
    let expiring = expire_through(&bed, &proxy, &server);
    let next_start = started_undelayed(&bed, &next);
    bed.release("r.go");
    let runs = [
        Run::new("reader", reader.wait(), &[0]).on(lock, Bound::Reader),
        Run::new("writer", writer.wait(), &[0]).on(lock, Bound::Alone),
        Run::new("next", next.wait(), &[0]).on(lock, Bound::Reader),
    ];
    verify(&bed, &zk, lock, &runs);
    assert_not_delayed("a writer expired", &next, expiring, next_start);
}

/// `--limit 2`, one holder's session expired from outside: the waiter that takes its slot
/// waits the expired holder's lock-delay (the default, T); the next waiter, which takes the
/// slot of the holder that released cleanly (lock-delay 20 s), does not.
#[test]
fn limit_2_only_the_waiter_taking_the_expired_holders_slot_is_delayed() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("expired", server.port());
    let bed = Bed::new();
    let lock = "/safety/limit";
    let (connect, tick) = (server.connect_string(), server.tick());
    let opts = ["-v", "--session-timeout", T, "--limit", "2"];
    let clean: Vec<&str> = opts.iter().chain(&["--lock-delay", "20s"]).copied().collect();
    let mut expired = bed.spawn("expired", &proxy.connect_string(), tick, lock, &opts, bed.until("e.go"));
    let mut clean_holder = bed.spawn("clean", &connect, tick, lock, &clean, bed.until("c.go"));
    bed.history.wait_event("expired", "start", PATIENCE);
    bed.history.wait_event("clean", "start", PATIENCE);
    let mut first = bed.spawn("first", &connect, tick, lock, &opts, bed.until("f.go"));
    zk.wait_children(lock, 3);
    let mut second = bed.spawn("second", &connect, tick, lock, &opts, Hold::Beats(3));
    zk.wait_children(lock, 4);

    let expiring = expire_through(&bed, &proxy, &server);
    let first_start = bed.history.wait_event("first", "start", PATIENCE).ts;
    let expired_code = expired.wait();
    bed.release("c.go");
    let clean_code = clean_holder.wait();
    let second_start = started_undelayed(&bed, &second);
    bed.release("f.go");

    let runs = [
        Run::new("expired", expired_code, &[124]).on(lock, Bound::Limit(2)).excused(expiring, u64::MAX),
        Run::new("clean", clean_code, &[0]).on(lock, Bound::Limit(2)),
        Run::new("first", first.wait(), &[0]).on(lock, Bound::Limit(2)),
        Run::new("second", second.wait(), &[0]).on(lock, Bound::Limit(2)),
    ];
    verify(&bed, &zk, lock, &runs);
    let cmds = bed.history.commands();
    assert!(cmds["expired"].last < first_start, "the expired holder's command ran into its successor's");
    assert_delayed(&first);
    let delay = Duration::from_nanos(first_start.saturating_sub(expiring));
    assert!(delay >= Duration::from_millis(3_900), "the first waiter started {delay:?} after the expiry");
    assert_not_delayed("limit 2, clean slot", &second, cmds["clean"].last, second_start);
}

/// Readers and a writer behind them: the last reader's session expired from outside, so the
/// writer waits its lock-delay (the default, T); when every reader released cleanly (lock-delay
/// 20 s), the writer is not delayed.
#[test]
fn a_writer_waits_the_lock_delay_after_a_reader_expired_but_not_after_readers_released() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let (connect, tick) = (server.connect_string(), server.tick());
    let opts = ["-v", "--session-timeout", T];
    let shared: Vec<&str> = opts.iter().chain(&["--shared"]).copied().collect();
    let shared_clean: Vec<&str> = shared.iter().chain(&["--lock-delay", "20s"]).copied().collect();
    let write: Vec<&str> = opts.iter().chain(&["--write"]).copied().collect();

    // One reader released, the other (the last) expired.
    let (bed, lock) = (Bed::new(), "/safety/rw/expired");
    let proxy = Proxy::to_port("expired", server.port());
    let mut expired = bed.spawn("expired", &proxy.connect_string(), tick, lock, &shared, bed.until("e.go"));
    let mut clean = bed.spawn("clean", &connect, tick, lock, &shared_clean, bed.until("c.go"));
    bed.history.wait_event("expired", "start", PATIENCE);
    bed.history.wait_event("clean", "start", PATIENCE);
    let mut writer = bed.spawn("writer", &connect, tick, lock, &write, Hold::Beats(3));
    zk.wait_children(lock, 3);
    bed.release("c.go");
    let clean_code = clean.wait();
    let expiring = expire_through(&bed, &proxy, &server);
    let writer_start = bed.history.wait_event("writer", "start", PATIENCE).ts;
    let runs = [
        Run::new("expired", expired.wait(), &[124]).on(lock, Bound::Reader).excused(expiring, u64::MAX),
        Run::new("clean", clean_code, &[0]).on(lock, Bound::Reader),
        Run::new("writer", writer.wait(), &[0]).on(lock, Bound::Alone),
    ];
    verify(&bed, &zk, lock, &runs);
    assert!(bed.history.commands()["expired"].last < writer_start);
    assert_delayed(&writer);
    let delay = Duration::from_nanos(writer_start.saturating_sub(expiring));
    assert!(delay >= Duration::from_millis(3_900), "the writer started {delay:?} after the expiry");

    // Both readers released.
    let (bed, lock) = (Bed::new(), "/safety/rw/released");
    let mut r1 = bed.spawn("r1", &connect, tick, lock, &shared_clean, bed.until("r1.go"));
    let mut r2 = bed.spawn("r2", &connect, tick, lock, &shared_clean, bed.until("r2.go"));
    bed.history.wait_event("r1", "start", PATIENCE);
    bed.history.wait_event("r2", "start", PATIENCE);
    let mut writer = bed.spawn("writer", &connect, tick, lock, &write, Hold::Beats(3));
    zk.wait_children(lock, 3);
    bed.release("r1.go");
    bed.release("r2.go");
    let started = started_undelayed(&bed, &writer);
    let runs = [
        Run::new("r1", r1.wait(), &[0]).on(lock, Bound::Reader),
        Run::new("r2", r2.wait(), &[0]).on(lock, Bound::Reader),
        Run::new("writer", writer.wait(), &[0]).on(lock, Bound::Alone),
    ];
    verify(&bed, &zk, lock, &runs);
    let cmds = bed.history.commands();
    assert_not_delayed("readers released", &writer, cmds["r1"].last.max(cmds["r2"].last), started);
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
    // However this ends, the command may end (and zklock with it).
    struct Go<'a>(&'a std::path::Path);
    impl Drop for Go<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, "");
        }
    }
    let kinds = {
        let _go = Go(&go);
        let pgid = read_pid(&pid) as u32;
        descriptor_kinds(guard_of(zklock.id(), pgid, PATIENCE))
    };
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

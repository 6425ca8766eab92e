//! A seeded, bounded randomized run: contenders cycle on three locks (exclusive, --limit 2,
//! --shared/--write) through fault-injecting
//! proxies into a 3-server ensemble (whose quorum links are proxied too) while a nemesis
//! injects one random fault at a time: client partitions, resets and latency, server kills and
//! restarts, leader kills, quorum loss, a follower cut from the leader, server freezes, zklock
//! frozen alone (its guard kills the command by the deadline) and the whole holder frozen for
//! less than T + lock-delay (its successor waits the lock-delay). No overlap is excused: then
//! everything heals and the whole history is checked (see `support::history`).
//!
//! It prints one line: seed, faults injected, commands run, overlaps, leaked nodes, unexpected
//! exit codes. A failure prints the seed; replay with
//!
//! ```text
//! ZKLOCK_RANDOM_SEED=<seed> ZKLOCK_RANDOM_SECS=<secs> cargo test --release --test it random_long -- --ignored --nocapture
//! ```
//!
//! `random_ci` (a normal test, about a minute) honours the same variables;
//! `ZKLOCK_RANDOM_VERBOSE=1` also prints each fault as it is injected and zklock's own errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::fixtures::settle;
use crate::support::freeze::{children_of, pgid_of, WholeHolder};
use crate::support::history::{check, now_ns, Bound, History, Hold, Run};
use crate::support::proxy::{Mode, ProxiedEnsemble, Proxy};
use crate::support::Zk;
use crate::support::{serial, Zklock};
use crate::support::{ZkOptions, READY_TIMEOUT};

const CONTENDERS: usize = 8;
const SERVERS: usize = 3;
/// The contenders' session timeout (tickTime 500 ms): stop signal 1.87 s, SIGKILL 2.66 s after
/// the last heartbeat confirmed through the leader.
const SESSION_TIMEOUT: &str = "4s";
const T_NS: u64 = 4_000_000_000;
const LOCK: &str = "/random/lock";
/// Contenders 3-5 take this one with --limit 2.
const LIMIT_LOCK: &str = "/random/limit";
/// Contenders 6 and 7 take this one with --shared (mostly) or --write.
const RW_LOCK: &str = "/random/rw";
const LOCKS: [&str; 3] = [LOCK, LIMIT_LOCK, RW_LOCK];

/// Contender `k`'s lock, its extra options and the bound the checker holds it to: 0-2 exclusive
/// on [`LOCK`], 3-5 `--limit 2`, 6-7 readers and writers.
fn mode_of(k: usize, rng: &mut Rng) -> (&'static str, &'static [&'static str], Bound) {
    match k {
        0..=2 => (LOCK, &[], Bound::Alone),
        3..=5 => (LIMIT_LOCK, &["--limit", "2"], Bound::Limit(2)),
        _ if rng.range(0, 9) < 6 => (RW_LOCK, &["--shared"], Bound::Reader),
        _ => (RW_LOCK, &["--write"], Bound::Alone),
    }
}
/// After the run ends, a zklock still going this much later is stuck: the longest legitimate
/// one waits behind every other contender's hold and a session expiry, well under this.
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The zklock a contender is running now: (run id, pid).
type Current = Arc<Mutex<Vec<Option<(String, u32)>>>>;

/// A finished zklock run.
struct Finished {
    id: String,
    lock: &'static str,
    bound: Bound,
    exit: i32,
    spawned: u64,
    exited: u64,
    waits: bool,
    /// Still running `STUCK_AFTER` after the run ended; stopped with SIGTERM.
    stuck: bool,
}

/// One fault, from injection to heal.
struct Fault {
    what: String,
    from: u64,
    to: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn contender(
    k: usize,
    seed: u64,
    history: Arc<History>,
    dir: std::path::PathBuf,
    connect: String,
    current: Current,
    stop: Arc<AtomicBool>,
) -> Vec<Finished> {
    let mut rng = Rng::new(seed ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut done = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("c{k}.{n}");
        let waits = rng.range(0, 9) < 3;
        let (lock, extra, bound) = mode_of(k, &mut rng);
        let mut opts = vec!["-v", "--session-timeout", SESSION_TIMEOUT];
        opts.extend(extra);
        if waits {
            opts.extend(["--wait", "6s"]);
        }
        // Mostly short holds; some long enough (1-4 s) to meet a fault's deadline.
        let beats = if rng.range(0, 9) < 7 { rng.range(2, 12) } else { rng.range(20, 80) };
        let hold = Hold::Beats(beats as u32);
        let spawned = now_ns();
        let mut z = Zklock::spawn(&history, &dir, &id, &connect, Duration::from_millis(500), lock, &opts, &hold);
        current.lock().unwrap()[k] = Some((id.clone(), z.pid()));
        let mut run_ended: Option<Instant> = None;
        let mut stuck = false;
        let exit = loop {
            {
                // Reaped only under the lock, so the nemesis never signals a recycled pid.
                let mut cur = current.lock().unwrap();
                if let Some(code) = z.try_exit() {
                    cur[k] = None;
                    break code;
                }
                if stop.load(Ordering::SeqCst) && !stuck {
                    let ended = *run_ended.get_or_insert_with(Instant::now);
                    if ended.elapsed() > STUCK_AFTER {
                        // Never hang the suite: end it (a waiter leaves cleanly on TERM); the
                        // run reports it and says whether the servers disagree.
                        stuck = true;
                        z.signal(Signal::SIGTERM);
                    }
                }
            }
            thread::sleep(Duration::from_millis(10));
        };
        done.push(Finished { id, lock, bound, exit, spawned, exited: now_ns(), waits, stuck });
        thread::sleep(rng.ms(0, 150));
        n += 1;
    }
    done
}

/// Client-side proxies: `clients[k][s]` carries contender `k`'s traffic to server `s`.
struct Net {
    ensemble: ProxiedEnsemble,
    clients: Vec<Vec<Proxy>>,
}

impl Net {
    fn set_client(&self, k: usize, mode: Mode) {
        for p in &self.clients[k] {
            p.set_mode(mode);
        }
    }

    /// A contender to hurt: half the time the one whose command runs now.
    fn victim(&self, rng: &mut Rng, history: &History) -> usize {
        if rng.range(0, 1) == 0 {
            let cmds = history.commands();
            if let Some(c) = cmds.values().filter(|c| !c.ended && c.stopped.is_none()).max_by_key(|c| c.start) {
                if let Some(k) = c.id.strip_prefix('c').and_then(|r| r.split('.').next()?.parse().ok()) {
                    return k;
                }
            }
        }
        rng.pick(CONTENDERS)
    }

    fn leader_or_any(&self, rng: &mut Rng) -> usize {
        self.ensemble.leader_index().unwrap_or_else(|| rng.pick(SERVERS))
    }
}

/// Freezes the whole holder whose command runs now (zklock, its guard, the command's group)
/// for `d`, then thaws it. `None` if no command runs, or it is ending.
fn freeze_whole_holder(history: &History, current: &Current, d: Duration) -> Option<String> {
    let frozen = {
        // Under the lock, so that no zklock is reaped (and its pid recycled) meanwhile.
        let cur = current.lock().unwrap();
        let cmds = history.commands();
        let cmd = cmds.values().filter(|c| !c.ended && c.stopped.is_none()).max_by_key(|c| c.start)?;
        let (_, zklock) = cur.iter().flatten().find(|(id, _)| *id == cmd.id)?;
        let (zklock, pgid) = (*zklock, cmd.pid as u32);
        // Stopped first, zklock can neither reap its command nor disarm its guard: both are
        // still its children, or the command is ending and is left alone.
        let _ = kill(Pid::from_raw(zklock as i32), Signal::SIGSTOP);
        let children = children_of(zklock);
        let guarded = children.iter().any(|&c| c != pgid && pgid_of(c).is_some_and(|g| g != pgid));
        if !children.contains(&pgid) || pgid_of(pgid) != Some(pgid) || !guarded {
            let _ = kill(Pid::from_raw(zklock as i32), Signal::SIGCONT);
            return None;
        }
        (cmd.id.clone(), WholeHolder::freeze(zklock, pgid))
    };
    // A stopped zklock exits only by SIGKILL, which nobody sends: its pids stay its own.
    thread::sleep(d);
    frozen.1.thaw();
    Some(frozen.0)
}

/// Injects one random fault, waits out its length, heals it. Returns its description.
fn one_fault(rng: &mut Rng, net: &mut Net, history: &History, current: &Current) -> String {
    match rng.range(0, 11) {
        0 => {
            let k = net.victim(rng, history);
            let d = rng.ms(300, 5_000);
            net.set_client(k, Mode::Drop);
            thread::sleep(d);
            net.set_client(k, Mode::Pass);
            format!("partition c{k} {d:?}")
        }
        1 => {
            let k = net.victim(rng, history);
            let d = rng.ms(0, 1_000);
            net.set_client(k, Mode::Reset);
            thread::sleep(d);
            net.set_client(k, Mode::Pass);
            format!("reset c{k} {d:?}")
        }
        2 => {
            let k = net.victim(rng, history);
            let lat = rng.ms(20, 400);
            let d = rng.ms(1_000, 5_000);
            net.set_client(k, Mode::Latency(lat));
            thread::sleep(d);
            net.set_client(k, Mode::Pass);
            format!("latency c{k} {lat:?} for {d:?}")
        }
        3 | 4 => {
            let leader = rng.range(0, 1) == 0;
            let s = if leader { net.leader_or_any(rng) } else { rng.pick(SERVERS) };
            let d = rng.ms(300, 4_000);
            net.ensemble.server_mut(s).stop();
            thread::sleep(d);
            net.ensemble.server_mut(s).restart();
            format!("kill {} {s} {d:?}", if leader { "leader" } else { "server" })
        }
        5 => {
            let s = rng.pick(SERVERS);
            let d = rng.ms(300, 5_000);
            net.ensemble.server(s).freeze();
            thread::sleep(d);
            net.ensemble.server(s).thaw();
            format!("freeze server {s} {d:?}")
        }
        6 => {
            let leader = net.leader_or_any(rng);
            let follower = (leader + 1 + rng.pick(SERVERS - 1)) % SERVERS;
            let d = rng.ms(500, 6_000);
            net.ensemble.cut(follower, leader);
            thread::sleep(d);
            net.ensemble.heal_all();
            format!("cut follower {follower} from leader {leader} {d:?}")
        }
        7 => {
            let kept = rng.pick(SERVERS);
            let d = rng.ms(300, 5_000);
            let others: Vec<usize> = (0..SERVERS).filter(|&s| s != kept).collect();
            for &s in &others {
                net.ensemble.server_mut(s).stop();
            }
            thread::sleep(d);
            for &s in &others {
                net.ensemble.server_mut(s).restart_nowait();
            }
            for &s in &others {
                net.ensemble.server(s).wait_ready(READY_TIMEOUT);
            }
            format!("quorum lost (only {kept} up) {d:?}")
        }
        8 | 9 => {
            let k = net.victim(rng, history);
            let d = rng.ms(300, 7_000);
            let target = {
                let cur = current.lock().unwrap();
                let target = cur[k].clone();
                if let Some((_, pid)) = &target {
                    let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGSTOP);
                }
                target
            };
            let Some((id, pid)) = target else { return format!("freeze c{k}: nothing running") };
            thread::sleep(d);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            format!("freeze zklock {id} {d:?}")
        }
        _ => {
            // Below T + lock-delay (8 s) by a margin for the heartbeat period and a t_ok that
            // an earlier fault held back (the holder's stop signal comes 1.87 s after it).
            let d = rng.ms(2_000, 6_000);
            match freeze_whole_holder(history, current, d) {
                Some(id) => format!("freeze whole holder {id} {d:?}"),
                None => "freeze whole holder: nothing running".to_owned(),
            }
        }
    }
}

fn random_run(default_secs: u64) {
    let _turn = serial();
    let seed = env_u64("ZKLOCK_RANDOM_SEED").unwrap_or_else(|| now_ns() ^ u64::from(std::process::id()));
    let secs = env_u64("ZKLOCK_RANDOM_SECS").unwrap_or(default_secs);
    let verbose = std::env::var_os("ZKLOCK_RANDOM_VERBOSE").is_some();
    if verbose {
        eprintln!("random run: seed={seed} secs={secs}");
    }
    let t0 = Instant::now();

    let ensemble = ProxiedEnsemble::start(SERVERS, ZkOptions::default());
    let clients: Vec<Vec<Proxy>> = (0..CONTENDERS)
        .map(|k| (0..SERVERS).map(|s| Proxy::to_port(&format!("c{k}-s{s}"), ensemble.server(s).port())).collect())
        .collect();
    let mut net = Net { ensemble, clients };
    let dir = tempfile::TempDir::new().unwrap();
    let history = Arc::new(History::new(dir.path()));
    let current: Current = Arc::new(Mutex::new(vec![None; CONTENDERS]));
    let stop = Arc::new(AtomicBool::new(false));
    // However this ends (a panic too), the contenders stop starting new runs.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop_on_exit = Stop(stop.clone());

    let workers: Vec<_> = (0..CONTENDERS)
        .map(|k| {
            let connect = net.clients[k].iter().map(Proxy::connect_string).collect::<Vec<_>>().join(",");
            let (history, current, stop) = (history.clone(), current.clone(), stop.clone());
            let dir = dir.path().to_owned();
            thread::spawn(move || contender(k, seed, history, dir, connect, current, stop))
        })
        .collect();

    let mut rng = Rng::new(seed);
    let mut faults: Vec<Fault> = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        thread::sleep(rng.ms(200, 1_000));
        let from = history.note("nemesis", "fault");
        let what = one_fault(&mut rng, &mut net, &history, &current);
        if verbose {
            eprintln!("random: {:>5.1?} {what}", t0.elapsed());
        }
        let to = history.note("nemesis", &format!("healed: {what}"));
        faults.push(Fault { what, from, to });
    }
    stop.store(true, Ordering::SeqCst);
    let finished: Vec<Finished> = workers.into_iter().flat_map(|w| w.join().expect("a contender panicked")).collect();

    let zk = Zk::connect(&net.ensemble.connect_string());
    // Sessions of zklocks that gave up end within T; give them that, and then some.
    let mut leaked: Vec<String> = LOCKS
        .iter()
        .flat_map(|l| settle(&zk, l, Duration::from_nanos(3 * T_NS)).into_iter().map(move |n| format!("{l}/{n}")))
        .collect();
    // A stuck zklock is a liveness failure, unless the servers themselves disagree on the lock
    // directory (a server that lost committed transactions still shows nodes of long-dead
    // sessions ahead of a waiter; seen once with ZooKeeper 3.8.0 after kill/restart faults).
    let stuck = finished.iter().filter(|r| r.stuck).count();
    let views: Vec<Vec<String>> = (0..SERVERS)
        .map(|s| {
            let server = Zk::connect(&net.ensemble.server(s).connect_string());
            let mut v: Vec<String> =
                LOCKS.iter().flat_map(|l| server.children(l).into_iter().map(move |n| format!("{l}/{n}"))).collect();
            v.sort();
            v
        })
        .collect();
    let diverged = views.windows(2).any(|w| w[0] != w[1]);
    if diverged {
        // What a quorum holds is what is left behind; a lone server's extra nodes are its own.
        let mut all: Vec<&String> = views.iter().flatten().collect();
        all.sort();
        all.dedup();
        leaked =
            all.into_iter().filter(|n| views.iter().filter(|v| v.contains(n)).count() * 2 > SERVERS).cloned().collect();
    }
    // After a fault heals, its effects (a client reconnecting, a session expiring) last up to
    // about 1.4 T; a lost lock (124) or a zklock failure (125) is expected only then.
    let disturbed = |r: &Finished| faults.iter().any(|f| f.from <= r.exited && f.to + 2 * T_NS >= r.spawned);
    let runs: Vec<Run> = finished
        .iter()
        .map(|r| {
            let mut allowed = vec![0];
            if r.waits {
                allowed.push(75);
            }
            if disturbed(r) {
                allowed.extend([124, 125]);
            }
            if r.stuck && diverged {
                allowed.push(128 + Signal::SIGTERM as i32);
            }
            Run::new(&r.id, r.exit, &allowed).on(r.lock, r.bound)
        })
        .collect();
    let report = check(&history.events(), &runs, &leaked);
    let count = |code: i32| finished.iter().filter(|r| r.exit == code).count();
    let line = format!(
        "random: seed={seed} secs={secs} faults={} runs={} commands={} overlaps={} fenced={} leaked={} unexpected_exits={} token_errors={} stuck={stuck} servers_diverged={diverged} exits(0/75/124/125)={}/{}/{}/{} elapsed={:.0?}",
        faults.len(),
        finished.len(),
        report.commands,
        report.overlaps.len(),
        report.fenced.len(),
        report.leaked.len(),
        report.unexpected_exits.len(),
        report.token_errors.len(),
        count(0),
        count(75),
        count(124),
        count(125),
        t0.elapsed()
    );
    // zklock's own failures, for the record: which errors they were.
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for r in finished.iter().filter(|r| r.exit == 125) {
        let text = std::fs::read_to_string(dir.path().join(format!("{}.stderr", r.id))).unwrap_or_default();
        let last = text.lines().rfind(|l| l.contains("error:")).unwrap_or("(no error line)");
        *failures.entry(last.to_owned()).or_default() += 1;
    }
    if verbose {
        for (msg, n) in &failures {
            eprintln!("random: exit 125 x{n}: {msg}");
        }
    }
    // Straight to the stderr handle, past the test harness's capture: CI logs show the line.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    if diverged {
        use std::io::Write;
        let mut text = String::from("random: the servers disagree on the lock directory:\n");
        for (s, v) in views.iter().enumerate() {
            text.push_str(&format!("  server {s}: {v:?}\n"));
        }
        let _ = write!(std::io::stderr(), "{text}");
    }
    if !report.ok() {
        let mut detail = report.describe();
        for (msg, n) in &failures {
            detail.push_str(&format!("  exit 125 x{n}: {msg}\n"));
        }
        detail.push_str("--- faults ---\n");
        for f in &faults {
            detail.push_str(&format!("  {} .. {}: {}\n", f.from, f.to, f.what));
        }
        let named: Vec<&str> = report
            .overlaps
            .iter()
            .chain(&report.unexpected_exits)
            .filter_map(|l| l.split_whitespace().next())
            .take(6)
            .collect();
        for id in named {
            let text = std::fs::read_to_string(dir.path().join(format!("{id}.stderr"))).unwrap_or_default();
            detail.push_str(&format!("--- stderr of {id} ---\n{text}"));
        }
        let kept = dir.keep();
        panic!(
            "randomized run failed (replay: ZKLOCK_RANDOM_SEED={seed} ZKLOCK_RANDOM_SECS={secs}); history kept in {}\n{line}\n{detail}",
            kept.display()
        );
    }
}

/// CI size: about a minute.
#[test]
fn random_ci() {
    random_run(40);
}

/// The long run: `ZKLOCK_RANDOM_SECS=600 ZKLOCK_RANDOM_SEED=<seed> cargo test --release --test it
/// random_long -- --ignored --nocapture`.
#[test]
#[ignore = "long randomized run; see the module docs"]
fn random_long() {
    random_run(600);
}

//! The safety model under faults (`shared/design/safety.md`), one deterministic test per
//! scenario, against dedicated real servers. Each command run under zklock writes a
//! [`history`]; the checker proves that no two commands ran at once (or, where zklock itself
//! was frozen or its session was expired from outside, that the fencing token protects), that
//! tokens rise, that no lock node is left, and that every exit code fits what happened.
//!
//! Figures used below, for tickTime 500 ms (config.rs):
//! * T = 4 s: heartbeat 400 ms, stop signal 1.87 s and SIGKILL 2.66 s after the last heartbeat
//!   confirmed through the leader.
//! * T = 10 s: heartbeat 1 s, stop signal 5.6 s, SIGKILL 8 s.
//! * T = 20 s (servers allowing it): heartbeat 2 s, stop signal 11.9 s, SIGKILL 16.9 s.
//!
//! Fault tests run one at a time ([`serial`]): they start JVMs and are sensitive to a starved CPU.
//! `ZKLOCK_FAULTS_SHOW=1` prints each test's history (with `--nocapture`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::safety;
use crate::support::fixtures::{opts, verify};
use crate::support::history::{Hold, Run};
use crate::support::proxy::{expire_session, op, Mode, ProxiedEnsemble, Proxy};
use crate::support::secure::{Certs, TlsServer};
use crate::support::{addr, alive, serial, Bed, Zk, PATIENCE};
use crate::support::{four_letter_timeout, ZkEnsemble, ZkOptions, ZkServer, READY_TIMEOUT};

/// Servers that accept session timeouts up to 20 s (tickTime 500 ms).
fn long_sessions() -> ZkOptions {
    ZkOptions { max_session_timeout_ms: Some(20_000), ..ZkOptions::default() }
}

/// Scenario 1: a silent partition of the holder, longer than the threshold, with a waiter on
/// a direct path: the holder's command is dead before the waiter's starts; the holder exits 124.
#[test]
fn silent_partition_past_the_threshold_stops_the_holder_before_the_waiter_starts() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("holder", server.port());
    let bed = Bed::new();
    let lock = "/faults/partition-long";
    let (mut holder, mut waiter) = bed.holder_and_waiter(
        &zk,
        lock,
        server.tick(),
        (&proxy.connect_string(), &opts("4s")),
        (&server.connect_string(), &opts("4s")),
        Hold::Beats(3),
    );

    bed.history.note("test", "partition holder");
    proxy.set_mode(Mode::Drop);
    let waiter_start = bed.history.wait_event("waiter", "start", PATIENCE);
    proxy.set_mode(Mode::Pass);
    bed.history.note("test", "heal");

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    let holder_cmd = &bed.history.commands()["holder"];
    assert!(holder_cmd.stopped.is_some(), "the holder's command never got the stop signal");
    assert!(holder_cmd.last < waiter_start.ts);
    assert!(holder.stderr().contains("no heartbeat confirmed"), "{}", holder.stderr());
}

/// Over TLS, the holder behind a proxy to the secure port (the proxy forwards the encrypted
/// bytes as they are) and a waiter connected directly: `fault` cuts the holder off until the
/// waiter starts. The holder's command must be stopped before the waiter's starts, and the
/// holder must exit 124 saying why: the deadline does not depend on the transport. Returns
/// the holder's stderr.
fn over_tls_the_holder_is_stopped_before_the_waiter_starts(lock: &str, fault: Mode) -> String {
    let _turn = serial();
    let tls = TlsServer::start("none");
    let zk = Zk::connect(&tls.server.connect_string());
    let proxy = Proxy::start("holder", addr(tls.secure_port));
    let bed = Bed::new();
    let ca = Certs::shared().ca_args();
    let tls_opts: Vec<&str> = opts("4s").into_iter().chain(ca.iter().map(String::as_str)).collect();
    let tick = tls.server.tick();
    let (mut holder, mut waiter) = bed.holder_and_waiter(
        &zk,
        lock,
        tick,
        (&proxy.connect_string(), &tls_opts),
        (&tls.secure_connect_string(), &tls_opts),
        Hold::Beats(3),
    );

    bed.history.note("test", &format!("{fault:?} holder"));
    proxy.set_mode(fault);
    let waiter_start = bed.history.wait_event("waiter", "start", PATIENCE);
    proxy.set_mode(Mode::Pass);
    bed.history.note("test", "heal");

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    let holder_cmd = &bed.history.commands()["holder"];
    assert!(holder_cmd.stopped.is_some(), "the holder's command never got the stop signal");
    assert!(holder_cmd.last < waiter_start.ts);
    let err = holder.stderr();
    assert!(err.contains(&format!("lost {lock} while the command ran")), "{err}");
    err
}

/// Scenario 1 over TLS: a silent partition of the holder, past the threshold.
#[test]
fn over_tls_a_silent_partition_stops_the_holder_before_the_waiter_starts() {
    let err = over_tls_the_holder_is_stopped_before_the_waiter_starts("/faults/tls-partition", Mode::Drop);
    assert!(err.contains("no heartbeat confirmed"), "{err}");
}

/// Session expiry over TLS: the holder's connections are reset and refused until the server
/// expires its session (the waiter is granted the lock only then); the holder's command is
/// stopped at the deadline, which comes before the expiry.
#[test]
fn over_tls_a_session_expired_while_cut_off_stops_the_holder_before_the_waiter_starts() {
    over_tls_the_holder_is_stopped_before_the_waiter_starts("/faults/tls-expiry", Mode::Reset);
}

/// Scenario 2: a partition shorter than the threshold: the command survives and exits 0.
#[test]
fn silent_partition_shorter_than_the_threshold_is_survived() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("holder", server.port());
    let bed = Bed::new();
    let lock = "/faults/partition-short";
    // T = 10 s: stop signal 5.6 s after the last confirmed heartbeat; the partition lasts 2.5 s.
    let mut holder = bed.holder(lock, server.tick(), (&proxy.connect_string(), &opts("10s")));
    proxy.wait_reply(PATIENCE, "a first confirmed heartbeat", |r| r.op == op::MULTI && r.err == 0);

    bed.history.note("test", "partition holder");
    proxy.set_mode(Mode::Drop);
    std::thread::sleep(Duration::from_millis(2_500)); // the fault's length
    proxy.set_mode(Mode::Pass);
    let healed = Instant::now();
    bed.history.note("test", "heal");
    // The watchdog is re-armed by a heartbeat sent after the heal and confirmed by the leader.
    proxy.wait_reply(PATIENCE, "a heartbeat after the heal", |r| r.op == op::MULTI && r.err == 0 && r.sent > healed);
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    assert!(!holder.stderr().contains("lock lost"), "{}", holder.stderr());
}

/// Scenario 3: the holder's session expired by the server (closed through a second
/// connection with its id and password): the command is stopped at once, on the expiry rather
/// than at the deadline, and the waiter proceeds. Such an expiry comes sooner than T after the
/// holder was last heard, so the model cannot promise the holder is dead first: an overlap is
/// fenced (the waiter's token is larger), not a failure.
#[test]
fn session_expired_by_the_server_stops_the_command_at_once_and_the_waiter_proceeds() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("holder", server.port());
    let bed = Bed::new();
    let lock = "/faults/expired";
    let (mut holder, mut waiter) = bed.holder_and_waiter(
        &zk,
        lock,
        server.tick(),
        (&proxy.connect_string(), &opts("10s")),
        (&server.connect_string(), &opts("10s")),
        Hold::Beats(3),
    );
    let session = proxy.wait_session(PATIENCE);

    // The server drops the holder's connection when we attach to its session; refusing its
    // reconnects until the session is closed keeps it from re-attaching first.
    proxy.set_mode(Mode::Refuse);
    let expiring = bed.history.note("test", &format!("expire session {:#x}", session.id));
    expire_session(addr(server.port()), &session).expect("expire the holder's session");
    bed.history.note("test", "expired");
    proxy.set_mode(Mode::Pass);

    let runs = [
        Run::new("holder", holder.wait(), &[124]).excused(expiring, u64::MAX),
        Run::new("waiter", waiter.wait(), &[0]),
    ];
    verify(&bed, &zk, lock, &runs);
    let err = holder.stderr();
    assert!(err.contains("session expired") || err.contains("lock node was deleted"), "{err}");
    assert!(!err.contains("no heartbeat confirmed"), "stopped at the deadline, not at once: {err}");
    assert!(bed.history.commands()["holder"].stopped.is_some());
}

/// The index of a member that is not the leader.
fn a_follower(ensemble: &ZkEnsemble) -> (usize, usize) {
    let leader = ensemble.wait_for_leader(READY_TIMEOUT);
    ((leader + 1) % ensemble.servers().len(), leader)
}

/// Scenario 4: the leader is killed while the holder is connected to a follower: a new leader
/// is elected within the budget (T = 20 s: stop signal at 11.9 s) and the command survives.
#[test]
fn leader_killed_while_the_holder_is_on_a_follower_is_survived() {
    let _turn = serial();
    let mut ensemble = ZkEnsemble::start_with(3, long_sessions());
    let (follower, leader) = a_follower(&ensemble);
    let proxy = Proxy::to_port("holder", ensemble.server(follower).port());
    let zk = Zk::connect(&ensemble.connect_string());
    let bed = Bed::new();
    let lock = "/faults/leader-killed";
    let tick = ensemble.server(0).tick();
    let (mut holder, mut waiter) = bed.holder_and_waiter(
        &zk,
        lock,
        tick,
        (&proxy.connect_string(), &opts("20s")),
        (&ensemble.connect_string(), &opts("20s")),
        Hold::Beats(3),
    );

    bed.history.note("test", &format!("kill leader {leader}"));
    ensemble.server_mut(leader).stop();
    let killed = Instant::now();
    let new_leader = ensemble.wait_for_leader(PATIENCE);
    bed.history.note("test", &format!("new leader {new_leader}"));
    // Survival: a heartbeat sent after the kill was confirmed by the new leader.
    proxy.wait_reply(PATIENCE, "a heartbeat confirmed by the new leader", |r| {
        r.op == op::MULTI && r.err == 0 && r.sent > killed
    });
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0]), Run::new("waiter", waiter.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    assert!(!holder.stderr().contains("lock lost"), "{}", holder.stderr());
}

/// Scenario 5: the holder's follower is cut from the leader only; the client link stays up
/// and the follower goes on answering pings for syncLimit x tick = 2.5 s. T = 4 s: zklock must
/// stop the command (at 1.87 s) before the leader expires the session (at 4 s and more) and
/// lets the waiter in; that works only because heartbeats go through the leader.
#[test]
fn follower_cut_from_the_leader_stops_the_command_before_the_leader_expires_the_session() {
    let _turn = serial();
    let ensemble = ProxiedEnsemble::start(3, ZkOptions::default());
    let (follower, leader) = a_follower(&ensemble);
    let zk = Zk::connect(&ensemble.server(leader).connect_string());
    let bed = Bed::new();
    let lock = "/faults/follower-cut";
    let tick = ensemble.server(0).tick();
    let (mut holder, mut waiter) = bed.holder_and_waiter(
        &zk,
        lock,
        tick,
        (&ensemble.server(follower).connect_string(), &opts("4s")),
        (&ensemble.server(leader).connect_string(), &opts("4s")),
        Hold::Beats(3),
    );

    bed.history.note("test", &format!("cut follower {follower} from leader {leader}"));
    ensemble.cut(follower, leader);
    // For the record: when the follower stops serving (it answers pings until then).
    let watching = std::sync::atomic::AtomicBool::new(true);
    let waiter_start = std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = String::new();
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let srvr = four_letter_timeout(ensemble.server(follower).port(), "srvr", Duration::from_millis(300));
                let mode = srvr.lines().find_map(|l| l.strip_prefix("Mode: ")).unwrap_or("not serving").to_owned();
                if mode != last {
                    bed.history.note("test", &format!("follower {follower}: {mode}"));
                    last = mode;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Stops the watcher however this ends (a panic too, or the scope would never end).
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _done = Done(&watching);
        bed.history.wait_event("waiter", "start", PATIENCE)
    });
    ensemble.heal_all();
    bed.history.note("test", "heal");

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    let holder_cmd = &bed.history.commands()["holder"];
    assert!(holder_cmd.stopped.is_some());
    assert!(holder_cmd.last < waiter_start.ts);
    assert!(holder.stderr().contains("no heartbeat confirmed"), "{}", holder.stderr());
}

/// Scenario 6: quorum lost (two of three members killed) for longer than the threshold, then
/// regained: the command is stopped at the deadline, and once the quorum is back the waiter
/// proceeds; no node is left.
#[test]
fn quorum_lost_past_the_threshold_and_regained() {
    let _turn = serial();
    let mut ensemble = ZkEnsemble::start(3);
    let bed = Bed::new();
    let lock = "/faults/quorum";
    let tick = ensemble.server(0).tick();
    let kept = 0;
    let mut holder = bed.holder(lock, tick, (&ensemble.server(kept).connect_string(), &opts("10s")));
    let mut waiter = bed.spawn("waiter", &ensemble.connect_string(), tick, lock, &opts("10s"), Hold::Beats(3));
    Zk::connect(&ensemble.connect_string()).wait_children(lock, 2);

    bed.history.note("test", "quorum lost");
    ensemble.server_mut(1).stop();
    ensemble.server_mut(2).stop();
    bed.history.wait_event("holder", "stop", PATIENCE);
    for i in [1, 2] {
        ensemble.server_mut(i).restart_nowait();
    }
    for i in [1, 2] {
        ensemble.server(i).wait_ready(READY_TIMEOUT);
    }
    bed.history.note("test", "quorum regained");

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    let zk = Zk::connect(&ensemble.connect_string());
    verify(&bed, &zk, lock, &runs);
    assert!(holder.stderr().contains("no heartbeat confirmed"), "{}", holder.stderr());
}

/// Scenario 7: the connection is reset right after the server created our lock node, before
/// its reply reaches zklock: zklock finds and adopts its node (exactly one node of ours), and
/// does not wait behind itself.
#[test]
fn reset_during_the_create_leaves_exactly_one_node_and_zklock_does_not_wait_behind_itself() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("holder", server.port());
    proxy.reset_after_create_reply("-lock-");
    let bed = Bed::new();
    let lock = "/faults/create-reset";
    let mut holder = bed.spawn("holder", &proxy.connect_string(), server.tick(), lock, &opts("10s"), bed.until("h.go"));
    // Had it created a second node, it would wait behind the first forever.
    bed.history.wait_event("holder", "start", PATIENCE);
    assert_eq!(proxy.fired(), 1, "the create's reply was not lost");
    let nodes = zk.children(lock);
    assert_eq!(nodes.len(), 1, "exactly one node of ours: {nodes:?}");
    let session = proxy.sessions().last().cloned().unwrap();
    let (_, stat) = zk.data(&format!("{lock}/{}", nodes[0])).unwrap();
    assert_eq!(stat.ephemeral_owner, session.id, "the node is owned by zklock's session");
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    assert!(holder.stderr().contains("recovered our lock node"), "{}", holder.stderr());
}

/// Scenario 8a: a waiter gets SIGTERM while its connection is down (reset and refused): it
/// exits 143 once it could delete its node, and leaves none.
#[test]
fn waiter_terminated_while_the_connection_is_down_leaves_no_node() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("waiter", server.port());
    let bed = Bed::new();
    let lock = "/faults/waiter-term";
    let mut holder = bed.holder(lock, server.tick(), (&server.connect_string(), &opts("10s")));
    let holder_node = zk.children(lock);
    let mut waiter = bed.spawn("waiter", &proxy.connect_string(), server.tick(), lock, &opts("10s"), Hold::Beats(1));
    zk.wait_children(lock, 2);

    bed.history.note("test", "waiter's connection down");
    proxy.set_mode(Mode::Reset);
    waiter.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(1)); // the fault's length
                                                // It cannot have deleted its node, and must not leave without trying.
    assert_eq!(waiter.try_exit(), None, "zklock exited while it could not delete its node");
    let healed = Instant::now();
    proxy.set_mode(Mode::Pass);
    bed.history.note("test", "connection back");
    proxy.wait_request(PATIENCE, op::DELETE, healed);
    let waiter_code = waiter.wait();
    assert_eq!(zk.children(lock), holder_node, "the waiter's node is gone when it exits");
    assert!(waiter.stderr().contains("got SIGTERM while waiting"), "{}", waiter.stderr());
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0]), Run::new("waiter", waiter_code, &[143])];
    verify(&bed, &zk, lock, &runs);
}

/// Scenario 8b: a waiter's `--wait` runs out during a silent partition: it exits 75 once it
/// could delete its node, and leaves none.
#[test]
fn waiter_timing_out_during_a_partition_leaves_no_node() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let proxy = Proxy::to_port("waiter", server.port());
    let bed = Bed::new();
    let lock = "/faults/waiter-timeout";
    let mut holder = bed.holder(lock, server.tick(), (&server.connect_string(), &opts("10s")));
    let holder_node = zk.children(lock);
    let wait_opts = ["-v", "--session-timeout", "10s", "--wait", "3s"];
    let mut waiter = bed.spawn("waiter", &proxy.connect_string(), server.tick(), lock, &wait_opts, Hold::Beats(1));
    zk.wait_children(lock, 2);
    // Queued, so it knows its node: cut before its create's reply came back, it could only
    // find its node by listing, which waits for the heal (scenario 8a covers that).
    crate::support::wait_until(PATIENCE, "the waiter to queue", || waiter.stderr().contains("waiting for"));

    bed.history.note("test", "partition waiter");
    let cut = Instant::now();
    proxy.set_mode(Mode::Drop);
    assert_eq!(waiter.try_exit(), None, "--wait ran out before the partition; lengthen it");
    // --wait ran out: zklock sends the delete of its node into the partition.
    proxy.wait_request(PATIENCE, op::DELETE, cut);
    std::thread::sleep(Duration::from_secs(1)); // the fault's length
    proxy.set_mode(Mode::Pass);
    bed.history.note("test", "heal");
    let waiter_code = waiter.wait();
    assert_eq!(zk.children(lock), holder_node, "the waiter's node is gone when it exits");
    assert!(waiter.stderr().contains("gave up waiting"), "{}", waiter.stderr());
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0]), Run::new("waiter", waiter_code, &[75])];
    verify(&bed, &zk, lock, &runs);
}

/// Scenario 9: zklock alone frozen (SIGSTOP) past the session timeout, a waiter queued, its
/// command a shell with a grandchild in its group. The guard, no longer renewed, SIGKILLs the
/// whole group at zklock's own SIGKILL instant (2.66 s after the last confirmed heartbeat),
/// while zklock is still frozen and before the server expires the session (4 s and more) and
/// the waiter starts: no overlap to excuse. Resumed, zklock exits 124. The holder's lock-delay
/// is off, so that the guard alone keeps the two apart.
#[test]
fn zklock_frozen_past_the_session_timeout_has_its_command_group_killed_by_the_guard_before_the_waiter_starts() {
    let _turn = serial();
    let server = ZkServer::start();
    let zk = Zk::connect(&server.connect_string());
    let bed = Bed::new();
    let lock = "/faults/frozen-zklock";
    let holder_opts =
        safety::with_grandchild(&bed, "holder", lock, &["-v", "--session-timeout", "4s", "--lock-delay", "0s"]);
    let holder_opts: Vec<&str> = holder_opts.iter().map(String::as_str).collect();
    let mut holder = bed.holder(lock, server.tick(), (&server.connect_string(), &holder_opts));
    let pgid = bed.history.commands()["holder"].pid as u32;
    let grandchild = safety::grandchild_of(&bed, "holder");
    let mut waiter = bed.spawn("waiter", &server.connect_string(), server.tick(), lock, &opts("4s"), Hold::Beats(3));
    zk.wait_children(lock, 2);

    bed.history.note("test", "freeze holder's zklock");
    holder.signal(Signal::SIGSTOP);
    let (waiter_start, gone) = safety::watch_group_until_start(&bed, pgid, "waiter");
    bed.history.note("test", "resume holder's zklock");
    holder.signal(Signal::SIGCONT);

    let runs = [Run::new("holder", holder.wait(), &[124]), Run::new("waiter", waiter.wait(), &[0])];
    verify(&bed, &zk, lock, &runs);
    let gone = gone.expect("the frozen zklock's command group was never seen gone");
    assert!(gone < waiter_start.ts, "the frozen zklock's command group was alive when the waiter started");
    let cmds = bed.history.commands();
    assert!(cmds["holder"].last < waiter_start.ts);
    assert!(!alive(grandchild), "the grandchild outlived the guard's SIGKILL");
    assert!(cmds["waiter"].token > cmds["holder"].token);
    let err = holder.stderr();
    let guard: Vec<&str> = err.lines().filter(|l| l.contains("zklock: guard:")).collect();
    assert!(guard.len() == 1 && guard[0].contains("SIGKILL"), "the guard's line: {err}");
}

/// Scenario 10: the server restarted within the threshold (T = 20 s: stop signal 11.9 s after
/// the last confirmed heartbeat): the session survives in the server's log and the command
/// survives.
#[test]
fn server_restarted_within_the_threshold_is_survived() {
    let _turn = serial();
    let mut server = ZkServer::start_with(long_sessions());
    let proxy = Proxy::to_port("holder", server.port());
    let bed = Bed::new();
    let lock = "/faults/restart";
    let mut holder = bed.holder(lock, server.tick(), (&proxy.connect_string(), &opts("20s")));

    bed.history.note("test", "restart server");
    server.stop();
    let stopped = Instant::now();
    server.restart();
    bed.history.note("test", "server back");
    proxy.wait_reply(PATIENCE, "a heartbeat confirmed after the restart", |r| {
        r.op == op::MULTI && r.err == 0 && r.sent > stopped
    });
    bed.release("h.go");

    let runs = [Run::new("holder", holder.wait(), &[0])];
    let zk = Zk::connect(&server.connect_string());
    verify(&bed, &zk, lock, &runs);
    assert!(!holder.stderr().contains("lock lost"), "{}", holder.stderr());
}

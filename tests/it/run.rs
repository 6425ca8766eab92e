//! `zklock run` against real ZooKeeper: mutual exclusion, FIFO, fencing tokens, exit codes,
//! child handling, signals and faults. Tests on the shared server use distinct lock paths;
//! tests that freeze or kill a server start their own.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::*;
use crate::support::{self, shared_zk, unique_lock_path, wait_for_file_line, ZkOptions, ZkServer};

fn shared() -> Zk {
    Zk::connect(&shared_zk().connect_string())
}

fn code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| panic!("zklock died of a signal: {status:?}"))
}

/// A command that records `start <id> <token>` and `end <id>` around a short critical section.
fn marking_command(marks: &str, id: usize) -> Vec<String> {
    let script = r#"echo "start $2 $ZKLOCK_FENCING_TOKEN" >> "$1"; sleep 0.2; echo "end $2" >> "$1""#;
    vec!["sh".into(), "-c".into(), script.into(), "sh".into(), marks.into(), id.to_string()]
}

#[test]
fn concurrent_runs_never_overlap_in_fifo_order_with_rising_tokens() {
    const N: usize = 6;
    let zk = shared();
    let lock = unique_lock_path("fifo");
    let dir = TempDir::new().unwrap();
    let marks = dir.path().join("marks").to_string_lossy().into_owned();
    let mut children = Vec::new();
    // The first holds until every contender has queued (however slowly they start), so that
    // the queue grows one node at a time: arrival order is queue order.
    let go = dir.path().join("go");
    for id in 0..N {
        let mut argv = marking_command(&marks, id);
        if id == 0 {
            argv[2] = format!("while [ ! -e '{}' ]; do sleep 0.02; done; {}", go.display(), argv[2]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        children.push(run_shared(&lock, &[], &argv).spawn().unwrap());
        zk.wait_children(&lock, id + 1);
    }
    std::fs::write(&go, "").unwrap();
    for c in &mut children {
        assert_eq!(code(wait_status(c)), 0);
    }
    let text = std::fs::read_to_string(&marks).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2 * N, "{text}");
    let mut last_token = 0i64;
    for (i, pair) in lines.chunks(2).enumerate() {
        // start/end strictly paired: no two critical sections overlap.
        assert_eq!(pair[0][0], "start", "{text}");
        assert_eq!(pair[1], vec!["end", pair[0][1]], "{text}");
        // FIFO: the i-th holder is the i-th to arrive.
        assert_eq!(pair[0][1], i.to_string(), "{text}");
        let token: i64 = pair[0][2].parse().unwrap();
        assert!(token > last_token, "tokens must strictly rise: {text}");
        last_token = token;
    }
    assert!(zk.children(&lock).is_empty(), "lock nodes left behind");
}

#[test]
fn stdout_is_the_commands_and_stderr_is_quiet() {
    let lock = unique_lock_path("stdout");
    let out = output(run_shared(&lock, &[], &["echo", "hello", "a  b"]));
    assert_eq!(stdout(&out), "hello a  b\n");
    assert_eq!(stderr(&out), "");
    assert!(out.status.success());
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn stdin_is_the_commands() {
    use std::io::Write;
    let lock = unique_lock_path("stdin");
    let mut cmd = run_shared(&lock, &[], &["cat"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"from stdin\n").unwrap();
    let out = wait_output(child);
    assert_eq!(stdout(&out), "from stdin\n");
    assert!(out.status.success());
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn environment_and_node_data_describe_the_holder() {
    let zk = shared();
    let lock = unique_lock_path("env");
    let dir = TempDir::new().unwrap();
    let env_file = dir.path().join("env");
    let script =
        r#"env | grep '^ZKLOCK_' | sort > "$1.tmp"; mv "$1.tmp" "$1"; while [ ! -e "$1.go" ]; do sleep 0.02; done"#;
    let mut child = run_shared(
        &lock,
        &["--label", "nightly report"],
        &["sh", "-c", script, "sh", env_file.to_str().unwrap(), "secret-arg"],
    )
    .spawn()
    .unwrap();
    let env = wait_for_file_line(&env_file, "ZKLOCK_SESSION_ID", PATIENCE);
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing: {env}"))
            .to_owned()
    };
    assert_eq!(get("ZKLOCK_LOCK"), lock);
    let node = get("ZKLOCK_NODE");
    let name = node.strip_prefix(&format!("{lock}/")).expect("node under the lock");
    assert!(name.starts_with("_c_") && name.contains("-lock-"), "Curator-style name: {name}");
    let (data, stat) = zk.data(&node).expect("our node exists while the command runs");
    assert_eq!(get("ZKLOCK_FENCING_TOKEN"), stat.czxid.to_string());
    assert_eq!(get("ZKLOCK_SESSION_ID"), format!("{:#x}", stat.ephemeral_owner));

    let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(doc["zklock"], 1);
    assert_eq!(doc["pid"], child.id());
    assert_eq!(doc["label"], "nightly report");
    assert_eq!(doc["command"], "sh");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(!String::from_utf8_lossy(&data).contains("secret-arg"), "arguments must not be stored");
    assert!(doc["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(doc["host"], nix::unistd::gethostname().unwrap().to_string_lossy().as_ref());

    std::fs::write(dir.path().join("env.go"), "").unwrap();
    assert_eq!(code(wait_status(&mut child)), 0);
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn exit_status_of_the_command_is_passed_through() {
    let lock = unique_lock_path("status");
    for (script, expected) in
        [("exit 0", 0), ("exit 3", 3), ("exit 124", 124), ("kill -USR1 $$", 128 + 10), ("kill -KILL $$", 137)]
    {
        let out = output(run_shared(&lock, &[], &["sh", "-c", script]));
        assert_eq!(code(out.status), expected, "{script}: {}", stderr(&out));
    }
    assert!(shared().children(&lock).is_empty());
}

/// Holds `lock` with a command that waits for a file; returns (zklock child, file to create).
fn hold(lock: &str, dir: &TempDir, name: &str) -> (std::process::Child, std::path::PathBuf) {
    let ready = dir.path().join(format!("{name}.ready"));
    let go = dir.path().join(format!("{name}.go"));
    let script = r#"echo $$ > "$1"; while [ ! -e "$2" ]; do sleep 0.02; done"#;
    let child = run_shared(lock, &[], &["sh", "-c", script, "sh", ready.to_str().unwrap(), go.to_str().unwrap()])
        .spawn()
        .unwrap();
    read_pid(&ready);
    (child, go)
}

#[test]
fn only_the_waiter_next_in_line_heartbeats_and_starts_without_another_check() {
    let lock = unique_lock_path("next-in-line");
    let dir = TempDir::new().unwrap();
    let (mut holder, go) = hold(&lock, &dir, "holder");
    let zk = shared();
    // Short sessions: a 200 ms heartbeat, and a wait far longer than the freshness rule allows.
    let opts = ["-vv", "--session-timeout", "2s"];
    let first = run_shared(&lock, &opts, &["true"]).stderr(Stdio::piped()).spawn().unwrap();
    zk.wait_children(&lock, 2);
    let second = run_shared(&lock, &opts, &["true"]).stderr(Stdio::piped()).spawn().unwrap();
    zk.wait_children(&lock, 3);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&go, "").unwrap();
    assert_eq!(code(wait_status(&mut holder)), 0);
    let (first, second) = (wait_output(first), wait_output(second));
    assert_eq!((code(first.status), code(second.status)), (0, 0), "{}\n{}", stderr(&first), stderr(&second));
    let beats = |out: &std::process::Output| stderr(out).matches("next in line: our session confirmed").count();
    // The first waiter kept its confirmation fresh for two seconds, so the handoff needed no
    // write of its own; the second waited behind it and was next in line only briefly.
    assert!(beats(&first) >= 4, "{}", stderr(&first));
    assert!(!stderr(&first).contains("before starting the command"), "{}", stderr(&first));
    assert!(beats(&second) <= 2, "only the waiter next in line heartbeats: {}", stderr(&second));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn the_first_listing_is_sent_behind_the_create_not_after_its_reply() {
    use crate::support::proxy::{op, Mode, Proxy};
    let zk = shared_zk();
    let lock = unique_lock_path("pipelined");
    // Every chunk takes 100 ms each way: a listing that waited for the create's reply would
    // leave the client 200 ms after the create did.
    let proxy = Proxy::to_port("pipelined", zk.port());
    proxy.set_mode(Mode::Latency(Duration::from_millis(100)));
    let out = output(run_cmd(&proxy.connect_string(), zk.tick(), &lock, &[], &["true"]));
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    // The first create finds no parent (NoNode) and zklock makes it; the second succeeds.
    let create = proxy
        .replies()
        .into_iter()
        .find(|r| (r.op == op::CREATE2 || r.op == op::CREATE) && r.err == 0)
        .expect("a successful create went through the proxy");
    let listings: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|&(o, t)| (o == op::GET_CHILDREN || o == op::GET_CHILDREN2) && t >= create.sent)
        .map(|(_, t)| t)
        .collect();
    let first = *listings.first().expect("a listing after the create");
    assert!(
        first < create.replied,
        "the listing left {:?} after the create, but its reply was delivered after {:?}",
        first - create.sent,
        create.replied - create.sent
    );
    // One listing after the successful create was enough: the lock was free.
    assert_eq!(listings.len(), 1, "{listings:?}");
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn conflict_exit_codes_for_no_wait_and_wait() {
    let zk = shared();
    let lock = unique_lock_path("conflict");
    let dir = TempDir::new().unwrap();
    let (mut holder, go) = hold(&lock, &dir, "holder");

    let out = output(run_shared(&lock, &["-n"], &["echo", "never"]));
    assert_eq!(code(out.status), 75, "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "", "-n on a held lock is silent by default");

    let out = output(run_shared(&lock, &["-n", "-E", "9"], &["echo", "never"]));
    assert_eq!(code(out.status), 9);

    let out = output(run_shared(&lock, &["-w", "300ms"], &["echo", "never"]));
    assert_eq!(code(out.status), 75);
    assert!(stderr(&out).contains("gave up waiting"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    // Only the holder's node remains.
    assert_eq!(zk.children(&lock).len(), 1);
    std::fs::write(&go, "").unwrap();
    assert_eq!(code(wait_status(&mut holder)), 0);

    // Free again: -n runs the command.
    let out = output(run_shared(&lock, &["-n"], &["echo", "ran"]));
    assert_eq!((code(out.status), stdout(&out).as_str()), (0, "ran\n"));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn zklock_failures_exit_125_with_one_line() {
    let zk = shared_zk();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "relative/path", "--", "true"], "invalid lock path"),
        (vec!["run", "/a//b", "--", "true"], "invalid lock path"),
        (vec!["run", "--grace", "1h", "/it/x", "--", "true"], "--grace 1h leaves no time"),
        (vec!["run", "--kill-signal", "NOPE", "/it/x", "--", "true"], "not a signal"),
        (vec!["run", "--bogus", "/it/x", "--", "true"], "--bogus"),
        (vec!["run", "/it/x"], "required"),
        (
            vec!["run", "-z", "127.0.0.1:1", "--connect-timeout", "300ms", "/it/x", "--", "true"],
            "cannot connect to ZooKeeper at 127.0.0.1:1",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = zklock(&zk.connect_string());
        cmd.args(&args);
        let out = output(cmd);
        let err = stderr(&out);
        assert_eq!(code(out.status), 125, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("zklock: error: "), "{err}");
    }
}

#[test]
fn command_not_found_or_not_executable() {
    let zk = shared();
    let lock = unique_lock_path("spawnerr");
    let dir = TempDir::new().unwrap();
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, "echo hi\n").unwrap();

    let out = output(run_shared(&lock, &[], &["no-such-command-zklock"]));
    assert_eq!(code(out.status), 127, "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-command-zklock"));
    let out = output(run_shared(&lock, &[], &[dir.path().join("missing").to_str().unwrap()]));
    assert_eq!(code(out.status), 127, "{}", stderr(&out));
    let out = output(run_shared(&lock, &[], &[plain.to_str().unwrap()]));
    assert_eq!(code(out.status), 126, "{}", stderr(&out));
    // A directory on the path is not executable either.
    let out = output(run_shared(&lock, &[], &[dir.path().to_str().unwrap()]));
    assert_eq!(code(out.status), 126, "{}", stderr(&out));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn operator_deleting_the_node_stops_the_command_with_124_even_if_it_exits_0() {
    let zk = shared();
    let lock = unique_lock_path("opdelete");
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let termed = dir.path().join("termed");
    // Exits 0 on TERM: zklock must still report the loss.
    let script = r#"trap 'echo TERM > "$2"; exit 0' TERM; echo $$ > "$1"; while :; do sleep 0.02; done"#;
    let child = run_shared(
        &lock,
        &["--grace", "3s"],
        &["sh", "-c", script, "sh", ready.to_str().unwrap(), termed.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    read_pid(&ready);
    let nodes = zk.children(&lock);
    assert_eq!(nodes.len(), 1);
    zk.delete(&format!("{lock}/{}", nodes[0]));
    let out = wait_output(child);
    assert_eq!(code(out.status), 124, "{}", stderr(&out));
    assert!(stderr(&out).contains("our lock node was deleted"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&termed).unwrap(), "TERM\n");
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn whole_group_is_killed_after_grace_when_it_ignores_the_stop_signal() {
    let zk = shared();
    let lock = unique_lock_path("group");
    let dir = TempDir::new().unwrap();
    let leader_pid = dir.path().join("leader");
    let grandchild_pid = dir.path().join("grandchild");
    let termed = dir.path().join("termed");
    // Leader and grandchild both ignore TERM (the grandchild records that it got it).
    let script = r#"
        sh -c 'trap "echo TERM \$(date +%s%N) >> $2" TERM; echo $$ > "$1"; while :; do sleep 0.02; done' sh "$2" "$3" &
        trap '' TERM
        echo $$ > "$1"
        while :; do sleep 0.02; done"#;
    let mut child = run_shared(
        &lock,
        &["--grace", "500ms"],
        &[
            "sh",
            "-c",
            script,
            "sh",
            leader_pid.to_str().unwrap(),
            grandchild_pid.to_str().unwrap(),
            termed.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    let leader = read_pid(&leader_pid);
    let grandchild = read_pid(&grandchild_pid);
    assert!(alive(leader) && alive(grandchild));
    let nodes = zk.children(&lock);
    zk.delete(&format!("{lock}/{}", nodes[0]));
    assert_eq!(code(wait_status(&mut child)), 124);
    let exited = std::time::SystemTime::now();
    // The stop signal reached the grandchild (same group), and SIGKILL ended both, not before
    // the grace: zklock exits only after the group is gone. (The trap runs after the current
    // `sleep 0.02` and a fork of date: the stamp may be late, never early; hence the margin.)
    let termed = std::fs::read_to_string(&termed).unwrap();
    let ns: u64 = termed.split_whitespace().nth(1).and_then(|t| t.parse().ok()).expect(&termed);
    let term_at = std::time::UNIX_EPOCH + Duration::from_nanos(ns);
    let grace_seen = exited.duration_since(term_at).unwrap_or_default();
    assert!(grace_seen >= Duration::from_millis(300), "zklock exited {grace_seen:?} after the stop signal");
    support::wait_until(PATIENCE, "the group to be gone", || !alive(leader) && !alive(grandchild));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn stragglers_left_by_a_finished_command_are_stopped_before_release() {
    let zk = shared();
    let lock = unique_lock_path("straggler");
    let dir = TempDir::new().unwrap();
    let bg = dir.path().join("bg");
    let script = r#"sleep 300 & echo $! > "$1"; exit 5"#;
    let out = output(run_shared(&lock, &["--grace", "500ms"], &["sh", "-c", script, "sh", bg.to_str().unwrap()]));
    assert_eq!(code(out.status), 5, "the leader's status is kept: {}", stderr(&out));
    assert!(stderr(&out).contains("left processes in its group"), "{}", stderr(&out));
    let pid = read_pid(&bg);
    assert!(!alive(pid), "background process {pid} outlived the lock");
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn signals_to_zklock_reach_the_commands_group() {
    let lock = unique_lock_path("signals");
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let log = dir.path().join("log");
    let script = r#"
        sh -c 'trap "echo child-USR1 >> $1" USR1; trap "exit 0" TERM; echo child-ready >> $1; while :; do sleep 0.02; done' sh "$2" &
        trap 'echo leader-USR1 >> "$2"' USR1
        trap 'echo leader-HUP >> "$2"' HUP
        trap 'echo leader-WINCH >> "$2"' WINCH
        trap 'kill $!; wait; exit 7' TERM
        echo $$ > "$1"
        while :; do sleep 0.02; done"#;
    let mut child = run_shared(&lock, &[], &["sh", "-c", script, "sh", ready.to_str().unwrap(), log.to_str().unwrap()])
        .spawn()
        .unwrap();
    read_pid(&ready);
    // The background child's traps are set only when it says so (until then USR1 kills it).
    wait_for_file_line(&log, "child-ready", PATIENCE);
    send(child.id(), Signal::SIGUSR1);
    wait_for_file_line(&log, "child-USR1", PATIENCE);
    wait_for_file_line(&log, "leader-USR1", PATIENCE);
    send(child.id(), Signal::SIGHUP);
    wait_for_file_line(&log, "leader-HUP", PATIENCE);
    send(child.id(), Signal::SIGWINCH);
    wait_for_file_line(&log, "leader-WINCH", PATIENCE);
    // TERM is forwarded too; the command's own status (7) comes back, not 124.
    send(child.id(), Signal::SIGTERM);
    assert_eq!(code(wait_status(&mut child)), 7);
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn term_or_int_while_waiting_leaves_no_node() {
    let zk = shared();
    let lock = unique_lock_path("waitsig");
    let dir = TempDir::new().unwrap();
    let (mut holder, go) = hold(&lock, &dir, "holder");
    for (sig, expected) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let waiter = run_shared(&lock, &[], &["echo", "never"]).stdout(Stdio::piped()).spawn().unwrap();
        zk.wait_children(&lock, 2);
        send(waiter.id(), sig);
        let out = wait_output(waiter);
        assert_eq!(code(out.status), expected);
        assert_eq!(stdout(&out), "");
        assert_eq!(zk.children(&lock).len(), 1, "the waiter's node is gone");
    }
    std::fs::write(&go, "").unwrap();
    assert_eq!(code(wait_status(&mut holder)), 0);
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn unknown_node_in_the_lock_directory_is_an_error_not_ignored() {
    let zk = shared();
    let lock = unique_lock_path("foreign");
    zk.mkdir(&lock);
    zk.create_persistent(&format!("{lock}/notes"), b"");
    let out = output(run_shared(&lock, &[], &["echo", "never"]));
    assert_eq!(code(out.status), 125);
    assert!(stderr(&out).contains("cannot classify: 'notes'"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(zk.children(&lock), vec!["notes".to_string()], "our node was removed");
    zk.delete(&format!("{lock}/notes"));
}

#[test]
fn kazoo_and_curator_contenders_are_respected() {
    let zk = shared();
    let lock = unique_lock_path("interop");
    zk.mkdir(&lock);
    for prefix in ["0123456789abcdef0123456789abcdef__lock__", "_c_6f1c2b9e-3a4d-4e5f-8a7b-1c2d3e4f5a6b-lock-"] {
        let node = zk.create_ephemeral_seq(&format!("{lock}/{prefix}"), b"10.0.0.1");
        let out = output(run_shared(&lock, &["-n"], &["echo", "never"]));
        assert_eq!(code(out.status), 75, "{prefix}: {}", stderr(&out));
        zk.delete(&node);
        let out = output(run_shared(&lock, &["-n"], &["echo", "ran"]));
        assert_eq!(stdout(&out), "ran\n", "{prefix}");
    }
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn kill_9_of_zklock_kills_the_command_and_the_lock_frees_when_the_session_expires() {
    let zk = shared();
    let lock = unique_lock_path("kill9");
    let dir = TempDir::new().unwrap();
    let pidfile = dir.path().join("pid");
    let mut first = run_shared(
        &lock,
        &["--session-timeout", "2s"],
        &["sh", "-c", r#"echo $$ > "$1"; exec sleep 300"#, "sh", pidfile.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    let command = read_pid(&pidfile);
    let marks = dir.path().join("second");
    let mut second =
        run_shared(&lock, &[], &["sh", "-c", r#"echo ran > "$1""#, "sh", marks.to_str().unwrap()]).spawn().unwrap();
    zk.wait_children(&lock, 2);
    send(first.id(), Signal::SIGKILL);
    let _ = first.wait();
    support::wait_until(PATIENCE, "the command to die with zklock", || !alive(command));
    // The second contender gets the lock only after the first session's node is gone.
    assert_eq!(code(wait_status(&mut second)), 0);
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "ran\n");
    assert!(zk.children(&lock).is_empty());
}

/// A dedicated server with tickTime 500 ms, for tests that freeze it.
fn dedicated() -> (ZkServer, Zk) {
    let server = ZkServer::start_with(ZkOptions::default());
    let zk = Zk::connect(&server.connect_string());
    (server, zk)
}

#[test]
fn server_frozen_past_the_threshold_stops_the_command_at_the_deadline() {
    let (server, zk) = dedicated();
    let lock = "/frozen-long";
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let termed = dir.path().join("termed");
    let script = r#"trap 'echo TERM > "$2"; exit 0' TERM; echo $$ > "$1"; while :; do sleep 0.02; done"#;
    // T = 4 s, tick 500 ms, heartbeat every 400 ms: the stop signal 2 s after the last
    // confirmed heartbeat (the budget allows up to 2.66 s), long before the session expires.
    let child = run_cmd(
        &server.connect_string(),
        server.tick(),
        lock,
        &["--session-timeout", "4s", "--disconnect-threshold", "2s"],
        &["sh", "-c", script, "sh", ready.to_str().unwrap(), termed.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    read_pid(&ready);
    drop(zk);
    let frozen = std::time::Instant::now();
    server.freeze();
    // The stop signal must arrive while the server is still frozen...
    wait_for_file_line(&termed, "TERM", PATIENCE);
    let after = frozen.elapsed();
    server.thaw();
    // ...and not before the deadline: the last heartbeat confirmed before the freeze was sent
    // at most one period (400 ms, and its reply's trip) before it.
    assert!(after >= Duration::from_millis(2000 - 400 - 200), "stop signal only {after:?} after the freeze");
    let out = wait_output(child);
    assert_eq!(code(out.status), 124, "{}", stderr(&out));
    assert!(stderr(&out).contains("no heartbeat confirmed"), "{}", stderr(&out));
    let zk = Zk::connect(&server.connect_string());
    zk.wait_children(lock, 0);
}

#[test]
fn server_frozen_for_a_second_is_survived() {
    let (server, zk) = dedicated();
    let lock = "/frozen-short";
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let go = dir.path().join("go");
    let termed = dir.path().join("termed");
    let script = r#"trap 'echo TERM > "$3"; exit 0' TERM; echo $$ > "$1"; while [ ! -e "$2" ]; do sleep 0.02; done"#;
    // T = 8 s: threshold about 4.4 s, far above a 1 s freeze.
    let child = run_cmd(
        &server.connect_string(),
        server.tick(),
        lock,
        &["--session-timeout", "8s"],
        &["sh", "-c", script, "sh", ready.to_str().unwrap(), go.to_str().unwrap(), termed.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    read_pid(&ready);
    server.freeze();
    std::thread::sleep(Duration::from_secs(1)); // the fault's duration, not a readiness wait
    server.thaw();
    // The lock node is still there and still ours: the session survived.
    assert_eq!(zk.children(lock).len(), 1);
    std::fs::write(&go, "").unwrap();
    let out = wait_output(child);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(!termed.exists(), "the command must not be stopped");
    zk.wait_children(lock, 0);
}

#[test]
fn min_hold_keeps_the_lock_after_a_fast_command() {
    let zk = shared();
    let lock = unique_lock_path("minhold");
    let dir = TempDir::new().unwrap();
    let pidfile = dir.path().join("pid");
    let mut holder = run_shared(
        &lock,
        &["--min-hold", "60s"],
        &["sh", "-c", r#"echo $$ > "$1"; exit 4"#, "sh", pidfile.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    let command = read_pid(&pidfile);
    support::wait_until(PATIENCE, "the command to finish", || !alive(command));
    // The command is gone, the lock is still held: another host's -n skips.
    let out = output(run_shared(&lock, &["-n"], &["echo", "never"]));
    assert_eq!(code(out.status), 75, "{}", stderr(&out));
    assert_eq!(zk.children(&lock).len(), 1);
    // TERM ends the hold early; the command's own status is kept.
    send(holder.id(), Signal::SIGTERM);
    assert_eq!(code(wait_status(&mut holder)), 4);
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn a_waiter_whose_session_expires_queues_again_and_runs_after_the_stopped_holder() {
    let (server, zk) = dedicated();
    let lock = "/requeue";
    let dir = TempDir::new().unwrap();
    let marks = dir.path().join("marks");
    let ready = dir.path().join("ready");
    // The holder records its stop; the waiter records its start.
    let holder_script =
        r#"trap 'echo "holder stopped" >> "$2"; exit 0' TERM; echo $$ > "$1"; while :; do sleep 0.02; done"#;
    let mut holder = run_cmd(
        &server.connect_string(),
        server.tick(),
        lock,
        &["--session-timeout", "2s"],
        &["sh", "-c", holder_script, "sh", ready.to_str().unwrap(), marks.to_str().unwrap()],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    read_pid(&ready);
    let waiter = run_cmd(
        &server.connect_string(),
        server.tick(),
        lock,
        &["--session-timeout", "2s", "-w", "60s"],
        &["sh", "-c", r#"echo "waiter ran" >> "$1""#, "sh", marks.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    zk.wait_children(lock, 2);
    drop(zk);
    // Frozen well past 1.4 x T: both sessions end; the holder is stopped at its deadline.
    server.freeze();
    wait_for_file_line(&marks, "holder stopped", PATIENCE);
    std::thread::sleep(Duration::from_secs(4)); // the outage's length, not a readiness wait
    server.thaw();
    assert_eq!(code(wait_status(&mut holder)), 124);
    let out = wait_output(waiter);
    assert_eq!(code(out.status), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("queueing again with a new session"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "holder stopped\nwaiter ran\n");
    let zk = Zk::connect(&server.connect_string());
    zk.wait_children(lock, 0);
}

#[test]
fn lock_directories_are_containers_the_server_reaps_once_empty() {
    // The server hides the container flag from clients; what shows it is the reaping.
    let server = ZkServer::start_with(ZkOptions {
        jvm_args: vec!["-Dznode.container.checkIntervalMs=100".into()],
        ..ZkOptions::default()
    });
    let zk = Zk::connect(&server.connect_string());
    zk.mkdir("/plain");
    let out = output(run_cmd(&server.connect_string(), server.tick(), "/fleet/cron/report", &[], &["true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // Both parents zklock created go away; a persistent node made by someone else stays.
    support::wait_until(PATIENCE, "the empty lock directories to be reaped", || zk.data("/fleet").is_none());
    assert!(zk.data("/plain").is_some());
}

#[test]
fn kill_9_of_zklock_kills_the_whole_group_not_only_the_leader() {
    let zk = shared();
    let lock = unique_lock_path("kill9group");
    let dir = TempDir::new().unwrap();
    let pids = dir.path().join("pids");
    // A pipeline: the leader's children get no PDEATHSIG of their own.
    let script = r#"sleep 300 | cat & echo "$! $$" > "$1.tmp"; mv "$1.tmp" "$1"; wait"#;
    let mut zklock = run_shared(&lock, &[], &["sh", "-c", script, "sh", pids.to_str().unwrap()]).spawn().unwrap();
    let text = wait_for_file_line(&pids, " ", PATIENCE);
    let members: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(members.iter().all(|&p| alive(p)));
    send(zklock.id(), Signal::SIGKILL);
    let _ = zklock.wait();
    support::wait_until(PATIENCE, "every process of the group to die with zklock", || {
        members.iter().all(|&p| !alive(p))
    });
    // The session still holds the node until it expires; it is not ours to wait for here.
    zk.wait_children(&lock, 0);
}

#[test]
fn a_closed_stderr_does_not_change_the_exit_status() {
    let lock = unique_lock_path("stderrclosed");
    // zklock's stderr is a pipe whose reader is gone: the "lost" and final lines fail to write.
    let mut cmd = run_shared(&lock, &["-n", "--kill-signal", "NOPE"], &["true"]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stderr.take());
    assert_eq!(code(wait_status(&mut child)), 125, "a usage error is still 125, not a panic");
    let mut cmd = run_shared(&lock, &[], &["sh", "-c", "exit 3"]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stderr.take());
    assert_eq!(code(wait_status(&mut child)), 3);
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn a_blocked_stderr_does_not_delay_the_stop_signal() {
    let (server, _zk) = dedicated();
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let termed = dir.path().join("termed");
    // The command fills zklock's stderr pipe (nobody reads it) before saying it is ready.
    // (It then stops using that stderr itself, or it would block on it as zklock's log does.)
    let script = r#"trap 'echo TERM > "$2"; exit 0' TERM
        (head -c 200000 /dev/zero >&2 &)
        exec 2>/dev/null
        sleep 0.5; echo $$ > "$1"; while :; do sleep 0.02; done"#;
    let mut zklock = run_cmd(
        &server.connect_string(),
        server.tick(),
        "/stderr-blocked",
        &["--session-timeout", "4s", "-v"],
        &["sh", "-c", script, "sh", ready.to_str().unwrap(), termed.to_str().unwrap()],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    read_pid(&ready);
    server.freeze();
    // zklock's warnings cannot be written; the stop signal must come all the same.
    wait_for_file_line(&termed, "TERM", PATIENCE);
    server.thaw();
    let mut stderr_pipe = zklock.stderr.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut stderr_pipe, &mut std::io::sink()));
    assert_eq!(code(wait_status(&mut zklock)), 124);
    let _ = drain.join();
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().next()?.chars().next()
}

/// A command that stamps a file every 20 ms: its progress is what "stopped" is judged by (a
/// shell stopped between vfork and exec shows state D, not T).
const BEATING: &str = r#"echo $$ > "$1"; while :; do date +%s%N > "$1.beat"; sleep 0.02; done"#;

fn beat(ready: &std::path::Path) -> String {
    std::fs::read_to_string(ready.with_extension("beat")).unwrap_or_default()
}

/// Whether the beat file stays the same for `quiet` (the length of the observation).
fn no_progress(ready: &std::path::Path, quiet: Duration) -> bool {
    let before = beat(ready);
    std::thread::sleep(quiet); // an observation window, not a readiness wait
    before == beat(ready)
}

#[test]
fn ctrl_z_stops_the_command_with_zklock_and_fg_continues_both() {
    let zk = shared();
    let lock = unique_lock_path("ctrlz");
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let mut zklock = run_shared(&lock, &[], &["sh", "-c", BEATING, "sh", ready.to_str().unwrap()]).spawn().unwrap();
    let command = read_pid(&ready);
    send(zklock.id(), Signal::SIGTSTP);
    support::wait_until(PATIENCE, "zklock to be stopped", || proc_state(zklock.id() as i32) == Some('T'));
    assert!(no_progress(&ready, Duration::from_millis(300)), "the command must be stopped with zklock");
    send(zklock.id(), Signal::SIGCONT);
    let stopped_at = beat(&ready);
    support::wait_until(PATIENCE, "the command to run again", || beat(&ready) != stopped_at);
    assert_ne!(proc_state(zklock.id() as i32), Some('T'));
    // Still holding, and still the command's: a TERM is forwarded and ends it.
    assert_eq!(zk.children(&lock).len(), 1);
    send(zklock.id(), Signal::SIGTERM);
    assert_eq!(code(wait_status(&mut zklock)), 128 + 15);
    assert!(!alive(command));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn stopped_past_the_deadline_the_command_is_killed_on_fg() {
    let zk = shared();
    let lock = unique_lock_path("ctrlzlong");
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let mut zklock =
        run_shared(&lock, &["--session-timeout", "2s"], &["sh", "-c", BEATING, "sh", ready.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let command = read_pid(&ready);
    send(zklock.id(), Signal::SIGTSTP);
    support::wait_until(PATIENCE, "zklock to be stopped", || proc_state(zklock.id() as i32) == Some('T'));
    // Stopped far past the 2 s session: its lock may be someone else's by now, and the
    // command must not have run meanwhile.
    assert!(no_progress(&ready, Duration::from_secs(3)), "the command ran while zklock was stopped");
    let frozen = beat(&ready);
    send(zklock.id(), Signal::SIGCONT);
    assert_eq!(code(wait_status(&mut zklock)), 124);
    assert!(!alive(command));
    assert_eq!(beat(&ready), frozen, "the command was killed before it could run again");
    zk.wait_children(&lock, 0);
}

/// `-v` lines say when: stamped with RFC 3339 milliseconds when stderr is not a terminal (cron
/// mail, CI logs), plain on a terminal; acquisition and release both have a line.
#[test]
fn verbose_lines_are_stamped_when_stderr_is_not_a_terminal() {
    let lock = unique_lock_path("stamped");
    let out = output(run_shared(&lock, &["-v"], &["true"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let stamped = |line: &str| {
        let Some(rest) = line.strip_prefix("zklock: ") else { return false };
        let Some((stamp, _)) = rest.split_once(' ') else { return false };
        stamp.len() == "2026-12-03T02:00:00.123Z".len()
            && stamp.ends_with('Z')
            && humantime::parse_rfc3339(stamp).is_ok()
    };
    assert!(err.lines().count() >= 2, "{err}");
    assert!(err.lines().all(stamped), "every line stamped: {err}");
    assert!(err.contains("acquired ") && err.contains(&format!("released {lock}")), "{err}");

    // On a terminal (script(1) gives it one): no stamps.
    let zk = shared_zk();
    let bin = assert_cmd::cargo::cargo_bin("zklock");
    let line = format!(
        "{} run -z {} --server-tick {}ms -v {lock} -- true",
        bin.display(),
        zk.connect_string(),
        zk.tick().as_millis()
    );
    let tty = std::process::Command::new("script").args(["-qec", &line, "/dev/null"]).output().unwrap();
    assert!(tty.status.success(), "{tty:?}");
    let text = String::from_utf8_lossy(&tty.stdout).replace('\r', "");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("zklock: ")).collect();
    assert!(!lines.is_empty(), "{text}");
    assert!(lines.iter().all(|l| !stamped(l)), "no stamps on a terminal: {text}");
}

/// More contenders than the release record keeps names (32) queue on one lock and all release
/// cleanly: none of them waits a lock-delay (the last holder's clean release settles every
/// node it waited for, whether or not their names are still in the record).
#[test]
fn a_long_queue_of_clean_releases_costs_no_lock_delay() {
    const N: usize = 40;
    let lock = unique_lock_path("long-queue");
    let zk = shared();
    let dir = TempDir::new().unwrap();
    let gate = Gate::new(dir.path(), "first");
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let first = gate.hold(run_shared(&lock, &["--lock-delay", "60s"], &argv));
    let rest: Vec<_> = (1..N)
        .map(|_| {
            run_shared(&lock, &["-v", "--lock-delay", "60s"], &["true"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    zk.wait_children(&lock, N);
    assert_eq!(gate.release(first), 0);
    for child in rest {
        let out = wait_output(child);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(!err.contains("lock-delay"), "no contender waits a lock-delay after clean releases: {err}");
    }
}

//! Bad input, each with a clear one-line message, its documented exit status, and nothing
//! left behind: no lock node, no process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;

use tempfile::TempDir;

use crate::support::*;
use crate::support::{shared_zk, unique_lock_path};

fn shared() -> Zk {
    Zk::connect(&shared_zk().connect_string())
}

#[test]
fn malformed_lock_paths_are_refused_by_run_and_status() {
    let zk = shared();
    for (path, why) in [
        ("locks/x", "must start with '/'"),
        ("", "must start with '/'"),
        ("/locks/x/", "must not end with '/'"),
        ("/a//b", "empty path segment"),
        ("/a/../b", "'.' and '..'"),
        ("/zookeeper/x", "/zookeeper is reserved"),
        ("/zookeeper", "/zookeeper is reserved"),
        ("/a\u{7}b", "contains a character ZooKeeper does not allow"),
    ] {
        let out = output(run_shared(path, &[], &["echo", "ran"]));
        assert_fails(&out, &format!("invalid lock path '{}': {why}", path.escape_debug()));
        let mut status = zklock(&shared_zk().connect_string());
        status.args(["status", path]);
        assert_fails(&output(status), why);
    }
    // Nothing was created on the way, not even a parent.
    assert!(zk.data("/locks/x").is_none() && zk.data("/a").is_none());
}

#[test]
fn an_ephemeral_lock_path_cannot_hold_lock_nodes() {
    let zk = shared();
    let dir = unique_lock_path("ephemeral");
    zk.mkdir(&dir);
    let eph = zk.create_ephemeral_seq(&format!("{dir}/eph-"), b"");
    let out = output(run_shared(&eph, &[], &["echo", "ran"]));
    assert_fails(&out, &format!("cannot lock {eph}: it is an ephemeral node, which cannot have children"));
    assert!(zk.children(&eph).is_empty());
}

#[test]
fn a_lock_directory_with_ten_thousand_foreign_children_is_refused_and_reported() {
    let zk = shared();
    let lock = unique_lock_path("crowded");
    zk.mkdir(&lock);
    zk.create_many(&lock, "note-", 10_000);
    assert_eq!(zk.children(&lock).len(), 10_000);

    let out = output(run_shared(&lock, &["-n"], &["echo", "ran"]));
    assert_fails(&out, &format!("{lock} holds a node zklock cannot classify"));
    let left = zk.children(&lock);
    assert_eq!(left.len(), 10_000, "our node was not left behind");
    assert!(left.iter().all(|n| n.starts_with("note-")));

    let mut status = zklock(&shared_zk().connect_string());
    status.args(["status", "--json", &lock]);
    let out = status.output().unwrap(); // reads stdout as it comes: it is large
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["locks"][0]["other_nodes"].as_array().unwrap().len(), 10_000);
    assert_eq!(doc["locks"][0]["held"], false);
}

#[test]
fn connect_strings_and_chroots_that_cannot_work() {
    let zk = shared();
    let port = shared_zk().port();
    for (connect, needle) in [
        ("", "invalid connect string '': empty connect string"),
        ("127.0.0.1:notaport", "invalid connect string '127.0.0.1:notaport'"),
        ("127.0.0.1:2181//x", "invalid connect string '127.0.0.1:2181//x'"),
    ] {
        let out = output(run_shared("/it/x", &["-z", connect, "--connect-timeout", "1h"], &["echo", "ran"]));
        assert_fails(&out, needle);
    }
    let chroot = format!("127.0.0.1:{port}/no-such-chroot-{}", uuid::Uuid::new_v4().simple());
    let out = output(run_shared("/x", &["-z", &chroot], &["echo", "ran"]));
    assert_fails(&out, "cannot create /x: the chroot of the connect string does not exist");
    let mut status = zklock(&chroot);
    status.args(["status", "/x"]);
    assert_fails(&output(status), "the chroot /no-such-chroot-");
    assert!(zk.children("/").iter().all(|c| !c.starts_with("no-such-chroot")));
}

/// A TCP server on loopback that does `serve` with each connection, on its own thread.
fn fake_server(serve: fn(std::net::TcpStream)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    addr.to_string()
}

#[test]
fn servers_that_close_mid_handshake_or_say_nothing_are_named() {
    // Reads the start of the ConnectRequest, then closes.
    let closing = fake_server(|mut conn| {
        let mut buf = [0u8; 8];
        let _ = conn.read(&mut buf);
    });
    let out = output(run_shared("/it/x", &["-z", &closing, "--connect-timeout", "2s"], &["echo", "ran"]));
    assert_fails(&out, &format!("cannot connect to ZooKeeper at {closing} within 2s"));
    assert!(stderr(&out).contains("accepted the connection and closed it during the handshake"), "{}", stderr(&out));

    // Accepts, reads everything, answers nothing.
    let silent = fake_server(|mut conn| {
        let mut buf = [0u8; 1024];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    });
    let out = output(run_shared("/it/x", &["-z", &silent, "--connect-timeout", "1s"], &["echo", "ran"]));
    assert_fails(&out, &format!("cannot connect to ZooKeeper at {silent} within 1s"));
    assert!(stderr(&out).contains("accepted the connection but never answered"), "{}", stderr(&out));
}

#[test]
fn labels_too_big_and_durations_that_do_not_parse_or_are_zero() {
    let zk = shared();
    let lock = unique_lock_path("badargs");
    let big = "x".repeat(5000);
    let out = output(run_shared(&lock, &["--label", &big], &["echo", "ran"]));
    assert_fails(&out, "the label is 5000 bytes, more than the 4096 zklock allows");
    assert!(stderr(&out).contains("jute.maxbuffer"), "{}", stderr(&out));
    for (opts, needle) in [
        (["--wait", "soon"], "'soon' is not a duration"),
        (["--session-timeout", "0s"], "'0s' must be longer than zero"),
        (["--connect-timeout", "0ms"], "'0ms' must be longer than zero"),
        (["--grace=-1s", "--wait=1s"], "'-1s' is not a duration"),
        (["--disconnect-threshold", "0s"], "must be longer than zero"),
        (["--wait", "10"], "'10' is not a duration"),
        (["--min-hold", "1 fortnight"], "is not a duration"),
    ] {
        let out = output(run_shared(&lock, &opts, &["echo", "ran"]));
        assert_fails(&out, needle);
    }
    assert!(zk.data(&lock).is_none(), "nothing created");

    // --wait 0s tries once: it runs on a free lock and gives up (75) on a held one.
    let out = output(run_shared(&lock, &["--wait", "0s"], &["echo", "ran"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (0, "ran\n"), "{}", stderr(&out));
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let script = format!("echo ok > '{}'; sleep 30", ready.display());
    let mut holder = run_shared(&lock, &[], &["sh", "-c", &script]).spawn().unwrap();
    crate::support::wait_for_file_line(&ready, "ok", PATIENCE);
    let out = output(run_shared(&lock, &["--wait", "0s"], &["echo", "ran"]));
    assert_eq!((code(&out), stdout(&out).as_str()), (75, ""), "{}", stderr(&out));
    send(holder.id(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(wait_status(&mut holder).code(), Some(143));
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn a_flood_on_stdout_passes_through_whole() {
    let lock = unique_lock_path("flood");
    let out = run_shared(&lock, &[], &["head", "-c", "20000000", "/dev/zero"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 20_000_000);
    assert!(out.stdout.iter().all(|&b| b == 0));
    assert!(shared().children(&lock).is_empty());
}

#[test]
fn a_command_whose_stdout_closes_dies_of_sigpipe_and_its_status_is_passed_through() {
    let zk = shared();
    let lock = unique_lock_path("sigpipe");
    let mut child = run_shared(&lock, &[], &["yes"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"y\ny\n"));
    drop(stdout);
    let status = wait_status(&mut child);
    assert_eq!(status.code(), Some(128 + 13), "yes died of SIGPIPE: {status:?}");
    assert!(zk.children(&lock).is_empty());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(err, "", "zklock says nothing of a command's own death");
    let _ = std::io::stderr().flush();
}

#[test]
fn kill_9_of_a_waiting_zklock_leaves_its_node_until_the_session_expires() {
    let zk = shared();
    let lock = unique_lock_path("kill9wait");
    let dir = TempDir::new().unwrap();
    let (ready, go) = (dir.path().join("ready"), dir.path().join("go"));
    let script = format!("echo ok > '{}'; while [ ! -e '{}' ]; do sleep 0.02; done", ready.display(), go.display());
    let mut holder = run_shared(&lock, &[], &["sh", "-c", &script]).spawn().unwrap();
    crate::support::wait_for_file_line(&ready, "ok", PATIENCE);
    let holder_node = zk.children(&lock);
    let ran = dir.path().join("waiter-ran");
    let mut waiter = run_shared(&lock, &["--session-timeout", "4s"], &["touch", ran.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let queued = zk.wait_children(&lock, 2);
    send(waiter.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = wait_status(&mut waiter);
    // The server removes the waiter's node only when it expires the session: the session
    // timeout after the kill, not at once.
    assert_eq!(zk.children(&lock), queued, "the node outlives the process");
    assert_eq!(zk.wait_children(&lock, 1), holder_node, "the waiter's node went with its session");
    std::fs::write(&go, "").unwrap();
    assert_eq!(wait_status(&mut holder).code(), Some(0));
    assert!(zk.children(&lock).is_empty());
    assert!(!ran.exists(), "the killed waiter never ran its command");
}

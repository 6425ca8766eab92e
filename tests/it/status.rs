//! `zklock status` against real ZooKeeper: queue order, foreign nodes, recursive listing,
//! exit statuses, --watch, and the JSON shape (pinned by a snapshot).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::*;
use crate::support::{shared_zk, unique_lock_path};

fn shared() -> Zk {
    Zk::connect(&shared_zk().connect_string())
}

fn status(args: &[&str]) -> std::process::Output {
    let mut cmd = zklock(&shared_zk().connect_string());
    cmd.arg("status").args(args);
    output(cmd)
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = status(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// A `zklock run` holding or waiting on `lock` until `release` is called; `ready` is
/// written once the command runs.
struct Holder {
    child: Child,
    go: std::path::PathBuf,
}

impl Holder {
    fn start(lock: &str, dir: &TempDir, name: &str, label: &str) -> Holder {
        let go = dir.path().join(format!("{name}.go"));
        let script = r#"while [ ! -e "$1" ]; do sleep 0.02; done"#;
        let child =
            run_shared(lock, &["--label", label], &["sh", "-c", script, "sh", go.to_str().unwrap()]).spawn().unwrap();
        Holder { child, go }
    }

    fn release(mut self) {
        std::fs::write(&self.go, "").unwrap();
        assert_eq!(wait_status(&mut self.child).code(), Some(0));
    }
}

#[test]
fn holder_and_waiters_in_queue_order_text_and_json() {
    let zk = shared();
    let lock = unique_lock_path("queue");
    let dir = TempDir::new().unwrap();
    let mut holders = Vec::new();
    for (i, label) in ["holder", "first waiter", "second waiter", "third waiter"].iter().enumerate() {
        holders.push(Holder::start(&lock, &dir, &format!("h{i}"), label));
        zk.wait_children(&lock, i + 1);
    }
    let pids: Vec<u32> = holders.iter().map(|h| h.child.id()).collect();

    let doc = json(&[&lock]);
    assert_eq!(doc["zklock_status"], 1);
    let l = &doc["locks"][0];
    assert_eq!(
        (l["path"].as_str(), l["exists"].as_bool(), l["held"].as_bool()),
        (Some(lock.as_str()), Some(true), Some(true))
    );
    assert_eq!(l["holder"]["pid"], pids[0]);
    assert_eq!(l["holder"]["label"], "holder");
    assert_eq!(l["holder"]["kind"], "zklock");
    assert_eq!(l["holder"]["command"], "sh");
    let waiters = l["waiters"].as_array().unwrap();
    assert_eq!(waiters.len(), 3);
    for (i, w) in waiters.iter().enumerate() {
        assert_eq!(w["pid"], pids[i + 1]);
        assert_eq!(w["position"], i + 1);
    }
    assert_eq!(waiters[0]["label"], "first waiter");
    assert_eq!(waiters[2]["label"], "third waiter");
    // The fencing token is the node's czxid.
    let holder_node = format!("{lock}/{}", l["holder"]["node"].as_str().unwrap());
    assert_eq!(l["holder"]["fencing_token"], zk.data(&holder_node).unwrap().1.czxid);

    let out = status(&[&lock]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{lock}: held by ")), "{text}");
    assert!(text.contains(&format!("pid {} (sh)", pids[0])), "{text}");
    assert!(text.contains(", 3 waiting"), "{text}");
    let order: Vec<usize> = ["holder", "first waiter", "second waiter", "third waiter"]
        .iter()
        .map(|l| text.find(l).unwrap_or_else(|| panic!("{l} missing: {text}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "queue order: {text}");
    // Each row of the table carries its contender's pid, in queue order, and when it joined.
    assert!(text.lines().nth(1).is_some_and(|h| h.contains(" FOR ") && h.contains(" JOINED ")), "{text}");
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, pid) in rows.iter().zip(&pids) {
        assert!(row.split_whitespace().any(|f| f == pid.to_string()), "pid {pid} missing in {row:?}: {text}");
    }

    // The second in line acquires once the holder leaves, and status shows it.
    let mut holders = holders.into_iter();
    holders.next().unwrap().release();
    zk.wait_children(&lock, 3);
    let doc = json(&[&lock]);
    assert_eq!(doc["locks"][0]["holder"]["pid"], pids[1]);
    assert_eq!(doc["locks"][0]["waiters"].as_array().unwrap().len(), 2);
    for h in holders {
        h.release();
    }
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn foreign_nodes_are_shown_for_what_they_are() {
    let zk = shared();
    let lock = unique_lock_path("foreign-status");
    zk.mkdir(&lock);
    zk.create_ephemeral_seq(&format!("{lock}/_c_6f1c2b9e-3a4d-4e5f-8a7b-1c2d3e4f5a6b-lock-"), b"10.0.0.7");
    zk.create_ephemeral_seq(&format!("{lock}/0123456789abcdef0123456789abcdef__lock__"), b"batch-host");
    zk.create_persistent(&format!("{lock}/README"), b"do not touch");
    let doc = json(&[&lock]);
    let l = &doc["locks"][0];
    assert_eq!(l["holder"]["kind"], "curator");
    assert_eq!(l["holder"]["data"], "\"10.0.0.7\"");
    assert_eq!(l["holder"]["host"], serde_json::Value::Null);
    assert_eq!(l["waiters"][0]["kind"], "kazoo");
    assert_eq!(l["waiters"][0]["data"], "\"batch-host\"");
    assert_eq!(l["other_nodes"][0]["node"], "README");
    assert_eq!(l["other_nodes"][0]["session_id"], serde_json::Value::Null);
    assert_eq!(l["other_nodes"][0]["data"], "\"do not touch\"");
    let text = stdout(&status(&[&lock]));
    assert!(text.contains("held by a curator client"), "{text}");
    assert!(text.contains("(kazoo node)"), "{text}");
    assert!(text.contains("other node README (persistent): \"do not touch\""), "{text}");
    zk.delete(&format!("{lock}/README"));
}

#[test]
fn recursive_lists_every_lock_below_a_path() {
    let zk = shared();
    let root = unique_lock_path("fleet");
    let dir = TempDir::new().unwrap();
    let held = Holder::start(&format!("{root}/cron/report"), &dir, "a", "report");
    zk.wait_children(&format!("{root}/cron/report"), 1);
    zk.mkdir(&format!("{root}/java/service"));
    zk.create_ephemeral_seq(&format!("{root}/java/service/_c_6f1c2b9e-3a4d-4e5f-8a7b-1c2d3e4f5a6b-lock-"), b"");
    // A lock whose holder left: its container stays until the server reaps it.
    let out = output(run_shared(&format!("{root}/cron/cleanup"), &[], &["true"]));
    assert!(out.status.success());

    let out = status(&["--recursive", &root]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].contains("LOCK") && lines[0].contains("WAITING"), "{text}");
    assert!(lines[1].contains(&format!("{root}/cron/cleanup")) && lines[1].contains("free"), "{text}");
    assert!(lines[2].contains(&format!("{root}/cron/report")) && lines[2].contains("held"), "{text}");
    assert!(lines[2].contains(&format!("pid {} (sh)", held.child.id())), "{text}");
    assert!(lines[3].contains(&format!("{root}/java/service")) && lines[3].contains("a curator client"), "{text}");
    assert_eq!(out.status.code(), Some(1), "one lock is free");

    let doc = json(&["--recursive", &root]);
    let paths: Vec<&str> = doc["locks"].as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 3);
    held.release();
}

#[test]
fn exit_statuses_for_scripts() {
    let lock = unique_lock_path("exit");
    let dir = TempDir::new().unwrap();
    // Missing path: free, with its own message; free in JSON.
    let out = status(&[&lock]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("{lock}: free (no such lock path)\n"));
    let doc = json(&[&lock]);
    assert_eq!((doc["locks"][0]["exists"].as_bool(), doc["locks"][0]["held"].as_bool()), (Some(false), Some(false)));
    let out = status(&["--recursive", &lock]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("no locks below {lock} (no such path)\n"));

    let holder = Holder::start(&lock, &dir, "h", "x");
    shared().wait_children(&lock, 1);
    let out = status(&["-q", &lock]);
    assert_eq!((out.status.code(), stdout(&out).as_str(), stderr(&out).as_str()), (Some(0), "", ""));
    // One held and one free: 1.
    let out = status(&["-q", &lock, &format!("{lock}-other")]);
    assert_eq!(out.status.code(), Some(1));
    holder.release();
    let out = status(&["-q", &lock]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(1), ""));

    for (args, needle) in [
        (vec!["relative"], "invalid lock path"),
        (vec!["-z", "127.0.0.1:1", "--connect-timeout", "300ms", "/x"], "cannot connect"),
        (vec!["--recursive", "/a", "/b"], "exactly one path"),
    ] {
        let out = status(&args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    // -q prints nothing, errors included: the status says it.
    let out = status(&["-q", "-z", "127.0.0.1:1", "--connect-timeout", "300ms", "/x"]);
    assert_eq!((out.status.code(), stdout(&out).as_str(), stderr(&out).as_str()), (Some(125), "", ""));
}

#[test]
fn watch_reports_acquisition_and_release() {
    let lock = unique_lock_path("watch");
    let dir = TempDir::new().unwrap();
    let mut cmd = zklock(&shared_zk().connect_string());
    cmd.args(["status", "--watch", &lock]).stdout(Stdio::piped());
    let mut watcher = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    // The next line that contains `what`; the lines skipped on the way may only say "free"
    // (e.g. the lock directory appearing before the holder's node).
    let next = |what: &str| -> String {
        loop {
            let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no line for {what}"));
            if line.contains(what) {
                return line;
            }
            assert!(line.ends_with(": free"), "unexpected while waiting for {what}: {line}");
        }
    };
    next("free (no such lock path)");
    let holder = Holder::start(&lock, &dir, "h", "x");
    let line = next("held by");
    assert!(line.contains(&format!("pid {}", holder.child.id())), "{line}");
    let waiter = Holder::start(&lock, &dir, "w", "y");
    next("1 waiting");
    holder.release();
    let line = next("held by");
    assert!(line.contains(&format!("pid {}", waiter.child.id())) && line.contains("0 waiting"), "{line}");
    waiter.release();
    next(": free");
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "no change, no line");
    send(watcher.id(), Signal::SIGTERM);
    assert_eq!(wait_status(&mut watcher).code(), Some(0));
}

#[test]
fn json_shape_is_stable() {
    let zk = shared();
    let lock = unique_lock_path("shape");
    let dir = TempDir::new().unwrap();
    let holder = Holder::start(&lock, &dir, "h", "nightly report");
    zk.wait_children(&lock, 1);
    zk.create_ephemeral_seq(&format!("{lock}/0123456789abcdef0123456789abcdef__lock__"), b"batch-host");
    zk.create_persistent(&format!("{lock}/notes"), b"\x00\x01");
    let doc = json(&[&lock]);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("snapshots");
    settings.bind(|| {
        insta::assert_json_snapshot!("status_json", doc, {
            ".generated_at" => "[time]",
            ".locks[].path" => "[lock]",
            ".locks[].holder.node" => "[node]",
            ".locks[].holder.session_id" => "[session]",
            ".locks[].holder.fencing_token" => "[token]",
            ".locks[].holder.joined_at" => "[time]",
            ".locks[].holder.joined_seconds_ago" => "[seconds]",
            ".locks[].holder.since" => "[time]",
            ".locks[].holder.seconds" => "[seconds]",
            ".locks[].holder.host" => "[host]",
            ".locks[].holder.pid" => "[pid]",
            ".locks[].holder.user" => "[user]",
            ".locks[].holder.zklock_version" => "[version]",
            ".locks[].holder.sequence" => "[seq]",
            ".locks[].holders[].node" => "[node]",
            ".locks[].holders[].session_id" => "[session]",
            ".locks[].holders[].fencing_token" => "[token]",
            ".locks[].holders[].joined_at" => "[time]",
            ".locks[].holders[].joined_seconds_ago" => "[seconds]",
            ".locks[].holders[].since" => "[time]",
            ".locks[].holders[].seconds" => "[seconds]",
            ".locks[].holders[].host" => "[host]",
            ".locks[].holders[].pid" => "[pid]",
            ".locks[].holders[].user" => "[user]",
            ".locks[].holders[].zklock_version" => "[version]",
            ".locks[].holders[].sequence" => "[seq]",
            ".locks[].waiters[].node" => "[node]",
            ".locks[].waiters[].session_id" => "[session]",
            ".locks[].waiters[].fencing_token" => "[token]",
            ".locks[].waiters[].joined_at" => "[time]",
            ".locks[].waiters[].joined_seconds_ago" => "[seconds]",
            ".locks[].waiters[].since" => "[time]",
            ".locks[].waiters[].seconds" => "[seconds]",
            ".locks[].waiters[].sequence" => "[seq]",
        });
    });
    zk.delete(&format!("{lock}/notes"));
    holder.release();
}

/// A holder whose node an operator deleted (an unclean vanishing): the waiter granted the lock
/// waits out the lock-delay, and status shows it as delayed with the time left, in every
/// format; the vanished holder's command is stopped (124). SIGTERM ends the delay cleanly.
#[test]
fn a_holder_waiting_out_the_lock_delay_shows_as_delayed() {
    let zk = shared();
    let parent = unique_lock_path("delayed");
    let lock = format!("{parent}/lock");
    let dir = TempDir::new().unwrap();
    let (mut first, _gate) = hold_shared(&lock, &["--lock-delay", "60s"], dir.path(), "first");
    let waiter_gate = Gate::new(dir.path(), "waiter");
    let argv = waiter_gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = dir.path().join("waiter.stderr");
    let mut waiter = run_shared(&lock, &["-v", "--lock-delay", "1s"], &argv)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let nodes = zk.wait_children(&lock, 2);
    // Queued (it saw the holder's node): a contender that first lists after the node is gone
    // never knew of it, and is not delayed (a documented limit).
    crate::support::wait_for_file_line(&log, "waiting for", PATIENCE);
    let holder_node = nodes.iter().min_by_key(|n| n.rsplit('-').next().unwrap().to_owned()).unwrap().clone();
    zk.delete(&format!("{lock}/{holder_node}"));
    assert_eq!(wait_status(&mut first).code(), Some(124), "the holder whose node vanished lost the lock");

    // The holder's own value (60 s) is what its successor honours, not the waiter's 1 s.
    let mut doc = serde_json::Value::Null;
    crate::support::wait_until(PATIENCE, "status to show the waiter delayed", || {
        doc = json(&[&lock]);
        doc["locks"][0]["holder"]["delay_seconds_left"].as_f64().is_some()
    });
    let holder = &doc["locks"][0]["holder"];
    let left = holder["delay_seconds_left"].as_f64().unwrap();
    assert!(left > 5.0 && left <= 60.0, "{doc}");
    assert!(holder["delayed_until"].is_string(), "{doc}");
    assert_eq!(holder["holding"], true, "{doc}");
    let text = stdout(&status(&[&lock]));
    assert!(text.contains("delayed (") && text.contains("left)"), "{text}");
    assert!(text.contains("lock-delay: its command starts in"), "{text}");
    let recursive = stdout(&status(&["-r", &parent]));
    assert!(recursive.lines().any(|l| l.contains(&lock) && l.contains("delayed")), "{recursive}");
    let prom = stdout(&status(&["--format", "prometheus", &lock]));
    let sample = prom.lines().find(|l| l.starts_with("zklock_lock_delay_seconds{")).expect(&prom);
    let value: f64 = sample.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 5.0, "{prom}");
    assert!(!waiter_gate.ready.exists(), "the command must not start during the lock-delay");

    // A TERM during the delay ends it: no command, no node, the signal's status.
    send(waiter.id(), Signal::SIGTERM);
    let code = wait_status(&mut waiter).code();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(128 + 15), "{err}");
    assert!(err.contains("vanished without a clean release"), "{err}");
    assert!(!waiter_gate.ready.exists());
    assert_eq!(zk.children(&lock), Vec::<String>::new());
    // Free again, the directory carries the release record and is still found as a lock.
    let recursive = stdout(&status(&["-r", &parent]));
    assert!(recursive.lines().any(|l| l.contains(&lock) && l.contains("free")), "{recursive}");
}

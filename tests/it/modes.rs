//! The modes against real ZooKeeper: `--limit N` (a semaphore), `--shared`/`--write` (a
//! read-write lock, Curator's layout) and `--timeout` (a maximum hold). Every command marks
//! its start and end on one clock; the checks are on the order of those marks.

use std::path::Path;
use std::process::{Child, Stdio};

use tempfile::TempDir;

use crate::support::*;
use crate::support::{shared_zk, unique_lock_path, wait_for_file_line};

fn shared() -> Zk {
    Zk::connect(&shared_zk().connect_string())
}

/// `start <id> <seq> <ns>` and `end <id> <ns>` around `sleep <secs>`; the sequence is our
/// node's, from ZKLOCK_NODE.
fn marking(marks: &Path, id: &str, secs: &str) -> Vec<String> {
    let script = r#"seq=${ZKLOCK_NODE##*[!0-9]}; echo "start $2 $seq $(date +%s%N)" >> "$1"; sleep "$3"; echo "end $2 $(date +%s%N)" >> "$1""#;
    ["sh", "-c", script, "sh", marks.to_str().unwrap(), id, secs].map(String::from).to_vec()
}

fn spawn(lock: &str, opts: &[&str], argv: &[String]) -> Child {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run_shared(lock, opts, &argv).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

#[derive(Debug)]
struct Mark {
    id: String,
    start: u128,
    end: u128,
    seq: u64,
}

fn marks(path: &Path) -> Vec<Mark> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: Vec<Mark> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", id, seq, ns] => out.push(Mark {
                id: id.to_string(),
                start: ns.parse().unwrap(),
                end: u128::MAX,
                seq: seq.parse().unwrap(),
            }),
            ["end", id, ns] => out.iter_mut().find(|m| m.id == *id).unwrap().end = ns.parse().unwrap(),
            _ => panic!("bad mark line {line:?}"),
        }
    }
    out
}

/// The most marks that overlap at any instant.
fn max_overlap(marks: &[Mark]) -> usize {
    let mut events: Vec<(u128, i32)> = marks.iter().flat_map(|m| [(m.start, 1), (m.end, -1)]).collect();
    events.sort(); // an end (-1) sorts before a start at the same instant
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn overlaps(a: &Mark, b: &Mark) -> bool {
    a.start < b.end && b.start < a.end
}

#[test]
fn limit_3_with_10_contenders_never_exceeds_3_and_all_run_in_queue_order() {
    let zk = shared();
    let lock = unique_lock_path("limit3");
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("marks");
    let mut children: Vec<Child> =
        (0..10).map(|i| spawn(&lock, &["--limit", "3"], &marking(&file, &format!("c{i}"), "0.5"))).collect();
    for c in &mut children {
        assert_eq!(wait_status(c).code(), Some(0));
    }
    let m = marks(&file);
    assert_eq!(m.len(), 10, "all ten ran: {m:?}");
    assert!(max_overlap(&m) <= 3, "more than 3 at once: {m:?}");
    assert!(max_overlap(&m) >= 2, "the semaphore let several run together: {m:?}");
    // In queue order: the k-th in the queue (from 0) starts only after k-2 commands ended,
    // i.e. only a release lets a waiter in, and the waiters go in the order they queued.
    let mut by_seq: Vec<&Mark> = m.iter().collect();
    by_seq.sort_by_key(|m| m.seq);
    let mut ends: Vec<u128> = m.iter().map(|m| m.end).collect();
    ends.sort();
    for (k, mark) in by_seq.iter().enumerate() {
        let ended_before = ends.iter().filter(|&&e| e <= mark.start).count();
        assert!(ended_before + 3 > k, "queue place {k} started after only {ended_before} releases: {m:?}");
        // A waiter is not overtaken: nobody queued behind it ran to the end before it started
        // (the first three are granted together, in no order of their own).
        if k >= 3 {
            assert!(ended_before <= k, "queue place {k} was overtaken: {m:?}");
        }
    }
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn a_mismatched_limit_or_another_kind_of_lock_is_refused_and_leaves_no_node() {
    let zk = shared();
    let lock = unique_lock_path("limitmix");
    let dir = TempDir::new().unwrap();
    let (h, go) = hold_shared(&lock, &["--limit", "2"], dir.path(), "h");
    let before = zk.children(&lock);
    for (opts, needle) in [
        (vec!["--limit", "3"], "use --limit 2"),
        (vec![], "it is a --limit 2 semaphore"),
        (vec!["--shared"], "--limit 2"),
        (vec!["--write", "-n"], "--limit 2"),
    ] {
        let out = output(run_shared(&lock, &opts, &["echo", "ran"]));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{opts:?}: {err}");
        assert!(err.contains(needle), "{opts:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(stdout(&out), "");
        assert_eq!(zk.children(&lock), before, "{opts:?} left a node");
    }
    let out = output(run_shared(&lock, &["--limit", "3"], &["true"]));
    assert!(stderr(&out).contains("this is --limit 3"), "both numbers: {}", stderr(&out));

    // status shows the limit and every holder.
    let (h2, go2) = hold_shared(&lock, &["--limit", "2", "--label", "second"], dir.path(), "h2");
    let mut status = zklock(&shared_zk().connect_string());
    status.args(["status", "--json", &lock]);
    let out = output(status);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let l = &doc["locks"][0];
    assert_eq!(l["limit"], 2, "{doc}");
    assert_eq!(l["holders"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(l["holders"][1]["label"], "second");
    assert!(l["waiters"].as_array().unwrap().is_empty());
    let mut text = zklock(&shared_zk().connect_string());
    text.args(["status", &lock]);
    let out = output(text);
    assert!(stdout(&out).starts_with(&format!("{lock}: held by 2 of at most 2 (")), "{}", stdout(&out));
    assert_eq!(go.release(h), 0);
    assert_eq!(go2.release(h2), 0);
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn shared_readers_run_together_while_a_writer_waits_and_a_writer_excludes_readers() {
    let zk = shared();
    let lock = unique_lock_path("rw");
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("marks");
    // Two readers hold together.
    let (r1, go1) = hold_shared(&lock, &["--shared"], dir.path(), "r1");
    let (r2, go2) = hold_shared(&lock, &["--shared"], dir.path(), "r2");
    // A writer queues behind them, and a reader behind the writer.
    let mut w = spawn(&lock, &["--write"], &marking(&file, "w", "0.5"));
    zk.wait_children(&lock, 3);
    let mut r3 = spawn(&lock, &["--shared"], &marking(&file, "r3", "0.1"));
    zk.wait_children(&lock, 4);
    let mut status = zklock(&shared_zk().connect_string());
    status.args(["status", "--json", &lock]);
    let doc: serde_json::Value = serde_json::from_slice(&output(status).stdout).unwrap();
    let kinds: Vec<&str> =
        doc["locks"][0]["waiters"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(doc["locks"][0]["holders"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(kinds, ["zklock-write", "zklock-read"], "{doc}");
    assert!(!file.exists(), "neither the writer nor the reader behind it ran beside the readers");
    assert_eq!(go1.release(r1), 0);
    assert!(!file.exists(), "the writer waits for the last reader");
    assert_eq!(go2.release(r2), 0);
    assert_eq!(wait_status(&mut w).code(), Some(0));
    assert_eq!(wait_status(&mut r3).code(), Some(0));
    let m = marks(&file);
    let (wm, rm) = (m.iter().find(|m| m.id == "w").unwrap(), m.iter().find(|m| m.id == "r3").unwrap());
    assert!(!overlaps(wm, rm), "a reader ran beside the writer: {m:?}");
    assert!(wm.end <= rm.start, "the reader queued behind the writer ran after it: {m:?}");
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn a_plain_exclusive_run_refuses_a_read_write_lock_and_waits_for_mutex_holders() {
    let zk = shared();
    let lock = unique_lock_path("rwplain");
    let dir = TempDir::new().unwrap();
    let (r, go) = hold_shared(&lock, &["--shared"], dir.path(), "r");
    let out = output(run_shared(&lock, &[], &["echo", "ran"]));
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a read-write lock") && stderr(&out).contains("use --write"), "{}", stderr(&out));
    assert_eq!(zk.children(&lock).len(), 1);
    assert_eq!(go.release(r), 0);
    // --write and --shared on a plain mutex path wait for its holder.
    let (m, go) = hold_shared(&lock, &[], dir.path(), "m");
    for opts in [["--write", "-n"], ["--shared", "-n"]] {
        let out = output(run_shared(&lock, &opts, &["echo", "ran"]));
        assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(75), ""), "{opts:?}: {}", stderr(&out));
    }
    assert_eq!(go.release(m), 0);
    assert!(zk.children(&lock).is_empty());
}

#[test]
fn timeout_stops_a_command_that_ignores_sigterm_with_its_whole_group_and_exits_123() {
    let zk = shared();
    let lock = unique_lock_path("timeout");
    let dir = TempDir::new().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("trap '' TERM; sleep 60 & echo $$ $! > '{}'; while :; do sleep 0.05; done", pids.display());
    let mut child = run_shared(&lock, &["--timeout", "1s", "--grace", "300ms"], &["sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = wait_for_file_line(&pids, "\n", PATIENCE);
    let pids: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(pids.iter().all(|&p| alive(p)), "the group runs while it holds");
    let status = wait_status(&mut child);
    assert_eq!(status.code(), Some(123), "--timeout has its own exit status");
    for p in &pids {
        assert!(!alive(*p), "pid {p} outlived the timeout");
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("held") && err.contains("for --timeout 1s; it was stopped"), "{err}");
    assert!(zk.children(&lock).is_empty());

    // A command that ends in time keeps its own status; --timeout works in every mode.
    for opts in
        [vec!["--timeout", "30s"], vec!["--timeout", "30s", "--shared"], vec!["--timeout", "30s", "--limit", "2"]]
    {
        let out = output(run_shared(&lock, &opts, &["sh", "-c", "exit 7"]));
        assert_eq!(out.status.code(), Some(7), "{opts:?}: {}", stderr(&out));
    }
    // --min-hold keeps working with every mode.
    for opts in [vec!["--min-hold", "1s", "--shared"], vec!["--min-hold", "1s", "--limit", "1"]] {
        let mut h = spawn(&lock, &opts, &["true".into()]);
        zk.wait_children(&lock, 1);
        let exclusive = opts.contains(&"--limit");
        let probe = if exclusive { vec!["--limit", "1", "-n"] } else { vec!["--write", "-n"] };
        let out = output(run_shared(&lock, &probe, &["echo", "ran"]));
        assert_eq!(out.status.code(), Some(75), "{opts:?} held past its command: {}", stderr(&out));
        assert_eq!(wait_status(&mut h).code(), Some(0));
    }
}

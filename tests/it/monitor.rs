//! Monitoring with `zklock status`: alert filters and their exit status, the Prometheus text
//! format checked with a real parser (Debian's python3-prometheus-client), the atomic `-o`, and
//! `--recursive` over ten thousand locks.

use std::process::{Command, Output, Stdio};

use tempfile::TempDir;
use zookeeper_client::{Acls, CreateMode};

use crate::support::*;
use crate::support::{shared_zk, unique_lock_path};

fn status(args: &[&str]) -> Output {
    let mut c = zklock(&shared_zk().connect_string());
    c.arg("status").args(args);
    output(c)
}

/// Parses the Prometheus text format with prometheus_client's parser and returns each sample
/// as `name{sorted labels} value` lines.
fn parse_prometheus(text: &str) -> Vec<String> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.type == "gauge", family
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3-prometheus-client (scripts/install-deps installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused the output: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

#[test]
fn alert_filters_list_only_matching_locks_and_exit_2() {
    let root = unique_lock_path("alerts");
    let (held, free, queued) = (format!("{root}/held"), format!("{root}/free"), format!("{root}/queued"));
    let dir = TempDir::new().unwrap();
    let zk = Zk::connect(&shared_zk().connect_string());
    let (h, go) = hold_shared(&held, &["--label", "h"], dir.path(), "h");
    let (q, qgo) = hold_shared(&queued, &["--label", "q"], dir.path(), "q");
    let mut waiter = run_shared(&queued, &[], &["true"]).stderr(Stdio::null()).spawn().unwrap();
    zk.wait_children(&queued, 2);
    // A lock directory that is free: created and emptied.
    let out = output(run_shared(&free, &[], &["true"]));
    assert_eq!(out.status.code(), Some(0));
    // Until both holders have held for 300 ms, by status' own reckoning.
    crate::support::wait_until(PATIENCE, "the holders to have held 300 ms", || {
        [&held, &queued].iter().all(|lock| {
            let out = status(&["--json", lock]);
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            doc["locks"][0]["holder"]["seconds"].as_f64().unwrap_or(0.0) > 0.3
        })
    });

    let out = status(&["-r", &root, "--held-longer-than", "300ms"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&held) && text.contains(&queued) && !text.contains(&free), "{text}");
    let out = status(&["-r", &root, "--held-longer-than", "1h"]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""), "nothing matched: silent, 0");
    // A waiter waits for the queued lock only.
    crate::support::wait_until(PATIENCE, "the waiter to have waited 300 ms", || {
        status(&["-r", &root, "--waiting-longer-than", "300ms"]).status.code() == Some(2)
    });
    let out = status(&["-r", &root, "--waiting-longer-than", "300ms", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = doc["locks"].as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [queued.as_str()]);
    // Named locks work as well as --recursive.
    let out = status(&[&held, &free, "--held-longer-than", "300ms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains(&held) && !stdout(&out).contains(&free));

    assert_eq!(go.release(h), 0);
    assert_eq!(qgo.release(q), 0);
    assert_eq!(wait_status(&mut waiter).code(), Some(0));
    let out = status(&["-r", &root, "--held-longer-than", "0s"]);
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(0), ""), "{}", stderr(&out));
}

#[test]
fn prometheus_output_parses_and_is_written_atomically() {
    let root = unique_lock_path("prom");
    let (a, b) = (format!("{root}/a \"quoted\""), format!("{root}/b"));
    let dir = TempDir::new().unwrap();
    let zk = Zk::connect(&shared_zk().connect_string());
    let (h, go) = hold_shared(&a, &["--label", "ha"], dir.path(), "ha");
    let mut waiter = run_shared(&a, &[], &["true"]).stderr(Stdio::null()).spawn().unwrap();
    zk.wait_children(&a, 2);
    let out = output(run_shared(&b, &[], &["true"]));
    assert_eq!(out.status.code(), Some(0));

    let file = dir.path().join("textfile").join("zklock.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let out = status(&["-r", &root, "--format", "prometheus", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "one lock is free: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "with -o, nothing on stdout");
    let names: Vec<String> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["zklock.prom"], "no temporary file left");
    let samples = parse_prometheus(&std::fs::read_to_string(&file).unwrap());
    let host = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
    let find = |prefix: &str| samples.iter().filter(|s| s.starts_with(prefix)).cloned().collect::<Vec<_>>();
    assert_eq!(find(&format!("zklock_lock_held{{path={a}}}")), [format!("zklock_lock_held{{path={a}}} 1.0")]);
    assert_eq!(find(&format!("zklock_lock_held{{path={b}}}")), [format!("zklock_lock_held{{path={b}}} 0.0")]);
    assert_eq!(find(&format!("zklock_lock_waiters{{path={a}}}")), [format!("zklock_lock_waiters{{path={a}}} 1.0")]);
    let held = find("zklock_lock_held_seconds{");
    assert_eq!(held.len(), 1, "{samples:?}");
    assert!(held[0].contains(&format!("holder_host={host}")) && held[0].contains(&format!("path={a}")), "{held:?}");
    assert_eq!(find("zklock_lock_oldest_wait_seconds{").len(), 2);
    assert_eq!(find("zklock_status_timestamp_seconds").len(), 1);
    assert!(find("zklock_lock_limit").is_empty(), "no --limit lock here");

    assert_eq!(go.release(h), 0);
    assert_eq!(wait_status(&mut waiter).code(), Some(0));
    // Another run on the same lock, another node and pid: the same series, labels and all.
    let series = |samples: &[String]| -> Vec<String> {
        samples.iter().filter_map(|s| s.rsplit_once(' ').map(|(series, _)| series.to_owned())).collect()
    };
    let before = series(&samples);
    let (h2, go2) = hold_shared(&a, &["--label", "ha"], dir.path(), "ha2");
    let mut waiter2 = run_shared(&a, &[], &["true"]).stderr(Stdio::null()).spawn().unwrap();
    zk.wait_children(&a, 2);
    let again = status(&["-r", &root, "--format", "prometheus", "-o", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    let after = series(&parse_prometheus(&std::fs::read_to_string(&file).unwrap()));
    assert_eq!(after, before, "the label set of every series is bounded: no node, pid or token");
    assert!(!after.iter().any(|s| s.contains("node=") || s.contains("pid=")), "{after:?}");
    assert_eq!(go2.release(h2), 0);
    assert_eq!(wait_status(&mut waiter2).code(), Some(0));
    // A second run replaces the file.
    let out = status(&["-r", &root, "--format", "prometheus", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let samples = parse_prometheus(&std::fs::read_to_string(&file).unwrap());
    assert!(samples.contains(&format!("zklock_lock_held{{path={a}}} 0.0")), "{samples:?}");
}

#[test]
fn recursive_walks_ten_thousand_locks() {
    const N: usize = 10_000;
    let root = unique_lock_path("many");
    let zk = Zk::connect(&shared_zk().connect_string());
    zk.mkdir(&root);
    // Ten thousand lock directories, a hundred per parent, each with a (Curator-named) node.
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    for group in 0..N / 100 {
        let parent = format!("{root}/g{group:03}");
        zk.mkdir(&parent);
        zk.create_many(&parent, "l", 100);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let nodes: Vec<String> = (0..100).map(|i| format!("{parent}/l{i:05}/_c_x-lock-0000000001")).collect();
        rt.block_on(async {
            let creates: Vec<_> = nodes.iter().map(|n| zk.client.create(n, b"", &opts)).collect();
            for r in futures::future::join_all(creates).await {
                r.unwrap();
            }
        });
    }
    let mut c = zklock(&shared_zk().connect_string());
    c.args(["status", "-r", "--format", "prometheus", &root]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "every lock held: {}", stderr(&out));
    let text = stdout(&out);
    let held: Vec<&str> = text.lines().filter(|l| l.starts_with("zklock_lock_held{")).collect();
    assert_eq!(held.len(), N);
    assert!(held.iter().all(|l| l.ends_with(" 1")), "all held");
    assert!(held.windows(2).all(|w| w[0] < w[1]), "in path order");
}

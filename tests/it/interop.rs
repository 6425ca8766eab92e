//! zklock beside the real libraries from Debian, on one lock path: Apache Curator 5.4
//! (`InterProcessMutex`, `InterProcessReadWriteLock`, compiled here with javac) and kazoo 2.8
//! (`Lock`, `ReadLock`, `WriteLock`, under Debian's /usr/bin/python3). Every holder, whatever
//! its library, runs the history script, so one checker judges them all on one clock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use std::collections::BTreeMap;

use crate::support::history::{self, check, Bound, History, Hold, Run};
use crate::support::*;
use crate::support::{shared_zk, unique_lock_path};

const JARS: &[&str] = &[
    "curator-framework",
    "curator-client",
    "curator-recipes",
    "zookeeper",
    "zookeeper-jute",
    "guava",
    "slf4j-api",
    "slf4j-nop",
    "netty-handler",
    "netty-common",
    "netty-buffer",
    "netty-transport",
    "netty-codec",
    "netty-resolver",
    "netty-transport-native-epoll",
    "netty-transport-native-unix-common",
];

/// The Curator peer, compiled once per test binary: its class path.
fn curator_classpath() -> &'static str {
    static CP: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &CP.get_or_init(|| {
        let jars: Vec<String> = JARS.iter().map(|j| format!("/usr/share/java/{j}.jar")).collect();
        for j in &jars {
            assert!(Path::new(j).exists(), "{j} missing: scripts/install-deps installs libcurator-recipes-java");
        }
        let dir = tempfile::TempDir::with_prefix("zklock-it-curator-").unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/InteropLock.java");
        let out = Command::new("javac")
            .arg("-d")
            .arg(dir.path())
            .arg("-cp")
            .arg(jars.join(":"))
            .arg(&src)
            .output()
            .expect("javac (scripts/install-deps installs default-jdk-headless)");
        assert!(out.status.success(), "javac failed: {}", String::from_utf8_lossy(&out.stderr));
        let cp = format!("{}:{}", dir.path().display(), jars.join(":"));
        (dir, cp)
    })
    .1
}

fn kazoo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/kazoo_lock.py")
}

/// One contender of any library.
struct Contender {
    id: String,
    child: Child,
    bound: Bound,
}

struct Bed {
    _dir: tempfile::TempDir,
    history: History,
    lock: String,
    zk: Zk,
    contenders: Vec<Contender>,
}

impl Bed {
    fn new(name: &str) -> Bed {
        let dir = tempfile::TempDir::new().unwrap();
        let history = History::new(dir.path());
        Bed {
            _dir: dir,
            history,
            lock: unique_lock_path(name),
            zk: Zk::connect(&shared_zk().connect_string()),
            contenders: vec![],
        }
    }

    fn release_file(&self, id: &str) -> PathBuf {
        self.history.path().with_file_name(format!("{id}.go"))
    }

    /// Starts a contender holding until released (`release`) or for `beats`, and waits until
    /// its node is in the queue, so that the order of arrival is the order of calls.
    fn spawn(&mut self, id: &str, who: &str, beats: Option<u32>) {
        let hold = match beats {
            Some(n) => Hold::Beats(n),
            None => Hold::UntilFile(self.release_file(id)),
        };
        let argv = self.history.argv(id, &hold);
        let zk = shared_zk().connect_string();
        let (mut cmd, bound) = match who.split_once(':').unwrap_or((who, "")) {
            ("zklock", opts) => {
                let opts: Vec<&str> = opts.split_whitespace().collect();
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                let bound = if opts.contains(&"--shared") { Bound::Reader } else { Bound::Alone };
                (run_shared(&self.lock, &opts, &argv), bound)
            }
            ("curator", mode) => {
                let mut c = Command::new("java");
                c.args(["-Xmx64m", "-XX:TieredStopAtLevel=1", "-cp", curator_classpath(), "InteropLock", &zk, mode]);
                c.arg(&self.lock).arg("--").args(&argv);
                (c, if mode == "read" { Bound::Reader } else { Bound::Alone })
            }
            ("kazoo", spec) => {
                let (mode, patterns) = spec.split_once(' ').unwrap_or((spec, "-"));
                let mut c = Command::new("/usr/bin/python3");
                c.arg(kazoo_script()).args([zk.as_str(), mode, &self.lock, patterns, "--"]).args(&argv);
                (c, if mode == "read" { Bound::Reader } else { Bound::Alone })
            }
            _ => panic!("unknown contender {who}"),
        };
        // Other libraries give no fencing token: the checker skips theirs.
        if !who.starts_with("zklock") {
            cmd.env("ZKLOCK_FENCING_TOKEN", "-1");
        }
        let queued = self.zk.children(&self.lock).len();
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        self.contenders.push(Contender { id: id.into(), child, bound });
        self.zk.wait_children(&self.lock, queued + 1);
    }

    fn release(&self, id: &str) {
        std::fs::write(self.release_file(id), "").unwrap();
    }

    fn started(&self, id: &str) -> bool {
        self.history.commands().contains_key(id)
    }

    /// Waits for every contender, then checks the history: no holder beside another that its
    /// mode excludes, no node left. Returns what each command did.
    fn verify(mut self) -> BTreeMap<String, history::Command> {
        let mut runs = Vec::new();
        for c in &mut self.contenders {
            let status = wait_status(&mut c.child);
            let mut err = String::new();
            std::io::Read::read_to_string(c.child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert_eq!(status.code(), Some(0), "{} failed: {err}", c.id);
            runs.push(Run::new(&c.id, 0, &[0]).on(&self.lock, c.bound));
        }
        let leaked = crate::support::fixtures::settle(&self.zk, &self.lock, PATIENCE);
        let report = check(&self.history.events(), &runs, &leaked);
        report.assert_ok(&self.history);
        assert_eq!(report.commands, runs.len(), "every contender ran");
        self.history.commands()
    }
}

fn overlapped(cmds: &BTreeMap<String, history::Command>, a: &str, b: &str) -> bool {
    let (a, b) = (&cmds[a], &cmds[b]);
    a.start <= b.last && b.start <= a.last
}

#[test]
fn zklock_and_curators_mutex_never_hold_together_in_either_order_of_arrival() {
    for first in ["zklock", "curator:mutex"] {
        let second = if first == "zklock" { "curator:mutex" } else { "zklock" };
        let mut bed = Bed::new("curator-mutex");
        // The first holds until all have queued, so that they queue in this order.
        for (i, who) in [first, second, first, second].into_iter().enumerate() {
            bed.spawn(&format!("m{i}"), who, if i == 0 { None } else { Some(6) });
        }
        bed.release("m0");
        bed.verify();
    }
}

/// A read-write lock shared with another library's `reader` and `writer`: a zklock reader and
/// theirs hold together; their writer queued behind waits for both, and a zklock reader queued
/// behind their writer runs after it; a zklock writer excludes their reader queued behind it.
fn read_write_lock_with(name: &str, reader: &str, writer: &str) {
    let mut bed = Bed::new(name);
    bed.spawn("zr", "zklock:--shared", None);
    bed.spawn("tr", reader, None);
    bed.history.wait_event("tr", "start", PATIENCE);
    bed.spawn("tw", writer, Some(6));
    bed.spawn("zr2", "zklock:--shared", Some(4));
    bed.spawn("zw", "zklock:--write", Some(6));
    bed.spawn("tr2", reader, Some(4));
    assert!(!bed.started("tw") && !bed.started("zr2"), "a writer, and a reader behind it, waited for the readers");
    bed.release("zr");
    bed.release("tr");
    let cmds = bed.verify();
    assert!(overlapped(&cmds, "zr", "tr"), "readers of both libraries ran together");
    assert!(cmds["tw"].last < cmds["zr2"].start, "the reader queued behind {writer} ran after it");
    assert!(cmds["zw"].last < cmds["tr2"].start, "{reader} queued behind zklock's writer ran after it");
}

#[test]
fn zklock_and_curators_read_write_lock_share_readers_and_exclude_writers() {
    read_write_lock_with("curator-rw", "curator:read", "curator:write");
}

#[test]
fn zklock_and_kazoo_locks_never_hold_together_and_share_reads() {
    // kazoo's Lock queues behind zklock's nodes when told their name (extra_lock_patterns).
    for first in ["zklock", "kazoo:lock -lock-"] {
        let second = if first == "zklock" { "kazoo:lock -lock-" } else { "zklock" };
        let mut bed = Bed::new("kazoo-mutex");
        for (i, who) in [first, second, first, second].into_iter().enumerate() {
            bed.spawn(&format!("k{i}"), who, if i == 0 { None } else { Some(6) });
        }
        bed.release("k0");
        bed.verify();
    }

    // kazoo's ReadLock and WriteLock beside zklock --shared and --write.
    read_write_lock_with("kazoo-rw", "kazoo:read __WRIT__,-lock-", "kazoo:write __READ__,__WRIT__,-lock-");
}

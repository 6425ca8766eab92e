//! Helpers for driving the zklock binary from tests: a blocking ZooKeeper client, the
//! command builder, and waits that never rely on fixed sleeps.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use zookeeper_client::{Acls, Client, CreateMode, Stat};

use crate::support;

/// How long any single wait in these tests may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A blocking ZooKeeper client for tests that drive processes.
pub struct Zk {
    rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl Zk {
    pub fn connect(connect: &str) -> Zk {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt.block_on(support::zk_client(connect));
        Zk { rt, client }
    }

    /// A client that authenticates with `connector` (digest auth, SASL) before its session.
    pub fn connect_with(connect: &str, connector: zookeeper_client::Connector) -> Zk {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt
            .block_on(connector.with_session_timeout(support::CLIENT_SESSION_TIMEOUT).connect(connect))
            .unwrap_or_else(|e| panic!("cannot connect to ZooKeeper at {connect}: {e}"));
        Zk { rt, client }
    }

    /// Deletes `path`, returning the server's answer.
    pub fn try_delete(&self, path: &str) -> Result<(), zookeeper_client::Error> {
        self.rt.block_on(self.client.delete(path, None))
    }

    /// The ACL of `path` as `scheme:id=perms` strings (perms as ZooKeeper's bits).
    pub fn acl(&self, path: &str) -> Vec<String> {
        let (acls, _) = self.rt.block_on(self.client.get_acl(path)).unwrap_or_else(|e| panic!("get_acl({path}): {e}"));
        acls.iter().map(|a| format!("{}:{}={}", a.auth_id().scheme(), a.auth_id().id(), a.permission())).collect()
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        self.rt.block_on(support::children(&self.client, path))
    }

    pub fn data(&self, path: &str) -> Option<(Vec<u8>, Stat)> {
        match self.rt.block_on(self.client.get_data(path)) {
            Ok(r) => Some(r),
            Err(zookeeper_client::Error::NoNode) => None,
            Err(e) => panic!("get_data({path}): {e}"),
        }
    }

    pub fn delete(&self, path: &str) {
        self.rt.block_on(self.client.delete(path, None)).unwrap_or_else(|e| panic!("delete({path}): {e}"));
    }

    pub fn mkdir(&self, path: &str) {
        self.rt.block_on(support::mkdir_p(&self.client, path));
    }

    /// Creates an ephemeral sequential node `prefix<seq>` owned by this client's session.
    pub fn create_ephemeral_seq(&self, prefix: &str, data: &[u8]) -> String {
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let (_, seq) = self.rt.block_on(self.client.create(prefix, data, &opts)).unwrap();
        format!("{prefix}{seq}")
    }

    pub fn create_persistent(&self, path: &str, data: &[u8]) {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        self.rt.block_on(self.client.create(path, data, &opts)).unwrap();
    }

    /// Creates `n` persistent, empty children `<parent>/<prefix><i>`, pipelined.
    pub fn create_many(&self, parent: &str, prefix: &str, n: usize) {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let paths: Vec<String> = (0..n).map(|i| format!("{parent}/{prefix}{i:05}")).collect();
        for batch in paths.chunks(1000) {
            let creates: Vec<_> = batch.iter().map(|p| self.client.create(p, b"", &opts)).collect();
            for (r, p) in self.rt.block_on(futures::future::join_all(creates)).into_iter().zip(batch) {
                r.unwrap_or_else(|e| panic!("create {p}: {e}"));
            }
        }
    }

    pub fn session_id(&self) -> i64 {
        self.client.session_id().0
    }

    /// Waits until `path` has exactly `n` children; returns them.
    pub fn wait_children(&self, path: &str, n: usize) -> Vec<String> {
        let mut last = Vec::new();
        support::wait_until(PATIENCE, &format!("{path} to have {n} children"), || {
            last = self.children(path);
            last.len() == n
        });
        last
    }
}

/// The zklock binary with `ZKLOCK_ZK` pointing at `connect`, stdin closed.
pub fn zklock(connect: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zklock"));
    c.env("ZKLOCK_ZK", connect).env_remove("ZKLOCK_LOG").stdin(Stdio::null());
    c
}

/// `zklock run --server-tick <tick> OPTS LOCK -- ARGV`.
pub fn run_cmd(connect: &str, tick: Duration, lock: &str, opts: &[&str], argv: &[&str]) -> Command {
    let mut c = zklock(connect);
    c.arg("run").arg("--server-tick").arg(format!("{}ms", tick.as_millis()));
    c.args(opts).arg(lock).arg("--").args(argv);
    c
}

/// `run_cmd` against the shared server.
pub fn run_shared(lock: &str, opts: &[&str], argv: &[&str]) -> Command {
    let zk = support::shared_zk();
    run_cmd(&zk.connect_string(), zk.tick(), lock, opts, argv)
}

/// Runs to completion and returns the output (with a time limit).
pub fn output(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn zklock");
    wait_output(child)
}

/// Waits (with a time limit) for a child spawned with piped output.
pub fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("zklock did not finish in time; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (with a time limit) for a child's exit status.
pub fn wait_status(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not finish in time", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command that says it runs (`<dir>/<name>.ready`) and runs until `<dir>/<name>.go` exists.
pub struct Gate {
    pub ready: PathBuf,
    pub go: PathBuf,
}

impl Gate {
    pub fn new(dir: &Path, name: &str) -> Gate {
        Gate { ready: dir.join(format!("{name}.ready")), go: dir.join(format!("{name}.go")) }
    }

    /// The command's argv.
    pub fn argv(&self) -> Vec<String> {
        let (ready, go) = (self.ready.display(), self.go.display());
        vec!["sh".into(), "-c".into(), format!("echo ok > '{ready}'; while [ ! -e '{go}' ]; do sleep 0.02; done")]
    }

    /// Spawns `cmd` (a zklock running [`Gate::argv`]) and returns once its command runs.
    pub fn hold(&self, mut cmd: Command) -> Child {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn zklock");
        support::wait_for_file_line(&self.ready, "ok", PATIENCE);
        child
    }

    /// Lets the command end; returns zklock's exit status.
    pub fn release(&self, mut child: Child) -> i32 {
        std::fs::write(&self.go, "").unwrap();
        wait_status(&mut child).code().expect("zklock exited")
    }
}

/// `zklock run OPTS LOCK -- <gate>` on the shared server, returned once the command runs.
pub fn hold_shared(lock: &str, opts: &[&str], dir: &Path, name: &str) -> (Child, Gate) {
    let gate = Gate::new(dir, name);
    let argv = gate.argv();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = gate.hold(run_shared(lock, opts, &argv));
    (child, gate)
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().and_then(|s| s.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Waits for a file holding one pid (written by a test command) and returns it.
pub fn read_pid(path: &Path) -> i32 {
    let text = support::wait_for_file_line(path, "\n", PATIENCE);
    text.trim().parse().unwrap_or_else(|_| panic!("{} holds no pid: {text:?}", path.display()))
}

pub fn send(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

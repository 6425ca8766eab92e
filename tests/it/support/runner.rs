//! Driving the zklock binary from tests: the command builders, waits that never rely on fixed
//! sleeps, a command gated on a file ([`Gate`]), and the history-writing runner of the fault
//! tests ([`Bed`], [`Zklock`]).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::support::{
    self,
    history::{self, History, Hold},
    PATIENCE,
};

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

/// The loopback address of `port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A temp dir with the history in it.
pub struct Bed {
    pub dir: TempDir,
    pub history: History,
}

impl Bed {
    pub fn new() -> Bed {
        let dir = TempDir::new().unwrap();
        let history = History::new(dir.path());
        Bed { dir, history }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A hold that ends when the test creates `<dir>/<name>`.
    pub fn until(&self, name: &str) -> Hold {
        Hold::UntilFile(self.file(name))
    }

    pub fn release(&self, name: &str) {
        std::fs::write(self.file(name), "").unwrap();
    }

    /// Starts `zklock run --server-tick <tick> OPTS LOCK -- <history command for id>`.
    pub fn spawn(&self, id: &str, connect: &str, tick: Duration, lock: &str, opts: &[&str], hold: Hold) -> Zklock {
        Zklock::spawn(&self.history, self.dir.path(), id, connect, tick, lock, opts, &hold)
    }
}

/// One zklock process. Dropping it kills it if it still runs (its command dies with it).
pub struct Zklock {
    pub id: String,
    child: Child,
    stderr: PathBuf,
    history: PathBuf,
    exit: Option<i32>,
}

impl Zklock {
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        history: &History,
        dir: &Path,
        id: &str,
        connect: &str,
        tick: Duration,
        lock: &str,
        opts: &[&str],
        hold: &Hold,
    ) -> Zklock {
        let stderr = dir.join(format!("{id}.stderr"));
        let argv = history.argv(id, hold);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = run_cmd(connect, tick, lock, opts, &argv);
        cmd.env("LC_ALL", "C").stdout(Stdio::null()).stderr(File::create(&stderr).unwrap());
        history.note(id, "zklock-spawn");
        let child = cmd.spawn().expect("spawn zklock");
        Zklock { id: id.to_owned(), child, stderr, history: history.path().to_owned(), exit: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn record(&mut self, status: std::process::ExitStatus) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        self.exit = Some(code);
        let line = format!("{} {} zklock-exit {code}\n", history::now_ns(), self.id);
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.history).unwrap();
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
        code
    }

    /// The exit code, if it exited (records it in the history once).
    pub fn try_exit(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.record(status);
            }
        }
        self.exit
    }

    /// Waits (with patience) for the exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + PATIENCE * 2;
        loop {
            if let Some(code) = self.try_exit() {
                return code;
            }
            assert!(Instant::now() < deadline, "zklock {} did not exit in time; stderr:\n{}", self.id, self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Zklock {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stderr of zklock {} ---\n{}", self.id, self.stderr());
        }
        if self.exit.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The exit code of a zklock that exited (rather than died of a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| panic!("zklock died of a signal: {:?}", out.status))
}

/// Asserts a zklock failure: exit 125, one line on stderr (`zklock: error: …`) containing
/// `needle`, and nothing on stdout (the command did not run).
pub fn assert_fails(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(code(out), 125, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("zklock: error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(stdout(out), "", "the command must not run");
}

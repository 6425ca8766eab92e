//! Real ZooKeeper servers (Debian's 3.8 jars) for integration tests.
//!
//! Every JVM is forked by [`super::spawner`] with `PR_SET_PDEATHSIG(SIGKILL)`, so it dies
//! with the test binary even when no destructor runs.
//!
//! Environment knobs (all optional):
//! * `ZK_CLASSPATH`: full Java class path to use instead of the Debian jars.
//! * `ZK_JAR_DIR`: directory holding the jars (default `/usr/share/java`).
//! * `JAVA_HOME`: use `$JAVA_HOME/bin/java` instead of `java` from `PATH`.
//! * `ZKLOCK_IT_KEEP_ZK=1`: keep the servers' temp dirs (config, data, `zk.log`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::spawner::{self, SpawnSpec};

/// How long a server (or a whole ensemble) may take to start serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two `srvr` readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);
/// How many fresh ports to try when a server cannot come up (port stolen meanwhile).
const START_ATTEMPTS: usize = 3;
/// Prefix of every server's temp dir, used to sweep dirs left by killed test binaries.
const DIR_PREFIX: &str = "zklock-it-zk-";
/// Lines of `zk.log` quoted in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// Jars (under `ZK_JAR_DIR`, default `/usr/share/java`) needed to run a server; the logger
/// binding is added separately (slf4j-simple when present, so `zk.log` is useful).
const JARS: &[&str] = &[
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "metrics-core.jar",
    "snappy-java.jar",
    "commons-cli.jar",
];

/// Options for [`ZkServer::start_with`] and [`ZkEnsemble::start_with`].
#[derive(Clone, Debug)]
pub struct ZkOptions {
    /// ZooKeeper `tickTime` in milliseconds (session timeouts are negotiated within
    /// `[2, 20]` ticks unless overridden below).
    pub tick_ms: u32,
    /// `minSessionTimeout` in ms; `None` keeps ZooKeeper's default (2 ticks).
    pub min_session_timeout_ms: Option<u32>,
    /// `maxSessionTimeout` in ms; `None` keeps ZooKeeper's default (20 ticks).
    pub max_session_timeout_ms: Option<u32>,
    /// Extra raw `key=value` lines appended to `zoo.cfg`.
    pub extra_config: Vec<String>,
    /// Extra JVM arguments, e.g. `-Dznode.container.checkIntervalMs=100`.
    pub jvm_args: Vec<String>,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            tick_ms: 500,
            min_session_timeout_ms: None,
            max_session_timeout_ms: None,
            extra_config: Vec::new(),
            jvm_args: Vec::new(),
        }
    }
}

/// Ensemble membership of one server: its `myid` and every member's (peer, election) ports.
struct Membership<'a> {
    myid: usize,
    peers: &'a [(u16, u16)],
}

/// Outcome of waiting for a server to serve.
enum Readiness {
    Ready,
    /// The JVM exited (typically: client port taken by someone else).
    Exited(String),
    /// Something else answers on our port.
    Foreign,
    TimedOut,
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Ready => f.write_str("ready"),
            Readiness::Exited(status) => write!(f, "the JVM exited ({status})"),
            Readiness::Foreign => f.write_str("something else answers on the port"),
            Readiness::TimedOut => f.write_str("timed out"),
        }
    }
}

/// One ZooKeeper server process (standalone, or a member of a [`ZkEnsemble`]).
///
/// Config (`zoo.cfg`), data (`data/`) and the JVM's stdout/stderr (`zk.log`) live in a
/// temp dir owned by this value. Dropping it SIGKILLs and reaps the JVM.
pub struct ZkServer {
    dir: TempDir,
    port: u16,
    jvm_args: Vec<String>,
    tick: Duration,
    pid: u32,
    child: Mutex<Option<Child>>,
}

impl ZkServer {
    /// Starts a dedicated standalone server with default options (tickTime 500 ms) and
    /// waits until it serves requests. Panics (with the server log tail) on failure.
    pub fn start() -> ZkServer {
        ZkServer::start_with(ZkOptions::default())
    }

    /// Starts a dedicated standalone server with `opts` on a free loopback port, retrying
    /// with a new port (at most 3 tries) if the JVM dies before serving, and waits up to
    /// [`READY_TIMEOUT`] for it to serve.
    pub fn start_with(opts: ZkOptions) -> ZkServer {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_ports(1)[0];
            let mut server = ZkServer::prepare(port, &opts, None);
            server.spawn_process();
            match server.poll_ready(Instant::now() + READY_TIMEOUT) {
                Readiness::Ready => return server,
                Readiness::TimedOut => {
                    panic!("ZooKeeper on port {port} not serving after {READY_TIMEOUT:?}\n{}", server.log_report())
                }
                other => {
                    let _ = writeln!(failures, "attempt {attempt} on port {port}: {other}\n{}", server.log_report());
                }
            }
        }
        panic!("could not start ZooKeeper in {START_ATTEMPTS} attempts:\n{failures}");
    }

    /// Client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PID of the current (or, once stopped, the last) JVM.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// PID of the current (or last) JVM, as a nix [`Pid`].
    pub fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    /// Connect string for this server alone: `"127.0.0.1:PORT"`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's `tickTime`.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Directory holding `zoo.cfg`, `data/` and `zk.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// File receiving the JVM's stdout and stderr (slf4j-simple logs at INFO).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("zk.log")
    }

    /// The last `lines` lines of [`Self::log_path`].
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read log: {e}>"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the JVM is alive (a frozen JVM counts as running).
    pub fn is_running(&self) -> bool {
        matches!(self.child().as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The `Mode:` reported by `srvr` (`standalone`, `leader`, `follower`), or `None` when the
    /// server is not serving. Takes up to ~1 s on a frozen server.
    pub fn mode(&self) -> Option<String> {
        let out = four_letter_timeout(self.port, "srvr", Duration::from_secs(1));
        out.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    /// SIGKILLs the JVM (by PID) and reaps it. No-op if it is not running.
    pub fn stop(&mut self) {
        self.kill_and_reap();
    }

    /// Starts the JVM again on the same port and data dir (stopping it first if it still
    /// runs) and waits until it serves. For an ensemble member this needs a quorum.
    pub fn restart(&mut self) {
        self.restart_nowait();
        self.wait_ready(READY_TIMEOUT);
    }

    /// Like [`Self::restart`] but returns right after spawning the JVM.
    pub fn restart_nowait(&mut self) {
        self.kill_and_reap();
        self.spawn_process();
    }

    /// Waits until the server serves requests; panics with the log tail if it exits or
    /// `timeout` elapses.
    pub fn wait_ready(&self, timeout: Duration) {
        match self.poll_ready(Instant::now() + timeout) {
            Readiness::Ready => {}
            other => {
                panic!("ZooKeeper on port {} not ready ({other}) within {timeout:?}\n{}", self.port, self.log_report())
            }
        }
    }

    /// SIGSTOPs the JVM: it keeps its sockets but answers nothing until [`Self::thaw`].
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONTs a frozen JVM.
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, sig: Signal) {
        assert!(self.is_running(), "ZooKeeper pid {} is not running", self.pid);
        kill(self.nix_pid(), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_and_reap(&self) {
        if let Some(mut child) = self.child().take() {
            // The pid cannot have been recycled: it stays a zombie until we wait below.
            let _ = kill(self.nix_pid(), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Creates the temp dir and config, without starting anything.
    fn prepare(port: u16, opts: &ZkOptions, member: Option<Membership<'_>>) -> ZkServer {
        let dir = new_server_dir();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create ZooKeeper data dir");
        let mut cfg = format!(
            "tickTime={}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=*\n",
            opts.tick_ms,
            data.display()
        );
        if let Some(ms) = opts.min_session_timeout_ms {
            let _ = writeln!(cfg, "minSessionTimeout={ms}");
        }
        if let Some(ms) = opts.max_session_timeout_ms {
            let _ = writeln!(cfg, "maxSessionTimeout={ms}");
        }
        if let Some(m) = member {
            cfg.push_str("initLimit=10\nsyncLimit=5\n");
            for (i, (peer, election)) in m.peers.iter().enumerate() {
                let _ = writeln!(cfg, "server.{}=127.0.0.1:{peer}:{election}", i + 1);
            }
            std::fs::write(data.join("myid"), format!("{}\n", m.myid)).expect("write myid");
        }
        for line in &opts.extra_config {
            let _ = writeln!(cfg, "{line}");
        }
        std::fs::write(dir.path().join("zoo.cfg"), cfg).expect("write zoo.cfg");
        ZkServer {
            dir,
            port,
            tick: Duration::from_millis(opts.tick_ms.into()),
            jvm_args: opts.jvm_args.clone(),
            pid: 0,
            child: Mutex::new(None),
        }
    }

    /// Spawns the JVM (from the PDEATHSIG spawner thread).
    fn spawn_process(&mut self) {
        let cfg = self.dir.path().join("zoo.cfg");
        let mut args: Vec<OsString> = [
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.preAllocSize=1024",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.extend(self.jvm_args.iter().map(OsString::from));
        args.push("-cp".into());
        args.push(classpath().into());
        args.push("org.apache.zookeeper.server.quorum.QuorumPeerMain".into());
        args.push(cfg.into_os_string());
        let child = spawner::spawn(SpawnSpec {
            program: java(),
            args,
            cwd: self.dir.path().to_path_buf(),
            log: self.log_path(),
        })
        .unwrap_or_else(|e| panic!("cannot spawn java for ZooKeeper: {e}"));
        self.pid = child.id();
        *self.child() = Some(child);
    }

    /// Polls `srvr` every [`READY_POLL`] until the server serves, exits, or `deadline`.
    fn poll_ready(&self, deadline: Instant) -> Readiness {
        let data_dir = self.dir.path().join("data");
        let data_dir = data_dir.to_string_lossy();
        loop {
            if let Some(status) = self.exit_status() {
                return Readiness::Exited(status);
            }
            let srvr = four_letter_timeout(self.port, "srvr", Duration::from_secs(1));
            if is_serving(&srvr) {
                // Make sure it is *our* JVM answering, not someone who took the port.
                let conf = four_letter_timeout(self.port, "conf", Duration::from_secs(1));
                if conf.contains(&*data_dir) {
                    return Readiness::Ready;
                }
                if !conf.is_empty() {
                    return Readiness::Foreign;
                }
            }
            if Instant::now() >= deadline {
                return Readiness::TimedOut;
            }
            thread::sleep(READY_POLL);
        }
    }

    fn exit_status(&self) -> Option<String> {
        match self.child().as_mut().map(|c| c.try_wait()) {
            None => Some("not started".into()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(format!("try_wait failed: {e}")),
        }
    }

    fn log_report(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}\n--- end of log ---",
            self.log_path().display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// One standalone server per test binary, started on first use and shared by every test
/// (use [`super::unique_lock_path`] so tests never collide). It is never dropped; the
/// JVM dies with the test binary through `PR_SET_PDEATHSIG`. Do not stop or freeze it.
pub fn shared_zk() -> &'static ZkServer {
    static SHARED: OnceLock<ZkServer> = OnceLock::new();
    SHARED.get_or_init(ZkServer::start)
}

/// A quorum of ZooKeeper servers on loopback, each with its own data dir and `myid`.
pub struct ZkEnsemble {
    servers: Vec<ZkServer>,
}

impl ZkEnsemble {
    /// Starts `n` servers (tickTime 500 ms) and waits until each is leader or follower.
    pub fn start(n: usize) -> ZkEnsemble {
        ZkEnsemble::start_with(n, ZkOptions::default())
    }

    /// Starts `n` servers with `opts`; retries with fresh ports (at most 3 tries) if a
    /// member dies before the quorum forms. Panics after [`READY_TIMEOUT`].
    pub fn start_with(n: usize, opts: ZkOptions) -> ZkEnsemble {
        assert!(n >= 1, "an ensemble needs at least one server");
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(3 * n);
            let peers: Vec<(u16, u16)> = (0..n).map(|i| (ports[n + 2 * i], ports[n + 2 * i + 1])).collect();
            let mut servers: Vec<ZkServer> = (0..n)
                .map(|i| {
                    let member = Membership { myid: i + 1, peers: &peers };
                    ZkServer::prepare(ports[i], &opts, Some(member))
                })
                .collect();
            for s in &mut servers {
                s.spawn_process();
            }
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut failed = None;
            for (i, s) in servers.iter().enumerate() {
                match s.poll_ready(deadline) {
                    Readiness::Ready => {}
                    Readiness::TimedOut => {
                        let logs: Vec<String> = servers.iter().map(|s| s.log_report()).collect();
                        panic!(
                            "ZooKeeper ensemble member {i} not serving after {READY_TIMEOUT:?}\n{}",
                            logs.join("\n")
                        );
                    }
                    other => {
                        failed = Some(format!("attempt {attempt}: member {i}: {other}\n{}", s.log_report()));
                        break;
                    }
                }
            }
            match failed {
                None => return ZkEnsemble { servers },
                Some(f) => failures.push_str(&f),
            }
        }
        panic!("could not start a {n}-server ZooKeeper ensemble in {START_ATTEMPTS} attempts:\n{failures}");
    }

    /// Connect string listing every member: `"127.0.0.1:P1,127.0.0.1:P2,..."`.
    pub fn connect_string(&self) -> String {
        self.servers.iter().map(ZkServer::connect_string).collect::<Vec<_>>().join(",")
    }

    /// Member `i` (0-based; its `myid` is `i + 1`).
    pub fn server(&self, i: usize) -> &ZkServer {
        &self.servers[i]
    }

    /// Member `i`, mutably (for [`ZkServer::stop`] / [`ZkServer::restart`]).
    pub fn server_mut(&mut self, i: usize) -> &mut ZkServer {
        &mut self.servers[i]
    }

    /// All members.
    pub fn servers(&self) -> &[ZkServer] {
        &self.servers
    }

    /// Index of the member whose `srvr` reports `Mode: leader`, if any (running members only).
    pub fn leader_index(&self) -> Option<usize> {
        self.servers.iter().position(|s| s.is_running() && s.mode().as_deref() == Some("leader"))
    }

    /// Waits until some member is leader and returns its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_index() {
                return i;
            }
            assert!(Instant::now() < deadline, "no ZooKeeper leader within {timeout:?}");
            thread::sleep(READY_POLL);
        }
    }
}

/// Sends a ZooKeeper four-letter word (e.g. `"srvr"`, `"conf"`, `"mntr"`) to
/// `127.0.0.1:port` and returns the answer; empty if nothing could be read (connection
/// refused, 2 s timeout, ...).
pub fn four_letter(port: u16, word: &str) -> String {
    four_letter_timeout(port, word, Duration::from_secs(2))
}

/// [`four_letter`] with an explicit connect/read timeout.
pub fn four_letter_timeout(port: u16, word: &str, timeout: Duration) -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(word.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf); // keeps whatever arrived before an error
    String::from_utf8_lossy(&buf).into_owned()
}

fn is_serving(srvr: &str) -> bool {
    srvr.lines().any(|l| matches!(l.trim(), "Mode: standalone" | "Mode: leader" | "Mode: follower" | "Mode: observer"))
}

/// `n` distinct free loopback ports (all bound at once, then released).
/// `n` loopback ports free at the time of the call.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect()
}

fn new_server_dir() -> TempDir {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale_dirs);
    let mut dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir().expect("create ZooKeeper temp dir");
    std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string()).expect("write owner.pid");
    if std::env::var_os("ZKLOCK_IT_KEEP_ZK").is_some_and(|v| v == "1") {
        dir.disable_cleanup(true);
    }
    dir
}

/// Removes server dirs whose owning test binary is dead (statics such as [`shared_zk`]
/// never run `Drop`, so their dirs would otherwise pile up in the temp dir).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let Some(owner) =
            std::fs::read_to_string(path.join("owner.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue; // being created right now, or not ours
        };
        if kill(Pid::from_raw(owner), None) == Err(Errno::ESRCH) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn java() -> OsString {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if Path::new(&home).join("bin/java").exists() => Path::new(&home).join("bin/java").into(),
        _ => "java".into(),
    }
}

fn classpath() -> &'static str {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        if let Ok(cp) = std::env::var("ZK_CLASSPATH") {
            return cp;
        }
        let dir = PathBuf::from(std::env::var_os("ZK_JAR_DIR").unwrap_or_else(|| "/usr/share/java".into()));
        let logger = if dir.join("slf4j-simple.jar").exists() { "slf4j-simple.jar" } else { "slf4j-nop.jar" };
        let jars: Vec<PathBuf> = JARS.iter().chain(std::iter::once(&logger)).map(|j| dir.join(j)).collect();
        let missing: Vec<String> = jars.iter().filter(|j| !j.exists()).map(|j| j.display().to_string()).collect();
        assert!(
            missing.is_empty(),
            "ZooKeeper jars missing (install Debian's `zookeeper` package or set ZK_CLASSPATH): {missing:?}"
        );
        jars.iter().map(|j| j.display().to_string()).collect::<Vec<_>>().join(":")
    })
}

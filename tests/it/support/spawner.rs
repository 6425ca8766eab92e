//! A dedicated, never-exiting thread that forks every helper process (the ZooKeeper JVMs).
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not when the
//! process exits. libtest runs every test on its own short-lived thread, so a JVM forked
//! directly from a test would be SIGKILLed as soon as that test's thread finished (and,
//! worse, a shared server would die after the first test using it). Forking from one
//! long-lived thread makes the signal fire exactly when the test binary itself dies,
//! however it dies (panic, SIGKILL, statics never dropped).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;

use nix::sys::signal::Signal;

/// What to run. The `Command` itself is built on the spawner thread.
pub(crate) struct SpawnSpec {
    /// Program to execute.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Working directory.
    pub cwd: PathBuf,
    /// File receiving both stdout and stderr (opened in append mode).
    pub log: PathBuf,
}

struct SpawnRequest {
    spec: SpawnSpec,
    reply: mpsc::Sender<io::Result<Child>>,
}

static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("it-process-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop never ends in practice.
                for req in rx {
                    let _ = req.reply.send(spawn_here(req.spec));
                }
                // Never let this thread exit: that would SIGKILL every child.
                loop {
                    thread::park();
                }
            })
            .expect("cannot start the process spawner thread");
        tx
    })
}

fn spawn_here(spec: SpawnSpec) -> io::Result<Child> {
    let log = OpenOptions::new().create(true).append(true).open(&spec.log)?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).current_dir(&spec.cwd).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let parent = nix::unistd::getpid();
    // SAFETY: only async-signal-safe syscalls (prctl, getppid) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died between fork() and prctl(): then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `spec` from the dedicated spawner thread, with `PR_SET_PDEATHSIG(SIGKILL)` set,
/// so the child can never outlive the test binary.
pub(crate) fn spawn(spec: SpawnSpec) -> io::Result<Child> {
    let (reply, rx) = mpsc::channel();
    spawner().send(SpawnRequest { spec, reply }).expect("process spawner thread is gone");
    rx.recv().expect("process spawner thread dropped the request")
}

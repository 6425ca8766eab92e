//! Command-line definitions (clap derive). Validation that needs the server (the safety
//! budget) happens in `config`; everything else is checked here.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::Signal;

/// A titled list of (term, description) rows, shared by `--help` and the man pages.
pub struct DocSection {
    pub title: &'static str,
    rows: Rows,
}

/// Where a section's rows come from.
enum Rows {
    Text(&'static [(&'static str, &'static str)]),
    /// An exit-status table, made from the [`Exit`](crate::exit::Exit) type.
    Exits(&'static [crate::exit::Exit]),
}

impl DocSection {
    /// The (term, description) rows.
    pub fn rows(&self) -> Vec<(String, &'static str)> {
        match self.rows {
            Rows::Text(rows) => rows.iter().map(|(t, d)| (t.to_string(), *d)).collect(),
            Rows::Exits(table) => crate::exit::rows(table),
        }
    }

    /// Plain text for `--help`.
    pub fn to_help(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let mut out = format!("{}:\n", self.title);
        for (term, text) in rows {
            out.push_str(&format!("  {term:width$}  {text}\n"));
        }
        out
    }
}

/// Examples: (what it does, the command line).
pub struct Examples(pub &'static [(&'static str, &'static str)]);

impl Examples {
    pub fn to_help(&self) -> String {
        let mut out = String::from("Examples:\n");
        for (i, (what, cmd)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("  # {what}\n  {cmd}\n"));
        }
        out
    }
}

pub const RUN_EXIT_STATUS: DocSection = DocSection { title: "Exit status", rows: Rows::Exits(&crate::exit::Exit::RUN) };

pub const RUN_ENV_GIVEN: DocSection = DocSection {
    title: "Environment given to the command",
    rows: Rows::Text(&[
        ("ZKLOCK_LOCK", "the lock path"),
        ("ZKLOCK_NODE", "the full path of our lock node"),
        ("ZKLOCK_FENCING_TOKEN", "the lock node's czxid (decimal); strictly rises from holder to holder"),
        ("ZKLOCK_SESSION_ID", "the ZooKeeper session id (hex)"),
    ]),
};

pub const ENV_READ: DocSection = DocSection {
    title: "Environment read by zklock",
    rows: Rows::Text(&[
        ("ZKLOCK_ZK", "the connect string when -z/--zk is not given"),
        (
            "ZKLOCK_AUTH",
            "credentials (digest:USER:PASSWORD or sasl-digest:USER:PASSWORD) when --auth-file is not given",
        ),
        ("ZKLOCK_TLS_CA, ZKLOCK_TLS_CERT, ZKLOCK_TLS_KEY", "--tls-ca, --tls-cert and --tls-key when not given"),
        ("ZKLOCK_LOCK_DELAY", "--lock-delay when not given"),
        ("ZKLOCK_LOG", "log filter overriding -v/-q, e.g. zklock=debug,zookeeper_client=info"),
    ]),
};

pub const RUN_EXAMPLES: Examples = Examples(&[
    (
        "cron on several hosts: the first host runs the report, the others skip it (exit 75)",
        "zklock run -n /locks/nightly-report -- ./report.sh --full",
    ),
    (
        "CI deploy step: wait up to 10 minutes for the previous deploy to finish",
        "zklock run -w 10m --label \"$CI_JOB_URL\" /locks/deploy/prod -- ./deploy.sh",
    ),
    (
        "refuse stale holders with the fencing token",
        "zklock run /locks/etl -- sh -c 'psql -v token=\"$ZKLOCK_FENCING_TOKEN\" -f etl.sql'",
    ),
]);

pub const STATUS_EXIT_STATUS: DocSection =
    DocSection { title: "Exit status", rows: Rows::Exits(&crate::exit::Exit::STATUS) };

pub const STATUS_EXAMPLES: Examples = Examples(&[
    ("who holds the report lock, and who waits", "zklock status /locks/nightly-report"),
    ("the holder's host, for a script", "zklock status --json /locks/deploy/prod | jq -r '.locks[0].holder.host'"),
    ("every lock of the fleet, one line each", "zklock status --recursive /locks"),
    ("is the ETL running?", "zklock status -q /locks/etl && echo 'ETL is running'"),
    (
        "alert (exit 2) on locks held over an hour or waiters stuck for ten minutes",
        "zklock status -r /locks --held-longer-than 1h --waiting-longer-than 10m",
    ),
    (
        "metrics for node_exporter's textfile collector, from cron",
        "zklock status -r /locks --format prometheus -o /var/lib/node_exporter/textfile/zklock.prom",
    ),
]);

pub const TOP_EXAMPLES: Examples = Examples(&[
    ("run a job under a lock, waiting for it", "zklock run /locks/nightly-report -- ./report.sh --full"),
    ("skip the job if another host runs it", "zklock run -n /locks/nightly-report -- ./report.sh"),
    ("see who holds it", "zklock status /locks/nightly-report"),
]);

/// The safety model in brief, for the man pages.
pub const SAFETY_BRIEF: &str =
    "While holding, zklock sends a heartbeat every T/10 (T: the negotiated session timeout): \
a check-only multi on its own lock node, which the ZooKeeper leader must validate. From the send time of the last \
confirmed heartbeat (t_ok, on CLOCK_BOOTTIME), the command must be dead by D = t_ok + T*(1-1%) - (tick + T/10). \
zklock sends the stop signal (--kill-signal) to the command's process group at t_ok + the disconnect threshold \
and SIGKILL --grace later, never later than D - 400ms (with the defaults, exactly then). A session expiry, a deleted lock node, or a node owned \
by another session after a reconnect stops the command at once. A threshold or grace that does not fit is refused \
with the arithmetic. A guard process outside the command's group is armed with zklock's SIGKILL instant and renewed \
by every confirmed heartbeat: if zklock is stopped, hung or starved and misses it, the guard SIGKILLs the group \
itself. When a holder vanishes without a clean release (its session expired, its node was deleted), the next holder \
waits that holder's --lock-delay (default: the session timeout) before starting its command, so that a holder frozen \
whole for less than T + lock-delay is dead first; clean releases cost no delay. Beyond that (a longer freeze, a \
process that escaped the group), ZKLOCK_FENCING_TOKEN lets the protected resource refuse a stale holder.";

fn run_after_help() -> String {
    format!(
        "{}\n{}\n{}\n{}",
        RUN_EXIT_STATUS.to_help(),
        RUN_ENV_GIVEN.to_help(),
        ENV_READ.to_help(),
        RUN_EXAMPLES.to_help()
    )
}

fn status_after_help() -> String {
    format!("{}\n{}", STATUS_EXIT_STATUS.to_help(), STATUS_EXAMPLES.to_help())
}

#[derive(Debug, Parser)]
#[command(
    name = "zklock",
    version,
    about = "Run a command under a ZooKeeper lock, and stop it before anyone else can get the lock",
    propagate_version = true,
    max_term_width = 100,
    after_help = TOP_EXAMPLES.to_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// More messages on stderr (-v: lifecycle, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on stderr (status: print nothing, only set the exit status)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire a lock, run a command while holding it, release it
    #[command(after_help = run_after_help())]
    Run(RunArgs),
    /// Show who holds a lock and who waits, for people (a table) and scripts (--json, status)
    #[command(after_help = status_after_help())]
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Lock paths to show (with --recursive: one path to search below)
    #[arg(value_name = "LOCK", required = true)]
    pub locks: Vec<String>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Output format: a table for people, a versioned JSON document, or Prometheus' text format
    #[arg(long, value_enum, default_value_t = Format::Text, value_name = "FORMAT", help_heading = "Output")]
    pub format: Format,

    /// The same as --format json
    #[arg(long, conflicts_with = "format", help_heading = "Output")]
    pub json: bool,

    /// Write the output to FILE, atomically (a temporary file in the same directory, renamed)
    #[arg(short, long, value_name = "FILE", conflicts_with = "watch", help_heading = "Output")]
    pub output: Option<std::path::PathBuf>,

    /// List every lock below the path, one line each
    #[arg(short, long, conflicts_with = "watch", help_heading = "Output")]
    pub recursive: bool,

    /// Only locks held longer than this; exit 2 when any is (an alert)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Alerts")]
    pub held_longer_than: Option<Duration>,

    /// Only locks with a waiter waiting longer than this; exit 2 when any has (an alert)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Alerts")]
    pub waiting_longer_than: Option<Duration>,

    /// Keep running and print a line each time a holder or queue changes, until interrupted
    #[arg(long, conflicts_with_all = ["json", "held_longer_than", "waiting_longer_than"], help_heading = "Output")]
    pub watch: bool,
}

impl StatusArgs {
    /// The format asked for, `--json` included.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// What `zklock status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A summary line and a table per lock (--recursive: a line per lock)
    Text,
    /// The versioned JSON document
    Json,
    /// The Prometheus text exposition format, for node_exporter's textfile collector
    Prometheus,
}

/// How to reach ZooKeeper.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// ZooKeeper connect string: host:port[,host:port...][/chroot]
    #[arg(
        short = 'z',
        long = "zk",
        env = "ZKLOCK_ZK",
        hide_env_values = true,
        default_value = "127.0.0.1:2181",
        value_name = "CONNECT"
    )]
    pub zk: String,

    /// Requested session timeout; the server may negotiate another, which is what counts
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub session_timeout: Duration,

    /// Give up if no server answers within this long
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Credentials in a file only its owner can read: digest:USER:PASSWORD or sasl-digest:USER:PASSWORD
    #[arg(long, value_name = "PATH", help_heading = "Security")]
    pub auth_file: Option<std::path::PathBuf>,

    /// CA certificate(s) (PEM) that signed the servers' certificates; connects with TLS
    #[arg(long, env = "ZKLOCK_TLS_CA", value_name = "PEM", help_heading = "Security")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --tls-key
    #[arg(long, env = "ZKLOCK_TLS_CERT", value_name = "PEM", requires = "tls_key", help_heading = "Security")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert
    #[arg(long, env = "ZKLOCK_TLS_KEY", value_name = "PEM", requires = "tls_cert", help_heading = "Security")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    /// The connection settings, for the connection layer (which knows nothing of clap).
    pub fn settings(&self, acl: Option<AclPolicy>) -> crate::zk::Settings {
        crate::zk::Settings {
            connect: self.zk.clone(),
            session_timeout: self.session_timeout,
            connect_timeout: self.connect_timeout,
            auth_file: self.auth_file.clone(),
            acl: acl.map(Into::into),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

/// The ACL of every node zklock creates: lock nodes and the parents it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AclPolicy {
    /// Anyone may read, change and delete (world:anyone:cdrwa)
    Open,
    /// Only our authenticated identity may read, change or delete (auth::cdrwa)
    Creator,
    /// Our identity may do everything, anyone may read: `zklock status` works for all
    #[value(name = "creator+read")]
    CreatorRead,
}

impl From<AclPolicy> for crate::zk::AclPolicy {
    fn from(p: AclPolicy) -> Self {
        match p {
            AclPolicy::Open => crate::zk::AclPolicy::Open,
            AclPolicy::Creator => crate::zk::AclPolicy::Creator,
            AclPolicy::CreatorRead => crate::zk::AclPolicy::CreatorRead,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock: a znode path such as /locks/nightly-report
    #[arg(value_name = "LOCK")]
    pub lock: String,

    /// The command and its arguments, run directly (no shell)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,

    #[command(flatten)]
    pub connect: ConnectArgs,

    /// ACL of the nodes zklock creates [default: creator+read with credentials, else open]
    #[arg(long, value_enum, value_name = "POLICY", help_heading = "Security")]
    pub acl: Option<AclPolicy>,

    /// The servers' tickTime, used in the safety budget
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration, value_name = "DURATION", help_heading = "Safety")]
    pub server_tick: Duration,

    /// Give up waiting for the lock after this long; 0s tries once, like --no-wait (default: wait forever)
    #[arg(short, long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Waiting")]
    pub wait: Option<Duration>,

    /// Give up at once if the lock is held
    #[arg(short = 'n', long, conflicts_with = "wait", help_heading = "Waiting")]
    pub no_wait: bool,

    /// Exit status when --no-wait or --wait gives up
    #[arg(short = 'E', long, default_value_t = crate::exit::CONFLICT_DEFAULT, value_name = "N", help_heading = "Waiting")]
    pub conflict_exit_code: u8,

    /// Time without a leader-confirmed heartbeat before the stop signal [default: derived from the safety budget]
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", help_heading = "Safety")]
    pub disconnect_threshold: Option<Duration>,

    /// Time between the stop signal and SIGKILL [default: 30% of the budget, at most 5s]
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", help_heading = "Safety")]
    pub grace: Option<Duration>,

    /// After a holder vanished without a clean release (session expired, node deleted), wait this long before starting the command; 0s: never [default: the negotiated session timeout]
    #[arg(long, env = "ZKLOCK_LOCK_DELAY", value_parser = parse_duration, value_name = "DURATION", help_heading = "Safety")]
    pub lock_delay: Option<Duration>,

    /// Signal that stops the command when the lock is lost: TERM, SIGTERM or 15
    #[arg(long, default_value = "TERM", value_parser = parse_signal, value_name = "SIGNAL", help_heading = "Safety")]
    pub kill_signal: Signal,

    /// At most N commands hold the lock at once (a semaphore); every participant must give the same N
    #[arg(long, value_name = "N", conflicts_with_all = ["shared", "write"], help_heading = "Mode")]
    pub limit: Option<std::num::NonZeroU32>,

    /// Take the lock shared (a read lock): readers run together, never beside a writer (Curator's InterProcessReadWriteLock)
    #[arg(long, conflicts_with = "write", help_heading = "Mode")]
    pub shared: bool,

    /// Take the write side of a read-write lock: alone, never beside a reader or another writer
    #[arg(long, help_heading = "Mode")]
    pub write: bool,

    /// Stop the command (stop signal, grace, SIGKILL) once it has held the lock this long, and exit 123
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", help_heading = "Safety")]
    pub timeout: Option<Duration>,

    /// Keep holding the lock until this long after acquiring it, even if the command ends sooner
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Lock node")]
    pub min_hold: Option<Duration>,

    /// Free text stored with the lock node, shown by `zklock status` (at most 4096 bytes)
    #[arg(long, value_name = "TEXT", value_parser = parse_label, help_heading = "Lock node")]
    pub label: Option<String>,
}

/// A clap error as one line: `error: <what>` without the usage block and the tip.
pub fn one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let first: Vec<&str> =
        text.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
    if first.is_empty() {
        "error: invalid usage".to_owned()
    } else {
        first.join(" ")
    }
}

/// The longest `--label`: the lock node's data must stay far below the server's packet limit
/// (`jute.maxbuffer`, 1 MiB by default), and status tables must stay readable.
pub const MAX_LABEL: usize = 4096;

fn parse_label(s: &str) -> Result<String, String> {
    if s.len() > MAX_LABEL {
        return Err(format!(
            "the label is {} bytes, more than the {MAX_LABEL} zklock allows (it is stored in the lock node, \
             whose data must stay far below the server's jute.maxbuffer, 1 MiB by default)",
            s.len()
        ));
    }
    Ok(s.to_owned())
}

/// A humantime duration: `10s`, `1m30s`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 10s, 1m30s or 250ms: {e}"))
}

/// A duration that must not be zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number (`15`).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let bad = || format!("'{s}' is not a signal (try TERM, SIGINT or 15)");
    let sig = if let Ok(n) = s.parse::<i32>() {
        Signal::try_from(n).map_err(|_| bad())?
    } else {
        let upper = s.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
        name.parse::<Signal>().map_err(|_| bad())?
    };
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_are_one_line() {
        let e = Cli::try_parse_from(["zklock", "run", "/l"]).unwrap_err();
        assert_eq!(one_line(&e), "error: the following required arguments were not provided: <COMMAND>...");
        let e = Cli::try_parse_from(["zklock", "run", "--wait", "soon", "/l", "--", "true"]).unwrap_err();
        assert!(!one_line(&e).contains('\n'));
        assert!(one_line(&e).contains("'soon' is not a duration"), "{}", one_line(&e));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("sigkill"), Ok(Signal::SIGKILL));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn run_parses_argv_after_double_dash_verbatim() {
        let cli = Cli::try_parse_from(["zklock", "run", "-n", "/l", "--", "sh", "-c", "echo a  b", "--wait"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert!(run.no_wait);
        assert_eq!(run.command, ["sh", "-c", "echo a  b", "--wait"].map(OsString::from));
        assert_eq!(run.conflict_exit_code, 75);
    }

    #[test]
    fn run_requires_a_command_and_rejects_wait_with_no_wait() {
        assert!(Cli::try_parse_from(["zklock", "run", "/l"]).is_err());
        assert!(Cli::try_parse_from(["zklock", "run", "-n", "-w", "1s", "/l", "--", "true"]).is_err());
    }
}

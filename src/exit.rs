//! The exit-code table: every status `zklock` itself can return, in one place.
//!
//! Mirrored in the README and in `zklock run --help`.

use std::process::ExitStatus;

/// The command ran to completion; its own status is passed through, this is only the name of 0.
pub const SUCCESS: u8 = 0;
/// Default status when `--no-wait` found the lock held or `--wait` ran out (override with `-E`).
pub const CONFLICT_DEFAULT: u8 = 75;
/// The lock was lost while the command ran and zklock stopped it.
pub const LOCK_LOST: u8 = 124;
/// zklock itself failed before (or instead of) running the command.
pub const FAILURE: u8 = 125;
/// The command held the lock for `--timeout` and zklock stopped it.
pub const TIMED_OUT: u8 = 123;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// Added to a signal number when the command (or zklock while waiting) died of that signal.
pub const SIGNAL_BASE: u8 = 128;

/// Every status `zklock run` exits with: one enum, from which `--help`, the man pages and
/// the README's table are made, so that they cannot drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Child,
    Signal,
    Conflict,
    TimedOut,
    LockLost,
    Failure,
    NotExecutable,
    NotFound,
}

impl Status {
    /// In the order of the documented table.
    pub const ALL: [Status; 8] = [
        Status::Child,
        Status::Signal,
        Status::Conflict,
        Status::TimedOut,
        Status::LockLost,
        Status::Failure,
        Status::NotExecutable,
        Status::NotFound,
    ];

    /// The fixed status, where there is one.
    pub const fn code(self) -> Option<u8> {
        match self {
            Status::Child | Status::Signal => None,
            Status::Conflict => Some(CONFLICT_DEFAULT),
            Status::TimedOut => Some(TIMED_OUT),
            Status::LockLost => Some(LOCK_LOST),
            Status::Failure => Some(FAILURE),
            Status::NotExecutable => Some(NOT_EXECUTABLE),
            Status::NotFound => Some(NOT_FOUND),
        }
    }

    /// The table's row: the status as written, and what it means.
    pub const fn row(self) -> (&'static str, &'static str) {
        match self {
            Status::Child => ("N", "the command's own exit status"),
            Status::Signal => {
                ("128+N", "the command died of signal N (or zklock got signal N while waiting for the lock)")
            }
            Status::Conflict => ("75", "lock not acquired: --no-wait found it held, or --wait ran out (change with -E)"),
            Status::TimedOut => {
                ("123", "the command held the lock for --timeout, and zklock stopped it (never 0 after a timeout)")
            }
            Status::LockLost => {
                ("124", "the lock was lost while the command ran, and zklock stopped it (never 0 after a loss)")
            }
            Status::Failure => (
                "125",
                "zklock failed: usage, bad lock path, no server, authentication or TLS refused, not authorised (ACL), \
                 budget that does not fit, a queue it must not join (--limit mismatch), unknown node in the lock directory",
            ),
            Status::NotExecutable => ("126", "the command is not executable"),
            Status::NotFound => ("127", "the command was not found"),
        }
    }
}

/// The rows of the `zklock run` exit-status table.
pub const RUN_ROWS: [(&str, &str); 8] = [
    Status::ALL[0].row(),
    Status::ALL[1].row(),
    Status::ALL[2].row(),
    Status::ALL[3].row(),
    Status::ALL[4].row(),
    Status::ALL[5].row(),
    Status::ALL[6].row(),
    Status::ALL[7].row(),
];

/// The table as Markdown, as the README carries it.
pub fn markdown_table() -> String {
    let mut out = String::from("| status | meaning |\n|---|---|\n");
    for (term, meaning) in RUN_ROWS {
        out.push_str(&format!("| {term} | {meaning} |\n"));
    }
    out
}

/// Writes one line to stderr, never panicking (unlike `eprintln!`): a closed or broken stderr
/// must not turn an exit status into a panic.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The status zklock exits with when the command ended by itself (not stopped by zklock's
/// safety stop): its exit code, or 128+N when it died of signal N.
pub fn from_child(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        // Exit codes are 0..=255 on Unix; `code()` already holds the low 8 bits.
        code as u8
    } else if let Some(sig) = status.signal() {
        from_signal(sig)
    } else {
        FAILURE
    }
}

/// 128+N for signal N, as shells report it.
pub fn from_signal(sig: i32) -> u8 {
    SIGNAL_BASE.saturating_add(u8::try_from(sig).unwrap_or(127))
}

/// How a failure to start the command maps to a status: 127 when it does not exist,
/// 126 when it exists but cannot be executed.
pub fn from_spawn_error(err: &std::io::Error) -> u8 {
    match err.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn child_exit_codes_pass_through() {
        assert_eq!(from_child(ExitStatus::from_raw(0)), 0);
        assert_eq!(from_child(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(from_child(ExitStatus::from_raw(255 << 8)), 255);
        // A command may itself exit 124; it is passed through unchanged.
        assert_eq!(from_child(ExitStatus::from_raw(124 << 8)), 124);
    }

    #[test]
    fn signalled_child_is_128_plus_n() {
        assert_eq!(from_child(ExitStatus::from_raw(libc_sig::SIGTERM)), 143);
        assert_eq!(from_child(ExitStatus::from_raw(libc_sig::SIGKILL)), 137);
        assert_eq!(from_child(ExitStatus::from_raw(libc_sig::SIGINT)), 130);
        assert_eq!(from_signal(1), 129);
    }

    #[test]
    fn spawn_errors() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        let pd = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let noexec = std::io::Error::from_raw_os_error(8); // ENOEXEC
        assert_eq!(from_spawn_error(&nf), 127);
        assert_eq!(from_spawn_error(&pd), 126);
        assert_eq!(from_spawn_error(&noexec), 126);
    }

    #[test]
    fn the_documented_table_is_the_codes() {
        for status in Status::ALL {
            let (term, _) = status.row();
            match status.code() {
                Some(code) => assert_eq!(term, code.to_string(), "{status:?}"),
                None => assert!(term.contains('N'), "{status:?}"),
            }
        }
    }

    #[test]
    fn table_is_distinct() {
        let codes = [SUCCESS, CONFLICT_DEFAULT, TIMED_OUT, LOCK_LOST, FAILURE, NOT_EXECUTABLE, NOT_FOUND];
        for (i, a) in codes.iter().enumerate() {
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    mod libc_sig {
        pub const SIGINT: i32 = 2;
        pub const SIGKILL: i32 = 9;
        pub const SIGTERM: i32 = 15;
    }
}

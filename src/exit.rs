//! Every status zklock exits with, as one type: `run` and `status` return an [`Exit`], `main`
//! turns it into the process status, and the tables of `--help`, the man pages and the README
//! are made from its rows, so that no number is typed twice.

use std::process::ExitStatus;

/// Default status when `--no-wait` found the lock held or `--wait` ran out (override with `-E`).
pub const CONFLICT_DEFAULT: u8 = 75;

/// How zklock ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `run`: the command's own exit status, passed through.
    Child(u8),
    /// `run`: the command died of signal N (or zklock got signal N while waiting): 128+N.
    Signal(i32),
    /// `run`: the lock was not acquired (`--no-wait`, `--wait`); the status `-E` chose.
    Conflict(u8),
    /// `run`: the command held the lock for `--timeout`, and zklock stopped it.
    TimedOut,
    /// `run`: the lock was lost while the command ran, and zklock stopped it.
    LockLost,
    /// zklock itself failed, before or instead of running the command.
    Failure,
    /// `run`: the command was found but cannot be executed.
    NotExecutable,
    /// `run`: the command was not found.
    NotFound,
    /// `status`: every lock named is held (or, with an alert option, none matched).
    Held,
    /// `status`: a lock is free.
    Free,
    /// `status`: an alert option matched a lock.
    Alert,
}

impl Exit {
    /// `run`'s table, in its documented order (payloads are examples).
    pub const RUN: [Exit; 8] = [
        Exit::Child(0),
        Exit::Signal(1),
        Exit::Conflict(CONFLICT_DEFAULT),
        Exit::TimedOut,
        Exit::LockLost,
        Exit::Failure,
        Exit::NotExecutable,
        Exit::NotFound,
    ];

    /// `status`'s table.
    pub const STATUS: [Exit; 4] = [Exit::Held, Exit::Free, Exit::Alert, Exit::Failure];

    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Child(code) => code,
            Exit::Signal(sig) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(127)),
            Exit::Conflict(code) => code,
            Exit::TimedOut => 123,
            Exit::LockLost => 124,
            Exit::Failure => 125,
            Exit::NotExecutable => 126,
            Exit::NotFound => 127,
            Exit::Held => 0,
            Exit::Free => 1,
            Exit::Alert => 2,
        }
    }

    /// The documented row: the status as written, and what it means.
    pub fn row(self) -> (String, &'static str) {
        let code = self.code().to_string();
        match self {
            Exit::Child(_) => ("N".into(), "the command's own exit status"),
            Exit::Signal(_) => {
                ("128+N".into(), "the command died of signal N (or zklock got signal N while waiting for the lock)")
            }
            Exit::Conflict(_) => (code, "lock not acquired: --no-wait found it held, or --wait ran out (change with -E)"),
            Exit::TimedOut => {
                (code, "the command held the lock for --timeout, and zklock stopped it (never 0 after a timeout)")
            }
            Exit::LockLost => (code, "the lock was lost while the command ran, and zklock stopped it (never 0 after a loss)"),
            Exit::Failure => (
                code,
                "zklock failed: usage, bad lock path, no server, authentication or TLS refused, not authorised (ACL), \
                 budget that does not fit, a queue it must not join (--limit mismatch), unknown node in the lock directory, \
                 a guard process that could not be armed (the command is then never started)",
            ),
            Exit::NotExecutable => (code, "the command is not executable"),
            Exit::NotFound => (code, "the command was not found"),
            Exit::Held => (
                code,
                "every lock named is held (with --recursive: every lock found, and at least one); with \
                 --held-longer-than or --waiting-longer-than: no lock matched",
            ),
            Exit::Free => (code, "a lock is free; a lock path that does not exist is free (not with the alert options)"),
            Exit::Alert => {
                (code, "with --held-longer-than or --waiting-longer-than: a lock matched (an alert, as Nagios' CRITICAL)")
            }
        }
    }

    /// The status zklock exits with when the command ended by itself (not stopped by zklock's
    /// safety stop): its exit code, or 128+N when it died of signal N.
    pub fn from_child(status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            // Exit codes are 0..=255 on Unix; `code()` already holds the low 8 bits.
            Exit::Child(code as u8)
        } else if let Some(sig) = status.signal() {
            Exit::Signal(sig)
        } else {
            Exit::Failure
        }
    }

    /// How a failure to start the command maps to a status: 127 when it does not exist,
    /// 126 when it exists but cannot be executed.
    pub fn from_spawn_error(err: &std::io::Error) -> Exit {
        match err.kind() {
            std::io::ErrorKind::NotFound => Exit::NotFound,
            _ => Exit::NotExecutable,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// A table's rows, as `--help`, the man pages and the README print them.
pub fn rows(table: &[Exit]) -> Vec<(String, &'static str)> {
    table.iter().map(|e| e.row()).collect()
}

/// A table as Markdown, as the README carries it.
pub fn markdown_table(table: &[Exit]) -> String {
    let mut out = String::from("| status | meaning |\n|---|---|\n");
    for (term, meaning) in rows(table) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn child_exit_codes_pass_through() {
        assert_eq!(Exit::from_child(ExitStatus::from_raw(0)).code(), 0);
        assert_eq!(Exit::from_child(ExitStatus::from_raw(3 << 8)).code(), 3);
        assert_eq!(Exit::from_child(ExitStatus::from_raw(255 << 8)).code(), 255);
        // A command may itself exit 124; it is passed through unchanged.
        assert_eq!(Exit::from_child(ExitStatus::from_raw(124 << 8)), Exit::Child(124));
    }

    #[test]
    fn signalled_child_is_128_plus_n() {
        assert_eq!(Exit::from_child(ExitStatus::from_raw(libc_sig::SIGTERM)).code(), 143);
        assert_eq!(Exit::from_child(ExitStatus::from_raw(libc_sig::SIGKILL)).code(), 137);
        assert_eq!(Exit::from_child(ExitStatus::from_raw(libc_sig::SIGINT)).code(), 130);
        assert_eq!(Exit::Signal(1).code(), 129);
    }

    #[test]
    fn spawn_errors() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        let pd = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let noexec = std::io::Error::from_raw_os_error(8); // ENOEXEC
        assert_eq!(Exit::from_spawn_error(&nf).code(), 127);
        assert_eq!(Exit::from_spawn_error(&pd).code(), 126);
        assert_eq!(Exit::from_spawn_error(&noexec).code(), 126);
    }

    /// Every variant: its row's term is its code (or names N for the passed-through ones),
    /// it stands in a documented table, and the fixed codes of each table are distinct.
    #[test]
    fn every_variant_is_documented_with_its_code() {
        let every = [
            Exit::Child(7),
            Exit::Signal(9),
            Exit::Conflict(3),
            Exit::TimedOut,
            Exit::LockLost,
            Exit::Failure,
            Exit::NotExecutable,
            Exit::NotFound,
            Exit::Held,
            Exit::Free,
            Exit::Alert,
        ];
        for exit in every {
            // Exhaustive: a new variant must be added to `every` and to a table.
            match exit {
                Exit::Child(_) | Exit::Signal(_) => assert!(exit.row().0.contains('N'), "{exit:?}"),
                Exit::Conflict(_)
                | Exit::TimedOut
                | Exit::LockLost
                | Exit::Failure
                | Exit::NotExecutable
                | Exit::NotFound
                | Exit::Held
                | Exit::Free
                | Exit::Alert => {}
            }
            let documented = Exit::RUN
                .iter()
                .chain(&Exit::STATUS)
                .any(|d| std::mem::discriminant(d) == std::mem::discriminant(&exit));
            assert!(documented, "{exit:?} is in no table");
        }
        for table in [&Exit::RUN[..], &Exit::STATUS[..]] {
            let fixed: Vec<String> = table.iter().map(|e| e.row().0).filter(|t| !t.contains('N')).collect();
            for (i, term) in fixed.iter().enumerate() {
                assert!(!fixed[i + 1..].contains(term), "{term} twice");
            }
            for e in table {
                let (term, _) = e.row();
                if !term.contains('N') {
                    assert_eq!(term, e.code().to_string(), "{e:?}");
                }
            }
        }
        assert_eq!(Exit::Conflict(CONFLICT_DEFAULT).code(), 75);
        assert_eq!(Exit::LockLost.code(), 124);
    }

    mod libc_sig {
        pub const SIGINT: i32 = 2;
        pub const SIGKILL: i32 = 9;
        pub const SIGTERM: i32 = 15;
    }
}

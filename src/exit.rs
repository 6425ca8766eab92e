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
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// Added to a signal number when the command (or zklock while waiting) died of that signal.
pub const SIGNAL_BASE: u8 = 128;

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
    fn table_is_distinct() {
        let codes = [SUCCESS, CONFLICT_DEFAULT, LOCK_LOST, FAILURE, NOT_EXECUTABLE, NOT_FOUND];
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

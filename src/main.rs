use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::Parser;

fn main() -> ExitCode {
    let t0 = Instant::now();
    let started_at = SystemTime::now();
    let cli = match zklock::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Usage errors are zklock failures, reported on one line like every other.
            zklock::exit::say(format_args!("zklock: {}; see 'zklock --help'", zklock::cli::one_line(&e)));
            return zklock::exit::Exit::Failure.into();
        }
    };
    zklock::main_with(cli, t0, started_at).into()
}

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use clap::Parser;

fn main() -> ExitCode {
    let t0 = Instant::now();
    let started_at = SystemTime::now();
    let cli = match zklock::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; usage errors are zklock failures.
            return ExitCode::from(if e.use_stderr() {
                zklock::exit::FAILURE
            } else {
                0
            });
        }
    };
    ExitCode::from(zklock::main_with(cli, t0, started_at))
}

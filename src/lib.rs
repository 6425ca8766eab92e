//! zklock: run a command under a ZooKeeper lock, and stop it before anyone else can be granted
//! the lock. See `../README.md` and `shared/design/safety.md` for the model.

mod child;
pub mod cli;
mod clock;
mod config;
mod deadline;
mod delay;
pub mod exit;
mod lock;
mod logging;
mod nodedata;
mod queue;
mod run;
mod session;
mod signals;
mod status;
mod supervise;
mod zk;

use std::time::{Instant, SystemTime};

/// Runs a parsed command line and returns the process exit status. Never exits the process
/// itself, so that every path releases what it took.
pub fn main_with(cli: cli::Cli, t0: Instant, started_at: SystemTime) -> exit::Exit {
    let log = logging::init(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            crate::exit::say(format_args!("zklock: error: cannot start the async runtime: {e}"));
            return exit::Exit::Failure;
        }
    };
    let quiet = cli.quiet;
    // `status -q` prints nothing at all, errors included: its exit status (125) speaks.
    let silent = quiet && matches!(cli.command, cli::Command::Status(_));
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Run(args) => run::run(args, started_at, t0).await,
            cli::Command::Status(args) => status::status(args, quiet).await,
        }
    });
    // Flush what was logged before the final line, so that stderr reads in order.
    drop(runtime);
    drop(log);
    match result {
        Ok(code) => code,
        Err(e) => {
            if !silent {
                crate::exit::say(format_args!("zklock: error: {e:#}"));
            }
            exit::Exit::Failure
        }
    }
}

//! The one loop that runs while the command holds the lock: child exit, signals, session
//! events and the watchdog's deadlines, each arm short. The deadlines are also enforced by
//! the [`Enforcer`]'s own thread, so a stalled loop cannot delay them.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, warn};

use crate::child::Child;
use crate::clock::Clock;
use crate::deadline::Enforcer;
use crate::session::{Event, Loss, Monitor};
use crate::signals::Signals;

/// Longest sleep between checks of the deadline clock (tokio sleeps on CLOCK_MONOTONIC, which
/// stops while the host is suspended).
const MAX_NAP: Duration = Duration::from_millis(250);

/// How the command's run ended.
pub struct Outcome {
    /// The leader's exit status.
    pub status: io::Result<ExitStatus>,
    /// Set when the lock was lost and zklock stopped the command.
    pub loss: Option<Loss>,
    /// How long processes the command left in its group may get after a stop signal.
    pub straggler_grace: Duration,
}

/// Job control: SIGTSTP and SIGCONT, caught from before the command starts, so that a Ctrl-Z
/// arriving as it starts is not left to the default action (zklock stopped, the command not).
pub struct JobControl {
    tstp: Option<tokio::signal::unix::Signal>,
    cont: Option<tokio::signal::unix::Signal>,
}

impl JobControl {
    /// Must run inside the runtime.
    pub fn install() -> JobControl {
        JobControl {
            tstp: signal(SignalKind::from_raw(Signal::SIGTSTP as i32)).ok(),
            cont: signal(SignalKind::from_raw(Signal::SIGCONT as i32)).ok(),
        }
    }
}

pub struct Supervisor<'a, C: Clock> {
    pub job_control: JobControl,
    pub child: &'a mut Child,
    pub monitor: &'a mut Monitor,
    pub signals: &'a mut Signals,
    pub enforcer: &'a Enforcer,
    pub clock: C,
}

impl<C: Clock> Supervisor<'_, C> {
    pub async fn run(self) -> Outcome {
        // Job control: Ctrl-Z stops the command's group and then zklock itself; when zklock is
        // continued, deadlines that passed meanwhile act first, then the group is continued.
        let JobControl { mut tstp, mut cont } = self.job_control;
        loop {
            let now = self.clock.now();
            let nap = self.enforcer.act(now).map_or(MAX_NAP, |at| at.saturating_sub(now).min(MAX_NAP));
            tokio::select! {
                status = self.child.exited() => {
                    let straggler_grace = self.enforcer.straggler_grace(self.clock.now());
                    return Outcome { status, loss: self.enforcer.loss(), straggler_grace };
                }
                sig = self.signals.recv() => {
                    self.enforcer.act(self.clock.now());
                    debug!("forwarding {sig} to the command's group");
                    self.child.signal(sig);
                    if matches!(sig, Signal::SIGHUP | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGTERM) {
                        // A member stopped by SIGTTIN must run to handle it.
                        self.child.signal(Signal::SIGCONT);
                    }
                }
                Some(()) = recv(&mut tstp) => {
                    debug!("SIGTSTP: stopping the command's group, then zklock");
                    self.child.signal(Signal::SIGSTOP);
                    if let Err(e) = nix::sys::signal::raise(Signal::SIGSTOP) {
                        warn!("cannot stop zklock: {e}");
                    }
                }
                Some(()) = recv(&mut cont) => {
                    self.enforcer.act(self.clock.now());
                    self.child.signal(Signal::SIGCONT);
                }
                Some(event) = self.monitor.events.recv() => match event {
                    Event::Confirmed(sent) => self.enforcer.confirmed(sent),
                    Event::Lost(why) => self.enforcer.lost(self.clock.now(), why),
                },
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

async fn recv(stream: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match stream {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

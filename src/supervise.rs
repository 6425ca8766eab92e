//! The one loop that runs while the command holds the lock: child exit, signals, session
//! events and the watchdog's deadlines, each arm short.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::{debug, error, warn};

use crate::child::Child;
use crate::clock::Clock;
use crate::session::{Action, Event, Loss, Monitor, Watchdog};
use crate::signals::Signals;

/// Longest sleep between checks of the deadline clock. tokio sleeps on CLOCK_MONOTONIC, which
/// stops while the host is suspended; waking at least this often bounds how late the watchdog
/// notices a deadline that passed during a suspend.
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

pub struct Supervisor<'a, C: Clock> {
    pub child: &'a mut Child,
    pub monitor: &'a mut Monitor,
    pub signals: &'a mut Signals,
    pub watchdog: Watchdog,
    pub stop_signal: Signal,
    pub clock: C,
}

impl<C: Clock> Supervisor<'_, C> {
    pub async fn run(mut self) -> Outcome {
        loop {
            let now = self.clock.now();
            while let Some(action) = self.watchdog.poll(now) {
                match action {
                    Action::Stop(why) => {
                        error!("lock lost: {why}; sending {} to the command", self.stop_signal);
                        self.child.signal(self.stop_signal);
                    }
                    Action::Kill => {
                        warn!("the command is still running: sending SIGKILL to its group");
                        self.child.signal(Signal::SIGKILL);
                    }
                }
            }
            let nap = self.watchdog.next_wake().map_or(MAX_NAP, |w| w.saturating_sub(now).min(MAX_NAP));
            tokio::select! {
                status = self.child.exited() => {
                    let straggler_grace = self.watchdog.straggler_grace(self.clock.now());
                    return Outcome { status, loss: self.watchdog.loss(), straggler_grace };
                }
                sig = self.signals.recv() => {
                    debug!("forwarding {sig} to the command's group");
                    self.child.signal(sig);
                }
                Some(event) = self.monitor.events.recv() => match event {
                    Event::Confirmed(sent) => self.watchdog.confirmed(sent),
                    Event::Lost(why) => self.watchdog.lost(self.clock.now(), why),
                },
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

//! The one loop that runs while the command holds the lock: child exit, signals, session
//! events and the watchdog's deadlines, each arm short. The deadlines are also enforced by
//! the [`Enforcer`]'s own thread, so a stalled loop cannot delay them.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::child::{Signaller, Supervised};
use crate::clock::Clock;
use crate::deadline::Enforcer;
use crate::session::{Event, Loss};
use crate::signals::{JobControl, Signals};

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

pub struct Supervisor<'a, C: Clock, S: Supervised> {
    pub job_control: JobControl,
    pub child: &'a mut S,
    /// What the session tasks observed.
    pub events: &'a mut mpsc::UnboundedReceiver<Event>,
    pub signals: &'a mut Signals,
    pub enforcer: &'a Enforcer<S::Group>,
    pub clock: C,
}

impl<C: Clock, S: Supervised> Supervisor<'_, C, S> {
    pub async fn run(self) -> Outcome {
        // Job control: Ctrl-Z stops the command's group and then zklock itself; when zklock is
        // continued, deadlines that passed meanwhile act first, then the group is continued.
        let JobControl { mut tstp, mut cont } = self.job_control;
        let group = self.child.group();
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
                    if crate::signals::is_terminating(sig) {
                        group.stop(sig);
                    } else {
                        group.signal(sig);
                    }
                }
                Some(()) = recv(&mut tstp) => {
                    debug!("SIGTSTP: stopping the command's group, then zklock");
                    group.signal(Signal::SIGSTOP);
                    if let Err(e) = nix::sys::signal::raise(Signal::SIGSTOP) {
                        warn!("cannot stop zklock: {e}");
                    }
                }
                Some(()) = recv(&mut cont) => {
                    self.enforcer.act(self.clock.now());
                    group.signal(Signal::SIGCONT);
                }
                Some(event) = self.events.recv() => match event {
                    Event::Confirmed(proof) => {
                        if let Some(kill_at) = self.enforcer.confirmed(proof) {
                            self.child.renew(kill_at);
                        }
                    }
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

#[cfg(test)]
mod tests {
    //! The supervisor against a fake command on tokio's paused clock (watchexec's testchild is
    //! the model): which signals reach the group, and when.
    use super::*;
    use crate::clock::TokioClock;
    use crate::config::{Budget, BudgetRequest};
    use crate::session::Watchdog;
    use crate::zk::Confirmed;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// T = 10 s, tick 2 s: threshold 4.55 s, grace 1.95 s, SIGKILL at 6.5 s after t_ok.
    fn budget() -> Budget {
        Budget::compute(BudgetRequest { session_timeout: ms(10_000), tick: ms(2_000), threshold: None, grace: None })
            .unwrap()
    }

    /// What the fake group was sent, when; and how it reacts.
    #[derive(Clone)]
    struct FakeGroup {
        clock: TokioClock,
        log: Arc<Mutex<Vec<(Duration, Signal)>>>,
        /// The guard's renewals: (when, the new SIGKILL instant).
        renewals: Arc<Mutex<Vec<(Duration, Duration)>>>,
        /// Ignores SIGTERM (dies only of SIGKILL).
        stubborn: bool,
        exit: Arc<Mutex<Option<oneshot::Sender<io::Result<ExitStatus>>>>>,
    }

    impl FakeGroup {
        fn die(&self, status: ExitStatus) {
            if let Some(tx) = self.exit.lock().unwrap().take() {
                let _ = tx.send(Ok(status));
            }
        }

        fn log(&self) -> Vec<(Duration, Signal)> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Signaller for FakeGroup {
        fn signal(&self, sig: Signal) -> bool {
            self.log.lock().unwrap().push((self.clock.now(), sig));
            if sig == Signal::SIGKILL || (sig == Signal::SIGTERM && !self.stubborn) {
                self.die(ExitStatus::from_raw(sig as i32));
            }
            true
        }
    }

    struct FakeChild {
        group: FakeGroup,
        exit: oneshot::Receiver<io::Result<ExitStatus>>,
    }

    impl FakeChild {
        fn new(clock: TokioClock, stubborn: bool) -> FakeChild {
            let (tx, exit) = oneshot::channel();
            let log = Arc::default();
            let group =
                FakeGroup { clock, log, renewals: Arc::default(), stubborn, exit: Arc::new(Mutex::new(Some(tx))) };
            FakeChild { group, exit }
        }
    }

    impl Supervised for FakeChild {
        type Group = FakeGroup;

        fn group(&self) -> FakeGroup {
            self.group.clone()
        }

        async fn exited(&mut self) -> io::Result<ExitStatus> {
            (&mut self.exit).await.unwrap_or_else(|_| Err(io::Error::other("gone")))
        }

        fn group_alive(&self) -> bool {
            self.group.exit.lock().unwrap().is_some()
        }

        fn renew(&self, kill_at: Duration) {
            self.group.renewals.lock().unwrap().push((self.group.clock.now(), kill_at));
        }
    }

    /// Runs the supervisor over `child` with `t_ok` now, feeding it `events` at their offsets.
    async fn supervise(child: &mut FakeChild, events: Vec<(Duration, Event)>) -> Outcome {
        let clock = child.group.clock;
        let watchdog = Watchdog::new(&budget(), Confirmed::for_test(clock.now()));
        let enforcer = Enforcer::inline(watchdog, child.group(), Signal::SIGTERM);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (at, event) in events {
                tokio::time::sleep_until(tokio::time::Instant::now() + at.saturating_sub(clock.now())).await;
                let _ = tx.send(event);
            }
            std::future::pending::<()>().await;
        });
        let mut signals = Signals::none();
        let supervisor = Supervisor {
            job_control: JobControl::none(),
            child,
            events: &mut rx,
            signals: &mut signals,
            enforcer: &enforcer,
            clock,
        };
        supervisor.run().await
    }

    #[tokio::test(start_paused = true)]
    async fn confirmed_heartbeats_keep_the_command_running_until_it_exits() {
        let clock = TokioClock::new();
        let mut child = FakeChild::new(clock, false);
        let group = child.group();
        // Confirmed every second for 20 s, then the command exits by itself.
        let events = (1..=20).map(|s| (ms(s * 1_000), Event::Confirmed(Confirmed::for_test(ms(s * 1_000))))).collect();
        let g = group.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(20_500)).await;
            g.die(ExitStatus::from_raw(0));
        });
        let outcome = supervise(&mut child, events).await;
        assert_eq!(outcome.loss, None);
        assert!(outcome.status.unwrap().success());
        assert_eq!(group.log(), vec![], "no signal may reach a command whose session is confirmed");
        // Each confirmation renewed the guard with the SIGKILL instant it gives, at once.
        let kill_after = budget().kill_after();
        let expected: Vec<_> = (1..=20).map(|s| (ms(s * 1_000), ms(s * 1_000) + kill_after)).collect();
        assert_eq!(*group.renewals.lock().unwrap(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_sends_the_stop_signal_at_the_threshold_and_sigkill_at_its_instant() {
        let clock = TokioClock::new();
        let b = budget();
        let mut child = FakeChild::new(clock, true);
        let group = child.group();
        // Two heartbeats confirmed, then silence: measured from the last one (2 s).
        let events = vec![
            (ms(1_000), Event::Confirmed(Confirmed::for_test(ms(1_000)))),
            (ms(2_000), Event::Confirmed(Confirmed::for_test(ms(2_000)))),
        ];
        let outcome = supervise(&mut child, events).await;
        assert_eq!(outcome.loss, Some(Loss::Deadline));
        assert_eq!(
            group.log(),
            vec![
                (ms(2_000) + b.threshold, Signal::SIGTERM),
                (ms(2_000) + b.threshold, Signal::SIGCONT),
                (ms(2_000) + b.kill_after(), Signal::SIGKILL),
            ]
        );
        assert_eq!(outcome.status.unwrap().signal(), Some(Signal::SIGKILL as i32));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_node_stops_the_command_at_once_and_a_heeding_one_needs_no_sigkill() {
        let clock = TokioClock::new();
        let mut child = FakeChild::new(clock, false);
        let group = child.group();
        let events = vec![(ms(1_500), Event::Lost(Loss::NodeDeleted))];
        let outcome = supervise(&mut child, events).await;
        assert_eq!(outcome.loss, Some(Loss::NodeDeleted));
        assert_eq!(group.log(), vec![(ms(1_500), Signal::SIGTERM), (ms(1_500), Signal::SIGCONT)]);
        // Stragglers after a loss get the grace, bounded by the deadline's SIGKILL instant.
        assert_eq!(outcome.straggler_grace, budget().grace);
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmation_after_the_stop_signal_changes_nothing() {
        let clock = TokioClock::new();
        let b = budget();
        let mut child = FakeChild::new(clock, true);
        let group = child.group();
        let late = b.threshold + ms(100);
        let events = vec![(late, Event::Confirmed(Confirmed::for_test(late)))];
        let outcome = supervise(&mut child, events).await;
        assert_eq!(outcome.loss, Some(Loss::Deadline));
        assert_eq!(group.log().last(), Some(&(b.kill_after(), Signal::SIGKILL)));
        assert_eq!(*group.renewals.lock().unwrap(), vec![], "a late confirmation renews nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_stops_stragglers_and_escalates_after_the_grace() {
        let clock = TokioClock::new();
        let child = FakeChild::new(clock, true);
        assert!(child.drain(Signal::SIGTERM, ms(300)).await);
        assert_eq!(
            child.group.log(),
            vec![(ms(0), Signal::SIGTERM), (ms(0), Signal::SIGCONT), (ms(300), Signal::SIGKILL)]
        );
        assert!(!child.drain(Signal::SIGTERM, ms(300)).await, "nothing left to drain");
    }
}

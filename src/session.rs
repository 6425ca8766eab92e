//! Watching the session while the command runs: the watchdog (a pure state machine over
//! instants on the deadline clock) and the background tasks that feed it (heartbeats through
//! the leader, the watch on our own node, the owner check after a reconnect).

use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use zookeeper_client::{CheckWriteError, Client, EventType, SessionState};

use crate::clock::Clock;
use crate::config::Budget;
use crate::zk::{self, Confirmed};

/// Why the lock is (or must be treated as) lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// No heartbeat confirmed by the leader within the disconnect threshold.
    Deadline,
    /// The server expired our session.
    Expired,
    /// Our lock node was deleted by someone else.
    NodeDeleted,
    /// After a reconnect our node is owned by another session.
    OwnerChanged,
    /// The client closed or failed authentication: we can no longer prove anything.
    SessionEnded,
    /// Not a loss of the lock: the command held it for `--timeout`, and is stopped the same way.
    MaxHold,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::Deadline => "no heartbeat confirmed by the ZooKeeper leader within the disconnect threshold",
            Loss::Expired => "the ZooKeeper session expired",
            Loss::NodeDeleted => "our lock node was deleted",
            Loss::OwnerChanged => "our lock node is owned by another session",
            Loss::SessionEnded => "the ZooKeeper session ended",
            Loss::MaxHold => "the command held the lock for --timeout",
        })
    }
}

/// What the supervisor must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the stop signal to the command's group.
    Stop(Loss),
    /// Send SIGKILL to the command's group.
    Kill,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Holding,
    Stopping { kill_at: Duration },
    Killed,
}

/// The safety policy. `t_ok` only moves forward, and only while holding: once the stop signal
/// is out there is no going back. All instants are on the deadline clock.
#[derive(Clone, Debug)]
pub struct Watchdog {
    threshold: Duration,
    kill_after: Duration,
    grace: Duration,
    t_ok: Confirmed,
    stage: Stage,
    pending_stop: Option<Loss>,
    loss: Option<Loss>,
    /// `--timeout`: when the command must be stopped however well the session does.
    max_hold_at: Option<Duration>,
}

impl Watchdog {
    pub fn new(budget: &Budget, t_ok: Confirmed) -> Self {
        Watchdog {
            threshold: budget.threshold,
            kill_after: budget.kill_after(),
            grace: budget.grace,
            t_ok,
            stage: Stage::Holding,
            pending_stop: None,
            loss: None,
            max_hold_at: None,
        }
    }

    /// Stops the command at `at` (on the deadline clock) as after a loss: `--timeout`.
    pub fn with_max_hold(mut self, at: Option<Duration>) -> Self {
        self.max_hold_at = at;
        self
    }

    #[cfg(test)]
    pub fn t_ok(&self) -> Duration {
        self.t_ok.at()
    }

    /// Why the lock was lost, once it was.
    pub fn loss(&self) -> Option<Loss> {
        self.loss
    }

    /// How long, from `now`, processes left behind by the command may get after a stop signal:
    /// the grace, but never past the deadline's SIGKILL time.
    pub fn straggler_grace(&self, now: Duration) -> Duration {
        self.grace.min((self.t_ok.at() + self.kill_after).saturating_sub(now))
    }

    /// The SIGKILL instant of the deadline, from the current `t_ok` (`D - K`).
    pub fn kill_instant(&self) -> Duration {
        self.t_ok.at() + self.kill_after
    }

    /// A heartbeat was confirmed by the leader; returns whether `t_ok` moved forward.
    pub fn confirmed(&mut self, proof: Confirmed) -> bool {
        self.stage == Stage::Holding && self.t_ok.advance(proof)
    }

    /// The lock is known to be lost: stop now, SIGKILL after the grace, or at the deadline's
    /// SIGKILL time if that comes first.
    pub fn lost(&mut self, now: Duration, why: Loss) {
        if self.stage == Stage::Holding {
            let kill_at = (now + self.grace).min(self.t_ok.at() + self.kill_after);
            self.stage = Stage::Stopping { kill_at };
            self.pending_stop = Some(why);
            self.loss = Some(why);
        }
    }

    /// The next action due at `now`, if any. Call until it returns `None`: a zklock that wakes
    /// up late (frozen, suspended) gets the stop signal and SIGKILL at once.
    pub fn poll(&mut self, now: Duration) -> Option<Action> {
        if let Some(why) = self.pending_stop.take() {
            return Some(Action::Stop(why));
        }
        match self.stage {
            Stage::Holding if self.max_hold_at.is_some_and(|at| now >= at) && now < self.t_ok.at() + self.threshold => {
                self.lost(now, Loss::MaxHold);
                self.poll(now)
            }
            Stage::Holding if now >= self.t_ok.at() + self.threshold => {
                self.lost(now, Loss::Deadline);
                // Measured from t_ok, not from now: a late wake-up does not buy more time.
                self.stage = Stage::Stopping { kill_at: self.t_ok.at() + self.kill_after };
                self.poll(now)
            }
            Stage::Stopping { kill_at } if now >= kill_at => {
                self.stage = Stage::Killed;
                Some(Action::Kill)
            }
            _ => None,
        }
    }

    /// When `poll` will next have something to do.
    pub fn next_wake(&self) -> Option<Duration> {
        match self.stage {
            Stage::Holding => Some(
                self.max_hold_at.map_or(self.t_ok.at() + self.threshold, |at| at.min(self.t_ok.at() + self.threshold)),
            ),
            Stage::Stopping { kill_at } => Some(kill_at),
            Stage::Killed => None,
        }
    }
}

/// Something the session tasks observed.
#[derive(Debug)]
pub enum Event {
    /// A heartbeat was confirmed through the leader.
    Confirmed(Confirmed),
    /// The lock is lost.
    Lost(Loss),
}

/// The background tasks that watch the session for the supervisor.
pub struct Monitor {
    pub events: mpsc::UnboundedReceiver<Event>,
    tasks: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Starts the heartbeat, the own-node watch and the state watch for `node_path`.
    pub fn start<C: Clock>(client: &Client, node_path: &str, heartbeat: Duration, clock: C) -> Monitor {
        let (tx, events) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(heartbeats(client.clone(), node_path.to_owned(), heartbeat, clock, tx.clone())),
            tokio::spawn(watch_node(client.clone(), node_path.to_owned(), tx.clone())),
            tokio::spawn(watch_state(client.clone(), node_path.to_owned(), tx)),
        ];
        Monitor { events, tasks }
    }

    /// Stops the tasks and waits for them, so that they hold no client handle any more.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// At most this many heartbeats in flight; more would only queue behind a dead connection.
const MAX_IN_FLIGHT: usize = 8;

/// Every `period`, a check-only multi on our own node: the leader validates the session and the
/// node's existence. Heartbeats are pipelined; each reports its own proof. The ones in
/// flight live inside this task, so stopping it drops them (and their hold on the session).
async fn heartbeats<C: Clock>(
    client: Client,
    path: String,
    period: Duration,
    clock: C,
    tx: mpsc::UnboundedSender<Event>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    // The first one after a period: t_ok was confirmed just before the command started.
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if in_flight.len() >= MAX_IN_FLIGHT {
                    debug!("heartbeat skipped: {MAX_IN_FLIGHT} still in flight");
                    continue;
                }
                in_flight.push(zk::check(&client, &path, &clock));
            }
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                let event = match result {
                    Ok(proof) => Event::Confirmed(proof),
                    Err(CheckWriteError::CheckFailed { source: zookeeper_client::Error::NoNode }) => {
                        Event::Lost(Loss::NodeDeleted)
                    }
                    Err(CheckWriteError::RequestFailed { source: zookeeper_client::Error::SessionExpired }) => {
                        Event::Lost(Loss::Expired)
                    }
                    Err(e) => {
                        debug!("heartbeat not confirmed: {e}");
                        continue;
                    }
                };
                let _ = tx.send(event);
            }
        }
    }
}

/// A data watch on our own node: its deletion is a lost lock. Re-armed after other events.
async fn watch_node(client: Client, path: String, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let watcher = match crate::zk::retry(&client, || client.get_and_watch_data(&path)).await {
            Ok((_, _, watcher)) => watcher,
            Err(zookeeper_client::Error::NoNode) => {
                let _ = tx.send(Event::Lost(Loss::NodeDeleted));
                return;
            }
            Err(zookeeper_client::Error::SessionExpired) => {
                let _ = tx.send(Event::Lost(Loss::Expired));
                return;
            }
            Err(e) => {
                debug!("own-node watch failed: {e}; the state watch covers the session");
                return;
            }
        };
        let event = watcher.changed().await;
        match event.event_type {
            EventType::NodeDeleted => {
                let _ = tx.send(Event::Lost(Loss::NodeDeleted));
                return;
            }
            EventType::Session if event.session_state.is_terminated() => return,
            other => debug!("own node: {other}"),
        }
    }
}

/// Session states: a terminal state is a lost lock; after a reconnect, our node must still be
/// there and owned by our session.
async fn watch_state(client: Client, path: String, tx: mpsc::UnboundedSender<Event>) {
    let mut watcher = client.state_watcher();
    let session = client.session_id().0;
    let mut was_disconnected = false;
    loop {
        let state = watcher.changed().await;
        match state {
            SessionState::Expired => {
                let _ = tx.send(Event::Lost(Loss::Expired));
                return;
            }
            SessionState::Closed | SessionState::AuthFailed => {
                let _ = tx.send(Event::Lost(Loss::SessionEnded));
                return;
            }
            SessionState::Disconnected => {
                warn!("connection to ZooKeeper lost; the command keeps running until the disconnect threshold");
                was_disconnected = true;
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly if was_disconnected => {
                was_disconnected = false;
                warn!("reconnected to ZooKeeper; verifying our lock node");
                match client.get_data(&path).await {
                    Ok((_, stat)) if stat.ephemeral_owner == session => {
                        debug!("our lock node is still ours")
                    }
                    Ok(_) => {
                        let _ = tx.send(Event::Lost(Loss::OwnerChanged));
                        return;
                    }
                    Err(zookeeper_client::Error::NoNode) => {
                        let _ = tx.send(Event::Lost(Loss::NodeDeleted));
                        return;
                    }
                    // Another loss or expiry will come through this loop or the heartbeats.
                    Err(e) => debug!("verification after reconnect failed: {e}"),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BudgetRequest;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(n: u64) -> Confirmed {
        Confirmed::for_test(ms(n))
    }

    fn budget() -> Budget {
        // T = 10 s, tick 2 s: threshold 4.55 s, grace 1.95 s, SIGKILL at 6.5 s.
        Budget::compute(BudgetRequest { session_timeout: ms(10_000), tick: ms(2_000), threshold: None, grace: None })
            .unwrap()
    }

    #[test]
    fn heartbeats_push_the_deadline() {
        let mut w = Watchdog::new(&budget(), ok(1_000));
        assert_eq!(w.next_wake(), Some(ms(5_550)));
        w.confirmed(ok(2_000));
        assert_eq!(w.next_wake(), Some(ms(6_550)));
        // An older confirmation arriving late does not move t_ok back.
        w.confirmed(ok(1_500));
        assert_eq!(w.t_ok(), ms(2_000));
        assert_eq!(w.poll(ms(6_549)), None);
    }

    #[test]
    fn deadline_sends_stop_then_kill_measured_from_t_ok() {
        let mut w = Watchdog::new(&budget(), ok(0));
        assert_eq!(w.poll(ms(4_549)), None);
        assert_eq!(w.poll(ms(4_550)), Some(Action::Stop(Loss::Deadline)));
        assert_eq!(w.poll(ms(4_550)), None);
        assert_eq!(w.next_wake(), Some(ms(6_500)));
        // A confirmation after the stop signal changes nothing.
        w.confirmed(ok(5_000));
        assert_eq!(w.next_wake(), Some(ms(6_500)));
        assert_eq!(w.poll(ms(6_500)), Some(Action::Kill));
        assert_eq!(w.poll(ms(60_000)), None);
        assert_eq!(w.next_wake(), None);
        assert_eq!(w.loss(), Some(Loss::Deadline));
    }

    #[test]
    fn max_hold_stops_like_a_loss_and_never_later_than_the_deadline() {
        let mut w = Watchdog::new(&budget(), ok(0)).with_max_hold(Some(ms(3_000)));
        assert_eq!(w.next_wake(), Some(ms(3_000)));
        w.confirmed(ok(2_000));
        assert_eq!(w.poll(ms(2_999)), None);
        assert_eq!(w.poll(ms(3_000)), Some(Action::Stop(Loss::MaxHold)));
        assert_eq!(w.next_wake(), Some(ms(4_950))); // + grace
        assert_eq!(w.poll(ms(4_950)), Some(Action::Kill));
        assert_eq!(w.loss(), Some(Loss::MaxHold));
        // Past the deadline as well: the deadline's reason and SIGKILL time win.
        let mut w = Watchdog::new(&budget(), ok(0)).with_max_hold(Some(ms(5_000)));
        assert_eq!(w.next_wake(), Some(ms(4_550)));
        assert_eq!(w.poll(ms(6_000)), Some(Action::Stop(Loss::Deadline)));
        assert_eq!(w.poll(ms(6_500)), Some(Action::Kill));
    }

    #[test]
    fn stragglers_get_the_grace_but_not_past_the_deadline() {
        let w = Watchdog::new(&budget(), ok(0));
        assert_eq!(w.straggler_grace(ms(1_000)), ms(1_950));
        assert_eq!(w.straggler_grace(ms(6_000)), ms(500));
        assert_eq!(w.straggler_grace(ms(9_000)), ms(0));
    }

    #[test]
    fn late_wake_up_acts_at_once() {
        // zklock frozen past both deadlines: stop and kill in the same wake-up.
        let mut w = Watchdog::new(&budget(), ok(0));
        assert_eq!(w.poll(ms(30_000)), Some(Action::Stop(Loss::Deadline)));
        assert_eq!(w.poll(ms(30_000)), Some(Action::Kill));
        assert_eq!(w.poll(ms(30_000)), None);
    }

    #[test]
    fn confirmed_loss_stops_now_and_kills_after_grace_or_deadline() {
        let mut w = Watchdog::new(&budget(), ok(0));
        w.lost(ms(1_000), Loss::NodeDeleted);
        assert_eq!(w.poll(ms(1_000)), Some(Action::Stop(Loss::NodeDeleted)));
        assert_eq!(w.next_wake(), Some(ms(2_950))); // now + grace
        assert_eq!(w.poll(ms(2_949)), None);
        assert_eq!(w.poll(ms(2_950)), Some(Action::Kill));

        // Late in the budget, the deadline's SIGKILL time wins over now + grace.
        let mut w = Watchdog::new(&budget(), ok(0));
        w.lost(ms(6_000), Loss::Expired);
        assert_eq!(w.poll(ms(6_000)), Some(Action::Stop(Loss::Expired)));
        assert_eq!(w.next_wake(), Some(ms(6_500)));
        // A second loss does not restart anything.
        w.lost(ms(6_100), Loss::NodeDeleted);
        assert_eq!(w.loss(), Some(Loss::Expired));
        assert_eq!(w.poll(ms(6_100)), None);
    }

    /// The watchdog driven by tokio's paused clock, as the supervisor drives it: sleep until
    /// `next_wake`, poll, act.
    #[tokio::test(start_paused = true)]
    async fn on_paused_clock_actions_come_at_their_instants() {
        use crate::clock::{Clock, TokioClock};
        let clock = TokioClock::new();
        let b = budget();
        let mut w = Watchdog::new(&b, Confirmed::for_test(clock.now()));
        let mut log = Vec::new();
        // Heartbeats confirmed every second for 3 s, then silence.
        for s in 1..=3 {
            tokio::time::sleep(ms(1_000)).await;
            w.confirmed(Confirmed::for_test(clock.now()));
            assert_eq!(w.poll(clock.now()), None);
            assert_eq!(s * 1_000, clock.now().as_millis() as u64);
        }
        while let Some(wake) = w.next_wake() {
            tokio::time::sleep(wake.saturating_sub(clock.now())).await;
            while let Some(a) = w.poll(clock.now()) {
                log.push((a, clock.now()));
            }
        }
        assert_eq!(
            log,
            vec![(Action::Stop(Loss::Deadline), ms(3_000) + b.threshold), (Action::Kill, ms(3_000) + b.kill_after())]
        );
    }
}

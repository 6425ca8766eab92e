//! `zklock run`: connect, acquire, spawn, supervise, release — in that order, with every exit
//! path releasing what it took.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, SessionState};

use crate::child::{self, Child, Supervised};
use crate::cli::RunArgs;
use crate::clock::{BootClock, Clock};
use crate::config::{Budget, BudgetRequest};
use crate::deadline::Enforcer;
use crate::exit::Exit;
use crate::lock::{self, Acquired, OurNode, Recipe};
use crate::nodedata::NodeData;
use crate::queue::Mode;
use crate::session::{Loss, Monitor, Watchdog};
use crate::signals::{JobControl, Signals};
use crate::supervise::{Outcome, Supervisor};
use crate::zk::{self, Confirmed, ConnectOptions};

/// Fails fast, before touching the lock, when the command cannot be found or run.
fn precheck_command(argv0: &OsString) -> Result<std::path::PathBuf, (Exit, String)> {
    let name = argv0.to_string_lossy();
    match which::which(argv0) {
        Ok(path) => Ok(path),
        Err(_) => {
            let path = std::path::Path::new(argv0);
            if path.components().count() > 1 || name.contains('/') {
                if path.exists() {
                    return Err((Exit::NotExecutable, format!("cannot run '{name}': not an executable file")));
                }
                return Err((Exit::NotFound, format!("cannot run '{name}': no such file")));
            }
            Err((Exit::NotFound, format!("cannot run '{name}': command not found in PATH")))
        }
    }
}

/// What ended the wait for the lock.
enum WaitEnd {
    Done(Result<Acquired>),
    Signal(Signal),
    TimedOut,
    SessionEnded(SessionState),
}

async fn session_ended(client: &Client) -> SessionState {
    let mut watcher = client.state_watcher();
    loop {
        let state = watcher.peek_state();
        if state.is_terminated() {
            return state;
        }
        watcher.changed().await;
    }
}

/// `zklock run`. Returns the exit status; `Err` is a zklock failure (125) with its message.
pub async fn run(args: RunArgs, started_at: SystemTime, t0: Instant) -> Result<Exit> {
    lock::validate_lock_path(&args.lock)?;
    let connect = ConnectOptions::from_settings(&args.connect.settings(args.acl))?;
    let program = match precheck_command(&args.command[0]) {
        Ok(path) => path,
        Err((code, msg)) => {
            crate::exit::say(format_args!("zklock: error: {msg}"));
            return Ok(code);
        }
    };
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    child::become_subreaper();

    // --wait counts from the first attempt, across re-queues after a session expiry.
    // --wait 0s tries once, as --no-wait does: a deadline already past could end the wait
    // before the first listing.
    let no_wait = args.no_wait || args.wait.is_some_and(|w| w.is_zero());
    let wait_deadline = args.wait.filter(|_| !no_wait).map(|w| tokio::time::Instant::now() + w);
    let mode = match (args.limit, args.shared, args.write) {
        (Some(n), _, _) => Mode::Limit(n),
        (None, true, _) => Mode::Read,
        (None, false, true) => Mode::Write,
        (None, false, false) => Mode::Exclusive,
    };
    let job = Job { args: &args, program, connect, no_wait, mode, wait_deadline, started_at, t0 };
    loop {
        let client = tokio::select! {
            r = job.connect.connect() => r?,
            sig = signals.recv_terminating() => {
                info!("got {sig} while connecting; giving up");
                return Ok(Exit::Signal(sig as i32));
            }
        };
        let result = hold(&client, &job, &mut signals).await;
        let (result, guard) = match result {
            Ok(Held { code, guard }) => (Ok(code), guard),
            Err(e) => (Err(e), None),
        };
        zk::close_session(client).await;
        // Disarmed, so it exits by itself; reaping it waits for that, after the release and
        // the close (the next holder waits for the release).
        drop(guard);
        match result {
            Err(e) if e.is::<ExpiredWhileWaiting>() => {
                warn!(
                    "the ZooKeeper session expired while waiting for {}; queueing again with a new session",
                    args.lock
                );
                // Never spin if sessions keep expiring at once.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// What a run is asked to do, fixed before the first connection.
struct Job<'a> {
    args: &'a RunArgs,
    /// The command, found on PATH.
    program: PathBuf,
    connect: ConnectOptions,
    /// `--no-wait`, or `--wait 0s`.
    no_wait: bool,
    mode: Mode,
    /// `--wait` counts from the first attempt, across re-queues after a session expiry.
    wait_deadline: Option<tokio::time::Instant>,
    started_at: SystemTime,
    t0: Instant,
}

/// The session expired before the lock was acquired: nothing was run, nothing is left; the
/// caller may queue again with a new session.
#[derive(Debug, thiserror::Error)]
#[error("the ZooKeeper session expired while waiting for the lock")]
struct ExpiredWhileWaiting;

/// Deletes whatever node this attempt created (found by our uuid if the create was cut short).
async fn abandon<C: Clock>(recipe: &Recipe<'_, C>, created: Option<&OurNode>) {
    if let Err(e) = recipe.release(created, false).await {
        warn!("{e:#}");
    }
}

/// How `hold` ended: the exit status, and the disarmed guard process, to be reaped once the
/// release is done.
struct Held {
    code: Exit,
    guard: Option<child::Guard>,
}

impl From<Exit> for Held {
    fn from(code: Exit) -> Held {
        Held { code, guard: None }
    }
}

/// Everything that needs the session, in its phases: acquire, confirm, start, supervise,
/// release, exit.
async fn hold(client: &Client, job: &Job<'_>, signals: &mut Signals) -> Result<Held> {
    let clock = BootClock;
    let budget = budget(client, job.args)?;
    // What our successors wait if we vanish without a clean release: by default the session
    // timeout, the time a frozen holder can go unnoticed by the server.
    let lock_delay = job.args.lock_delay.unwrap_or(budget.session_timeout);
    let mut doc = NodeData::for_this_process(job.args.label.as_deref(), &job.args.command[0], job.started_at);
    doc.lock_delay_ms = Some(lock_delay.as_millis() as u64);
    let recipe = Recipe::new(client, &job.args.lock, job.mode, &job.connect, lock_delay, clock);
    // The command's guard, started now so that its start is not part of any handoff; it is
    // armed just before the command starts.
    let guard =
        child::Guard::start().context("refusing to start the command unprotected: cannot start the guard process")?;
    let (node, waited, confirmed) = match acquire(client, job, &recipe, &budget, &doc, signals).await {
        Ok(Won { node, waited, confirmed }) => (node, waited, confirmed),
        Err(Lost(held)) => return held,
    };
    let t_ok = confirm(client, &recipe, &node, &budget, confirmed).await?;
    if waited {
        mark_acquired(client, &node, &mut doc);
    }
    signals.job_control = Some(JobControl::install());
    let mut child = match start(client, job, &node, guard, t_ok.at() + budget.kill_after()) {
        Ok(child) => child,
        Err(code) => {
            abandon(&recipe, Some(&node)).await;
            return Ok(code.into());
        }
    };
    let (outcome, guard) = supervise(client, job, &node, &budget, t_ok, &mut child, signals).await;
    // Phase 5: the release, once the command and its whole group are gone.
    match recipe.release(Some(&node), true).await {
        Ok(()) => info!("released {}", job.args.lock),
        Err(e) => warn!("{e:#}"),
    }
    let code = exit_code(job.args, outcome)?;
    Ok(Held { code, guard })
}

/// The safety budget for the negotiated session timeout.
fn budget(client: &Client, args: &RunArgs) -> Result<Budget> {
    let session_timeout = client.session_timeout();
    debug!("connected: session {} with a negotiated timeout of {session_timeout:?}", client.session_id());
    let budget = Budget::compute(BudgetRequest {
        session_timeout,
        tick: args.server_tick,
        threshold: args.disconnect_threshold,
        grace: args.grace,
    })?;
    debug!("{}", budget.describe());
    Ok(budget)
}

/// The lock is ours: our node, whether we waited, and the latest confirmed send time.
struct Won {
    node: OurNode,
    waited: bool,
    confirmed: Confirmed,
}

/// The lock is not ours, and `hold` ends with this (our node, if any, already deleted).
struct Lost(Result<Held>);

/// Phase 1: create our node and wait for our turn, or give up (signal, --wait, --no-wait,
/// session ended), deleting what we created.
async fn acquire<C: Clock>(
    client: &Client,
    job: &Job<'_>,
    recipe: &Recipe<'_, C>,
    budget: &Budget,
    doc: &NodeData,
    signals: &mut Signals,
) -> Result<Won, Lost> {
    let args = job.args;
    let data = doc.to_bytes();
    let mut created: Option<OurNode> = None;
    // The command may start only with a confirmation younger than half the threshold (see
    // `confirm`); a woken waiter refreshes one older than a quarter of it while it lists.
    let pace = lock::Pace { heartbeat: budget.heartbeat, recheck_after: budget.threshold / 4 };
    let end = {
        let acquire = async {
            let (node, listed) = recipe.create(&data).await?;
            created = Some(node.clone());
            let acquired = recipe.wait_turn(&node, listed, job.no_wait, pace).await?;
            if let Acquired::Yes { delay: Some((delay, after)), .. } = &acquired {
                wait_out(client, &node, doc, *delay, after, &args.lock).await;
            }
            Ok(acquired)
        };
        tokio::select! {
            r = acquire => WaitEnd::Done(r),
            sig = signals.recv_terminating() => WaitEnd::Signal(sig),
            () = async { match job.wait_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => WaitEnd::TimedOut,
            state = session_ended(client) => WaitEnd::SessionEnded(state),
        }
    };
    // Say why first: deleting our node may wait for a reconnect.
    let outcome = match end {
        WaitEnd::Done(Ok(Acquired::Yes { waited, confirmed, .. })) => {
            let node = created.expect("an acquired lock has a node");
            return Ok(Won { node, waited, confirmed });
        }
        WaitEnd::Done(Ok(Acquired::Held { ahead })) => {
            info!("{} is held ({ahead} ahead of us); not waiting (--no-wait)", args.lock);
            Ok(Exit::Conflict(args.conflict_exit_code))
        }
        WaitEnd::Signal(sig) => {
            info!("got {sig} while waiting for {}; giving up", args.lock);
            Ok(Exit::Signal(sig as i32))
        }
        WaitEnd::TimedOut => {
            warn!(
                "gave up waiting for {} after {}",
                args.lock,
                humantime::format_duration(args.wait.unwrap_or_default())
            );
            Ok(Exit::Conflict(args.conflict_exit_code))
        }
        WaitEnd::SessionEnded(SessionState::Expired) => Err(ExpiredWhileWaiting.into()),
        WaitEnd::SessionEnded(state) => {
            Err(anyhow!("the ZooKeeper session ended while waiting for {} ({state})", args.lock))
        }
        // A request that failed because the session expired is the same event.
        WaitEnd::Done(Err(_)) if client.state() == SessionState::Expired => Err(ExpiredWhileWaiting.into()),
        WaitEnd::Done(Err(e)) => Err(e),
    };
    abandon(recipe, created.as_ref()).await;
    Err(Lost(outcome.map(Held::from)))
}

/// Phase 2: `t_ok`. The leader validated our session after `t_ok` (our create, or a check).
/// If that is not recent (a long wait, or a reconnect delayed the listing), confirm through
/// the leader again before starting the command: it must never start with its deadline close.
async fn confirm<C: Clock>(
    client: &Client,
    recipe: &Recipe<'_, C>,
    node: &OurNode,
    budget: &Budget,
    mut t_ok: Confirmed,
) -> Result<Confirmed> {
    let clock = BootClock;
    loop {
        if clock.now() < t_ok.at() + budget.threshold / 2 {
            return Ok(t_ok);
        }
        debug!("confirming our session through the leader before starting the command");
        match zk::check_retrying(client, &node.path, &clock).await {
            Ok(c) => {
                t_ok.advance(c);
            }
            Err(e) => {
                abandon(recipe, Some(node)).await;
                if client.state() == SessionState::Expired {
                    return Err(ExpiredWhileWaiting.into());
                }
                bail!("lost the lock before the command could start: {e}");
            }
        }
    }
}

/// The lock is ours, but `after`, which held it before us, vanished without a clean release:
/// it may still run, frozen, until the server's expiry of its session plus a wake-up. Waits
/// out `delay` (on the deadline clock, which counts a suspended host's time) before the command
/// may start, and says so in our node, for `zklock status`.
async fn wait_out(client: &Client, node: &OurNode, doc: &NodeData, delay: Duration, after: &str, lock: &str) {
    info!(
        "holding {lock}, but {after} held it before and vanished without a clean release: waiting out its lock-delay of {} before starting the command",
        humantime::format_duration(delay)
    );
    let mut delayed = doc.clone();
    delayed.delayed_until = Some(humantime::format_rfc3339_millis(SystemTime::now() + delay).to_string());
    record(client, node, &delayed, "the lock-delay");
    let clock = BootClock;
    let until = clock.now() + delay;
    // tokio sleeps on CLOCK_MONOTONIC, which stops while the host is suspended.
    while clock.now() < until {
        tokio::time::sleep((until - clock.now()).min(Duration::from_millis(250))).await;
    }
    debug!("the lock-delay is over");
}

/// Records when a waiter acquired, for `zklock status` (and, under `--limit`, to wake the
/// waiter behind us). Informational: its reply is awaited on a task of its own, so that
/// neither the handoff nor supervision waits for it.
fn mark_acquired(client: &Client, node: &OurNode, doc: &mut NodeData) {
    doc.acquired_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    record(client, node, doc, "the acquisition time");
}

/// Writes `doc` into our lock node, for `zklock status` and the waiters behind us; the reply
/// is awaited on a task of its own (informational: nothing waits for it). `what` names what
/// is recorded, for the message if it fails.
fn record(client: &Client, node: &OurNode, doc: &NodeData, what: &'static str) {
    let written = client.set_data(&node.path, &doc.to_bytes(), None);
    tokio::spawn(async move {
        if let Err(e) = written.await {
            debug!("cannot record {what} in the lock node: {e}");
        }
    });
}

/// Phase 3: the command, with the lock's environment, its guard armed to SIGKILL its group at
/// `kill_at`; `Err` is the exit status when it cannot be started.
fn start(
    client: &Client,
    job: &Job<'_>,
    node: &OurNode,
    guard: child::Guard,
    kill_at: Duration,
) -> Result<Child, Exit> {
    let args = job.args;
    let env = [
        ("ZKLOCK_LOCK", args.lock.clone()),
        ("ZKLOCK_NODE", node.path.clone()),
        ("ZKLOCK_FENCING_TOKEN", node.czxid.to_string()),
        ("ZKLOCK_SESSION_ID", client.session_id().to_string()),
    ];
    match child::spawn(&job.program, &args.command, &env, guard, kill_at) {
        Ok(child) => {
            info!(
                "acquired {} in {:.1?} (token {}); started {} as pid {}",
                args.lock,
                job.t0.elapsed(),
                node.czxid,
                args.command[0].to_string_lossy(),
                child.pid()
            );
            Ok(child)
        }
        Err(e @ child::SpawnError::Unprotected(_)) => {
            // Through the non-blocking log: the lock is still held here.
            tracing::error!("{e}");
            Err(Exit::Failure)
        }
        Err(child::SpawnError::Spawn(e)) => {
            tracing::error!("cannot run '{}': {e}", args.command[0].to_string_lossy());
            Err(Exit::from_spawn_error(&e))
        }
    }
}

/// Phase 4: supervise the command until it and its whole group are gone (the enforcer keeps
/// the deadline meanwhile), then hold on for `--min-hold`. Returns how it ended, and the
/// disarmed guard process.
async fn supervise(
    client: &Client,
    job: &Job<'_>,
    node: &OurNode,
    budget: &Budget,
    t_ok: Confirmed,
    child: &mut Child,
    signals: &mut Signals,
) -> (Outcome, Option<child::Guard>) {
    let (args, clock) = (job.args, BootClock);
    // --timeout counts from the start of the command, on the deadline clock.
    let max_hold_at = args.timeout.map(|d| clock.now() + d);
    let watchdog = Watchdog::new(budget, t_ok).with_max_hold(max_hold_at);
    let enforcer = Enforcer::start(watchdog, child.group(), args.kill_signal, clock);
    let mut monitor = Monitor::start(client, &node.path, budget.heartbeat, clock);
    let acquired = tokio::time::Instant::now();
    let job_control = signals.job_control.take().unwrap_or_else(JobControl::install);
    let outcome =
        Supervisor { job_control, child, events: &mut monitor.events, signals, enforcer: &enforcer, clock }.run().await;

    // Release order: the command and its whole group gone -> our node deleted -> session
    // closed (by the caller). The enforcer keeps the deadline while stragglers are stopped.
    child.drain(args.kill_signal, outcome.straggler_grace).await;
    enforcer.finish();
    let guard = child.disarm();
    if let (Some(min), None) = (args.min_hold, outcome.loss) {
        // Keep the lock a while after a fast command, so that contenders started a little
        // later (cron on hosts with skewed clocks) find it held and skip with -n.
        tokio::select! {
            () = tokio::time::sleep_until(acquired + min) => {}
            sig = signals.recv_terminating() => debug!("got {sig}; releasing before --min-hold"),
        }
    }
    // Stopped first: stopped after the delete, the client sends the removal of the watch on
    // our node after the session's close, and reconnects for it.
    monitor.stop().await;
    (outcome, guard)
}

/// Phase 6: the exit status.
fn exit_code(args: &RunArgs, outcome: Outcome) -> Result<Exit> {
    match (outcome.loss, outcome.status) {
        (Some(Loss::MaxHold), _) => {
            crate::exit::say(format_args!(
                "zklock: error: the command held {} for --timeout {}; it was stopped",
                args.lock,
                humantime::format_duration(args.timeout.unwrap_or_default())
            ));
            Ok(Exit::TimedOut)
        }
        (Some(why), _) => {
            crate::exit::say(format_args!(
                "zklock: error: lost {} while the command ran ({why}); the command was stopped",
                args.lock
            ));
            Ok(Exit::LockLost)
        }
        (None, Ok(status)) => Ok(Exit::from_child(status)),
        (None, Err(e)) => bail!("lost track of the command: {e}"),
    }
}

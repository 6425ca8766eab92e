//! `zklock run`: connect, acquire, spawn, supervise, release — in that order, with every exit
//! path releasing what it took.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, SessionState};

use crate::child::{self, Child};
use crate::cli::RunArgs;
use crate::clock::{BootClock, Clock};
use crate::config::{Budget, BudgetRequest};
use crate::deadline::Enforcer;
use crate::exit;
use crate::lock::{self, Acquired, OurNode, Recipe};
use crate::nodedata::NodeData;
use crate::queue::Mode;
use crate::session::{Monitor, Watchdog};
use crate::signals::Signals;
use crate::supervise::{Outcome, Supervisor};
use crate::zk::{self, ConnectOptions, PendingDelete};

/// Fails fast, before touching the lock, when the command cannot be found or run.
fn precheck_command(argv0: &OsString) -> Result<std::path::PathBuf, (u8, String)> {
    let name = argv0.to_string_lossy();
    match which::which(argv0) {
        Ok(path) => Ok(path),
        Err(_) => {
            let path = std::path::Path::new(argv0);
            if path.components().count() > 1 || name.contains('/') {
                if path.exists() {
                    return Err((exit::NOT_EXECUTABLE, format!("cannot run '{name}': not an executable file")));
                }
                return Err((exit::NOT_FOUND, format!("cannot run '{name}': no such file")));
            }
            Err((exit::NOT_FOUND, format!("cannot run '{name}': command not found in PATH")))
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
pub async fn run(args: RunArgs, started_at: SystemTime, t0: Instant) -> Result<u8> {
    lock::validate_lock_path(&args.lock)?;
    let connect = ConnectOptions::from_args(&args.connect)?;
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
    let job = Job { args: &args, program, connect, no_wait, mode: Mode::Exclusive, wait_deadline, started_at, t0 };
    loop {
        let client = tokio::select! {
            r = job.connect.connect() => r?,
            sig = signals.recv_terminating() => {
                info!("got {sig} while connecting; giving up");
                return Ok(exit::from_signal(sig as i32));
            }
        };
        let result = hold(&client, &job, &mut signals).await;
        let (result, deleting, guard) = match result {
            Ok(Held { code, deleting, guard }) => (Ok(code), deleting, guard),
            Err(e) => (Err(e), None, None),
        };
        zk::close(client, deleting).await;
        // Disarmed, so it exits by itself; reaping it waits for that, which must not hold up
        // the delete on the way to the server (the next holder waits for it).
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
    if let Err(e) = recipe.release(created).await {
        warn!("{e:#}");
    }
}

/// How `hold` ended: the exit status, the delete of our node if it is still in flight, and
/// the disarmed guard process, to be reaped once the release is done.
struct Held {
    code: u8,
    deleting: Option<PendingDelete>,
    guard: Option<child::Guard>,
}

impl From<u8> for Held {
    fn from(code: u8) -> Held {
        Held { code, deleting: None, guard: None }
    }
}

/// Everything that needs the session: budget, acquisition, the command, release of the node.
async fn hold(client: &Client, job: &Job<'_>, signals: &mut Signals) -> Result<Held> {
    let Job { args, ref program, wait_deadline, started_at, t0, .. } = *job;
    let clock = BootClock;
    let session_timeout = client.session_timeout();
    debug!("connected: session {} with a negotiated timeout of {session_timeout:?}", client.session_id());
    let budget = Budget::compute(BudgetRequest {
        session_timeout,
        tick: args.server_tick,
        threshold: args.disconnect_threshold,
        grace: args.grace,
    })?;
    debug!("{}", budget.describe());

    let mut doc = NodeData::for_this_process(args.label.as_deref(), &args.command[0], started_at);
    let data = doc.to_bytes();
    let recipe = Recipe::new(client, &args.lock, job.mode, &job.connect, clock);
    let mut created: Option<OurNode> = None;
    // The command may start only with a confirmation younger than half the threshold (below);
    // a woken waiter refreshes one older than a quarter of it while it lists.
    let pace = lock::Pace { heartbeat: budget.heartbeat, recheck_after: budget.threshold / 4 };

    let end = {
        let acquire = async {
            let (node, listed) = recipe.create(&data).await?;
            created = Some(node.clone());
            recipe.wait_turn(&node, listed, job.no_wait, pace).await
        };
        tokio::select! {
            r = acquire => WaitEnd::Done(r),
            sig = signals.recv_terminating() => WaitEnd::Signal(sig),
            () = async { match wait_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => WaitEnd::TimedOut,
            state = session_ended(client) => WaitEnd::SessionEnded(state),
        }
    };
    let (waited, confirmed) = match end {
        WaitEnd::Done(Ok(Acquired::Yes { waited, confirmed })) => (waited, confirmed),
        other => {
            // Say why first: deleting our node may wait for a reconnect.
            let outcome = match other {
                WaitEnd::Done(Ok(Acquired::Held { ahead })) => {
                    info!("{} is held ({ahead} ahead of us); not waiting (--no-wait)", args.lock);
                    Ok(args.conflict_exit_code)
                }
                WaitEnd::Signal(sig) => {
                    info!("got {sig} while waiting for {}; giving up", args.lock);
                    Ok(exit::from_signal(sig as i32))
                }
                WaitEnd::TimedOut => {
                    warn!(
                        "gave up waiting for {} after {}",
                        args.lock,
                        humantime::format_duration(args.wait.unwrap_or_default())
                    );
                    Ok(args.conflict_exit_code)
                }
                WaitEnd::SessionEnded(SessionState::Expired) => Err(ExpiredWhileWaiting.into()),
                WaitEnd::SessionEnded(state) => {
                    Err(anyhow!("the ZooKeeper session ended while waiting for {} ({state})", args.lock))
                }
                // A request that failed because the session expired is the same event.
                WaitEnd::Done(Err(_)) if client.state() == SessionState::Expired => Err(ExpiredWhileWaiting.into()),
                WaitEnd::Done(Err(e)) => Err(e),
                WaitEnd::Done(Ok(Acquired::Yes { .. })) => unreachable!("handled above"),
            };
            abandon(&recipe, created.as_ref()).await;
            return outcome.map(Held::from);
        }
    };
    let node = created.clone().expect("an acquired lock has a node");

    // t_ok: the leader validated our session after this was sent (our create, or a check). If
    // that is not recent (a long wait, or a reconnect delayed the listing), confirm through the
    // leader again before starting the command: it must never start with its deadline close.
    let mut t_ok = confirmed;
    let t_ok = loop {
        if clock.now() < t_ok + budget.threshold / 2 {
            break t_ok;
        }
        debug!("confirming our session through the leader before starting the command");
        let sent = clock.now();
        let confirmed = zk::retry(client, || async {
            client.new_check_writer(&node.path, None)?.commit().await.map_err(zookeeper_client::Error::from)
        })
        .await;
        if let Err(e) = confirmed {
            abandon(&recipe, Some(&node)).await;
            if client.state() == SessionState::Expired {
                return Err(ExpiredWhileWaiting.into());
            }
            bail!("lost the lock before the command could start: {e}");
        }
        t_ok = sent;
    };

    // Record when a waiter acquired, for `zklock status`. Informational only: its reply is
    // awaited on a task of its own, so that neither the handoff nor supervision waits for it.
    if waited {
        doc.acquired_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        let marked = client.set_data(&node.path, &doc.to_bytes(), None);
        tokio::spawn(async move {
            if let Err(e) = marked.await {
                debug!("cannot record the acquisition time in the lock node: {e}");
            }
        });
    }

    let env = [
        ("ZKLOCK_LOCK", args.lock.clone()),
        ("ZKLOCK_NODE", node.path.clone()),
        ("ZKLOCK_FENCING_TOKEN", node.czxid.to_string()),
        ("ZKLOCK_SESSION_ID", client.session_id().to_string()),
    ];
    let mut child: Child = match child::spawn(program, &args.command, &env) {
        Ok(c) => c,
        Err(e) => {
            // Through the non-blocking log: the lock is still held here.
            tracing::error!("cannot run '{}': {e}", args.command[0].to_string_lossy());
            abandon(&recipe, Some(&node)).await;
            return Ok(exit::from_spawn_error(&e).into());
        }
    };
    info!(
        "acquired {} in {:.1?} (token {}); started {} as pid {}",
        args.lock,
        t0.elapsed(),
        node.czxid,
        args.command[0].to_string_lossy(),
        child.pid()
    );

    let enforcer = Enforcer::start(Watchdog::new(&budget, t_ok), child.pgid(), args.kill_signal, clock);
    let mut guard = child.guard().map_err(|e| warn!("cannot start the guard process: {e}")).ok();
    let mut monitor = Monitor::start(client, &node.path, budget.heartbeat, clock);
    let acquired = tokio::time::Instant::now();
    let Outcome { status, loss, straggler_grace } =
        Supervisor { child: &mut child, monitor: &mut monitor, signals, enforcer: &enforcer, clock }.run().await;

    // Release order: the command and its whole group gone -> our node deleted -> session
    // closed (by the caller). The enforcer keeps the deadline while stragglers are stopped.
    child.drain(args.kill_signal, straggler_grace).await;
    enforcer.finish();
    if let Some(guard) = guard.as_mut() {
        guard.disarm();
    }
    if let (Some(min), None) = (args.min_hold, loss) {
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
    // Sent now; its reply is awaited once the session's close is queued behind it (the server
    // applies both in order), which saves a round trip on every release.
    let deleting: PendingDelete = (node.path.clone(), Box::pin(client.delete(&node.path, None)));

    let code = match (loss, status) {
        (Some(why), _) => {
            crate::exit::say(format_args!(
                "zklock: error: lost {} while the command ran ({why}); the command was stopped",
                args.lock
            ));
            exit::LOCK_LOST
        }
        (None, Ok(status)) => exit::from_child(status),
        (None, Err(e)) => bail!("lost track of the command: {e}"),
    };
    Ok(Held { code, deleting: Some(deleting), guard })
}

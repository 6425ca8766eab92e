//! The one place that talks to ZooKeeper about connections: the options built once from the
//! command line ([`ConnectOptions`]), connecting within a time limit, closing, and retrying a
//! request across a lost connection. `run` and `status` both use it; the lock recipe takes the
//! ACL it must put on the nodes it creates from here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, warn};
use zookeeper_client::{Acls, Client, SessionState};

use crate::cli::ConnectArgs;

/// How long closing the session may take before zklock exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything needed to open a session, decided once from the command line.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    /// The ACL of every node zklock creates.
    pub acl: Acls<'static>,
}

impl ConnectOptions {
    pub fn from_args(args: &ConnectArgs) -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            connect: args.zk.clone(),
            session_timeout: args.session_timeout,
            connect_timeout: args.connect_timeout,
            acl: Acls::anyone_all(),
        })
    }

    /// Connects within `connect_timeout`, retrying while no server answers.
    pub async fn connect(&self) -> Result<Client> {
        let connector = Client::connector().with_session_timeout(self.session_timeout).with_fail_eagerly();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, connector.clone().connect(&self.connect)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e))
                    if matches!(e, zookeeper_client::Error::NoHosts | zookeeper_client::Error::Timeout)
                        || is_connection_failure(&e) =>
                {
                    debug!("connect attempt failed: {e}");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                Ok(Err(zookeeper_client::Error::BadArguments(why))) => {
                    bail!("invalid connect string '{}': {why}", self.connect)
                }
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("cannot connect to ZooKeeper at {}", self.connect))
                }
                Err(_) => break,
            }
        }
        Err(anyhow!(
            "cannot connect to ZooKeeper at {} within {}{}",
            self.connect,
            humantime::format_duration(self.connect_timeout),
            last.map(|e| format!(" (last error: {e})")).unwrap_or_default()
        ))
    }
}

/// A delete of our lock node that was sent, its reply to be awaited once the session's close
/// is queued behind it.
pub type PendingDelete = (String, Pin<Box<dyn Future<Output = Result<(), zookeeper_client::Error>> + Send>>);

/// Closes a session that has nothing in flight.
pub async fn close_session(client: Client) {
    close(client, None).await;
}

/// Closes the session and waits for the server to confirm. A delete still in flight is
/// awaited first: the close is queued behind it. If its reply was lost with the connection,
/// the close (retried by the client on reconnection) removes the node with the session, and
/// is waited for as long as the session may live.
pub async fn close(client: Client, deleting: Option<PendingDelete>) {
    let session_timeout = client.session_timeout();
    let mut watcher = client.state_watcher();
    drop(client);
    let mut limit = CLOSE_TIMEOUT;
    if let Some((path, deleting)) = deleting {
        match deleting.await {
            Ok(()) => debug!("deleted {path}"),
            Err(zookeeper_client::Error::NoNode | zookeeper_client::Error::SessionExpired) => {
                debug!("{path} was already gone")
            }
            Err(e) => {
                debug!("delete of {path} not confirmed ({e}); closing the session removes it");
                limit = limit.max(session_timeout * 3 / 2);
            }
        }
    }
    if watcher.peek_state().is_terminated() {
        return;
    }
    let closed = tokio::time::timeout(limit, async { while !watcher.changed().await.is_terminated() {} }).await;
    if closed.is_err() {
        warn!("the session did not confirm closing within {limit:?}; the server expires it");
    }
}

/// Waits until the session is connected again after a ConnectionLoss; fails if it ended.
pub async fn wait_connected(client: &Client) -> Result<(), zookeeper_client::Error> {
    let mut watcher = client.state_watcher();
    loop {
        match watcher.peek_state() {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => return Ok(()),
            SessionState::Expired => return Err(zookeeper_client::Error::SessionExpired),
            SessionState::Closed => return Err(zookeeper_client::Error::ClientClosed),
            SessionState::AuthFailed => return Err(zookeeper_client::Error::AuthFailed),
            SessionState::Disconnected => {
                watcher.changed().await;
            }
        }
    }
}

/// Whether a request failed because its connection broke rather than because the server said
/// no: zookeeper-client fails the requests in flight with ConnectionLoss on a clean close, but
/// with a custom error on a silent partition ("no response from connection") or a reset, and
/// with Timeout when it gives up reconnecting.
pub fn is_connection_failure(e: &zookeeper_client::Error) -> bool {
    matches!(e, zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_))
}

/// Runs `op`, and again after each connection failure once the session is connected again.
pub async fn retry<T, F, Fut>(client: &Client, mut op: F) -> Result<T, zookeeper_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, zookeeper_client::Error>>,
{
    loop {
        match op().await {
            Err(e) if is_connection_failure(&e) => {
                debug!("connection lost during a request; retrying once reconnected");
                wait_connected(client).await?;
                // The state flips before pending requests fail; a short pause avoids spinning
                // if a reply and a reconnect race.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

//! ZooKeeper's lock recipe on zookeeper-client's primitives, as Curator and kazoo implement it.
//!
//! 1. Create `<lock>/_c_<uuid>-lock-` EPHEMERAL_SEQUENTIAL (Curator's protected name); create
//!    the parents as CONTAINER nodes only when the create says NoNode.
//! 2. If the create's reply is lost, find the node by our uuid and adopt it only if its
//!    ephemeralOwner is our session; delete any other.
//! 3. List the children; the lowest sequence holds. Our own node must be in the list just read.
//!    Otherwise watch only the immediate predecessor: one release wakes one waiter.
//! 4. A child name we cannot classify is an error, never ignored.
//! 5. Release: delete our node and await the reply (the caller does this after the child is gone).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, info, warn};
use zookeeper_client::{Client, CreateMode, EventType};

use crate::zk::{self, is_connection_failure, retry, wait_connected, Confirmed, ConnectOptions};

use crate::clock::Clock;
use crate::delay::{NodeDelay, Released};
use crate::nodedata::NodeData;
use crate::queue::{verdict, Contender, Mode, Verdict, Watch, PROTECTED_PREFIX};

/// How many times a NoNode on create (a container parent reaped under us) is retried.
const CREATE_ATTEMPTS: usize = 10;

/// A listing of the lock directory already sent, its reply still to come.
pub type Listing<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Listed, zookeeper_client::Error>> + Send + 'a>>;

/// One listing of the lock directory: its children, and its data (the [`Released`] record) and
/// data version, read right after them.
pub struct Listed {
    children: Vec<String>,
    dir: Option<(Vec<u8>, i32)>,
}

/// Our place in the queue, from one listing.
struct Turn {
    verdict: Verdict,
    queue: Vec<Contender>,
    pos: usize,
}

/// What the recipe last read of the lock directory's data.
#[derive(Default)]
struct Dir {
    released: Released,
    /// Its data version, for the conditional write of a release; `None` before any read.
    version: Option<i32>,
}

impl Dir {
    /// What the lock directory's data and data version say.
    fn read(data: &[u8], version: i32) -> Dir {
        Dir { released: Released::parse(data), version: Some(version) }
    }
}

/// How many nodes' data a waiter reads at once to learn their lock-delay.
const MAX_DATA_READS: usize = 64;

/// How often a release retries when other releases change the record under it.
const RELEASE_ATTEMPTS: usize = 8;

/// The children of a lock directory in queue order; a name we cannot classify is an error
/// naming it.
pub fn queue(lock: &str, children: &[String]) -> Result<Vec<Contender>> {
    let (queue, unknown) = crate::queue::order(children);
    if let Some(name) = unknown.first() {
        bail!(
            "{lock} holds a node zklock cannot classify: '{name}' (not a zklock, Curator or kazoo lock node); \
             refusing to guess the queue order"
        );
    }
    Ok(queue)
}

/// Checks a lock path given by the user: absolute, no empty, `.` or `..` segments, not the
/// root, not under `/zookeeper`, no control characters.
pub fn validate_lock_path(path: &str) -> Result<()> {
    let bad = |why: &str| Err(anyhow!("invalid lock path '{}': {why}", path.escape_debug()));
    if !path.starts_with('/') {
        return bad("must start with '/'");
    }
    if path == "/" {
        return bad("the root cannot be a lock");
    }
    if path.ends_with('/') {
        return bad("must not end with '/'");
    }
    if path
        .chars()
        .any(|c| c.is_control() || ('\u{e000}'..='\u{f8ff}').contains(&c) || ('\u{fff0}'..='\u{ffff}').contains(&c))
    {
        return bad("contains a character ZooKeeper does not allow");
    }
    for seg in path[1..].split('/') {
        match seg {
            "" => return bad("empty path segment ('//')"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return bad("/zookeeper is reserved by the server");
    }
    Ok(())
}

/// Our lock node, once created.
#[derive(Clone, Debug)]
pub struct OurNode {
    /// Full path (below any chroot).
    pub path: String,
    /// The child name.
    pub name: String,
    /// The zxid of the create: the fencing token.
    pub czxid: i64,
    /// Our create (or, for a node recovered after a lost reply, a check on it) through the
    /// leader.
    pub created: Confirmed,
}

/// How an acquisition attempt ended.
#[derive(Debug)]
pub enum Acquired {
    /// The lock is ours. `waited` says whether we had to wait for a predecessor; `confirmed`
    /// is the latest send time of a request on our node that the leader confirmed (our create,
    /// or a check): a `t_ok`.
    /// `delay`: a node ahead of us vanished without a clean release; wait this long (its
    /// lock-delay, the node named) before starting the command.
    Yes { waited: bool, confirmed: Confirmed, delay: Option<(Duration, String)> },
    /// `--no-wait` found the lock held by `ahead` contenders.
    Held { ahead: usize },
}

/// How a waiter keeps its confirmation fresh.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// The heartbeat period: how often the waiter next in line checks through the leader.
    pub heartbeat: Duration,
    /// A waiter woken with an older confirmation checks through the leader with its listing.
    pub recheck_after: Duration,
}

/// The recipe for one lock path and one session.
pub struct Recipe<'a, C: Clock> {
    client: &'a Client,
    lock: &'a str,
    uuid: String,
    clock: C,
    mode: Mode,
    /// The ACL of the nodes this recipe creates (our lock node and missing parents), and who
    /// we are, for messages.
    connect: &'a ConnectOptions,
    /// Our own `--lock-delay`: assumed for a vanished node whose data we never read.
    lock_delay: Duration,
    dir: RefCell<Dir>,
    /// What nodes we read demand if they vanish, by name.
    known: RefCell<HashMap<String, NodeDelay>>,
}

impl<'a, C: Clock> Recipe<'a, C> {
    pub fn new(
        client: &'a Client,
        lock: &'a str,
        mode: Mode,
        connect: &'a ConnectOptions,
        lock_delay: Duration,
        clock: C,
    ) -> Self {
        Recipe {
            client,
            lock,
            uuid: uuid::Uuid::new_v4().hyphenated().to_string(),
            clock,
            mode,
            connect,
            lock_delay,
            dir: RefCell::default(),
            known: RefCell::default(),
        }
    }

    /// Lists the lock directory and reads its data right behind (one round trip).
    fn list(&self) -> Listing<'a> {
        let children = self.client.list_children(self.lock);
        let dir = self.client.get_data(self.lock);
        Box::pin(async move {
            let children = children.await?;
            let dir = dir.await.ok().map(|(data, stat)| (data, stat.version));
            Ok(Listed { children, dir })
        })
    }

    fn prefix(&self) -> String {
        format!("{}/{PROTECTED_PREFIX}{}{}", self.lock, self.uuid, self.mode.marker())
    }

    fn is_ours_by_name(&self, name: &str) -> bool {
        name.strip_prefix(PROTECTED_PREFIX).is_some_and(|rest| rest.starts_with(&self.uuid))
    }

    /// Step 1 and 2: create our node, creating container parents on NoNode, recovering a node
    /// whose create reply was lost. A listing of the directory is sent right behind the create:
    /// the server answers a session's requests in order, so when the create succeeds the
    /// listing was taken after it, and saves step 3 a round trip. It is returned unawaited, so
    /// that the caller knows its node (to delete it if it gives up) as soon as the create's
    /// reply is in; `None` when the node was recovered, and step 3 then lists on its own.
    pub async fn create(&self, data: &[u8]) -> Result<(OurNode, Option<Listing<'a>>)> {
        let prefix = self.prefix();
        let mut last_err = None;
        for _ in 0..CREATE_ATTEMPTS {
            let options = CreateMode::EphemeralSequential.with_acls(self.connect.acl);
            let creating = zk::through_leader(&self.clock, || self.client.create(&prefix, data, &options));
            let listing = self.list();
            match creating.await {
                Ok(((stat, seq), created)) => {
                    let path = format!("{prefix}{seq}");
                    let name = path[self.lock.len() + 1..].to_owned();
                    let node = OurNode { path, name, czxid: stat.czxid, created };
                    return Ok((node, Some(listing)));
                }
                Err(zookeeper_client::Error::NoNode) => {
                    debug!("{} does not exist; creating it as a container", self.lock);
                    match retry(self.client, || self.mkdir()).await {
                        Ok(()) => {}
                        Err(zookeeper_client::Error::NoNode) => {
                            bail!("cannot create {}: the chroot of the connect string does not exist", self.lock)
                        }
                        Err(e) => return Err(self.refused(e, &format!("create {}", self.lock)).await),
                    }
                    last_err = Some(zookeeper_client::Error::NoNode);
                }
                Err(e) if is_connection_failure(&e) => {
                    warn!("connection lost while creating the lock node ({e}); looking for it after reconnecting");
                    wait_connected(self.client).await.context("while recovering the lock node")?;
                    if let Some(node) = self.find_ours().await? {
                        return Ok((node, None));
                    }
                    last_err = Some(e);
                }
                Err(zookeeper_client::Error::NoChildrenForEphemerals) => {
                    bail!("cannot lock {}: it is an ephemeral node, which cannot have children", self.lock)
                }
                Err(e) => return Err(self.refused(e, &format!("create a lock node under {}", self.lock)).await),
            }
        }
        Err(anyhow!("cannot create a lock node under {} after {CREATE_ATTEMPTS} attempts: {:?}", self.lock, last_err))
    }

    /// Creates the lock directory and its missing parents, as containers: the directory with
    /// our ACL, the parents with our ACL and CREATE for anyone, so that other identities can
    /// make lock directories of their own beside ours.
    async fn mkdir(&self) -> Result<(), zookeeper_client::Error> {
        let parent = &self.lock[..self.lock.rfind('/').unwrap_or(0)];
        if !parent.is_empty() {
            self.client.mkdir(parent, &CreateMode::Container.with_acls(self.connect.parents_acl)).await?;
        }
        match self.client.create(self.lock, &[], &CreateMode::Container.with_acls(self.connect.acl)).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The error for a create of ours that failed with `e`: a refusal by an ACL names the
    /// node and its ACL, a refused ACL says why; `doing` is what we tried, e.g. `create /locks`.
    async fn refused(&self, e: zookeeper_client::Error, doing: &str) -> anyhow::Error {
        match e {
            zookeeper_client::Error::NoAuth => self.connect.not_authorised(self.client, self.lock, doing).await,
            zookeeper_client::Error::InvalidAcl => self.invalid_acl(),
            e => anyhow::Error::new(e).context(format!("cannot {doing}")),
        }
    }

    /// The server refused the ACL we asked for: `auth` ACLs need an identity it recognises.
    fn invalid_acl(&self) -> anyhow::Error {
        anyhow!(
            "the server refused --acl {} for nodes under {}: it knows no identity of this session ({}); \
             give credentials, or --acl open",
            self.connect.policy.name(),
            self.lock,
            self.connect.identity()
        )
    }

    /// After a lost create reply: our uuid's node, adopted only if our session owns it; any
    /// other node with our uuid is deleted. The lost reply confirmed nothing, so an adopted
    /// node is confirmed through the leader once more.
    async fn find_ours(&self) -> Result<Option<OurNode>> {
        // The lost create may still be on its way through the leader: sync first.
        retry(self.client, || self.client.sync(self.lock)).await.ok();
        let children = match retry(self.client, || self.client.list_children(self.lock)).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(e).context("while looking for our lock node"),
        };
        let session = self.client.session_id().0;
        let mut adopted = None;
        for name in children.into_iter().filter(|n| self.is_ours_by_name(n)) {
            let path = format!("{}/{name}", self.lock);
            match retry(self.client, || self.client.get_data(&path)).await {
                Ok((_, stat)) if stat.ephemeral_owner == session && adopted.is_none() => {
                    info!("recovered our lock node {name} after a lost reply");
                    let created = zk::check_retrying(self.client, &path, &self.clock)
                        .await
                        .with_context(|| format!("cannot confirm our recovered lock node {path}"))?;
                    adopted = Some(OurNode { path, name, czxid: stat.czxid, created });
                }
                Ok(_) => {
                    warn!("deleting stray node {name} that carries our id but not our session");
                    match retry(self.client, || self.client.delete(&path, None)).await {
                        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot delete stray node {path}")),
                    }
                }
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(e).context("while looking for our lock node"),
            }
        }
        Ok(adopted)
    }

    /// Step 3: our place in the queue, from one listing: `listed` if it was sent after our
    /// node was created and succeeds, else a new one.
    async fn turn(&self, node: &OurNode, listed: Option<Listing<'a>>) -> Result<Turn> {
        let listed = match listed {
            Some(listing) => listing.await.ok(),
            None => None,
        };
        let listed = match listed {
            Some(listed) => listed,
            None => match retry(self.client, || self.list()).await {
                Ok(listed) => listed,
                Err(zookeeper_client::Error::NoAuth) => {
                    return Err(self
                        .connect
                        .not_authorised(self.client, self.lock, &format!("list {}", self.lock))
                        .await)
                }
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", self.lock)),
            },
        };
        if let Some((data, version)) = listed.dir {
            *self.dir.borrow_mut() = Dir::read(&data, version);
        }
        self.place(node, &listed.children)
    }

    /// The queue rule for our node among `children`.
    fn place(&self, node: &OurNode, children: &[String]) -> Result<Turn> {
        let queue = queue(self.lock, children)?;
        let Some(pos) = queue.iter().position(|c| c.name == node.name) else {
            bail!("our lock node {} vanished while waiting (deleted by someone, or the session was lost)", node.path);
        };
        let verdict = verdict(&queue, pos)
            .map_err(|refusal| anyhow!("cannot take {} as {}: {refusal}", self.lock, self.mode.describe()))?;
        Ok(Turn { verdict, queue, pos })
    }

    /// The nodes ahead of ours that exclude us: every one, but for a reader only writers.
    fn excluding_ahead(&self, turn: &Turn) -> Vec<Contender> {
        turn.queue[..turn.pos]
            .iter()
            .filter(|c| self.mode != Mode::Read || c.kind.mode().excludes_all())
            .cloned()
            .collect()
    }

    /// Reads the data of the holders ahead of us that we know nothing of yet (one round
    /// trip), to learn what each demands if it vanishes; the node we are about to watch is
    /// read by the watch itself. Failures are left unknown: a vanished node we know nothing of
    /// demands our own lock-delay.
    async fn learn_holders(&self, turn: &Turn, watched: &Watch) {
        let unknown: Vec<String> = crate::queue::holders(&turn.queue)
            .into_iter()
            .filter(|&i| i < turn.pos)
            .map(|i| turn.queue[i].name.clone())
            .filter(|name| !matches!(watched, Watch::Node(w) if w == name))
            .filter(|name| !self.known.borrow().contains_key(name))
            .take(MAX_DATA_READS)
            .collect();
        let reads: Vec<_> = unknown.iter().map(|name| self.client.get_data(&format!("{}/{name}", self.lock))).collect();
        for (name, read) in unknown.into_iter().zip(reads) {
            if let Ok((data, _)) = read.await {
                self.known.borrow_mut().insert(name, NodeData::demands(&data));
            }
        }
    }

    /// Waits until our node is the lowest, watching only the immediate predecessor.
    ///
    /// The lock is granted with the latest confirmation that our session was alive: our create,
    /// or a check through the leader. The waiter next in line (one node ahead, or its predecessor
    /// recorded that it acquired) sends the holder's heartbeat while it waits, so that when it
    /// is woken only the listing stands between the release and the command. A waiter woken
    /// with an older confirmation sends a check together with the listing.
    pub async fn wait_turn(
        &self,
        node: &OurNode,
        mut listed: Option<Listing<'a>>,
        no_wait: bool,
        pace: Pace,
    ) -> Result<Acquired> {
        let mut waited = false;
        let mut told = usize::MAX;
        let confirmed = Cell::new(node.created);
        // The nodes that excluded us at the previous listing: one of them gone without a clean
        // release when we proceed, if it could have held, is a holder that may still run, frozen.
        let mut before: Vec<Contender> = Vec::new();
        loop {
            // The check is sent at once; the listing sent after it is answered after it.
            let stale = self.clock.now() >= confirmed.get().at() + pace.recheck_after;
            let check = (waited && stale).then(|| zk::check(self.client, &node.path, &self.clock));
            let turn = self.turn(node, listed.take()).await?;
            if let Some(check) = check {
                if let Ok(c) = check.await {
                    advance(&confirmed, c);
                }
            }
            let (watch, next_in_line, ahead) = match &turn.verdict {
                Verdict::Proceed => {
                    let gone: Vec<Contender> =
                        before.into_iter().filter(|b| !turn.queue.iter().any(|c| c.name == b.name)).collect();
                    let delay = crate::delay::due(
                        &gone,
                        &turn.queue,
                        &self.dir.borrow().released,
                        &self.known.borrow(),
                        self.lock_delay,
                    );
                    return Ok(Acquired::Yes { waited, confirmed: confirmed.get(), delay });
                }
                Verdict::Wait { watch, next_in_line, ahead } => (watch.clone(), *next_in_line, *ahead),
            };
            if no_wait {
                return Ok(Acquired::Held { ahead });
            }
            if ahead != told {
                info!("waiting for {} behind {ahead} holder/waiter(s)", self.lock);
                told = ahead;
            }
            waited = true;
            before = self.excluding_ahead(&turn);
            self.learn_holders(&turn, &watch).await;
            match watch {
                Watch::Node(predecessor) => {
                    self.watch_until_gone(node, &predecessor, next_in_line, &confirmed, pace.heartbeat).await?
                }
                Watch::Directory => self.watch_directory(node, &confirmed, pace.heartbeat).await?,
            }
        }
    }

    /// Returns once the lock directory's children change (or changed since the last listing:
    /// the verdict on the children read with the watch is no longer to watch the directory).
    /// The first waiter of a `--limit` lock waits here, next in line.
    async fn watch_directory(&self, node: &OurNode, confirmed: &Cell<Confirmed>, period: Duration) -> Result<()> {
        let (children, watcher) = match retry(self.client, || self.client.list_and_watch_children(self.lock)).await {
            Ok(r) => r,
            Err(e) => return Err(e).with_context(|| format!("cannot watch {}", self.lock)),
        };
        if !matches!(self.place(node, &children)?.verdict, Verdict::Wait { watch: Watch::Directory, .. }) {
            return Ok(());
        }
        let event = tokio::select! {
            event = watcher.changed() => event,
            never = self.heartbeat_while_next(node, confirmed, period) => match never {},
        };
        if event.event_type == EventType::Session && event.session_state.is_terminated() {
            bail!("the ZooKeeper session ended while waiting ({})", event.session_state);
        }
        debug!("{}: {}", self.lock, event.event_type);
        Ok(())
    }

    /// Returns once the predecessor is deleted (or was already gone). A change of its data
    /// (a holder recording when it acquired) only re-arms the watch, and makes us next in line;
    /// under `--limit` it may make us the first waiter, so it returns to list again.
    async fn watch_until_gone(
        &self,
        node: &OurNode,
        predecessor: &str,
        mut next_in_line: bool,
        confirmed: &Cell<Confirmed>,
        period: Duration,
    ) -> Result<()> {
        let path = format!("{}/{predecessor}", self.lock);
        loop {
            let watcher = match retry(self.client, || self.client.get_and_watch_data(&path)).await {
                Ok((data, _, watcher)) => {
                    self.known.borrow_mut().insert(predecessor.to_owned(), NodeData::demands(&data));
                    watcher
                }
                Err(zookeeper_client::Error::NoNode) => return Ok(()),
                Err(e) => return Err(e).with_context(|| format!("cannot watch {path}")),
            };
            let event = if next_in_line {
                tokio::select! {
                    event = watcher.changed() => event,
                    never = self.heartbeat_while_next(node, confirmed, period) => match never {},
                }
            } else {
                watcher.changed().await
            };
            if event.event_type == EventType::Session && event.session_state.is_terminated() {
                bail!("the ZooKeeper session ended while waiting ({})", event.session_state);
            }
            debug!("predecessor {predecessor}: {}", event.event_type);
            if event.event_type != EventType::NodeDataChanged || matches!(self.mode, Mode::Limit(_)) {
                return Ok(());
            }
            next_in_line = true;
        }
    }

    /// The holder's heartbeat, sent by the waiter next in line: a check on our own node through
    /// the leader every `period` (at once if the last confirmation is older). Failures are left
    /// to the listing and the session watch; this only ever moves `confirmed` forward.
    async fn heartbeat_while_next(&self, node: &OurNode, confirmed: &Cell<Confirmed>, period: Duration) -> Infallible {
        loop {
            let due = confirmed.get().at() + period;
            let now = self.clock.now();
            if now < due {
                tokio::time::sleep(due - now).await;
                continue;
            }
            match zk::check(self.client, &node.path, &self.clock).await {
                Ok(c) => {
                    debug!("next in line: our session confirmed through the leader");
                    advance(confirmed, c);
                }
                Err(_) => tokio::time::sleep(period).await,
            }
        }
    }

    /// Deletes our node and awaits the reply: a clean release (see [`Recipe::release_path`]);
    /// `ran`: our command ran while we held. Without a node (a cancelled create), deletes
    /// whatever node carries our uuid. A node already gone, or gone with an expired session,
    /// is fine.
    pub async fn release(&self, node: Option<&OurNode>, ran: bool) -> Result<()> {
        let paths = match node {
            Some(node) => vec![node.path.clone()],
            None => {
                retry(self.client, || self.client.sync(self.lock)).await.ok();
                match retry(self.client, || self.client.list_children(self.lock)).await {
                    Ok(children) => children
                        .into_iter()
                        .filter(|n| self.is_ours_by_name(n))
                        .map(|n| format!("{}/{n}", self.lock))
                        .collect(),
                    // Not allowed to list it: not allowed to create in it either, so no node of
                    // ours can be there.
                    Err(
                        zookeeper_client::Error::NoNode
                        | zookeeper_client::Error::SessionExpired
                        | zookeeper_client::Error::NoAuth,
                    ) => vec![],
                    Err(e) => return Err(e).context("while looking for our lock node to delete"),
                }
            }
        };
        for path in paths {
            self.release_path(&path, ran).await?;
        }
        Ok(())
    }

    /// A clean release of the node at `path`: one multi that deletes it and adds its name to
    /// the lock directory's [`Released`] record (as one that held, if `ran`), written only over the version we read last,
    /// so that concurrent releases never drop each other's names (on a conflict: read again,
    /// retry). Successors tell it from a vanishing by the record. Where the record cannot be
    /// written (the directory's ACL), a plain delete: successors then wait a lock-delay.
    async fn release_path(&self, path: &str, ran: bool) -> Result<()> {
        use zookeeper_client::{Error, MultiWriteError};
        let name = &path[self.lock.len() + 1..];
        let done = |why: &str| {
            debug!("{path} {why}");
            Ok(())
        };
        for _ in 0..RELEASE_ATTEMPTS {
            if self.dir.borrow().version.is_none() {
                self.read_dir().await?;
            }
            let (record, version) = {
                let dir = self.dir.borrow();
                (dir.released.with(name, ran), dir.version)
            };
            let mut multi = self.client.new_multi_writer();
            multi.add_set_data(self.lock, &record, version)?;
            multi.add_delete(path, None)?;
            let committed = match multi.commit().await {
                Err(MultiWriteError::RequestFailed { source }) if is_connection_failure(&source) => {
                    // Applied or not: after the reconnect, the node tells.
                    wait_connected(self.client).await.or_else(|e| match e {
                        Error::SessionExpired => Ok(()),
                        e => Err(e),
                    })?;
                    self.dir.borrow_mut().version = None;
                    continue;
                }
                r => r,
            };
            match committed {
                Ok(_) => return done("deleted (a clean release)"),
                Err(MultiWriteError::OperationFailed { index: 0, source: Error::BadVersion }) => {
                    debug!("the release record of {} changed under us; reading it again", self.lock);
                    self.dir.borrow_mut().version = None;
                }
                Err(MultiWriteError::OperationFailed { index: 1, source: Error::NoNode }) => {
                    return done("was already gone")
                }
                Err(MultiWriteError::RequestFailed { source: Error::SessionExpired }) => {
                    return done("went with the expired session")
                }
                Err(MultiWriteError::OperationFailed { index: 0, source }) => {
                    debug!("cannot write the release record of {} ({source}); deleting {path} alone", self.lock);
                    return self.delete_plain(path).await;
                }
                Err(e) => {
                    return Err(zookeeper_client::Error::from(e))
                        .with_context(|| format!("cannot delete our lock node {path}"))
                }
            }
        }
        self.delete_plain(path).await
    }

    /// Reads the lock directory's record and version again.
    async fn read_dir(&self) -> Result<()> {
        match retry(self.client, || self.client.get_data(self.lock)).await {
            Ok((data, stat)) => {
                *self.dir.borrow_mut() = Dir::read(&data, stat.version);
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.lock)),
        }
    }

    /// A delete that leaves no record: successors will wait a lock-delay.
    async fn delete_plain(&self, path: &str) -> Result<()> {
        match retry(self.client, || self.client.delete(path, None)).await {
            Ok(()) => debug!("deleted {path}"),
            Err(zookeeper_client::Error::NoNode) => debug!("{path} was already gone"),
            Err(zookeeper_client::Error::SessionExpired) => debug!("{path} went with the expired session"),
            Err(e) => return Err(e).with_context(|| format!("cannot delete our lock node {path}")),
        }
        Ok(())
    }
}

/// Moves a shared confirmation forward (never back).
fn advance(cell: &Cell<Confirmed>, newer: Confirmed) {
    let mut c = cell.get();
    c.advance(newer);
    cell.set(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn queue_orders_mixed_recipes_by_sequence() {
        let children =
            names(&["_c_b-lock-0000000005", "aa__lock__0000000002", "_c_a-lock-0000000009", "_c_c-__READ__0000000001"]);
        let q = queue("/l", &children).unwrap();
        let order: Vec<i64> = q.iter().map(|c| c.seq).collect();
        assert_eq!(order, vec![1, 2, 5, 9]);
    }

    #[test]
    fn queue_refuses_unknown_children() {
        let err = queue("/locks/x", &names(&["_c_a-lock-0000000001", "notes.txt"])).unwrap_err().to_string();
        assert!(err.contains("'notes.txt'"), "{err}");
        assert!(err.contains("/locks/x"), "{err}");
    }

    #[test]
    fn lock_paths() {
        for ok in ["/a", "/locks/nightly-report", "/a/b/c", "/x y"] {
            validate_lock_path(ok).unwrap();
        }
        for (bad, why) in [
            ("a", "start with"),
            ("/", "root"),
            ("/a/", "end with"),
            ("/a//b", "empty"),
            ("/a/./b", "'.'"),
            ("/a/..", "'.'"),
            ("/zookeeper/x", "reserved"),
            ("/zookeeper", "reserved"),
            ("/a\u{1}b", "character"),
            ("/a\0b", "character"),
        ] {
            let e = validate_lock_path(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        validate_lock_path("/zookeeperx").unwrap();
    }
}

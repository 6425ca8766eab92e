//! The one place that talks to ZooKeeper about connections: the options built once from the
//! command line ([`ConnectOptions`]), connecting within a time limit, closing, and retrying a
//! request across a lost connection. `run` and `status` both use it; the lock recipe takes the
//! ACL it must put on the nodes it creates from here.

use std::future::Future;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, warn};
use zookeeper_client::{Acl, Acls, CheckWriteError, Client, Permission, SaslOptions, SessionState, TlsOptions};

use crate::clock::Clock;

mod probe;

/// What the command line asks of the connection, as plain values.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub auth_file: Option<PathBuf>,
    /// `None`: the default (creator+read with credentials, else open).
    pub acl: Option<AclPolicy>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The ACL of every node zklock creates: lock nodes and the parents it creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclPolicy {
    /// world:anyone:cdrwa.
    Open,
    /// auth::cdrwa: our identity alone.
    Creator,
    /// auth::cdrwa and world:anyone:r.
    CreatorRead,
}

impl AclPolicy {
    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AclPolicy::Open => "open",
            AclPolicy::Creator => "creator",
            AclPolicy::CreatorRead => "creator+read",
        }
    }
}

/// The environment variable that may hold the credentials themselves (for CI secrets).
pub const AUTH_ENV: &str = "ZKLOCK_AUTH";

/// `creator+read`: everything for our identity, read for anyone.
static CREATOR_READ: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::READ, "world", "anyone")];

/// The parents zklock creates above a lock directory (`/locks` in `/locks/report`) under
/// `creator`: ours, and anyone may create their own lock directories in them.
static PARENTS_CREATOR: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::CREATE, "world", "anyone")];

/// The same under `creator+read`: anyone may also read them.
static PARENTS_CREATOR_READ: [Acl; 3] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
    Acl::new_const(Permission::CREATE, "world", "anyone"),
];

/// How long closing the session may take before zklock exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who zklock is to the server. The password never appears in `Debug` or in messages.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// ZooKeeper's `digest` scheme (`addauth digest user:password`): any password is accepted
    /// at connect time, and a wrong one shows only as NoAuth on nodes of the right identity.
    Digest { user: String, password: String },
    /// SASL DIGEST-MD5, checked by the server against its JAAS users at connect time.
    SaslDigest { user: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Credentials {
    /// Parses `digest:USER:PASSWORD` or `sasl-digest:USER:PASSWORD` (the password may contain
    /// colons). `source` names where the text came from, for messages.
    pub fn parse(text: &str, source: &str) -> Result<Credentials> {
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let line = match lines.as_slice() {
            [line] => *line,
            [] => bail!("{source} holds no credentials (expected digest:USER:PASSWORD or sasl-digest:USER:PASSWORD)"),
            _ => bail!("{source} holds {} credential lines; give exactly one", lines.len()),
        };
        let mut parts = line.splitn(3, ':');
        let (scheme, user, password) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        let (Some(user), Some(password)) = (user, password) else {
            bail!("{source}: expected SCHEME:USER:PASSWORD (digest:USER:PASSWORD or sasl-digest:USER:PASSWORD)")
        };
        if user.is_empty() || password.is_empty() {
            bail!("{source}: the user and the password must not be empty");
        }
        let (user, password) = (user.to_owned(), password.to_owned());
        match scheme {
            "digest" => Ok(Credentials::Digest { user, password }),
            "sasl-digest" | "sasl" => Ok(Credentials::SaslDigest { user, password }),
            other => bail!(
                "{source}: unknown scheme '{}' (expected digest or sasl-digest; Kerberos/GSSAPI is not supported)",
                other.escape_debug()
            ),
        }
    }

    /// Reads the credentials from a file that only its owner may read.
    pub fn from_file(path: &Path) -> Result<Credentials> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read --auth-file {shown}"))?;
        if !meta.is_file() {
            bail!("--auth-file {shown} is not a regular file");
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            bail!("--auth-file {shown} is readable by group or others (mode {mode:03o}); run: chmod 600 {shown}");
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --auth-file {shown}"))?;
        Credentials::parse(&text, &format!("--auth-file {shown}"))
    }

    /// The identity the server will know us by, e.g. `digest:alice`.
    pub fn describe(&self) -> String {
        match self {
            Credentials::Digest { user, .. } => format!("digest:{user}"),
            Credentials::SaslDigest { user, .. } => format!("sasl:{user}"),
        }
    }
}

/// The TLS side of the options: the files, and the client options built from them.
#[derive(Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    options: TlsOptions,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("ca", &self.ca).field("identity", &self.identity).finish()
    }
}

fn read_pem(flag: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

impl Tls {
    fn from_settings(args: &Settings) -> Result<Option<Tls>> {
        let Some(ca) = &args.tls_ca else {
            if args.tls_cert.is_some() {
                bail!("--tls-cert needs --tls-ca: the CA that signed the servers' certificates");
            }
            return Ok(None);
        };
        let pem = read_pem("--tls-ca", ca)?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            bail!("--tls-ca {} holds no PEM certificate", ca.display());
        }
        let mut options = TlsOptions::default()
            .with_pem_ca(&pem)
            .map_err(|e| anyhow!("--tls-ca {}: not a usable PEM certificate: {e}", ca.display()))?;
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert_pem, key_pem) = (read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?);
                options = options.with_pem_identity(&cert_pem, &key_pem).map_err(|e| {
                    anyhow!(
                        "--tls-cert {} / --tls-key {}: not a usable certificate and key: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                Some((cert.clone(), key.clone()))
            }
            _ => None,
        };
        Ok(Some(Tls { ca: ca.clone(), identity, options }))
    }
}

/// Everything needed to open a session, decided once from the command line.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<Credentials>,
    pub tls: Option<Tls>,
    /// The ACL policy in force (the default resolved).
    pub policy: AclPolicy,
    /// The ACL of the lock nodes and lock directories zklock creates.
    pub acl: Acls<'static>,
    /// The ACL of the parents it creates above a lock directory: `acl`, and anyone may create
    /// (their own lock directories; deleting ours or joining it needs DELETE or CREATE on it).
    pub parents_acl: Acls<'static>,
}

impl ConnectOptions {
    /// Builds the options from the command line and `ZKLOCK_AUTH`.
    pub fn from_settings(args: &Settings) -> Result<ConnectOptions> {
        let env = std::env::var(AUTH_ENV).ok().filter(|v| !v.is_empty());
        let credentials = match (&args.auth_file, env) {
            (Some(path), _) => Some(Credentials::from_file(path)?),
            (None, Some(text)) => Some(Credentials::parse(&text, AUTH_ENV)?),
            (None, None) => None,
        };
        let tls = Tls::from_settings(args)?;
        if tls.is_none() && args.connect.contains("tcp+tls://") {
            bail!("the connect string '{}' asks for TLS (tcp+tls://): give --tls-ca, the CA that signed the servers' certificates", args.connect);
        }
        let has_identity = credentials.is_some() || tls.as_ref().is_some_and(|t| t.identity.is_some());
        // With credentials, the safe default: nobody else may delete our lock node, and
        // everyone may still see who holds the lock.
        let policy = args.acl.unwrap_or(if credentials.is_some() { AclPolicy::CreatorRead } else { AclPolicy::Open });
        if policy != AclPolicy::Open && !has_identity {
            bail!(
                "--acl {} needs an identity: credentials (--auth-file or {AUTH_ENV}) or a TLS client certificate (--tls-cert)",
                policy.name()
            );
        }
        let (acl, parents_acl) = match policy {
            AclPolicy::Open => (Acls::anyone_all(), Acls::anyone_all()),
            AclPolicy::Creator => (Acls::creator_all(), Acls::new(&PARENTS_CREATOR)),
            AclPolicy::CreatorRead => (Acls::new(&CREATOR_READ), Acls::new(&PARENTS_CREATOR_READ)),
        };
        Ok(ConnectOptions {
            connect: args.connect.clone(),
            session_timeout: args.session_timeout,
            connect_timeout: args.connect_timeout,
            credentials,
            tls,
            policy,
            acl,
            parents_acl,
        })
    }

    /// Who we are, for messages: `digest:alice`, `a TLS client certificate`, or `anonymous`.
    pub fn identity(&self) -> String {
        match (&self.credentials, self.tls.as_ref().and_then(|t| t.identity.as_ref())) {
            (Some(c), _) => c.describe(),
            (None, Some((cert, _))) => format!("the TLS client certificate {}", cert.display()),
            (None, None) => "anonymous (no credentials)".into(),
        }
    }

    fn connector(&self) -> zookeeper_client::Connector {
        let mut connector = Client::connector().with_session_timeout(self.session_timeout).with_fail_eagerly();
        match &self.credentials {
            Some(Credentials::Digest { user, password }) => {
                connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
            }
            Some(Credentials::SaslDigest { user, password }) => {
                connector = connector.with_sasl(SaslOptions::digest_md5(user.clone(), password.clone()));
            }
            None => {}
        }
        if let Some(tls) = &self.tls {
            connector = connector.with_tls(tls.options.clone());
        }
        connector
    }

    /// Connects within `connect_timeout`, retrying while no server answers. After a failed
    /// attempt, a probe of the servers tells a refusal that retrying cannot mend (a TLS port
    /// reached in plain text or the reverse, a certificate refused) from a server that is not
    /// up yet, so that the former fails at once with its reason.
    pub async fn connect(&self) -> Result<Client> {
        let connector = self.connector();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = None;
        let mut note: Option<String> = None;
        loop {
            let secure = self.tls.is_some();
            let attempt = async {
                if secure {
                    connector.clone().secure_connect(&self.connect).await
                } else {
                    connector.clone().connect(&self.connect).await
                }
            };
            let failed_fast = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(zookeeper_client::Error::AuthFailed)) => bail!(
                    "authentication failed: ZooKeeper at {} refused {} (wrong user or password, or no such user)",
                    self.connect,
                    self.identity()
                ),
                Ok(Err(e))
                    if matches!(e, zookeeper_client::Error::NoHosts | zookeeper_client::Error::Timeout)
                        || is_connection_failure(&e) =>
                {
                    debug!("connect attempt failed: {e}");
                    last = Some(e);
                    true
                }
                Ok(Err(zookeeper_client::Error::BadArguments(why))) => {
                    bail!("invalid connect string '{}': {why}", self.connect)
                }
                Ok(Err(e)) => {
                    return Err(e).with_context(|| format!("cannot connect to ZooKeeper at {}", self.connect))
                }
                Err(_) => false,
            };
            if note.is_none() && failed_fast {
                let limit = deadline.saturating_duration_since(tokio::time::Instant::now()).min(probe::PATIENCE);
                note = Some(self.probe(limit).await?);
            }
            if !failed_fast || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // A server that took the whole time (accepted, then silent) is probed afterwards.
        let note = match note {
            Some(n) => n,
            None => self.probe(probe::PATIENCE / 2).await?,
        };
        let mut why = Vec::new();
        if let Some(e) = last {
            why.push(format!("last error: {e}"));
        }
        if !note.is_empty() {
            why.push(note);
        }
        Err(anyhow!(
            "cannot connect to ZooKeeper at {} within {}{}",
            self.connect,
            humantime::format_duration(self.connect_timeout),
            if why.is_empty() { String::new() } else { format!(" ({})", why.join("; ")) }
        ))
    }

    /// Probes the servers after a failed attempt: `Err` for a refusal that retrying cannot
    /// mend, else a note for the final message (empty when nothing was found).
    async fn probe(&self, limit: Duration) -> Result<String> {
        let endpoints = probe::endpoints(&self.connect, self.tls.is_some());
        let tls = self.tls.clone();
        let verdict = tokio::task::spawn_blocking(move || probe::diagnose(&endpoints, tls.as_ref(), limit))
            .await
            .unwrap_or(probe::Verdict::Unknown);
        match verdict {
            probe::Verdict::Refused(why) => bail!("cannot connect to ZooKeeper at {}: {why}", self.connect),
            probe::Verdict::Note(what) => Ok(what),
            probe::Verdict::Unknown => Ok(String::new()),
        }
    }

    /// The error for a request the server refused with NoAuth on `path` (or on the nearest
    /// ancestor that exists, which is the node whose ACL decided): names the node, its ACL
    /// as far as we may read it, and who we are.
    pub async fn not_authorised(&self, client: &Client, path: &str, doing: &str) -> anyhow::Error {
        let mut at = path.to_owned();
        let acl = loop {
            match client.get_acl(&at).await {
                Ok((acls, _)) => break format_acl(&acls),
                Err(zookeeper_client::Error::NoNode) if at != "/" => {
                    at = match at.rfind('/') {
                        Some(0) | None => "/".into(),
                        Some(i) => at[..i].to_owned(),
                    };
                }
                Err(zookeeper_client::Error::NoAuth) => break "not readable by us either".into(),
                Err(e) => break format!("unknown: {e}"),
            }
        };
        anyhow!("not authorised to {doing}: the ACL of {at} is {acl}; zklock connected as {}", self.identity())
    }
}

/// An ACL as `scheme:id=perms`, e.g. `digest:alice:HASH=cdrwa, world:anyone=r`.
pub fn format_acl(acls: &[Acl]) -> String {
    if acls.is_empty() {
        return "empty".into();
    }
    let perms = |p: Permission| {
        [
            (Permission::CREATE, 'c'),
            (Permission::DELETE, 'd'),
            (Permission::READ, 'r'),
            (Permission::WRITE, 'w'),
            (Permission::ADMIN, 'a'),
        ]
        .iter()
        .filter(|(bit, _)| p.has(*bit))
        .map(|(_, c)| *c)
        .collect::<String>()
    };
    acls.iter()
        .map(|a| format!("{}:{}={}", a.auth_id().scheme(), a.auth_id().id(), perms(a.permission())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Closes the session and waits (up to a limit) for the server to confirm.
pub async fn close_session(client: Client) {
    let mut watcher = client.state_watcher();
    drop(client);
    if watcher.peek_state().is_terminated() {
        return;
    }
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, async { while !watcher.changed().await.is_terminated() {} }).await;
    if closed.is_err() {
        warn!("the session did not confirm closing within {CLOSE_TIMEOUT:?}; the server expires it");
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

/// Proof that the ZooKeeper leader validated our session at or after an instant (on the
/// deadline clock): the send time of a request on our lock node that the leader processed
/// (our create, or a check-only multi). This is `t_ok` of the safety model.
///
/// The safety invariant lives in this type: the only constructor is [`through_leader`], which
/// stamps the time *before* the request is sent, and the only mutator is
/// [`Confirmed::advance`], which keeps the later of two proofs. A confirmation can therefore
/// never credit a later time than its request's send, and `t_ok` never moves back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Confirmed(Duration);

impl Confirmed {
    /// The instant the confirmed request was sent, on the deadline clock.
    pub fn at(self) -> Duration {
        self.0
    }

    /// Keeps the later proof; returns whether `other` moved it forward.
    pub fn advance(&mut self, other: Confirmed) -> bool {
        let moved = other.0 > self.0;
        if moved {
            self.0 = other.0;
        }
        moved
    }

    /// A confirmation at a given instant, for unit tests of the code that consumes it.
    #[cfg(test)]
    pub fn for_test(at: Duration) -> Confirmed {
        Confirmed(at)
    }
}

/// Sends a request that the leader must process (`send` must put it on the wire when called,
/// as zookeeper-client's request methods do), stamping the send time on `clock` first; its
/// reply carries the [`Confirmed`] proof when it succeeds.
pub fn through_leader<C, T, E, F>(
    clock: &C,
    send: impl FnOnce() -> F,
) -> impl Future<Output = Result<(T, Confirmed), E>>
where
    C: Clock,
    F: Future<Output = Result<T, E>>,
{
    let sent = Confirmed(clock.now());
    let reply = send();
    async move { reply.await.map(|t| (t, sent)) }
}

/// A check-only multi on our own node through the leader: the heartbeat. It validates our
/// session and our node's existence.
pub fn check<'a, C: Clock>(
    client: &'a Client,
    path: &str,
    clock: &C,
) -> impl Future<Output = Result<Confirmed, CheckWriteError>> + Send + 'a {
    // The closure's type is part of the returned future's: it must not borrow `path`.
    let path = path.to_owned();
    let confirming = through_leader(clock, move || {
        let commit = client.new_check_writer(&path, None).map(|writer| writer.commit());
        async move {
            match commit {
                Ok(commit) => commit.await,
                Err(source) => Err(CheckWriteError::RequestFailed { source }),
            }
        }
    });
    async move { confirming.await.map(|(_, confirmed)| confirmed) }
}
